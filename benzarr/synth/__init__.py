"""Synthetic BigEarthNet archives: the embedded default for demos, tests and benchmarks.

Three layouts, written with the folder and file names of the archive sources that read them
(:mod:`benzarr.sources.ben_v1`, :mod:`benzarr.sources.ben_v2`): the BigEarthNet-S2 v1.0
archive (:func:`synth_archive`), the v1.0 S2 + S1 download root (``synth_archive(...,
s1=True)``: ``BigEarthNet-v1.0/`` and ``BigEarthNet-S1-v1.0/``) and BigEarthNet v2.0 / reBEN
(:func:`synth_archive_v2`: tile-product folders of S2, S1 and reference maps, and
``metadata.parquet``). A labels-only store (:func:`synth_labels_store`) serves the split
benchmark.

One module per job:

- :mod:`.labels`: label sampling (:func:`synth_labels`, :func:`synth_labels_v2`);
- :mod:`.plan`: names and places (acquisitions, tiles, cells, S1 passes; :func:`synth_patch_names`);
- :mod:`.pixels`: S2 pixel painting (:func:`synth_patch_bands`, :func:`class_signatures`, clouds and snow);
- :mod:`.s1_maps`: Sentinel-1 backscatter and reference maps, painted by the same regions;
- :mod:`.writers`, :mod:`.archive_v1`, :mod:`.archive_v2`: the archive writers;
- :mod:`.labels_store`: the labels-only store writer;
- :mod:`.sizes`: size helpers (:func:`tree_footprint`, :func:`archive_footprint`).

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
  Sentinel-1 patches (:func:`synth_patch_s1`) and reference maps
  (:func:`synth_reference_map`) are painted by the same regions, so every modality carries
  the label signal.

Determinism: patch ``i`` (in sorted-name order) draws its pixels from
``SeedSequence([seed, i])``; names and labels come from their own streams of ``seed``. The
same ``(n_patches, seed)`` gives the same bytes whatever the number of workers.
"""

from __future__ import annotations

from benzarr.sources.ben_v1 import V1_S1_FOLDER, V1_S2_FOLDER
from benzarr.sources.ben_v2 import (
    REFERENCE_MAP_BAND as REFERENCE_MAP_SUFFIX,
    V2_METADATA,
    V2_METADATA_FLAGGED,
    V2_REFERENCE_MAPS as V2_REFERENCE_FOLDER,
    V2_S1_FOLDER,
    V2_S2_FOLDER,
)
from benzarr.synth.archive_v1 import synth_archive
from benzarr.synth.archive_v2 import FLAGGED_SHARE, SPLIT_SHARES, _plan_v2, synth_archive_v2
from benzarr.synth.labels import MAX_LABELS, MIN_LABELS, synth_labels, synth_labels_v2
from benzarr.synth.labels_store import synth_labels_store
from benzarr.synth.pixels import class_signatures, synth_patch_bands
from benzarr.synth.plan import PATCH_METRES, PATCHES_PER_ACQUISITION, TILE_CELLS, synth_patch_names
from benzarr.synth.s1_maps import S1_LOOKS, s1_signatures, synth_patch_s1, synth_reference_map
from benzarr.synth.sizes import archive_footprint, tree_footprint
from benzarr.synth.writers import utm_wkt

#: Bumped whenever the bytes written for a given (n_patches, seed) change.
SYNTH_VERSION = 1

__all__ = [
    "FLAGGED_SHARE", "MAX_LABELS", "MIN_LABELS", "PATCHES_PER_ACQUISITION", "PATCH_METRES", "REFERENCE_MAP_SUFFIX",
    "S1_LOOKS", "SPLIT_SHARES", "SYNTH_VERSION", "TILE_CELLS", "V1_S1_FOLDER", "V1_S2_FOLDER", "V2_METADATA",
    "V2_METADATA_FLAGGED", "V2_REFERENCE_FOLDER", "V2_S1_FOLDER", "V2_S2_FOLDER", "_plan_v2", "archive_footprint",
    "class_signatures", "s1_signatures", "synth_archive", "synth_archive_v2", "synth_labels", "synth_labels_store",
    "synth_labels_v2", "synth_patch_bands", "synth_patch_names", "synth_patch_s1", "synth_reference_map",
    "tree_footprint", "utm_wkt",
]
