"""BigEarthNet v1.0: Sentinel-2 patch folders with a labels JSON, and Sentinel-1 beside them.

Layouts read (and written by :func:`benzarr.synth.synth_archive`)::

    BigEarthNet-v1.0/                         (or the patch folders directly in the folder given)
      S2A_MSIL2A_20170613T101031_87_48/
        S2A_MSIL2A_20170613T101031_87_48_B01.tif ... _B12.tif   (uint16, 20/120/60 px)
        S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json
    BigEarthNet-S1-v1.0/<s1 patch>/<s1 patch>_VV.tif, _VH.tif (float32, 120 px), _labels_metadata.json

S1 patches pair with S2 ones through the official name table, or for names not in it
(synthetic archives) through the JSON's ``corresponding_s2_patch``. Country and season come
from the official table (season from the name's date otherwise). The official split is
BigEarthNet's train/val/test lists (bigearthnet-common).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from benzarr.bigearthnet import is_patch_name, is_s1_name
from benzarr.errors import BadPatchError, NotAnArchiveError
from benzarr.sources._common import (
    Archive,
    Patch,
    PatchRef,
    check_archive_folder,
    complete_patch,
    name_time,
    non_folders,
    official_names,
    parse_labels,
    read_metadata,
    read_s2_bands,
    season_of,
    subfolders,
)
from benzarr.sources import _files
from benzarr.sources._registry import OfficialSplit, register_source

#: Folder of the S2 archive inside the official download.
V1_S2_FOLDER = "BigEarthNet-v1.0"
#: Folder of the S1 archive beside it.
V1_S1_FOLDER = "BigEarthNet-S1-v1.0"
#: File-name suffix of a patch's labels JSON: ``<name>_labels_metadata.json``.
LABELS_SUFFIX = "_labels_metadata.json"
_EPSG_IN_WKT = re.compile(r'AUTHORITY\["EPSG","([0-9]+)"\]\]\s*\Z')


def labels_path(root: Path, name: str) -> Path:
    """Path of a patch's ``_labels_metadata.json`` (S2 under the S2 root, S1 under the S1 root)."""
    return root / name / f"{name}{LABELS_SUFFIX}"


def find_archive_root(path: str | Path) -> Path:
    """The folder holding the patch folders: ``path`` itself or ``path/BigEarthNet-v1.0``.

    Raises:
        ArchiveNotFoundError: ``path`` does not exist.
        NotAnArchiveError: no patch folders in either place.
        FileSystemError: a symlink loop or an unreadable folder (naming it).
    """
    path = Path(path)
    check_archive_folder(path)
    for candidate in (path, path / V1_S2_FOLDER):
        if _files.is_dir(candidate) and any(subfolders(candidate, is_patch_name, limit=1)):
            return candidate
    raise NotAnArchiveError(
        f"{path}: not a BigEarthNet archive (no patch folders such as "
        f"S2A_MSIL2A_20170613T101031_87_48/, nor a {V1_S2_FOLDER}/ folder holding them)"
    )


def discover_patches(root: str | Path) -> list[str]:
    """Sorted names of the patch folders directly under ``root``, and of the entries named like
    one that are not folders (:func:`read_patch` reports those as bad patches)."""
    return sorted([*subfolders(Path(root), is_patch_name), *non_folders(Path(root), is_patch_name)])


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


def read_patch(root: str | Path, name: str) -> Patch:
    """Read and validate one v1.0 S2 patch (12 bands + labels JSON).

    Raises:
        BadPatchError: naming the file and the problem.
    """
    root = Path(root)
    json_path = labels_path(root, name)
    try:
        meta = read_metadata(json_path)
    except OSError as exc:
        # asked only once the read failed: no stat a patch on the way of every good one
        if not _files.is_dir(root / name):
            raise BadPatchError(name, "not a folder (a file or a broken link named like a patch; a patch is a folder "
                                      "of band GeoTIFFs and a labels JSON)") from None
        if isinstance(exc, FileNotFoundError):
            raise BadPatchError(name, f"{json_path.name}: missing labels JSON") from None
        raise BadPatchError(name, f"{json_path.name}: {exc}") from None
    except ValueError as exc:
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


def _pair_s1(s1_root: Path, wanted: set[str]) -> tuple[dict[str, str], list[str]]:
    """``({s2 name: s1 name}, unpaired s1 names)`` for the S1 patch folders under ``s1_root``."""
    s1_names = sorted(subfolders(s1_root, is_s1_name))
    _, official = official_names(s1_names=s1_names)
    s1_of: dict[str, str] = {}
    unpaired: list[str] = []
    for s1 in s1_names:
        s2 = official.get(s1)
        if s2 is None:  # not an official name (synthetic data): the JSON says
            try:
                s2 = str(read_metadata(labels_path(s1_root, s1)).get("corresponding_s2_patch", ""))
            except (OSError, ValueError):
                s2 = ""
        if s2 in wanted:
            s1_of[s2] = s1
        else:
            unpaired.append(s1)
    return s1_of, unpaired


def official_lists() -> dict[str, tuple[str, ...]]:
    """BigEarthNet v1.0's official train, val and test patch names (519,284 in all)."""
    from benzarr.resources import read_official_list

    return {subset: read_official_list(subset) for subset in ("train", "val", "test")}


@register_source
class BigEarthNetV1:
    """BigEarthNet v1.0 (S2, optionally S1 beside it): see the module docstring."""

    name = "v1"
    aliases = ("1",)
    title = "BigEarthNet v1"
    store_source = {"dataset": "BigEarthNet", "version": "1.0"}
    looks_for = f"patch folders such as S2A_MSIL2A_20170613T101031_87_48/, no {V1_S2_FOLDER}/"

    def detect(self, path: Path) -> bool:
        return _files.is_dir(path / V1_S2_FOLDER) or any(subfolders(path, is_patch_name, limit=1))

    def open(self, path: Path) -> Archive:
        s2_root = find_archive_root(path)
        s1_root = path / V1_S1_FOLDER
        names = discover_patches(s2_root)
        has_s1 = _files.is_dir(s1_root)
        s1_of, unpaired = _pair_s1(s1_root, set(names)) if has_s1 else ({}, [])
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
                season=season or season_of(name_time(name)),
            )
        modalities = ("s2", "s1") if has_s1 else ("s2",)
        return Archive(path=path, source=self.name, modalities=modalities, refs=refs, unpaired_s1=unpaired)

    def read(self, ref: PatchRef, modalities: Sequence[str]) -> Patch:
        return complete_patch(read_patch(Path(ref.s2_dir).parent, ref.name), ref, modalities)

    def label_sets(self, modalities: Sequence[str]) -> list[str]:
        return ["clc43", "clc19"]

    def official_split(self) -> OfficialSplit:
        return OfficialSplit("BigEarthNet v1.0 official lists (bigearthnet-common)", lists=official_lists())
