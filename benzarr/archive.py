"""Reading BigEarthNet source archives: find the patches, read one patch.

Three layouts are recognised (:func:`open_archive`; ``source`` forces v1 or v2):

v1.0 Sentinel-2, a folder of patch folders (or the download root holding it)::

    BigEarthNet-v1.0/
      S2A_MSIL2A_20170613T101031_87_48/
        S2A_MSIL2A_20170613T101031_87_48_B01.tif ... _B12.tif   (uint16, 20/120/60 px)
        S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json

v1.0 Sentinel-1 beside it (paired by ``corresponding_s2_patch`` / the official name list)::

    BigEarthNet-S1-v1.0/<s1 patch>/<s1 patch>_VV.tif, _VH.tif (float32, 120 px), _labels_metadata.json

v2.0 (reBEN)::

    BigEarthNet-S2/<tile product>/<patch_id>/<patch_id>_B01.tif ... _B12.tif
    BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_VV.tif, _VH.tif
    Reference_Maps/<tile product>/<patch_id>/<patch_id>_reference_map.tif  (uint16 CLC2018 codes)
    metadata.parquet [, metadata_for_patches_with_snow_cloud_or_shadow.parquet]

Every band is read with rasterio (exactly ``rasterio.open(tif).read(1)``) and validated; a
problem raises :class:`~benzarr.errors.BadPatchError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from benzarr.bands import MODALITIES
from benzarr.bigearthnet import (
    BAND_GROUPS,
    CLC19,
    CLC43,
    CLC43_CODES,
    PATCH_SIDE,
    S1_BANDS,
    clc43_to_clc19,
    is_patch_name,
    is_s1_name,
    s1_product,
    v2_tile_product,
)
from benzarr.errors import ArchiveNotFoundError, BadPatchError, InvalidArgumentError, NotAnArchiveError
from benzarr.fsutil import os_error

#: Folder name of the S2 archive inside the official download.
V1_S2_FOLDER = "BigEarthNet-v1.0"
V1_S1_FOLDER = "BigEarthNet-S1-v1.0"
V2_S2_FOLDER = "BigEarthNet-S2"
V2_S1_FOLDER = "BigEarthNet-S1"
V2_REFERENCE_MAPS = "Reference_Maps"
V2_METADATA = "metadata.parquet"
V2_METADATA_FLAGGED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
_CLC43_INDEX = {name: i for i, name in enumerate(CLC43)}
_CLC19_INDEX = {name: i for i, name in enumerate(CLC19)}
_CODE_TO_CLC43 = np.full(1000, -1, dtype=np.int16)
_CODE_TO_CLC43[list(CLC43_CODES)] = np.arange(len(CLC43_CODES))
_EPSG_IN_WKT = re.compile(r'AUTHORITY\["EPSG","([0-9]+)"\]\]\s*\Z')

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
        clc19: (19,) uint8; given by v2 metadata, else derived from ``clc43``.
        s1: (2, 120, 120) float32 VV, VH backscatter (dB), when read.
        reference_map: (120, 120) uint16 CLC2018 code per pixel, when read.
        country, season, s1_name: from the archive's metadata ("" when unknown).
        snow, cloud: v2's contains_seasonal_snow / contains_cloud_or_shadow flags.
        official_split: v2's ``split`` column (train, validation, test) or "".
    """

    name: str
    bands: dict[str, np.ndarray]
    clc43: np.ndarray
    tile_source: str
    acquisition_time: int
    bounds: tuple[float, float, float, float]
    epsg: int
    clc19: np.ndarray | None = None
    s1: np.ndarray | None = None
    reference_map: np.ndarray | None = None
    country: str = ""
    season: str = ""
    s1_name: str = ""
    snow: bool = False
    cloud: bool = False
    official_split: str = ""


def _check_archive_folder(path: Path) -> None:
    """Raise unless ``path`` is a folder (naming a symlink loop or a broken link as such)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ArchiveNotFoundError(f"{path}: a broken symlink (it points to nothing)") from None
        raise ArchiveNotFoundError(f"{path}: archive folder not found") from None
    except OSError as exc:
        raise os_error(exc, path, "reading the archive") from None
    if not path.is_dir():
        raise NotAnArchiveError(f"{path}: not a folder (expected a BigEarthNet archive folder)")


def find_archive_root(path: str | Path) -> Path:
    """The folder holding the patch folders: ``path`` itself or ``path/BigEarthNet-v1.0``.

    Raises:
        ArchiveNotFoundError: ``path`` does not exist.
        NotAnArchiveError: no patch folders in either place.
        FileSystemError: a symlink loop or an unreadable folder (naming it).
    """
    path = Path(path)
    _check_archive_folder(path)
    for candidate in (path, path / V1_S2_FOLDER):
        if candidate.is_dir() and any(_patch_dirs(candidate, limit=1)):
            return candidate
    raise NotAnArchiveError(
        f"{path}: not a BigEarthNet archive (no patch folders such as "
        f"S2A_MSIL2A_20170613T101031_87_48/, nor a {V1_S2_FOLDER}/ folder holding them)"
    )


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, with a symlink loop raised as a FileSystemError naming it."""
    try:
        return entry.is_dir()
    except OSError as exc:
        raise os_error(exc, entry.path, "reading the archive") from None


def _patch_dirs(root: Path, limit: int | None = None) -> Iterable[str]:
    found = 0
    with os.scandir(root) as entries:
        for entry in entries:
            if is_patch_name(entry.name) and _is_dir(entry):
                yield entry.name
                found += 1
                if limit is not None and found >= limit:
                    return


def discover_patches(root: str | Path) -> list[str]:
    """Sorted names of the patch folders directly under ``root``."""
    return sorted(_patch_dirs(Path(root)))


def labels_path(root: Path, name: str) -> Path:
    """Path of a patch's ``_labels_metadata.json``."""
    return root / name / f"{name}_labels_metadata.json"


def read_band(path: Path, side: int, dtype: str = "uint16", patch: str = "",
              missing: str = "missing file", geo: dict[str, Any] | None = None) -> np.ndarray:
    """Read one single-band GeoTIFF of ``side`` x ``side`` pixels of ``dtype``, validated.

    Args:
        patch: the patch name, for the error.
        missing: the reason given when the file does not exist.
        geo: if given, receives the file's ``transform`` and ``crs`` (``"EPSG:32633"``).

    Raises:
        BadPatchError: naming the file: missing, truncated or unreadable, or a wrong band
            count, dtype or shape (saying what was found).
    """
    try:
        with rasterio.open(path) as dataset:
            problem = None
            found = np.dtype(dataset.dtypes[0])
            # another integer type is read and converted when no value changes (checked below)
            castable = found.kind in "ui" and np.dtype(dtype).kind in "ui"
            if dataset.count != 1:
                problem = f"{dataset.count} bands, expected 1"
            elif found != np.dtype(dtype) and not castable:
                problem = f"dtype {dataset.dtypes[0]}, expected {dtype}"
            elif dataset.height != side or dataset.width != side:
                problem = f"shape {dataset.height}x{dataset.width}, expected {side}x{side}"
            if problem:
                raise BadPatchError(patch, f"{path.name}: {problem}")
            if geo is not None:
                geo["transform"] = dataset.transform
                geo["crs"] = dataset.crs.to_string() if dataset.crs else ""
            data = dataset.read(1)
    except (RasterioError, OSError) as exc:
        if os.path.lexists(path) and not path.exists():
            reason = "broken or looping symlink"
        else:
            reason = missing if not path.exists() else f"unreadable GeoTIFF ({_first_line(exc)})"
        raise BadPatchError(patch, f"{path.name}: {reason}") from None
    if data.dtype != np.dtype(dtype):
        return _cast_exactly(data, np.dtype(dtype), path, patch)
    return data


def _cast_exactly(data: np.ndarray, dtype: np.dtype, path: Path, patch: str) -> np.ndarray:
    """``data`` as ``dtype`` if no value changes; else a BadPatchError naming a value that would."""
    info = np.iinfo(dtype)
    wrong = (data < info.min) | (data > info.max)
    if wrong.any():
        row, col = (int(v) for v in np.argwhere(wrong)[0])
        raise BadPatchError(patch, f"{path.name}: dtype {data.dtype} value {data[row, col]} at row {row}, "
                                   f"column {col} does not fit {dtype}")
    return data.astype(dtype)


def read_s2_bands(folder: Path, name: str, geo: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The 12 bands of the S2 patch ``name`` in ``folder``: band group -> (C, H, W) uint16.

    ``geo``, if given, receives B02's ``transform`` and ``crs``.

    Raises:
        BadPatchError: naming the band file and the problem.
    """
    bands: dict[str, np.ndarray] = {}
    for group, (names, side, _) in BAND_GROUPS.items():
        stack = np.empty((len(names), side, side), dtype=np.uint16)
        for c, band in enumerate(names):
            stack[c] = read_band(folder / f"{name}_{band}.tif", side, "uint16", name, "missing band file",
                                 geo if band == "B02" else None)
        bands[group] = stack
    return bands


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
        except RecursionError:
            raise ValueError("malformed JSON (nested too deeply)") from None
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

    bands = read_s2_bands(root / name, name)
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
    """The most telling line of a rasterio/GDAL error: the GDAL cause, without the file name."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in str(exc):
        exc = cause
    text = str(exc.args[-1] if getattr(exc, "args", None) else exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.split(": ", 1)[1] if ".tif" in line.split(": ", 1)[0] and ": " in line else line


# -- archives of every version ---------------------------------------------------------


@dataclass(frozen=True)
class PatchRef:
    """Where one patch's files are and what the archive's tables say of it.

    Attributes:
        name: S2 patch name (v1) or patch id (v2); the store row key.
        s2_dir: folder of the 12 band GeoTIFFs (and, in v1, the labels JSON).
        s1_name: paired Sentinel-1 patch name ("" if none).
        s1_dir: folder of ``<s1_name>_VV.tif``/``_VH.tif``, or None.
        reference_map: path of the reference map GeoTIFF (v2), or None.
        clc19: 19-class label names from v2 metadata, or None (v1: derived from the JSON).
        official_split, country, season, snow, cloud: table values ("" / False if unknown).
    """

    name: str
    s2_dir: str
    s1_name: str = ""
    s1_dir: str | None = None
    reference_map: str | None = None
    clc19: tuple[str, ...] | None = None
    official_split: str = ""
    country: str = ""
    season: str = ""
    snow: bool = False
    cloud: bool = False


@dataclass
class Archive:
    """A discovered archive: its version, the modalities it holds and every patch, sorted.

    Attributes:
        path: the folder given.
        version: ``"1"`` or ``"2"``.
        modalities: subset of :data:`MODALITIES` the archive holds.
        refs: patch name -> :class:`PatchRef`, in sorted name order.
        unpaired_s1: v1 S1 patches whose S2 patch is not in the archive.
    """

    path: Path
    version: str
    modalities: tuple[str, ...]
    refs: dict[str, PatchRef]
    unpaired_s1: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Sorted patch names."""
        return list(self.refs)


@lru_cache(maxsize=1)
def _official_name_table() -> Any:
    """The official v1 name table (bigearthnet-common's s1_s2_name_country_season.csv, kept as
    zstd parquet: 0.9 MB, read in 0.1 s): s2_name, s1_name, country, season; 590,326 rows."""
    from importlib import resources

    import pyarrow.parquet as pq

    with resources.as_file(resources.files("benzarr.resources").joinpath("s1_s2_name_country_season.parquet")) as path:
        return pq.read_table(path)


def official_names(s2_names: Sequence[str] = (), s1_names: Sequence[str] = ()) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Look names up in the official v1 table.

    Returns:
        ``({s2 name: (country, season)}, {s1 name: s2 name})`` for the given names found.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _official_name_table()
    place: dict[str, tuple[str, str]] = {}
    pairs: dict[str, str] = {}
    if s2_names:
        rows = table.filter(pc.is_in(table["s2_name"], value_set=pa.array(list(s2_names), pa.string())))
        place = {r["s2_name"]: (r["country"], r["season"]) for r in rows.to_pylist()}
    if s1_names:
        rows = table.filter(pc.is_in(table["s1_name"], value_set=pa.array(list(s1_names), pa.string())))
        pairs = {r["s1_name"]: r["s2_name"] for r in rows.to_pylist()}
    return place, pairs


def season_of(timestamp: int) -> str:
    """Season of an acquisition (astronomical, northern hemisphere; 21st-of-month boundaries)."""
    day = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    key = day.month * 100 + day.day
    if 321 <= key < 621:
        return "Spring"
    if 621 <= key < 923:
        return "Summer"
    if 923 <= key < 1221:
        return "Fall"
    return "Winter"


def _name_time(name: str) -> int:
    """Acquisition time encoded in an S1/S2 name (``..._20170613T101031_...``), seconds UTC."""
    match = re.search(r"_([0-9]{8})T([0-9]{4,6})_", name + "_")
    if match is None:
        return 0
    clock = match.group(2).rjust(6, "0")  # real names drop an hour's leading zero
    return int(datetime.strptime(match.group(1) + clock, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp())


def detect_version(path: Path) -> str | None:
    """``"2"`` for a reBEN folder, ``"1"`` for a v1 folder, None otherwise."""
    if (path / V2_METADATA).is_file() or (path / V2_S2_FOLDER).is_dir():
        return "2"
    if (path / V1_S2_FOLDER).is_dir() or any(_patch_dirs(path, limit=1)):
        return "1"
    return None


def open_archive(path: str | Path, source: str | None = None) -> Archive:
    """Discover an archive of any supported layout.

    Args:
        path: the archive folder (v1 patch folders, a v1 download root, or a v2 root).
        source: ``"v1"``/``"v2"`` (or ``"1"``/``"2"``) to force the layout; None detects it.

    Raises:
        ArchiveNotFoundError, NotAnArchiveError, InvalidArgumentError (bad ``source``).
    """
    path = Path(path)
    _check_archive_folder(path)
    if source not in (None, "v1", "v2", "1", "2"):
        raise InvalidArgumentError(f"unknown --source {source!r}: choose v1 or v2")
    version = source.lstrip("v") if source else detect_version(path)
    if version == "2":
        return _open_v2(path)
    if version == "1":
        return _open_v1(path)
    raise NotAnArchiveError(
        f"{path}: not a BigEarthNet archive (no patch folders such as "
        f"S2A_MSIL2A_20170613T101031_87_48/, no {V1_S2_FOLDER}/, no {V2_METADATA})"
    )


def _open_v1(path: Path) -> Archive:
    s2_root = find_archive_root(path)
    s1_root = path / V1_S1_FOLDER
    names = discover_patches(s2_root)
    s1_of: dict[str, str] = {}
    unpaired: list[str] = []
    if s1_root.is_dir():
        wanted = set(names)
        with os.scandir(s1_root) as entries:
            s1_names = sorted(e.name for e in entries if is_s1_name(e.name) and _is_dir(e))
        _, official = official_names(s1_names=s1_names)
        for s1 in s1_names:
            s2 = official.get(s1)
            if s2 is None:  # not an official name (synthetic data): the JSON says
                try:
                    s2 = str(read_metadata(s1_root / s1 / f"{s1}_labels_metadata.json").get("corresponding_s2_patch", ""))
                except (OSError, ValueError):
                    s2 = ""
            if s2 in wanted:
                s1_of[s2] = s1
            else:
                unpaired.append(s1)
    place, _ = official_names(s2_names=names)
    refs = {}
    for name in names:
        s1 = s1_of.get(name, "")
        country, season = place.get(name, ("", ""))
        refs[name] = PatchRef(
            name=name,
            s2_dir=str(s2_root / name),
            s1_name=s1,
            s1_dir=str(s1_root / s1) if s1 else None,
            country=country,
            season=season or season_of(_name_time(name)),
        )
    modalities = ("s2", "s1") if s1_root.is_dir() else ("s2",)
    return Archive(path=path, version="1", modalities=modalities, refs=refs, unpaired_s1=unpaired)


def _read_parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise NotAnArchiveError(f"{path}: unreadable parquet ({_first_line(exc)})") from None
    required = {"patch_id", "labels", "split", "s1_name"}  # country and the rest are optional
    missing = required - set(table.column_names)
    if missing:
        raise NotAnArchiveError(f"{path}: missing columns {', '.join(sorted(missing))}")
    return table.to_pylist()


def _open_v2(path: Path) -> Archive:
    metadata = path / V2_METADATA
    if not metadata.is_file():
        raise NotAnArchiveError(f"{path}: a BigEarthNet v2.0 archive needs {V2_METADATA}")
    rows = _read_parquet_rows(metadata)
    flagged = path / V2_METADATA_FLAGGED
    clean = len(rows)
    if flagged.is_file():
        rows += _read_parquet_rows(flagged)
    s2_root, s1_root, maps_root = path / V2_S2_FOLDER, path / V2_S1_FOLDER, path / V2_REFERENCE_MAPS
    place, _ = official_names(s2_names=[str(row.get("s2v1_name") or "") for row in rows])
    refs: dict[str, PatchRef] = {}
    for i, row in enumerate(rows):
        name = str(row["patch_id"])
        try:
            product = v2_tile_product(name)
        except ValueError:
            raise NotAnArchiveError(f"{metadata.name}: {name!r} is not a v2.0 patch id") from None
        s1 = str(row.get("s1_name") or "")
        if s1 and not is_s1_name(s1):  # never a path: "../../elsewhere" would read outside the archive
            raise NotAnArchiveError(f"{metadata.name}: s1_name {s1!r} of {name} is not a Sentinel-1 patch name")
        s1_dir = str(s1_root / s1_product(s1) / s1) if s1 and s1_root.is_dir() else None
        season = place.get(str(row.get("s2v1_name") or ""), ("", ""))[1] or season_of(_name_time(name))
        refs[name] = PatchRef(
            name=name,
            s2_dir=str(s2_root / product / name),
            s1_name=s1,
            s1_dir=s1_dir,
            reference_map=str(maps_root / product / name / f"{name}_reference_map.tif") if maps_root.is_dir() else None,
            clc19=tuple(row.get("labels") or ()),
            official_split=str(row.get("split") or "") if i < clean else "",
            country=str(row.get("country") or ""),
            season=season,
            snow=bool(row.get("contains_seasonal_snow", False)),
            cloud=bool(row.get("contains_cloud_or_shadow", False)),
        )
    modalities = ["s2"]
    if s1_root.is_dir():
        modalities.append("s1")
    if maps_root.is_dir():
        modalities.append("reference-map")
    return Archive(path=path, version="2", modalities=tuple(modalities), refs=dict(sorted(refs.items())))


def labels_from_reference_map(reference_map: np.ndarray) -> np.ndarray:
    """(43,) uint8 multi-hot of the CLC2018 codes present in a (120, 120) reference map.

    Codes that are not among the 43 BigEarthNet classes (e.g. 335 glaciers, 0 no data) are
    ignored.
    """
    codes = np.unique(reference_map)
    codes = codes[codes < _CODE_TO_CLC43.size]
    index = _CODE_TO_CLC43[codes]
    out = np.zeros(len(CLC43), dtype=np.uint8)
    out[index[index >= 0]] = 1
    return out


def read_sample(ref: PatchRef, version: str, modalities: Sequence[str] = ("s2",)) -> Patch:
    """Read and validate every requested modality of one patch.

    Args:
        ref: the patch (from :func:`open_archive`).
        version: the archive version, ``"1"`` or ``"2"``.
        modalities: any of ``s2``, ``s1``, ``reference-map``; S2 is always read.

    Raises:
        BadPatchError: naming the file and the problem (a missing S1 pair included).
    """
    name = ref.name
    s2_dir = Path(ref.s2_dir)
    if version == "1":
        patch = read_patch(s2_dir.parent, name)
    else:
        if not s2_dir.is_dir():
            raise BadPatchError(name, f"{s2_dir}: missing S2 patch folder")
        geo: dict[str, Any] = {}
        bands = read_s2_bands(s2_dir, name, geo)
        transform, crs = geo["transform"], geo["crs"]
        side = BAND_GROUPS["10m"][1]
        bounds = (transform.c, transform.f, transform.c + side * transform.a, transform.f + side * transform.e)
        epsg = int(crs.split(":")[1]) if crs.upper().startswith("EPSG:") else 0
        clc19 = np.zeros(len(CLC19), dtype=np.uint8)
        for label in ref.clc19 or ():
            if label not in _CLC19_INDEX:
                raise BadPatchError(name, f"{V2_METADATA}: unknown label {label!r} (not one of the 19 classes)")
            clc19[_CLC19_INDEX[label]] = 1
        patch = Patch(name=name, bands=bands, clc43=np.zeros(len(CLC43), dtype=np.uint8),
                      tile_source=v2_tile_product(name), acquisition_time=_name_time(name),
                      bounds=tuple(float(v) for v in bounds), epsg=epsg, clc19=clc19)
    patch.country, patch.season, patch.s1_name = ref.country, ref.season, ref.s1_name
    patch.snow, patch.cloud, patch.official_split = ref.snow, ref.cloud, ref.official_split
    if "s1" in modalities:
        if not ref.s1_dir:
            raise BadPatchError(name, "no Sentinel-1 patch pairs with it")
        folder = Path(ref.s1_dir)
        if not folder.is_dir():
            raise BadPatchError(name, f"S1 {ref.s1_name}: missing S1 patch folder")
        s1 = np.empty((len(S1_BANDS), PATCH_SIDE, PATCH_SIDE), dtype=np.float32)
        for c, band in enumerate(S1_BANDS):
            s1[c] = read_band(folder / f"{ref.s1_name}_{band}.tif", PATCH_SIDE, "float32", name)
        patch.s1 = s1
    if "reference-map" in modalities:
        if not ref.reference_map:
            raise BadPatchError(name, "no reference map in this archive")
        patch.reference_map = read_band(Path(ref.reference_map), PATCH_SIDE, "uint16", name)
        if version == "2":  # v2 has no 43-class names: they come from the map (see docs)
            patch.clc43 = labels_from_reference_map(patch.reference_map)
    if patch.clc19 is None:
        patch.clc19 = clc43_to_clc19(patch.clc43)
    return patch
