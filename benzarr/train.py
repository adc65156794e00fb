"""The trainer: one loop for every model, multi-label BCE, evaluation every epoch, checkpoints.

``train(TrainConfig(store=..., split=..., model=...))`` writes a run folder::

    RUNDIR/config.json          every setting, package versions, store identity (path, N,
                                SHA-256 of the split codes)
    RUNDIR/events.out.tfevents.*  TensorBoard scalars per epoch (see benzarr.tb) and hparams
    RUNDIR/checkpoints/last.pt  after every epoch, and every ``checkpoint_every`` steps
                                (benzarr.checkpoint: model, optimizer, scheduler, RNG states,
                                counters; in mid-epoch also the loader position and the
                                epoch's running sums)
    RUNDIR/checkpoints/best.pt  the best epoch by the monitored validation metric
    RUNDIR/metrics.json         test-subset metrics of best.pt (benzarr.metrics), best epoch, timing
    RUNDIR/scores.csv           per-class and micro/macro P, R, F1, F2, AP of the same

Reproducibility: the model is initialised from ``torch.manual_seed(seed)``, the loader's order
depends only on (seed, epoch) (``make_loader(..., seed)`` + ``set_epoch``), and a checkpoint
holds every RNG state, so ``resume=True`` after an interruption ends with the same weights and
metrics as an uninterrupted run: from the last finished epoch, or with ``checkpoint_every``
from the last checkpointed step (the loader serves exactly the rest of that epoch).
:func:`train` seeds the process's torch, NumPy and ``random`` generators, as Lightning's
``seed_everything`` does, and sets ``CUBLAS_WORKSPACE_CONFIG`` when unset (cuBLAS reads it once
a process); the deterministic-kernel and cuDNN flags are put back when it returns.
Multi-process data parallel runs start under ``torchrun`` (gloo on the CPU, NCCL on GPUs);
rank 0 alone evaluates and writes files.

One run per run folder: rank 0 holds :func:`benzarr.lock.run_lock` on RUNDIR from before the
"holds a run already" check to the end, so a second train into the same folder (two runs that
share the default ``runs/<model>-<split>``, say) fails at once and writes nothing there. A run
folder may not be, or lie inside, a store or an archive
(:func:`benzarr.fsutil.check_outside_datasets`).

Where one rank works alone (the lock, rank 0's outputs, validation and checkpoints), a failure
stops every rank at once (:meth:`benzarr.ranks.Ranks.together`), also under launchers that do not
stop the other ranks themselves as torchrun does (srun, mpirun).

The library never prints: progress goes to ``callback(TrainEvent)``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import zarr
from torch.nn.parallel import DistributedDataParallel

from benzarr import __version__
from benzarr.checkpoint import load_checkpoint, restore, save_checkpoint
from benzarr.checks import boolean, check_seed, finite, is_number, whole
from benzarr.data import BigEarthNetDataset, DeviceLoader, compiles_on, make_loader
from benzarr.errors import InvalidArgumentError, UnsafeOverwriteError, missing_extra, some_of
from benzarr.evaluate import RowBuffer, runs_under, score_batches
from benzarr.fsutil import check_not_a_file, check_outside_datasets
from benzarr.lock import run_lock
from benzarr.losses import create_loss, parse_loss
from benzarr.metrics import SCALAR_KEYS, MultilabelMetrics, json_friendly
from benzarr.models import FINETUNE_LEVELS, create_model, get_spec
from benzarr.ranks import Ranks, end_process_group, start_process_group
from benzarr.stats import split_digest
from benzarr.store import Store, open_store
from benzarr.tb import RunWriter
from benzarr.train_config import (AUGMENTS, OPTIMIZERS, RESAMPLE_MODES, RESUMABLE, SCHEDULERS, TrainConfig, default_out,
                                  unused_setting)


@dataclass
class TrainEvent:
    """What the trainer reports to its callback (rank 0 only).

    ``kind`` is ``"epoch_start"`` (``n_batches`` set: the batches this epoch will still
    serve), ``"step"`` (``patches_per_s`` since the epoch started; ``loss``: a recent batch's
    loss once it has reached the host, NaN in between, see ``LOSS_EVERY_S``), ``"epoch_end"``
    (``values``: train/val loss and F1, lr, throughput, ``improved``) or ``"test"``
    (``values``: test metrics of best.pt).
    """

    kind: str
    epoch: int
    step: int = 0
    n_batches: int = 0
    loss: float = math.nan
    patches_per_s: float = math.nan
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a finished run wrote (rank 0; other ranks get the same counters and empty metrics)."""

    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int
    best_score: float
    stopped_early: bool
    seconds: float
    test: dict[str, Any]
    emissions_kg: float | None = None


@dataclass
class RunState:
    """The counters of a run: what every checkpoint saves (``state``) and a resumed run goes on from."""

    epoch: int = 0                      # epochs completed
    step: int = 0                       # optimisation steps taken
    best_score: float | None = None     # the monitored validation value of the best epoch
    best_epoch: int = 0                 # 1-based; 0 before the first epoch ends
    bad_epochs: int = 0                 # epochs since the best one
    stopped: bool = False               # no more epochs (early stop or max_steps)
    stopped_early: bool = False
    seconds: float = 0.0                # training time, summed over resumed attempts


@dataclass
class EpochTally:
    """The running sums of the epoch in progress, on the training device: the loss summed
    over patches, the patch count, and the logits and labels of the epoch's training F1.

    A mid-epoch checkpoint saves them (``state_dict``), so a resumed epoch ends with the same
    train/loss and F1 as an uninterrupted one.
    """

    loss_sum: torch.Tensor
    seen: int = 0
    # one tensor each, filled batch by batch (a list of per-batch tensors pinned the C heap
    # between the training steps' large temporaries: see benzarr.evaluate.RowBuffer)
    _scores: RowBuffer = field(default_factory=lambda: RowBuffer(0))
    _targets: RowBuffer = field(default_factory=lambda: RowBuffer(0))

    @property
    def scores(self) -> list[torch.Tensor]:
        """The epoch's logits so far, as a list of (n, L) tensors (empty before the first batch)."""
        return [self._scores.result()] if self._scores.n else []

    @property
    def targets(self) -> list[torch.Tensor]:
        """The epoch's labels so far, (n, L) bool, as :attr:`scores`."""
        return [self._targets.result()] if self._targets.n else []

    @classmethod
    def empty(cls, device: torch.device) -> EpochTally:
        """Nothing seen yet."""
        return cls(torch.zeros((), device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """One batch: its mean loss, (B, L) logits and (B, L) labels (nothing is read back)."""
        self.seen += len(y)
        self.loss_sum += loss.detach() * len(y)
        self._scores.add(logits.detach())
        self._targets.add(y.bool())

    def state_dict(self) -> dict[str, Any]:
        """Host copies: ``loss_sum``, ``seen``, ``scores`` (n, L) float32, ``targets`` (n, L) bool."""
        return {"loss_sum": self.loss_sum.cpu(), "seen": self.seen,
                "scores": torch.cat(self.scores).cpu() if self.scores else None,
                "targets": torch.cat(self.targets).cpu() if self.targets else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochTally:
        """The tally :meth:`state_dict` saved, back on ``device``."""
        tally = cls(state["loss_sum"].to(device), int(state["seen"]))
        if state["scores"] is not None:
            tally._scores.add(state["scores"].to(device))
            tally._targets.add(state["targets"].to(device))
        return tally


def train(cfg: TrainConfig, callback: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` on the train subset of ``cfg.split``, evaluate on val every epoch,
    and test best.pt; see the module docstring for what the run folder holds.

    Raises:
        InvalidArgumentError: a bad setting (unknown band, CE loss, run folder in use, ...), or a
            ``callback`` that is not callable.
        PathConflictError: the run folder is, or lies inside, a store or an archive.
        RunLockedError: another train is writing the run folder (nothing is written to it).
        UnsafeOverwriteError: the run folder holds files of the names a run writes that no run
            wrote (``metrics.json``, ``checkpoints/best.pt``, ...; nothing is written to it).
        SplitNotFoundError, StoreNotFoundError: from the store.
        MissingDependencyError: ``track_emissions`` without codecarbon.
    """
    check_config(cfg)
    _check_callback(callback)
    cfg = _with_store_labels(replace(cfg))  # a copy, through TrainConfig.__post_init__ (numpy numbers, paths)
    run_dir = _check_run_dir(cfg)
    # the lock before the "holds a run already" check: no one writes in between
    with _ranks_and_lock(cfg, run_dir, lambda: _claim_run_dir(cfg)) as ranks:
        return _train(cfg, callback, ranks, run_dir)


def _check_callback(callback: object) -> None:
    """InvalidArgumentError unless ``callback`` is None or callable: callback=print() (None's
    result) is fine, but callback=5 was a TypeError at the first step, after the run folder
    was written."""
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(f"callback must be a function taking each event, or None; got {callback!r}")


def _check_run_dir(cfg: TrainConfig) -> Path:
    """The run folder (``--out``, or the default), checked before its lock creates it: not a
    file nor under one, not in a store or an archive."""
    run_dir = Path(cfg.out or default_out(cfg))
    check_not_a_file(run_dir, "the run folder (--out)")
    check_outside_datasets(run_dir)
    return run_dir


@contextmanager
def _ranks_and_lock(cfg: TrainConfig, run_dir: Path, check: Callable[[], object] = lambda: None) -> Iterator[Ranks]:
    """For the ``with`` block: the process group of a multi-process run (started here unless
    one is up, ended with the block), this process's :class:`Ranks`, and the run folder's lock
    on rank 0, the one writer (the other ranks would find it taken), then ``check()`` on
    every rank. A refusal on any rank stops every rank with one line.

    Every rank learns whether the lock was taken before any rank checks: the check reads a
    folder that only the lock holder may trust (another train may be writing it), and a rank
    that checked beside a refused lock told the user to ``--resume`` a run still running."""
    with ExitStack() as stack:
        if start_process_group(cfg.device):
            stack.callback(end_process_group)
        ranks = stack.enter_context(Ranks())
        ranks.together(lambda: stack.enter_context(run_lock(run_dir) if ranks.rank == 0 else nullcontext()))
        ranks.together(check)
        yield ranks


def _train(cfg: TrainConfig, callback: Callable[[TrainEvent], None] | None, ranks: Ranks,
           run_dir: Path) -> TrainResult:
    """:func:`train` once the run folder is checked and locked."""
    run = _setup(cfg, ranks, run_dir)   # seeds, data, model, optimiser, resume, writer
    model, opt, sched, criterion, st = run.model, run.optimizer, run.scheduler, run.criterion, run.state
    loader, emit = run.data.train, callback if run.rank == 0 else None
    try:
        while st.epoch < cfg.epochs and not st.stopped:
            epoch = st.epoch
            tally = _open_epoch(run)    # the whole epoch, or the rest of a checkpointed one
            model.train()
            if emit:
                emit(TrainEvent("epoch_start", epoch, st.step, n_batches=len(loader) - loader.served))
            t0, seen0, host_loss = time.perf_counter(), tally.seen, _HostLoss(run.device)  # no step waits for the GPU
            for batch in loader:
                x, y = batch["image"].contiguous(memory_format=run.memory_format), batch["label"]
                with run.autocast():
                    logits = model(x).float()
                loss = criterion(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                st.step += 1
                tally.add(loss, logits, y)
                if emit:
                    emit(TrainEvent("step", epoch, st.step, loss=host_loss(loss),
                                    patches_per_s=(tally.seen - seen0) * run.world_size / (time.perf_counter() - t0)))
                if cfg.max_steps is not None and st.step >= cfg.max_steps:
                    st.stopped = True
                    break
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    _save_mid_epoch(run, tally)  # last.pt with the loader position and the running sums
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)  # the epoch's time includes its queued GPU work
            throughput = (tally.seen - seen0) * run.world_size / (time.perf_counter() - t0)
            lr = opt.param_groups[0]["lr"]
            _step_scheduler(sched)
            st.epoch += 1
            values = _end_epoch(run, tally, lr, throughput)  # val, log, checkpoint, early stop
            if emit:
                emit(TrainEvent("epoch_end", epoch, st.step, values=values))
        result = _finish(run)           # test best.pt, metrics.json, scores.csv, hparams
    except RuntimeError as exc:         # a collective broken by another rank's death: say so in one line
        lost = ranks.lost_peer(exc)
        if lost is None:
            raise
        raise lost from exc
    finally:
        _close(run)                     # loaders, event file, emissions tracker, global flags
    if emit:
        emit(TrainEvent("test", st.epoch, st.step, values=result.test))
    return result


def _step_scheduler(scheduler: Any) -> None:
    """The per-epoch LR step (no scheduler: nothing). A run resumed from its epoch's last batch
    steps it before this process has taken an optimiser step, which torch warns about
    ("Detected call of lr_scheduler.step() before optimizer.step()"); the order was right."""
    if scheduler is None:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
        scheduler.step()


def _with_store_labels(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``labels=None`` made the store's own label set (clc43 when it has it, else
    clc19: a v2 store without reference maps), as ``split`` and ``show`` choose; config.json
    records the set used."""
    if cfg.labels is not None:
        return cfg
    from benzarr.split import default_label_set

    return replace(cfg, labels=default_label_set(open_store(cfg.store)))


def train_seeds(cfg: TrainConfig, seeds: Sequence[int],
                callback: Callable[[int, TrainEvent], None] | None = None) -> list[TrainResult]:
    """Run ``cfg`` once per seed into ``<out>/seed-<s>/`` (``benzarr train --seeds 0,1,2``).

    ``callback(seed, event)`` receives every run's events. ``<out>`` itself is locked for all
    the seeds (as each ``seed-<s>/`` is for its run), so no other train writes into it meanwhile.
    """
    check_config(cfg)
    _check_callback(callback)
    for seed in seeds:  # every seed before the first run: a bad last seed once failed runs later
        check_seed(seed, "--seeds")
    out = _check_run_dir(cfg)
    results = []
    with _ranks_and_lock(cfg, out, lambda: _check_seeds_folder(out, seeds, cfg.resume)):
        for seed in seeds:
            run_cb = (lambda event, s=seed: callback(s, event)) if callback else None
            results.append(train(replace(cfg, seed=int(seed), out=str(out / f"seed-{int(seed)}")), run_cb))
    return results


# -- everything below is called by the loop above: setup, evaluation, bookkeeping ------------------

#: Seconds between two copies of the training loss to the host for the progress callback.
LOSS_EVERY_S = 0.25


class _HostLoss:
    """A recent step's loss on the host without making any step wait for the GPU.

    Called with each step's loss: at most every ``LOSS_EVERY_S`` seconds it starts a copy of
    the loss to pinned host memory (asynchronous on CUDA; a CUDA event marks its end) and
    returns the copied value at the first call after the copy has landed, NaN otherwise. On
    the CPU the copy lands at once, so the value is the loss of the step just taken.
    """

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None
        self.pending, self.last = False, -math.inf

    def __call__(self, loss: torch.Tensor) -> float:
        now = time.perf_counter()
        if not self.pending and now - self.last >= LOSS_EVERY_S:
            self.host.copy_(loss.detach(), non_blocking=True)
            if self.copied is not None:
                self.copied.record()
            self.pending, self.last = True, now
        if self.pending and (self.copied is None or self.copied.query()):
            self.pending = False
            return float(self.host)
        return math.nan


def parse_modalities(modalities: str | Sequence[str], *, once: bool = True) -> list[str]:
    """``"s2,s1"`` -> ``["s2", "s1"]``: image modalities only, stored order
    (:func:`benzarr.bands.parse_modalities` with ``s2`` and ``s1`` allowed).

    Raises:
        InvalidArgumentError: empty, a name other than s2 and s1, or with ``once`` (the
            default: ``--modalities``) one named twice.
    """
    from benzarr.bands import IMAGE_MODALITIES
    from benzarr.bands import parse_modalities as parse

    return list(parse(modalities, IMAGE_MODALITIES, once=once))


def resolve_bands(model: str, bands: str | int | Sequence[str] | None, modalities: str | Sequence[str] = "s2") -> list[str]:
    """Channel names in input-channel order: the model's default when ``bands`` is None (with
    S1, VV and VH follow), else :func:`benzarr.bands.resolve_bands` (``"all"``, ``"rgb"``, a
    preset such as ``"10"``, or names as a list or ``"B04,B03,B02,VV"``).

    Raises:
        InvalidArgumentError: an unknown or repeated band name, or an unknown model.
    """
    from benzarr.bands import resolve_bands as resolve
    from benzarr.models import default_bands

    chosen = parse_modalities(modalities)
    if bands is None:
        bands = default_bands(model) if "s2" in chosen else "all"
    return list(resolve(bands, chosen))


def monitor_key(monitor: str) -> tuple[str, bool]:
    """``(key of the validation metrics dict, higher is better)`` for a ``--monitor`` value.

    Accepts ``val_loss`` and ``val_<metric>`` (or ``<metric>``) with a metric of
    ``benzarr.metrics.SCALAR_KEYS`` (micro_f1, macro_f1, micro_map, ...).
    """
    key = monitor.lower().removeprefix("val_").removeprefix("val/")
    if key == "loss":
        return "loss", False
    if key not in SCALAR_KEYS:
        choices = ", ".join(["val_loss"] + [f"val_{k}" for k in SCALAR_KEYS])
        raise InvalidArgumentError(f"unknown --monitor {monitor!r}: choose one of {choices}")
    return key, True


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings the trainer cannot use, before any data is read.

    Raises:
        InvalidArgumentError: naming the setting and the accepted values.
        MissingDependencyError: ``track_emissions`` without codecarbon installed.
    """
    if not isinstance(cfg, TrainConfig):
        raise InvalidArgumentError(f"train takes a TrainConfig, got {type(cfg).__name__} (TrainConfig(**settings) makes one)")
    _check_types(cfg)
    parse_loss(cfg.loss)
    for name, value, choices in (("--optim", cfg.optim, OPTIMIZERS), ("--scheduler", cfg.scheduler, SCHEDULERS),
                                 ("--labels", "clc43" if cfg.labels is None else cfg.labels, ("clc43", "clc19")),  # None: the store's
                                 ("--augment", cfg.augment, AUGMENTS),
                                 ("--resample", cfg.resample, RESAMPLE_MODES)):
        if value not in choices:
            raise InvalidArgumentError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    for name, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, not {value}")
    # NaN and infinity (and a negative decay or momentum) reached torch, which answered with a
    # bare ValueError, or not at all; a huge finite --lr that diverges is the user's choice
    finite("--lr", cfg.lr, positive=True)
    finite("--weight-decay", cfg.weight_decay)
    finite("--momentum", cfg.momentum)  # torch's SGD refuses < 0 alone; > 1 diverges but is legal
    unused = unused_setting(cfg)
    if unused:
        raise InvalidArgumentError(unused)
    check_seed(cfg.seed, "--seed")  # split's and demo's range: NumPy takes 0 .. 2**32 - 1
    if not cfg.loader_timeout >= 0:
        raise InvalidArgumentError(f"--loader-timeout must be 0 (wait for ever) or positive seconds, "
                                   f"not {cfg.loader_timeout}")
    if cfg.patience is not None and cfg.patience < 1:
        raise InvalidArgumentError(f"--patience must be at least 1 epoch, not {cfg.patience}")
    for name, value in (("--max-steps", cfg.max_steps), ("--checkpoint-every", cfg.checkpoint_every)):
        if value is not None and value < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, not {value}")
    if cfg.finetune not in FINETUNE_LEVELS:
        raise InvalidArgumentError(f"--finetune must be one of {sorted(FINETUNE_LEVELS)}, not {cfg.finetune}")
    # the loader's workers and the device were checked only after the run folder's: `--device gpu`
    # or `--workers -1` into a used --out was told to pass --resume, and then failed on the option
    whole("--workers", cfg.workers, 0)
    if cfg.device != "auto":
        from benzarr.data import check_device

        check_device(_parse_device(cfg.device), option="--device")
    get_spec(cfg.model)
    resolve_bands(cfg.model, cfg.bands, cfg.modalities)
    monitor_key(cfg.monitor)
    if cfg.track_emissions:
        try:
            import codecarbon  # noqa: F401  (the optional `emissions` extra)
        except ImportError:
            raise missing_extra("codecarbon", "--track-emissions") from None


def _check_types(cfg: TrainConfig) -> None:
    """Each setting of the type its field declares, named as the CLI names it: from Python,
    ``epochs="3"`` was a bare TypeError, ``epochs=1.5`` ran one epoch and recorded 1.5, and
    ``amp="no"`` failed in torch after the run folder was written."""
    for spec in fields(cfg):
        value, flag = getattr(cfg, spec.name), "--" + spec.name.replace("_", "-")
        if spec.type == "bool":
            boolean(flag, value)
        if spec.type in ("int", "int | None") and not (value is None and spec.type == "int | None"):
            whole(flag, value, -(2**63))  # the ranges are checked below, with their own words
        if spec.type == "float" and not is_number(value):
            raise InvalidArgumentError(f"{flag} must be a number, got {value!r}")
        if spec.type in ("str", "str | None") and not (isinstance(value, str) or (value is None and spec.type == "str | None")):
            raise InvalidArgumentError(f"{flag} must be a string, got {value!r}")


def _parse_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, or InvalidArgumentError listing the names train takes
    (torch's own message lists every backend it was built with)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"unknown --device {device!r}: choose auto, cpu or cuda (cuda:N)") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; under torchrun, ``cuda`` means
    ``cuda:<LOCAL_RANK>``; then checked by :func:`benzarr.data.check_device` and made current.

    Raises:
        InvalidArgumentError: ``cuda`` asked for but no GPU is visible; a device name torch
            does not know, or one this machine cannot use (``tpu``, ``mps`` off a Mac).
    """
    from benzarr.data import check_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = _parse_device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", local_rank)
    dev = check_device(dev, option="--device")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's numbers depend on."""
    return {"benzarr": __version__, "torch": str(torch.__version__), "numpy": np.__version__,
            "zarr": zarr.__version__, "python": platform.python_version(), "platform": platform.platform()}


def store_identity(store: Store, split: str) -> dict[str, Any]:
    """Path, N and a SHA-256 fingerprint of the split codes: what makes two runs comparable."""
    codes, attrs = store.read_split(split)
    return {
        "path": str(Path(store.path).resolve()),
        "n_patches": store.n_patches,
        "split": split,
        "split_method": attrs.get("method"),
        "split_counts": attrs.get("counts"),
        "split_sha256": split_digest(codes),
    }


@dataclass
class _Data:
    """A run's data: input bands, class names, the store's identity and the loaders (val and
    test on rank 0 only, and None for an empty subset)."""

    bands: list[str]
    class_names: list[str]
    identity: dict[str, Any]
    train: DeviceLoader
    val: DeviceLoader | None
    test: DeviceLoader | None


@dataclass
class _Run:
    """Everything the loop touches, built by ``_setup``."""

    cfg: TrainConfig
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    data: _Data
    model: torch.nn.Module              # what the loop calls (DistributedDataParallel under torchrun)
    net: torch.nn.Module                # the unwrapped model: evaluation and checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: torch.nn.Module
    config: dict[str, Any]              # what config.json and the checkpoints hold
    state: RunState
    monitor: tuple[str, bool]
    ranks: Ranks                        # this process's rank, and failures shared with the others
    partial: EpochTally | None = None   # a mid-epoch checkpoint's sums, until its epoch goes on
    writer: Any = None
    tracker: Any = None
    flags_before: tuple[bool, bool, bool] = (False, False, False)  # deterministic algorithms, cudnn.benchmark, warn-only
    started: float = field(default_factory=time.perf_counter)
    best_val: dict[str, Any] | None = None

    @property
    def last(self) -> Path:
        """``checkpoints/last.pt`` of the run folder."""
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of model inputs and weights (``channels_last`` or contiguous NCHW)."""
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def autocast(self) -> Any:
        """bfloat16 autocast when ``amp`` is on, a no-op context otherwise."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def clock(self) -> None:
        """Add the time since the last call (or since setup) to ``state.seconds``."""
        now = time.perf_counter()
        self.state.seconds += now - self.started
        self.started = now

    def save(self, name: str, partial: dict[str, Any] | None = None) -> None:
        """Write ``checkpoints/<name>`` (rank 0): weights, optimiser, scheduler, RNG, counters."""
        save_checkpoint(self.run_dir / "checkpoints" / name, self.net, self.optimizer, self.scheduler,
                        asdict(self.state), self.config, partial)


def _setup(cfg: TrainConfig, ranks: Ranks, run_dir: Path) -> _Run:
    """Open data, build the model and optimiser, resume if asked, open the run folder's outputs
    (rank 0). :func:`train` checked the settings, started the process group and claimed ``run_dir``.

    The steps a rank may fail alone (rank 0 opens the val and test data and the outputs) are
    :meth:`Ranks.together`: a failure there stops every rank, none waits in the collectives after."""
    rank, world = ranks.rank, ranks.world_size
    device = resolve_device(cfg.device, ranks.local_rank)
    advice = workers_advice(device, cfg.workers)
    if advice and rank == 0:
        warnings.warn(advice, RuntimeWarning, stacklevel=3)
    flags_before = _seed_and_set_determinism(cfg)
    try:
        seed = _run_loader_seed(cfg, run_dir)
        data = ranks.together(lambda: _open_data(cfg, device, rank, world, seed))
    except BaseException:
        _restore_flags(flags_before)
        raise
    model, net = _build_model(cfg, data, device, world)
    optimizer, scheduler = _build_optimizer(cfg, net)
    run = _Run(cfg, run_dir, rank, world, device, data, model, net, optimizer, scheduler,
               create_loss(cfg.loss), _run_config(cfg, data, world, device, seed), RunState(),
               monitor_key(cfg.monitor), ranks=ranks, flags_before=flags_before)

    def resume_and_open() -> None:
        if cfg.resume:
            _resume(run)
        if rank == 0:
            _open_outputs(run)

    try:
        ranks.together(resume_and_open)
    except BaseException:
        _close(run)  # the loaders' workers, the writer, the global flags
        raise
    return run


def workers_advice(device: torch.device, workers: int) -> str | None:
    """What to say when a GPU is fed without loader workers (the default, right for the CPU):
    the training process then decodes every batch itself, far below what a GPU takes."""
    if device.type != "cuda" or workers > 0:
        return None
    return (f"--workers 0 on {device}: the training process decodes every batch itself, which feeds a GPU "
            "far below its speed (an H200 node: 7,091 patches/s with 0 workers, 92,774 with 12); give "
            "--workers about the CPU cores per GPU")


def _listed(runs: Sequence[Path], parent: Path, most: int = 3) -> str:
    """``seed-0, seed-1, seed-2 and 4 more``: ``runs`` relative to ``parent``, the first ``most`` named."""
    return some_of([str(r.relative_to(parent)) for r in runs], most)


def _check_seeds_folder(out: Path, seeds: Sequence[int], resume: bool) -> None:
    """``--seeds`` writes ``out/seed-<s>/``: ``out`` must not be a run itself, or ``benzarr
    report out`` would read that run alone and none of the seeds. With ``resume`` every seed
    must have a checkpoint to go on from, without it none may: the seeds run one after the
    other, and ``--seeds 2,0`` into a folder holding seed-0 trained seed 2 before failing on
    seed 0 (and ``--resume --seeds 0,1,2`` beside seed-0 and seed-1 failed on seed 2 last)."""
    if (out / "config.json").is_file():
        raise InvalidArgumentError(f"{out} holds a run already (config.json): --seeds writes its runs into "
                                   f"{out}/seed-<s>/, which `benzarr report {out}` would then not read; give another --out")
    started = [int(s) for s in seeds if (out / f"seed-{int(s)}" / "checkpoints" / "last.pt").exists()]
    fresh = [int(s) for s in seeds if int(s) not in started]
    wrong, right = (fresh, started) if resume else (started, fresh)
    if not wrong:
        return
    names, rest = ",".join(map(str, wrong)), ",".join(map(str, right))
    if resume:
        also = f" and resume the others with --seeds {rest}" if right else ""
        raise InvalidArgumentError(f"--resume: {out} has no run of seed(s) {names} (no seed-<s>/checkpoints/last.pt), "
                                   f"so nothing was trained; start them with --seeds {names} without --resume{also}")
    also = f" (start the others with --seeds {rest})" if right else ""
    raise InvalidArgumentError(f"{out} holds runs of seed(s) {names} already, so nothing was trained; pass --resume "
                               f"to continue them{also}, or give another --out")


def _not_a_runs_files(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """Files in ``run_dir`` of the names a run writes (``config.json``, ``metrics.json``,
    ``scores.csv``, ``checkpoints/*``, ``events.out.tfevents.*``, with ``track_emissions``
    ``emissions.csv``) that no benzarr run wrote, relative to ``run_dir``: all of them unless
    ``config.json`` is a run configuration (then they are that run's; :func:`_claim_run_dir`
    decides what a run may do with it). A new run would replace them: a user's notes called
    ``metrics.json``, an evaluation's output folder, another program's checkpoints."""
    from benzarr.evaluate import read_run_config

    if (run_dir / "config.json").is_file():
        try:
            read_run_config(run_dir, values=False)  # an edited value leaves it a run's: "holds a run already"
            return []
        except InvalidArgumentError:
            pass
    names = ["config.json", "metrics.json", "scores.csv", *(["emissions.csv"] if cfg.track_emissions else [])]
    found = [name for name in names if os.path.lexists(run_dir / name)]
    try:
        found += sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
        if (run_dir / "checkpoints").is_dir():
            found += sorted(f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").iterdir())
        elif os.path.lexists(run_dir / "checkpoints"):
            found.append("checkpoints")
    except OSError:
        pass
    return found


def _claim_run_dir(cfg: TrainConfig) -> Path:
    """The run folder: a new one, or (``resume``) one holding ``checkpoints/last.pt``.

    A new run never goes into a folder holding files of the names a run writes that no run
    wrote (:func:`_not_a_runs_files`): it would replace them."""
    run_dir = Path(cfg.out or default_out(cfg))
    foreign = [] if cfg.resume else _not_a_runs_files(run_dir, cfg)
    if foreign:
        raise UnsafeOverwriteError(f"{run_dir}: holds {some_of(foreign, 4)} (names benzarr train writes), but no "
                                   "benzarr run wrote them (no run's config.json); a new run would replace them, so nothing "
                                   "was written: move them away or give another --out")
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not cfg.resume:
        raise InvalidArgumentError(f"{run_dir} holds a run already: pass --resume to continue it, or another --out")
    below = [] if (run_dir / "config.json").is_file() else runs_under(run_dir)
    if below:  # a config.json here would make `report run_dir` read this run alone, hiding those
        raise InvalidArgumentError(f"{run_dir} holds other runs ({_listed(below, run_dir)}): a run written beside "
                                   "them would hide them from `benzarr report`; give another --out")
    if cfg.resume and not last.exists():
        raise InvalidArgumentError(f"--resume: no checkpoint at {last}; start the run without --resume")
    return run_dir


def _seed_and_set_determinism(cfg: TrainConfig) -> tuple[bool, bool, bool]:
    """Seed torch, NumPy and random; set the kernel flags; return the flags to restore at the end.

    Determinism where it is cheap: seeded generators, deterministic kernels (warn, not fail,
    where an op has none), no cuDNN autotuning. Fast mode (deterministic=False): cuDNN picks
    the fastest kernels, deterministic or not; the data order and initial weights still follow the seed.
    """
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    flags_before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                    torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    return flags_before


def loader_seed(seed: int) -> int:
    """The seed of a run's data order and augmentation for the run's ``seed``: its SplitMix64
    hash, 0 .. 2**32 - 1.

    The loader shuffles epoch ``e`` with ``loader seed + e``, as torch's ``DistributedSampler``
    does; given the run seeds themselves, ``--seeds 0,1,2`` runs would share all epochs' orders
    but one (seed 1's epoch 0 is seed 0's epoch 1), and their spread would understate the
    variance between seeds. Hashed, neighbouring seeds are far apart.
    """
    from benzarr.augment import splitmix64

    return int(splitmix64(np.uint64(check_seed(seed))) >> np.uint64(32))


def _run_loader_seed(cfg: TrainConfig, run_dir: Path) -> int:
    """:func:`loader_seed` of ``cfg.seed``, or ``cfg.seed`` itself for a run resumed from a
    benzarr that gave the loader the run seed (its ``config.json`` records no ``loader_seed``),
    so that its remaining epochs keep the order they started with."""
    if cfg.resume:
        try:
            recorded = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and "loader_seed" not in recorded:
            return cfg.seed
    return loader_seed(cfg.seed)


def _open_data(cfg: TrainConfig, device: torch.device, rank: int, world: int, seed: int) -> _Data:
    """Bands, classes and identity of the store, the train loader (every rank, its share under
    torchrun; ``seed`` orders and augments it) and the val and test loaders (rank 0)."""
    store = open_store(cfg.store)
    bands = resolve_bands(cfg.model, cfg.bands, cfg.modalities)
    asked = parse_modalities(cfg.modalities)
    # (not when the store lacks one of them: the datasets stop the run with that line alone)
    if rank == 0 and cfg.bands is None and "s2" not in asked and set(asked) <= set(store.modalities):
        from benzarr.models import default_bands

        if default_bands(cfg.model) == "rgb":  # the name says RGB; the run would say nothing
            warnings.warn(f"{cfg.model} takes RGB (S2) bands by default; with --modalities {','.join(asked)} "
                          f"it reads {','.join(bands)} instead (give --bands to choose)", UserWarning, stacklevel=2)
    # once here, not once per loader (make_loader is then asked only where it applies)
    compile_transform = compiles_on(device, cfg.compile_transform, "--compile-transform", warn=rank == 0)
    identity = store_identity(store, cfg.split)
    if len(store.subset_rows(cfg.split, "train")) == 0:
        raise InvalidArgumentError(f"split {cfg.split!r} of {cfg.store} has no training patches")

    def loader(subset: str, shuffle: bool, distributed: bool = False) -> DeviceLoader:
        ds = BigEarthNetDataset(cfg.store, split=cfg.split, subset=subset, bands=bands, labels=cfg.labels,
                                normalize=True, modalities=asked, resample=cfg.resample,
                                align_corners=cfg.align_corners, augment=cfg.augment if subset == "train" else "none")
        return make_loader(ds, cfg.batch_size, shuffle=shuffle, num_workers=cfg.workers, seed=seed,
                           device=device, distributed=distributed, timeout=cfg.loader_timeout,
                           compile_transform=compile_transform)

    def eval_loader(subset: str) -> DeviceLoader | None:
        if rank != 0 or len(store.subset_rows(cfg.split, subset)) == 0:
            return None
        return loader(subset, shuffle=False)

    data = _Data(bands, store.class_names(cfg.labels), identity,
                 loader("train", shuffle=True, distributed=world > 1), eval_loader("val"), eval_loader("test"))
    # Each dataset (and the normalisation pass, minutes on a large store) read the split for
    # itself: a `split --overwrite` in between gave train rows of one version and val/test rows
    # of another, test patches among the training ones and optimistic metrics. The split is read
    # once more now, and every opened dataset must hold its subset's rows of that version: codes
    # changed since the start, or rewritten and then put back (A, B, A) while the datasets
    # opened, stop the run before it trains.
    codes, _ = store.read_split(cfg.split)
    now = split_digest(codes)
    opened = {"train": data.train, "val": data.val, "test": data.test}
    if now != identity["split_sha256"] or any(
            loader is not None and not np.array_equal(loader.dataset.rows, store.subset_rows(cfg.split, subset, codes))
            for subset, loader in opened.items()):
        for loader in opened.values():
            if loader is not None:
                loader.close()
        versions = f"split codes {identity['split_sha256'][:12]!r} -> {now[:12]!r}" if now != identity["split_sha256"] \
            else "rewritten and put back while its subsets were opened"
        raise InvalidArgumentError(
            f"split {cfg.split!r} of {cfg.store} was rewritten while the run read it ({versions}), so its subsets "
            "would come from two versions; run again once the split is written")
    return data


def _build_model(cfg: TrainConfig, data: _Data, device: torch.device,
                 world: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(what the loop calls, the unwrapped model)``; the initial weights depend on the seed alone."""
    torch.manual_seed(cfg.seed)
    net = create_model(cfg.model, in_channels=len(data.bands), num_classes=len(data.class_names),
                       weights=cfg.weights, finetune=cfg.finetune)
    net = net.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    if world == 1:
        return net, net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None), net


def _build_optimizer(cfg: TrainConfig, net: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser of the trainable parameters and the per-epoch LR scheduler (or None)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optim == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                           weight_decay=cfg.weight_decay)
    else:
        opt_class = torch.optim.Adam if cfg.optim == "adam" else torch.optim.AdamW
        optimizer = opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, _make_scheduler(cfg.scheduler, optimizer, cfg.epochs)


def _make_scheduler(kind: str, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """The per-epoch LR scheduler ``kind`` spanning ``epochs`` (None for ``"none"``)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None


def _replay_schedule(kind: str, optimizer: torch.optim.Optimizer, epochs: int, done: int) -> tuple[Any, list[float]]:
    """A new ``kind`` scheduler spanning ``epochs``, stepped ``done`` times from the initial
    learning rates, as a run that had asked for ``epochs`` from the start would stand after
    ``done`` epochs (the same recursive steps, so the same bits); and the first group's
    learning rate in each of those ``done`` epochs."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = _make_scheduler(kind, optimizer, epochs)
    rates = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": a replay, not a mistake
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            rates.append(float(optimizer.param_groups[0]["lr"]))
            scheduler.step()
    return scheduler, rates


def _refit_schedule(run: _Run, epochs_before: int) -> None:
    """A resumed run asked for another ``--epochs``: its learning-rate schedule spans the new
    length from here on (restored as it was, a cosine would reach 0 at the old last epoch and
    climb again; a step schedule would keep the old step). Warn when the epochs already done
    ran other rates than the new length gives them, since the run is then not one that asked
    for the new length from the start."""
    cfg, done = run.cfg, run.state.epoch
    if run.scheduler is None or epochs_before == cfg.epochs or done >= cfg.epochs:  # (no epoch left to run)
        return
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)  # the old length's rates
    _, ran = _replay_schedule(cfg.scheduler, probe, epochs_before, done)
    run.scheduler, now = _replay_schedule(cfg.scheduler, run.optimizer, cfg.epochs, done)
    if now != ran:
        warnings.warn(f"{run.last}: --epochs {epochs_before} -> {cfg.epochs}: the {cfg.scheduler} schedule now spans "
                      f"{cfg.epochs} epochs from epoch {done + 1} on; the {done} epochs done ran the rates of "
                      f"{epochs_before}, so the run differs from one that asked for {cfg.epochs} from the start",
                      RuntimeWarning, stacklevel=3)


def _run_config(cfg: TrainConfig, data: _Data, world: int, device: torch.device, seed: int) -> dict[str, Any]:
    """What config.json and every checkpoint hold: the settings (bands resolved), classes,
    store identity, the per-band normalisation (mean and std of the split's train subset),
    the train loader's seed, world size, device, intra-op CPU threads, package versions,
    creation time."""
    settings = {**asdict(cfg), "bands": data.bands}
    train = data.train.dataset
    # what `benzarr evaluate` reads any store with: the inputs as this run saw them
    normalization = {"mean": train.mean, "std": train.std, "source": train.stats_source}
    return {"settings": settings, "labels": cfg.labels, "classes": data.class_names, "store": data.identity,
            "normalization": normalization, "loss": parse_loss(cfg.loss).as_dict(), "loader_seed": seed,
            "world_size": world, "device": str(device), "cpu_threads": torch.get_num_threads(),
            "versions": package_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": []}


def _resume(run: _Run) -> None:
    """Go on from last.pt: refuse changed settings (but ``RESUMABLE`` ones) or split codes;
    load weights, optimiser, scheduler, RNG states and counters; after a mid-epoch
    checkpoint also the loader position and the epoch's running sums."""
    payload = load_checkpoint(run.last, map_location=run.device)
    old, settings = payload["config"], run.config["settings"]

    def before(name: str) -> Any:  # a setting added after the checkpoint was written had its default
        value = old["settings"].get(name, getattr(TrainConfig, name, None))
        # a run started before model names were lower-cased (TrainConfig) may hold "ShortCNN-RGB"
        return value.lower() if name == "model" and isinstance(value, str) else value

    changed = {k: (before(k), v) for k, v in settings.items() if k not in RESUMABLE and before(k) != v}
    started_with = old.get("loader_seed", old["settings"]["seed"])  # (none recorded: the run seed itself)
    if started_with != run.config["loader_seed"]:  # its config.json, which chose the seed, is gone or damaged
        changed["loader seed"] = (started_with, run.config["loader_seed"])
    if old["store"]["split_sha256"] != run.data.identity["split_sha256"]:
        changed["split codes"] = (old["store"]["split_sha256"][:12], run.data.identity["split_sha256"][:12])
    if changed:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise InvalidArgumentError(f"--resume with other settings than {run.last} was started with ({diff})")
    # A run is not shortened: --epochs below the epochs it began (or --max-steps below its steps)
    # ended it as it stood, and config.json then recorded the smaller number for all it had trained.
    begun = payload["state"]["epoch"] + (payload.get("partial") is not None)  # a mid-epoch checkpoint's epoch counts
    for flag, asked, done, what in (("--epochs", run.cfg.epochs, begun, "epoch(s) trained"),
                                    ("--max-steps", run.cfg.max_steps, payload["state"]["step"], "step(s) taken")):
        if asked is not None and asked < done:
            raise InvalidArgumentError(f"--resume {flag} {asked}: {run.last} has {done} {what} already; "
                                       f"give {flag} {done} or more (a run is not shortened), or start a new run "
                                       "with another --out")
    started, now = old.get("cpu_threads"), run.config["cpu_threads"]
    if run.device.type == "cpu" and started is not None and started != now:
        # torch splits a CPU reduction (a convolution's weight gradient) among its threads:
        # another count sums in another order, and the last bits differ from the first step on
        warnings.warn(f"{run.last}: resumed with {now} intra-op CPU threads, started with {started}: the weights "
                      f"will not match an uninterrupted run bit for bit (OMP_NUM_THREADS={started} would)",
                      RuntimeWarning, stacklevel=2)
    run.config = {**old, "settings": settings, "resumed": [*old.get("resumed", []), run.config["created"]]}
    st = run.state = RunState(**restore(payload, run.net, run.optimizer, run.scheduler))
    _refit_schedule(run, before("epochs"))
    if st.epoch < run.cfg.epochs and not st.stopped_early:
        # more epochs asked for, or --max-steps raised; a run at its --max-steps stays stopped (the
        # same command again with --resume took one step more, and began an epoch more)
        st.stopped = run.cfg.max_steps is not None and st.step >= run.cfg.max_steps
    partial = payload.get("partial")
    if partial is not None:  # the loader serves the rest of the epoch; rank 0 holds every rank's sums
        run.data.train.load_state_dict(partial["loader"])
        run.partial = EpochTally.from_state(partial, run.device) if run.rank == 0 else EpochTally.empty(run.device)


def _open_outputs(run: _Run) -> None:
    """Rank 0: config.json, the TensorBoard writer, the emissions tracker."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.json").write_text(json.dumps(run.config, indent=2) + "\n", encoding="utf-8")
    # purge_step: TensorBoard hides what an interrupted attempt wrote after the checkpoint.
    run.writer = RunWriter(run.run_dir, purge_step=run.state.epoch + 1)
    if run.cfg.track_emissions:
        from codecarbon import OfflineEmissionsTracker  # the optional `emissions` extra (check_config)

        run.tracker = OfflineEmissionsTracker(country_iso_code=run.cfg.emissions_country,
                                              output_dir=str(run.run_dir), log_level="error")
        run.tracker.start()


def _open_epoch(run: _Run) -> EpochTally:
    """The running sums of the epoch about to be served: a mid-epoch checkpoint's (its loader
    already stands at the next batch), or new ones with the loader at the epoch's start."""
    if run.partial is not None:
        tally, run.partial = run.partial, None
        return tally
    run.data.train.set_epoch(run.state.epoch)  # the order depends on (seed, epoch) only
    return EpochTally.empty(run.device)


def _save_mid_epoch(run: _Run, tally: EpochTally) -> None:
    """last.pt in the middle of an epoch (``checkpoint_every``): the counters, RNG states,
    the loader position and the epoch's running sums, so a resumed run goes on with the next
    batch. Every rank calls it (the loss sums of all ranks are added up on rank 0); rank 0 writes."""
    loss_sum, seen = tally.loss_sum, tally.seen
    if run.world_size > 1:
        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=run.device)])
        dist.reduce(totals, dst=0)
        loss_sum, seen = totals[0], int(totals[1])
    run.clock()

    def save() -> None:  # rank 0 alone; a failure (a full disk) stops every rank
        if run.rank == 0:
            partial = {**tally.state_dict(), "loss_sum": loss_sum.cpu(), "seen": seen,
                       "loader": run.data.train.state_dict()}
            run.save("last.pt", partial)

    run.ranks.together(save)


def _evaluate(run: _Run, loader: DeviceLoader | None, subset: str) -> dict[str, Any] | None:
    """Mean BCE (``loss``) and ``benzarr.metrics`` of the unwrapped model over ``loader`` (of
    ``subset``, named in errors); ``None`` without a loader (an empty subset, or a rank other than 0)."""
    if loader is None:
        return None
    net = run.net
    was_training = net.training
    net.eval()
    # on the device until the end; the same pass as benzarr evaluate's
    logits, truth, _, loss_sum = score_batches(net, loader, run.device, run.memory_format, run.cfg.amp, run.criterion)
    net.train(was_training)
    if logits is None:
        return None
    metrics = _metrics([logits], [truth], run.data.class_names, where=_where(run, subset))
    return {**metrics, "loss": float(loss_sum) / metrics["n_samples"]}


def _where(run: _Run, subset: str) -> str:
    """``<run folder>: epoch N, <subset> scores``: where a diverged model was seen (for errors)."""
    return f"{run.run_dir}: epoch {run.state.epoch}, {subset} scores"


def _metrics(scores: list[torch.Tensor], targets: list[torch.Tensor],
             class_names: list[str] | None = None, where: str = "") -> dict[str, Any]:
    """``benzarr.metrics`` of batches of logits and labels kept on the device: one copy to the host.

    Raises:
        InvalidArgumentError: NaN scores (a diverged model), naming ``where`` (run folder, epoch).
    """
    logits = torch.cat(scores)
    if torch.isnan(logits).any():  # benzarr.metrics would say so too, without the run and the epoch
        raise InvalidArgumentError(f"{where or 'training'}: the model's scores hold NaN: it diverged "
                                   f"(a lower --lr, or --amp off, may help)")
    metrics = MultilabelMetrics(class_names=class_names)
    metrics.update(logits, torch.cat(targets))
    return metrics.compute()


def _end_epoch(run: _Run, tally: EpochTally, lr: float, throughput: float) -> dict[str, Any]:
    """Validate (rank 0), log the epoch, track the best score, checkpoint, decide early stopping."""
    st, cfg = run.state, run.cfg
    totals = torch.stack([tally.loss_sum.float(), torch.tensor(float(tally.seen), device=run.device)])
    if run.world_size > 1:
        dist.all_reduce(totals)
    values: dict[str, Any] = {
        "train/loss": float(totals[0] / max(totals[1], 1)), "train/micro_f1": None, "train/macro_f1": None,
        "lr": lr, "throughput/patches_per_s": throughput,
    }

    def close_epoch() -> tuple[bool, bool, bool]:
        """Every rank: its train scores (a rank's own batches may hold NaN); rank 0 alone:
        validate, log, track the best score, checkpoint, decide early stopping."""
        train = _metrics(tally.scores, tally.targets, where=_where(run, "train")) if tally.targets else {}
        values.update({"train/micro_f1": train.get("micro_f1"), "train/macro_f1": train.get("macro_f1")})
        run.clock()
        if run.rank != 0:
            return False, False, False
        val = _evaluate(run, run.data.val, "val")
        if val is not None:
            values.update({"val/loss": val["loss"], **{f"val/{k}": val[k] for k in SCALAR_KEYS}})
        improved = _track_best(run, val)
        if cfg.patience is not None and st.bad_epochs >= cfg.patience:
            st.stopped = st.stopped_early = True
        run.writer.scalars(st.epoch, values)
        if improved:
            run.save("best.pt")
        run.save("last.pt")
        return improved, st.stopped, st.stopped_early

    # every rank gets rank 0's early-stopping decision, or stops with it if it failed
    improved, st.stopped, st.stopped_early = run.ranks.together(close_epoch, src=0)
    return {**values, "improved": improved, "best_score": st.best_score, "best_epoch": st.best_epoch}


def _track_best(run: _Run, val: dict[str, Any] | None) -> bool:
    """Whether the epoch just ended is the best so far by the monitored value; updates the counters."""
    st = run.state
    key, higher = run.monitor
    score = None if val is None else val[key]
    if score is None or (isinstance(score, float) and math.isnan(score)):
        improved = val is None  # no validation subset: the last epoch is the best
    else:
        improved = st.best_score is None or (score > st.best_score if higher else score < st.best_score)
    if improved:
        st.best_score, st.best_epoch, st.bad_epochs = score, st.epoch, 0
        run.best_val = val
    else:
        st.bad_epochs += 1
    return improved


def _finish(run: _Run) -> TrainResult:
    """Test best.pt (rank 0), write metrics.json, scores.csv and the hparams."""
    st, cfg = run.state, run.cfg
    if run.world_size > 1:
        dist.barrier()
    test: dict[str, Any] = {}
    emissions = None
    if run.rank == 0:
        best = run.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            run.net.load_state_dict(load_checkpoint(best, map_location=run.device)["model"])
            if run.best_val is None:  # resumed after the best epoch: validate it again for the record
                run.best_val = _evaluate(run, run.data.val, "val")
        test = _evaluate(run, run.data.test, "test (best.pt)") or {}
        emissions = _stop_tracker(run)
        summary = {
            "split": cfg.split, "subset": "test", "checkpoint": "checkpoints/best.pt",
            "model": cfg.model, "labels": cfg.labels, "seed": cfg.seed,
            "monitor": cfg.monitor, "best_epoch": st.best_epoch, "best_score": st.best_score,
            "epochs": st.epoch, "steps": st.step, "stopped_early": st.stopped_early,
            "train_seconds": st.seconds, "emissions": emissions,
            "test": json_friendly(test) if test else None,
            "val": json_friendly({k: v for k, v in run.best_val.items() if k != "per_class"}) if run.best_val else None,
        }
        (run.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if test:
            write_scores_csv(run.run_dir / "scores.csv", test)
        hparams = {k: v for k, v in run.config["settings"].items()
                   if k in ("model", "split", "labels", "bands", "epochs", "batch_size", "lr", "optim",
                            "weight_decay", "scheduler", "seed", "finetune", "amp", "augment", "resample")}
        hparams["bands"] = ",".join(hparams["bands"])
        run.writer.hparams(hparams, {f"test_{k}": test.get(k) for k in SCALAR_KEYS})
    best_score = math.nan if st.best_score is None else float(st.best_score)
    return TrainResult(run.run_dir, st.epoch, st.step, st.best_epoch, best_score, st.stopped_early,
                       st.seconds, test, None if emissions is None else emissions["kg_co2eq"])


def _stop_tracker(run: _Run) -> dict[str, Any] | None:
    """Stop the emissions tracker: ``{kg_co2eq, kwh, country}``, or None without one."""
    if run.tracker is None:
        return None
    tracker, run.tracker = run.tracker, None
    kg = tracker.stop()  # kg CO2-equivalent
    data = getattr(tracker, "final_emissions_data", None)
    return {"kg_co2eq": kg, "kwh": getattr(data, "energy_consumed", None), "country": run.cfg.emissions_country}


def _close(run: _Run) -> None:
    """Release what ``_setup`` took, also after an error or an interruption (the checkpoints
    already written stay, so ``resume`` goes on from the last one)."""
    for loader in (run.data.train, run.data.val, run.data.test):
        if loader is not None:
            loader.close()  # stop the loader's workers now, not when the run is collected
            loader.dataset.close()  # and unmap its shards (a notebook's runs held thousands of files open)
    if run.tracker is not None:
        run.tracker.stop()
        run.tracker = None
    if run.writer is not None:
        run.writer.close()
        run.writer = None
    _restore_flags(run.flags_before)


def _restore_flags(flags_before: tuple[bool, bool, bool]) -> None:
    """Deterministic algorithms (and their warn-only mode) and cudnn.benchmark as they were before the run."""
    torch.use_deterministic_algorithms(flags_before[0], warn_only=flags_before[2])
    torch.backends.cudnn.benchmark = flags_before[1]


def write_scores_csv(path: str | Path, metrics: dict[str, Any]) -> Path:
    """One row per class, then ``micro`` and ``macro`` rows: support, predicted, precision,
    recall, F1, F2 (threshold 0.5) and average precision. Empty cells for absent classes (NaN)."""

    def cell(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.6f}"

    fields = ("precision", "recall", "f1", "f2", "ap")
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class", "index", "support", "predicted", *fields])
        for row in metrics["per_class"]:
            w.writerow([row["class"], row["index"], row["support"], row["predicted"], *(cell(row[k]) for k in fields)])
        support = sum(r["support"] for r in metrics["per_class"])
        predicted = sum(r["predicted"] for r in metrics["per_class"])
        for avg in ("micro", "macro"):
            vals = [metrics[f"{avg}_{k}"] for k in ("precision", "recall", "f1", "f2", "map")]
            w.writerow([avg, "", support, predicted, *(cell(v) for v in vals)])
    return path
