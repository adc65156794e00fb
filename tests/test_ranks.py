"""benzarr.ranks: a failure where one rank works alone reaches every rank (two real gloo ranks)."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest


def _rank_main(rank: int, init_file: str, results: multiprocessing.Queue) -> None:
    """One rank: three exchanges, as train's setup and epoch ends make them."""
    import torch.distributed as dist

    from benzarr.errors import InvalidArgumentError, PeerRankError
    from benzarr.ranks import Ranks

    seen: list[object] = []
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        with Ranks() as ranks:
            seen.append((ranks.rank, ranks.world_size))
            seen.append(ranks.together(lambda: f"own {rank}"))  # each rank keeps its own result
            seen.append(ranks.together(lambda: ("stop", rank) if rank == 0 else None, src=0))  # rank 0's, everywhere

            def rank0_fails() -> None:
                if rank == 0:
                    raise InvalidArgumentError("the disk is full")

            try:
                ranks.together(rank0_fails)
            except (InvalidArgumentError, PeerRankError) as exc:
                seen.append(f"{type(exc).__name__}: {exc}")
        dist.destroy_process_group()
    except Exception:  # a broken exchange: the test shows it
        seen.append(traceback.format_exc())
    results.put((rank, seen))


def _two_ranks(target, tmp_path: Path, reports: int) -> list:
    """Run ``target(rank, rendezvous file, queue)`` as ranks 0 and 1 in forked processes (torch
    is imported already: no second import) and return the first ``reports`` items they queue."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    ranks = [context.Process(target=target, args=(r, str(tmp_path / "rendezvous"), results)) for r in (0, 1)]
    for process in ranks:
        process.start()
    got = [results.get(timeout=120) for _ in range(reports)]
    for process in ranks:
        process.join(timeout=30)
    return got


def test_together_shares_results_and_failures_between_two_ranks(tmp_path: Path) -> None:
    seen = dict(_two_ranks(_rank_main, tmp_path, 2))
    assert seen[0] == [(0, 2), "own 0", ("stop", 0), "InvalidArgumentError: the disk is full"]
    assert seen[1] == [(1, 2), "own 1", ("stop", 0),
                       "PeerRankError: rank 0 of 2 failed (InvalidArgumentError: the disk is full); rank 1 stops with it"]


def _rank_that_dies(rank: int, init_file: str, results: multiprocessing.Queue) -> None:
    """Rank 1 dies without a word after the rendezvous; rank 0 then meets it in an exchange."""
    import os

    import torch.distributed as dist

    from benzarr.errors import PeerRankError
    from benzarr.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ranks = Ranks()
    ranks.together(lambda: None)  # both are up
    if rank == 1:
        os._exit(9)  # killed: no clean-up, no message
    try:
        ranks.together(lambda: None)
        results.put("no error")
    except PeerRankError as exc:
        results.put(str(exc))
    except Exception as exc:  # a RuntimeError torch gives: not mapped
        results.put(f"{type(exc).__name__}: {exc}")


def test_a_dead_rank_is_one_clear_error_on_the_others(tmp_path: Path) -> None:
    """gloo notices a dead peer at once, as a reset connection deep in its sources; the survivor
    stops with one PeerRankError line that says what happened."""
    (message,) = _two_ranks(_rank_that_dies, tmp_path, 1)
    assert message.startswith("rank 0 of 2 lost another rank (") and "rank 0 stops with it" in message, message
    assert "\n" not in message and "pair.cc" not in message, message


def test_one_process_runs_the_action_alone() -> None:
    from benzarr.errors import InvalidArgumentError
    from benzarr.ranks import Ranks

    ranks = Ranks()
    assert (ranks.rank, ranks.world_size) == (0, 1)
    assert ranks.together(lambda: 7, src=0) == 7

    def fails() -> None:
        raise InvalidArgumentError("x")

    with pytest.raises(InvalidArgumentError):
        ranks.together(fails)
