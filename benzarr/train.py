"""The trainer: one loop for every model, multi-label BCE, evaluation every epoch, checkpoints.

``train(TrainConfig(store=..., split=..., model=...))`` writes a run folder::

    RUNDIR/config.json          every setting, package versions, store identity (path, N,
                                SHA-256 of the split codes)
    RUNDIR/events.out.tfevents.*  TensorBoard scalars per epoch (see benzarr.tb) and hparams
    RUNDIR/checkpoints/last.pt  after every epoch (benzarr.checkpoint: model, optimizer,
                                scheduler, RNG states, counters)
    RUNDIR/checkpoints/best.pt  the best epoch by the monitored validation metric
    RUNDIR/metrics.json         test-subset metrics of best.pt (benzarr.metrics), best epoch, timing
    RUNDIR/scores.csv           per-class and micro/macro P, R, F1, F2, AP of the same

Reproducibility: the model is initialised from ``torch.manual_seed(seed)``, the loader's order
depends only on (seed, epoch) (``make_loader(..., seed)`` + ``set_epoch``), and a checkpoint
holds every RNG state, so ``resume=True`` after an interruption ends with the same weights and
metrics as an uninterrupted run. Multi-process data parallel runs start under ``torchrun``
(gloo on the CPU, NCCL on GPUs); rank 0 alone evaluates and writes files.

The library never prints: progress goes to ``callback(TrainEvent)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benzarr.metrics import MultilabelMetrics


@dataclass
class TrainConfig:
    """Every setting of a run (``benzarr train`` options map one to one)."""

    store: str                      # path of a benzarr store
    split: str                      # splits/<name> in the store: train / val / test subsets
    model: str = "shortcnn-rgb"     # a name of benzarr.models.list_models()
    labels: str = "clc43"           # clc43 | clc19
    modalities: str = "s2"          # s2 | s1 | s2,s1: image channels (S1 adds VV, VH)
    bands: str | Sequence[str] | None = None  # None: the model's default; "rgb", "all" or names
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optim: str = "adam"             # sgd | adam | adamw
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.0
    scheduler: str = "none"         # none | cosine (over `epochs`) | step (x0.1 every epochs//3)
    loss: str = "bce"               # multi-label: binary cross-entropy on logits
    seed: int = 0
    workers: int = 0                # DataLoader worker processes (per process under torchrun)
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = False               # bfloat16 autocast (CPU and GPU; no loss scaling needed)
    channels_last: bool = True      # NHWC tensors: ~1.5-2x faster convolutions on the CPU
    deterministic: bool = True      # deterministic kernels; False: cudnn.benchmark and the fastest kernels
    patience: int | None = None     # early stopping: epochs without improvement; None: off
    monitor: str = "val_macro_f1"   # val_loss or val_<metric> (micro_f1, macro_map, ...)
    out: str | None = None          # run folder; default runs/<model>-<split>
    resume: bool = False            # continue from out/checkpoints/last.pt
    max_steps: int | None = None    # stop after this many optimisation steps (smoke tests)
    weights: str | None = None      # local .pt/.pth file to start from
    finetune: int = 0               # 0 all, 1 head only, 2 last block + head
    track_emissions: bool = False   # codecarbon offline tracker (the `emissions` extra)
    emissions_country: str = "DEU"  # ISO 3166 alpha-3 code for codecarbon's offline mode


@dataclass
class TrainEvent:
    """What the trainer reports to its callback (rank 0 only).

    ``kind`` is ``"epoch_start"`` (``n_batches`` set), ``"step"`` (``patches_per_s`` since the
    epoch started; ``loss``: a recent batch's loss once it has reached the host, NaN in between,
    see ``LOSS_EVERY_S``), ``"epoch_end"`` (``values``: train/val loss and F1, lr, throughput,
    ``improved``) or ``"test"`` (``values``: test metrics of best.pt).
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


def train(cfg: TrainConfig, callback: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` on the train subset of ``cfg.split``, evaluate on val every epoch,
    and test best.pt; see the module docstring for what the run folder holds.

    Raises:
        InvalidArgumentError: a bad setting (unknown band, CE loss, run folder in use, ...).
        SplitNotFoundError, StoreNotFoundError: from the store.
        MissingDependencyError: ``track_emissions`` without codecarbon.
    """
    run = _setup(cfg)                   # process group, seeds, data, model, optimiser, writer, resume
    model, opt, sched, criterion, st = run.model, run.optimizer, run.scheduler, run.criterion, run.state
    emit = callback if run.rank == 0 else None
    try:
        while st["epoch"] < cfg.epochs and not st["stopped"]:
            epoch = st["epoch"]
            run.train_loader.set_epoch(epoch)   # the order depends on (seed, epoch) only
            model.train()
            if emit:
                emit(TrainEvent("epoch_start", epoch, st["step"], n_batches=len(run.train_loader)))
            seen, loss_sum, t0 = 0, torch.zeros((), device=run.device), time.perf_counter()
            scores, targets, host_loss = [], [], _HostLoss(run.device)  # no step waits for the GPU
            for batch in run.train_loader:
                x, y = batch["image"].contiguous(memory_format=run.memory_format), batch["label"]
                with run.autocast():
                    logits = model(x).float()
                loss = criterion(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                st["step"] += 1
                seen += len(y)
                loss_sum += loss.detach() * len(y)
                scores.append(logits.detach())
                targets.append(y.bool())
                if emit:
                    emit(TrainEvent("step", epoch, st["step"], loss=host_loss(loss),
                                    patches_per_s=seen * run.world_size / (time.perf_counter() - t0)))
                if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                    st["stopped"] = True
                    break
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)  # the epoch's time includes its queued GPU work
            throughput = seen * run.world_size / (time.perf_counter() - t0)
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            st["epoch"] += 1
            values = _end_epoch(run, loss_sum, seen, scores, targets, lr, throughput)  # val, log, checkpoint, early stop
            if emit:
                emit(TrainEvent("epoch_end", epoch, st["step"], values=values))
        result = _finish(run)           # test best.pt, metrics.json, scores.csv, hparams
    finally:
        _close(run)                     # event file, emissions tracker, process group, global flags
    if emit:
        emit(TrainEvent("test", st["epoch"], st["step"], values=result.test))
    return result


def train_seeds(cfg: TrainConfig, seeds: Sequence[int],
                callback: Callable[[int, TrainEvent], None] | None = None) -> list[TrainResult]:
    """Run ``cfg`` once per seed into ``<out>/seed-<s>/`` (``benzarr train --seeds 0,1,2``).

    ``callback(seed, event)`` receives every run's events.
    """
    out = Path(cfg.out or default_out(cfg))
    results = []
    for seed in seeds:
        run_cb = (lambda event, s=seed: callback(s, event)) if callback else None
        results.append(train(replace(cfg, seed=int(seed), out=str(out / f"seed-{int(seed)}")), run_cb))
    return results


# -- everything below is called by the loop above: setup, evaluation, bookkeeping ------------------

#: Loss names that mean single-label softmax cross-entropy (refused: the task is multi-label).
_CE_NAMES = {"ce", "crossentropy", "cross-entropy", "cross_entropy", "categorical_crossentropy", "softmax"}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
#: Settings a resumed run may change; every other one must equal the checkpoint's.
RESUMABLE = {"store", "epochs", "patience", "max_steps", "workers", "device", "deterministic", "resume", "out",
             "track_emissions", "emissions_country", "weights"}
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


def default_out(cfg: TrainConfig) -> str:
    """The run folder when ``cfg.out`` is not given: ``runs/<model>-<split>``."""
    return str(Path("runs") / f"{cfg.model}-{cfg.split}")


def parse_modalities(modalities: str | Sequence[str]) -> list[str]:
    """``"s2,s1"`` -> ``["s2", "s1"]``: image modalities only, stored order
    (:func:`benzarr.bands.parse_modalities` with ``s2`` and ``s1`` allowed).

    Raises:
        InvalidArgumentError: empty, or a name other than s2 and s1.
    """
    from benzarr.bands import IMAGE_MODALITIES
    from benzarr.bands import parse_modalities as parse

    return list(parse(modalities, IMAGE_MODALITIES))


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
    from benzarr.errors import InvalidArgumentError
    from benzarr.metrics import SCALAR_KEYS

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
    from benzarr.errors import InvalidArgumentError, MissingDependencyError
    from benzarr.models import FINETUNE_LEVELS, get_spec

    loss = cfg.loss.lower()
    if loss in _CE_NAMES:
        raise InvalidArgumentError(
            f"--loss {cfg.loss} is refused: BigEarthNet is multi-label (a patch has 1 to 12 classes), "
            "and softmax cross-entropy makes the classes compete for one probability mass, so it "
            "cannot predict several classes at once. Use --loss bce (a sigmoid and binary "
            "cross-entropy per class)."
        )
    if loss != "bce":
        raise InvalidArgumentError(f"unknown --loss {cfg.loss!r}: the multi-label loss is bce")
    for name, value, choices in (("--optim", cfg.optim, OPTIMIZERS), ("--scheduler", cfg.scheduler, SCHEDULERS),
                                 ("--labels", cfg.labels, ("clc43", "clc19"))):
        if value not in choices:
            raise InvalidArgumentError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    for name, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, not {value}")
    if not cfg.lr > 0:
        raise InvalidArgumentError(f"--lr must be positive, not {cfg.lr}")
    if cfg.patience is not None and cfg.patience < 1:
        raise InvalidArgumentError(f"--patience must be at least 1 epoch, not {cfg.patience}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise InvalidArgumentError(f"--max-steps must be at least 1, not {cfg.max_steps}")
    if cfg.finetune not in FINETUNE_LEVELS:
        raise InvalidArgumentError(f"--finetune must be one of {sorted(FINETUNE_LEVELS)}, not {cfg.finetune}")
    get_spec(cfg.model)
    resolve_bands(cfg.model, cfg.bands, cfg.modalities)
    monitor_key(cfg.monitor)
    if cfg.track_emissions:
        try:
            import codecarbon  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "--track-emissions needs codecarbon: pip install 'benzarr[emissions]'"
            ) from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; under torchrun, ``cuda`` means
    ``cuda:<LOCAL_RANK>``.

    Raises:
        InvalidArgumentError: ``cuda`` asked for but no GPU is visible.
    """
    from benzarr.errors import InvalidArgumentError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError("--device cuda: no GPU is visible to torch (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's numbers depend on."""
    import platform

    import numpy
    import zarr

    from benzarr import __version__

    return {"benzarr": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "zarr": zarr.__version__, "python": platform.python_version(), "platform": platform.platform()}


def store_identity(store: Any, split: str) -> dict[str, Any]:
    """Path, N and a SHA-256 fingerprint of the split codes: what makes two runs comparable."""
    import hashlib

    codes, attrs = store.read_split(split)
    return {
        "path": str(Path(store.path).resolve()),
        "n_patches": store.n_patches,
        "split": split,
        "split_method": attrs.get("method"),
        "split_counts": attrs.get("counts"),
        "split_sha256": hashlib.sha256(codes.astype("int8").tobytes()).hexdigest(),
    }


@dataclass
class _Run:
    """Everything the loop touches, built by ``_setup``."""

    cfg: TrainConfig
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    model: torch.nn.Module              # what the loop calls (DistributedDataParallel under torchrun)
    net: torch.nn.Module                # the unwrapped model: evaluation and checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: torch.nn.Module
    train_loader: Any
    val_loader: Any
    test_loader: Any
    class_names: list[str]
    config: dict[str, Any]              # what config.json and the checkpoints hold
    state: dict[str, Any]               # epoch, step, best_score, best_epoch, bad_epochs, stopped, ...
    monitor: tuple[str, bool]
    writer: Any = None
    tracker: Any = None
    own_process_group: bool = False
    flags_before: tuple[bool, bool] = (False, False)  # deterministic algorithms, cudnn.benchmark
    started: float = field(default_factory=time.perf_counter)
    best_val: dict[str, Any] | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of model inputs and weights (``channels_last`` or contiguous NCHW)."""
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def autocast(self) -> Any:
        """bfloat16 autocast when ``amp`` is on, a no-op context otherwise."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)


def _init_distributed(device: str) -> tuple[int, int, int, bool]:
    """``(rank, world size, local rank, created)``; starts the process group under torchrun."""
    import os
    from datetime import timedelta

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    # Rank 0 alone evaluates; the others wait in a collective meanwhile, hence the long timeout.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def _broadcast_flags(run: _Run, *flags: bool) -> list[bool]:
    """Rank 0's booleans on every rank (early-stopping decisions)."""
    if run.world_size == 1:
        return list(flags)
    import torch.distributed as dist

    t = torch.tensor([float(f) for f in flags], device=run.device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def _setup(cfg: TrainConfig) -> _Run:
    """Check settings, start the process group, open data, build the model, resume if asked."""
    import json
    import os
    import random
    from dataclasses import asdict
    from datetime import datetime, timezone

    import numpy as np

    from benzarr.checkpoint import load_checkpoint, restore
    from benzarr.data import BigEarthNetDataset, make_loader
    from benzarr.errors import InvalidArgumentError
    from benzarr.models import create_model
    from benzarr.store import open_store
    from benzarr.tb import RunWriter

    check_config(cfg)
    run_dir = Path(cfg.out or default_out(cfg))
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not cfg.resume:
        raise InvalidArgumentError(f"{run_dir} holds a run already: pass --resume to continue it, or another --out")
    if cfg.resume and not last.exists():
        raise InvalidArgumentError(f"--resume: no checkpoint at {last}; start the run without --resume")
    rank, world, local_rank, own_pg = _init_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank)

    # Determinism where it is cheap: seeded generators, deterministic kernels (warn, not fail,
    # where an op has none), no cuDNN autotuning. Fast mode (deterministic=False): cuDNN picks
    # the fastest kernels, deterministic or not; the data order and initial weights still follow the seed.
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    flags_before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    store = open_store(cfg.store)
    bands = resolve_bands(cfg.model, cfg.bands, cfg.modalities)
    class_names = store.class_names(cfg.labels)
    identity = store_identity(store, cfg.split)
    n_train = len(store.subset_rows(cfg.split, "train"))
    if n_train == 0:
        raise InvalidArgumentError(f"split {cfg.split!r} of {cfg.store} has no training patches")

    def dataset(subset: str) -> Any:
        return BigEarthNetDataset(cfg.store, split=cfg.split, subset=subset, bands=bands, labels=cfg.labels,
                                  normalize=True, modalities=parse_modalities(cfg.modalities))

    def eval_loader(subset: str) -> Any:
        if rank != 0 or len(store.subset_rows(cfg.split, subset)) == 0:
            return None
        return make_loader(dataset(subset), cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                           seed=cfg.seed, device=device)

    train_loader = make_loader(dataset("train"), cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                               seed=cfg.seed, device=device, distributed=world > 1)
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed alone
    net = create_model(cfg.model, in_channels=len(bands), num_classes=len(class_names),
                       weights=cfg.weights, finetune=cfg.finetune)
    net = net.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optim == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                           weight_decay=cfg.weight_decay)
    else:
        opt_class = torch.optim.Adam if cfg.optim == "adam" else torch.optim.AdamW
        optimizer = opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = None
    if cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    elif cfg.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)

    settings = asdict(cfg)
    settings["bands"] = bands
    config = {"settings": settings, "labels": cfg.labels, "classes": class_names, "store": identity,
              "world_size": world, "device": str(device), "versions": package_versions(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": []}
    state = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0,
             "stopped": False, "stopped_early": False, "seconds": 0.0}
    if cfg.resume:
        payload = load_checkpoint(last, map_location=device)
        old = payload["config"]
        changed = {k: (old["settings"].get(k), v) for k, v in settings.items()
                   if k not in RESUMABLE and old["settings"].get(k) != v}
        if old["store"]["split_sha256"] != identity["split_sha256"]:
            changed["split codes"] = (old["store"]["split_sha256"][:12], identity["split_sha256"][:12])
        if changed:
            diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise InvalidArgumentError(f"--resume with other settings than {last} was started with ({diff})")
        config = {**old, "settings": settings, "resumed": [*old.get("resumed", []), config["created"]]}
        state.update(restore(payload, net, optimizer, scheduler))
        if state["epoch"] < cfg.epochs and not state["stopped_early"]:
            state["stopped"] = False  # more epochs asked for (or --max-steps raised)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    run = _Run(cfg, run_dir, rank, world, device, model, net, optimizer, scheduler,
               torch.nn.BCEWithLogitsLoss(), train_loader, eval_loader("val"), eval_loader("test"),
               class_names, config, state, monitor_key(cfg.monitor), own_process_group=own_pg,
               flags_before=flags_before)
    if rank == 0:
        # purge_step: TensorBoard hides what an interrupted attempt wrote after the checkpoint.
        run.writer = RunWriter(run_dir, purge_step=state["epoch"] + 1)
        if cfg.track_emissions:
            from codecarbon import OfflineEmissionsTracker

            run.tracker = OfflineEmissionsTracker(country_iso_code=cfg.emissions_country, output_dir=str(run_dir),
                                                  log_level="error")
            run.tracker.start()
    return run


def _evaluate(run: _Run, loader: Any) -> dict[str, Any] | None:
    """Mean BCE (``loss``) and ``benzarr.metrics`` of the unwrapped model over ``loader``;
    ``None`` without a loader (an empty subset, or a rank other than 0)."""
    if loader is None:
        return None
    net = run.net
    was_training = net.training
    net.eval()
    loss_sum, scores, targets = torch.zeros((), device=run.device), [], []  # on the device until the end
    with torch.no_grad():
        for batch in loader:
            x, y = batch["image"].contiguous(memory_format=run.memory_format), batch["label"]
            with run.autocast():
                logits = net(x).float()
            loss_sum += run.criterion(logits, y) * len(y)
            scores.append(logits)
            targets.append(y.bool())
    net.train(was_training)
    if not targets:
        return None
    metrics = _metrics(scores, targets, run.class_names)
    return {**metrics, "loss": float(loss_sum) / metrics["n_samples"]}


def _metrics(scores: list[torch.Tensor], targets: list[torch.Tensor],
             class_names: list[str] | None = None) -> dict[str, Any]:
    """``benzarr.metrics`` of batches of logits and labels kept on the device: one copy to the host."""
    metrics = MultilabelMetrics(class_names=class_names)
    metrics.update(torch.cat(scores), torch.cat(targets))
    return metrics.compute()


def _end_epoch(run: _Run, loss_sum: torch.Tensor, seen: int, scores: list[torch.Tensor],
               targets: list[torch.Tensor], lr: float, throughput: float) -> dict[str, Any]:
    """Validate (rank 0), log the epoch, track the best score, checkpoint, decide early stopping.

    ``scores`` and ``targets``: the epoch's training logits and labels, still on the device.
    """
    import math

    from benzarr.checkpoint import save_checkpoint
    from benzarr.metrics import SCALAR_KEYS

    st, cfg = run.state, run.cfg
    totals = torch.stack([loss_sum.float(), torch.tensor(float(seen), device=loss_sum.device)])
    if run.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    train = _metrics(scores, targets) if targets else {}
    values: dict[str, Any] = {
        "train/loss": float(totals[0] / max(totals[1], 1)),
        "train/micro_f1": train.get("micro_f1"), "train/macro_f1": train.get("macro_f1"),
        "lr": lr, "throughput/patches_per_s": throughput,
    }
    now = time.perf_counter()
    st["seconds"] += now - run.started
    run.started = now
    improved = False
    if run.rank == 0:
        val = _evaluate(run, run.val_loader)
        if val is not None:
            values.update({"val/loss": val["loss"], **{f"val/{k}": val[k] for k in SCALAR_KEYS}})
        key, higher = run.monitor
        score = None if val is None else val[key]
        if score is None or (isinstance(score, float) and math.isnan(score)):
            improved = val is None  # no validation subset: the last epoch is the best
        else:
            best = st["best_score"]
            improved = best is None or (score > best if higher else score < best)
        if improved:
            st.update(best_score=score, best_epoch=st["epoch"], bad_epochs=0)
            run.best_val = val
        else:
            st["bad_epochs"] += 1
        if cfg.patience is not None and st["bad_epochs"] >= cfg.patience:
            st["stopped"] = st["stopped_early"] = True
        run.writer.scalars(st["epoch"], values)
        ckpt = run.run_dir / "checkpoints"
        if improved:
            save_checkpoint(ckpt / "best.pt", run.net, run.optimizer, run.scheduler, st, run.config)
        save_checkpoint(ckpt / "last.pt", run.net, run.optimizer, run.scheduler, st, run.config)
    st["stopped"], st["stopped_early"] = _broadcast_flags(run, st["stopped"], st["stopped_early"])
    return {**values, "improved": improved, "best_score": st["best_score"], "best_epoch": st["best_epoch"]}


def _finish(run: _Run) -> TrainResult:
    """Test best.pt (rank 0), write metrics.json, scores.csv and the hparams; close everything."""
    import json

    from benzarr.checkpoint import load_checkpoint
    from benzarr.metrics import SCALAR_KEYS, json_friendly

    st, cfg = run.state, run.cfg
    if run.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    test: dict[str, Any] = {}
    emissions = None
    if run.rank == 0:
        best = run.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            payload = load_checkpoint(best, map_location=run.device)
            run.net.load_state_dict(payload["model"])
            if run.best_val is None:  # resumed after the best epoch: validate it again for the record
                run.best_val = _evaluate(run, run.val_loader)
        test = _evaluate(run, run.test_loader) or {}
        if run.tracker is not None:
            tracker, run.tracker = run.tracker, None
            kg = tracker.stop()  # kg CO2-equivalent
            data = getattr(tracker, "final_emissions_data", None)
            emissions = {"kg_co2eq": kg, "kwh": getattr(data, "energy_consumed", None),
                         "country": cfg.emissions_country}
        summary = {
            "split": cfg.split, "subset": "test", "checkpoint": "checkpoints/best.pt",
            "model": cfg.model, "labels": cfg.labels, "seed": cfg.seed,
            "monitor": cfg.monitor, "best_epoch": st["best_epoch"], "best_score": st["best_score"],
            "epochs": st["epoch"], "steps": st["step"], "stopped_early": st["stopped_early"],
            "train_seconds": st["seconds"], "emissions": emissions,
            "test": json_friendly(test) if test else None,
            "val": json_friendly({k: v for k, v in run.best_val.items() if k != "per_class"}) if run.best_val else None,
        }
        (run.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        if test:
            write_scores_csv(run.run_dir / "scores.csv", test)
        hparams = {k: v for k, v in run.config["settings"].items()
                   if k in ("model", "split", "labels", "bands", "epochs", "batch_size", "lr", "optim",
                            "weight_decay", "scheduler", "seed", "finetune", "amp")}
        hparams["bands"] = ",".join(hparams["bands"])
        run.writer.hparams(hparams, {f"test_{k}": test.get(k) for k in SCALAR_KEYS})
    best_score = st["best_score"]
    return TrainResult(run.run_dir, st["epoch"], st["step"], st["best_epoch"],
                       math.nan if best_score is None else float(best_score), st["stopped_early"],
                       st["seconds"], test, None if emissions is None else emissions["kg_co2eq"])


def _close(run: _Run) -> None:
    """Release what ``_setup`` took, also after an error or an interruption (the checkpoints
    already written stay, so ``resume`` continues from the last finished epoch)."""
    for loader in (run.train_loader, run.val_loader, run.test_loader):
        if loader is not None:
            loader.close()  # stop the loader's workers now, not when the run is collected
    if run.tracker is not None:
        run.tracker.stop()
        run.tracker = None
    if run.writer is not None:
        run.writer.close()
        run.writer = None
    if run.own_process_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    torch.use_deterministic_algorithms(run.flags_before[0])
    torch.backends.cudnn.benchmark = run.flags_before[1]


def write_scores_csv(path: str | Path, metrics: dict[str, Any]) -> Path:
    """One row per class, then ``micro`` and ``macro`` rows: support, predicted, precision,
    recall, F1, F2 (threshold 0.5) and average precision. Empty cells for absent classes."""
    import csv

    fields = ("precision", "recall", "f1", "f2", "ap")
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "index", "support", "predicted", *fields])
        for row in metrics["per_class"]:
            w.writerow([row["class"], row["index"], row["support"], row["predicted"],
                        *("" if row[k] != row[k] else f"{row[k]:.6f}" for k in fields)])
        support = sum(r["support"] for r in metrics["per_class"])
        predicted = sum(r["predicted"] for r in metrics["per_class"])
        for avg in ("micro", "macro"):
            vals = [metrics[f"{avg}_{k}"] for k in ("precision", "recall", "f1", "f2", "map")]
            w.writerow([avg, "", support, predicted, *("" if v != v else f"{v:.6f}" for v in vals)])
    return path
