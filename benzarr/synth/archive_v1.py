"""The v1.0 archive writers: BigEarthNet-S2 patch folders with their labels JSON, and the S2 + S1 download root.

An archive written here has the real v1.0 layout, file for file (folder and file names from
:mod:`benzarr.sources.ben_v1`)::

    OUT/S2A_MSIL2A_20170613T101031_87_48/
        S2A_MSIL2A_20170613T101031_87_48_B01.tif   20 x 20 px, 60 m
        ... _B02 _B03 _B04 _B08.tif                120 x 120 px, 10 m
        ... _B05 _B06 _B07 _B8A _B11 _B12.tif      60 x 60 px, 20 m
        ... _B09.tif                               20 x 20 px, 60 m
        S2A_MSIL2A_20170613T101031_87_48_labels_metadata.json

Every band is a single-band uint16 GeoTIFF (reflectance x 10,000) in WGS 84 / UTM
(EPSG 326xx), uncompressed strips, no nodata, laid out byte for byte as GDAL writes
BigEarthNet's files; all bands of a patch cover the same 1200 m x 1200 m square, given in
the JSON's ``coordinates`` (ints, metres). The JSON has the real keys: ``labels`` (CLC43
names in official order), ``coordinates``, ``projection`` (WKT), ``tile_source`` and
``acquisition_date``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benzarr.bigearthnet import CLC43, format_s1_name
from benzarr.sources.ben_v1 import V1_S1_FOLDER, V1_S2_FOLDER, labels_path
from benzarr.synth.labels import synth_labels
from benzarr.synth.pixels import _patch_scene
from benzarr.synth.plan import PATCH_METRES, _plan, _s1_passes, check_plan
from benzarr.synth.s1_maps import synth_patch_s1
from benzarr.synth.writers import (
    _S1_PIXELS,
    _check_workers,
    _os_errors_named,
    _patch_rng,
    _prepare_out,
    _run_jobs,
    _write_bands,
    _write_file,
    utm_wkt,
)

# One patch's job: (index, name, label indices, epsg, ulx, uly, tile_source, acquisition_date)
_Job = tuple[int, str, tuple[int, ...], int, int, int, str, str]


def _write_patch(out: str, seed: int, job: _Job) -> np.ndarray:
    """Write one v1 S2 patch folder; returns its region map (for the S1 twin)."""
    index, name, labels, epsg, ulx, uly, tile_source, acquisition_date = job
    bands, region = _patch_scene(labels, _patch_rng(seed, index))
    _write_bands(os.path.join(out, name), name, bands, epsg, ulx, uly)
    meta = {
        "labels": [CLC43[c] for c in labels],
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lry": uly - PATCH_METRES},
        "projection": utm_wkt(epsg),
        "tile_source": tile_source,
        "acquisition_date": acquisition_date,
    }
    _write_file(str(labels_path(Path(out), name)), json.dumps(meta).encode())
    return region


# A v1 job followed by (S1 patch name, scene_source, acquisition_time).
_JobS1 = tuple[int, str, tuple[int, ...], int, int, int, str, str, str, str, str]


def _write_patch_with_s1(out: str, seed: int, job: _JobS1) -> None:
    """Write one v1 S2 patch under BigEarthNet-v1.0/ and its S1 twin under BigEarthNet-S1-v1.0/."""
    region = _write_patch(os.path.join(out, V1_S2_FOLDER), seed, job[:8])  # type: ignore[arg-type]
    index, name, labels, epsg, ulx, uly = job[:6]
    s1_name, scene_source, acquisition_time = job[8:]
    folder = os.path.join(out, V1_S1_FOLDER, s1_name)
    _write_bands(folder, s1_name, synth_patch_s1(labels, region, _patch_rng(seed, index, _S1_PIXELS)), epsg, ulx, uly)
    meta = {  # the real S1 JSON: same labels as the S2 patch, "lly" for the lower edge
        "labels": [CLC43[c] for c in labels],
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": ulx + PATCH_METRES, "lly": uly - PATCH_METRES},
        "projection": utm_wkt(epsg),
        "corresponding_s2_patch": name,
        "scene_source": scene_source,
        "acquisition_time": acquisition_time,
    }
    _write_file(str(labels_path(Path(out, V1_S1_FOLDER), s1_name)), json.dumps(meta).encode())



def synth_archive(
    out: str | Path,
    n_patches: int,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    s1: bool = False,
) -> list[str]:
    """Write the synthetic BigEarthNet-S2 v1.0 archive ``(n_patches, seed)`` into ``out``.

    Args:
        out: the archive folder; created if missing. It must be empty unless ``overwrite``,
            which removes what synth writes (patch folders, the S1 layout's two folders,
            a v2 layout) already in it, and nothing else, first.
        n_patches: how many patches (13 files each: 12 GeoTIFFs and a JSON).
        seed: any integer >= 0; the same ``(n_patches, seed)`` gives the same bytes whatever
            ``workers`` is.
        workers: processes writing patches; default ``os.cpu_count()``. 1 writes in this
            process.
        progress: called with the number of patches just written, from this process.
        overwrite: replace the patch folders of an existing archive in ``out``.
        s1: write the v1.0 S2 + S1 download layout instead: ``out/BigEarthNet-v1.0/`` holds
            exactly the S2 archive written without ``s1`` (same bytes), and
            ``out/BigEarthNet-S1-v1.0/<s1 name>/`` holds ``<s1 name>_VV.tif``,
            ``<s1 name>_VH.tif`` (float32 dB, 120 x 120, 10 m, the S2 patch's square and
            CRS) and ``<s1 name>_labels_metadata.json`` (keys ``labels``, ``coordinates``
            with ulx/uly/lrx/lly, ``projection``, ``corresponding_s2_patch``,
            ``scene_source``, ``acquisition_time`` as ``2017-06-13T16:50:43``). S1 names
            are ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48``: the S2 patch's tile, row
            and column, an S1 pass up to two days from the S2 one.

    Returns:
        The sorted S2 patch names written (folder names under ``out``, or under
        ``out/BigEarthNet-v1.0`` with ``s1``).

    Raises:
        InvalidArgumentError: bad counts or seed, or ``out`` not empty without ``overwrite``.
    """
    check_plan(n_patches, seed, least=1)  # all of it, before the folder is made
    _check_workers(workers)
    out = Path(out)
    _prepare_out(out, overwrite)
    plan = _plan(int(n_patches), int(seed))
    labels = synth_labels(n_patches, seed)
    acq = plan.acquisitions
    jobs: list = [
        (
            i, name, tuple(np.flatnonzero(labels[i]).tolist()), acq[a].epsg, ulx, uly,
            acq[a].tile_source, acq[a].acquisition_date,
        )
        for i, (name, a, ulx, uly) in enumerate(
            zip(plan.names, plan.acquisition.tolist(), plan.ulx.tolist(), plan.uly.tolist())
        )
    ]
    if s1:
        passes = _s1_passes(int(n_patches), int(seed))
        for i, (name, a) in enumerate(zip(plan.names, plan.acquisition.tolist())):
            row, col = name.rsplit("_", 2)[1:]
            p = passes[a]
            jobs[i] += (format_s1_name(p.product, acq[a].tile, row, col), p.scene_source, p.acquisition_time)
        write = functools.partial(_write_patch_with_s1, str(out), int(seed))
    else:
        write = functools.partial(_write_patch, str(out), int(seed))
    with _os_errors_named(out):
        _run_jobs(write, jobs, workers, progress)
    return list(plan.names)
