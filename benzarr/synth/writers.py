"""What every synthetic archive writer shares: GeoTIFF and JSON files, per-patch streams, worker pool, output folder.

Folder and file names come from the archive sources (:mod:`benzarr.sources.ben_v1`,
:mod:`benzarr.sources.ben_v2`), so synth writes exactly the layout that ingest reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import numpy as np

from benzarr._geotiff import geotiff_header
from benzarr.bands import S1_BANDS, S2_BANDS
from benzarr.bigearthnet import is_patch_name, is_s1_name, is_v2_patch_name, s1_product, v2_tile_product
from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import MARKER, check_no_foreign, check_output, has_marker, os_error, remove_entries, write_marker
from benzarr.procs import worker_pool
from benzarr.sources import band_file
from benzarr.sources.ben_v1 import LABELS_SUFFIX, V1_S1_FOLDER, V1_S2_FOLDER
from benzarr.sources.ben_v2 import (
    REFERENCE_MAP_BAND,
    V2_METADATA,
    V2_METADATA_FLAGGED,
    V2_REFERENCE_MAPS,
    V2_S1_FOLDER,
    V2_S2_FOLDER,
)
from benzarr.synth.plan import PATCH_METRES

#: What synth writes at the top of an archive besides v1 patch folders (``overwrite`` removes only these).
_LAYOUT_ENTRIES = frozenset({
    V1_S2_FOLDER, V1_S1_FOLDER, V2_S2_FOLDER, V2_S1_FOLDER, V2_REFERENCE_MAPS,
    V2_METADATA, V2_METADATA_FLAGGED,
})
# Spawn keys of a patch's streams other than its S2 pixels, SeedSequence([seed, index]).
_S1_PIXELS, _COVER_PIXELS = 1, 2


_WKT_UTM = (
    'PROJCS["WGS 84 / UTM zone {zone}{hemi}",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
    '6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",'
    '0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",{meridian}],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",{northing}],'
    'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],'
    'AUTHORITY["EPSG","{epsg}"]]'
)


def utm_wkt(epsg: int) -> str:
    """The WKT BigEarthNet's JSON gives for a WGS 84 / UTM code (326xx or 327xx)."""
    north = 32601 <= epsg <= 32660
    if not (north or 32701 <= epsg <= 32760):
        raise InvalidArgumentError(f"not a WGS 84 / UTM EPSG code: {epsg}")
    zone = epsg - (32600 if north else 32700)
    return _WKT_UTM.format(
        zone=zone, hemi="N" if north else "S", meridian=6 * zone - 183,
        northing=0 if north else 10000000, epsg=epsg,
    )



def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_bands(folder: str, name: str, bands: dict[str, np.ndarray], epsg: int, ulx: int, uly: int) -> None:
    """Write ``<folder>/<name>_<band>.tif`` for each band (uint16 or float32, native side)."""
    os.makedirs(folder, exist_ok=True)
    for band, pixels in bands.items():
        pixel_size = PATCH_METRES // pixels.shape[0]
        head = geotiff_header(pixels.shape[0], pixels.shape[1], epsg, ulx, uly, pixel_size, pixels.dtype)
        _write_file(os.path.join(folder, band_file(name, band)), head + pixels.tobytes())


def _patch_rng(seed: int, index: int, stream: int | None = None) -> np.random.Generator:
    key = () if stream is None else (stream,)
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=key))


def _write_chunk(write: Callable[[object], object], jobs: Sequence[object]) -> int:
    """Write a run of patches (runs in a worker process); returns how many."""
    for job in jobs:
        write(job)
    return len(jobs)


def _run_jobs(
    write: Callable[[object], object],
    jobs: Sequence[object],
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    """Call ``write(job)`` for every job, in ``workers`` processes, reporting progress here."""
    workers = workers or os.cpu_count() or 1
    chunk = max(8, min(128, len(jobs) // (workers * 16) or 1))
    chunks = [jobs[s : s + chunk] for s in range(0, len(jobs), chunk)]
    report = progress or (lambda n: None)
    if workers == 1 or len(chunks) <= 1:
        for part in chunks:
            report(_write_chunk(write, part))
        return
    with worker_pool(max_workers=min(workers, len(chunks))) as pool:
        # Keep a bounded number of chunks in flight so progress stays smooth.
        pending = set()
        for part in chunks:
            pending.add(pool.submit(_write_chunk, write, part))
            if len(pending) >= 4 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    report(future.result())
        for future in pending:
            report(future.result())


@contextmanager
def _os_errors_named(out: Path) -> Iterator[None]:
    """OS errors while writing the archive ``out`` (a full disk, say) as one line naming it,
    with a fix that works: the rerun must replace what was written (``--overwrite``)."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, out, "writing the synthetic archive",
                       hint="free space and run the same command with --overwrite") from None


def _check_workers(workers: int | None) -> None:
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InvalidArgumentError(f"workers must be >= 1, got {workers!r}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: new, empty, or (``overwrite``) a synthetic archive whose synth files go.

    Only a folder that synth marked (:func:`benzarr.fsutil.write_marker`) is replaced, and only
    what synth writes in it (patch folders, the v1+S1 and v2 folders and parquet files): other
    files a user put there stay. A real archive, which looks the same but has no marker, is
    never touched.
    """
    state = check_output(out, overwrite=overwrite, owned=lambda path: has_marker(path, "synth"),
                         what="a synthetic archive", command="synth")
    if state == "owned":
        if not overwrite:
            raise InvalidArgumentError(
                f"{out}: a synthetic archive is already there; pass --overwrite to replace it"
                " (your own files in it stay), or choose another folder"
            )
        entries = synth_entries(out)
        check_no_foreign(out, foreign_in_synth_entries(out, entries), "the archive's patch folders")
        remove_entries(out, entries)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "synth")


def synth_entries(out: Path) -> list[str]:
    """The entries of the archive folder ``out`` that synth writes (patch folders, the v1+S1
    and v2 folders and parquet files): what ``--overwrite`` replaces."""
    return sorted(
        entry.name for entry in out.iterdir()
        if (entry.is_dir() and (is_patch_name(entry.name) or entry.name in _LAYOUT_ENTRIES))
        or (entry.is_file() and entry.name in _LAYOUT_ENTRIES)
    )


def foreign_in_synth_archive(out: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` files or folders in the synthetic archive ``out`` that synth did not
    write (paths relative to ``out``): what deleting the whole folder would lose."""
    entries = synth_entries(out)
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in entries and entry.name != MARKER)
    return (others + foreign_in_synth_entries(out, entries, limit))[:limit]


def foreign_in_synth_entries(out: Path, entries: Sequence[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` files or folders under the entries ``entries`` of ``out`` that synth
    does not write (paths relative to ``out``, a folder with a trailing ``/``): what
    ``synth --overwrite`` would delete with them.

    Only the exact layout the writers make passes (:func:`_synth_layout`): in a v1 S2 patch
    folder (at the top, or under ``BigEarthNet-v1.0/``) its 12 band files and its labels
    JSON, in a v1 S1 folder its VV and VH files and labels JSON, in a v2 S2 or S1 folder (under
    its tile or S1 product folder) its band files, in a reference-map folder its map; the two
    parquet files as files. Nothing else passes, however it is named (``<patch>_B99.tif``,
    ``<patch>_notes.json``), and never a symlink: a user's files there went with the folders.
    """
    found: list[str] = []
    for name in entries:
        _foreign_below(out, Path(name), _synth_layout(name), found, limit)
        if len(found) >= limit:
            break
    return found[:limit]


# What synth writes, level by level: ("files", names) for a patch folder (``{}`` is the
# folder's name), ("dirs", accepts(parent, name), the layout of each child folder accepted),
# ("file",) for a file, ("nothing",) for what synth never writes.
_FILE, _NOTHING = ("file",), ("nothing",)
_S2_FILES = tuple(band_file("{}", band) for band in S2_BANDS)
_S1_FILES = tuple(band_file("{}", band) for band in S1_BANDS)
_V1_S2_PATCH = ("files", (*_S2_FILES, "{}" + LABELS_SUFFIX))


def _v2_tile_product(parent: str, name: str) -> bool:
    return is_v2_patch_name(f"{name}_0_0") and v2_tile_product(f"{name}_0_0") == name


def _v2_patch_of(product: str, name: str) -> bool:
    return is_v2_patch_name(name) and v2_tile_product(name) == product


def _s1_product(parent: str, name: str) -> bool:
    return is_s1_name(f"{name}_00AAA_0_0") and s1_product(f"{name}_00AAA_0_0") == name


def _s1_patch_of(product: str, name: str) -> bool:
    return is_s1_name(name) and s1_product(name) == product


_LAYOUTS: dict[str, tuple] = {
    V1_S2_FOLDER: ("dirs", lambda parent, name: is_patch_name(name), _V1_S2_PATCH),
    V1_S1_FOLDER: ("dirs", lambda parent, name: is_s1_name(name), ("files", (*_S1_FILES, "{}" + LABELS_SUFFIX))),
    V2_S2_FOLDER: ("dirs", _v2_tile_product, ("dirs", _v2_patch_of, ("files", _S2_FILES))),
    V2_S1_FOLDER: ("dirs", _s1_product, ("dirs", _s1_patch_of, ("files", _S1_FILES))),
    V2_REFERENCE_MAPS: ("dirs", _v2_tile_product,
                        ("dirs", _v2_patch_of, ("files", (band_file("{}", REFERENCE_MAP_BAND),)))),
    V2_METADATA: _FILE,
    V2_METADATA_FLAGGED: _FILE,
}


def _synth_layout(name: str) -> tuple:
    """What synth writes under the top-level entry ``name`` of an archive (see :data:`_LAYOUTS`)."""
    return _LAYOUTS.get(name, _V1_S2_PATCH if is_patch_name(name) else _NOTHING)


def _foreign_below(out: Path, rel: Path, layout: tuple, found: list[str], limit: int) -> None:
    """Add to ``found`` (up to ``limit``) what at ``out/rel`` does not fit ``layout``: a file
    by its path, a folder by the files in it (or itself, ``rel/``, when empty), a symlink
    (never synth's) as it is."""
    if len(found) >= limit:
        return
    path, kind = out / rel, layout[0]
    if path.is_symlink() or not path.is_dir():
        if path.is_symlink() or not (kind == "file" and path.is_file()):
            found.append(str(rel))
        return
    entries = sorted(os.listdir(path))
    if kind in ("file", "nothing"):  # a folder where synth writes none
        if not entries:
            found.append(f"{rel}/")
        for entry in entries:
            _foreign_below(out, rel / entry, _NOTHING, found, limit)
        return
    allowed = {pattern.format(path.name) for pattern in layout[1]} if kind == "files" else set()
    for entry in entries:
        if kind == "files":
            child_layout = _FILE if entry in allowed else _NOTHING
        else:
            child_layout = layout[2] if layout[1](path.name, entry) else _NOTHING
        _foreign_below(out, rel / entry, child_layout, found, limit)
