"""``benzarr demo``: the whole pipeline on a synthetic archive, offline, in a few minutes on a laptop.

Steps, each through the same library call a user would make::

    1. synth   benzarr.synth.synth_archive      OUT/archive/       (n_patches BigEarthNet-layout patches)
    2. ingest  benzarr.ingest.ingest            OUT/store.zarr     (sharded Zarr v3, lz4)
    3. split   benzarr.split.make_split         splits/stratified  (iterative stratification, 60/20/20)
    4. train   benzarr.train.train              OUT/runs/shortcnn-all/  (ShortCNN, all 12 bands)
    5. report  benzarr.report.write_report      OUT/report/        (curves.png, runs/summary tables)

The defaults (1,000 patches, 4 epochs) are sized for about 2 minutes on 2 CPU cores and a test
micro-F1 above 0.8 on the synthetic task (whose classes have distinct spectral signatures).
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when the demo trains
    from benzarr.train import TrainEvent, TrainResult

#: The split the demo makes.
SPLIT_NAME = "stratified"
MODEL = "shortcnn-all"


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults meet the README's promise (< 3 min on 2 cores)."""

    out: str = "benzarr-demo"
    n_patches: int = 1000
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    workers: int = 2                 # synth and ingest processes
    loader_workers: int = 0          # loader worker processes while training
    max_steps: int | None = None     # cap on optimisation steps (tests)
    overwrite: bool = False          # remove an earlier demo in ``out`` first (only a demo folder)


@dataclass
class DemoResult:
    """Where everything went, how long each stage took, and the test metrics."""

    out: Path
    archive: Path
    store: Path
    run_dir: Path
    report_dir: Path
    split_counts: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    train: TrainResult | None = None
    report_files: dict[str, Path] = field(default_factory=dict)


#: What a demo writes in its folder (besides the marker): all that ``--overwrite`` removes. The
#: README's next step trains into ``runs/rgb`` there: a user's run, which stays.
DEMO_ENTRIES = ("archive", "store.zarr", f"runs/{MODEL}", "report")

#: The files ``benzarr train`` writes in the demo's run folder (config.json first, the event
#: file of each attempt, checkpoints through a ``.tmp`` name, metrics.json and scores.csv when
#: it finishes, the run lock while it runs) and those ``benzarr report`` writes in its report
#: folder: nothing else in them is the demo's (a user's notes, an evaluation, another run).
# (and the evaluations `benzarr evaluate` writes into the run, as the README's walk-through does)
_RUN_FILES = re.compile(r"config\.json|metrics\.json|scores\.csv|\.benzarr-train\.lock"
                        r"|checkpoints/(best|last)\.pt(\.tmp)?|events\.out\.tfevents\.[0-9]+\.[^/]+\.[0-9]+\.[0-9]+"
                        r"|evaluations/[^/]+/(metrics\.json|scores\.csv|predictions\.parquet)")
_RUN_FOLDERS = frozenset({"checkpoints", "evaluations"})
_REPORT_FILES = re.compile(r"curves\.png|runs\.csv|runs\.md|summary\.csv|summary\.md")


def _foreign_in_folder(folder: Path, files: re.Pattern[str], folders: frozenset[str] = frozenset(),
                       limit: int = 3) -> list[str]:
    """Up to ``limit`` entries of ``folder`` (paths relative to it) that are not a file whose
    relative path ``files`` matches in full or a folder of ``folders``: any symlink, any other
    file, and an empty folder of the user's (``name/``)."""
    from benzarr.fsutil import NFS_HELD

    found: list[str] = []
    for here, dirs, names in os.walk(folder):
        rel = Path(here).relative_to(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(here, d))]
        dirs[:] = sorted(d for d in dirs if d not in links)
        if rel != Path(".") and rel.as_posix() not in folders and not names and not dirs:
            found.append(f"{rel.as_posix()}/")
        for name in sorted(names) + sorted(links):
            path = Path(here, name)
            if NFS_HELD.fullmatch(name) and not path.is_symlink():
                continue  # a deleted file that NFS keeps while another process (tensorboard) holds it open
            if path.is_symlink() or not path.is_file() or not files.fullmatch((rel / name).as_posix()):
                found.append((rel / name).as_posix())
        if len(found) >= limit:
            break
    return found[:limit]


def foreign_in_demo(out: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` entries among :data:`DEMO_ENTRIES` of the demo folder ``out`` that the
    demo did not write (paths relative to ``out``): what ``demo --overwrite`` would delete with
    them. The archive and the store are checked as ``synth --overwrite`` and ``ingest
    --overwrite`` check theirs; the run folder may hold only what train writes there, the
    report folder only the report's five files; an entry that is a symlink or a file is not
    the demo's either."""
    from benzarr.fsutil import foreign_files
    from benzarr.synth.writers import foreign_in_synth_archive

    checks = {"archive": foreign_in_synth_archive, "store.zarr": foreign_files,
              f"runs/{MODEL}": lambda path: _foreign_in_folder(path, _RUN_FILES, _RUN_FOLDERS),
              "report": lambda path: _foreign_in_folder(path, _REPORT_FILES)}
    found: list[str] = []
    for entry in DEMO_ENTRIES:
        path = out / entry
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_dir():
            found.append(entry)
        else:
            found += [f"{entry}/{name}" for name in checks[entry](path)]
    return found[:limit]


def remove_demo_entries(out: Path) -> None:
    """Remove what an earlier demo wrote in ``out`` (:data:`DEMO_ENTRIES`), each renamed aside
    first; nothing if any of them holds files the demo did not write (:func:`foreign_in_demo`).

    Raises:
        UnsafeOverwriteError: naming those files.
        FileSystemError: a removal failed.
    """
    from benzarr.fsutil import check_no_foreign, remove_entries

    check_no_foreign(out, foreign_in_demo(out), "the demo's archive, store, run and report folders")
    for entry in DEMO_ENTRIES:
        path = out / entry
        if os.path.lexists(path):
            remove_entries(path.parent, [path.name])


def run_demo(
    cfg: DemoConfig,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    on_train_event: Callable[[TrainEvent], None] | None = None,
) -> DemoResult:
    """Run the five steps; ``on_stage(name, info)`` is called when each one finishes.

    ``out`` is marked as a demo folder (:func:`benzarr.fsutil.write_marker`) before anything
    is written in it; ``overwrite`` replaces only what an earlier demo wrote in such a folder
    (:data:`DEMO_ENTRIES`; other runs and files there stay), and refuses while those hold a
    user's files.

    Raises:
        InvalidArgumentError: ``out`` holds an earlier demo and not ``overwrite``, or holds
            anything else (bad sizes, too).
        UnsafeOverwriteError: ``overwrite`` of a folder that is not a demo, or of a demo whose
            archive, store, run folder or report holds files the demo did not write
            (:func:`foreign_in_demo`; nothing deleted).
    """
    from benzarr.errors import InvalidArgumentError
    from benzarr.fsutil import check_output, has_marker, write_marker
    from benzarr.ingest import ingest
    from benzarr.report import write_report
    from benzarr.split import make_split
    from benzarr.store import open_store
    from benzarr.synth import synth_archive
    from benzarr.synth.plan import check_plan
    from benzarr.train import train

    out = Path(cfg.out)
    if cfg.n_patches < 20:
        raise InvalidArgumentError(f"the demo needs at least 20 patches, not {cfg.n_patches}")
    from benzarr.train import TrainConfig, check_config

    def train_config(store_path: Path, run_dir: Path) -> TrainConfig:
        return TrainConfig(store=str(store_path), split=SPLIT_NAME, model=MODEL, epochs=cfg.epochs,
                           batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, workers=cfg.loader_workers,
                           device="auto", out=str(run_dir), max_steps=cfg.max_steps)

    # the training settings before step 1 (--seed's range too): a bad --epochs used to fail at
    # step 4, leaving a half demo folder that the corrected command then refused without --overwrite
    check_config(train_config(out / "store.zarr", out / "runs" / MODEL))
    if cfg.workers is not None and (isinstance(cfg.workers, bool) or cfg.workers < 1):
        raise InvalidArgumentError(f"--workers must be at least 1, got {cfg.workers}")
    # more patches than the synthetic plan holds (--patches 99999999999999999999) failed at
    # step 1, after OUT was made and marked: the corrected command was refused without --overwrite
    check_plan(cfg.n_patches, cfg.seed, least=1)
    state = check_output(out, overwrite=cfg.overwrite, owned=lambda path: has_marker(path, "demo"),
                         what="a demo folder", command="demo")
    if state == "owned":
        if not cfg.overwrite:
            raise InvalidArgumentError(f"{out}: a demo folder is already there; pass --overwrite to replace it")
        remove_demo_entries(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "demo")
    report = on_stage or (lambda name, info: None)
    archive, store_path = out / "archive", out / "store.zarr"
    run_dir, report_dir = out / "runs" / MODEL, out / "report"
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    synth_archive(archive, cfg.n_patches, seed=cfg.seed, workers=cfg.workers)
    seconds["synth"] = time.perf_counter() - t
    report("synth", {"path": archive, "n_patches": cfg.n_patches, "seconds": seconds["synth"]})

    t = time.perf_counter()
    ingest(archive, store_path, workers=cfg.workers, shard_size=256, compression="lz4")
    seconds["ingest"] = time.perf_counter() - t
    report("ingest", {"path": store_path, "seconds": seconds["ingest"]})

    t = time.perf_counter()
    split = make_split(open_store(store_path, mode="r+"), SPLIT_NAME, "iterative", fractions=(0.6, 0.2, 0.2),
                       seed=cfg.seed)
    counts = {k: int(v) for k, v in split.attrs["counts"].items()}
    seconds["split"] = time.perf_counter() - t
    report("split", {"name": SPLIT_NAME, "counts": counts, "seconds": seconds["split"]})

    t = time.perf_counter()
    with warnings.catch_warnings():  # 1,000 patches: the advice to feed a GPU with workers is noise here
        warnings.filterwarnings("ignore", message="--workers 0 on cuda", category=RuntimeWarning)
        result = train(train_config(store_path, run_dir), on_train_event)
    seconds["train"] = time.perf_counter() - t
    report("train", {"path": run_dir, "result": result, "seconds": seconds["train"]})

    t = time.perf_counter()
    written = write_report([run_dir], report_dir)
    seconds["report"] = time.perf_counter() - t
    report("report", {"path": report_dir, "files": written.files, "seconds": seconds["report"]})
    seconds["total"] = sum(seconds.values())
    return DemoResult(out, archive, store_path, run_dir, report_dir, counts, seconds, result, written.files)
