"""Where each synthetic patch lies and what it is called: acquisitions, tiles, cells, S1 passes.

A few acquisitions (tile and date) per archive, about one per 2,000 patches and at least 3;
each patch is a distinct (row, col) cell of its tile's 91 x 91 grid of 1200 m cells. Hours
before 10:00 lose their leading zero in the name, as in the real archive
(``S2B_MSIL2A_20170924T93020_69_24``). One Sentinel-1 pass per acquisition pairs with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from benzarr.bigearthnet import format_patch_name, format_s1_product
from benzarr.errors import InvalidArgumentError
from benzarr.synth.labels import _check_count

#: Patch side on the ground, metres.
PATCH_METRES = 1200
#: Patch cells per tile side: a 109.8 km Sentinel-2 tile holds 91 whole 1200 m cells.
TILE_CELLS = 91
#: About one acquisition per this many patches (at least 3 per archive).
PATCHES_PER_ACQUISITION = 2000

# Streams of a seed (spawn keys) for the names and the S1 passes.
_NAME_STREAM, _S1_STREAM = 2, 3

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

_COUNTRIES: dict[str, str] = {
    "29SND": "Portugal", "29UPU": "Ireland", "31UFS": "Belgium", "31UGQ": "Luxembourg",
    "32TMT": "Switzerland", "33UUP": "Austria", "34TDN": "Kosovo", "34TDQ": "Serbia",
    "34VFH": "Lithuania", "35VPK": "Finland",
}
assert set(_COUNTRIES) == {t[0] for t in _TILES}


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


def check_plan(n_patches: int, seed: int, least: int = 0) -> None:
    """Refuse a count or seed no archive can be planned for (before anything is written);
    ``least=1`` for an archive on disk (one of no patches is one ingest refuses).

    Raises:
        InvalidArgumentError: not whole numbers >= 0 (``n_patches`` >= ``least``), or more
            patches than the plan's acquisitions can hold.
    """
    _check_count(n_patches, seed)
    if n_patches < least:
        raise InvalidArgumentError(f"n_patches must be at least {least}, got {n_patches} "
                                   "(an archive of no patches is one ingest refuses)")
    if _n_acquisitions(n_patches) > _DAYS * _SLOTS_PER_DAY:
        raise InvalidArgumentError(
            f"at most {_DAYS * _SLOTS_PER_DAY * PATCHES_PER_ACQUISITION:,} patches, got {n_patches:,}"
        )


@functools.lru_cache(maxsize=4)
def _plan(n_patches: int, seed: int) -> _Plan:
    check_plan(n_patches, seed)
    n_acq = _n_acquisitions(n_patches)
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
    names = [
        format_patch_name(acquisitions[a].satellite, acquisitions[a].name_stamp, r, c)
        for a, r, c in zip(acq.tolist(), rows.tolist(), cols.tolist())
    ]
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


@dataclass(frozen=True)
class _S1Pass:
    satellite: str  # S1A | S1B
    start: str  # YYYYMMDDTHHMMSS
    scene_source: str

    @property
    def product(self) -> str:
        """``S1A_IW_GRDH_1SDV_20170613T165043``: the S1 product folder of reBEN."""
        return format_s1_product(self.satellite, self.start)

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
