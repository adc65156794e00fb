"""The ranks of a multi-process run, and failures that reach every one of them.

``torchrun`` stops every rank when one exits with an error; launchers that start the ranks
themselves (``srun``, ``mpirun``, a loop in a job script, each process given ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) do not. There, a rank whose peer failed
waits in its next collective until the process group's timeout: two hours for ``train``, whose
rank 0 evaluates alone meanwhile. :meth:`Ranks.together` closes that gap where one rank works
alone (rank 0 taking the run folder's lock, opening its outputs, validating and checkpointing):
every rank runs its part, the ranks exchange whether it failed, and each rank whose own part
succeeded raises :class:`~benzarr.errors.PeerRankError` naming the rank that failed and its
error. The exchange runs on a gloo group (host objects, whatever the training backend), so it
never touches, nor waits for, the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from benzarr.errors import PeerRankError

T = TypeVar("T")

#: How long a rank waits for the others in a collective (rank 0 evaluates alone meanwhile).
TIMEOUT = timedelta(hours=2)


def start_process_group(device: str) -> bool:
    """Start the process group of a multi-process run (``WORLD_SIZE`` > 1 in the environment,
    set by torchrun or by the job script): NCCL when ``device`` is CUDA (or ``auto`` with a
    GPU), gloo otherwise. True if this call started it (the caller ends it,
    :func:`end_process_group`); False for a single process or a group already started."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return True


def end_process_group() -> None:
    """End the process group (and every group made from it), if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()


class Ranks:
    """This process's place in the run: ``rank``, ``world_size``, ``local_rank`` (the GPU of
    this node it trains on) and, with several ranks, a gloo group for :meth:`together`.

    Made after the process group started (:func:`start_process_group`), by every rank at the
    same point (making the gloo group is a collective); a context manager that lets the group go.
    """

    def __init__(self) -> None:
        started = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if started else 0
        self.world_size = dist.get_world_size() if started else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._group: Any = None
        self._own_group = False
        if self.world_size > 1:
            if dist.get_backend() == "gloo":
                self._group = dist.group.WORLD
            else:  # NCCL exchanges device tensors: outcomes go over a CPU group of the same ranks
                self._group, self._own_group = dist.new_group(backend="gloo", timeout=TIMEOUT), True

    def together(self, action: Callable[[], T], src: int | None = None) -> T:
        """``action()`` on every rank, then every rank learns whether any rank's raised.

        A rank whose ``action`` raised re-raises its error; the others raise
        :class:`PeerRankError` naming the lowest failed rank and its error. With ``src``, every
        rank returns rank ``src``'s result (picklable), else its own. Interrupts (Ctrl-C, a
        scheduler's SIGTERM) are not exchanged: they reach every rank of a job by themselves.
        """
        if self.world_size == 1:
            return action()
        try:
            result = action()
        except Exception as exc:
            self._exchange((f"{type(exc).__name__}: {exc}", None))
            raise
        outcomes = self._exchange((None, result if src == self.rank else None))
        failed = [(rank, error) for rank, (error, _) in enumerate(outcomes) if error is not None]
        if failed:
            rank, error = failed[0]
            raise PeerRankError(f"rank {rank} of {self.world_size} failed ({error}); "
                                f"rank {self.rank} stops with it")
        return result if src is None else outcomes[src][1]

    def lost_peer(self, exc: BaseException) -> PeerRankError | None:
        """A :class:`PeerRankError` for ``exc`` if it is a collective that failed because another
        rank went away (killed, out of memory, stopped by its own error), else None.

        gloo sees a dead peer at once, as a RuntimeError of a reset or closed connection; NCCL
        and the rendezvous store raise torch's ``DistError`` kinds. Either way the message
        torch gives (a path in gloo's sources, a connection's port) does not say what happened.
        """
        text = str(exc)
        lost = isinstance(exc, dist.DistError) or ("gloo" in text and ("onnection" in text or "peer" in text))
        if self.world_size == 1 or not lost:
            return None
        reason = text.split("] ", 1)[-1].split(". ", 1)[0].strip()  # "Read error [addr]:port: Connection reset by peer"
        return PeerRankError(f"rank {self.rank} of {self.world_size} lost another rank ({reason}): it was killed "
                             f"or stopped by its own error, which its output shows; rank {self.rank} stops with it")

    def _exchange(self, outcome: tuple[str | None, Any]) -> list[tuple[str | None, Any]]:
        """Every rank's ``outcome``, indexed by rank."""
        outcomes: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(outcomes, outcome, group=self._group)
        except RuntimeError as exc:
            lost = self.lost_peer(exc)
            if lost is None:
                raise
            raise lost from exc
        return outcomes

    def close(self) -> None:
        """Let the gloo group go (a no-op for one process, or once the process group has ended)."""
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group(self._group)
        self._group, self._own_group = None, False

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
