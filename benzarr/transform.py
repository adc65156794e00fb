"""The device batch transform: native uint16 band groups -> model-ready float32 images.

:class:`BatchTransform` turns a batch as :meth:`benzarr.data.BigEarthNetDataset.read_batch`
returns it (uint16 groups at 10/20/60 m, labels, store rows) into ``(B, C, 120, 120)`` float32
on the training device: cast, band selection, optional per-band normalisation, upsampling,
augmentation. On the CPU it runs inside the loader's workers; on a GPU in the main process,
one batch ahead on a side stream (:class:`benzarr.data.DeviceLoader`). See docs/design.md §4.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benzarr.augment import augment_numpy, augment_tensor, check_augment, source_index, transform_codes
from benzarr.bands import CHANNEL_GROUPS as BAND_CHANNEL_GROUPS
from benzarr.bands import PATCH_SIDE, band_groups_for, resolve_bands
from benzarr.checks import boolean, check_resample, check_seed, whole
from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import interrupts_deferred
from benzarr.store import CHANNEL_ARRAYS

#: Channel groups as stored: group -> (array path, channel names, native side in pixels).
CHANNEL_GROUPS: dict[str, tuple[str, tuple[str, ...], int]] = {
    group: (CHANNEL_ARRAYS[group], names, side) for group, (names, side) in BAND_CHANNEL_GROUPS.items()
}

Batch = dict[str, torch.Tensor]


def _u16_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint16 tensor -> float32 (same device).

    torch's uint16 kernels are scalar (3.6x slower than numpy on the CPU here) and not
    every device has them: the CPU converts through numpy, other devices try the direct
    cast and fall back to widening the int16 view.
    """
    if x.device.type == "cpu":
        return torch.from_numpy(x.numpy().astype(np.float32))
    try:
        return x.to(torch.float32)
    except (RuntimeError, NotImplementedError):
        return x.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)


@contextlib.contextmanager
def unfilled_allocations() -> Iterator[None]:
    """For the ``with`` block: new tensors are not filled with NaN (or an integer type's
    largest value) under deterministic algorithms (``torch.use_deterministic_algorithms(True)``,
    the trainer's default). torch fills them (``torch.utils.deterministic.fill_uninitialized_memory``)
    so that a read of memory never written shows; every tensor the loader allocates in a batch
    (the device copy of a ring slot, the image, the upsampled planes) is written whole before
    anything reads it, so there the fill is only a cost: one more kernel and memory pass for each,
    as many bytes again as the batch. Nothing is changed when deterministic algorithms are off or
    the fill is already off; the setting is put back on leaving. torch's setting is process-wide:
    a tensor another thread allocates during the block (microseconds to a few milliseconds a
    batch) is not filled either."""
    if not (torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory):
        yield
        return
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = True


def _to_float(x: torch.Tensor, codes: np.ndarray | None = None) -> torch.Tensor:
    """A stored group (uint16 reflectance or float32 backscatter) as float32, with row b
    flipped/rotated by ``codes[b]`` (:mod:`benzarr.augment`) when codes are given."""
    if codes is not None and codes.any():
        if x.device.type == "cpu":  # fused with the conversion: one strided copy a row
            return torch.from_numpy(augment_numpy(x.numpy(), codes, np.float32))
        x = augment_tensor(x, codes)
    return _u16_to_float(x) if x.dtype == torch.uint16 else x.to(torch.float32)


def _upsample(x: torch.Tensor, mode: str = "bilinear", align_corners: bool = False,
              planes: bool = True) -> torch.Tensor:
    """(B, C, h, w) float32 -> (B, C, 120, 120): ``F.interpolate(mode=mode, align_corners=...)``
    (``align_corners`` does not apply to ``nearest``). On CUDA, bilinear takes
    :func:`_upsample_bilinear_planes` (``planes=False``: the native kernel on the NCHW batch,
    session 6's first form, kept for the benchmark's A/B).

    On the CPU it runs on one intra-op thread: torch splits the output among threads at
    arbitrary points, and a row split between its vectorised and scalar code differs in
    the last bit, so the result would depend on the thread count (one in a loader worker,
    all cores in the main process). One thread gives the same bits whatever the worker count.
    """
    corners = None if mode == "nearest" else align_corners

    def interpolate() -> torch.Tensor:
        return F.interpolate(x, size=(PATCH_SIDE, PATCH_SIDE), mode=mode, align_corners=corners)

    if x.device.type == "cuda" and mode == "bilinear" and not x.requires_grad:
        if planes:
            return _upsample_bilinear_planes(x, bool(align_corners))
        return torch._C._nn.upsample_bilinear2d(x, (PATCH_SIDE, PATCH_SIDE), bool(align_corners), None)
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1:
        return interpolate()
    torch.set_num_threads(1)
    try:
        return interpolate()
    finally:
        torch.set_num_threads(threads)


def _upsample_bilinear_planes(x: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """(B, C, h, w) float32 -> (B, C, 120, 120) bilinear, with the kernel that keeps a GPU busy.

    Two choices, for a GPU (issue #10):

    * the native kernel is called directly: ``F.interpolate`` swaps bilinear for a slow
      decomposition (a dozen kernels, four gathers) on a GPU whenever deterministic
      algorithms are on, only so that its *backward* is deterministic; the forward kernel
      is deterministic already, and a loader's input needs no gradient. With the
      decomposition the transform cost 27% of a shortcnn-all step on an H200;
    * the B*C planes go in as the channels of one channels-last image. CUDA's contiguous
      (NCHW) kernel gives each thread one output pixel and loops it over the batch and the
      channels: 14,400 threads for a whole batch, 0.5 ms for the 20 m bands of 256 patches on
      an H200. Its channels-last kernel, which torch picks from 16 channels on, gives each
      thread one output value. The price is two transposes: of the small input, and of the
      output back to NCHW.
    """
    b, c, h, w = x.shape
    planes = x.reshape(1, b * c, h, w).contiguous(memory_format=torch.channels_last)
    out = torch._C._nn.upsample_bilinear2d(planes, (PATCH_SIDE, PATCH_SIDE), align_corners, None)
    return out.contiguous().view(b, c, PATCH_SIDE, PATCH_SIDE)


def _mask_to_long(x: torch.Tensor, device: torch.device, codes: np.ndarray | None = None) -> torch.Tensor:
    """(B, 120, 120) uint16 CLC codes -> int64 on ``device``: widened through numpy for the
    CPU (torch's uint16 kernels are scarce there), moved as uint16 (4x fewer bytes) and
    widened on any other device; row b flipped/rotated by ``codes[b]`` when given."""
    augmenting = codes is not None and codes.any()
    if x.device.type == "cpu" and device.type == "cpu":
        if augmenting:
            return torch.from_numpy(augment_numpy(x.numpy(), codes, np.int64))
        return torch.from_numpy(x.numpy().astype(np.int64))
    x = x.to(device, non_blocking=True)
    if augmenting:
        x = augment_tensor(x, codes)
    try:
        return x.to(torch.int64)
    except (RuntimeError, NotImplementedError):
        return x.view(torch.int16).to(torch.int64).bitwise_and_(0xFFFF)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (writing one changes the other)."""
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _runs(slots: Sequence[int], sources: Sequence[int] | None = None) -> tuple[tuple[int, int, int], ...]:
    """Output channels ``slots`` of a group's channels ``sources`` (default 0, 1, ...) as
    runs ``(first group channel, first output channel, count)``, consecutive in both,
    e.g. ``[4, 5, 6, 8]`` -> ``((0, 4, 3), (3, 8, 1))``."""
    sources = range(len(slots)) if sources is None else sources
    runs: list[list[int]] = []
    for c, slot in zip(sources, slots):
        if runs and runs[-1][1] + runs[-1][2] == slot and runs[-1][0] + runs[-1][2] == c:
            runs[-1][2] += 1
        else:
            runs.append([c, slot, 1])
    return tuple((a, b, n) for a, b, n in runs)


def model_ready_image(groups: Sequence[torch.Tensor], keeps: Sequence[Sequence[int]],
                      norms: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
                      order: Sequence[tuple[int, int]], resample: str = "bilinear",
                      align_corners: bool = False,
                      sources: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The model-ready image in plain torch operations, for ``torch.compile`` to fuse into a
    few kernels (:attr:`BatchTransform.compiled`): each stored group (B, c, h, w), uint16 or
    float32, keeps its channels ``keeps[g]``, is cast to float32, normalised as
    ``(x - mean) / std`` with ``norms[g]`` (each (1, kept, 1, 1); None: no normalisation) and
    resampled to 120x120 by ``F.interpolate``; output channel k is kept channel
    ``order[k][1]`` of group ``order[k][0]``. With ``sources`` (per group, (B, 1, h * w) int64:
    :func:`benzarr.augment.source_index`), each row is first flipped/rotated by a gather of its
    pixels. Returns (B, C, 120, 120) float32.

    Eager on one intra-op thread, it gives :meth:`BatchTransform.image`'s values (tested on
    the CPU; see :func:`_upsample` for why one thread); compiled, the last bit may differ
    (another order of the same float32 operations)."""
    planes: list[torch.Tensor] = []
    for g, x in enumerate(groups):
        # uint16 goes through int16, which has every kernel on every backend (CUDA has no
        # uint16 indexing): the channels are picked as raw bits, then widened to the same values
        raw = x.dtype == torch.uint16
        if raw:
            x = x.view(torch.int16)
        if sources is not None:  # augmentation moves values at native resolution, as the transform does
            b, c, h, w = x.shape
            x = torch.gather(x.reshape(b, c, h * w), 2, sources[g].expand(b, c, h * w)).view(b, c, h, w)
        keep = list(keeps[g])
        if len(keep) != x.shape[1]:
            x = x[:, keep]
        y = x.to(torch.int32).bitwise_and(0xFFFF).to(torch.float32) if raw else x.to(torch.float32)
        if norms is not None:
            y = (y - norms[g][0]) / norms[g][1]
        if y.shape[-1] != PATCH_SIDE or y.shape[-2] != PATCH_SIDE:
            y = F.interpolate(y, size=(PATCH_SIDE, PATCH_SIDE), mode=resample,
                              align_corners=None if resample == "nearest" else align_corners)
        planes.append(y)
    return torch.cat([planes[g][:, k:k + 1] for g, k in order], dim=1)


def check_normalization(mean: Sequence[float], std: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """Per-band ``mean`` and ``std`` as ``n`` floats each, a std of 0 taken as 1 (a constant
    band: centred, not divided by zero).

    Raises:
        InvalidArgumentError: not ``n`` values each, or not finite numbers, or a negative std
            (a NaN std made every input NaN, a negative one flipped the band's sign).
    """
    try:
        got = f"{len(mean)} and {len(std)}"
    except TypeError:  # a bare number
        got = f"{mean!r} and {std!r}"
    if got != f"{n} and {n}":
        raise InvalidArgumentError(f"mean and std need one value per band ({n}), got {got}")
    try:
        values = [float(v) for v in (*mean, *std)]
    except (TypeError, ValueError):
        values = [math.nan]
    if not all(math.isfinite(v) for v in values) or any(v < 0 for v in values[n:]):
        raise InvalidArgumentError(f"mean and std must be finite numbers and std not negative, got {list(mean)} "
                                   f"and {list(std)}")
    return values[:n], [v or 1.0 for v in values[n:]]


_compiled_image: Callable[..., torch.Tensor] | None = None


def compiled_model_ready_image() -> Callable[..., torch.Tensor]:
    """:func:`model_ready_image` through ``torch.compile`` (fixed shapes: each batch size
    compiles once, the first call of each takes seconds); one per process, so every
    transform of the same bands shares its kernels."""
    global _compiled_image
    if _compiled_image is None:
        _compiled_image = torch.compile(model_ready_image, fullgraph=True, dynamic=False)
    return _compiled_image


_pool: tuple[int, int, concurrent.futures.ThreadPoolExecutor] | None = None


def _row_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """This process's threads for :meth:`BatchTransform.image` (made again after a fork,
    whose child has none of its parent's threads, or when the thread count changes)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != threads:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)  # the thread count changed: let the old threads go
        _pool = (os.getpid(), threads, concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="benzarr-rows"))
    return _pool[2]


class BatchTransform:
    """uint16 native-resolution batch -> float32 (B, C, 120, 120) image on ``device``.

    Per batch: move the needed band groups to ``device``, convert to float32, keep the
    selected channels, with ``mean``/``std`` normalise per band as ``(x - mean) / std``,
    upsample 20 m and 60 m groups to 120x120 with ``F.interpolate(mode=resample,
    align_corners=align_corners)`` (no antialiasing), put the bands in the requested order
    and, with ``augment``, flip and rotate each patch (:mod:`benzarr.augment`).

    Args:
        bands: output band names in output channel order (a list, not a keyword such as ``"rgb"``).
        device: where the result lives.
        mean, std: per output band (C,), or None for no normalisation (a std of 0 is taken
            as 1: a constant band).
        resample: ``bilinear`` (default, as TorchGeo), ``nearest`` (as the official reBEN
            models were trained) or ``bicubic``.
        align_corners: ``F.interpolate``'s convention for bilinear and bicubic: False
            (half-pixel centres, benzarr's and TorchGeo's default) or True (ConfigILM
            0.7.1's ``stack_and_interpolate``, which the official weights saw).
        augment: ``none``, ``flip`` or ``flip-rot90``; a patch's transform is a pure
            function of ``(seed, epoch, store row)`` (call :meth:`set_epoch`).
        seed: the augmentation seed.

    Input: a dict as returned by :meth:`BigEarthNetDataset.read_batch` (uint16 groups,
    ``label`` (B, L) uint8, ``index`` (B,) int64).

    Output: ``{"image": (B, C, 120, 120) float32, "label": (B, L) float32}`` on ``device``
    and ``"index"``: (B,) int64 store rows, left on the CPU (no device sync to read them);
    with a ``mask`` in the input, ``"mask"``: (B, 120, 120) int64 CLC2018 codes on ``device``.
    S1 channels (``VV``, ``VH``, float32 dB) pass through unchanged apart from normalisation.
    The input is never modified.

    Off the CPU two switches choose how the same values are computed, for benchmarks' A/B
    (``benchmarks/gpu_feed.py --variants``): ``planes`` (default True: bilinear on the B*C
    planes, :func:`_upsample_bilinear_planes`) and ``fused`` (default True: fewer passes over
    device memory, :meth:`_image_rows_fused`). ``fused`` does not change the bits; whether
    ``planes`` does on CUDA (its kernel computes the same expression in another layout) is
    reported by ``benchmarks/gpu_ring_check.py``. A third, ``compiled`` (default False; CUDA
    only), makes the image with :func:`model_ready_image` through
    ``torch.compile``: one or two fused kernels instead of about 15 passes, the last bit
    possibly different; ``make_loader(compile_transform=True)`` and ``benzarr train
    --compile-transform`` turn it on (session 20 on an H200: 0.42 against 0.72 ms a 12-band
    batch of 256; shortcnn-all fed at 0.97-0.98 of its ceiling against 0.92, the other models
    unchanged within noise). A compilation that fails turns it off with one warning.
    """

    def __init__(self, bands: Sequence[str], device: str | torch.device = "cpu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 resample: str = "bilinear", align_corners: bool = False, augment: str = "none",
                 seed: int = 0) -> None:
        check_resample(resample)
        if isinstance(bands, str):  # list("rgb") was the bands 'r', 'g', 'b': "unknown band 'r'"
            raise InvalidArgumentError(f"bands must be a list of band names in output order, such as a dataset's "
                                       f"ds.bands or benzarr.bands.resolve_bands({bands!r}), got the str {bands!r}")
        self.bands = resolve_bands(list(bands), ("s2", "s1"))
        from benzarr.data import check_device  # data imports this module

        self.device = check_device(device)  # "gpu" or a missing GPU: one line, not torch's RuntimeError
        # align_corners="no" was true, seed 1.7 drew seed 1's flips: the checks make_loader makes
        self.resample, self.align_corners = resample, boolean("align_corners", align_corners)
        self.planes = True  # CUDA bilinear on the B*C planes (False: the NCHW kernel; an A/B switch)
        self.fused = True  # off the CPU, fewer passes over memory (False: session 6's passes; an A/B switch)
        self.compiled = False  # CUDA: the image by one torch.compile'd function (make_loader(compile_transform=True))
        self._cast_in_kernel = True  # uint16 read by the first arithmetic kernel (until a device refuses)
        self.augment, self.seed, self.epoch = check_augment(augment), check_seed(seed), 0
        self.groups = band_groups_for(self.bands)
        # per group: channels to keep (None: all, in order) and their output channels
        self._plan: list[tuple[str, torch.Tensor | None, list[int]]] = []
        # per group: its copies into the image, one per run of consecutive output channels,
        # counted in the kept channels (first kept channel, first output channel, count), and
        # the same runs for a group copied straight from its stored batch (first stored
        # channel, first output channel, count, first kept channel)
        self._runs: dict[str, tuple[tuple[int, int, int], ...]] = {}
        self._stored_runs: dict[str, tuple[tuple[int, int, int, int], ...]] = {}
        keeps: list[tuple[int, ...]] = []  # for model_ready_image: each group's kept channels
        for group in self.groups:
            names = CHANNEL_GROUPS[group][1]
            keep = [c for c, name in enumerate(names) if name in self.bands]
            gather = None if len(keep) == len(names) else torch.tensor(keep, device=self.device)
            slots = [self.bands.index(names[c]) for c in keep]
            self._plan.append((group, gather, slots))
            keeps.append(tuple(keep))
            self._runs[group] = _runs(slots)
            self._stored_runs[group] = tuple((first, slot, count, keep.index(first))
                                             for first, slot, count in _runs(slots, keep))
        # for model_ready_image: each group's kept channels, and (group, kept channel) per output channel
        self._keeps = tuple(keeps)
        by_slot = {slot: (g, k) for g, (_, _, slots) in enumerate(self._plan) for k, slot in enumerate(slots)}
        self._order = tuple(by_slot[slot] for slot in range(len(self.bands)))
        if (mean is None) != (std is None):
            raise InvalidArgumentError("give both mean and std, or neither")
        self._norm: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if mean is not None and std is not None:
            mean, std = check_normalization(mean, std, len(self.bands))
            self._norm = {}
            for group, _, slots in self._plan:
                m = torch.tensor([mean[k] for k in slots], dtype=torch.float32, device=self.device)
                s = torch.tensor([std[k] for k in slots], dtype=torch.float32, device=self.device)
                self._norm[group] = (m.view(1, -1, 1, 1), s.view(1, -1, 1, 1))

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation to draw (no effect without ``augment``).

        Raises:
            InvalidArgumentError: ``epoch`` is not a whole number of at least 0 (1.9 drew epoch 1's).
        """
        self.epoch = whole("epoch", epoch, 0)

    def out_spec(self, batch_spec: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """What one patch of this transform's output holds, for input ``batch_spec``
        (:meth:`BigEarthNetDataset.batch_spec`): key -> (per-patch shape, numpy dtype)."""
        spec = {"image": ((len(self.bands), PATCH_SIDE, PATCH_SIDE), np.dtype(np.float32)),
                "label": (batch_spec["label"][0], np.dtype(np.float32)),
                "index": ((), np.dtype(np.int64))}
        if "mask" in batch_spec:
            spec["mask"] = (batch_spec["mask"][0], np.dtype(np.int64))
        return spec

    def image_shape(self, size: int) -> tuple[int, int, int, int]:
        """(B, C, 120, 120): the shape of the float32 image of a ``size``-patch batch."""
        return size, len(self.bands), PATCH_SIDE, PATCH_SIDE

    def image(self, batch: Batch, out: torch.Tensor | None = None, codes: np.ndarray | None = None) -> torch.Tensor:
        """The (B, C, 120, 120) float32 image of ``batch`` on the device (written into ``out``
        when given; row b flipped/rotated by ``codes[b]`` when given).

        On a CPU with several intra-op threads, the rows are split into one slice per thread,
        each transformed on one thread: all cores work, and every patch is computed exactly
        as a single-threaded loader worker computes it (see :func:`_upsample`), so the bits
        do not depend on the thread or worker count.

        Raises:
            InvalidArgumentError: ``batch`` lacks a band group these bands need, or ``index``.
        """
        self._check_batch(batch, (*self.groups, "index"))
        return self._image(batch, out, codes)

    def _image(self, batch: Batch, out: torch.Tensor | None = None, codes: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`image` of a batch already checked (:meth:`__call__` checks it once a batch)."""
        size = int(torch.as_tensor(batch["index"]).shape[0])
        if self.compiled and self.device.type == "cuda":
            made = self._compiled_image(batch, codes)
            if made is not None:
                return made if out is None else out.copy_(made)
        image = torch.empty(self.image_shape(size), dtype=torch.float32, device=self.device) if out is None else out
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or threads == 1 or size < 2:
            return self._image_rows(batch, image, codes)
        bounds = np.linspace(0, size, min(threads, size) + 1).astype(int).tolist()
        slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        groups = [group for group, _, _ in self._plan]
        torch.set_num_threads(1)
        try:
            # a Ctrl-C inside submit() can land after it started a pool thread but before the
            # executor registered it for the exit-time wake-up: the interpreter then waits for
            # that thread for ever at exit. Submitting is microseconds: Ctrl-C lands after it.
            with interrupts_deferred():
                jobs = [_row_pool(threads).submit(self._image_rows, {g: batch[g][part] for g in groups}, image[part],
                                                  None if codes is None else codes[part]) for part in slices]
            for job in jobs:
                job.result()
        finally:
            torch.set_num_threads(threads)
        return image

    def _compiled_image(self, batch: Batch, codes: np.ndarray | None = None) -> torch.Tensor | None:
        """:func:`model_ready_image` of ``batch`` compiled (:attr:`compiled`; row b flipped/rotated
        by ``codes[b]`` when given), or None after turning ``compiled`` off with a warning when
        compilation fails (no Triton, say)."""
        groups = [torch.as_tensor(batch[group]).to(self.device, non_blocking=True) for group, _, _ in self._plan]
        norms = None if self._norm is None else [self._norm[group] for group, _, _ in self._plan]
        sources = (None if codes is None or not codes.any()
                   else [source_index(codes, x.shape[-1], self.device) for x in groups])
        try:
            return compiled_model_ready_image()(groups, self._keeps, norms, self._order, self.resample,
                                                self.align_corners, sources)
        except Exception as exc:  # torch.compile's errors have no common base class
            self.compiled = False
            warnings.warn(f"BatchTransform.compiled turned off: torch.compile failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); batches are made eagerly",
                          RuntimeWarning, stacklevel=3)
            return None

    def _image_rows(self, batch: Batch, image: torch.Tensor, codes: np.ndarray | None) -> torch.Tensor:
        """:meth:`image` of the rows of ``batch`` (band groups only) into ``image``."""
        if self.fused and self.device.type != "cpu":
            return self._image_rows_fused(batch, image, codes)
        for group, gather, _ in self._plan:
            stored = torch.as_tensor(batch[group])
            x = _to_float(stored.to(self.device, non_blocking=True), codes)
            if gather is not None:
                x = x.index_select(1, gather)
            # a float32 group (S1) already on the device is the caller's own tensor: not in place
            x = self._normalize_upsample(x, group, in_place=not _shares_memory(x, stored))
            # one copy per run of consecutive output channels (7 copies, not 12, for "all")
            for first, slot, count in self._runs[group]:
                image[:, slot:slot + count] = x[:, first:first + count]
        return image

    def _image_rows_fused(self, batch: Batch, image: torch.Tensor, codes: np.ndarray | None) -> torch.Tensor:
        """:meth:`_image_rows` in fewer passes over device memory, with the same bits.

        A GPU spends the transform's time moving bytes (issue #10: 1.7 ms of a 7.5 ms
        shortcnn-all step on an H200), so each pass that can go does:

        * the uint16 -> float32 cast happens inside the first arithmetic, ``torch.sub(x, mean,
          out=...)`` (without normalisation, inside the copy): no float32 copy of the batch;
        * a group at 120x120 (10 m, S1) is written straight into its image channels;
        * a bilinear group goes into the channels-last planes buffer by that same first
          kernel (cast, subtract and transpose in one), and the upsampled planes go into the
          image channels by one transposing copy a run (no ``.contiguous()`` in between).

        Every value is computed by the same float32 operations in the same order as on the
        other path (cast, subtract, divide, the same upsampling kernel on the same layout),
        so the bits are the same (tested on the CPU; ``benchmarks/gpu_ring_check.py`` on CUDA).
        """
        augmenting = codes is not None and codes.any()
        for group, gather, _ in self._plan:
            x = torch.as_tensor(batch[group]).to(self.device, non_blocking=True)
            if augmenting:
                x = augment_tensor(x, codes)
            side = x.shape[-1]
            norm = None if self._norm is None else self._norm[group]
            if side == PATCH_SIDE:
                for first, slot, count, kept in self._stored_runs[group]:
                    run_norm = None if norm is None else (norm[0][:, kept:kept + count], norm[1][:, kept:kept + count])
                    self._cast_normalize(x[:, first:first + count], image[:, slot:slot + count], run_norm)
                continue
            if gather is not None:  # the kept channels, gathered as raw bits (int16 has every kernel)
                x = (x.view(torch.int16).index_select(1, gather).view(torch.uint16) if x.dtype == torch.uint16
                     else x.index_select(1, gather))
            if not (self.resample == "bilinear" and self.planes):
                x = self._normalize_upsample(_to_float(x), group, in_place=True)  # uint16: a new tensor
            else:
                b, c, h, w = x.shape
                planes = torch.empty((1, b * c, h, w), dtype=torch.float32, device=self.device,
                                     memory_format=torch.channels_last)
                self._cast_normalize(x, planes.view(b, c, h, w), norm)
                x = torch._C._nn.upsample_bilinear2d(planes, (PATCH_SIDE, PATCH_SIDE), self.align_corners,
                                                     None).view(b, c, PATCH_SIDE, PATCH_SIDE)
            for first, slot, count in self._runs[group]:
                image[:, slot:slot + count] = x[:, first:first + count]
        return image

    def _normalize_upsample(self, x: torch.Tensor, group: str, in_place: bool) -> torch.Tensor:
        """A float32 group (B, C, h, w) normalised (in place when ``in_place``: ``x`` is not
        the caller's), then upsampled to 120x120."""
        if self._norm is not None:
            # normalising before upsampling is the same affine map on fewer pixels
            mean, std = self._norm[group]
            x = (x.sub_(mean) if in_place else x.sub(mean)).div_(std)
        if x.shape[-1] != PATCH_SIDE or x.shape[-2] != PATCH_SIDE:
            x = _upsample(x, self.resample, self.align_corners, self.planes)
        return x

    def _cast_normalize(self, x: torch.Tensor, out: torch.Tensor,
                        norm: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """``out = (float32(x) - mean) / std`` (or ``float32(x)``) with the cast inside the
        first kernel (CUDA's elementwise kernels read uint16 through dynamic casting); a
        device without that kernel casts first, with the same bits, from then on."""
        if self._cast_in_kernel or x.dtype != torch.uint16:
            try:
                if norm is None:
                    out.copy_(x)
                else:
                    torch.sub(x, norm[0], out=out).div_(norm[1])
                return
            except (RuntimeError, NotImplementedError):
                if x.dtype != torch.uint16:
                    raise
                self._cast_in_kernel = False  # no uint16 kernel on this device: widen first
        out.copy_(_u16_to_float(x))
        if norm is not None:
            out.sub_(norm[0]).div_(norm[1])

    def _check_batch(self, batch: Batch, keys: Sequence[str]) -> None:
        """InvalidArgumentError unless ``batch`` is a dict holding ``keys``: a batch read for
        other bands (no ``"20m"`` for B05) was a bare KeyError from deep in the transform."""
        if not isinstance(batch, Mapping):
            raise InvalidArgumentError(f"a batch is a dict of tensors as BigEarthNetDataset.read_batch returns, "
                                       f"got {type(batch).__name__}")
        missing = [key for key in keys if key not in batch]
        if missing:
            raise InvalidArgumentError(
                f"the batch has no {missing[0]!r} (it has: {', '.join(map(str, batch))}); the bands "
                f"{','.join(self.bands)} need {', '.join(self.groups)}: read the batch with a dataset of these bands")

    def companions(self, batch: Batch, codes: np.ndarray | None = None) -> Batch:
        """What goes with the image: ``"label"`` (B, L) float32 on the device, ``"index"`` (B,)
        int64 left on the CPU and, with a ``mask`` in ``batch``, ``"mask"`` (B, 120, 120) int64
        on the device (row b flipped/rotated by ``codes[b]`` when given)."""
        label = torch.as_tensor(batch["label"])
        if label.device != self.device:  # (a no-op .to costs a CUDA loader's main process ~20 us a batch)
            label = label.to(self.device, non_blocking=True)
        result = {"label": label.to(torch.float32), "index": torch.as_tensor(batch["index"])}
        if "mask" in batch:
            result["mask"] = _mask_to_long(torch.as_tensor(batch["mask"]), self.device, codes)
        return result

    def __call__(self, batch: Batch, out: Batch | None = None) -> Batch:
        """The device batch ``{"image", "label", "index"}`` of a uint16 ``batch``.

        With ``out`` (tensors as :meth:`out_spec`, on ``device``), the result is written
        there and ``out`` is returned: the batch ring's workers fill shared memory this way.

        Raises:
            InvalidArgumentError: ``batch`` lacks a band group these bands need, ``label`` or ``index``.
        """
        self._check_batch(batch, (*self.groups, "label", "index"))
        index = torch.as_tensor(batch["index"])
        codes = None if self.augment == "none" else transform_codes(index, self.seed, self.epoch, self.augment)
        with unfilled_allocations():  # every tensor made here is written whole
            result = {"image": self._image(batch, None if out is None else out["image"], codes),
                      **self.companions(batch, codes)}
        if out is None:
            return result
        for key in ("label", "index", "mask"):
            if key in result:
                out[key].copy_(result[key])
        return out
