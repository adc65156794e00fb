"""GPU feed benchmark: does the loader keep a GPU busy? (issue 10 §4)

In one run, on one synthetic lz4 store (12 bands, batch 256 by default):

* ``h2d_gb_per_s``: raw host-to-device bandwidth of one native uint16 batch (256 x 160,000
  bytes = 41 MB), pageable and pinned, averaged over several copies (``cuda.synchronize``
  after each);
* ``loader_alone``: ``make_loader(device=...)`` alone, float32 model-ready batches (12 bands,
  upsampled, normalised) delivered to the device, with 0, 4, 8 and 12 workers;
  ``ring_raw``: the raw ``benzarr.ring.RingLoader`` (uint16 slots) with the same worker counts,
  each batch copied to a persistent device buffer (and, on the CPU, not copied at all);
* ``models``: for shortcnn-all, resnet18, resnet50 and inception-v3, one training step
  (bf16 autocast on CUDA, channels-last, SGD with momentum, BCEWithLogits: the trainer's step)
  on a random batch already on the device (``ceiling``) and fed by ``make_loader`` with each
  worker count (``fed``), the two measured in ``--rounds`` alternating slices within the row
  (the H200's speed moved by up to 20% within one run, so a ceiling measured once, minutes
  away from the fed step, made the ratio mostly noise), in ``deterministic`` mode (``use_deterministic_algorithms(True,
  warn_only=True)``, ``cudnn.benchmark=False``, as the trainer's default) and ``fast`` mode
  (``cudnn.benchmark=True``, non-deterministic kernels). Each fed row also gives ``next_ms``,
  the host time per step spent in ``next()``, and ``step_ms``, the wall time per step;
  ``ratio_paired`` is the median over rounds of each round's fed slice over its ceiling slice
  (neighbours in time), beside ``ratio`` (all fed patches over all ceiling patches);
* ``conditions``: what the machine did in each timed slice (``benchmarks/_conditions.py``): the
  GPU's SM clock, mean power and the shares of the slice held below its clocks by the power or
  thermal limit (NVML, read around the slice), the host's steal time and busy cores
  (``/proc/stat``) and the main process's CPU time; per slice in each run's ``conditions``, as
  ranges in each fed row. Session 20's heavier models moved by 20-70% between slices while
  shortcnn-all did not: these readings say whether the GPU's clock or the host moved;
* ``transformed``: per model and mode, the step on one native uint16 batch already on the
  device, put through the loader's batch transform at every step (no loader): ceiling ->
  transformed is the transform's device cost, transformed -> fed (``vs_transformed`` in the
  fed rows) the loader's;
* ``profiles`` (``--profile-steps N``): a ``torch.profiler`` Chrome trace of N fed steps of the
  first model at the first worker count, beside ``--out`` as ``<stem>_trace.json``, and the
  ops with the most device self time per step;
* ``variants`` (``--variants no-overlap,thread,nchw-upsample,unfused,session6,no-graph,per-key-copy``):
  at the largest fed worker count, a loader of its own per variant, interleaved in the same
  rows: the transform on the consumer's stream instead of one batch ahead on a side stream,
  batches taken by a background thread (graphs off: its consumer stream is not the training
  stream), bilinear upsampling with the NCHW kernel instead of on the planes, the transform
  without its fused passes (``BatchTransform.fused = False``), both of the last two (the
  transform session 6's second run measured), every batch transformed eagerly instead of by
  a CUDA graph replay (``DeviceLoader.graphs = False``, session 9), graphs fed by a device batch
  staged from each ring slot instead of the slot copied straight into their static inputs
  (``staged``: ``DeviceLoader.direct_copy = False``, the graph path before session 24), or one
  host-to-device copy per key of a ring slot instead of one per slot (``RingLoader.one_copy = False``);
* ``transform_alone`` (with a variant that changes the transform): the batch transform by
  itself on a batch already on the device, default against each such variant, interleaved;
* ``augment`` (``--augment-workers``): ``augment="flip-rot90"`` against none, interleaved, for
  the loader alone and for the batch transform alone on a batch already on the device
  (issue #13: augmentation costs at most 5% of the loader-to-device time);
* ``ring_cpu`` (``--cpu-ring-workers``): the raw ring decoding on the CPU, not copied (how
  decoding alone scales with workers on the node); ``cpu_topology``: cores and siblings;
* ``trainer``: ``benzarr.train.train`` itself on the same store (split ``s``, 60/20/20) for
  one model with 8 workers, 3 epochs; its last epoch's ``throughput/patches_per_s`` against
  the bare fed loop of the same model, mode and worker count (``vs_fed``), and per epoch
  (``epoch_timing``) the wait for its first step, its steady rate after step 5 and the host
  gaps between steps (the first epoch carries the warm-up: cuDNN's autotuning in fast mode);
  with ``--trainer-interleave-s`` (default ``--seconds``), slices of the bare fed loop before
  the first epoch and after each (``bare_slices``) and the last epoch against the two around
  it (``vs_bare_interleaved``, what the target reads); ``--trainer-compile`` adds the trainer
  with ``--compile-transform``;
* ``targets``: the issue's GPU targets, each with its measured value and pass/fail.

Every measurement runs for a fixed slice (``--seconds`` after ``--warmup`` batches), is
guarded by ``--budget-s`` (skipped, and recorded as skipped, when the run's time is short)
and by an alarm; an exception is recorded in its row and the run goes on. The JSON is written
after every measurement, so a killed run leaves what it measured.

Without CUDA (or with ``--cpu``) it falls back to a small CPU run with the same code path
(tests/test_benchmarks.py runs it that way).

Usage (GPU node, benzarr on PYTHONPATH; builds the store when --store is absent): what
``benchmarks/gpu_session.sh`` runs, about 380 s on an H200 with 16 cores, build included; it
writes straight into the folder that comes back, so a killed run still returns its JSON::

    python3 benchmarks/gpu_feed.py --patches 20000 --build-workers 16 --seconds 2.4 --rounds 3 --warmup 5 --budget-s 420 --workers 0,4,8,12 --fed-workers 4,8,12 --ring-workers 12 --cpu-ring-workers 4,8,12 --augment-workers 12 --trainer-modes deterministic,fast --trainer-epochs 3 --profile-steps 3 --workdir /tmp/gf --out "$OUT/gpu_feed.json"

Order: build, h2d, loader alone, raw ring, raw ring on the CPU, then per mode (deterministic
first: the trainer's default) the ceilings and transformed rows, the fed rows at 12, 8 and 4
workers (variants at 12), a ceiling profile, then the trainer in that mode. What the budget
cannot fit is skipped and recorded as skipped.

Writes ``benchmarks/results/gpu_feed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS: before CUDA starts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, endless, machine_info, print_table, versions, write_json  # noqa: E402
from _conditions import SliceConditions, summary  # noqa: E402

import torch  # noqa: E402

#: The CPUs this process may use when it starts (restored after the ``pin`` variant).
CPUS = frozenset(os.sched_getaffinity(0))
#: Bytes of one full 12-band native uint16 patch.
NATIVE_BYTES = 160_000
SPLIT = "s"
MODES = ("deterministic", "fast")
GPU_MODELS = ("shortcnn-all", "resnet18", "resnet50", "inception-v3")
GPU_WORKERS = (0, 4, 8, 12)
#: What the machine did in each timed slice (``benchmarks/_conditions.py``), set by :func:`main`;
#: None: not read (a caller of :func:`timed` outside a run).
CONDITIONS: SliceConditions | None = None
#: A/B variants of the loader (``--variants``), each measured in the same rows as the default.
VARIANTS = ("no-overlap", "thread", "nchw-upsample", "unfused", "session6", "no-graph", "staged", "per-key-copy", "priority",
            "compiled")


# -- plumbing: time budget, alarms, JSON after every measurement -------------------------


class Budget:
    """The run's wall-clock budget (``--budget-s``, counted from the script's start)."""

    def __init__(self, seconds: float | None) -> None:
        self.started = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (time.monotonic() - self.started)

    def allows(self, needed: float) -> bool:
        return self.left() >= needed


class MeasurementTimeout(Exception):
    """A measurement ran past its alarm."""


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`MeasurementTimeout` in this (main) thread after ``seconds`` (SIGALRM)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise MeasurementTimeout(f"measurement ran past its {seconds:.0f} s alarm")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Recorder:
    """The result document, rewritten to ``path`` after every measurement."""

    def __init__(self, path: Path, payload: dict[str, Any], budget: Budget, log: Callable[[str], None]) -> None:
        self.path, self.payload, self.budget, self.log = path, payload, budget, log
        self.save()

    def save(self) -> None:
        self.payload["elapsed_s"] = round(time.monotonic() - self.budget.started, 1)
        write_json(self.path, self.payload)

    def measure(self, section: str, row: dict[str, Any], fn: Callable[[], dict[str, Any]],
                needed_s: float, alarm_s: float) -> dict[str, Any]:
        """Run ``fn`` (returns the figures) into ``row``, appended to ``payload[section]``.

        Skipped (``row["skipped"]``) when the budget has less than ``needed_s`` left; an
        exception or the alarm is recorded as ``row["error"]``. The JSON is saved either way.
        """
        label = " ".join(f"{k}={v}" for k, v in row.items())
        self.payload.setdefault(section, []).append(row)
        if not self.budget.allows(needed_s):
            row["skipped"] = f"budget: {self.budget.left():.0f} s left, {needed_s:.0f} s needed"
            self.log(f"{section} {label}: skipped ({row['skipped']})")
            self.save()
            return row
        started = time.monotonic()
        try:
            with alarm(min(alarm_s, max(self.budget.left(), 1.0))):
                row.update(fn())
        except Exception as exc:  # record and go on: one failure must not cost the rest
            row["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
            row["traceback"] = traceback.format_exc(limit=6)[-2000:]
            self.log(f"{section} {label}: ERROR {row['error']}")
        else:
            shown = {k: v for k, v in row.items() if k in ("patches_per_s", "ceiling", "fed", "ratio", "vs_fed",
                                                               "loader_ratio", "transform_ratio")}
            self.log(f"{section} {label}: {shown}")
        row["wall_s"] = round(time.monotonic() - started, 2)
        self.save()
        return row


# -- the device, modes, timing -------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_mode(mode: str) -> None:
    """``deterministic`` (the trainer's default) or ``fast`` (cudnn autotuning, any kernels)."""
    deterministic = mode == "deterministic"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def timed(step: Callable[[], int], device: torch.device, warmup: int, seconds: float) -> dict[str, Any]:
    """Patches/s of ``step`` (returns patches done): ``warmup`` calls, then calls for
    ``seconds``; the clock stops after a device synchronisation. With :data:`CONDITIONS`,
    ``conditions``: what the GPU and the host did in the slice (read outside its clock)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    begun = CONDITIONS.begin() if CONDITIONS is not None else None
    patches, steps, start = 0, 0, time.perf_counter()
    while True:
        patches += step()
        steps += 1
        if time.perf_counter() - start >= seconds:
            break
    synchronize(device)
    elapsed = time.perf_counter() - start
    result = {"patches_per_s": round(patches / elapsed, 1), "steps": steps, "patches": patches,
              "seconds": round(elapsed, 3)}
    if CONDITIONS is not None and begun is not None:
        result["conditions"] = CONDITIONS.end(begun, elapsed)
    return result


def close(*objects: Any) -> None:
    """Close generators and loaders (``close()`` where they have one)."""
    for obj in objects:
        if obj is not None and hasattr(obj, "close"):
            with contextlib.suppress(Exception):
                obj.close()


def cpu_topology() -> dict[str, Any]:
    """Sockets, cores and hyper-thread siblings as Linux sees them (``/sys``), for reading
    how decoding scales with workers."""
    out: dict[str, Any] = {"allowed": sorted(CPUS)}
    siblings: set[str] = set()
    cores: set[tuple[str, str]] = set()
    for cpu in sorted(CPUS):
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        with contextlib.suppress(OSError):
            siblings.add((base / "thread_siblings_list").read_text().strip())
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
    out["physical_cores"] = len(cores) or None
    out["thread_siblings"] = sorted(siblings)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "cpu MHz", "flags")):
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip()[:300])
    return out


# -- the store -----------------------------------------------------------------------------


def build_store(workdir: Path, n: int, workers: int, log: Callable[[str], None]) -> Path:
    """A synthetic lz4 store of ``n`` patches with split ``s`` (60/20/20), built once under ``workdir``."""
    from benzarr.ingest import ingest
    from benzarr.split import make_split
    from benzarr.store import open_store
    from benzarr.synth import synth_archive

    store = workdir / f"gpu-feed-{n}.zarr"
    with contextlib.suppress(Exception):
        if SPLIT in open_store(store).split_names():
            log(f"reusing {store}")
            return store
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / f"gpu-feed-archive-{n}"
    t = time.monotonic()
    synth_archive(archive, n, seed=0, workers=workers, overwrite=True)
    log(f"synth {n} patches: {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    ingest(archive, store, workers=workers, compression="lz4", overwrite=True)
    log(f"ingest (lz4, {workers} workers): {time.monotonic() - t:.1f} s")
    shutil.rmtree(archive, ignore_errors=True)
    make_split(open_store(store, mode="r+"), SPLIT, "iterative", fractions=(0.6, 0.2, 0.2), seed=0)
    return store


def dataset(store: Path, augment: str = "none") -> Any:
    """The 12-band, normalised dataset every measurement reads (whole store, clc43)."""
    from benzarr.data import BigEarthNetDataset

    return BigEarthNetDataset(store, bands="all", normalize=True, augment=augment)


def native_batch(ds: Any, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The first ``batch`` patches of ``ds`` as a native uint16 batch on ``device`` (store
    rows stay on the CPU, as the loader leaves them): a batch transform's input."""
    raw = ds.read_batch(list(range(min(batch, len(ds)))))
    return {k: torch.as_tensor(v) if k == "index" else torch.as_tensor(v).to(device) for k, v in raw.items()}


# -- the measurements ----------------------------------------------------------------------


def h2d_bandwidth(device: torch.device, copies: int) -> dict[str, Any]:
    """GB/s of copying one 41 MB native batch to ``device``, pageable and pinned."""
    nbytes = 256 * NATIVE_BYTES
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    out: dict[str, Any] = {"bytes": nbytes, "copies": copies}
    sources = {"pageable": torch.ones(nbytes, dtype=torch.uint8)}
    if device.type == "cuda":
        sources["pinned"] = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    for kind, src in sources.items():
        dst.copy_(src, non_blocking=kind == "pinned")
        synchronize(device)
        seconds = []
        for _ in range(copies):
            t = time.perf_counter()
            dst.copy_(src, non_blocking=kind == "pinned")
            synchronize(device)
            seconds.append(time.perf_counter() - t)
        mean = sum(seconds) / len(seconds)
        out[kind] = round(nbytes / mean / 1e9, 2)
        out[f"{kind}_patches_per_s"] = round(nbytes / NATIVE_BYTES / mean, 1)
    return out


def loader_alone(store: Path, device: torch.device, batch: int, workers: int, warmup: int,
                 seconds: float) -> dict[str, Any]:
    """``make_loader`` delivering float32 model-ready batches to ``device``."""
    from benzarr.data import make_loader

    ds = dataset(store)
    loader = make_loader(ds, batch, shuffle=True, num_workers=workers, seed=0, device=device, drop_last=True)
    batches = endless(loader)
    try:
        def step() -> int:
            return int(next(batches)["image"].shape[0])

        return timed(step, device, warmup, seconds)
    finally:
        close(batches, loader)


def augment_cost(store: Path, device: torch.device, batch: int, workers: int, warmup: int, seconds: float,
                 rounds: int) -> dict[str, Any]:
    """What ``augment="flip-rot90"`` costs (issue #13: at most 5% of the loader-to-device
    time): ``make_loader`` with and without it, interleaved (:func:`interleaved`), and the
    batch transform alone on one native batch already on the device, with and without it
    (its device cost, which a loader fast enough to outrun it hides)."""
    from benzarr.data import make_loader

    loaders: dict[str, Any] = {}
    batches: dict[str, Iterator[Any]] = {}
    try:
        for augment in ("none", "flip-rot90"):
            loaders[augment] = make_loader(dataset(store, augment), batch, shuffle=True, num_workers=workers, seed=0, device=device,
                                           drop_last=True)
            batches[augment] = endless(loaders[augment])

        def taker(augment: str) -> Callable[[], int]:
            return lambda: int(next(batches[augment])["image"].shape[0])

        loader = interleaved({a: taker(a) for a in batches}, device, warmup, seconds, rounds)
    finally:
        for augment in list(batches):
            close(batches[augment], loaders[augment])
    transforms = {a: dataset(store, a).batch_transform(device) for a in ("none", "flip-rot90")}
    for t in transforms.values():
        t.set_epoch(1)
    alone = interleaved_transforms(transforms, native_batch(dataset(store), batch, device), device, warmup,
                                   seconds, rounds)
    return {"loader": {a: r["patches_per_s"] for a, r in loader.items()},
            "loader_ratio": round(loader["flip-rot90"]["patches_per_s"] / loader["none"]["patches_per_s"], 3),
            "transform_ms": {a: r["ms_per_batch"] for a, r in alone.items()},
            "transform_ratio": round(alone["flip-rot90"]["patches_per_s"] / alone["none"]["patches_per_s"], 3),
            "slices": {"loader": {a: r["slices"] for a, r in loader.items()},
                       "transform": {a: r["slices"] for a, r in alone.items()}}}


def interleaved_transforms(transforms: dict[str, Any], on_device: dict[str, torch.Tensor], device: torch.device,
                           warmup: int, seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    """:func:`interleaved` runs of each batch transform on the same native batch already on
    the device, each with ``ms_per_batch``."""
    runs = interleaved({name: (lambda t=t: int(t(on_device)["image"].shape[0])) for name, t in transforms.items()},
                       device, warmup, seconds, rounds)
    for r in runs.values():
        r["ms_per_batch"] = round(1e3 * r["seconds"] / r["steps"], 3)
    return runs


#: The transform's switches per variant that changes it (``--variants``).
TRANSFORM_VARIANTS: dict[str, dict[str, bool]] = {
    "default": {}, "unfused": {"fused": False}, "nchw-upsample": {"planes": False},
    "session6": {"fused": False, "planes": False}, "compiled": {"compiled": True},
}


def transform_alone(store: Path, device: torch.device, batch: int, variants: list[str], warmup: int,
                    seconds: float, rounds: int) -> dict[str, Any]:
    """The batch transform by itself on one native 12-band batch already on the device, for
    the default and each variant that changes it, interleaved: its device time per batch,
    with no model and no loader (the model rows show what that time costs a training step)."""
    ds = dataset(store)
    transforms: dict[str, Any] = {}
    for name in ["default", *[v for v in variants if v in TRANSFORM_VARIANTS]]:
        transforms[name] = ds.batch_transform(device)
        for switch, value in TRANSFORM_VARIANTS[name].items():
            setattr(transforms[name], switch, value)
    runs = interleaved_transforms(transforms, native_batch(ds, batch, device), device, warmup, seconds, rounds)
    base = runs["default"]["seconds"] / runs["default"]["steps"]
    out = {"ms_per_batch": {n: r["ms_per_batch"] for n, r in runs.items()},
           "vs_default": {n: round(r["seconds"] / r["steps"] / base, 3) for n, r in runs.items()},
           "slices": {n: r["slices"] for n, r in runs.items()}}
    if "compiled" in transforms:  # False: compilation failed and the transform went eager (a warning said why)
        out["compiled_stayed_on"] = bool(transforms["compiled"].compiled)
    return out


def ring_raw(store: Path, device: torch.device, batch: int, workers: int, warmup: int, seconds: float,
             copy: bool) -> dict[str, Any]:
    """``RingLoader`` uint16 batches (no transform).

    On CUDA the ring itself delivers to the device (``device=``: page-locked slots,
    asynchronous copies), where the ring takes a ``device``; otherwise, with ``copy``, each
    batch is copied by this loop into a persistent buffer on ``device`` (synchronised before
    the next ``next()``, which may reuse the slot); without ``copy`` the CPU views are only
    received.
    """
    import inspect

    from torch.utils.data import BatchSampler, RandomSampler

    from benzarr.ring import RingLoader

    ds = dataset(store)
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), batch, drop_last=True)
    own_device = device.type == "cuda" and "device" in inspect.signature(RingLoader).parameters
    loader = RingLoader(ds, sampler, workers, device=device) if own_device else RingLoader(ds, sampler, workers)
    batches = endless(loader)
    dst: dict[str, torch.Tensor] = {}
    try:
        def step() -> int:
            b = next(batches)
            if copy and not own_device:
                for key, value in b.items():
                    raw = value.reshape(-1).view(torch.uint8)  # bytes: no uint16 kernels needed on the device
                    if key not in dst:
                        dst[key] = torch.empty_like(raw, device=device)
                    dst[key].copy_(raw, non_blocking=True)
                synchronize(device)
            return int(b["index"].shape[0])

        out = timed(step, device, warmup, seconds)
        out["delivery"] = ("the ring's own copy to the device (page-locked slots)" if own_device
                           else "copied by the loop into a device buffer" if copy else "CPU views, not copied")
        return out
    finally:
        close(batches, loader)


class Trainee:
    """One model and its optimiser, stepping as the trainer does."""

    def __init__(self, name: str, device: torch.device, amp: bool) -> None:
        from benzarr.models import create_model, model_info

        torch.manual_seed(0)
        self.name, self.device, self.amp = name, device, amp
        self.channels = model_info(name).in_channels
        self.net = create_model(name, num_classes=43).to(device, memory_format=torch.channels_last)
        self.net.train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9)
        self.loss = torch.nn.BCEWithLogitsLoss()

    def step(self, image: torch.Tensor, label: torch.Tensor) -> int:
        x = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
        if isinstance(logits, tuple):  # auxiliary heads in training mode
            logits = logits[0]
        loss = self.loss(logits.float(), label)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return int(x.shape[0])


def random_batch(model: Trainee, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ceiling's input: a random (batch, C, 120, 120) float32 image and (batch, 43)
    multi-hot labels, already on the model's device."""
    x = torch.randn(batch, model.channels, 120, 120, device=model.device)
    y = (torch.rand(batch, 43, device=model.device) < 0.07).float()
    return x, y


def ceiling(model: Trainee, batch: int, warmup: int, seconds: float) -> dict[str, Any]:
    """The training step on one random batch already on the device."""
    x, y = random_batch(model, batch)
    return timed(lambda: model.step(x, y), model.device, warmup, seconds)


def transformed(model: Trainee, ds: Any, batch: int, warmup: int, seconds: float) -> dict[str, Any]:
    """The training step on one native uint16 batch already on the device, put through the
    loader's :class:`~benzarr.data.BatchTransform` at every step: the ceiling plus the
    transform's device cost, with no loader. Between ``ceiling`` and ``fed`` it splits a
    gap into the transform's part (ceiling -> transformed) and the loader's (transformed -> fed)."""
    on_device = native_batch(ds, batch, model.device)
    transform = ds.batch_transform(model.device)

    def step() -> int:
        b = transform(on_device)
        return model.step(b["image"], b["label"])

    return timed(step, model.device, warmup, seconds)


def interleaved(steps: dict[str, Callable[[], int]], device: torch.device, warmup: int, seconds: float,
                rounds: int) -> dict[str, dict[str, Any]]:
    """Patches/s of each of ``steps`` measured in ``rounds`` alternating slices of
    ``seconds / rounds`` each (A, B, A, B, ...), so that a drift of the GPU's speed over
    the run (its clocks moved by up to 20% within one run on the H200) falls on all of them
    alike; each round starts with the next step, so none always runs first. ``warmup``
    calls of every step before the first slice of any (a first slice run cold was ~10%
    slow on the CPU), one before every slice."""
    totals = {name: {"patches": 0, "seconds": 0.0, "steps": 0, "slices": [], "conditions": []} for name in steps}
    names = list(steps)
    for step in steps.values():
        for _ in range(max(warmup - 1, 0)):
            step()
    for r in range(rounds):
        # each round starts one further along (A B C, B C A, ...): no step always goes first
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            run = timed(step, device, 1, seconds / rounds)
            t = totals[name]
            t["patches"] += run["patches"]
            t["seconds"] += run["seconds"]
            t["steps"] += run["steps"]
            t["slices"].append(run["patches_per_s"])
            t["conditions"].append(run.get("conditions"))
    for t in totals.values():
        if not any(t["conditions"]):
            del t["conditions"]
        t["patches_per_s"] = round(t["patches"] / t["seconds"], 1)
        t["seconds"] = round(t["seconds"], 3)
    return totals


def _round_ratios(fed_run: dict[str, Any], ceiling_run: dict[str, Any]) -> list[float]:
    """Each round's fed slice over its ceiling slice, sorted."""
    return sorted(f / c for f, c in zip(fed_run.get("slices", []), ceiling_run.get("slices", [])) if c)


def paired_ratio(fed_run: dict[str, Any], ceiling_run: dict[str, Any]) -> float | None:
    """The median over rounds of (fed slice / ceiling slice) of the same round, which ran next
    to each other: a drift of the machine's speed between rounds cancels in each pair, where
    the pooled ratio (all fed patches over all ceiling patches) weighs a fast round more."""
    pairs = _round_ratios(fed_run, ceiling_run)
    if not pairs:
        return None
    mid = len(pairs) // 2
    return round(pairs[mid] if len(pairs) % 2 else (pairs[mid - 1] + pairs[mid]) / 2, 3)


def paired_interval(fed_run: dict[str, Any], ceiling_run: dict[str, Any], level: float = 0.95) -> list[float] | None:
    """A distribution-free interval for the median of the rounds' ratios (:func:`paired_ratio`):
    the j-th smallest and j-th largest of the n round ratios, with the largest j whose coverage
    ``1 - 2 P(Binomial(n, 1/2) < j)`` is at least ``level``. Why: a row of 5 rounds read
    0.94 or 0.96 of its ceiling from one run to the next (session 22); whether a model is at
    0.95 needs this interval, not another point. None below 6 rounds (n = 5: 94% at best)."""
    pairs = _round_ratios(fed_run, ceiling_run)
    n, below, j = len(pairs), 0.0, 0
    while j < n // 2:
        below += math.comb(n, j) / 2 ** n  # P(Binomial(n, 1/2) <= j)
        if 1 - 2 * below < level:
            break
        j += 1
    return [round(pairs[j - 1], 3), round(pairs[n - j], 3)] if j else None


def with_interval_text(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``paired_95``, its ``ratio_paired_95`` as text for a table ("0.93-0.97")."""
    interval = row.get("ratio_paired_95")
    return {**row, "paired_95": f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else None}


def conditions_summary(**runs: dict[str, Any]) -> dict[str, Any]:
    """Per run (ceiling, fed, ...): the range of each reading over its slices
    (:func:`_conditions.summary`); runs without readings are left out."""
    return {name: summary(run["conditions"]) for name, run in runs.items() if run.get("conditions")}


def fed_against_ceiling(model: Trainee, sources: dict[str, Iterator[Any]], batch: int, warmup: int,
                        seconds: float, rounds: int) -> dict[str, Any]:
    """The ceiling step and the step fed by each of ``sources`` (name -> batches), interleaved
    (:func:`interleaved`); ``next_ms``: mean host time per fed step spent in ``next()``."""
    x, y = random_batch(model, batch)
    host: dict[str, list[float]] = {name: [] for name in sources}

    def feeder(name: str, batches: Iterator[Any]) -> Callable[[], int]:
        stream = getattr(batches, "stream", None)  # PriorityFed: next() and the step on its stream

        def step() -> int:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                t = time.perf_counter()
                b = next(batches)
                host[name].append(time.perf_counter() - t)
                return model.step(b["image"], b["label"])
        return step

    steps: dict[str, Callable[[], int]] = {"ceiling": lambda: model.step(x, y)}
    steps.update({name: feeder(name, batches) for name, batches in sources.items()})
    runs = interleaved(steps, model.device, warmup, seconds, rounds)
    out: dict[str, Any] = {"ceiling": runs["ceiling"]["patches_per_s"], "ceiling_run": runs.pop("ceiling")}
    for name, run in runs.items():
        timed_host = host[name][-run["steps"]:]
        run["next_ms"] = round(1e3 * sum(timed_host) / max(len(timed_host), 1), 3)
        run["step_ms"] = round(1e3 * run["seconds"] / max(run["steps"], 1), 3)
        out[name] = run
    return out


def profile_fed(model: Trainee, batches: Iterator[Any] | None, steps: int, trace: Path,
                batch: int = 256) -> dict[str, Any]:
    """A ``torch.profiler`` trace of ``steps`` fed steps (after two untimed ones), written as a
    Chrome trace to ``trace`` (open it in chrome://tracing or Perfetto); returns the 15 ops
    with the most self time on the device (CUDA) or host (CPU), ``busy_ms_per_step`` (the
    device's summed self time a step: kernels and copies) and ``wall_ms_per_step``. With
    ``batches`` None it profiles the ceiling's step (one random batch on the device)."""
    from torch.profiler import ProfilerActivity, profile

    if batches is None:
        x, y = random_batch(model, batch)

        def one() -> None:
            model.step(x, y)
    else:
        def one() -> None:
            b = next(batches)
            model.step(b["image"], b["label"])

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    for _ in range(2):
        one()
    synchronize(model.device)
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            one()
        synchronize(model.device)
        wall = time.perf_counter() - t
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    on_device = model.device.type == "cuda"
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    rows = []
    busy = 0.0
    for e in prof.key_averages():
        us = getattr(e, key, None)
        if us is None and on_device:
            us = getattr(e, "self_cuda_time_total", 0.0)
        busy += us or 0.0
        rows.append({"op": e.key, "calls": e.count, "self_us_per_step": round((us or 0.0) / steps, 1),
                     "host_us_per_step": round(e.self_cpu_time_total / steps, 1)})
    rows.sort(key=lambda r: r["self_us_per_step"], reverse=True)
    # the file's name only: it lies beside --out, and the JSON names no machine's paths
    return {"trace": trace.name, "steps": steps, "timeline": "device" if on_device else "host",
            "busy_ms_per_step": round(busy / steps / 1e3, 3), "wall_ms_per_step": round(1e3 * wall / steps, 3),
            "of": "ceiling" if batches is None else "fed", "top_ops": rows[:15]}


# -- variants of the fed loop (A/B of a candidate change, on the same store and run) -----


class PriorityFed:
    """Variant ``priority``: the batches taken, and the training step run, on a CUDA stream of
    higher priority than the loader's copy and transform streams (which have torch's default
    priority, the lowest). Why: session 12's profile showed the transform's ~1 ms of kernels a
    256-patch batch competing with shortcnn-all's step for the GPU's SMs rather than filling
    its gaps; with a lower priority its blocks would run only where the step leaves SMs idle.
    On the CPU there are no streams: the same batches and step as the plain loop.

    Interleaved slices end with a device synchronisation (:func:`timed`), so switching between
    this stream and the default one never races on the model's parameters."""

    def __init__(self, batches: Iterator[Any], device: torch.device) -> None:
        self.batches = batches
        self.stream = torch.cuda.Stream(device=device, priority=-1) if device.type == "cuda" else None

    def __iter__(self) -> "PriorityFed":
        return self

    def __next__(self) -> Any:
        return next(self.batches)

    def close(self) -> None:
        close(self.batches)


class ThreadFed:
    """Batches of ``batches`` taken by a background thread, ``depth`` ahead (variant
    ``thread``): the loader's host work (the ring's bookkeeping, the copy and transform
    launches) runs beside the training loop's. On CUDA the thread works on its own stream;
    each batch carries an event the consumer's stream waits on."""

    def __init__(self, batches: Iterator[Any], device: torch.device, depth: int = 2) -> None:
        import queue
        import threading

        self.queue: Any = queue.Queue(depth)
        self.stop = threading.Event()
        self.device = device
        self.cuda = device.type == "cuda"
        self.batches = batches
        self.thread = threading.Thread(target=self._run, daemon=True, name="gpu-feed-thread")
        self.thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for batch in self.batches:
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not self._put((batch, event)):
                        return
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __iter__(self) -> "ThreadFed":
        return self

    def __next__(self) -> Any:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    value.record_stream(current)
        return batch

    def close(self) -> None:
        self.stop.set()
        import queue

        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join(timeout=10)


#: Steps of a trainer epoch before the synchronisation that starts its steady-state clock.
STEADY_FROM = 5


def epoch_timing(e: dict[str, Any], batch: int) -> dict[str, Any]:
    """One trainer epoch from the host clock of its events: ``seconds`` (from its rate: the
    trainer's own clock), ``first_step_s`` (epoch start to the first step's event),
    ``steady_patches_per_s`` (after the sync at step STEADY_FROM to the epoch's end; None for
    epochs too short), and the median and largest host gaps between steps (ms)."""
    steps, n = e["steps"], len(e["steps"])
    seconds = n * batch / e["rate"] if e["rate"] else math.nan  # about n * batch: drop_last
    gaps = sorted(b - a for a, b in zip(steps, steps[1:]))
    steady = None
    if "synced" in e and n > STEADY_FROM:
        rest = e["start"] + seconds - e["synced"]
        steady = round((n - STEADY_FROM) * batch / rest, 1) if rest > 0 else None
    return {"steps": n, "seconds": round(seconds, 3),
            "first_step_s": round(steps[0] - e["start"], 3) if steps else None,
            "steady_patches_per_s": steady,
            "median_gap_ms": round(1e3 * gaps[len(gaps) // 2], 2) if gaps else None,
            "max_gap_ms": round(1e3 * gaps[-1], 2) if gaps else None}


def trainer_rate(store: Path, name: str, workers: int, batch: int, epochs: int, device: torch.device,
                 amp: bool, mode: str, workdir: Path, compile_transform: bool = False,
                 interleave_s: float = 0.0, warmup: int = 2) -> dict[str, Any]:
    """``benzarr.train.train`` on split ``s``: the trainer's throughput of its last epoch
    (``compile_transform``: ``benzarr train --compile-transform``).

    With ``interleave_s`` > 0, a slice of that many seconds of the bare fed loop (the same
    model built afresh, fed by a ``make_loader`` of its own with as many workers) runs before
    the first epoch and after each one, from the trainer's ``epoch_end`` event (so in its
    mode, and outside its epochs' clocks): ``bare_slices``, and ``vs_bare_interleaved``, the
    last epoch's rate over the mean of the slices just before and after it. The node's speed
    moved by 25% or more between rows measured minutes apart (session 20), so the comparison
    is made where both stand at the same moment."""
    import dataclasses

    from benzarr.data import make_loader
    from benzarr.train import TrainConfig, train

    out = workdir / f"gpu-feed-train-{name}-{workers}-{mode}{'-compiled' if compile_transform else ''}"
    shutil.rmtree(out, ignore_errors=True)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    extra: dict[str, Any] = {}
    if "deterministic" in fields:
        extra["deterministic"] = mode == "deterministic"
    elif mode != "deterministic":
        raise RuntimeError("this benzarr's TrainConfig has no 'deterministic' setting (fast mode)")
    if compile_transform:
        if "compile_transform" not in fields:
            raise RuntimeError("this benzarr's TrainConfig has no 'compile_transform' setting")
        extra["compile_transform"] = True
    cfg = TrainConfig(store=str(store), split=SPLIT, model=name, epochs=epochs, batch_size=batch, workers=workers,
                      device=str(device), amp=amp, channels_last=True, optim="sgd", lr=1e-3, momentum=0.9,
                      out=str(out), **extra)
    rates: list[float] = []
    epochs_seen: list[dict[str, Any]] = []  # where an epoch's time goes (host clock, see below)
    bare: dict[str, Any] = {}
    slices: list[float] = []
    slice_conditions: list[dict[str, Any] | None] = []

    def bare_slice() -> None:
        if "it" not in bare:
            bare["model"] = Trainee(name, device, amp)
            bare["loader"] = make_loader(dataset(store), batch, shuffle=True, num_workers=workers, seed=1,
                                         device=device, drop_last=True)
            bare["it"] = endless(bare["loader"])

        def step() -> int:
            b = next(bare["it"])
            return bare["model"].step(b["image"], b["label"])

        run = timed(step, device, warmup, interleave_s)
        slices.append(run["patches_per_s"])
        slice_conditions.append(run.get("conditions"))

    def on_event(event: Any) -> None:
        # host times of the epoch's events: the first step's (waiting for the first batch and
        # launching the step), the gaps between steps (paced by the GPU once its queue is full:
        # a long one is a stall) and a synchronisation after STEADY_FROM steps, so the rate of
        # the rest of the epoch, without its start, is known (one sync an epoch: a small cost)
        now = time.perf_counter()
        if event.kind == "epoch_start":
            epochs_seen.append({"start": now, "steps": []})
            if CONDITIONS is not None:
                epochs_seen[-1]["begun"] = CONDITIONS.begin()
        elif event.kind == "step" and epochs_seen:
            e = epochs_seen[-1]
            e["steps"].append(now)
            if len(e["steps"]) == STEADY_FROM:
                synchronize(device)
                e["synced"] = time.perf_counter()
        elif event.kind == "epoch_end":
            rates.append(float(event.values["throughput/patches_per_s"]))
            if epochs_seen:
                e = epochs_seen[-1]
                e["rate"] = rates[-1]
                if CONDITIONS is not None and "begun" in e:  # what the GPU and host did in the epoch
                    e["conditions"] = CONDITIONS.end(e["begun"], now - e["start"])
            if interleave_s > 0:
                bare_slice()

    started = time.perf_counter()
    try:
        if interleave_s > 0:
            set_mode(mode)  # the slice before the first epoch, in the mode the trainer will set
            bare_slice()
        train(cfg, on_event)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        close(bare.get("it"), bare.get("loader"))
    if not rates:
        raise RuntimeError("the trainer reported no epoch")
    interleaved: dict[str, Any] = {}
    if len(slices) >= 2:
        around = (slices[-2] + slices[-1]) / 2
        interleaved = {"bare_slices": [round(x, 1) for x in slices], "interleave_s": interleave_s,
                       "vs_bare_interleaved": round(rates[-1] / around, 3) if around else None}
        if any(slice_conditions):
            interleaved["bare_conditions"] = slice_conditions
    epoch_conditions = [e.get("conditions") for e in epochs_seen if "rate" in e]
    if any(epoch_conditions):
        interleaved["epoch_conditions"] = epoch_conditions
    return {"patches_per_s": round(rates[-1], 1), **interleaved, "epoch_rates": [round(r, 1) for r in rates],
            "epoch_timing": [epoch_timing(e, batch) for e in epochs_seen if "rate" in e],
            "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
            "settings": {"optim": "sgd", "amp": amp, "channels_last": True, "batch_size": batch, "split": SPLIT,
                         **extra},
            "note": "the trainer's own throughput/patches_per_s of its last epoch, with a callback (as the CLI)"}


def conditions_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of what the machine did in each fed row's ceiling and fed slices: each
    reading's range as text ("least-most"), the slices' patches/s beside them."""
    def span(pair: list[float] | None) -> str | None:
        if not pair:
            return None
        a, b = pair
        text = (lambda v: f"{v:g}") if all(float(v).is_integer() for v in pair) else (lambda v: f"{v:.2f}")
        return text(a) if a == b else f"{text(a)}-{text(b)}"

    out = []
    for r in sorted(rows, key=lambda r: (r["mode"], r["model"], r["workers"])):
        for run in ("ceiling", "fed"):
            readings = r.get("conditions", {}).get(run)
            if not readings:
                continue
            slices = r.get(f"{run}_run", {}).get("slices", [])
            out.append({"mode": r["mode"], "model": r["model"], "workers": r["workers"], "run": run,
                        "slices": ", ".join(f"{x:,.0f}" for x in slices),
                        **{key: span(value) for key, value in readings.items()}})
    return out


# -- targets -------------------------------------------------------------------------------


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's GPU targets, each with value, goal and ``met`` (None when unmeasured)."""
    def ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("patches_per_s") or r.get("fed")]

    alone = {r["workers"]: r["patches_per_s"] for r in ok(payload.get("loader_alone", []))}
    out: list[dict[str, Any]] = [
        {"target": "loader alone to the device, 12 workers, float32 model-ready >= 75,000 patches/s",
         "value": alone.get(12), "goal": 75_000},
        {"target": "loader alone: 8 workers >= 1.8x 4 workers",
         "value": alone[8] / alone[4] if 8 in alone and 4 in alone else None, "goal": 1.8},
    ]
    models = [r for r in payload.get("models", []) if r.get("ratio") is not None]
    ratio = lambda r: r["ratio"]  # noqa: E731  (fed and ceiling interleaved in the same row)
    for mode in MODES:
        for name in dict.fromkeys(r["model"] for r in models if r["mode"] == mode):
            rows = [r for r in models if r["mode"] == mode and r["model"] == name and r["workers"] <= 12]
            best = max(rows, key=ratio)
            out.append({"target": f"{name} ({mode}) fed >= 0.95 of its ceiling with <= 12 workers "
                                  f"(best: {best['workers']} workers)", "value": ratio(best), "goal": 0.95})
    for r in payload.get("trainer", []):
        compiled = " with --compile-transform" if r.get("compile_transform") else ""
        interleaved = r.get("vs_bare_interleaved") is not None
        out.append({"target": f"trainer {r['model']} ({r.get('mode')}){compiled} >= 0.9 of the bare fed loop"
                              f"{' (interleaved by epoch)' if interleaved else ''}, {r['workers']} workers",
                    "value": r["vs_bare_interleaved"] if interleaved else r.get("vs_fed"), "goal": 0.9})
    for r in payload.get("augment", []):
        if r.get("loader_ratio") is not None:
            out.append({"target": f"issue 13: augment='flip-rot90' keeps >= 0.95 of the loader-to-device "
                                  f"throughput, {r['workers']} workers", "value": r["loader_ratio"], "goal": 0.95})
    for t in out:
        t["met"] = None if t["value"] is None else bool(t["value"] >= t["goal"])
        if t["value"] is not None:
            t["value"] = round(t["value"], 3)
    return out


# -- main ----------------------------------------------------------------------------------


def csv(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Defaults in brackets are CUDA's / the CPU fallback's.")
    parser.add_argument("--cpu", action="store_true", help="the CPU fallback even when CUDA is present")
    parser.add_argument("--store", type=Path, default=None, help="an existing store with split 's' (else built)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "benzarr-gpu-feed")
    parser.add_argument("--patches", type=int, default=None, help="patches of the built store [20000 / 256]")
    parser.add_argument("--build-workers", type=int, default=None, help="synth/ingest workers [cores]")
    parser.add_argument("--batch-size", type=int, default=None, help="[256 / 32]")
    parser.add_argument("--models", default=None, help=f"comma-separated [{','.join(GPU_MODELS)} / shortcnn-all]")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts [0,4,8,12 / 0,2]")
    parser.add_argument("--modes", default=None, help="deterministic,fast [both / deterministic]")
    parser.add_argument("--ring-workers", default=None, help="worker counts of the raw ring rows [--workers]")
    parser.add_argument("--augment-workers", default="",
                        help="worker counts at which to measure augment='flip-rot90' against none: the loader "
                             "alone and the batch transform alone, interleaved (issue #13's cost on a GPU) []")
    parser.add_argument("--fed-workers", default=None, help="worker counts of the fed model rows [--workers]")
    parser.add_argument("--seconds", type=float, default=None, help="timed slice per measurement [3 / 1]")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches before each slice [5 / 2]")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of the whole run, build included: measurements that do not "
                             "fit are skipped and recorded as such [none]")
    parser.add_argument("--trainer-model", default=None, help="[inception-v3 / shortcnn-all]; 'none' skips it")
    parser.add_argument("--trainer-workers", type=int, default=None, help="[8 / 2]")
    parser.add_argument("--trainer-epochs", type=int, default=3,
                        help="epochs of the trainer run; its last is compared with the bare loop [3]")
    parser.add_argument("--trainer-compile", action="store_true",
                        help="also run the trainer with --compile-transform (TrainConfig.compile_transform), "
                             "in each trainer mode, after the default one")
    parser.add_argument("--trainer-interleave-s", type=float, default=None,
                        help="seconds of the bare fed loop run before the trainer's first epoch and after each, "
                             "so the trainer is compared with it at the same moment (vs_bare_interleaved); 0: "
                             "off [--seconds]")
    parser.add_argument("--trainer-modes", default="deterministic",
                        help="modes of the trainer run (fast needs TrainConfig.deterministic) [deterministic]")
    parser.add_argument("--h2d-copies", type=int, default=20)
    parser.add_argument("--no-transformed", dest="transformed", action="store_false",
                        help="skip the transformed rows (a uint16 batch on the device through the batch "
                             "transform at every step, no loader)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="with N > 0: a torch.profiler trace of N fed steps of the first model at the "
                             "first worker count, written beside --out as <stem>_trace.json [0]")
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="every loader of this run, the trainer's included, makes full batches by CUDA graph "
                             "replays (benzarr.data.CUDA_GRAPHS = True), or never (--no-graphs); default: the "
                             "environment's BENZARR_CUDA_GRAPHS (unset: off). gpu_session.sh passes --graphs once "
                             "gpu_ring_check has found the graphs' batches equal to eager ones; variant 'no-graph' "
                             "is measured only with graphs on")
    parser.add_argument("--variants", default="",
                        help="comma-separated, each a loader of its own at the largest worker count, interleaved "
                             "with the ceiling and the default fed loop: 'no-overlap' (the batch transform on the "
                             "consumer's stream, DeviceLoader.overlap=False), 'thread' (batches taken by a "
                             "background thread, ThreadFed), 'nchw-upsample' (CUDA bilinear on the NCHW batch, "
                             "BatchTransform.planes=False), 'unfused' (BatchTransform.fused=False: a float32 "
                             "copy of each group, then copies), 'session6' (both: the transform session 6's "
                             "last run measured), 'no-graph' (every batch transformed eagerly, "
                             "DeviceLoader.graphs=False), 'staged' (graphs fed by a device batch staged from each "
                             "ring slot, as before session 24: DeviceLoader.direct_copy=False), "
                             "'per-key-copy' (a ring slot copied to the device one "
                             "key at a time, RingLoader.one_copy=False), 'priority' (next() and the training step on a "
                             "high-priority CUDA stream, so the loader's transform gets only the SMs the step "
                             "leaves idle; PriorityFed), 'compiled' (the image by one torch.compile'd function, "
                             "BatchTransform.compiled=True: a few fused kernels instead of ~15 passes; its first "
                             "batch compiles) []")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating slices of ceiling and fed steps per fed row (interleaved) [3]")
    parser.add_argument("--cpu-ring-workers", default="",
                        help="worker counts of raw ring rows decoded on the CPU and not copied (how decoding "
                             "alone scales with workers on this machine) []")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_feed.json")
    args = parser.parse_args(argv)
    import benzarr.data

    if args.graphs is not None:
        benzarr.data.CUDA_GRAPHS = args.graphs
    graphs_on = benzarr.data.cuda_graphs_default()

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    cores = os.cpu_count() or 1
    pick = lambda value, gpu, cpu: value if value is not None else (gpu if cuda else cpu)  # noqa: E731
    n = pick(args.patches, 20_000, 256)
    batch = pick(args.batch_size, 256, 32)
    models = csv(pick(args.models, ",".join(GPU_MODELS), "shortcnn-all"))
    workers = csv(pick(args.workers, "0,4,8,12", "0,2"), int)
    ring_workers = csv(args.ring_workers, int) if args.ring_workers else workers
    fed_workers = csv(args.fed_workers, int) if args.fed_workers else workers
    variants = csv(args.variants) if args.variants else []
    unknown_variants = [v for v in variants if v not in VARIANTS]
    if unknown_variants:
        parser.error(f"unknown variant {unknown_variants[0]!r}: use {', '.join(VARIANTS)}")
    for variant in ("no-graph", "staged"):
        if variant in variants and not graphs_on:  # the same loader as the default rows
            print(f"variant {variant} skipped: CUDA graphs are off in this run", flush=True)
            variants.remove(variant)
    modes = csv(pick(args.modes, ",".join(MODES), "deterministic"))
    seconds = pick(args.seconds, 3.0, 1.0)
    warmup = pick(args.warmup, 5, 2)
    trainer_model = pick(args.trainer_model, "inception-v3", "shortcnn-all")
    trainer_workers = pick(args.trainer_workers, 8, 2)
    interleave_s = seconds if args.trainer_interleave_s is None else max(args.trainer_interleave_s, 0.0)
    amp = cuda
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}: use {', '.join(MODES)}")
    log = lambda message: print(f"[gpu_feed] {message}", file=sys.stderr, flush=True)  # noqa: E731
    budget = Budget(args.budget_s)
    global CONDITIONS
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None) if cuda else None
    CONDITIONS = SliceConditions(cuda, None if uuid is None else str(uuid))

    machine = machine_info()
    machine.update(torch=torch.__version__, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version() if cuda else None)
    if cuda:
        props = torch.cuda.get_device_properties(device)
        machine["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 1024**3, 1),
                          "count": torch.cuda.device_count()}
    payload: dict[str, Any] = {
        "benchmark": "gpu_feed",
        "machine": machine,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "batch_size": batch,
        "parameters": {"patches": n, "bands": 12, "compression": "lz4", "models": models, "workers": workers,
                       "fed_workers": fed_workers, "variants": variants, "rounds": args.rounds,
                       "modes": modes, "seconds": seconds, "warmup_batches": warmup, "budget_s": args.budget_s,
                       "amp": "bfloat16 autocast" if amp else False, "channels_last": True,
                       "step": "SGD(lr=1e-3, momentum=0.9), BCEWithLogits on float32 logits",
                       "cpu_fallback": not cuda, "cuda_graphs": graphs_on},
        "versions": versions(["benzarr", "torch", "torchvision", "numpy", "zarr", "numcodecs", "triton"]),
        # torch.compile on CUDA (variant "compiled") needs Triton, and Triton builds its launcher
        # with the host's C compiler: record both, so a run whose compilation fell back says why
        "c_compiler": next((path for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None),
        "h2d_gb_per_s": {},
        "loader_alone": [],
        "ring_raw": [],
        "transformed": [],
        "models": [],
        "trainer": [],
        "variants": [],
        "ring_cpu": [],
        "augment": [],
        "transform_alone": [],
        "cpu_topology": cpu_topology(),
        # what the GPU (NVML) and the host (/proc/stat) did in each timed slice: "conditions" in
        # the runs' rows, their ranges in each fed row (benchmarks/_conditions.py)
        "conditions": CONDITIONS.info,
    }
    rec = Recorder(args.out, payload, budget, log)
    log(f"device {payload['device']}, {cores} cores; writing {args.out} after every measurement")

    try:
        store = args.store or build_store(args.workdir, n, args.build_workers or cores, log)
    except Exception as exc:
        payload["error"] = f"building the store: {type(exc).__name__}: {exc}"
        rec.save()
        raise
    payload["parameters"]["store"] = store.name  # under --workdir (or --store): no machine's paths
    payload["parameters"]["store_patches"] = len(dataset(store))
    rec.save()
    slice_s = seconds + 2.0            # a measurement's typical wall time beyond its timed slice
    alarm_s = max(60.0, 10 * seconds + 40)
    compile_s = 90.0 if "compiled" in variants else 0.0  # the compiled transform's first batch compiles

    # 1. raw host-to-device bandwidth
    h2d = rec.measure("h2d", {"what": "41 MB copy"},
                      lambda: h2d_bandwidth(device, args.h2d_copies), 2.0, 60.0)
    payload["h2d_gb_per_s"] = {k: h2d.get(k) for k in ("pageable", "pinned")}
    payload["h2d_gb_per_s"].update({k: v for k, v in h2d.items() if k.endswith("_per_s") or k == "error"})
    payload.pop("h2d", None)
    rec.save()

    # 2. the loader alone, delivered to the device; the raw ring (uint16)
    for w in workers:
        rec.measure("loader_alone", {"workers": w, "path": f"make_loader(device={device.type!r}) float32 model-ready"},
                    lambda w=w: loader_alone(store, device, batch, w, warmup, seconds), slice_s, alarm_s)
    if any(v in TRANSFORM_VARIANTS for v in variants):
        rec.measure("transform_alone", {"batch": batch, "variants": ["default", *[v for v in variants
                                                                                 if v in TRANSFORM_VARIANTS]]},
                    lambda: transform_alone(store, device, batch, variants, warmup, seconds, args.rounds),
                    slice_s, alarm_s + compile_s)
    for w in csv(args.augment_workers, int) if args.augment_workers else []:
        rec.measure("augment", {"workers": w, "augment": "flip-rot90"},
                    lambda w=w: augment_cost(store, device, batch, w, warmup, seconds, args.rounds),
                    2 * slice_s, alarm_s)
    for w in ring_workers:
        if w == 0:
            continue
        rec.measure("ring_raw", {"workers": w, "path": f"RingLoader uint16 -> {device.type}"},
                    lambda w=w: ring_raw(store, device, batch, w, warmup, seconds, copy=True), slice_s, alarm_s)
        if not cuda:
            rec.measure("ring_raw", {"workers": w, "path": "RingLoader uint16, not copied"},
                        lambda w=w: ring_raw(store, device, batch, w, warmup, seconds, copy=False), slice_s, alarm_s)

    for w in csv(args.cpu_ring_workers, int) if args.cpu_ring_workers else []:
        rec.measure("ring_cpu", {"workers": w, "path": "RingLoader uint16 on the CPU, not copied"},
                    lambda w=w: ring_raw(store, torch.device("cpu"), batch, w, warmup, seconds, copy=False),
                    slice_s, alarm_s)

    # 3. models: ceiling and fed, per mode (deterministic first: the trainer's default)
    def model_rows(mode: str) -> None:
        set_mode(mode)
        trainees: dict[str, Trainee] = {}
        ceilings: dict[str, float] = {}
        with_transform: dict[str, float] = {}  # model -> the transformed step's patches/s
        for name in models:
            def run_ceiling(name: str = name) -> dict[str, Any]:
                trainees[name] = Trainee(name, device, amp)
                r = ceiling(trainees[name], batch, warmup, seconds)
                ceilings[name] = r["patches_per_s"]
                return {"ceiling_run": r}
            row = rec.measure("ceilings", {"model": name, "mode": mode}, run_ceiling, slice_s + 5, alarm_s + 60)
            if name in ceilings:
                row["patches_per_s"] = ceilings[name]
                rec.save()
            if name in trainees and args.transformed:
                def run_transformed(name: str = name) -> dict[str, Any]:
                    r = transformed(trainees[name], dataset(store), batch, warmup, seconds)
                    with_transform[name] = r["patches_per_s"]
                    return {"transformed": r["patches_per_s"], "ceiling": ceilings[name],
                            "ratio": round(r["patches_per_s"] / ceilings[name], 3), "transformed_run": r}
                rec.measure("transformed", {"model": name, "mode": mode}, run_transformed, slice_s, alarm_s)
        for w in sorted(fed_workers, reverse=True):  # the worker counts that matter most first
            if not any(name in trainees for name in models):
                break
            state: dict[str, Any] = {}
            with_variants = variants if w == max(fed_workers) else []

            def open_loader(w: int = w, with_variants: list[str] = with_variants) -> dict[str, Any]:
                from benzarr.data import make_loader

                state["loader"] = make_loader(dataset(store), batch, shuffle=True, num_workers=w, seed=0,
                                              device=device, drop_last=True)
                state["batches"] = endless(state["loader"])
                t = time.perf_counter()
                next(state["batches"])
                out = {"first_batch_s": round(time.perf_counter() - t, 2)}
                state["variants"] = {}
                for variant in with_variants:  # a loader of its own for each variant
                    loader = make_loader(dataset(store), batch, shuffle=True, num_workers=w, seed=0,
                                         device=device, drop_last=True)
                    state.setdefault("variant_loaders", []).append(loader)
                    batches: Any = endless(loader)
                    if variant == "no-overlap":
                        loader.overlap = False
                    elif variant in TRANSFORM_VARIANTS and loader.transform is not None:
                        for switch, value in TRANSFORM_VARIANTS[variant].items():
                            setattr(loader.transform, switch, value)
                    elif variant == "thread":
                        loader.graphs = False  # the thread's stream is not the one the step runs on
                        batches = ThreadFed(batches, device)
                    elif variant == "no-graph":
                        loader.graphs = False
                    elif variant == "staged":  # graphs on, each slot staged through a device batch (before session 24)
                        loader.direct_copy = False
                    elif variant == "per-key-copy" and hasattr(loader.loader, "one_copy"):
                        loader.loader.one_copy = False
                    elif variant == "priority":
                        batches = PriorityFed(batches, device)
                    next(batches)
                    state["variants"][variant] = batches
                    state.setdefault("variant_transforms", {})[variant] = loader.transform
                return out
            rec.measure("loaders", {"workers": w, "mode": mode}, open_loader, slice_s,
                        alarm_s + (compile_s if with_variants else 0.0))
            if "batches" not in state:
                continue
            try:
                for name in models:
                    if name not in trainees:
                        continue

                    def run_fed(name: str = name) -> dict[str, Any]:
                        sources = {"fed": state["batches"], **state["variants"]}
                        r = fed_against_ceiling(trainees[name], sources, batch, warmup, seconds, args.rounds)
                        out = {"ceiling": r["ceiling"], "fed": r["fed"]["patches_per_s"],
                               "ratio": round(r["fed"]["patches_per_s"] / r["ceiling"], 3),
                               "ratio_paired": paired_ratio(r["fed"], r["ceiling_run"]),
                               "ratio_paired_95": paired_interval(r["fed"], r["ceiling_run"]),
                               "conditions": conditions_summary(ceiling=r["ceiling_run"], fed=r["fed"]),
                               "next_ms": r["fed"]["next_ms"], "step_ms": r["fed"]["step_ms"],
                               "ceiling_first": ceilings[name], "fed_run": r["fed"], "ceiling_run": r["ceiling_run"]}
                        out["graphs"] = state["loader"].graph_stats()
                        if name in with_transform:
                            out["transformed"] = with_transform[name]
                            out["vs_transformed"] = round(r["fed"]["patches_per_s"] / with_transform[name], 3)
                        for variant in state["variants"]:
                            t = r[variant]
                            payload["variants"].append({
                                "variant": variant, "model": name, "mode": mode, "workers": w,
                                "ceiling": r["ceiling"], "fed": t["patches_per_s"],
                                "ratio": round(t["patches_per_s"] / r["ceiling"], 3),
                                "ratio_paired": paired_ratio(t, r["ceiling_run"]),
                                "ratio_paired_95": paired_interval(t, r["ceiling_run"]),
                                "vs_base": round(t["patches_per_s"] / r["fed"]["patches_per_s"], 3),
                                "next_ms": t["next_ms"], "step_ms": t["step_ms"], "fed_run": t})
                            if variant == "compiled":  # False: compilation failed, the rows ran eagerly
                                transform = state.get("variant_transforms", {}).get(variant)
                                payload["variants"][-1]["compiled_stayed_on"] = bool(getattr(transform, "compiled",
                                                                                             False))
                        return out
                    rec.measure("models", {"model": name, "mode": mode, "workers": w}, run_fed,
                                seconds * (2 + len(state["variants"])) + 3, alarm_s)
                    if args.profile_steps and not payload.get("profiles") and name in trainees:
                        trace = args.out.with_name(args.out.stem + "_trace.json")
                        rec.measure("profiles", {"model": name, "mode": mode, "workers": w},
                                    lambda name=name: profile_fed(trainees[name], state["batches"],
                                                                  args.profile_steps, trace),
                                    slice_s + 5, alarm_s)
            finally:
                close(*state.get("variants", {}).values(), state.get("batches"), state.get("loader"),
                      *state.get("variant_loaders", []))
        if args.profile_steps and models[0] in trainees:
            trace = args.out.with_name(args.out.stem + f"_ceiling_{mode}_trace.json")
            rec.measure("profiles", {"model": models[0], "mode": mode, "workers": None},
                        lambda: profile_fed(trainees[models[0]], None, args.profile_steps, trace, batch), slice_s + 5, alarm_s)
        trainees.clear()
        if cuda:
            torch.cuda.empty_cache()

    def trainer_rows(mode: str) -> None:
        if trainer_model == "none":
            return
        set_mode(mode)
        rows = []
        for compiled in [False, True] if args.trainer_compile else [False]:
            label = {"compile_transform": True} if compiled else {}
            rows.append(rec.measure(
                "trainer", {"model": trainer_model, "mode": mode, "workers": trainer_workers, **label},
                lambda compiled=compiled: trainer_rate(store, trainer_model, trainer_workers, batch,
                                                       args.trainer_epochs, device, amp, mode, args.workdir, compiled,
                                                       interleave_s, warmup),
                (25.0 if cuda else 5.0) + (args.trainer_epochs + 1) * interleave_s, 300.0))
        row = rows[0]
        bare = [r for r in payload["models"] if r["model"] == trainer_model and r["mode"] == mode
                and r["workers"] == trainer_workers and r.get("fed")]
        if not bare and row.get("patches_per_s") and budget.allows(slice_s + 10):
            # the bare loop of the same model, mode and workers, when the model rows lacked it
            def bare_fed() -> dict[str, Any]:
                from benzarr.data import make_loader

                set_mode(mode)
                model = Trainee(trainer_model, device, amp)
                loader = make_loader(dataset(store), batch, shuffle=True, num_workers=trainer_workers, seed=0,
                                     device=device, drop_last=True)
                batches = endless(loader)
                try:
                    r = fed_against_ceiling(model, {"fed": batches}, batch, warmup, seconds, args.rounds)
                finally:
                    close(batches, loader)
                c, f = r["ceiling"], r["fed"]["patches_per_s"]
                return {"ceiling": c, "fed": f, "ratio": round(f / c, 3),
                        "ratio_paired": paired_ratio(r["fed"], r["ceiling_run"]),
                        "conditions": conditions_summary(ceiling=r["ceiling_run"], fed=r["fed"]), "fed_run": r["fed"],
                        "ceiling_run": r["ceiling_run"], "for": "trainer comparison"}
            bare = [rec.measure("models", {"model": trainer_model, "mode": mode, "workers": trainer_workers},
                                bare_fed, slice_s + 10, alarm_s + 60)]
        for row in rows:
            if row.get("patches_per_s") and bare and bare[0].get("fed"):
                row["fed"], row["ceiling"] = bare[0]["fed"], bare[0]["ceiling"]
                row["vs_fed"] = round(row["patches_per_s"] / bare[0]["fed"], 3)
                row["vs_ceiling"] = round(row["patches_per_s"] / bare[0]["ceiling"], 3)
        payload["targets"] = targets(payload)
        rec.save()

    order: list[tuple[Callable[[str], None], str]] = []
    for mode in modes:
        order.append((model_rows, mode))
        if mode in csv(args.trainer_modes):
            order.append((trainer_rows, mode))
    for fn, mode in order:
        try:
            fn(mode)
        except Exception as exc:  # keep what the other sections measure
            payload.setdefault("errors", []).append(f"{fn.__name__}({mode}): {type(exc).__name__}: {exc}")
            log(f"{fn.__name__}({mode}) failed: {exc}")
        payload["targets"] = targets(payload)
        rec.save()
    set_mode("deterministic")

    # tables
    print(f"\ngpu_feed on {payload['device']} ({cores} cores), batch {batch}, {n} patches lz4, "
          f"{seconds} s a measurement; h2d GB/s {payload['h2d_gb_per_s']}")
    print("\nloader alone, delivered to the device")
    print_table(payload["loader_alone"] + payload["ring_raw"],
                [("path", "path", "s"), ("workers", "workers", "d"), ("patches_per_s", "patches/s", ",.0f")])
    if payload["models"]:
        print("\nmodels: ceiling (random float32 batch on the device), transformed (a uint16 batch on the "
              "device through the batch transform each step) and fed by make_loader; next ms: host time in next()")
        print_table(sorted(map(with_interval_text, payload["models"]), key=lambda r: (r["mode"], r["model"], r["workers"])),
                    [("mode", "mode", "s"), ("model", "model", "s"), ("workers", "workers", "d"),
                     ("ceiling", "ceiling", ",.0f"), ("transformed", "transformed", ",.0f"), ("fed", "fed", ",.0f"),
                     ("ratio", "fed/ceiling", ".2f"), ("ratio_paired", "paired", ".2f"),
                     ("paired_95", "paired 95%", "s"), ("vs_transformed", "fed/transformed", ".2f"),
                     ("next_ms", "next ms", ".2f"), ("step_ms", "step ms", ".2f")])
        conditions = conditions_rows(payload["models"])
        if conditions:
            print("\nwhat the machine did in those rows' slices (least-most over the slices; SM clock at both ends "
                  "of each; capped: share of the slice below the application clocks; steal: of the node's CPU time)")
            print_table(conditions, [("mode", "mode", "s"), ("model", "model", "s"), ("workers", "workers", "d"),
                                     ("run", "run", "s"), ("slices", "patches/s by slice", "s"),
                                     ("sm_mhz", "SM MHz", "s"), ("power_w", "power W", "s"),
                                     ("power_capped_share", "power-capped", "s"),
                                     ("thermal_capped_share", "thermal-capped", "s"),
                                     ("steal_share", "steal", "s"), ("cores_busy", "cores busy", "s"),
                                     ("main_cpu_share", "main CPU", "s")])
    if payload["variants"]:
        print("\nvariants of the fed loop (A/B against the models rows at the same worker count)")
        print_table(list(map(with_interval_text, payload["variants"])),
                    [("variant", "variant", "s"), ("model", "model", "s"), ("mode", "mode", "s"),
                     ("workers", "workers", "d"), ("ceiling", "ceiling", ",.0f"),
                     ("fed", "fed", ",.0f"), ("ratio", "fed/ceiling", ".2f"),
                     ("ratio_paired", "paired", ".2f"), ("paired_95", "paired 95%", "s"),
                     ("vs_base", "vs plain fed", ".3f"),
                     ("next_ms", "next ms", ".2f"), ("step_ms", "step ms", ".2f")])
    if payload["ring_cpu"]:
        print("\nraw ring decoding on the CPU (not copied)")
        print_table(payload["ring_cpu"], [("workers", "workers", "d"), ("patches_per_s", "patches/s", ",.0f")])
    for r in payload.get("transform_alone", []):
        if r.get("ms_per_batch"):
            print("\nthe batch transform alone, a batch on the device (ms a batch; x default): " + ", ".join(
                f"{n} {ms:.3f} ({r['vs_default'][n]:.2f}x)" for n, ms in r["ms_per_batch"].items()))
    for r in payload.get("augment", []):
        if r.get("loader"):
            print(f"\naugment='flip-rot90' against none, {r['workers']} workers (interleaved): loader "
                  f"{r['loader']['flip-rot90']:,.0f} against {r['loader']['none']:,.0f} patches/s "
                  f"({r['loader_ratio']:.3f}); the batch transform alone {r['transform_ms']['flip-rot90']:.3f} "
                  f"against {r['transform_ms']['none']:.3f} ms a batch ({r['transform_ratio']:.3f})")
    if payload["trainer"]:
        print("\ntrainer against the bare fed loop")
        print_table(payload["trainer"], [("model", "model", "s"), ("mode", "mode", "s"), ("workers", "workers", "d"),
                                         ("compile_transform", "compiled", ""),
                                         ("patches_per_s", "trainer", ",.0f"), ("fed", "bare fed", ",.0f"),
                                         ("vs_fed", "vs_fed", ".2f"), ("vs_bare_interleaved", "vs_bare (interleaved)", ".2f"),
                                         ("ceiling", "ceiling", ",.0f"), ("vs_ceiling", "vs_ceiling", ".2f")])
        for r in payload["trainer"]:
            for i, e in enumerate(r.get("epoch_timing", [])):
                print(f"  {r['model']} {r['mode']}{' compiled' if r.get('compile_transform') else ''} epoch {i}: {e['steps']} steps in {e['seconds']} s, first step "
                      f"after {e['first_step_s']} s, steady {e['steady_patches_per_s']} patches/s, host gap "
                      f"median {e['median_gap_ms']} ms, max {e['max_gap_ms']} ms")
            if r.get("bare_slices"):
                print(f"  {r['model']} {r['mode']}: the bare fed loop before epoch 0 and after each epoch: "
                      f"{', '.join(f'{x:,.0f}' for x in r['bare_slices'])} patches/s")
    print("\ntargets" + ("" if cuda else " (CPU fallback: the GPU targets are unmeasured)"))
    print_table(payload["targets"], [("target", "target", "s"), ("value", "measured", ",.3f"),
                                     ("goal", "goal", ",g"), ("met", "met", "")])
    for p in payload.get("profiles", []):
        if p.get("busy_ms_per_step") is not None:
            print(f"profile {p.get('of')} {p['model']} {p['mode']} workers={p['workers']}: device busy "
                  f"{p['busy_ms_per_step']} ms a step, wall {p['wall_ms_per_step']} ms a step")
    for p in payload.get("profiles", [])[:1]:
        if not p.get("top_ops"):
            continue
        print(f"\nprofile of {p['steps']} fed steps ({p['model']}, {p['mode']}, {p['workers']} workers): {p['trace']}")
        print_table(p["top_ops"][:10], [("op", "op", "s"), ("calls", "calls", "d"),
                                        ("self_us_per_step", f"self {p['timeline']} us/step", ",.1f"),
                                        ("host_us_per_step", "self host us/step", ",.1f")])
    errors = [r for section in ("loader_alone", "ring_raw", "transformed", "models", "trainer", "ceilings",
                                "loaders", "profiles", "variants", "ring_cpu", "augment", "transform_alone")
              for r in payload.get(section, []) if "error" in r]
    for r in errors:
        print(f"error: {r['error']}")
    rec.save()
    print(f"\nwrote {args.out} ({payload['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
