"""Pixel painting: each label paints a region of the patch with its class's 12-band signature and texture.

The patch is cut into one region per label (a warped Voronoi partition, each region at least
a third of an equal share); each class paints its own fixed 12-band reflectance signature
(:func:`class_signatures`) with a class-specific texture (field stripes for crops, grain for
built-up land, a smooth shading everywhere), the 20 m and 60 m bands are area averages of the
same scene, and sensor noise is added per band. Flagged v2 patches get a cloud or snow cover.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from benzarr.bands import BAND_GROUPS, BANDS
from benzarr.bigearthnet import CLC43, CLC43_FREQUENCY

_SIGNATURE_SEED = 20170613  # fixed: the signatures are part of SYNTH_VERSION

# Spectral prototypes, reflectance x 10,000 in BANDS order
# (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12).
_PROTOTYPES: dict[str, tuple[int, ...]] = {
    "built":     (1300, 1200, 1150, 1200, 1350, 1450, 1550, 1600, 1650, 1400, 2100, 1800),
    "bare":      (1500, 1700, 2100, 2500, 2800, 2900, 3000, 3100, 3200, 3000, 3800, 3300),
    "crop":      (600, 500, 800, 500, 1100, 2400, 2900, 3100, 3200, 3200, 2300, 1300),
    "grass":     (550, 480, 700, 600, 1050, 1900, 2200, 2400, 2500, 2500, 2200, 1350),
    "broadleaf": (350, 280, 500, 280, 800, 2300, 3000, 3400, 3500, 3400, 1800, 800),
    "conifer":   (300, 200, 350, 180, 500, 1200, 1500, 1700, 1800, 1800, 900, 400),
    "mixed":     (330, 240, 420, 230, 650, 1700, 2200, 2500, 2600, 2600, 1300, 600),
    "shrub":     (450, 380, 600, 500, 900, 1600, 1900, 2100, 2200, 2200, 2000, 1200),
    "burnt":     (300, 350, 450, 550, 750, 850, 950, 1000, 1050, 1000, 1700, 1800),
    "wet":       (450, 420, 600, 450, 750, 1300, 1550, 1650, 1750, 1750, 1000, 550),
    "water":     (700, 600, 500, 300, 250, 200, 180, 160, 150, 150, 100, 80),
}
# Class index -> (prototype, stripe amplitude, grain amplitude); stripes are crop fields,
# grain is per-pixel brightness texture (buildings, tree crowns).
_CLASS_LOOK: tuple[tuple[str, float, float], ...] = (
    ("built", 0.0, 0.20), ("built", 0.0, 0.25), ("built", 0.0, 0.12), ("built", 0.05, 0.08),
    ("built", 0.0, 0.15), ("built", 0.10, 0.05), ("bare", 0.0, 0.12), ("bare", 0.0, 0.20),
    ("bare", 0.08, 0.15), ("grass", 0.0, 0.10), ("grass", 0.10, 0.06),
    ("crop", 0.18, 0.03), ("crop", 0.15, 0.03), ("wet", 0.15, 0.02), ("crop", 0.12, 0.08),
    ("crop", 0.10, 0.10), ("shrub", 0.08, 0.10), ("grass", 0.06, 0.03), ("crop", 0.12, 0.06),
    ("crop", 0.20, 0.05), ("grass", 0.10, 0.08), ("shrub", 0.0, 0.08),
    ("broadleaf", 0.0, 0.07), ("conifer", 0.0, 0.07), ("mixed", 0.0, 0.09),
    ("grass", 0.0, 0.04), ("shrub", 0.0, 0.06), ("shrub", 0.0, 0.10), ("shrub", 0.0, 0.12),
    ("bare", 0.0, 0.03), ("bare", 0.0, 0.10), ("shrub", 0.0, 0.15), ("burnt", 0.0, 0.10),
    ("wet", 0.0, 0.05), ("wet", 0.0, 0.04), ("wet", 0.0, 0.05), ("bare", 0.12, 0.02),
    ("wet", 0.0, 0.02), ("water", 0.0, 0.02), ("water", 0.0, 0.01), ("water", 0.0, 0.01),
    ("water", 0.0, 0.02), ("water", 0.0, 0.01),
)
assert len(_CLASS_LOOK) == len(CLC43)


@functools.cache
def class_signatures() -> np.ndarray:
    """The (43, 12) float64 reflectance signature of each CLC43 class, x 10,000, BANDS order.

    A group prototype (built-up, crop, conifer, water, ...) scaled per class and band by a
    fixed factor ``exp(0.3 z)``, z in [-2, 2]^12, values clipped to 100..6000: classes of
    one group stay plausible yet distinct. Each class, most frequent first, takes the best
    of 256 random z (fixed seed) for its distance (log space) to the classes placed before
    it, in all 12 bands and in RGB alone, so even an RGB model can tell the frequent
    classes apart.
    """
    rng = np.random.default_rng(_SIGNATURE_SEED)
    base = np.log([_PROTOTYPES[look[0]] for look in _CLASS_LOOK])
    rgb = [BANDS.index(b) for b in ("B04", "B03", "B02")]
    lo, hi = math.log(100.0), math.log(6000.0)
    placed: list[int] = []
    sig = np.zeros_like(base)
    for c in np.argsort(-np.asarray(CLC43_FREQUENCY), kind="stable"):
        z = np.clip(rng.standard_normal((256, base.shape[1])), -2.0, 2.0)
        candidates = np.clip(base[c] + 0.3 * z, lo, hi)
        if placed:
            diff = candidates[:, None, :] - sig[placed][None]  # (256, placed, 12)
            d_all = np.sqrt((diff**2).sum(-1)).min(1)
            d_rgb = np.sqrt((diff[..., rgb] ** 2).sum(-1)).min(1)
            best = int(np.argmax(np.minimum(d_all, 2.0 * d_rgb)))
        else:
            best = 0
        sig[c] = candidates[best]
        placed.append(int(c))
    sig = np.exp(sig)
    sig.setflags(write=False)
    return sig


def _class_textures() -> tuple[np.ndarray, np.ndarray]:
    """(43,) stripe and (43,) grain amplitudes, fractions of the signature."""
    looks = np.array([(s, g) for _, s, g in _CLASS_LOOK], dtype=np.float32)
    return looks[:, 0], looks[:, 1]


# --- pixels ------------------------------------------------------------------------------------

_SIDE = 120
_COARSE = 6  # control points per side of the smooth random fields


@functools.cache
def _grids() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (120, 120) y and x, and the (120, 6) bilinear upsampler."""
    centres = np.arange(_SIDE, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    pos = centres / _SIDE * (_COARSE - 1)
    lo = np.minimum(pos.astype(int), _COARSE - 2)
    frac = pos - lo
    up = np.zeros((_SIDE, _COARSE), dtype=np.float32)
    up[np.arange(_SIDE), lo] = 1 - frac
    up[np.arange(_SIDE), lo + 1] = frac
    return yy, xx, up


def _smooth(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 120, 120) float32 smooth random fields, roughly unit amplitude."""
    _, _, up = _grids()
    coarse = rng.standard_normal((count, _COARSE, _COARSE), dtype=np.float32)
    return up @ coarse @ up.T


def _regions(rng: np.random.Generator, k: int) -> np.ndarray:
    """(120, 120) uint8 region index 0..k-1: a warped Voronoi partition.

    Seeds sit in k distinct cells of a jittered g x g grid (g = ceil(sqrt(k))), so regions
    come out of comparable size; the partition is redrawn (rarely) until every region holds
    at least a third of an equal share, so each label stays visible.
    """
    yy, xx, _ = _grids()
    region = np.zeros((_SIDE, _SIDE), dtype=np.uint8)
    if k == 1:
        return region
    g = math.ceil(math.sqrt(k))
    cell = _SIDE / g
    minimum = _SIDE * _SIDE / (3 * k)
    for _ in range(20):
        cells = rng.permutation(g * g)[:k]
        jitter = 0.2 + 0.6 * rng.random((k, 2))
        seeds = ((cells[:, None] // [g, 1]) % g + jitter) * cell  # (k, 2) y, x in pixels
        warp = 12.0 * _smooth(rng, 2)
        wy, wx = yy + warp[0], xx + warp[1]
        best = np.full((_SIDE, _SIDE), np.inf, dtype=np.float32)
        for j, (sy, sx) in enumerate(seeds.tolist()):
            d = np.square(wy - sy)
            d += np.square(wx - sx)
            np.copyto(region, j, where=d < best)
            np.minimum(best, d, out=best)
        if min(np.count_nonzero(region == j) for j in range(k)) >= minimum:
            break
    return region


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise of ``shape``, uniform in [-1.73, 1.73].

    Random int16 scaled: about 10x cheaper than ``standard_normal`` here, and sensor noise
    only has to look like noise.
    """
    n = math.prod(shape)
    out = np.frombuffer(rng.bytes(2 * n), dtype="<i2").astype(np.float32)
    out *= 1.0 / 18918.6  # std of a uniform int16
    return out.reshape(shape)


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sum of f x f blocks over the last two axes (strided adds: far faster than reshape-sum)."""
    out = a[..., 0::f, 0::f].copy()
    for dy in range(f):
        for dx in range(f):
            if dy or dx:
                out += a[..., dy::f, dx::f]
    return out


def synth_patch_bands(labels: Sequence[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The 12 bands of one synthetic patch showing the CLC43 classes ``labels``.

    Args:
        labels: class indices (0..42), 1 to 6 of them.
        rng: the patch's generator (``SeedSequence([seed, i])`` in an archive).

    Returns:
        band name -> uint16 array, reflectance x 10,000: (120, 120) for B02 B03 B04 B08,
        (60, 60) for B05 B06 B07 B8A B11 B12, (20, 20) for B01 B09.
    """
    return _patch_scene(labels, rng)[0]


def _patch_scene(labels: Sequence[int], rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The bands of :func:`synth_patch_bands` and the (120, 120) uint8 region map behind them
    (pixel -> position in ``labels`` of the class painted there)."""
    classes = np.asarray(labels, dtype=np.intp)
    k = len(classes)
    region = _regions(rng, k)
    # Texture weight of each 10 m pixel (shared by all bands): smooth shading, crop stripes
    # along a random direction, per-pixel grain; amplitudes per class.
    stripe_amp, grain_amp = _class_textures()
    yy, xx, _ = _grids()
    theta = float(rng.random()) * math.pi
    omega = 2.0 * math.pi / (8.0 + 16.0 * float(rng.random()))
    cls_map = classes[region]
    texture = 1.0 + 0.05 * _smooth(rng, 1)[0] + grain_amp[cls_map] * _noise(rng, (_SIDE, _SIDE))
    if stripe_amp[classes].any():
        phase = (yy * (math.cos(theta) * omega) + xx * (math.sin(theta) * omega))
        texture += stripe_amp[cls_map] * np.sign(np.sin(phase))
    weights = (region[None] == np.arange(k)[:, None, None]) * texture[None]  # (k, 120, 120)
    # The same scene seen at 20 m and 60 m: area averages of the 10 m weights.
    w20 = _block_sum(weights, 2) * 0.25
    scenes = {1: weights, 2: w20, 6: _block_sum(w20, 3) * (1.0 / 9.0)}
    # Each region's signature, varied a little per patch (atmosphere) and per region.
    gain = 1.0 + 0.03 * rng.standard_normal(len(BANDS))
    jitter = 1.0 + 0.04 * rng.standard_normal((k, len(BANDS)))
    signature = (class_signatures()[classes] * gain * jitter).astype(np.float32)  # (k, 12)
    bands: dict[str, np.ndarray] = {}
    for names, side, _ in BAND_GROUPS.values():
        idx = [BANDS.index(b) for b in names]
        img = np.tensordot(signature[:, idx].T, scenes[_SIDE // side], axes=1)  # (b, side, side)
        # Sensor noise: 1.5 % relative plus 10 DN.
        img += (0.015 * img + 10.0) * _noise(rng, img.shape)
        pixels = np.clip(np.rint(img), 1, 65535).astype(np.uint16)
        for j, b in enumerate(names):
            bands[b] = pixels[j]
    return bands, region


# Reflectance x 10,000 of a thick cloud and of fresh snow, BANDS order: clouds bright and
# flat (darker in B09, water vapour, and the SWIR), snow bright in the visible and dark in
# B11/B12 (how Sen2Cor tells them apart).
_COVER: dict[str, tuple[int, ...]] = {
    "cloud": (5200, 5400, 5300, 5300, 5400, 5400, 5400, 5300, 5300, 3000, 3600, 2700),
    "snow": (8200, 8500, 8300, 8000, 7800, 7500, 7300, 7000, 6800, 3000, 600, 500),
}


def _add_cover(bands: dict[str, np.ndarray], kind: str, rng: np.random.Generator) -> None:
    """Lay a cloud or snow cover (``kind``) over part of the patch, in place.

    A smooth random field cut at a random level gives a soft-edged mask over roughly 20-80 %
    of the patch; each band blends toward the cover's reflectance by the mask (area averages
    of it at 20 m and 60 m).
    """
    target = _COVER[kind]
    field = _smooth(rng, 1)[0]
    cut = float(rng.uniform(-0.3, 0.3))
    alpha = np.clip((field - cut) * 3.0 + 0.5, 0.0, 1.0)
    a20 = _block_sum(alpha, 2) * 0.25
    masks = {_SIDE: alpha, _SIDE // 2: a20, _SIDE // 6: _block_sum(a20, 3) * (1.0 / 9.0)}
    for band, pixels in bands.items():
        a = masks[pixels.shape[0]]
        mixed = pixels * (1.0 - a) + target[BANDS.index(band)] * a
        bands[band] = np.clip(np.rint(mixed), 1, 65535).astype(np.uint16)
