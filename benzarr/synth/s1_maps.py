"""Sentinel-1 backscatter and reference maps, painted by the same regions as the S2 pixels.

So every modality carries the label signal: VV/VH per class in dB with gamma speckle, and
the CORINE 2018 code of each region's class.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from benzarr.bigearthnet import CLC43_CODES
from benzarr.synth.pixels import _CLASS_LOOK, _SIGNATURE_SEED, _smooth

#: Equivalent number of looks of the synthetic speckle (Sentinel-1 IW GRDH: about 4.4).
S1_LOOKS = 4.4

# Mean backscatter prototypes in dB, (VV, VH), per look group of _CLASS_LOOK: rough
# surfaces and volume scatterers bright, smooth water dark, VH some 6-8 dB below VV.
_S1_PROTOTYPES: dict[str, tuple[float, float]] = {
    "built": (-6.0, -13.0), "bare": (-15.0, -23.0), "crop": (-11.0, -17.5),
    "grass": (-12.5, -19.5), "broadleaf": (-8.0, -13.5), "conifer": (-8.5, -14.5),
    "mixed": (-8.2, -14.0), "shrub": (-10.0, -16.5), "burnt": (-13.0, -21.0),
    "wet": (-14.0, -21.0), "water": (-21.0, -28.0),
}


@functools.cache
def s1_signatures() -> np.ndarray:
    """The (43, 2) float32 mean backscatter (VV, VH) of each CLC43 class, in dB.

    The group prototype (built-up about -6 / -13 dB, forests about -8 / -14, crops about
    -11 / -17.5, water about -21 / -28) moved per class by a fixed N(0, 1) dB offset
    (clipped to +-2 dB), so classes of one group differ in S1 too.
    """
    rng = np.random.default_rng(_SIGNATURE_SEED + 1)
    base = np.array([_S1_PROTOTYPES[look[0]] for look in _CLASS_LOOK], dtype=np.float64)
    sig = (base + np.clip(rng.standard_normal(base.shape), -2.0, 2.0)).astype(np.float32)
    sig.setflags(write=False)
    return sig


def synth_patch_s1(labels: Sequence[int], region: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The Sentinel-1 VV and VH backscatter of a patch whose regions show ``labels``.

    Each region takes its class's mean (:func:`s1_signatures`) moved by N(0, 0.6) dB, a
    smooth shading of about 1 dB (incidence angle, moisture) covers the patch, and
    multiplicative gamma speckle of :data:`S1_LOOKS` looks is added (in dB: VV spans about
    -25..0 dB, as in the real patches).

    Args:
        labels: class indices (0..42), as given to :func:`synth_patch_bands`.
        region: (120, 120) uint8 position in ``labels`` of the class at each pixel.
        rng: the patch's S1 generator.

    Returns:
        ``{"VV": (120, 120) float32, "VH": (120, 120) float32}``, dB.
    """
    classes = np.asarray(labels, dtype=np.intp)
    sig = s1_signatures()[classes] + 0.6 * rng.standard_normal((len(classes), 2), dtype=np.float32)
    db = sig.T[:, region]  # (2, 120, 120)
    db += _smooth(rng, 1)[0]
    db += _speckle_db()[np.frombuffer(rng.bytes(2 * db.size), dtype="<u2").reshape(db.shape)]
    return {"VV": db[0], "VH": db[1]}


@functools.cache
def _speckle_db() -> np.ndarray:
    """(65536,) float32 quantiles of the speckle in dB, ``10 log10(G / L)``, G ~ Gamma(L).

    A patch draws its speckle by indexing this table with random uint16s: the same law as
    ``standard_gamma`` and a log per pixel, at a tenth of the cost.
    """
    draws = np.random.default_rng(_SIGNATURE_SEED + 2).standard_gamma(S1_LOOKS, size=1 << 20)
    draws.sort()
    table = (10.0 * np.log10(draws[8::16] / S1_LOOKS)).astype(np.float32)
    table.setflags(write=False)
    return table


_CODES = np.asarray(CLC43_CODES, dtype=np.uint16)


def synth_reference_map(labels: Sequence[int], region: np.ndarray) -> np.ndarray:
    """(120, 120) uint16 CORINE 2018 code (:data:`CLC43_CODES`) of the class at each pixel.

    The regions are the ones that paint the S2 pixels, and every region is non-empty, so the
    codes present are exactly those of ``labels``.
    """
    return _CODES[np.asarray(labels, dtype=np.intp)][region]
