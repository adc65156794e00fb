"""Reading BigEarthNet source archives: find the patch folders, read one patch.

A v1.0 Sentinel-2 archive is a folder of patch folders::

    BigEarthNet-v1.0/
      S2A_MSIL2A_20170613T101031_87_48/
        S2A_MSIL2A_20170613T101031_87_48_B01.tif ... _B12.tif   (uint16, 20/120/60 px)
        S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json

:func:`read_patch` reads the 12 bands with rasterio (exactly ``rasterio.open(tif).read(1)``)
and the JSON, validates everything, and raises :class:`~benzarr.errors.BadPatchError` naming
the file and the problem otherwise.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from benzarr.bigearthnet import BAND_GROUPS, CLC19_FROM_CLC43, CLC43, is_patch_name
from benzarr.errors import ArchiveNotFoundError, BadPatchError, NotAnArchiveError

#: Folder name of the S2 archive inside the official download.
V1_S2_FOLDER = "BigEarthNet-v1.0"
_CLC43_INDEX = {name: i for i, name in enumerate(CLC43)}
_EPSG_IN_WKT = re.compile(r'AUTHORITY\["EPSG","(\d+)"\]\]\s*$')

#: GDAL settings for many tiny files: do not list the folder on every open.
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_NUM_THREADS": "1", "CPL_LOG": os.devnull}


@dataclass
class Patch:
    """One patch as read from the archive.

    Attributes:
        name: patch name.
        bands: band group -> (C, H, W) uint16 (``10m``: (4, 120, 120) B02 B03 B04 B08,
            ``20m``: (6, 60, 60) B05 B06 B07 B8A B11 B12, ``60m``: (2, 20, 20) B01 B09).
        clc43: (43,) uint8 multi-hot labels, official order.
        tile_source: the Sentinel-2 product the patch was cut from.
        acquisition_time: seconds since 1970-01-01 UTC.
        bounds: (ulx, uly, lrx, lry) in metres in the patch CRS.
        epsg: EPSG code of the patch CRS (0 if the JSON names none).
    """

    name: str
    bands: dict[str, np.ndarray]
    clc43: np.ndarray
    tile_source: str
    acquisition_time: int
    bounds: tuple[float, float, float, float]
    epsg: int


def find_archive_root(path: str | Path) -> Path:
    """The folder holding the patch folders: ``path`` itself or ``path/BigEarthNet-v1.0``.

    Raises:
        ArchiveNotFoundError: ``path`` does not exist.
        NotAnArchiveError: no patch folders in either place.
    """
    path = Path(path)
    if not path.exists():
        raise ArchiveNotFoundError(f"{path}: archive folder not found")
    if not path.is_dir():
        raise NotAnArchiveError(f"{path}: not a folder (expected a BigEarthNet archive folder)")
    for candidate in (path, path / V1_S2_FOLDER):
        if candidate.is_dir() and any(_patch_dirs(candidate, limit=1)):
            return candidate
    raise NotAnArchiveError(
        f"{path}: not a BigEarthNet archive (no patch folders such as "
        f"S2A_MSIL2A_20170613T101031_87_48/, nor a {V1_S2_FOLDER}/ folder holding them)"
    )


def _patch_dirs(root: Path, limit: int | None = None) -> Iterable[str]:
    found = 0
    with os.scandir(root) as entries:
        for entry in entries:
            if is_patch_name(entry.name) and entry.is_dir():
                yield entry.name
                found += 1
                if limit is not None and found >= limit:
                    return


def discover_patches(root: str | Path) -> list[str]:
    """Sorted names of the patch folders directly under ``root``."""
    return sorted(_patch_dirs(Path(root)))


def band_path(root: Path, name: str, band: str) -> Path:
    """Path of one band's GeoTIFF."""
    return root / name / f"{name}_{band}.tif"


def labels_path(root: Path, name: str) -> Path:
    """Path of a patch's ``_labels_metadata.json``."""
    return root / name / f"{name}_labels_metadata.json"


def read_band(path: Path, side: int) -> np.ndarray:
    """Read one single-band uint16 GeoTIFF of ``side`` x ``side`` pixels.

    Raises:
        ValueError: wrong band count, dtype or shape (message names what was found).
        OSError / RasterioError: missing, truncated or unreadable file.
    """
    with rasterio.open(path) as dataset:
        if dataset.count != 1:
            raise ValueError(f"{dataset.count} bands, expected 1")
        if dataset.dtypes[0] != "uint16":
            raise ValueError(f"dtype {dataset.dtypes[0]}, expected uint16")
        if dataset.height != side or dataset.width != side:
            raise ValueError(f"shape {dataset.height}x{dataset.width}, expected {side}x{side}")
        return dataset.read(1)


def parse_labels(labels: object) -> np.ndarray:
    """(43,) uint8 multi-hot vector from a list of CLC class names.

    Raises:
        ValueError: not a list of strings, or an unknown name.
    """
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("'labels' is not a list of class names")
    vector = np.zeros(len(CLC43), dtype=np.uint8)
    for label in labels:
        index = _CLC43_INDEX.get(label)
        if index is None:
            raise ValueError(f"unknown label {label!r} (not one of the 43 BigEarthNet classes)")
        vector[index] = 1
    return vector


def clc43_to_clc19(clc43: np.ndarray) -> np.ndarray:
    """Map (..., 43) multi-hot labels to (..., 19) with the official conversion; uint8."""
    out = np.zeros(clc43.shape[:-1] + (len(CLC19_FROM_CLC43),), dtype=np.uint8)
    for new, olds in enumerate(CLC19_FROM_CLC43):
        out[..., new] = clc43[..., list(olds)].max(axis=-1)
    return out


def _parse_time(text: object) -> int:
    if not isinstance(text, str):
        raise ValueError("'acquisition_date' is missing")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return int(datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            continue
    raise ValueError(f"'acquisition_date' {text!r} is not 'YYYY-MM-DD HH:MM:SS'")


def _parse_bounds(coordinates: object) -> tuple[float, float, float, float]:
    if not isinstance(coordinates, dict):
        raise ValueError("'coordinates' is missing")
    lower = "lry" if "lry" in coordinates else "lly"  # S1 JSONs write lly for the lower edge
    try:
        return tuple(float(coordinates[key]) for key in ("ulx", "uly", "lrx", lower))  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError):
        raise ValueError("'coordinates' lacks ulx, uly, lrx, lry") from None


def read_metadata(path: Path) -> dict:
    """Parse a ``_labels_metadata.json`` into a dict (raises ValueError/OSError)."""
    with open(path, "rb") as handle:
        try:
            data = json.loads(handle.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(data, dict):
        raise ValueError("JSON is not an object")
    return data


def read_patch(root: str | Path, name: str) -> Patch:
    """Read and validate one v1.0 S2 patch (12 bands + labels JSON).

    Raises:
        BadPatchError: naming the file and the problem.
    """
    root = Path(root)
    json_path = labels_path(root, name)
    try:
        meta = read_metadata(json_path)
    except FileNotFoundError:
        raise BadPatchError(name, f"{json_path.name}: missing labels JSON") from None
    except (OSError, ValueError) as exc:
        raise BadPatchError(name, f"{json_path.name}: {exc}") from None
    try:
        clc43 = parse_labels(meta.get("labels"))
        acquisition_time = _parse_time(meta.get("acquisition_date"))
        bounds = _parse_bounds(meta.get("coordinates"))
    except ValueError as exc:
        raise BadPatchError(name, f"{json_path.name}: {exc}") from None
    projection = meta.get("projection")
    match = _EPSG_IN_WKT.search(projection) if isinstance(projection, str) else None
    epsg = int(match.group(1)) if match else 0

    bands: dict[str, np.ndarray] = {}
    for group, (names, side, _) in BAND_GROUPS.items():
        stack = np.empty((len(names), side, side), dtype=np.uint16)
        for c, band in enumerate(names):
            path = band_path(root, name, band)
            try:
                stack[c] = read_band(path, side)
            except (RasterioError, OSError) as exc:
                reason = "missing band file" if not path.exists() else f"unreadable GeoTIFF ({_first_line(exc)})"
                raise BadPatchError(name, f"{path.name}: {reason}") from None
            except ValueError as exc:
                raise BadPatchError(name, f"{path.name}: {exc}") from None
        bands[group] = stack
    return Patch(
        name=name,
        bands=bands,
        clc43=clc43,
        tile_source=str(meta.get("tile_source", "")),
        acquisition_time=acquisition_time,
        bounds=bounds,
        epsg=epsg,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
