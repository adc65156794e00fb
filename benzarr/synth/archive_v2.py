"""The v2.0 (reBEN) archive writer: tile-product folders of S2, S1 and reference maps, and the two parquet tables.

Folder and file names come from :mod:`benzarr.sources.ben_v2`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benzarr.bigearthnet import (
    CLC19,
    clc43_to_clc19,
    format_s1_name,
    format_v2_patch_name,
    format_v2_tile_product,
)
from benzarr.sources.ben_v2 import (
    REFERENCE_MAP_BAND,
    V2_METADATA,
    V2_METADATA_FLAGGED,
    reference_map_dir,
    s1_dir,
    s2_dir,
)
from benzarr.synth.labels import synth_labels_v2
from benzarr.synth.pixels import _add_cover, _patch_scene
from benzarr.synth.plan import _COUNTRIES, _plan, _s1_passes, check_plan
from benzarr.synth.s1_maps import synth_patch_s1, synth_reference_map
from benzarr.synth.writers import _COVER_PIXELS, _S1_PIXELS, _check_workers, _os_errors_named, _patch_rng, _prepare_out, _run_jobs, _write_bands

# Stream of a seed (spawn key) for the v2 split, flags and covers.
_V2_STREAM = 4
#: Share of v2 patches flagged for seasonal snow or cloud/shadow.
FLAGGED_SHARE = 0.05
#: Split shares of the v2 metadata (train, validation, test), drawn per patch.
SPLIT_SHARES = (0.5, 0.25, 0.25)


# A v2 job: (index, patch_id, tile product, label indices, epsg, ulx, uly, S1 product,
# S1 name, cover: "" | "snow" | "cloud")
_JobV2 = tuple[int, str, str, tuple[int, ...], int, int, int, str, str, str]


def _write_patch_v2(out: str, seed: int, s1: bool, reference_maps: bool, job: _JobV2) -> None:
    """Write one v2 patch: its S2 folder, and its S1 folder and reference map when asked."""
    index, patch_id, product, labels, epsg, ulx, uly, s1_product, s1_name, cover = job
    bands, region = _patch_scene(labels, _patch_rng(seed, index))
    if cover:
        _add_cover(bands, cover, _patch_rng(seed, index, _COVER_PIXELS))
    _write_bands(str(s2_dir(Path(out), patch_id)), patch_id, bands, epsg, ulx, uly)
    if s1:
        s1_bands = synth_patch_s1(labels, region, _patch_rng(seed, index, _S1_PIXELS))
        _write_bands(str(s1_dir(Path(out), s1_name)), s1_name, s1_bands, epsg, ulx, uly)
    if reference_maps:
        ref = {REFERENCE_MAP_BAND: synth_reference_map(labels, region)}
        _write_bands(str(reference_map_dir(Path(out), patch_id)), patch_id, ref, epsg, ulx, uly)



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
        product = format_v2_tile_product(acq.satellite, acq.stamp, acq.orbit, acq.tile)
        rows.append((format_v2_patch_name(product, row, col), product, name, s1.product,
                     format_s1_name(s1.product, acq.tile, row, col),
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
    check_plan(n_patches, seed, least=1)  # all of it, before the folder is made
    _check_workers(workers)
    out = Path(out)
    _prepare_out(out, overwrite)
    plan = _plan_v2(int(n_patches), int(seed))
    write = functools.partial(_write_patch_v2, str(out), int(seed), bool(s1), bool(reference_maps))
    with _os_errors_named(out):
        _run_jobs(write, plan.jobs, workers, progress)
        _write_metadata(out, plan)
    return list(plan.patch_ids)
