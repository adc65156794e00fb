"""The random-access PyTorch dataset, the device batch transform and the loader helper.

Workers read compact native-resolution uint16 batches (160,000 bytes a full patch instead
of 691,200 as float32 at 120x120); :class:`BatchTransform` turns them into float images on
the training device (float, band selection, bilinear upsampling, optional normalisation).
See docs/design.md §4.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, get_worker_info

from benzarr.bands import BAND_PRESETS, MODALITIES, PATCH_SIDE, parse_modalities, resolve_bands
from benzarr.bands import CHANNEL_GROUPS as BAND_CHANNEL_GROUPS
from benzarr.bands import band_groups_for
from benzarr.bands import band_location as channel_location
from benzarr.augment import augment_numpy, augment_tensor, check_augment, transform_codes
from benzarr.errors import BenzarrError, InvalidArgumentError
from benzarr.shards import RowReader
from benzarr.store import (
    CHANNEL_ARRAYS,
    NOMENCLATURES,
    REFERENCE_MAP_ARRAY,
    Store,
    is_url,
    open_store,
)

#: Channel groups as stored: group -> (array path, channel names, native side in pixels).
CHANNEL_GROUPS: dict[str, tuple[str, tuple[str, ...], int]] = {
    group: (CHANNEL_ARRAYS[group], names, side) for group, (names, side) in BAND_CHANNEL_GROUPS.items()
}
#: Modalities a dataset can serve: image channels (s2, s1) and the ``mask`` (reference-map).
DATA_MODALITIES = MODALITIES

Sample = dict[str, Any]
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


def _to_float(x: torch.Tensor, codes: np.ndarray | None = None) -> torch.Tensor:
    """A stored group (uint16 reflectance or float32 backscatter) as float32, with row b
    flipped/rotated by ``codes[b]`` (:mod:`benzarr.augment`) when codes are given."""
    if codes is not None and codes.any():
        if x.device.type == "cpu":  # fused with the conversion: one strided copy a row
            return torch.from_numpy(augment_numpy(x.numpy(), codes, np.float32))
        x = augment_tensor(x, codes)
    return _u16_to_float(x) if x.dtype == torch.uint16 else x.to(torch.float32)


#: Resampling modes of the 20 m and 60 m bands to 120x120.
RESAMPLE_MODES = ("bilinear", "nearest", "bicubic")


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


#: numpy -> torch dtypes of batch arrays.
_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {
    np.dtype(np.uint16): torch.uint16, np.dtype(np.float32): torch.float32, np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int64): torch.int64,
}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; in a DataLoader worker it lives in shared memory, so
    sending it to the main process costs no copy (as ``default_collate`` does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class BatchTransform:
    """uint16 native-resolution batch -> float32 (B, C, 120, 120) image on ``device``.

    Per batch: move the needed band groups to ``device``, convert to float32, keep the
    selected channels, with ``mean``/``std`` normalise per band as ``(x - mean) / std``,
    upsample 20 m and 60 m groups to 120x120 with ``F.interpolate(mode=resample,
    align_corners=align_corners)`` (no antialiasing), put the bands in the requested order
    and, with ``augment``, flip and rotate each patch (:mod:`benzarr.augment`).

    Args:
        bands: output band names in output channel order.
        device: where the result lives.
        mean, std: per output band (C,), or None for no normalisation.
        resample: ``bilinear`` (default, as TorchGeo), ``nearest`` (as the official reBEN
            models were trained) or ``bicubic``.
        align_corners: ``F.interpolate``'s convention for bilinear and bicubic: False
            (half-pixel centres, benzarr's and TorchGeo's default) or True (ConfigILM
            0.7.1's ``stack_and_interpolate``, which the official weights saw).
        augment: ``none``, ``flip`` or ``flip-rot90``; a patch's transform is a pure
            function of ``(seed, epoch, store row)`` (call :meth:`set_epoch`).
        seed: the augmentation seed.

    Input: a dict as returned by :meth:`BigEarthNetDataset.__getitems__` (uint16 groups,
    ``label`` (B, L) uint8, ``index`` (B,) int64).

    Output: ``{"image": (B, C, 120, 120) float32, "label": (B, L) float32}`` on ``device``
    and ``"index"``: (B,) int64 store rows, left on the CPU (no device sync to read them);
    with a ``mask`` in the input, ``"mask"``: (B, 120, 120) int64 CLC2018 codes on ``device``.
    S1 channels (``VV``, ``VH``, float32 dB) pass through unchanged apart from normalisation.
    """

    def __init__(self, bands: Sequence[str], device: str | torch.device = "cpu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 resample: str = "bilinear", align_corners: bool = False, augment: str = "none",
                 seed: int = 0) -> None:
        if resample not in RESAMPLE_MODES:
            raise InvalidArgumentError(f"unknown resampling {resample!r}: choose one of {', '.join(RESAMPLE_MODES)}")
        self.bands = resolve_bands(list(bands), ("s2", "s1"))
        self.device = torch.device(device)
        self.resample, self.align_corners = resample, bool(align_corners)
        self.planes = True  # CUDA bilinear on the B*C planes (False: the NCHW kernel; an A/B switch)
        self.fused = True  # off the CPU, fewer passes over memory (False: session 6's passes; an A/B switch)
        self._cast_in_kernel = True  # uint16 read by the first arithmetic kernel (until a device refuses)
        self.augment, self.seed, self.epoch = check_augment(augment), int(seed), 0
        self.groups = band_groups_for(self.bands)
        # per group: channels to keep (None: all, in order) and their output channels
        self._plan: list[tuple[str, torch.Tensor | None, list[int]]] = []
        for group in self.groups:
            names = CHANNEL_GROUPS[group][1]
            keep = [c for c, name in enumerate(names) if name in self.bands]
            gather = None if len(keep) == len(names) else torch.tensor(keep, device=self.device)
            self._plan.append((group, gather, [self.bands.index(names[c]) for c in keep]))
        # per group: its copies into the image, one per run of consecutive output channels
        self._runs = {group: _runs(slots) for group, _, slots in self._plan}
        # the same runs counted in the group's stored channels (consecutive in both), for
        # copying a group that needs no upsampling straight from its stored batch
        # (first stored channel, first output channel, count, first kept channel)
        self._stored_runs: dict[str, tuple[tuple[int, int, int, int], ...]] = {}
        for group, _, slots in self._plan:
            names = CHANNEL_GROUPS[group][1]
            keep = [c for c, name in enumerate(names) if name in self.bands]
            self._stored_runs[group] = tuple((first, slot, count, keep.index(first))
                                             for first, slot, count in _runs(slots, keep))
        if (mean is None) != (std is None):
            raise InvalidArgumentError("give both mean and std, or neither")
        self._norm: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if mean is not None and std is not None:
            if len(mean) != len(self.bands) or len(std) != len(self.bands):
                raise InvalidArgumentError(f"mean and std need one value per band ({len(self.bands)})")
            self._norm = {}
            for group, _, slots in self._plan:
                m = torch.tensor([mean[k] for k in slots], dtype=torch.float32, device=self.device)
                s = torch.tensor([std[k] for k in slots], dtype=torch.float32, device=self.device)
                self._norm[group] = (m.view(1, -1, 1, 1), s.view(1, -1, 1, 1))

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation to draw (no effect without ``augment``)."""
        self.epoch = int(epoch)

    def out_spec(self, batch_spec: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """What one patch of this transform's output holds, for input ``batch_spec``
        (:meth:`BigEarthNetDataset.batch_spec`): key -> (per-patch shape, numpy dtype)."""
        spec = {"image": ((len(self.bands), PATCH_SIDE, PATCH_SIDE), np.dtype(np.float32)),
                "label": (batch_spec["label"][0], np.dtype(np.float32)),
                "index": ((), np.dtype(np.int64))}
        if "mask" in batch_spec:
            spec["mask"] = (batch_spec["mask"][0], np.dtype(np.int64))
        return spec

    def image(self, batch: Batch, out: torch.Tensor | None = None, codes: np.ndarray | None = None) -> torch.Tensor:
        """The (B, C, 120, 120) float32 image of ``batch`` on the device (written into ``out``
        when given; row b flipped/rotated by ``codes[b]`` when given).

        On a CPU with several intra-op threads, the rows are split into one slice per thread,
        each transformed on one thread: all cores work, and every patch is computed exactly
        as a single-threaded loader worker computes it (see :func:`_upsample`), so the bits
        do not depend on the thread or worker count."""
        size = int(torch.as_tensor(batch["index"]).shape[0])
        shape = (size, len(self.bands), PATCH_SIDE, PATCH_SIDE)
        image = torch.empty(shape, dtype=torch.float32, device=self.device) if out is None else out
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or threads == 1 or size < 2:
            return self._image_rows(batch, image, codes)
        bounds = np.linspace(0, size, min(threads, size) + 1).astype(int).tolist()
        slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        groups = [group for group, _, _ in self._plan]
        torch.set_num_threads(1)
        try:
            jobs = [_row_pool(threads).submit(self._image_rows, {g: batch[g][part] for g in groups}, image[part],
                                              None if codes is None else codes[part]) for part in slices]
            for job in jobs:
                job.result()
        finally:
            torch.set_num_threads(threads)
        return image

    def _image_rows(self, batch: Batch, image: torch.Tensor, codes: np.ndarray | None) -> torch.Tensor:
        """:meth:`image` of the rows of ``batch`` (band groups only) into ``image``."""
        if self.fused and self.device.type != "cpu":
            return self._image_rows_fused(batch, image, codes)
        for group, gather, _ in self._plan:
            x = _to_float(torch.as_tensor(batch[group]).to(self.device, non_blocking=True), codes)
            if gather is not None:
                x = x.index_select(1, gather)
            if self._norm is not None:
                # normalising before upsampling is the same affine map on fewer pixels
                mean, std = self._norm[group]
                x = x.sub_(mean).div_(std)
            if x.shape[-1] != PATCH_SIDE or x.shape[-2] != PATCH_SIDE:
                x = _upsample(x, self.resample, self.align_corners, self.planes)
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
                x = _to_float(x)
                if norm is not None:
                    x = x.sub_(norm[0]).div_(norm[1])
                x = _upsample(x, self.resample, self.align_corners, self.planes)
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

    def __call__(self, batch: Batch, out: Batch | None = None) -> Batch:
        """The device batch ``{"image", "label", "index"}`` of a uint16 ``batch``.

        With ``out`` (tensors as :meth:`out_spec`, on ``device``), the result is written
        there and ``out`` is returned: the batch ring's workers fill shared memory this way.
        """
        label = torch.as_tensor(batch["label"]).to(self.device, non_blocking=True).to(torch.float32)
        index = torch.as_tensor(batch["index"])
        codes = None if self.augment == "none" else transform_codes(index, self.seed, self.epoch, self.augment)
        result = {"image": self.image(batch, None if out is None else out["image"], codes), "label": label,
                  "index": index}
        if "mask" in batch:
            result["mask"] = _mask_to_long(torch.as_tensor(batch["mask"]), self.device, codes)
        if out is None:
            return result
        for key in ("label", "index", "mask"):
            if key in result:
                out[key].copy_(result[key])
        return out


class BigEarthNetDataset(Dataset):
    """BigEarthNet Sentinel-2 (and Sentinel-1, reference-map) patches from a benzarr store, by random access.

    The `BigEarthNet <https://bigearth.net>`__ dataset is a large-scale benchmark archive for
    multi-label land-cover classification of Sentinel-2 image patches.

    Dataset features:

    * 590,326 patches of 1.2 km x 1.2 km from 125 Sentinel-2 L2A tiles over 10 European
      countries (Austria, Belgium, Finland, Ireland, Kosovo, Lithuania, Luxembourg,
      Portugal, Serbia, Switzerland), June 2017 to May 2018
    * 12 spectral bands: 4 at 10 m (120x120 px), 6 at 20 m (60x60 px), 2 at 60 m (20x20 px);
      served upsampled to 120x120 (bilinear, half-pixel centres)
    * multi-label annotation from CORINE Land Cover 2018: 43 level-3 classes (``clc43``) or
      the 19-class nomenclature of Sumbul et al. 2021 (``clc19``)
    * the usual exclusion of 70,987 cloudy/shadowed and snowy patches leaves 519,284
    * BigEarthNet v2.0 (reBEN, 2024): 549,488 Sentinel-1/Sentinel-2 pairs (480,038 clean)
      with pixel-level CLC2018 reference maps and new train/validation/test splits; S1
      ``VV``/``VH`` backscatter (float32, dB, 120x120) and the reference map (``mask``) are
      served when the store holds them (``modalities``)

    Dataset format:

    * one Zarr v3 store written by ``benzarr ingest`` (docs/design.md §2): band arrays
      ``s2/10m`` (N, 4, 120, 120), ``s2/20m`` (N, 6, 60, 60), ``s2/60m`` (N, 2, 20, 20),
      uint16 surface reflectance x 10,000, sharded along N with one chunk per patch,
      uncompressed or Blosc lz4/zstd; multi-hot ``labels/clc43`` (N, 43) and
      ``labels/clc19`` (N, 19) uint8; splits ``splits/<name>`` (N,) int8
    * band order of every image: B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12
      (``bands="all"``); ``bands="rgb"`` is B04, B03, B02; a list keeps its own order

    Samples (``ds[i]``), as TorchGeo's BigEarthNet:

    * ``image``: float32 (C, 120, 120), reflectance x 10,000 (or ``(x - mean) / std`` per
      band with ``normalize=True``, using the store's band statistics)
    * ``label``: float32 (L,) multi-hot, L = 43 or 19
    * ``index``: int, the patch's store row
    * ``mask`` (with ``"reference-map"`` in ``modalities``): int64 (120, 120) CLC2018 code
      per pixel (e.g. 311 broad-leaved forest; :data:`benzarr.bigearthnet.CLC43_CODES`)

    Batches (:meth:`__getitems__`, for :func:`make_loader`) stay uint16 at native
    resolution and are converted on the training device by :class:`BatchTransform`.

    Classes (``clc19``): Urban fabric; Industrial or commercial units; Arable land;
    Permanent crops; Pastures; Complex cultivation patterns; Land principally occupied by
    agriculture, with significant areas of natural vegetation; Agro-forestry areas;
    Broad-leaved forest; Coniferous forest; Mixed forest; Natural grassland and sparsely
    vegetated areas; Moors, heathland and sclerophyllous vegetation; Transitional woodland,
    shrub; Beaches, dunes, sands; Inland wetlands; Coastal wetlands; Inland waters; Marine
    waters. The 43 ``clc43`` classes are CORINE level 3 in official order
    (:data:`benzarr.bigearthnet.CLC43`; ``ds.classes`` lists the selected set).

    If you use this dataset in your research, please cite the following papers:

    * G. Sumbul, M. Charfuelan, B. Demir, V. Markl, "BigEarthNet: A Large-Scale Benchmark
      Archive for Remote Sensing Image Understanding", IEEE International Geoscience and
      Remote Sensing Symposium (IGARSS), pp. 5901-5904, 2019.
      https://doi.org/10.1109/IGARSS.2019.8900532
    * G. Sumbul, A. de Wall, T. Kreuziger, F. Marcelino, H. Costa, P. Benevides, M. Caetano,
      B. Demir, V. Markl, "BigEarthNet-MM: A Large Scale Multi-Modal Multi-Label Benchmark
      Archive for Remote Sensing Image Classification and Retrieval", IEEE Geoscience and
      Remote Sensing Magazine, 9(3), pp. 174-180, 2021 (the 19-class nomenclature).
      https://doi.org/10.1109/MGRS.2021.3089174

    Args:
        store: path of a local store, or a URL (``s3://bucket/store.zarr``: band arrays read
            with concurrent range requests by :mod:`benzarr.objstore` when obstore is
            installed, else through zarr-python; ``storage_options`` as fsspec's).
        split: a stored split name (``benzarr split``); None serves every valid patch.
        subset: ``train``, ``val`` or ``test`` of ``split``; None: every row the split keeps.
        bands: ``"all"`` (every channel of the chosen modalities: 12 S2 bands, then VV, VH),
            ``"rgb"`` or a list of band names (S2 bands and/or ``VV``, ``VH``).
        labels: ``"clc43"`` or ``"clc19"``.
        transform: called on each sample dict from ``ds[i]``; in :func:`make_loader`, on
            each device batch dict (so it must accept batched tensors).
        normalize: standardise each band with the store's statistics.
        storage_options: fsspec options for URLs (endpoint, credentials).
        modalities: any of ``s2``, ``s1`` (image channels) and ``reference-map`` (adds
            ``mask``); each must be in the store. S1 channels are normalised with the store's
            own S1 statistics.
        verify_checksums: check the crc32c of every chunk read (store format 2; on by
            default). Turn it off to read at full speed a store already checked with
            ``benzarr verify``; shard indexes are still checked. Format 1 stores have no
            chunk checksums. Stores read through zarr-python (URLs) are always checked.
        resample: how 20 m and 60 m bands reach 120x120: ``bilinear`` (default),
            ``nearest`` (as the official reBEN models were trained) or ``bicubic``.
        align_corners: bilinear/bicubic convention: False (half-pixel centres, as TorchGeo)
            or True (as ConfigILM 0.7.1, whose published weights saw those inputs).
        augment: ``none``, ``flip`` or ``flip-rot90``: random flips (and 90-degree
            rotations) of the image and mask, applied by :func:`make_loader` on the device,
            drawn as a pure function of (seed, epoch, store row); ``ds[i]`` is never augmented.

    Normalisation (``normalize=True``) uses the mean and std of the split's **train** subset
    at this resampling mode when ``split`` is given (:func:`benzarr.stats.split_band_stats`,
    computed once and cached in the store), else the whole store's ingest statistics.

    Raises:
        StoreNotFoundError, StoreIncompleteError, StoreVersionError: from opening the store.
        SplitNotFoundError: ``split`` is not in the store (the message lists the names).
        InvalidArgumentError: unknown band, label set or subset.
    """

    def __init__(
        self,
        store: str | Path,
        split: str | None = None,
        subset: str | None = None,
        bands: str | Sequence[str] = "all",
        labels: str = "clc43",
        transform: Callable[[Sample], Sample] | None = None,
        normalize: bool = False,
        storage_options: dict[str, Any] | None = None,
        modalities: Sequence[str] = ("s2",),
        verify_checksums: bool = True,
        resample: str = "bilinear",
        align_corners: bool = False,
        augment: str = "none",
    ) -> None:
        if labels not in NOMENCLATURES:
            raise InvalidArgumentError(f"unknown label set {labels!r}: choose one of {', '.join(NOMENCLATURES)}")
        self.modalities: tuple[str, ...] = parse_modalities(modalities)
        image_modalities = [m for m in self.modalities if m != "reference-map"] or ["s2"]
        self.bands: tuple[str, ...] = resolve_bands(bands, image_modalities)
        self.groups: tuple[str, ...] = band_groups_for(self.bands)
        self.path = str(store)
        self.storage_options = storage_options
        self.split = split
        self.subset = subset
        self.label_set = labels
        self.transform = transform
        self.normalize = normalize
        self.verify_checksums = verify_checksums
        if resample not in RESAMPLE_MODES:
            raise InvalidArgumentError(f"unknown resampling {resample!r}: choose one of {', '.join(RESAMPLE_MODES)}")
        self.resample, self.align_corners, self.augment = resample, bool(align_corners), check_augment(augment)
        opened = open_store(self.path, storage_options=storage_options)
        absent = [m for m in self.modalities if m not in opened.modalities]
        if absent:
            raise InvalidArgumentError(
                f"{self.path}: the store has no {absent[0]} data (it has: {', '.join(opened.modalities) or 'labels only'})"
            )
        self.rows: np.ndarray = opened.subset_rows(split, subset)
        self.classes: list[str] = opened.class_names(labels)
        self._labels = np.ascontiguousarray(opened.labels(labels)[self.rows])
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.stats_source: str | None = None
        if normalize:
            stats = self._normalisation_stats(opened)
            missing = [b for b in self.bands if (stats.get(b) or {}).get("mean") is None]
            if missing:
                raise InvalidArgumentError(f"{self.path}: no band statistics for {', '.join(missing)}; cannot normalise")
            self.mean = [float(stats[b]["mean"]) for b in self.bands]
            # a constant band has std 0: leave it centred rather than dividing by zero
            self.std = [float(stats[b]["std"]) or 1.0 for b in self.bands]
        self._store: Store | None = opened
        self._readers: dict[str, RowReader] | None = None
        self._names: np.ndarray | None = None
        self._cpu_transform = BatchTransform(self.bands, "cpu", self.mean, self.std, resample, self.align_corners)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float], source: str) -> None:
        """Normalise with these per-band values (one each per entry of ``bands``, in the
        bands' own units) instead of the store's: how ``benzarr evaluate`` reads any store
        with the statistics a run trained with. A std of 0 is taken as 1 (a constant band)."""
        if len(mean) != len(self.bands) or len(std) != len(self.bands):
            raise InvalidArgumentError(f"mean and std need one value per band ({len(self.bands)}), "
                                       f"got {len(mean)} and {len(std)}")
        self.normalize = True
        self.mean = [float(m) for m in mean]
        self.std = [float(s) or 1.0 for s in std]
        self.stats_source = source
        self._cpu_transform = BatchTransform(self.bands, "cpu", self.mean, self.std, self.resample, self.align_corners)

    def _normalisation_stats(self, opened: Store) -> dict[str, dict[str, float]]:
        """Band -> {mean, std}: the split's train subset at this resampling mode, else the store's."""
        from benzarr.stats import mode_key, split_band_stats

        if self.split is not None and opened.subset_rows(self.split, "train").size:
            self.stats_source = f"split {self.split} train, {mode_key(self.resample, self.align_corners)}"
            return split_band_stats(self.path, self.split, self.resample, self.align_corners)
        self.stats_source = "store"
        return {**opened.band_stats("s2"), **opened.band_stats("s1")}

    # -- process-local state: never pickled into workers --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_readers"] = None
        state["_names"] = None
        return state

    def _opened(self) -> Store:
        if self._store is None:
            self._store = open_store(self.path, storage_options=self.storage_options)
        return self._store

    def _row_name(self, row: int) -> str:
        """Patch name of store row ``row`` (read once, only to word an error)."""
        if self._names is None:
            self._names = self._opened().patch_names()
        return str(self._names[row])

    @property
    def readers(self) -> dict[str, RowReader]:
        """Band group -> row reader (the memory-mapped shard reader where it applies)."""
        if self._readers is None:
            store = self._opened()
            arrays = {group: CHANNEL_GROUPS[group][0] for group in self.groups}
            if "reference-map" in self.modalities:
                arrays["mask"] = REFERENCE_MAP_ARRAY
            self._readers = {key: store.row_reader(path, self._row_name, self.verify_checksums)
                             for key, path in arrays.items()}
        return self._readers

    @property
    def fast(self) -> bool:
        """True when every needed band group is read by the memory-mapped shard reader."""
        from benzarr.shards import ShardReader

        return all(isinstance(r, ShardReader) for r in self.readers.values())

    # -- access ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.rows.size)

    def _positions(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if positions.size and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} patches")
        return np.where(positions < 0, positions + n, positions)

    def batch_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """What one patch of a :meth:`__getitems__` batch holds: key -> (per-patch shape, numpy dtype).

        The keys, in order: the band groups the selection needs, ``mask`` (with
        ``reference-map``), ``label`` and ``index``; a batch of B patches is (B, *shape).
        """
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            key: (tuple(reader.shape[1:]), np.dtype(reader.dtype)) for key, reader in self.readers.items()
        }
        spec["label"] = ((int(self._labels.shape[1]),), np.dtype(np.uint8))
        spec["index"] = ((), np.dtype(np.int64))
        return spec

    def read_into(self, indices: Sequence[int] | np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Decode the batch of ``indices`` into ``out`` (as :meth:`batch_spec`, leading axis
        ``len(indices)``, C-contiguous), with no allocation: the batch ring's workers write
        straight into shared memory this way."""
        positions = self._positions(indices)
        rows = self.rows[positions]
        # object-store readers send every array's requests before any is decoded: one round
        # trip a batch, not one per band array
        pending = []
        try:
            for key, reader in self.readers.items():
                start = getattr(reader, "start_read", None)
                if start is None:
                    reader.read(rows, out=out[key])
                else:
                    pending.append(start(rows, out=out[key]))
            while pending:
                pending[0].result()
                pending.pop(0)
        except BaseException:
            for read in pending:
                read.cancel()
            raise
        np.take(self._labels, positions, axis=0, out=out["label"])
        out["index"][:] = rows

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """One batch at native resolution, read shard by shard.

        Args:
            indices: dataset indices (0 <= i < len(self)), any order, repeats allowed.

        Returns:
            A dict of CPU torch tensors, row ``b`` for ``indices[b]``; only the band groups
            the selected bands need, with all channels of each group (the device picks):

            * ``"10m"``: (B, 4, 120, 120) uint16, B02, B03, B04, B08
            * ``"20m"``: (B, 6, 60, 60) uint16, B05, B06, B07, B8A, B11, B12
            * ``"60m"``: (B, 2, 20, 20) uint16, B01, B09
            * ``"s1"``: (B, 2, 120, 120) float32, VV, VH (dB), when S1 channels are selected
            * ``"mask"``: (B, 120, 120) uint16 CLC2018 codes, with ``reference-map``
            * ``"label"``: (B, L) uint8 multi-hot
            * ``"index"``: (B,) int64 store rows
        """
        size = int(np.asarray(indices).size)
        batch: Batch = {key: _batch_tensor((size, *shape), _TORCH_DTYPES[dtype])
                        for key, (shape, dtype) in self.batch_spec().items()}
        self.read_into(indices, {key: tensor.numpy() for key, tensor in batch.items()})  # decoded in place
        return batch

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: ``{"image": (C, 120, 120) float32, "label": (L,) float32, "index": int}``."""
        out = self._cpu_transform(self.__getitems__([index]))
        sample: Sample = {"image": out["image"][0], "label": out["label"][0], "index": int(out["index"][0])}
        if "mask" in out:
            sample["mask"] = out["mask"][0]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def batch_transform(self, device: str | torch.device = "cpu", seed: int = 0) -> BatchTransform:
        """The :class:`BatchTransform` of this dataset's bands, normalisation, resampling and
        augmentation (drawn with ``seed``) on ``device``."""
        return BatchTransform(self.bands, device, self.mean, self.std, self.resample, self.align_corners,
                              self.augment, seed)

    def plot(self, sample: Sample, show_titles: bool = True, suptitle: str | None = None, *,
             panels: Sequence[str] | None = None, axes: Sequence[Any] | None = None, top: int = 5,
             panel_titles: bool = True) -> Any:
        """Plot a sample as a row of panels, as TorchGeo's datasets do; ``benzarr show`` draws
        each of its rows with this method.

        Panels (:func:`benzarr.show.default_panels`): true colour (B04, B03, B02), false
        colour (B08, B04, B03) and S1 VV/VH when their channels are selected, else the first
        channel in grey; the reference map in CORINE colours when the sample has a ``mask``;
        the top predictions when it has a ``prediction`` ((L,) scores in 0..1, true positives
        green, false positives red). Each channel is stretched between its 2nd and 98th
        percentiles, so native, dB and normalised samples all show.

        Args:
            sample: ``ds[i]``, optionally with ``prediction`` added.
            show_titles: title the first panel with the sample's label names.
            suptitle: the figure's title.
            panels: panel kinds to draw instead of the default (``rgb``, ``false-color``,
                ``swir``, ``VV,VH``, ``band:NAME``, ``reference map``, ``predictions``).
            axes: matplotlib Axes to draw into, one per panel (default: a new figure).
            top: predictions listed.
            panel_titles: head each panel with its kind.

        Returns:
            the matplotlib Figure.
        """
        from benzarr.show import draw_sample

        def host(key: str) -> np.ndarray | None:
            value = sample.get(key)
            return None if value is None else np.asarray(torch.as_tensor(value).detach().cpu().float())

        label = host("label")
        title = None
        if show_titles:
            title = "Labels: " + ", ".join(self.classes[i] for i in np.flatnonzero(label > 0.5))
        figure = draw_sample(host("image"), self.bands, label, self.classes, mask=host("mask"),
                             prediction=host("prediction"), panels=panels, axes=axes, title=title,
                             panel_titles=panel_titles, top=top)
        if suptitle is not None:
            figure.suptitle(suptitle)
            if axes is None:
                figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        where = f"split={self.split!r}, subset={self.subset!r}, " if self.split else ""
        return (f"BigEarthNetDataset({self.path!r}, {where}{len(self)} patches, bands={list(self.bands)}, "
                f"labels={self.label_set!r}, normalize={self.normalize})")


def _hand_over(batch: Batch, done: Any, device: torch.device) -> Batch:
    """A batch made on a side stream, for use on the current stream: the current stream waits
    for ``done`` (a CUDA event), and the allocator keeps each tensor until the current
    stream's work on it is finished."""
    consumer = torch.cuda.current_stream(device)
    consumer.wait_event(done)
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(consumer)
    return batch


def collate_batch(batch: Batch) -> Batch:
    """The DataLoader's ``collate_fn``: ``__getitems__`` already returns a whole batch."""
    return batch


class ResumableBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose next pass can start part-way: ``skip`` batches of the next
    ``__iter__`` are left out (then ``skip`` is 0 again), so a resumed epoch decodes only
    the batches it still needs."""

    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        batches = super().__iter__()
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


class DeviceLoader:
    """Iterable of device batches ``{"image", "label", "index"}`` (see :class:`BatchTransform`).

    Two engines feed it (:func:`make_loader` picks): the batch ring
    (:class:`benzarr.ring.RingLoader`, local stores with workers) or a ``DataLoader``
    (no workers, or a store behind a URL).

    Attributes:
        loader: the engine (yields uint16 batches, or model-ready ones when ``ready``).
        sampler: its ``DistributedSampler`` (shuffle with ``seed + epoch``).
        transform: the :class:`BatchTransform` run here, or None when the engine's workers
            run it already (the ring on the CPU).
        overlap: on CUDA, transform batch k+1 on a side stream before handing out batch k
            (default True), so the transform's kernels fill the gaps of the training step's
            instead of queueing behind them; False runs it on the consumer's stream as each
            batch is handed out. The batches are the same bits either way.
    """

    def __init__(self, dataset: BigEarthNetDataset, loader: Any, sampler: DistributedSampler,
                 transform: BatchTransform | None, batch_sampler: ResumableBatchSampler | None = None) -> None:
        self.dataset = dataset
        self.loader = loader
        self.sampler = sampler
        self.transform = transform
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.served = 0  # batches of ``epoch`` handed out so far
        self.overlap = True
        self._side_stream: Any = None  # created on the first overlapped iteration

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: ``{"epoch", "served"}`` (batches of that epoch handed out).

        Saved with a mid-epoch checkpoint, it lets :meth:`load_state_dict` serve exactly the
        batches of the epoch that were not yet served (the order is a function of
        (seed, epoch), so "the rest" is well defined).
        """
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``: the next iteration serves epoch ``state["epoch"]`` from batch
        ``state["served"]`` on (the skipped batches are never decoded); later epochs are whole.

        Raises:
            InvalidArgumentError: ``served`` is negative or beyond the epoch's batches.
        """
        epoch, served = int(state["epoch"]), int(state["served"])
        if served < 0 or served > len(self):
            raise InvalidArgumentError(f"loader state: {served} batches served, but an epoch has {len(self)}")
        self.set_epoch(epoch)
        if self.batch_sampler is None:
            raise InvalidArgumentError("this loader cannot resume part-way through an epoch")
        self.batch_sampler.skip = served
        self.served = served

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``: the order is a function of (seed, epoch) only."""
        self.epoch, self.served = int(epoch), 0
        if self.batch_sampler is not None:
            self.batch_sampler.skip = 0
        self.sampler.set_epoch(epoch)
        if self.transform is not None:
            self.transform.set_epoch(epoch)  # the augmentation draws depend on it
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def _transformed_ahead(self, transform: BatchTransform) -> Iterator[Batch]:
        """Each batch fetched and transformed one batch ahead of the consumer; on CUDA on a side
        stream. Why: on the consumer's stream the transform's kernels (1.7 ms of an H200 for a
        256-patch batch, before the upsampling change of session 6) queue behind the training
        step's and add to every step; on a side stream, issued while the GPU is still busy
        with the previous step, they run in that step's gaps. The engine's copy to the GPU is
        awaited by the side stream (the ring hands its batches to the stream current at
        ``next``). :meth:`__iter__` uses it on CUDA only; elsewhere it is the same batches, in
        the same order, one fetch earlier."""
        device = transform.device
        cuda = device.type == "cuda"
        if cuda and self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=device)
        side = self._side_stream

        def on_side() -> Any:
            return torch.cuda.stream(side) if cuda else contextlib.nullcontext()

        batches = iter(self.loader)
        ahead: tuple[Batch, Any] | None = None
        while True:
            with on_side():
                batch = next(batches, None)
                if batch is None:
                    break
                out = transform(batch)
                done = None
                if cuda:
                    done = torch.cuda.Event()
                    done.record(side)
            if ahead is not None:
                yield _hand_over(*ahead, device) if cuda else ahead[0]
            ahead = (out, done)
        if ahead is not None:
            yield _hand_over(*ahead, device) if cuda else ahead[0]

    def close(self) -> None:
        """Stop the workers and release the ring's memory (also done when the loader is collected)."""
        if hasattr(self.loader, "close"):
            self.loader.close()

    def __enter__(self) -> "DeviceLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        user = self.dataset.transform
        transform = self.transform
        if transform is None:
            batches: Iterator[Batch] = iter(self.loader)
        elif self.overlap and transform.device.type == "cuda":
            batches = self._transformed_ahead(transform)
        else:
            batches = (transform(batch) for batch in self.loader)
        try:
            for out in batches:
                self.served += 1
                yield user(out) if user is not None else out
        except BenzarrError as exc:
            # torch re-raises a worker's error with the worker's traceback in the message;
            # keep one line (the error benzarr raised) so the CLI prints it as one line.
            text = str(exc)
            if "DataLoader worker" in text:
                marker = f"{type(exc).__module__}.{type(exc).__name__}: "
                text = text.rsplit(marker, 1)[-1].strip()
                raise type(exc)(text) from None
            raise


def make_loader(
    ds: BigEarthNetDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    device: str | torch.device,
    distributed: bool = False,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    engine: str = "auto",
    timeout: float = 0,
) -> DeviceLoader:
    """Batches of ``ds`` ready on ``device``.

    With workers on a local store, the batch ring (:mod:`benzarr.ring`) feeds the batches:
    forked workers decode into fixed shared-memory slots; on CUDA the slots are page-locked
    and copied asynchronously, then converted on the GPU (:class:`BatchTransform`); on the
    CPU the workers run the conversion too, so model-ready delivery scales with them.
    Without workers, or for a store behind a URL, a ``DataLoader`` does (uint16 batches
    converted here). Then ``ds.transform``, if any, runs on each device batch.

    The order is a pure function of ``(seed, epoch)`` (call ``set_epoch`` before each epoch
    to reshuffle): the same seed gives the same batches, bit for bit, whatever
    ``num_workers`` and engine. With ``distributed=True`` each rank of the initialised
    ``torch.distributed`` process group gets its ``DistributedSampler`` share
    (``ceil(len(ds) / world)`` patches; the last few repeat when ``len(ds)`` does not
    divide, as ``DistributedSampler`` does).

    Args:
        ds: the dataset.
        batch_size: patches per batch.
        shuffle: random order (else store-row order).
        num_workers: worker processes (0: read in this process).
        seed: shuffling seed.
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        distributed: shard by torch.distributed rank and world size.
        drop_last: drop the last incomplete batch.
        prefetch_factor: batches each worker reads ahead (default 2).
        engine: ``"auto"`` (the ring where it applies), ``"ring"`` or ``"dataloader"``.
        timeout: with workers, seconds to wait for a batch before raising (a worker stuck on
            a hung file system); 0 waits for ever, as ``DataLoader``'s default.

    Raises:
        InvalidArgumentError: bad batch size, worker count or engine, ``distributed``
            without an initialised process group, or ``engine="ring"`` where it cannot run.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InvalidArgumentError(f"workers must be 0 or more, got {num_workers}")
    if timeout < 0:
        raise InvalidArgumentError(f"timeout must be 0 (wait for ever) or positive seconds, got {timeout}")
    if engine not in ("auto", "ring", "dataloader"):
        raise InvalidArgumentError(f"unknown loader engine {engine!r}: choose auto, ring or dataloader")
    world, rank = _world_and_rank(distributed)
    device = torch.device(device)
    # DistributedSampler with one replica is a seeded (seed + epoch) shuffler with set_epoch
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    batches = ResumableBatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    ring_possible = num_workers > 0 and not is_url(ds.path) and ds.fast
    if engine == "ring" and not ring_possible:
        raise InvalidArgumentError("the batch ring needs workers and a local store read by the shard reader")
    if engine != "dataloader" and ring_possible:
        from benzarr.ring import RingLoader

        transform: BatchTransform | None = ds.batch_transform(device, seed)
        in_workers = transform if device.type == "cpu" else None
        ring = RingLoader(ds, batches, num_workers, transform=in_workers, device=device,
                          prefetch_factor=prefetch_factor or 2, timeout=timeout)
        return DeviceLoader(ds, ring, sampler, None if in_workers is not None else transform, batches)
    loader = _dataloader(ds, batches, num_workers, prefetch_factor, device, seed, timeout)
    return DeviceLoader(ds, loader, sampler, ds.batch_transform(device, seed), batches)


def _world_and_rank(distributed: bool) -> tuple[int, int]:
    """(world size, rank) of the initialised process group, or (1, 0) when not ``distributed``."""
    if not distributed:
        return 1, 0
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidArgumentError("distributed=True needs torch.distributed.init_process_group() first")
    return dist.get_world_size(), dist.get_rank()


def _dataloader(ds: BigEarthNetDataset, batches: ResumableBatchSampler, num_workers: int,
                prefetch_factor: int | None, device: torch.device, seed: int, timeout: float = 0) -> DataLoader:
    """:func:`make_loader`'s ``DataLoader`` engine: uint16 batches of ``batches``, pinned for CUDA."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["timeout"] = timeout
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if is_url(ds.path):
            # fsspec's event loop and sockets do not survive fork: start workers fresh
            kwargs["multiprocessing_context"] = "spawn"
    loader = DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        # its own generator: each epoch's worker base seed is not drawn from torch's global
        # RNG, so a run resumed mid-epoch draws the same random numbers (dropout) as an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return loader


__all__ = [
    "BAND_PRESETS",
    "BatchTransform",
    "BigEarthNetDataset",
    "DeviceLoader",
    "ResumableBatchSampler",
    "band_groups_for",
    "channel_location",
    "collate_batch",
    "make_loader",
    "parse_modalities",
    "resolve_bands",
]
