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
with the float conversion (one strided copy a row); on a GPU it is one gather, transform and
scatter per distinct transform in the batch (at most eight).
"""

from __future__ import annotations

import numpy as np
import torch

from benzarr.errors import InvalidArgumentError

#: Augmentation names -> how many of the three bits are drawn.
AUGMENTATIONS: dict[str, int] = {"none": 0, "flip": 2, "flip-rot90": 3}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
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
        key = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(epoch & 0xFFFFFFFF))
        hashed = _splitmix64(rows ^ key)
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


def augment_tensor(x: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """(B, ..., H, W) on any device with row b transformed by ``codes[b]``: one gather,
    transform and scatter per distinct code (at most eight)."""
    if not codes.any():
        return x
    if x.dtype == torch.uint16:  # few uint16 kernels outside the CPU: move the same bits as int16
        return augment_tensor(x.view(torch.int16), codes).view(torch.uint16)
    out = torch.empty_like(x)
    for code in np.unique(codes).tolist():
        where = np.flatnonzero(codes == code)
        if where.size == codes.size:  # the whole batch drew one transform
            return apply_code(x, code).contiguous()
        index = torch.from_numpy(where).to(x.device, non_blocking=True)
        out.index_copy_(0, index, apply_code(x.index_select(0, index), code))
    return out
