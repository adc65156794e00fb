"""Augmentation on the training device: random flips and 90-degree rotations of whole batches.

The TU Berlin defaults for BigEarthNet (ConfigILM's ``BENv2DataModule`` training transforms:
random horizontal and vertical flips, and 90-degree rotations) are the eight symmetries of
the square patch, the dihedral group D4. Each is three bits applied in this order:

* bit 0: flip left-right (last axis), bit 1: flip up-down, bit 2: swap the two axes
  (a transpose; with the flips it gives the rotations by 90 and 270 degrees).

``flip`` draws bits 0 and 1 (four transforms), ``flip-rot90`` all three (all eight).

**Reproducible whatever the worker count:** a patch's transform is a pure function of
``(seed, epoch, store row)``, hashed with SplitMix64, never of a random generator's state,
so the same run gives the same augmented batches with 0, 1 or 12 workers, on the CPU or the
GPU. The image and its reference-map mask get the same transform.

**Where:** on the native-resolution groups, before upsampling (flips and the transpose
commute with upsampling by the integer factors 2 and 6 in every mode, up to rounding in the
last bit), so it moves 4.3x fewer bytes than the 120x120 float image. On the CPU it is fused
with the float conversion (one strided copy a row); on a GPU it is one gather per band group
through a table of source pixels per transform.
"""

from __future__ import annotations

import numpy as np
import torch

from benzarr.errors import InvalidArgumentError

#: Augmentation names -> how many of the three bits are drawn.
AUGMENTATIONS: dict[str, int] = {"none": 0, "flip": 2, "flip-rot90": 3}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 (Steele, Lea, Flood 2014): a well-mixed hash."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def check_augment(name: str) -> str:
    """``name`` if it is an augmentation (``none``, ``flip``, ``flip-rot90``), else InvalidArgumentError."""
    if name not in AUGMENTATIONS:
        raise InvalidArgumentError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}")
    return name


def transform_codes(rows: np.ndarray | torch.Tensor, seed: int, epoch: int, augment: str) -> np.ndarray:
    """(B,) uint8 codes in 0..7 (the bits above) for store ``rows`` (B,) int64."""
    bits = AUGMENTATIONS[check_augment(augment)]
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = splitmix64(splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(epoch & 0xFFFFFFFF))
        hashed = splitmix64(rows ^ key)
    return (hashed >> np.uint64(61)).astype(np.uint8) & np.uint8((1 << bits) - 1)


def apply_code(x: torch.Tensor, code: int) -> torch.Tensor:
    """The transform ``code`` of a tensor (..., H, W), H == W."""
    if code & 1:
        x = x.flip(-1)
    if code & 2:
        x = x.flip(-2)
    if code & 4:
        x = x.transpose(-1, -2)
    return x


def code_view(a: np.ndarray, code: int) -> np.ndarray:
    """The transform ``code`` of an array (..., H, W), H == W, as a strided view (no copy)."""
    if code & 1:
        a = a[..., ::-1]
    if code & 2:
        a = a[..., ::-1, :]
    if code & 4:
        a = a.swapaxes(-1, -2)
    return a


def augment_numpy(x: np.ndarray, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(B, ..., H, W) -> a new ``dtype`` array with row b transformed by ``codes[b]``.

    The augmentation rides on the float conversion the batch needs anyway. A row whose
    transform keeps the inner axis in order (codes 0 and 2) is one strided ``copyto`` that
    also converts the dtype. A row with its inner axis reversed or its axes swapped is first
    converted into a row-sized buffer that stays in cache, then copied through the strided
    view: numpy's same-dtype strided copy is faster than its converting one (about 27
    against 32 µs a 10 m patch here; 60 m planes, 20x20, stay on the one-step copy). The
    values are the same either way.
    """
    out = np.empty(x.shape, dtype=dtype)
    row: np.ndarray | None = None
    for b, code in enumerate(codes.tolist()):
        # an inner flip or a transpose: convert, then move (for 20x20 planes the call costs more)
        if code & 5 and x.dtype != out.dtype and x.shape[-1] >= 60:
            if row is None:
                row = np.empty(x.shape[1:], dtype=dtype)
            np.copyto(row, x[b], casting="unsafe")
            np.copyto(out[b], code_view(row, code))
        else:
            np.copyto(out[b], code_view(x[b], code), casting="unsafe")
    return out


#: (side, device) -> :func:`_source_pixels`'s table.
_SOURCE_PIXELS: dict[tuple[int, str], torch.Tensor] = {}


def _source_pixels(side: int, device: torch.device) -> torch.Tensor:
    """(8, side * side) int64 on ``device``: row ``code`` holds, for each pixel of a
    ``side`` x ``side`` plane transformed by ``code`` (flat, row-major), the flat index of the
    pixel it comes from. Made once per side and device."""
    key = (side, str(device))
    table = _SOURCE_PIXELS.get(key)
    if table is None:
        grid = torch.arange(side * side, dtype=torch.int64).view(side, side)
        table = torch.stack([apply_code(grid, code).reshape(-1) for code in range(8)]).to(device)
        _SOURCE_PIXELS[key] = table
    return table


def augment_tensor(x: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """(B, ..., H, W) on any device, H == W, with row b transformed by ``codes[b]``.

    One gather whatever the codes: each row's pixels are read through its transform's
    source-pixel table (:func:`_source_pixels`), so a batch costs three kernels (the codes'
    upload, the table lookup, the gather), not a gather, transform and scatter for each of
    up to eight transforms. On a GPU the main process launches every kernel, and at 90,000
    patches/s it has 2.8 ms a batch for all of them (issue #13). The values are moved, never
    computed: the result equals :func:`apply_code` row by row, bit for bit.
    """
    if not codes.any():
        return x
    if x.dtype == torch.uint16:  # few uint16 kernels outside the CPU: move the same bits as int16
        return augment_tensor(x.view(torch.int16), codes).view(torch.uint16)
    side = x.shape[-1]
    flat = x.reshape(x.shape[0], -1, side * side)  # (B, planes, H*W)
    return torch.gather(flat, 2, source_index(codes, side, x.device).expand(flat.shape)).view(x.shape)


def source_index(codes: np.ndarray, side: int, device: torch.device) -> torch.Tensor:
    """(B, 1, side * side) int64 on ``device``: for row b, the flat source pixel of each pixel
    of a ``side`` x ``side`` plane transformed by ``codes[b]``; ``torch.gather`` along the
    flattened plane with it (expanded over the planes) applies the transforms."""
    rows = torch.from_numpy(codes.astype(np.int64)).to(device, non_blocking=True)
    return _source_pixels(side, device).index_select(0, rows).unsqueeze(1)
