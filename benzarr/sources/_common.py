"""What every archive source shares: the records a source fills, and the BigEarthNet readers.

The records (:class:`Patch`, :class:`PatchRef`, :class:`Archive`) are the seam between a
source and the rest of benzarr: ingest sees nothing else of an archive. The readers below
(one band GeoTIFF, the S1 pair, the reference map, a labels JSON, the official v1 name
table) are the building blocks that the BigEarthNet sources (:mod:`.ben_v1`,
:mod:`.ben_v2`) are made of; another source may use them or not.

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

from benzarr.bands import BAND_GROUPS, MODALITIES, PATCH_SIDE, S1_BANDS
from benzarr.bigearthnet import CLC43, CLC43_CODES, clc43_to_clc19
from benzarr.errors import ArchiveNotFoundError, BadPatchError, NotAnArchiveError
from benzarr.fsutil import os_error
from benzarr.sources import _files

#: GDAL settings for many tiny files: do not list the folder on every open.
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_NUM_THREADS": "1", "CPL_LOG": os.devnull}

_CLC43_INDEX = {name: i for i, name in enumerate(CLC43)}
_CODE_TO_CLC43 = np.full(1000, -1, dtype=np.int16)
_CODE_TO_CLC43[list(CLC43_CODES)] = np.arange(len(CLC43_CODES))


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
        v1_name: the v1.0 S2 name of a v2 patch (``s2v1_name``), "" otherwise: what the
            official v1 lists (``--exclude cloud-shadow``, ...) name it by.
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
    v1_name: str = ""


@dataclass
class Archive:
    """A discovered archive: its source, the modalities it holds and every patch, sorted.

    Attributes:
        path: the folder given.
        source: the registered name of the source that read it (``"v1"``, ``"v2"``, ...).
        modalities: subset of :data:`MODALITIES` the archive holds.
        refs: patch name -> :class:`PatchRef`, in sorted name order.
        unpaired_s1: v1 S1 patches whose S2 patch is not in the archive.
    """

    path: Path
    source: str
    modalities: tuple[str, ...]
    refs: dict[str, PatchRef]
    unpaired_s1: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Sorted patch names."""
        return list(self.refs)

    @property
    def version(self) -> str:
        """The source name without its ``v`` (``"1"``, ``"2"``): kept for code written before sources."""
        return self.source.removeprefix("v")


# -- folders ------------------------------------------------------------------------------


def check_archive_folder(path: Path) -> None:
    """Raise unless ``path`` is a folder or a tar file (naming a symlink loop or a broken link
    as such); mount the tar files it is or holds (:func:`benzarr.sources._files.mount`).

    Raises:
        ArchiveNotFoundError, NotAnArchiveError (also a compressed tarball, naming the command
        that decompresses it), FileSystemError.
    """
    if _files.mount_enclosing(path):  # a folder inside a tar: downloads/X.tar/BigEarthNet-v1.0
        if not _files.is_dir(path):
            raise ArchiveNotFoundError(f"{path}: no such folder in the tar")
        return
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ArchiveNotFoundError(f"{path}: a broken symlink (it points to nothing)") from None
        raise ArchiveNotFoundError(f"{path}: archive folder not found") from None
    except OSError as exc:
        raise os_error(exc, path, "reading the archive") from None
    if path.is_file():
        _files.check_not_compressed(path)
    try:
        _files.mount(path)
    except OSError as exc:
        raise os_error(exc, path, "reading the archive") from None
    if not _files.is_dir(path):
        if path.is_file() and path.stat().st_size == 0:
            raise NotAnArchiveError(f"{path}: an empty file, not a tar archive (a download cut short?)")
        raise NotAnArchiveError(f"{path}: not a folder (expected a BigEarthNet archive folder or .tar file)")


def is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, with a symlink loop raised as a FileSystemError naming it."""
    try:
        return entry.is_dir()
    except OSError as exc:
        raise os_error(exc, entry.path, "reading the archive") from None


def subfolders(root: Path, accept: Any, limit: int | None = None) -> Iterable[str]:
    """Names of the folders directly under ``root`` for which ``accept(name)`` is true
    (unsorted; at most ``limit``), tar members and mounted tars' folders included."""
    found = 0
    if _files.in_tar(root):
        names: Iterable[str] = (name for name, folder in _files.listdir(root) if folder and accept(name))
    else:
        names = _scan_folders(root, accept)
    for name in names:
        yield name
        found += 1
        if limit is not None and found >= limit:
            return


def non_folders(root: Path, accept: Any) -> list[str]:
    """Names directly under ``root`` for which ``accept(name)`` is true that are not folders
    (files, links to files, FIFOs...), tar members included: named like a patch, such an entry
    is a patch gone wrong (a cut download, a stray copy), reported as bad instead of ignored."""
    if _files.in_tar(root):
        return [name for name, folder in _files.listdir(root) if not folder and accept(name)]
    with os.scandir(root) as entries:
        return [entry.name for entry in entries if accept(entry.name) and not is_dir(entry)]


def _scan_folders(root: Path, accept: Any) -> Iterable[str]:
    seen = set()
    with os.scandir(root) as entries:
        for entry in entries:
            if accept(entry.name) and is_dir(entry):
                seen.add(entry.name)
                yield entry.name
    for name, folder in _files.listdir(root) if _files.has_mounts_in(root) else ():
        if folder and name not in seen and accept(name):
            yield name


# -- GeoTIFF bands ------------------------------------------------------------------------


def band_file(name: str, band: str) -> str:
    """File name of band ``band`` of patch ``name``: ``<name>_<band>.tif`` (S2, S1 and maps)."""
    return f"{name}_{band}.tif"


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
    from rasterio.errors import RasterioError  # here, not at import: rasterio (and boto3) cost 0.3 s

    try:
        with _files.open_raster(path) as dataset:
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
        if isinstance(exc, _files.SpecialFileError):
            reason = str(exc)
        elif not _files.in_tar(path) and os.path.lexists(path) and not path.exists():
            reason = "broken or looping symlink"
        elif not _files.exists(path):
            reason = missing
        elif _files.in_tar(path) and not isinstance(exc, RasterioError):
            reason = str(exc).split(": ", 1)[-1]  # a member cut short by a truncated tar
        elif not _files.in_tar(path) and path.is_dir():
            reason = "is a folder, not a GeoTIFF file"
        elif not _files.in_tar(path) and path.stat().st_size == 0:
            reason = "empty file (0 bytes): not a GeoTIFF (a copy or download cut short?)"
        else:
            reason = f"unreadable GeoTIFF ({first_line(exc)})"
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
            stack[c] = read_band(folder / band_file(name, band), side, "uint16", name, "missing band file",
                                 geo if band == "B02" else None)
        bands[group] = stack
    return bands


def read_s1_bands(ref: PatchRef) -> np.ndarray:
    """(2, 120, 120) float32 VV, VH of the S1 patch paired with ``ref``.

    Raises:
        BadPatchError: no pair, a missing folder, or a bad band file.
    """
    if not ref.s1_dir:
        raise BadPatchError(ref.name, "no Sentinel-1 patch pairs with it")
    folder = Path(ref.s1_dir)
    if not _files.is_dir(folder):
        raise BadPatchError(ref.name, f"S1 {ref.s1_name}: missing S1 patch folder")
    s1 = np.empty((len(S1_BANDS), PATCH_SIDE, PATCH_SIDE), dtype=np.float32)
    for c, band in enumerate(S1_BANDS):
        s1[c] = read_band(folder / band_file(ref.s1_name, band), PATCH_SIDE, "float32", ref.name)
    return s1


def read_reference_map(ref: PatchRef) -> np.ndarray:
    """(120, 120) uint16 CLC2018 codes of ``ref``'s reference map.

    Raises:
        BadPatchError: the archive has no reference maps, or the file is bad.
    """
    if not ref.reference_map:
        raise BadPatchError(ref.name, "no reference map in this archive")
    return read_band(Path(ref.reference_map), PATCH_SIDE, "uint16", ref.name)


def complete_patch(patch: Patch, ref: PatchRef, modalities: Sequence[str]) -> Patch:
    """Fill ``patch`` with ``ref``'s table values and the S1 / reference-map modalities asked
    for; derive ``clc19`` from ``clc43`` when the source gave none. Returns ``patch``.

    Raises:
        BadPatchError: naming the file and the problem (a missing S1 pair included).
    """
    patch.country, patch.season, patch.s1_name = ref.country, ref.season, ref.s1_name
    patch.snow, patch.cloud, patch.official_split = ref.snow, ref.cloud, ref.official_split
    if "s1" in modalities:
        patch.s1 = read_s1_bands(ref)
    if "reference-map" in modalities:
        patch.reference_map = read_reference_map(ref)
    if patch.clc19 is None:
        patch.clc19 = clc43_to_clc19(patch.clc43)
    return patch


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


def first_line(exc: BaseException) -> str:
    """The most telling line of a rasterio/GDAL error: the GDAL cause, without the file name."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in str(exc):
        exc = cause
    text = str(exc.args[-1] if getattr(exc, "args", None) else exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.split(": ", 1)[1] if ".tif" in line.split(": ", 1)[0] and ": " in line else line


# -- labels JSON and names ----------------------------------------------------------------


def parse_labels(labels: object) -> np.ndarray:
    """(43,) uint8 multi-hot vector from a list of CLC class names.

    Raises:
        ValueError: not a list of strings, an empty list, or an unknown name.
    """
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("'labels' is not a list of class names")
    if not labels:  # every BigEarthNet patch has one: an empty list is a damaged or foreign file
        raise ValueError("'labels' is empty (every BigEarthNet patch has at least one label)")
    vector = np.zeros(len(CLC43), dtype=np.uint8)
    for label in labels:
        index = _CLC43_INDEX.get(label)
        if index is None:
            raise ValueError(f"unknown label {label!r} (not one of the 43 BigEarthNet classes)")
        vector[index] = 1
    return vector


def read_metadata(path: Path) -> dict:
    """Parse a ``_labels_metadata.json`` into a dict (raises ValueError/OSError)."""
    raw = _files.read_bytes(path)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    except RecursionError:
        raise ValueError("malformed JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ValueError("JSON is not an object")
    return data


@lru_cache(maxsize=1)
def _official_name_table() -> Any:
    """The official v1 name table (bigearthnet-common's s1_s2_name_country_season.csv, kept as
    zstd parquet: 0.9 MB, read in 0.1 s): s2_name, s1_name, country, season; 590,326 rows."""
    from importlib import resources

    import pyarrow.parquet as pq

    with resources.as_file(resources.files("benzarr.resources").joinpath("s1_s2_name_country_season.parquet")) as path:
        return pq.read_table(path)


@lru_cache(maxsize=1)
def official_products() -> tuple[frozenset[str], frozenset[str]]:
    """The products of the official v1 names, (S2, S1): every name in the table is one of them
    plus ``_<row>_<col>`` (S1: ``_<tile>_<row>_<col>``). 125 and 325 of them, kept in
    ``official_products.json`` (15 KB; tests/test_sources.py checks it against the table)."""
    from importlib import resources

    doc = json.loads(resources.files("benzarr.resources").joinpath("official_products.json").read_text())
    return frozenset(doc["s2"]), frozenset(doc["s1"])


def official_names(s2_names: Sequence[str] = (), s1_names: Sequence[str] = ()) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Look names up in the official v1 table.

    Names of other products cannot be in it and are not looked up: an archive of none (a
    synthetic one) never loads the table (pyarrow and 590,326 rows, 0.3-1 s a process).

    Returns:
        ``({s2 name: (country, season)}, {s1 name: s2 name})`` for the given names found.
    """
    s2_products, s1_products = official_products()
    s2_names = [n for n in s2_names if n.rsplit("_", 2)[0] in s2_products]
    s1_names = [n for n in s1_names if n.rsplit("_", 3)[0] in s1_products]
    if not s2_names and not s1_names:
        return {}, {}
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
    """Season of an acquisition by whole months (meteorological, northern hemisphere: March to
    May is Spring, June to August Summer, September to November Fall, December to February
    Winter), the convention of bigearthnet-common's official name table: every one of its
    patches from 1 to 20 June is Summer and from 1 to 20 September Fall (the astronomical
    seasons this used before put them in Spring and Summer)."""
    month = datetime.fromtimestamp(timestamp, tz=timezone.utc).month
    return ("Winter", "Spring", "Summer", "Fall")[month % 12 // 3]


def name_time(name: str) -> int:
    """Acquisition time encoded in an S1/S2 name (``..._20170613T101031_...``), seconds UTC."""
    match = re.search(r"_([0-9]{8})T([0-9]{4,6})_", name + "_")
    if match is None:
        return 0
    clock = match.group(2).rjust(6, "0")  # real names drop an hour's leading zero
    return int(datetime.strptime(match.group(1) + clock, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp())
