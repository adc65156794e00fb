"""Compatibility names: archive reading now lives in :mod:`benzarr.sources`.

``benzarr.sources`` holds the source protocol and registry, ``benzarr.sources.ben_v1`` and
``benzarr.sources.ben_v2`` the BigEarthNet v1.0 and v2.0 sources. The names below keep
working for code written against this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from benzarr.bigearthnet import clc43_to_clc19
from benzarr.sources import GDAL_ENV, MODALITIES, Archive, Patch, PatchRef, get_source, open_archive, read_band
from benzarr.sources._common import labels_from_reference_map, official_names, parse_labels, read_metadata, read_s2_bands, season_of
from benzarr.sources.ben_v1 import V1_S1_FOLDER, V1_S2_FOLDER, discover_patches, find_archive_root, labels_path, read_patch
from benzarr.sources.ben_v2 import V2_METADATA, V2_METADATA_FLAGGED, V2_REFERENCE_MAPS, V2_S1_FOLDER, V2_S2_FOLDER


def read_sample(ref: PatchRef, version: str, modalities: Sequence[str] = ("s2",)) -> Patch:
    """Read one patch with the source registered as ``version`` (``"1"``, ``"v2"``, ...).

    Raises:
        BadPatchError: naming the file and the problem; InvalidArgumentError: unknown source.
    """
    return get_source(version).read(ref, modalities)


__all__ = [
    "GDAL_ENV", "MODALITIES", "V1_S1_FOLDER", "V1_S2_FOLDER", "V2_METADATA", "V2_METADATA_FLAGGED",
    "V2_REFERENCE_MAPS", "V2_S1_FOLDER", "V2_S2_FOLDER", "Archive", "Patch", "PatchRef", "clc43_to_clc19",
    "discover_patches", "find_archive_root", "labels_from_reference_map", "labels_path", "official_names",
    "open_archive", "parse_labels", "read_band", "read_metadata", "read_patch", "read_s2_bands", "read_sample",
    "season_of",
]
