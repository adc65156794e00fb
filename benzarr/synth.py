"""Synthetic BigEarthNet archives: the embedded default for demos, tests and benchmarks.

Three layouts: the BigEarthNet-S2 v1.0 archive (:func:`synth_archive`, described below), the
v1.0 S2 + S1 download root (``synth_archive(..., s1=True)``: ``BigEarthNet-v1.0/`` and
``BigEarthNet-S1-v1.0/``) and BigEarthNet v2.0 / reBEN (:func:`synth_archive_v2`: tile-product
folders of S2, S1 and reference maps, and ``metadata.parquet``). Sentinel-1 patches
(:func:`synth_patch_s1`) and reference maps (:func:`synth_reference_map`) are painted by the
same regions as the S2 pixels, so every modality carries the label signal.

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
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benzarr._geotiff import geotiff_header
from benzarr.bigearthnet import (
    BAND_GROUPS,
    BANDS,
    CLC19,
    CLC43,
    CLC43_CODES,
    CLC43_FREQUENCY,
    clc43_to_clc19,
    is_patch_name,
)
from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import MARKER, check_output, has_marker, remove_entries, write_marker

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
        out[start : start + len(u)] = _labels_from_uniform(u, p)
    return out


def _labels_from_uniform(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(rows, 43) bool labels from (rows, 43) uniform draws ``u`` and class shares ``p``."""
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
    return on


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


# --- Sentinel-1, reference maps, clouds and snow ------------------------------------------------

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


# --- archive -----------------------------------------------------------------------------------

#: Folders of the v1.0 download root written by ``synth_archive(..., s1=True)``.
V1_S2_FOLDER, V1_S1_FOLDER = "BigEarthNet-v1.0", "BigEarthNet-S1-v1.0"
#: Folders and files of a v2.0 (reBEN) archive.
V2_S2_FOLDER, V2_S1_FOLDER, V2_REFERENCE_FOLDER = "BigEarthNet-S2", "BigEarthNet-S1", "Reference_Maps"
V2_METADATA = "metadata.parquet"
V2_METADATA_FLAGGED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
#: File-name suffix of a v2.0 reference map: ``<patch_id>_reference_map.tif``.
REFERENCE_MAP_SUFFIX = "reference_map"
_LAYOUT_ENTRIES = frozenset({
    V1_S2_FOLDER, V1_S1_FOLDER, V2_S2_FOLDER, V2_S1_FOLDER, V2_REFERENCE_FOLDER,
    V2_METADATA, V2_METADATA_FLAGGED,
})

# One patch's job: (index, name, label indices, epsg, ulx, uly, tile_source, acquisition_date)
_Job = tuple[int, str, tuple[int, ...], int, int, int, str, str]
# Spawn keys of a patch's streams other than its S2 pixels, SeedSequence([seed, index]).
_S1_PIXELS, _COVER_PIXELS = 1, 2


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_bands(folder: str, name: str, bands: dict[str, np.ndarray], epsg: int, ulx: int, uly: int) -> None:
    """Write ``<folder>/<name>_<band>.tif`` for each band (uint16 or float32, native side)."""
    os.makedirs(folder, exist_ok=True)
    for band, pixels in bands.items():
        pixel_size = PATCH_METRES // pixels.shape[0]
        head = geotiff_header(pixels.shape[0], pixels.shape[1], epsg, ulx, uly, pixel_size, pixels.dtype)
        _write_file(os.path.join(folder, f"{name}_{band}.tif"), head + pixels.tobytes())


def _patch_rng(seed: int, index: int, stream: int | None = None) -> np.random.Generator:
    key = () if stream is None else (stream,)
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=key))


def _write_patch(out: str, seed: int, job: _Job) -> np.ndarray:
    """Write one v1 S2 patch folder; returns its region map (for the S1 twin)."""
    index, name, labels, epsg, ulx, uly, tile_source, acquisition_date = job
    bands, region = _patch_scene(labels, _patch_rng(seed, index))
    _write_bands(os.path.join(out, name), name, bands, epsg, ulx, uly)
    meta = {
        "labels": [CLC43[c] for c in labels],
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lry": uly - PATCH_METRES},
        "projection": utm_wkt(epsg),
        "tile_source": tile_source,
        "acquisition_date": acquisition_date,
    }
    _write_file(os.path.join(out, name, f"{name}_labels_metadata.json"), json.dumps(meta).encode())
    return region


# A v1 job followed by (S1 patch name, scene_source, acquisition_time).
_JobS1 = tuple[int, str, tuple[int, ...], int, int, int, str, str, str, str, str]


def _write_patch_with_s1(out: str, seed: int, job: _JobS1) -> None:
    """Write one v1 S2 patch under BigEarthNet-v1.0/ and its S1 twin under BigEarthNet-S1-v1.0/."""
    region = _write_patch(os.path.join(out, V1_S2_FOLDER), seed, job[:8])  # type: ignore[arg-type]
    index, name, labels, epsg, ulx, uly = job[:6]
    s1_name, scene_source, acquisition_time = job[8:]
    folder = os.path.join(out, V1_S1_FOLDER, s1_name)
    _write_bands(folder, s1_name, synth_patch_s1(labels, region, _patch_rng(seed, index, _S1_PIXELS)), epsg, ulx, uly)
    meta = {  # the real S1 JSON: same labels as the S2 patch, "lly" for the lower edge
        "labels": [CLC43[c] for c in labels],
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lly": uly - PATCH_METRES},
        "projection": utm_wkt(epsg),
        "corresponding_s2_patch": name,
        "scene_source": scene_source,
        "acquisition_time": acquisition_time,
    }
    _write_file(os.path.join(folder, f"{s1_name}_labels_metadata.json"), json.dumps(meta).encode())


# A v2 job: (index, patch_id, tile product, label indices, epsg, ulx, uly, S1 product,
# S1 name, cover: "" | "snow" | "cloud")
_JobV2 = tuple[int, str, str, tuple[int, ...], int, int, int, str, str, str]


def _write_patch_v2(out: str, seed: int, s1: bool, reference_maps: bool, job: _JobV2) -> None:
    """Write one v2 patch: its S2 folder, and its S1 folder and reference map when asked."""
    index, patch_id, product, labels, epsg, ulx, uly, s1_product, s1_name, cover = job
    bands, region = _patch_scene(labels, _patch_rng(seed, index))
    if cover:
        _add_cover(bands, cover, _patch_rng(seed, index, _COVER_PIXELS))
    _write_bands(os.path.join(out, V2_S2_FOLDER, product, patch_id), patch_id, bands, epsg, ulx, uly)
    if s1:
        s1_bands = synth_patch_s1(labels, region, _patch_rng(seed, index, _S1_PIXELS))
        _write_bands(os.path.join(out, V2_S1_FOLDER, s1_product, s1_name), s1_name, s1_bands, epsg, ulx, uly)
    if reference_maps:
        ref = {REFERENCE_MAP_SUFFIX: synth_reference_map(labels, region)}
        _write_bands(os.path.join(out, V2_REFERENCE_FOLDER, product, patch_id), patch_id, ref, epsg, ulx, uly)


def _write_chunk(write: Callable[[object], object], jobs: Sequence[object]) -> int:
    """Write a run of patches (runs in a worker process); returns how many."""
    for job in jobs:
        write(job)
    return len(jobs)


def _run_jobs(
    write: Callable[[object], object],
    jobs: Sequence[object],
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    """Call ``write(job)`` for every job, in ``workers`` processes, reporting progress here."""
    workers = workers or os.cpu_count() or 1
    chunk = max(8, min(128, len(jobs) // (workers * 16) or 1))
    chunks = [jobs[s : s + chunk] for s in range(0, len(jobs), chunk)]
    report = progress or (lambda n: None)
    if workers == 1 or len(chunks) <= 1:
        for part in chunks:
            report(_write_chunk(write, part))
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        # Keep a bounded number of chunks in flight so progress stays smooth.
        pending = set()
        for part in chunks:
            pending.add(pool.submit(_write_chunk, write, part))
            if len(pending) >= 4 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    report(future.result())
        for future in pending:
            report(future.result())


def _check_workers(workers: int | None) -> None:
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InvalidArgumentError(f"workers must be >= 1, got {workers!r}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: new, empty, or (``overwrite``) a synthetic archive whose synth files go.

    Only a folder that synth marked (:func:`benzarr.fsutil.write_marker`) is replaced, and only
    what synth writes in it (patch folders, the v1+S1 and v2 folders and parquet files): other
    files a user put there stay. A real archive, which looks the same but has no marker, is
    never touched.
    """
    state = check_output(out, overwrite=overwrite, owned=lambda path: has_marker(path, "synth"),
                         what="a synthetic archive", command="synth")
    if state == "owned":
        if not overwrite:
            raise InvalidArgumentError(
                f"{out} exists and is not empty; choose another folder or pass overwrite=True"
                " (--overwrite) to replace the synthetic archive in it"
            )
        remove_entries(out, [
            entry.name for entry in out.iterdir()
            if (entry.is_dir() and (is_patch_name(entry.name) or entry.name in _LAYOUT_ENTRIES))
            or (entry.is_file() and entry.name in _LAYOUT_ENTRIES)
        ])
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "synth")


def synth_archive(
    out: str | Path,
    n_patches: int,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    s1: bool = False,
) -> list[str]:
    """Write the synthetic BigEarthNet-S2 v1.0 archive ``(n_patches, seed)`` into ``out``.

    Args:
        out: the archive folder; created if missing. It must be empty unless ``overwrite``,
            which removes what synth writes (patch folders, the S1 layout's two folders,
            a v2 layout) already in it, and nothing else, first.
        n_patches: how many patches (13 files each: 12 GeoTIFFs and a JSON).
        seed: any integer >= 0; the same ``(n_patches, seed)`` gives the same bytes whatever
            ``workers`` is.
        workers: processes writing patches; default ``os.cpu_count()``. 1 writes in this
            process.
        progress: called with the number of patches just written, from this process.
        overwrite: replace the patch folders of an existing archive in ``out``.
        s1: write the v1.0 S2 + S1 download layout instead: ``out/BigEarthNet-v1.0/`` holds
            exactly the S2 archive written without ``s1`` (same bytes), and
            ``out/BigEarthNet-S1-v1.0/<s1 name>/`` holds ``<s1 name>_VV.tif``,
            ``<s1 name>_VH.tif`` (float32 dB, 120 x 120, 10 m, the S2 patch's square and
            CRS) and ``<s1 name>_labels_metadata.json`` (keys ``labels``, ``coordinates``
            with ulx/uly/lrx/lly, ``projection``, ``corresponding_s2_patch``,
            ``scene_source``, ``acquisition_time`` as ``2017-06-13T16:50:43``). S1 names
            are ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48``: the S2 patch's tile, row
            and column, an S1 pass up to two days from the S2 one.

    Returns:
        The sorted S2 patch names written (folder names under ``out``, or under
        ``out/BigEarthNet-v1.0`` with ``s1``).

    Raises:
        InvalidArgumentError: bad counts or seed, or ``out`` not empty without ``overwrite``.
    """
    _check_count(n_patches, seed)
    _check_workers(workers)
    out = Path(out)
    _prepare_out(out, overwrite)
    plan = _plan(int(n_patches), int(seed))
    labels = synth_labels(n_patches, seed)
    acq = plan.acquisitions
    jobs: list = [
        (
            i, name, tuple(np.flatnonzero(labels[i]).tolist()), acq[a].epsg, ulx, uly,
            acq[a].tile_source, acq[a].acquisition_date,
        )
        for i, (name, a, ulx, uly) in enumerate(
            zip(plan.names, plan.acquisition.tolist(), plan.ulx.tolist(), plan.uly.tolist())
        )
    ]
    if s1:
        passes = _s1_passes(int(n_patches), int(seed))
        for i, (name, a) in enumerate(zip(plan.names, plan.acquisition.tolist())):
            row, col = name.rsplit("_", 2)[1:]
            p = passes[a]
            jobs[i] += (f"{p.product}_{acq[a].tile}_{row}_{col}", p.scene_source, p.acquisition_time)
        write = functools.partial(_write_patch_with_s1, str(out), int(seed))
    else:
        write = functools.partial(_write_patch, str(out), int(seed))
    _run_jobs(write, jobs, workers, progress)
    return list(plan.names)


# --- Sentinel-1 passes and the v2.0 (reBEN) archive -------------------------------------------

_S1_STREAM, _V2_STREAM, _REDRAW_STREAM = 3, 4, 5
#: Share of v2 patches flagged for seasonal snow or cloud/shadow.
FLAGGED_SHARE = 0.05
#: Split shares of the v2 metadata (train, validation, test), drawn per patch.
SPLIT_SHARES = (0.5, 0.25, 0.25)

_COUNTRIES: dict[str, str] = {
    "29SND": "Portugal", "29UPU": "Ireland", "31UFS": "Belgium", "31UGQ": "Luxembourg",
    "32TMT": "Switzerland", "33UUP": "Austria", "34TDN": "Kosovo", "34TDQ": "Serbia",
    "34VFH": "Lithuania", "35VPK": "Finland",
}
assert set(_COUNTRIES) == {t[0] for t in _TILES}


@dataclass(frozen=True)
class _S1Pass:
    satellite: str  # S1A | S1B
    start: str  # YYYYMMDDTHHMMSS
    scene_source: str

    @property
    def product(self) -> str:
        """``S1A_IW_GRDH_1SDV_20170613T165043``: the S1 product folder of reBEN."""
        return f"{self.satellite}_IW_GRDH_1SDV_{self.start}"

    @property
    def acquisition_time(self) -> str:
        s = self.start
        return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}"


@functools.lru_cache(maxsize=4)
def _s1_passes(n_patches: int, seed: int) -> list[_S1Pass]:
    """One Sentinel-1 pass per S2 acquisition of ``_plan(n_patches, seed)``: 0-2 days away,
    morning (descending, about 04:30-06:00 UTC) or evening (ascending, 16:30-18:00)."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_S1_STREAM,)))
    reference = np.datetime64("2017-06-13")
    used: set[tuple[str, str]] = set()
    passes = []
    for a in _plan(n_patches, seed).acquisitions:
        s2_day = np.datetime64(f"{a.stamp[0:4]}-{a.stamp[4:6]}-{a.stamp[6:8]}")
        while True:
            day = s2_day + np.timedelta64(int(rng.integers(-2, 3)), "D")
            ascending = bool(rng.random() < 0.5)
            start = (16 if ascending else 4) * 3600 + 1800 + int(rng.integers(5400))
            satellite = "S1A" if rng.random() < 0.6 else "S1B"
            date = str(day).replace("-", "")
            stamp = f"{date}T{start // 3600:02d}{start // 60 % 60:02d}{start % 60:02d}"
            if (a.tile, stamp) not in used:
                break
        used.add((a.tile, stamp))
        stop = start + 25
        days = int((day - reference) // np.timedelta64(1, "D"))
        orbit = (17018 if satellite == "S1A" else 5947) + round(days * 175 / 12) + (0 if ascending else 7)
        datatake, unique = int(rng.integers(0x10000, 0x40000)), int(rng.integers(0x10000))
        source = (
            f"{satellite}_IW_GRDH_1SDV_{stamp}_{date}T{stop // 3600:02d}{stop // 60 % 60:02d}{stop % 60:02d}"
            f"_{orbit:06d}_{datatake:06X}_{unique:04X}"
        )
        passes.append(_S1Pass(satellite, stamp, source))
    return passes


def synth_labels_v2(n_patches: int, seed: int = 0) -> np.ndarray:
    """CLC43 labels of the synthetic v2.0 archive: :func:`synth_labels`, with each row whose
    19-class conversion would be empty (only classes outside the 19-class nomenclature, such
    as road networks or bare rock) redrawn from its own stream until it is not (reBEN has no
    patch without 19-class labels).

    Returns:
        (n_patches, 43) uint8, row i for the i-th patch of ``synth_patch_names(n, seed)``
        (the v1 names the v2 patches carry as ``s2v1_name``).
    """
    labels = synth_labels(n_patches, seed)
    bad = np.flatnonzero(clc43_to_clc19(labels).sum(axis=1) == 0)
    p = np.asarray(CLC43_FREQUENCY, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_REDRAW_STREAM,)))
    while bad.size:
        candidates = _labels_from_uniform(rng.random((bad.size, len(p))), p).astype(np.uint8)
        ok = clc43_to_clc19(candidates).any(axis=1)
        labels[bad[ok]] = candidates[ok]
        bad = bad[~ok]
    return labels


@dataclass(frozen=True)
class _V2Plan:
    """The patches of a v2 archive in sorted patch-id order; ``jobs`` drive the writers."""

    patch_ids: list[str]
    clc43: np.ndarray  # (N, 43) uint8
    columns: dict[str, list]  # metadata.parquet columns, one row per patch
    flagged: np.ndarray  # (N,) bool
    jobs: list[_JobV2]


@functools.lru_cache(maxsize=2)
def _plan_v2(n_patches: int, seed: int) -> _V2Plan:
    base = _plan(n_patches, seed)
    passes = _s1_passes(n_patches, seed)
    clc43 = synth_labels_v2(n_patches, seed)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_V2_STREAM,)))
    u_split, u_flag, u_kind = rng.random(n_patches), rng.random(n_patches), rng.random(n_patches)
    rows = []
    for i, (name, a, ulx, uly) in enumerate(
        zip(base.names, base.acquisition.tolist(), base.ulx.tolist(), base.uly.tolist())
    ):
        acq, s1 = base.acquisitions[a], passes[a]
        row, col = name.rsplit("_", 2)[1:]
        product = f"{acq.satellite}_MSIL2A_{acq.stamp}_N9999_R{acq.orbit:03d}_T{acq.tile}"
        rows.append((f"{product}_{row}_{col}", product, name, s1.product, f"{s1.product}_{acq.tile}_{row}_{col}",
                     acq, int(ulx), int(uly), i))
    rows.sort(key=lambda r: r[0])
    order = np.asarray([r[-1] for r in rows], dtype=np.intp)
    clc43 = clc43[order] if n_patches else clc43
    clc19 = clc43_to_clc19(clc43)
    split = np.where(u_split < SPLIT_SHARES[0], "train",
                     np.where(u_split < SPLIT_SHARES[0] + SPLIT_SHARES[1], "validation", "test"))[order]
    winter = np.array([r[5].stamp[4:6] in ("11", "12", "01", "02", "03") for r in rows], dtype=bool)
    flagged = u_flag[order] < FLAGGED_SHARE
    snow = flagged & winter & (u_kind[order] < 0.6)
    cloud = flagged & ~snow
    columns: dict[str, list] = {
        "patch_id": [r[0] for r in rows],
        "labels": [[CLC19[j] for j in np.flatnonzero(r)] for r in clc19],
        "split": split.tolist(),
        "country": [_COUNTRIES[r[5].tile] for r in rows],
        "s1_name": [r[4] for r in rows],
        "s2v1_name": [r[2] for r in rows],
        "contains_seasonal_snow": snow.tolist(),
        "contains_cloud_or_shadow": cloud.tolist(),
    }
    jobs: list[_JobV2] = [
        (i, r[0], r[1], tuple(np.flatnonzero(clc43[i]).tolist()), r[5].epsg, r[6], r[7], r[3], r[4],
         "snow" if snow[i] else "cloud" if cloud[i] else "")
        for i, r in enumerate(rows)
    ]
    return _V2Plan(patch_ids=columns["patch_id"], clc43=clc43, columns=columns, flagged=flagged, jobs=jobs)


def _write_metadata(out: Path, plan: _V2Plan) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("patch_id", pa.string()), ("labels", pa.list_(pa.string())), ("split", pa.string()),
        ("country", pa.string()), ("s1_name", pa.string()), ("s2v1_name", pa.string()),
        ("contains_seasonal_snow", pa.bool_()), ("contains_cloud_or_shadow", pa.bool_()),
    ])
    table = pa.table(plan.columns, schema=schema)
    flagged = pa.array(plan.flagged, type=pa.bool_())
    pq.write_table(table.filter(pc.invert(flagged)), out / V2_METADATA)
    pq.write_table(table.filter(flagged), out / V2_METADATA_FLAGGED)


def synth_archive_v2(
    out: str | Path,
    n_patches: int,
    seed: int = 0,
    s1: bool = False,
    reference_maps: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write the synthetic BigEarthNet v2.0 (reBEN) archive ``(n_patches, seed)`` into ``out``.

    Layout (the real reBEN download's)::

        out/BigEarthNet-S2/<tile product>/<patch_id>/<patch_id>_B01.tif ... _B12.tif
        out/BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_VV.tif, _VH.tif       (s1)
        out/Reference_Maps/<tile product>/<patch_id>/<patch_id>_reference_map.tif (reference_maps)
        out/metadata.parquet
        out/metadata_for_patches_with_snow_cloud_or_shadow.parquet

    Patch ids are ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57`` (tile product, then
    row and column), S1 names ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57`` (same tile,
    row and column; S1 product folder ``S1A_IW_GRDH_1SDV_20170613T165043``). S2 bands are
    uint16 as in v1 (120/60/20 px); VV and VH float32 backscatter in dB, 120 x 120; the
    reference map uint16 CORINE 2018 codes, 120 x 120, painted by the same regions as the
    S2 pixels (its codes are exactly the patch's CLC43 labels). All modalities of a patch
    share its CRS and 1200 m square.

    ``metadata.parquet`` (clean patches) and the flagged file (about :data:`FLAGGED_SHARE`
    of patches, with a cloud or snow cover painted on their S2 bands; their files are in the
    archive too) share the columns: ``patch_id`` string, ``labels`` list<string> (CLC19
    names, official order, never empty), ``split`` string (train/validation/test, drawn per
    patch 50/25/25), ``country`` string, ``s1_name`` string, ``s2v1_name`` string (the
    v1-style name), ``contains_seasonal_snow`` bool, ``contains_cloud_or_shadow`` bool; rows
    in patch-id order. The parquet files are written last.

    Args:
        out, seed, workers, progress, overwrite: as in :func:`synth_archive`.
        n_patches: how many patches, clean and flagged together.
        s1: write the Sentinel-1 folders too.
        reference_maps: write the reference maps too.

    Returns:
        All patch ids written (clean and flagged), sorted.
    """
    _check_count(n_patches, seed)
    _check_workers(workers)
    out = Path(out)
    _prepare_out(out, overwrite)
    plan = _plan_v2(int(n_patches), int(seed))
    write = functools.partial(_write_patch_v2, str(out), int(seed), bool(s1), bool(reference_maps))
    _run_jobs(write, plan.jobs, workers, progress)
    _write_metadata(out, plan)
    return list(plan.patch_ids)


def tree_footprint(root: str | Path) -> tuple[int, int]:
    """(files, bytes) of everything under ``root`` but benzarr's marker files (``.benzarr``);
    a file removed while walking (a running ingest renames its temporary files) is left out."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if name == MARKER:
                continue
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, size


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
    from benzarr.fsutil import is_benzarr_store, replace_output
    from benzarr.resources import read_official_list
    from benzarr.store import create_store

    official = sorted({name for subset in ("train", "val", "test") for name in read_official_list(subset)})
    if not 1 <= n_patches <= len(official):
        raise InvalidArgumentError(f"a labels-only store holds 1 to {len(official):,} patches, got {n_patches}")
    replace_output(path, overwrite=overwrite, owned=is_benzarr_store, what="a benzarr store", command="synth")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB]))
    names = official if n_patches == len(official) else sorted(rng.choice(official, n_patches, replace=False).tolist())
    clc43 = synth_labels(n_patches, seed)
    store = create_store(path, names, shard_size=1 << 16, modalities=(),
                         source={"dataset": "BigEarthNet", "version": "1.0", "modality": "labels-only (synthetic)"},
                         ingest={"synthetic": True, "seed": seed, "n_patches": n_patches})
    store.array("labels/clc43")[:] = clc43
    clc19 = clc43_to_clc19(clc43)
    store.array("labels/clc19")[:] = clc19
    store.array("meta/valid")[:] = np.ones(n_patches, dtype=bool)
    store.update_attrs(complete=True, n_failed=0, n_without_clc19=int((clc19.sum(axis=1) == 0).sum()))
    from benzarr.store import drop_staging

    drop_staging(store)
    return names
