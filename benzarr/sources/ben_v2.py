"""BigEarthNet v2.0 (reBEN): tile-product folders of S2, S1 and reference maps, parquet tables.

Layout read (and written by :func:`benzarr.synth.synth_archive_v2`)::

    BigEarthNet-S2/<tile product>/<patch_id>/<patch_id>_B01.tif ... _B12.tif
    BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_VV.tif, _VH.tif
    Reference_Maps/<tile product>/<patch_id>/<patch_id>_reference_map.tif  (uint16 CLC2018 codes)
    metadata.parquet [, metadata_for_patches_with_snow_cloud_or_shadow.parquet]

The parquet rows give the 19-class labels, the official split (``split`` column, clean
patches only), the country, the S1 pair and the snow/cloud flags. v2 has no 43-class names:
with reference maps ingested, the 43-class labels are the codes the map holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benzarr.bands import BAND_GROUPS
from benzarr.bigearthnet import CLC19, CLC43, is_s1_name, s1_product, v2_tile_product
from benzarr.errors import BadPatchError, NotAnArchiveError
from benzarr.sources._common import (
    Archive,
    Patch,
    PatchRef,
    band_file,
    complete_patch,
    first_line,
    labels_from_reference_map,
    name_time,
    official_names,
    read_s2_bands,
    season_of,
)
from benzarr.sources import _files
from benzarr.sources._registry import OfficialSplit, register_source

V2_S2_FOLDER = "BigEarthNet-S2"
V2_S1_FOLDER = "BigEarthNet-S1"
V2_REFERENCE_MAPS = "Reference_Maps"
V2_METADATA = "metadata.parquet"
V2_METADATA_FLAGGED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
#: The "band" of a reference map file: ``<patch_id>_reference_map.tif``.
REFERENCE_MAP_BAND = "reference_map"
_CLC19_INDEX = {name: i for i, name in enumerate(CLC19)}


def s2_dir(root: Path, patch_id: str) -> Path:
    """Folder of a patch's S2 bands: ``root/BigEarthNet-S2/<tile product>/<patch_id>``."""
    return root / V2_S2_FOLDER / v2_tile_product(patch_id) / patch_id


def s1_dir(root: Path, s1_name: str) -> Path:
    """Folder of an S1 patch: ``root/BigEarthNet-S1/<S1 product>/<s1_name>``."""
    return root / V2_S1_FOLDER / s1_product(s1_name) / s1_name


def reference_map_dir(root: Path, patch_id: str) -> Path:
    """Folder of a patch's reference map: ``root/Reference_Maps/<tile product>/<patch_id>``."""
    return root / V2_REFERENCE_MAPS / v2_tile_product(patch_id) / patch_id


def _read_parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(_files.read_bytes(path)) if _files.in_tar(path) else path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise NotAnArchiveError(f"{path}: unreadable parquet ({first_line(exc)})") from None
    required = {"patch_id", "labels", "split", "s1_name"}  # country and the rest are optional
    missing = required - set(table.column_names)
    if missing:
        raise NotAnArchiveError(f"{path}: missing columns {', '.join(sorted(missing))}")
    labels = table.schema.field("labels").type
    if not (pa.types.is_list(labels) or pa.types.is_large_list(labels)) or not (
            pa.types.is_string(labels.value_type) or pa.types.is_large_string(labels.value_type)):
        # a string column would be read letter by letter: "unknown label 'M'" for every patch
        raise NotAnArchiveError(f"{path}: column labels holds {labels}, expected lists of label names")
    return table.to_pylist()


def _patch_ref(path: Path, row: dict[str, Any], clean: bool, season: str, has_s1: bool, has_maps: bool) -> PatchRef:
    """The :class:`PatchRef` of one parquet row (``clean``: from metadata.parquet; ``has_s1``,
    ``has_maps``: the archive has the S1 / reference-map folders)."""
    name = str(row["patch_id"])
    listed_in = path / (V2_METADATA if clean else V2_METADATA_FLAGGED)  # the file the row came from
    try:
        v2_tile_product(name)
    except ValueError:
        raise NotAnArchiveError(f"{listed_in}: {name!r} is not a v2.0 patch id") from None
    s1 = str(row.get("s1_name") or "")
    if s1 and not is_s1_name(s1):  # never a path: "../../elsewhere" would read outside the archive
        raise NotAnArchiveError(f"{listed_in}: s1_name {s1!r} of {name} is not a Sentinel-1 patch name")
    return PatchRef(
        name=name,
        s2_dir=str(s2_dir(path, name)),
        s1_name=s1,
        s1_dir=str(s1_dir(path, s1)) if s1 and has_s1 else None,
        reference_map=str(reference_map_dir(path, name) / band_file(name, REFERENCE_MAP_BAND)) if has_maps else None,
        clc19=tuple(row.get("labels") or ()),
        official_split=str(row.get("split") or "") if clean else "",
        country=str(row.get("country") or ""),
        season=season or season_of(name_time(name)),
        snow=bool(row.get("contains_seasonal_snow", False)),
        cloud=bool(row.get("contains_cloud_or_shadow", False)),
        v1_name=str(row.get("s2v1_name") or ""),
    )


#: Values of metadata.parquet's ``split`` column.
_SPLIT_VALUES = ("train", "validation", "test")


def _clc19_vector(ref: PatchRef) -> np.ndarray:
    """(19,) uint8 multi-hot of ``ref.clc19``; raises BadPatchError for an unknown name or
    no labels at all (every v2.0 patch has at least one)."""
    if not ref.clc19:
        raise BadPatchError(ref.name, f"{V2_METADATA}: no labels (every v2.0 patch has at least one)")
    clc19 = np.zeros(len(CLC19), dtype=np.uint8)
    for label in ref.clc19 or ():
        if label not in _CLC19_INDEX:
            raise BadPatchError(ref.name, f"{V2_METADATA}: unknown label {label!r} (not one of the 19 classes)")
        clc19[_CLC19_INDEX[label]] = 1
    return clc19


@register_source
class BigEarthNetV2:
    """BigEarthNet v2.0 / reBEN (S2, S1, reference maps): see the module docstring."""

    name = "v2"
    aliases = ("2",)
    title = "BigEarthNet v2"
    store_source = {"dataset": "BigEarthNet", "version": "2.0"}
    looks_for = V2_METADATA

    def detect(self, path: Path) -> bool:
        return _files.is_file(path / V2_METADATA) or _files.is_dir(path / V2_S2_FOLDER)

    def open(self, path: Path) -> Archive:
        metadata = path / V2_METADATA
        if not _files.is_file(metadata):
            raise NotAnArchiveError(f"{path}: a BigEarthNet v2.0 archive needs {V2_METADATA}")
        rows = _read_parquet_rows(metadata)
        clean = len(rows)
        if not clean:
            raise NotAnArchiveError(f"{metadata}: lists no patches")
        if _files.is_file(path / V2_METADATA_FLAGGED):
            rows += _read_parquet_rows(path / V2_METADATA_FLAGGED)
        place, _ = official_names(s2_names=[str(row.get("s2v1_name") or "") for row in rows])
        has_s1, has_maps = _files.is_dir(path / V2_S1_FOLDER), _files.is_dir(path / V2_REFERENCE_MAPS)
        refs: dict[str, PatchRef] = {}
        s1_owner: dict[str, str] = {}  # s1_name -> the patch_id that lists it first
        for i, row in enumerate(rows):
            season = place.get(str(row.get("s2v1_name") or ""), ("", ""))[1]
            ref = _patch_ref(path, row, i < clean, season, has_s1, has_maps)
            if ref.name in refs:  # the later row would silently replace the earlier one's labels
                where = V2_METADATA if i < clean else V2_METADATA_FLAGGED
                raise NotAnArchiveError(f"{path / where}: patch_id {ref.name} is listed twice; "
                                        "each patch must have one row")
            if i < clean and ref.official_split not in _SPLIT_VALUES:
                raise NotAnArchiveError(f"{metadata}: split {row.get('split')!r} of {ref.name} is not one of "
                                        f"{', '.join(_SPLIT_VALUES)}")
            if ref.s1_name and s1_owner.setdefault(ref.s1_name, ref.name) != ref.name:
                # each S2 patch has its own S1 patch: two rows with one would give both its pixels
                where = V2_METADATA if i < clean else V2_METADATA_FLAGGED
                raise NotAnArchiveError(f"{path / where}: s1_name {ref.s1_name} is listed for two patches, "
                                        f"{s1_owner[ref.s1_name]} and {ref.name}; each patch must have its own "
                                        "S1 patch")
            refs[ref.name] = ref
        modalities = ["s2", *(["s1"] if has_s1 else []), *(["reference-map"] if has_maps else [])]
        return Archive(path=path, source=self.name, modalities=tuple(modalities), refs=dict(sorted(refs.items())))

    def read(self, ref: PatchRef, modalities: Sequence[str]) -> Patch:
        name, folder = ref.name, Path(ref.s2_dir)
        if not _files.is_dir(folder):
            raise BadPatchError(name, f"{folder}: missing S2 patch folder")
        geo: dict[str, Any] = {}
        bands = read_s2_bands(folder, name, geo)
        transform, crs = geo["transform"], geo["crs"]
        side = BAND_GROUPS["10m"][1]
        bounds = (transform.c, transform.f, transform.c + side * transform.a, transform.f + side * transform.e)
        epsg = int(crs.split(":")[1]) if crs.upper().startswith("EPSG:") else 0
        patch = Patch(name=name, bands=bands, clc43=np.zeros(len(CLC43), dtype=np.uint8),
                      tile_source=v2_tile_product(name), acquisition_time=name_time(name),
                      bounds=tuple(float(v) for v in bounds), epsg=epsg, clc19=_clc19_vector(ref))
        complete_patch(patch, ref, modalities)
        if patch.reference_map is not None:  # v2 has no 43-class names: they come from the map (see docs)
            patch.clc43 = labels_from_reference_map(patch.reference_map)
        return patch

    def label_sets(self, modalities: Sequence[str]) -> list[str]:
        return ["clc43", "clc19"] if "reference-map" in modalities else ["clc19"]

    def official_split(self) -> OfficialSplit:
        return OfficialSplit("BigEarthNet v2.0 metadata.parquet split column", column="meta/official_split",
                             values={"train": "train", "val": "validation", "test": "test"})
