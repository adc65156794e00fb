"""Facts of the BigEarthNet dataset: nomenclatures, the 43->19 map, names (bands: :mod:`benzarr.bands`).

Everything here is a constant or a pure function (numpy at most); no I/O.

Sources: the BigEarthNet v1.0 documentation and ``label_indices.json`` of the official
BigEarthNet-S2 19-class models (the order TorchGeo uses as ``class_sets[43]`` and
``class_sets[19]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Bands live in benzarr.bands (the one home of the band vocabulary); re-exported for old imports.
from benzarr.bands import (  # noqa: F401
    BAND_GROUPS,
    BANDS,
    PATCH_SIDE,
    RGB_BANDS,
    S1_BANDS,
    band_location,
    band_side,
)


# --- Nomenclatures ----------------------------------------------------------------------

#: The 43 CORINE Land Cover level-3 classes of BigEarthNet v1.0, official order.
CLC43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

#: The 19-class nomenclature of Sumbul et al. (2021), official order.
CLC19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

#: Official 43 -> 19 conversion (``label_conversion`` of label_indices.json): for each of the
#: 19 classes, the indices of the 43-class labels it merges. Classes in no list map to nothing.
CLC19_FROM_CLC43: tuple[tuple[int, ...], ...] = (
    (0, 1), (2,), (11, 12, 13), (14, 15, 16, 18), (17,), (19,), (20,), (21,), (22,), (23,),
    (24,), (25, 31), (26, 27), (28,), (29,), (33, 34), (35, 36), (38, 39), (40, 41, 42),
)

NOMENCLATURES: dict[str, tuple[str, ...]] = {"clc43": CLC43, "clc19": CLC19}


def clc43_to_clc19(clc43: np.ndarray) -> np.ndarray:
    """Map (..., 43) multi-hot labels to (..., 19) uint8 with the official conversion.

    A 19-class label is present when any of the 43-class labels it merges is; a patch whose
    labels all map to nothing gets an all-zero row.
    """
    out = np.zeros(clc43.shape[:-1] + (len(CLC19_FROM_CLC43),), dtype=np.uint8)
    for new, olds in enumerate(CLC19_FROM_CLC43):
        out[..., new] = clc43[..., list(olds)].max(axis=-1)
    return out


# --- Patch names ------------------------------------------------------------------------

# Real names: S2A_MSIL2A_20170613T101031_87_48; a few real ones carry a short time field
# (S2B_MSIL2A_20170924T93020_69_24), so the time is matched loosely. Every name pattern is
# matched whole (``fullmatch``) with ASCII digits only ([0-9], not \d, which also takes "٣"),
# so neither other scripts' digits nor a trailing newline pass as a name.
_S2_V1_NAME = re.compile(
    r"(?P<satellite>S2[AB])_MSIL2A_(?P<date>[0-9]{8})T(?P<time>[0-9]{4,6})_(?P<row>[0-9]+)_(?P<col>[0-9]+)"
)


@dataclass(frozen=True)
class PatchName:
    """The parts of a BigEarthNet v1.0 Sentinel-2 patch name."""

    satellite: str
    date: str  # YYYYMMDD
    time: str  # HHMMSS as written in the name (sometimes shorter)
    row: int
    col: int


def _fullmatch(pattern: re.Pattern[str], name: str, what: str) -> re.Match[str]:
    """``pattern`` matched against the whole of ``name``; ValueError ``not a <what>`` if it does not match."""
    match = pattern.fullmatch(name)
    if match is None:
        raise ValueError(f"not a {what}: {name!r}")
    return match


def parse_patch_name(name: str) -> PatchName:
    """Split a v1.0 S2 patch name such as ``S2A_MSIL2A_20170613T101031_87_48``.

    Raises:
        ValueError: if ``name`` is not in that form.
    """
    match = _fullmatch(_S2_V1_NAME, name, "BigEarthNet v1.0 S2 patch name")
    return PatchName(
        satellite=match["satellite"],
        date=match["date"],
        time=match["time"],
        row=int(match["row"]),
        col=int(match["col"]),
    )


def is_patch_name(name: str) -> bool:
    """True when ``name`` looks like a v1.0 S2 patch name."""
    return _S2_V1_NAME.fullmatch(name) is not None


def format_patch_name(satellite: str, stamp: str, row: int, col: int) -> str:
    """The v1.0 S2 patch name that :func:`parse_patch_name` reads back.

    Args:
        satellite: ``S2A`` or ``S2B``.
        stamp: ``YYYYMMDDTHHMMSS`` as the names write it (some real ones have a shorter time).
        row, col: the patch's cell in its tile.
    """
    return f"{satellite}_MSIL2A_{stamp}_{row}_{col}"


#: Approximate share of BigEarthNet v1.0 patches carrying each of the 43 labels (from the
#: published label counts over 590,326 patches). Used by the synthetic archive generator.
CLC43_FREQUENCY: tuple[float, ...] = (
    0.0183, 0.1169, 0.0219, 0.0058, 0.0009, 0.0017, 0.0078, 0.0015, 0.0021, 0.0030,
    0.0091, 0.3320, 0.0229, 0.0064, 0.0163, 0.0083, 0.0212, 0.1745, 0.0119, 0.1812,
    0.2492, 0.0516, 0.2548, 0.3582, 0.3679, 0.0217, 0.0100, 0.0190, 0.2932, 0.0025,
    0.0056, 0.0027, 0.0005, 0.0105, 0.0390, 0.0025, 0.0007, 0.0017, 0.0180, 0.1406,
    0.0025, 0.0018, 0.1380,
)


#: CORINE Land Cover 2018 level-3 code of each of the 43 classes, in :data:`CLC43` order
#: (the codes a BigEarthNet v2.0 reference map holds per pixel; 335 "Glaciers and perpetual
#: snow" is not a BigEarthNet class).
CLC43_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
    211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
    311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334,
    411, 412, 421, 422, 423, 511, 512, 521, 522, 523,
)

# v2.0 (reBEN) names: S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57 (tile product + row/col)
_S2_V2_NAME = re.compile(
    r"(?P<product>(?P<satellite>S2[AB])_MSIL2A_(?P<date>[0-9]{8})T(?P<time>[0-9]{4,6})_N[0-9]{4}_R[0-9]{3}"
    r"_T(?P<tile>[0-9]{2}[A-Z]{3}))_(?P<row>[0-9]+)_(?P<col>[0-9]+)"
)
# S1 patch names (v1 and v2): S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48
_S1_NAME = re.compile(
    r"(?P<product>(?P<satellite>S1[AB])_IW_GRDH_1SDV_(?P<date>[0-9]{8})T(?P<time>[0-9]{6}))_(?P<tile>[0-9]{2}[A-Z]{3})"
    r"_(?P<row>[0-9]+)_(?P<col>[0-9]+)"
)


def format_v2_tile_product(satellite: str, stamp: str, orbit: int, tile: str) -> str:
    """The v2.0 S2 tile-product folder, e.g. ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP``.

    Args:
        satellite: ``S2A`` or ``S2B``; stamp: ``YYYYMMDDTHHMMSS``; orbit: relative orbit
        (1-143); tile: the MGRS tile without its ``T`` (``33UUP``).
    """
    return f"{satellite}_MSIL2A_{stamp}_N9999_R{orbit:03d}_T{tile}"


def format_v2_patch_name(tile_product: str, row: int, col: int) -> str:
    """The v2.0 S2 patch id: :func:`format_v2_tile_product`'s folder, then ``_<row>_<col>``."""
    return f"{tile_product}_{row}_{col}"


def format_s1_product(satellite: str, start: str) -> str:
    """The S1 product folder, e.g. ``S1A_IW_GRDH_1SDV_20170613T165043`` (start ``YYYYMMDDTHHMMSS``)."""
    return f"{satellite}_IW_GRDH_1SDV_{start}"


def format_s1_name(product: str, tile: str, row: int | str, col: int | str) -> str:
    """The S1 patch name, e.g. ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48``."""
    return f"{product}_{tile}_{row}_{col}"


def is_v2_patch_name(name: str) -> bool:
    """True when ``name`` looks like a v2.0 S2 patch id (``S2A_MSIL2A_..._N9999_R022_T33UUP_26_57``)."""
    return _S2_V2_NAME.fullmatch(name) is not None


def v2_tile_product(name: str) -> str:
    """The tile-product folder of a v2.0 S2 patch id (the id without ``_<row>_<col>``)."""
    return _fullmatch(_S2_V2_NAME, name, "BigEarthNet v2.0 S2 patch id")["product"]


def is_s1_name(name: str) -> bool:
    """True when ``name`` looks like a Sentinel-1 patch name."""
    return _S1_NAME.fullmatch(name) is not None


def s1_product(name: str) -> str:
    """The S1 product folder of a v2.0 S1 patch name (``S1A_IW_GRDH_1SDV_20170613T165043``)."""
    return _fullmatch(_S1_NAME, name, "Sentinel-1 patch name")["product"]
