"""Synthetic BigEarthNet-S2 v1.0 archives: the embedded default for demos, tests and benchmarks.

An archive written here has the real v1.0 layout, file for file::

    OUT/S2A_MSIL2A_20170613T101031_87_48/
        S2A_MSIL2A_20170613T101031_87_48_B01.tif   20 x 20 px, 60 m
        ... _B02 _B03 _B04 _B08.tif                120 x 120 px, 10 m
        ... _B05 _B06 _B07 _B8A _B11 _B12.tif      60 x 60 px, 20 m
        ... _B09.tif                               20 x 20 px, 60 m
        S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json

Every band is a single-band uint16 GeoTIFF (reflectance x 10,000) in WGS 84 / UTM
(EPSG 326xx), uncompressed strips, no nodata, laid out byte for byte as GDAL writes
BigEarthNet's files; all bands of a patch cover the same 1200 m x 1200 m square, given in
the JSON's ``coordinates`` (ints, metres). The JSON has the real keys: ``labels`` (CLC43
names in official order), ``coordinates``, ``projection`` (WKT), ``tile_source`` and
``acquisition_date``.

How the content is made (version :data:`SYNTH_VERSION`):

- *Names*: a few acquisitions (tile and date) per archive, about one per 2,000 patches and
  at least 3; each patch is a distinct (row, col) cell of its tile's 91 x 91 grid of
  1200 m cells. Hours before 10:00 lose their leading zero in the name, as in the real
  archive (``S2B_MSIL2A_20170924T93020_69_24``).
- *Labels*: independent draws with the real per-class shares
  (:data:`benzarr.bigearthnet.CLC43_FREQUENCY`), then at least 1 and at most 6 labels per
  patch (see :func:`synth_labels`).
- *Pixels*: the patch is cut into one region per label (a warped Voronoi partition, each
  region at least a third of an equal share); each class paints its own fixed 12-band
  reflectance signature (:func:`class_signatures`) with a class-specific texture (field
  stripes for crops, grain for built-up land, a smooth shading everywhere), the 20 m and
  60 m bands are area averages of the same scene, and sensor noise is added per band.

Determinism: patch ``i`` (in sorted-name order) draws its pixels from
``SeedSequence([seed, i])``; names and labels come from their own streams of ``seed``. The
same ``(n_patches, seed)`` gives the same bytes whatever the number of workers.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benzarr._geotiff import geotiff_header
from benzarr.bigearthnet import BAND_GROUPS, BANDS, CLC43, CLC43_FREQUENCY, is_patch_name
from benzarr.errors import InvalidArgumentError

#: Bumped whenever the bytes written for a given (n_patches, seed) change.
SYNTH_VERSION = 1

#: Patch side on the ground, metres.
PATCH_METRES = 1200
#: Patch cells per tile side: a 109.8 km Sentinel-2 tile holds 91 whole 1200 m cells.
TILE_CELLS = 91
#: Labels per patch.
MIN_LABELS, MAX_LABELS = 1, 6
#: About one acquisition per this many patches (at least 3 per archive).
PATCHES_PER_ACQUISITION = 2000

# Streams of a seed (spawn keys), apart from the per-patch pixel streams [seed, i].
_LABEL_STREAM, _NAME_STREAM = 1, 2
_SIGNATURE_SEED = 20170613  # fixed: the signatures are part of SYNTH_VERSION

# Sentinel-2 tiles over BigEarthNet's ten countries: id, EPSG, tile upper-left (m),
# relative orbit. Plausible, not authoritative: only the look matters.
_TILES: tuple[tuple[str, int, int, int, int], ...] = (
    ("29SND", 32629, 499980, 4400040, 37),    # Portugal
    ("29UPU", 32629, 600000, 5900040, 80),    # Ireland
    ("31UFS", 32631, 600000, 5700000, 8),     # Belgium
    ("31UGQ", 32631, 699960, 5600040, 108),   # Luxembourg
    ("32TMT", 32632, 399960, 5200020, 108),   # Switzerland
    ("33UUP", 32633, 399960, 5400000, 22),    # Austria
    ("34TDN", 32634, 399960, 4800000, 36),    # Kosovo
    ("34TDQ", 32634, 399960, 5000040, 136),   # Serbia
    ("34VFH", 32634, 600000, 6100020, 79),    # Lithuania
    ("35VPK", 32635, 600000, 7000020, 136),   # Finland
)
# BigEarthNet's acquisitions run June 2017 to May 2018.
_FIRST_DAY = np.datetime64("2017-06-01")
_DAYS = 365
_SLOTS_PER_DAY = 4  # distinct overpass slots per day, 20 minutes apart from 09:30 UTC

_WKT_UTM = (
    'PROJCS["WGS 84 / UTM zone {zone}{hemi}",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
    '6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",'
    '0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",{meridian}],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",{northing}],'
    'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],'
    'AUTHORITY["EPSG","{epsg}"]]'
)


def utm_wkt(epsg: int) -> str:
    """The WKT BigEarthNet's JSON gives for a WGS 84 / UTM code (326xx or 327xx)."""
    north = 32601 <= epsg <= 32660
    if not (north or 32701 <= epsg <= 32760):
        raise InvalidArgumentError(f"not a WGS 84 / UTM EPSG code: {epsg}")
    zone = epsg - (32600 if north else 32700)
    return _WKT_UTM.format(
        zone=zone, hemi="N" if north else "S", meridian=6 * zone - 183,
        northing=0 if north else 10000000, epsg=epsg,
    )


# --- classes: signatures and textures -------------------------------------------------------

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


# --- labels and names ------------------------------------------------------------------------


def _check_count(n_patches: int, seed: int) -> None:
    if isinstance(n_patches, bool) or not isinstance(n_patches, (int, np.integer)) or n_patches < 0:
        raise InvalidArgumentError(f"n_patches must be an integer >= 0, got {n_patches!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"seed must be an integer >= 0, got {seed!r}")


def synth_labels(n_patches: int, seed: int = 0) -> np.ndarray:
    """Multi-hot CLC43 labels of the synthetic archive ``(n_patches, seed)``.

    Each class is drawn independently with its real share of patches
    (:data:`CLC43_FREQUENCY`); a patch left empty gets one class drawn in proportion to the
    shares; a patch with more than :data:`MAX_LABELS` keeps a uniformly random 6 of them. The
    shares therefore stay close to the real ones (a few classes in 30-45 % of patches, many
    under 0.5 %), with about 2.9 labels per patch.

    Row ``i`` belongs to the patch ``synth_patch_names(n_patches, seed)[i]``, and depends only
    on ``seed`` and ``i`` (a longer archive of the same seed extends the label matrix).

    Returns:
        (n_patches, 43) uint8, 0 or 1, official CLC43 order. 519,284 rows take about a
        second.
    """
    _check_count(n_patches, seed)
    p = np.asarray(CLC43_FREQUENCY, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_LABEL_STREAM,)))
    out = np.empty((n_patches, len(p)), dtype=np.uint8)
    block = 65536  # bounded memory; one float64 draw per cell keeps the stream row-aligned
    for start in range(0, n_patches, block):
        u = rng.random((min(block, n_patches - start), len(p)))
        on = u < p
        # Given on, u / p is uniform and independent across classes: a free random
        # priority for keeping MAX_LABELS of the set labels.
        count = on.sum(axis=1)
        over = np.flatnonzero(count > MAX_LABELS)
        if over.size:
            keys = np.where(on[over], u[over] / p, np.inf)
            keep = np.argsort(keys, axis=1)[:, :MAX_LABELS]
            on[over] = False
            on[over[:, None], keep] = True
        # Given off, (u - p) / (1 - p) is uniform; argmin of Exp(1) / p picks class c with
        # probability p_c / sum(p) (an exponential race).
        empty = np.flatnonzero(count == 0)
        if empty.size:
            v = (u[empty] - p) / (1.0 - p)
            race = -np.log1p(-v) / p
            on[empty, np.argmin(race, axis=1)] = True
        out[start : start + len(u)] = on
    return out


@dataclass(frozen=True)
class _Acquisition:
    satellite: str
    stamp: str  # YYYYMMDDTHHMMSS
    tile: str
    epsg: int
    ulx: int  # tile upper-left, metres
    uly: int
    orbit: int

    @property
    def name_stamp(self) -> str:
        """The stamp as BigEarthNet's names write it: hours before 10 lose their zero."""
        date, time = self.stamp.split("T")
        return f"{date}T{int(time)}"

    @property
    def tile_source(self) -> str:
        date = self.stamp[:8]
        baseline = "N0205" if date < "20171106" else "N0206"
        # The product is generated some minutes after the sensing time.
        hh, mm, ss = int(self.stamp[9:11]), int(self.stamp[11:13]), int(self.stamp[13:15])
        later = (hh * 3600 + mm * 60 + ss + 97 + (self.orbit * 37) % 900) % 86400
        gen = f"{later // 3600:02d}{later // 60 % 60:02d}{later % 60:02d}"
        return (
            f"{self.satellite}_MSIL1C_{self.name_stamp}_{baseline}"
            f"_R{self.orbit:03d}_T{self.tile}_{date}T{gen}.SAFE"
        )

    @property
    def acquisition_date(self) -> str:
        s = self.stamp
        return f"{s[0:4]}-{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}:{s[13:15]}"


@dataclass(frozen=True)
class _Plan:
    """Where each patch of an archive lies; arrays are in sorted-name order."""

    names: list[str]
    acquisitions: list[_Acquisition]
    acquisition: np.ndarray  # (N,) int, index into acquisitions
    ulx: np.ndarray  # (N,) int64, metres
    uly: np.ndarray  # (N,) int64, metres


def _n_acquisitions(n_patches: int) -> int:
    return min(n_patches, max(3, -(-n_patches // PATCHES_PER_ACQUISITION)))


@functools.lru_cache(maxsize=4)
def _plan(n_patches: int, seed: int) -> _Plan:
    _check_count(n_patches, seed)
    n_acq = _n_acquisitions(n_patches)
    if n_acq > _DAYS * _SLOTS_PER_DAY:
        raise InvalidArgumentError(
            f"at most {_DAYS * _SLOTS_PER_DAY * PATCHES_PER_ACQUISITION:,} patches, got {n_patches:,}"
        )
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_NAME_STREAM,)))
    slots = np.sort(rng.choice(_DAYS * _SLOTS_PER_DAY, size=n_acq, replace=False))
    first_tile = int(rng.integers(len(_TILES)))
    acquisitions = []
    for k, slot in enumerate(slots):
        day, within = divmod(int(slot), _SLOTS_PER_DAY)
        date = str(_FIRST_DAY + np.timedelta64(day, "D")).replace("-", "")
        seconds = 9 * 3600 + 1800 + within * 1200 + int(rng.integers(1200))
        time = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        tile, epsg, ulx, uly, orbit = _TILES[(first_tile + k) % len(_TILES)]
        satellite = "S2A" if rng.random() < 0.6 else "S2B"
        acquisitions.append(_Acquisition(satellite, f"{date}T{time}", tile, epsg, ulx, uly, orbit))
    # Split the patches evenly over the acquisitions; distinct grid cells within each.
    counts = np.full(n_acq, n_patches // max(n_acq, 1))
    counts[: n_patches - counts.sum()] += 1
    acq = np.repeat(np.arange(n_acq), counts)
    cells = np.concatenate(
        [rng.choice(TILE_CELLS * TILE_CELLS, size=int(c), replace=False) for c in counts]
        or [np.zeros(0, dtype=np.int64)]
    )
    rows, cols = np.divmod(cells, TILE_CELLS)
    prefixes = [f"{a.satellite}_MSIL2A_{a.name_stamp}_" for a in acquisitions]
    names = [f"{prefixes[a]}{r}_{c}" for a, r, c in zip(acq.tolist(), rows.tolist(), cols.tolist())]
    order = sorted(range(n_patches), key=names.__getitem__)
    order_arr = np.asarray(order, dtype=np.int64)
    acq, rows, cols = acq[order_arr], rows[order_arr], cols[order_arr]
    tile_ulx = np.array([a.ulx for a in acquisitions], dtype=np.int64)
    tile_uly = np.array([a.uly for a in acquisitions], dtype=np.int64)
    return _Plan(
        names=[names[i] for i in order],
        acquisitions=acquisitions,
        acquisition=acq,
        ulx=tile_ulx[acq] + cols * PATCH_METRES if n_patches else np.zeros(0, np.int64),
        uly=tile_uly[acq] - rows * PATCH_METRES if n_patches else np.zeros(0, np.int64),
    )


def synth_patch_names(n_patches: int, seed: int = 0) -> list[str]:
    """The sorted patch names of the synthetic archive ``(n_patches, seed)``.

    Real-style v1.0 names (``S2A_MSIL2A_20170613T101031_87_48``): a few acquisitions per
    archive (about one per 2,000 patches, at least 3), distinct (row, col) cells per
    acquisition, so the names are unique.
    """
    return list(_plan(n_patches, seed).names)


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
    return bands


# --- archive -----------------------------------------------------------------------------------

# One patch's job: (index, name, label indices, epsg, ulx, uly, tile_source, acquisition_date)
_Job = tuple[int, str, tuple[int, ...], int, int, int, str, str]


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_patch(out: str, seed: int, job: _Job) -> None:
    index, name, labels, epsg, ulx, uly, tile_source, acquisition_date = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    bands = synth_patch_bands(labels, rng)
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for band, pixels in bands.items():
        pixel_size = PATCH_METRES // pixels.shape[0]
        head = geotiff_header(pixels.shape[0], pixels.shape[1], epsg, ulx, uly, pixel_size)
        _write_file(os.path.join(folder, f"{name}_{band}.tif"), head + pixels.tobytes())
    meta = {
        "labels": [CLC43[c] for c in labels],
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lry": uly - PATCH_METRES},
        "projection": utm_wkt(epsg),
        "tile_source": tile_source,
        "acquisition_date": acquisition_date,
    }
    _write_file(os.path.join(folder, f"{name}_labels_metadata.json"), json.dumps(meta).encode())


def _write_chunk(out: str, seed: int, jobs: list[_Job]) -> int:
    """Write a run of patches (runs in a worker process); returns how many."""
    for job in jobs:
        _write_patch(out, seed, job)
    return len(jobs)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InvalidArgumentError(
                f"{out} exists and is not empty; choose another folder or pass overwrite=True"
                " (--overwrite) to replace the patch folders in it"
            )
        # Only patch folders go: other files a user put there stay.
        for entry in out.iterdir():
            if entry.is_dir() and is_patch_name(entry.name):
                shutil.rmtree(entry)
    out.mkdir(parents=True, exist_ok=True)


def synth_archive(
    out: str | Path,
    n_patches: int,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write the synthetic BigEarthNet-S2 v1.0 archive ``(n_patches, seed)`` into ``out``.

    Args:
        out: the archive folder; created if missing. It must be empty unless ``overwrite``,
            which removes the patch folders already in it (and nothing else) first.
        n_patches: how many patches (13 files each: 12 GeoTIFFs and a JSON).
        seed: any integer >= 0; the same ``(n_patches, seed)`` gives the same bytes whatever
            ``workers`` is.
        workers: processes writing patches; default ``os.cpu_count()``. 1 writes in this
            process.
        progress: called with the number of patches just written, from this process.
        overwrite: replace the patch folders of an existing archive in ``out``.

    Returns:
        The sorted patch names written (folder names under ``out``).

    Raises:
        InvalidArgumentError: bad counts or seed, or ``out`` not empty without ``overwrite``.
    """
    _check_count(n_patches, seed)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InvalidArgumentError(f"workers must be >= 1, got {workers!r}")
    out = Path(out)
    _prepare_out(out, overwrite)
    plan = _plan(int(n_patches), int(seed))
    labels = synth_labels(n_patches, seed)
    acq = plan.acquisitions
    jobs: list[_Job] = [
        (
            i, name, tuple(np.flatnonzero(labels[i]).tolist()), acq[a].epsg, ulx, uly,
            acq[a].tile_source, acq[a].acquisition_date,
        )
        for i, (name, a, ulx, uly) in enumerate(
            zip(plan.names, plan.acquisition.tolist(), plan.ulx.tolist(), plan.uly.tolist())
        )
    ]
    workers = workers or os.cpu_count() or 1
    chunk = max(8, min(128, n_patches // (workers * 16) or 1))
    chunks = [jobs[s : s + chunk] for s in range(0, len(jobs), chunk)]
    report = progress or (lambda n: None)
    if workers == 1 or len(chunks) <= 1:
        for part in chunks:
            report(_write_chunk(str(out), int(seed), part))
        return list(plan.names)
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        # Keep a bounded number of chunks in flight so progress stays smooth.
        pending = set()
        queue = iter(chunks)
        for part in queue:
            pending.add(pool.submit(_write_chunk, str(out), int(seed), part))
            if len(pending) >= 4 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    report(future.result())
        for future in pending:
            report(future.result())
    return list(plan.names)


def archive_footprint(out: str | Path, names: Sequence[str]) -> tuple[int, int]:
    """(files, bytes) of the patch folders ``names`` under ``out``."""
    files = size = 0
    for name in names:
        with os.scandir(os.path.join(out, name)) as entries:
            for entry in entries:
                files += 1
                size += entry.stat().st_size
    return files, size


def synth_labels_store(
    path: str | Path,
    n_patches: int,
    seed: int = 0,
    overwrite: bool = False,
) -> list[str]:
    """Write a complete labels-only store (no band arrays) with BigEarthNet's label skew.

    Rows are real BigEarthNet v1.0 patch names: all 519,284 names of the official
    train/val/test lists when ``n_patches`` is that many, else a sample of them drawn with
    ``seed`` (so ``benzarr split --method official`` means something on it). Labels are
    :func:`synth_labels` rows. Building the full 519,284 x 43 store takes a few seconds; it is
    what the split benchmark runs on.

    Raises:
        InvalidArgumentError: ``n_patches`` outside 1..519,284, or the path exists without
            ``overwrite``.
    """
    from benzarr.archive import clc43_to_clc19
    from benzarr.resources import read_official_list
    from benzarr.store import create_store, remove_store, store_exists

    official = sorted({name for subset in ("train", "val", "test") for name in read_official_list(subset)})
    if not 1 <= n_patches <= len(official):
        raise InvalidArgumentError(f"a labels-only store holds 1 to {len(official):,} patches, got {n_patches}")
    if Path(path).exists():
        if not overwrite:
            raise InvalidArgumentError(f"{path}: exists; pass --overwrite to replace it")
        if store_exists(path):
            remove_store(path)
        else:
            raise InvalidArgumentError(f"{path}: exists and is not a Zarr store; remove it yourself")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB]))
    names = official if n_patches == len(official) else sorted(rng.choice(official, n_patches, replace=False).tolist())
    clc43 = synth_labels(n_patches, seed)
    store = create_store(path, names, shard_size=1 << 16, modalities=(),
                         source={"dataset": "BigEarthNet", "version": "1.0", "modality": "labels-only (synthetic)"},
                         ingest={"synthetic": True, "seed": seed, "n_patches": n_patches})
    store.array("labels/clc43")[:] = clc43
    store.array("labels/clc19")[:] = clc43_to_clc19(clc43)
    store.array("meta/valid")[:] = np.ones(n_patches, dtype=bool)
    store.update_attrs(complete=True, n_failed=0,
                       n_without_clc19=int((clc43_to_clc19(clc43).sum(axis=1) == 0).sum()))
    from benzarr.store import drop_staging

    drop_staging(store)
    return names
