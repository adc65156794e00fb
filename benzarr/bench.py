"""Loading throughput of a store (the library half of ``benzarr bench``), and the data-wait
share of training steps. Returns numbers; never prints.

All reads are random-order full-store reads through :class:`benzarr.data.BigEarthNetDataset`,
so the figures are what training on this disk would see. The page cache is left as it is:
run twice to compare cold and warm reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benzarr.bigearthnet import BAND_GROUPS
from benzarr.checks import check_seed, finite
from benzarr.data import BigEarthNetDataset, check_device, make_loader
from benzarr.errors import InvalidArgumentError
from benzarr.store import S2_ARRAYS, is_url

#: Decoded bytes of a full 12-band patch at native resolution, uint16.
NATIVE_BYTES = sum(len(bands) * side * side * 2 for bands, side, _ in BAND_GROUPS.values())


@dataclass
class Throughput:
    """One measurement.

    Attributes:
        name: what was measured (e.g. ``batched``, ``loader, 2 workers``).
        patches: patches read.
        seconds: wall time of those reads.
        bytes_per_patch: decoded bytes a patch (uint16 native: 160,000 for 12 bands).
        stored_bytes_per_patch: bytes a patch occupies on disk (compressed), when known.
    """

    name: str
    patches: int
    seconds: float
    bytes_per_patch: int
    stored_bytes_per_patch: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patches_per_s(self) -> float:
        """Patches a second."""
        return self.patches / self.seconds if self.seconds > 0 else float("nan")

    @property
    def mb_per_s(self) -> float:
        """Decoded megabytes (10^6 bytes) a second."""
        return self.patches_per_s * self.bytes_per_patch / 1e6

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the derived rates."""
        out = asdict(self)
        out["patches_per_s"] = self.patches_per_s
        out["mb_per_s"] = self.mb_per_s
        return out


def timed(call: Callable[[], int], min_seconds: float, max_calls: int | None = None) -> tuple[int, float]:
    """Call ``call`` (returning items done) until ``min_seconds`` pass; (items, seconds)."""
    items, calls = 0, 0
    start = time.perf_counter()
    while True:
        items += call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or (max_calls is not None and calls >= max_calls):
            return items, elapsed


def stored_bytes_per_patch(store: str | Path, groups: Sequence[str] = tuple(BAND_GROUPS)) -> float | None:
    """Bytes on disk of the band arrays' shard files, a patch (None for remote stores)."""
    if is_url(store):
        return None
    root = Path(store)
    total = sum(f.stat().st_size for g in groups for f in (root / S2_ARRAYS[g] / "c").rglob("*") if f.is_file())
    from benzarr.store import open_store

    n = open_store(root).n_patches
    return total / n if n else None


def bench_store(
    store: str | Path,
    batch_size: int = 64,
    workers: int = 2,
    min_seconds: float = 2.0,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> list[Throughput]:
    """Measure reading ``store`` in random order, all 12 bands.

    Measurements (in this order):

    * ``single native``: one ``read_batch([i])`` a patch, uint16 native arrays;
    * ``single sample``: ``ds[i]``, float32 (12, 120, 120) upsampled on the CPU;
    * ``batched native``: ``read_batch`` of ``batch_size`` random indices;
    * ``loader, 0 workers`` and ``loader, W workers``: :func:`make_loader` epochs delivering
      model-ready float32 batches on ``device`` (the workers' start-up is not counted; on
      CUDA the clock stops once the device has finished the batches handed out: the
      slots' copies and the batch transform, the loader's whole delivery to a GPU).

    ``batch_size`` is bounded to the store's patch count (``extra["batch_size"]`` of the
    batched measurements is the size used).

    Returns:
        the :class:`Throughput` of each.

    Raises:
        InvalidArgumentError: a batch size below 1, negative workers, ``min_seconds`` not a
            positive finite number, a seed outside 0 .. 2**32 - 1, a device this machine lacks,
            a store without valid patches.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise InvalidArgumentError(f"--workers must be 0 or more, got {workers}")
    finite("--seconds", min_seconds, positive=True)  # nan passed "> 0" by failing it, and never ended
    seed = check_seed(seed, "--seed")  # -1 reached NumPy's default_rng as a bare ValueError
    device = check_device(device, "--device")  # before any measurement, not after the CPU ones
    ds = BigEarthNetDataset(store, storage_options=storage_options)
    if len(ds) == 0:
        raise InvalidArgumentError(f"{store}: no valid patch to read")
    # a batch larger than the store reads patches twice: --batch-size 1000000 once asked for a
    # 115 GB buffer; bounded, the figures stay those of reading the whole store at once
    batch_size = min(batch_size, len(ds))
    stored = stored_bytes_per_patch(store)
    rng = np.random.default_rng(seed)
    results: list[Throughput] = []

    def one_native() -> int:
        ds.read_batch([int(rng.integers(len(ds)))])
        return 1

    def one_sample() -> int:
        ds[int(rng.integers(len(ds)))]
        return 1

    def batch_native() -> int:
        ds.read_batch(rng.integers(len(ds), size=batch_size))
        return batch_size

    for name, call in (("single native", one_native), ("single sample", one_sample), ("batched native", batch_native)):
        call()  # maps the shards this process needs first
        patches, seconds = timed(call, min_seconds)
        extra = {"batch_size": batch_size} if name == "batched native" else {}
        results.append(Throughput(name, patches, seconds, NATIVE_BYTES, stored, extra))

    for n_workers in sorted({0, workers}):
        loader = make_loader(ds, batch_size, shuffle=True, num_workers=n_workers, seed=seed, device=device)
        patches, seconds, epoch = 0, 0.0, 0
        iterator = iter(loader)
        next(iterator)  # workers started, first batch in
        start = time.perf_counter()
        while seconds < min_seconds:
            for batch in iterator:
                patches += int(batch["label"].shape[0])
                seconds = time.perf_counter() - start
                if seconds >= min_seconds:
                    break
            else:
                epoch += 1
                loader.set_epoch(epoch)
                iterator = iter(loader)
        if device.type == "cuda":  # the batches handed out are queued work: count them once done
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        results.append(Throughput(f"loader, {n_workers} workers", patches, seconds, NATIVE_BYTES, stored,
                                  {"batch_size": batch_size, "device": str(device),
                                   "includes": "device transform to float32 120x120"}))
        del iterator, loader  # stops persistent workers
    return results


@dataclass
class WaitShare:
    """Share of training-step time spent waiting for the next batch.

    Attributes:
        workers: loader worker processes (the batch ring).
        steps: measured steps (after warm-up).
        step_s: mean wall time of a step (wait + forward + backward + optimiser), seconds.
        wait_s: mean wait for the next device batch, seconds.
    """

    workers: int
    steps: int
    step_s: float
    wait_s: float

    @property
    def share(self) -> float:
        """wait_s / step_s."""
        return self.wait_s / self.step_s if self.step_s > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``share``."""
        return {**asdict(self), "share": self.share}


def data_wait_share(
    ds: BigEarthNetDataset,
    model: torch.nn.Module,
    workers: int,
    batch_size: int = 32,
    steps: int = 10,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> WaitShare:
    """Train ``model`` (Adam, BCE-with-logits) for ``warmup + steps`` steps from
    :func:`make_loader` and time how long each step waits for its batch.

    The wait includes the device transform (it runs in the training process).
    """
    device = torch.device(device)
    model = model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = make_loader(ds, batch_size, shuffle=True, num_workers=workers, seed=seed, device=device,
                         drop_last=True)
    if len(loader) == 0:
        raise InvalidArgumentError(f"need at least one full batch of {batch_size}")
    waits: list[float] = []
    totals: list[float] = []
    epoch = 0
    iterator = iter(loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    while len(totals) < warmup + steps:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            epoch += 1
            loader.set_epoch(epoch)
            iterator = iter(loader)
            continue
        sync()
        got = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"]), batch["label"])
        loss.backward()
        optimiser.step()
        sync()
        end = time.perf_counter()
        waits.append(got - start)
        totals.append(end - start)
    del iterator, loader
    waits, totals = waits[warmup:], totals[warmup:]
    return WaitShare(workers, len(totals), float(np.mean(totals)), float(np.mean(waits)))
