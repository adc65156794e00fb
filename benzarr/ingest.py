"""Archive -> store: parallel, resumable, validated.

Rows are the archive's patches in sorted name order. They are cut into shards of
``shard_size`` rows; each task reads one shard's patches with rasterio and writes that shard
of every array (band shards, label and metadata chunks, the shard's band statistics), and
only then sets ``ingest/done[shard]``. No two processes ever write the same file, a killed
run leaves only unfinished shards to redo, and the finished store does not depend on the
number of workers.

A bad patch (unreadable or missing band, wrong shape or dtype, missing or malformed JSON,
unknown label) is recorded in ``meta/valid``/``meta/error`` and its row left zero; every
other patch is ingested exactly. With ``strict=True`` the first bad patch stops the run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from benzarr.archive import GDAL_ENV, clc43_to_clc19, discover_patches, find_archive_root, read_patch
from benzarr.bigearthnet import BAND_GROUPS, CLC19, CLC43
from benzarr.errors import (
    BadPatchError,
    InvalidArgumentError,
    NotAnArchiveError,
    StoreExistsError,
    StoreIncompleteError,
    StoreNotFoundError,
    StoreParametersError,
)
from benzarr.resources import OFFICIAL_LISTS, read_official_list
from benzarr.store import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_SHARD_SIZE,
    DONE_ARRAY,
    LABEL_ARRAYS,
    S2_ARRAYS,
    STATS_ARRAY,
    Store,
    combine_band_stats,
    create_store,
    drop_staging,
    finalize_rows,
    open_store,
    remove_store,
    shard_band_stats,
    stage_path,
    store_exists,
)

#: Names accepted by ``exclude`` besides files: the official lists shipped with benzarr.
OFFICIAL_EXCLUDES = ("cloud-shadow", "seasonal-snow", "no-clc19")


@dataclass
class IngestResult:
    """What an ingest did.

    Attributes:
        store: path of the store.
        n_patches: rows in the store.
        failed: bad patches, name -> reason (also stored in the store).
        shards_total: shards in the store.
        shards_written: shards written by this run (fewer than total when resuming).
        resumed: True when an incomplete store was continued.
        seconds: wall time of this run.
        not_in_archive: names from ``patches`` that the archive does not hold.
        excluded: patches left out by ``exclude``.
    """

    store: str
    n_patches: int
    failed: dict[str, str]
    shards_total: int
    shards_written: int
    resumed: bool
    seconds: float
    not_in_archive: list[str] = field(default_factory=list)
    excluded: int = 0


def read_name_file(source: str | Path) -> list[str]:
    """Patch names from an official list name (``cloud-shadow``, ``seasonal-snow``) or a
    file with one name per line (blank lines and ``#`` comments ignored; a CSV's first
    column is used).

    Raises:
        InvalidArgumentError: neither an official list nor a readable file.
    """
    text = str(source)
    if text in OFFICIAL_LISTS and not Path(text).exists():
        return list(read_official_list(text))
    path = Path(text)
    if not path.is_file():
        raise InvalidArgumentError(
            f"{text}: no such file (or official list: {', '.join(OFFICIAL_EXCLUDES)})"
        )
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split(",", 1)[0].strip())
    return names


def _names_digest(names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def plan_patches(
    archive: str | Path,
    exclude: Sequence[str | Path] = (),
    patches: str | Path | None = None,
) -> tuple[Path, list[str], list[str], int]:
    """Decide which patches an ingest writes.

    Returns:
        ``(archive root, sorted names to ingest, names of ``patches`` missing from the
        archive, number excluded)``.
    """
    root = find_archive_root(archive)
    names = discover_patches(root)
    missing: list[str] = []
    if patches is not None:
        wanted = set(read_name_file(patches))
        available = set(names)
        missing = sorted(wanted - available)
        names = [name for name in names if name in wanted]
    excluded: set[str] = set()
    for source in exclude:
        excluded.update(read_name_file(source))
    before = len(names)
    names = [name for name in names if name not in excluded]
    if not names:
        raise NotAnArchiveError(f"{archive}: no patches left to ingest after --patches/--exclude")
    return root, names, missing, before - len(names)


# -- worker side -----------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _worker_init() -> None:
    # One GDAL environment for the worker's life: cheaper than one per file.
    env = rasterio.Env(**GDAL_ENV)
    env.__enter__()
    _WORKER_STATE["env"] = env


def _worker_store(path: str) -> Store:
    cached = _WORKER_STATE.get("store")
    if cached is None or cached.path != path:
        cached = open_store(path, mode="r+", require_complete=False)
        _WORKER_STATE["store"] = cached
    return cached


def ingest_shard(store_path: str, root: str, shard: int, names: Sequence[str], start: int,
                 strict: bool) -> dict[str, str]:
    """Read ``names`` (rows ``start``…) and write shard ``shard`` of every array.

    Returns:
        the shard's bad patches, name -> reason.

    Raises:
        BadPatchError: on the first bad patch when ``strict``.
    """
    if "env" not in _WORKER_STATE:
        _worker_init()
    store = _worker_store(store_path)
    n = len(names)
    bands = {g: np.zeros((n, len(b), s, s), dtype=np.uint16) for g, (b, s, _) in BAND_GROUPS.items()}
    clc43 = np.zeros((n, len(CLC43)), dtype=np.uint8)
    tile_source = np.full(n, "", dtype=object)
    error = np.full(n, "", dtype=object)
    acquisition = np.zeros(n, dtype=np.int64)
    bounds = np.zeros((n, 4), dtype=np.float64)
    epsg = np.zeros(n, dtype=np.int32)
    valid = np.zeros(n, dtype=bool)
    failed: dict[str, str] = {}
    for i, name in enumerate(names):
        try:
            patch = read_patch(root, name)
        except BadPatchError as exc:
            if strict:
                raise
            failed[name] = exc.reason
            error[i] = exc.reason
            continue
        for group, data in patch.bands.items():
            bands[group][i] = data
        clc43[i] = patch.clc43
        tile_source[i] = patch.tile_source
        acquisition[i] = patch.acquisition_time
        bounds[i] = patch.bounds
        epsg[i] = patch.epsg
        valid[i] = True

    stop = start + n
    if "s2" in store.attrs["modalities"]:
        for group, data in bands.items():
            store.array(S2_ARRAYS[group])[start:stop] = data
    rows = {
        LABEL_ARRAYS["clc43"]: clc43,
        LABEL_ARRAYS["clc19"]: clc43_to_clc19(clc43),
        "meta/tile_source": tile_source,
        "meta/error": error,
        "meta/acquisition_time": acquisition,
        "meta/bounds": bounds,
        "meta/epsg": epsg,
        "meta/valid": valid,
    }
    for path, data in rows.items():
        store.array(stage_path(path))[start:stop] = data
    store.array(STATS_ARRAY)[shard] = shard_band_stats({g: d[valid] for g, d in bands.items()})
    # Written last: the shard counts as done only once everything above is on disk.
    store.array(DONE_ARRAY)[shard] = True
    return failed


# -- driver ----------------------------------------------------------------------------


def _prepare_store(store_path: str, names: list[str], params: dict[str, Any], shard_size: int,
                   compression: str, overwrite: bool) -> tuple[Store, bool]:
    """Create, resume or refuse the store at ``store_path``; returns (store, resumed)."""
    if store_exists(store_path):
        try:
            existing = open_store(store_path, mode="r+", require_complete=False)
        except StoreNotFoundError:
            if not overwrite:
                raise StoreExistsError(
                    f"{store_path}: a Zarr store that is not a benzarr store is there; "
                    "choose another path or pass --overwrite to replace it"
                ) from None
            existing = None
        if existing is not None and not overwrite:
            if existing.complete:
                raise StoreExistsError(
                    f"{store_path}: a complete store is already there; pass --overwrite to replace it"
                )
            if existing.attrs.get("ingest") != params:
                raise StoreParametersError(
                    f"{store_path}: an incomplete store written with other ingest parameters is there; "
                    "resume it with the same arguments, or pass --overwrite to start again"
                )
            if existing.attrs.get("layout_complete"):
                return existing, True
        remove_store(store_path)
    elif Path(store_path).exists() and any(Path(store_path).iterdir()):
        if not overwrite:
            raise StoreExistsError(f"{store_path}: exists and is not empty; pass --overwrite to replace it")
        remove_store(store_path)
    store = create_store(store_path, names, shard_size=shard_size, compression=compression,
                         source={"dataset": "BigEarthNet", "version": "1.0", "modality": "S2"},
                         ingest=params)
    return store, False


def ingest(
    archive: str | Path,
    store_path: str | Path,
    *,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compression: str = DEFAULT_COMPRESSION,
    exclude: Sequence[str | Path] = (),
    patches: str | Path | None = None,
    strict: bool = False,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_bad_patch: Callable[[str, str], None] | None = None,
) -> IngestResult:
    """Ingest a BigEarthNet v1.0 S2 archive into a store (create or resume).

    Args:
        archive: folder of patch folders, or the folder holding ``BigEarthNet-v1.0/``.
        store_path: where the store goes.
        workers: processes (default: CPU count); 1 runs in this process.
        shard_size: patches per shard (power of two).
        compression: ``none``, ``lz4`` or ``zstd`` for the band arrays.
        exclude: official list names (``cloud-shadow``, ``seasonal-snow``) or files of names.
        patches: a file of names: ingest only those.
        strict: stop at the first bad patch (raises BadPatchError).
        overwrite: replace a store already at ``store_path``.
        on_start: called once with the number of patches to ingest.
        on_progress: called with the number of patches finished, shard by shard.
        on_bad_patch: called with (name, reason) for each bad patch as shards finish.

    Returns:
        An :class:`IngestResult`; bad patches are in ``failed`` (the CLI exits 2).

    Raises:
        ArchiveNotFoundError, NotAnArchiveError, StoreExistsError, StoreParametersError,
        StoreVersionError, BadPatchError (strict only).
    """
    started = time.perf_counter()
    if compression not in COMPRESSIONS:
        raise InvalidArgumentError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    if shard_size < 1 or shard_size & (shard_size - 1):
        raise InvalidArgumentError(f"--shard-size must be a power of two, got {shard_size}")
    workers = max(1, workers or os.cpu_count() or 1)
    root, names, missing, n_excluded = plan_patches(archive, exclude, patches)
    store_path = str(store_path)
    # Everything that decides the store's contents; a resume must match it exactly.
    params = {
        "archive": str(root.resolve()),
        "shard_size": shard_size,
        "compression": compression,
        "exclude": [str(Path(e).resolve()) if Path(e).is_file() else str(e) for e in exclude],
        "patches": None if patches is None else str(Path(patches).resolve()),
        "n_patches": len(names),
        "names_sha256": _names_digest(names),
        "n_excluded": n_excluded,
    }
    store, resumed = _prepare_store(store_path, names, params, shard_size, compression, overwrite)

    if on_start:
        on_start(len(names))
    done = np.asarray(store.array(DONE_ARRAY)[:], dtype=bool)
    tasks = [
        (shard, names[shard * shard_size:(shard + 1) * shard_size], shard * shard_size)
        for shard in range(store.n_shards)
        if not done[shard]
    ]
    if on_progress and done.any():
        on_progress(sum(len(names[s * shard_size:(s + 1) * shard_size]) for s in np.flatnonzero(done)))

    def finished(shard_names: Sequence[str], failed: dict[str, str]) -> None:
        if on_bad_patch:
            for name, reason in failed.items():
                on_bad_patch(name, reason)
        if on_progress:
            on_progress(len(shard_names))

    if workers == 1 or len(tasks) <= 1:
        for shard, shard_names, start in tasks:
            finished(shard_names, ingest_shard(store_path, str(root), shard, shard_names, start, strict))
    else:
        # spawn: zarr keeps an event-loop thread that a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context,
                                 initializer=_worker_init) as pool:
            futures = {
                pool.submit(ingest_shard, store_path, str(root), shard, shard_names, start, strict): shard_names
                for shard, shard_names, start in tasks
            }
            pending = set(futures)
            try:
                while pending:
                    complete, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in complete:
                        finished(futures[future], future.result())
            except BrokenProcessPool:
                raise StoreIncompleteError(
                    f"{store_path}: an ingest worker died; finished shards are kept, "
                    "run the same command again to resume"
                ) from None
            except BaseException:
                for future in pending:
                    future.cancel()
                raise

    return _finalize(store, time.perf_counter() - started, len(tasks), resumed, missing, n_excluded)


def _finalize(store: Store, seconds: float, written: int, resumed: bool, missing: list[str],
              n_excluded: int) -> IngestResult:
    """Combine statistics, record failures and mark the store complete (written last)."""
    finalize_rows(store)
    per_shard = np.asarray(store.array(STATS_ARRAY)[:], dtype=np.float64)
    failed = store.failed()
    clc19 = store.labels("clc19")
    valid = store.valid_mask()
    no_clc19 = int((valid & (clc19.sum(axis=1) == 0)).sum())
    store.update_attrs(
        stats={"s2": combine_band_stats(per_shard)},
        n_failed=len(failed),
        n_without_clc19=no_clc19,
        label_counts={
            "clc43": dict(zip(CLC43, map(int, store.labels("clc43")[valid].sum(axis=0, dtype=np.int64)))),
            "clc19": dict(zip(CLC19, map(int, clc19[valid].sum(axis=0, dtype=np.int64)))),
        },
        complete=True,
    )
    drop_staging(store)
    return IngestResult(
        store=store.path,
        n_patches=store.n_patches,
        failed=failed,
        shards_total=store.n_shards,
        shards_written=written,
        resumed=resumed,
        seconds=seconds,
        not_in_archive=missing,
        excluded=n_excluded,
    )
