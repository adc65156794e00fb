"""Archive -> store: parallel, resumable, validated; on one machine or split across many.

Rows are the archive's patches in sorted name order. They are cut into shards of
``shard_size`` rows; each task reads one shard's patches with rasterio and writes that shard
of every array (band shards, staged label and metadata rows, the shard's statistics), and
only then sets ``ingest/done[shard]``. No two processes ever write the same file, a killed
run leaves only unfinished shards to redo, and the finished store does not depend on the
number of workers. The last step copies the staged rows into the final arrays, stores the
statistics and marks the store complete.

Across machines: ``plan=True`` only creates the layout; ``part=(i, n)`` then writes shard
group ``i`` of ``n`` (contiguous ranges of shards) from anywhere that sees the same store
path, concurrently; whichever part finds every shard done finishes the store.

A bad patch (unreadable or missing file, wrong shape or dtype, missing or malformed JSON,
unknown label, missing S1 pair) is recorded in ``meta/valid``/``meta/error`` and its row left
zero; every other patch is ingested exactly. With ``strict=True`` the first bad patch stops
the run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benzarr.bands import BAND_GROUPS, MODALITIES, S1_BANDS, parse_modalities
from benzarr.errors import (
    BadPatchError,
    InvalidArgumentError,
    NotAnArchiveError,
    StoreExistsError,
    StoreIncompleteError,
    StoreNotFoundError,
    StoreParametersError,
    StoreVersionError,
    some_of,
)
from benzarr.fsutil import check_disjoint, check_no_foreign, check_output, foreign_files, is_benzarr_store, os_error, read_utf8
from benzarr.lock import finalize_lock, ingest_lock
from benzarr.procs import worker_pool
from benzarr.resources import OFFICIAL_LISTS, read_official_list
from benzarr.sources import GDAL_ENV, Archive, ArchiveSource, PatchRef, _files, get_source, open_archive
from benzarr.store import (
    BAND_ARRAYS,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    DEFAULT_SHARD_SIZE,
    DONE_ARRAY,
    ERROR_ARRAY,
    MAX_SHARD_SIZE,
    PATCH_FIELDS,
    REFERENCE_MAP_ARRAY,
    S1_ARRAY,
    S1_STATS_ARRAY,
    S2_ARRAYS,
    STATS_ARRAY,
    VALID_ARRAY,
    Store,
    channel_stats,
    combine_band_stats,
    create_store,
    empty_rows,
    finalize_rows,
    is_url,
    open_store,
    remote_failure,
    remove_store,
    shard_band_stats,
    store_exists,
    sweep_staging,
)

#: Names accepted by ``exclude`` besides files: the official lists shipped with benzarr.
OFFICIAL_EXCLUDES = ("cloud-shadow", "seasonal-snow", "no-clc19")
#: What to do after a full disk during an ingest.
RESUME_HINT = "free space and run the same command to resume"


@dataclass
class IngestResult:
    """What an ingest did.

    Attributes:
        store: path of the store.
        n_patches: rows in the store.
        failed: bad patches, name -> reason (also stored in the store); complete stores only.
        shards_total: shards in the store.
        shards_written: shards written by this run (fewer than total when resuming).
        patches_written: patches in those shards (what this run's speed is measured in).
        resumed: True when an incomplete store was continued (with ``part``: when that part had
            begun, some of its shards written by an earlier run).
        seconds: wall time of this run.
        complete: the store is complete after this run (False after ``plan`` or a part
            that left other parts' shards undone).
        version: archive version (``"1"``/``"2"``); modalities: what the store holds.
        not_in_archive: names from ``patches`` that the archive does not hold.
        excluded: patches left out by ``exclude``.
        missing_parts: with ``parts``, the part numbers not finished yet.
        already_complete: the store was complete with these parameters before this run,
            which did nothing.
    """

    store: str
    n_patches: int
    failed: dict[str, str]
    shards_total: int
    shards_written: int
    resumed: bool
    seconds: float
    complete: bool = True
    version: str = "1"
    modalities: list[str] = field(default_factory=lambda: ["s2"])
    not_in_archive: list[str] = field(default_factory=list)
    excluded: int = 0
    missing_parts: list[int] = field(default_factory=list)
    already_complete: bool = False
    patches_written: int = 0


def _official_list(source: str | Path) -> str | None:
    """The official list ``source`` names (``cloud-shadow``, ...), or None: a file of that
    name in the working folder wins over the list."""
    text = str(source)
    return text if text in OFFICIAL_LISTS and not Path(text).exists() else None


def read_name_file(source: str | Path, option: str = "--exclude") -> list[str]:
    """Patch names from an official list name (``cloud-shadow``, ``seasonal-snow``,
    ``no-clc19``) or a file with one name per line (blank lines and ``#`` comments ignored; a
    CSV's first column is used). ``option`` names the option in errors; the official lists
    are offered in them for ``--exclude`` alone (what they are for).

    Raises:
        InvalidArgumentError: neither an official list nor a readable file.
    """
    text = str(source)
    if _official_list(source):
        return list(read_official_list(text))
    path = Path(text)
    if path.is_dir():
        raise InvalidArgumentError(f"{text}: is a folder, not a file of patch names (one a line)")
    if not path.is_file():
        lists = f" or an official list: {', '.join(OFFICIAL_EXCLUDES)}" if option == "--exclude" else ""
        raise InvalidArgumentError(f"{text}: no such file ({option} takes a file of patch names{lists})")
    try:
        content = read_utf8(path, "save the list of patch names as UTF-8")
    except OSError as exc:  # named as the list it is, not as "reading the archive"
        raise os_error(exc, path, "reading the list of patch names") from None
    names = []
    for line in content.splitlines():
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
    source: str | None = None,
) -> tuple[Archive, list[str], list[str], int]:
    """Decide which patches an ingest writes.

    Returns:
        ``(archive, sorted names to ingest, names of ``patches`` missing from the archive,
        number excluded)``.
    """
    found = open_archive(archive, source)
    names = found.names
    missing: list[str] = []
    if patches is not None:
        wanted = set(read_name_file(patches, "--patches"))
        missing = sorted(wanted - set(names))
        names = [name for name in names if name in wanted]
    excluded: set[str] = set()
    for item in exclude:
        excluded |= _excluded_by(found, item)
    before = len(names)
    names = [name for name in names if name not in excluded]
    if not names:
        if patches is not None and before == 0:  # say which file, and what it held
            shown = some_of([repr(n) for n in missing]) or "no names"
            raise NotAnArchiveError(f"{archive}: none of the {len(wanted):,} names in --patches {patches} is a patch "
                                    f"of the archive ({shown})")
        raise NotAnArchiveError(f"{archive}: no patches left to ingest after --patches/--exclude")
    return found, names, missing, before - len(names)


#: The official lists whose patches a v2 archive flags itself (metadata parquet columns).
_FLAGGED_BY = {"cloud-shadow": "cloud", "seasonal-snow": "snow"}


def _excluded_by(found: Archive, item: str | Path) -> set[str]:
    """The patches of ``found`` that ``--exclude item`` names: by name, or a v2 patch by its
    v1 name (the official lists name v1 patches), and for ``cloud-shadow``/``seasonal-snow``
    also every patch the archive's own tables flag so. Warns when it names none: a list of
    other names excluded nothing, silently (a v2 archive's patch ids never match the lists)."""
    listed = set(read_name_file(item))
    by_v1 = {ref.v1_name: name for name, ref in found.refs.items() if ref.v1_name}
    names = {name for name in listed if name in found.refs} | {by_v1[n] for n in listed & by_v1.keys()}
    flag = _FLAGGED_BY.get(_official_list(item) or "")
    if flag is not None:
        names |= {name for name, ref in found.refs.items() if getattr(ref, flag)}
    if listed and not names:
        warnings.warn(f"--exclude {item}: none of its {len(listed):,} names is a patch of {found.path} "
                      f"(e.g. {sorted(listed)[0]}), so it excludes nothing", stacklevel=2)
    return names


def part_shards(part: int, parts: int, n_shards: int) -> range:
    """Shards of part ``part`` (1-based) of ``parts``: contiguous, as even as possible."""
    return range((part - 1) * n_shards // parts, part * n_shards // parts)


def parse_part(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); raises InvalidArgumentError otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InvalidArgumentError(f"--part {text!r}: write it as I/N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise InvalidArgumentError(f"--part {text!r}: I must be between 1 and N")
    return i, n


#: Runs shard tasks on another executor than the process pool (``ingest(runner=...)``, e.g.
#: :func:`benzarr.dask_ingest.dask_runner`): called with :func:`ingest_shard` and one argument
#: tuple per shard to write, it yields ``(index in that list, ingest_shard's result)`` as tasks finish.
ShardRunner = Callable[[Callable[..., dict[str, str]], list[tuple[Any, ...]]], Iterable[tuple[int, dict[str, str]]]]


# -- worker side -----------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _worker_init() -> None:
    """The initializer of the pool's worker processes (never run in the caller's process: the
    environment is not left)."""
    # One GDAL environment for the worker's life: cheaper than one per file.
    import rasterio  # here, not at import: a CLI call that reads no GeoTIFF starts 0.3 s sooner

    env = rasterio.Env(**GDAL_ENV)
    env.__enter__()
    _WORKER_STATE["env"] = env


def _worker_store(path: str, storage_options: dict[str, Any] | None, run: str) -> Store:
    """The store a worker writes, opened once per ingest run. Not once per path: a Store keeps
    its arrays' metadata, and a store replaced at the same path (``--overwrite`` with another
    shard size, in the same Python process or on a long-lived Dask worker) would get shards laid
    out for the old one's grid, unreadable."""
    cached = _WORKER_STATE.get("store")
    if cached is None or _WORKER_STATE.get("run") != (path, run):
        cached = open_store(path, mode="r+", require_complete=False, storage_options=storage_options)
        _WORKER_STATE["store"], _WORKER_STATE["run"] = cached, (path, run)
    return cached


def ingest_shard(store_path: str, storage_options: dict[str, Any] | None, source: ArchiveSource,
                 modalities: Sequence[str], shard: int, refs: Sequence[PatchRef], start: int,
                 strict: bool, archive_files: dict[str, Any] | None = None, run: str = "") -> dict[str, str]:
    """Read ``refs`` (rows ``start``…) and write shard ``shard`` of every array.

    ``archive_files``: where the refs' files lie in the archive's tar files
    (:func:`benzarr.sources._files.export`), or None for an archive of folders.
    ``run``: the ingest run's token; a worker reopens the store when it changes.

    Returns:
        the shard's bad patches, name -> reason.

    Raises:
        BadPatchError: on the first bad patch when ``strict``.
    """
    import rasterio  # here, not at import: a CLI call that reads no GeoTIFF starts 0.3 s sooner

    store = _worker_store(store_path, storage_options, run)
    n = len(refs)
    # Every array of the shard, allocated from the store's declaration (BAND_ARRAYS, ROW_FIELDS).
    images = {path: np.zeros((n, *spec.row_shape), dtype=spec.dtype)
              for path, spec in BAND_ARRAYS.items() if spec.modality in modalities}
    rows = empty_rows(n)
    bands = {group: images[S2_ARRAYS[group]] for group in BAND_GROUPS}
    s1, reference_map = images.get(S1_ARRAY), images.get(REFERENCE_MAP_ARRAY)
    errors, valid = rows[ERROR_ARRAY], rows[VALID_ARRAY]
    columns = [(rows[path], attr) for path, attr in PATCH_FIELDS]
    failed: dict[str, str] = {}
    # The GDAL environment of a pool worker (_worker_init) or of _run_shards; else (a direct
    # call) one for this task, left at its end: the caller's process keeps its own settings.
    env = nullcontext() if rasterio.env.hasenv() else rasterio.Env(**GDAL_ENV)
    # a tar archive: this shard's byte ranges, read with pread, served (and its file open) for this task only
    with env, _files.installed(archive_files):
        for i, ref in enumerate(refs):
            try:
                patch = source.read(ref, modalities)
            except BadPatchError as exc:
                if strict:
                    raise
                failed[ref.name] = exc.reason
                errors[i] = exc.reason
                continue
            for group, data in patch.bands.items():
                bands[group][i] = data
            if s1 is not None:
                s1[i] = patch.s1
            if reference_map is not None:
                reference_map[i] = patch.reference_map
            for column, attr in columns:
                column[i] = getattr(patch, attr)
            valid[i] = True
    _write_shard(store, shard, start, images, rows)
    return failed


def _write_shard(store: Store, shard: int, start: int, images: dict[str, np.ndarray],
                 rows: dict[str, np.ndarray]) -> None:
    """Write one shard of every array: image shards, staged rows, statistics, then ``done``.

    Raises:
        FileSystemError: naming the array being written (full disk, read-only, ...).
    """
    valid = rows[VALID_ARRAY]
    path = ""
    try:
        for path, data in images.items():
            store.write_band_shard(path, shard, data)
        for path, data in rows.items():
            store.write_staged(path, start, data)
        if S1_ARRAY in images:
            path = S1_STATS_ARRAY
            store.array(S1_STATS_ARRAY)[shard] = channel_stats(images[S1_ARRAY][valid])
        path = STATS_ARRAY
        store.array(STATS_ARRAY)[shard] = shard_band_stats({g: images[S2_ARRAYS[g]][valid] for g in BAND_GROUPS})
        # Written last: the shard counts as done only once everything above is stored.
        path = DONE_ARRAY
        store.array(DONE_ARRAY)[shard] = True
    except OSError as exc:  # full disk, read-only file system, ...: name the array being written
        raise os_error(exc, store.local_path(path) or store.path, "writing", RESUME_HINT) from None


# -- driver ----------------------------------------------------------------------------


def _check_target(store_path: str, overwrite: bool) -> str:
    """Refuse a STORE that ingest may not write (a file, under a file, a folder of anything
    but a benzarr store, with or without ``overwrite``); ``"missing"``, ``"empty"`` or
    ``"owned"`` (a benzarr store) otherwise. Writes nothing."""
    if is_url(store_path):
        return "owned"
    try:
        return check_output(store_path, overwrite=overwrite, owned=is_benzarr_store, what="a benzarr store",
                            command="ingest")
    except InvalidArgumentError as exc:  # not ours and no --overwrite: say it as before
        raise StoreExistsError(str(exc)) from None


def _already_complete(store_path: str, params: dict[str, Any], storage_options: dict[str, Any] | None) -> Store | None:
    """The store at ``store_path`` if it is complete and was ingested with ``params``."""
    if not store_exists(store_path, storage_options):
        return None
    try:
        existing = open_store(store_path, require_complete=False, storage_options=storage_options)
    except (StoreNotFoundError, StoreVersionError):
        return None
    return existing if existing.complete and existing.attrs.get("ingest") == params else None


def _prepare_store(store_path: str, names: list[str], params: dict[str, Any], shard_size: int,
                   compression: str, overwrite: bool, modalities: Sequence[str], label_sets: Sequence[str],
                   source: ArchiveSource, storage_options: dict[str, Any] | None) -> tuple[Store, bool]:
    """Create, resume or refuse the store at ``store_path``; returns (store, resumed).

    Called with the store's ingest lock held and after :func:`_check_target`: whatever is
    there is a benzarr store (or nothing, or an empty folder).
    """
    if store_exists(store_path, storage_options):
        try:
            existing = open_store(store_path, mode="r+", require_complete=False, storage_options=storage_options)
        except StoreNotFoundError:
            # a Zarr store that is not benzarr's: only URL stores get here (local ones were refused)
            raise StoreExistsError(
                f"{store_path}: a Zarr store that benzarr did not write is there; choose another path"
            ) from None
        if not overwrite:
            if existing.complete:
                raise StoreExistsError(
                    f"{store_path}: a complete store made with other ingest parameters is there; "
                    "pass --overwrite to replace it, or choose another path"
                )
            if existing.attrs.get("ingest") != params:
                raise StoreParametersError(
                    f"{store_path}: an incomplete store written with other ingest parameters is there; "
                    "resume it with the same arguments, or pass --overwrite to start again"
                )
            if existing.attrs.get("layout_complete"):
                return existing, True
        # --overwrite, or a layout that a killed run left unfinished: start again, but never
        # with files a user keeps inside the store (they would go with it)
        if not is_url(store_path):
            check_no_foreign(store_path, foreign_files(store_path), "the store")
        remove_store(store_path, storage_options)
    modality = "+".join({"s2": "S2", "s1": "S1", "reference-map": "reference maps"}[m] for m in modalities)
    store = create_store(store_path, names, shard_size=shard_size, compression=compression,
                         modalities=modalities, label_sets=label_sets,
                         source={**source.store_source, "modality": modality},
                         ingest=params, storage_options=storage_options)
    return store, False


def check_ingest_arguments(shard_size: int, compression: str, workers: int | None, plan: bool,
                           part: tuple[int, int] | None, parts: int | None = None) -> None:
    """Validate the numeric and choice arguments of :func:`ingest` (before anything is read or written).

    Raises:
        InvalidArgumentError: naming the argument and the allowed values.
    """
    if compression not in COMPRESSIONS:
        raise InvalidArgumentError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    if (isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1
            or shard_size > MAX_SHARD_SIZE or shard_size & (shard_size - 1)):
        raise InvalidArgumentError(
            f"--shard-size must be a power of two from 1 to {MAX_SHARD_SIZE:,}, got {shard_size}"
        )
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InvalidArgumentError(f"--workers must be at least 1 (leave it out for one per core), got {workers}")
    if plan and part is not None:
        raise InvalidArgumentError("--plan and --part are separate steps: plan first, then run each part")
    if parts is not None and (not plan or isinstance(parts, bool) or parts < 1):
        raise InvalidArgumentError(f"--parts goes with --plan and counts the parts that will run (1 or more), "
                                   f"got {'--parts ' + str(parts) if plan else '--parts without --plan'}")


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
    source: str | None = None,
    modalities: Sequence[str] | None = None,
    plan: bool = False,
    parts: int | None = None,
    part: tuple[int, int] | None = None,
    storage_options: dict[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_bad_patch: Callable[[str, str], None] | None = None,
    runner: ShardRunner | None = None,
) -> IngestResult:
    """Ingest an archive of any registered source (BigEarthNet v1 S2, v1 S2+S1, or v2) into a
    store (create or resume).

    (Long for its docstring, which documents every option: the body is about 40 lines, its
    steps in :func:`_ingest_params` and :func:`_ingest_locked`.)

    Args:
        archive: v1 folder of patch folders or download root, or a v2 root.
        store_path: where the store goes: a local path or an ``s3://`` URL.
        workers: processes (default: CPU count); 1 runs in this process.
        shard_size: patches per shard (power of two).
        compression: ``none``, ``lz4`` or ``zstd`` for the band arrays.
        exclude: official list names (``cloud-shadow``, ``seasonal-snow``) or files of names.
        patches: a file of names: ingest only those.
        strict: stop at the first bad patch (raises BadPatchError).
        overwrite: replace a store already at ``store_path``.
        source: a registered source (``v1``, ``v2``, see :mod:`benzarr.sources`) to force the
            archive layout (default: detected).
        modalities: subset of ``s2``, ``s1``, ``reference-map`` (default: all the archive has;
            S2 is always ingested).
        plan: only create the store's layout (for ``part`` runs elsewhere); ``parts`` records
            how many parts will run, so ``benzarr info`` can name the missing ones.
        part: ``(i, n)``: write shard group ``i`` of ``n`` of a planned store.
        storage_options: fsspec options for URL stores (endpoint, credentials).
        on_start: called once with the number of patches this run covers.
        on_progress: called with the number of patches finished, shard by shard.
        on_bad_patch: called with (name, reason) for each bad patch as shards finish.
        runner: runs the shard tasks instead of the process pool (``workers`` is then unused):
            e.g. :func:`benzarr.dask_ingest.dask_runner`; see :data:`ShardRunner`.

    Rerunning a command that completed the store returns at once with ``already_complete``
    set. Two ingests of one local store (or of one part) never run at once: the second raises
    :class:`~benzarr.errors.StoreLockedError` (see :mod:`benzarr.lock`).

    Returns:
        An :class:`IngestResult`; bad patches are in ``failed`` (the CLI exits 3).

    Raises:
        ArchiveNotFoundError, NotAnArchiveError, InvalidArgumentError (bad arguments),
        PathConflictError (STORE is, is in, or holds ARCHIVE), StoreExistsError,
        UnsafeOverwriteError (``overwrite`` of something that is not a benzarr store),
        StoreParametersError, StoreVersionError, StoreLockedError, StoreIncompleteError (a
        worker died), FileSystemError (full disk, read-only file system, ...; naming the
        path), ObjectStoreError (an s3:// store whose endpoint does not answer or refuses the
        request), ArchiveChangedError (a tar of the archive replaced or rewritten during the
        run), BadPatchError (strict only).
    """
    started = time.perf_counter()
    check_ingest_arguments(shard_size, compression, workers, plan, part, parts)
    # the tars this ingest mounts are let go when it ends: their files closed, their indexes freed
    with _files.session():
        store_path = str(store_path)
        workers = workers or os.cpu_count() or 1
        try:
            found, names, missing, n_excluded = plan_patches(archive, exclude, patches, source)
        except OSError as exc:
            raise os_error(exc, archive, "reading the archive") from None
        if not is_url(store_path):
            check_disjoint(store_path, archive)  # before anything is written
        chosen, label_sets, params = _ingest_params(
            archive, found, names, n_excluded, modalities, shard_size, compression, exclude, patches
        )
        try:
            done_before = None if overwrite else _already_complete(store_path, params, storage_options)
            if done_before is not None:
                return _already_done(done_before, started, missing, n_excluded, found)
            if part is None:
                _check_target(store_path, overwrite)
            try:
                with ingest_lock(store_path, part):
                    return _ingest_locked(
                        found, names, missing, n_excluded, store_path, params, chosen, label_sets, started,
                        workers=workers, shard_size=shard_size, compression=compression, strict=strict,
                        overwrite=overwrite, plan=plan, parts=parts, part=part, storage_options=storage_options,
                        on_start=on_start, on_progress=on_progress, on_bad_patch=on_bad_patch, runner=runner,
                    )
            except OSError as exc:
                if remote_failure(store_path, exc) is not None:  # aiohttp's connection errors are OSErrors
                    raise
                raise os_error(exc, store_path, "writing", RESUME_HINT) from None
        except Exception as exc:  # an s3:// store whose endpoint does not answer: one line, not a traceback
            failure = remote_failure(store_path, exc)
            if failure is None:
                raise
            raise failure from None


def _ingest_params(
    archive: str | Path, found: Archive, names: list[str], n_excluded: int, modalities: Sequence[str] | None,
    shard_size: int, compression: str, exclude: Sequence[str | Path], patches: str | Path | None,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """The modalities to ingest (checked against the archive), their label sets, and the
    ``ingest`` parameters that decide the store's contents (a resume or a part must match them).

    Returns:
        (modalities in store order, label sets, parameters).
    """
    source = get_source(found.source)
    # S2 is always ingested
    chosen = list(found.modalities) if modalities is None else ["s2", *parse_modalities(modalities or "s2", once=True)]
    absent = [m for m in chosen if m not in found.modalities]
    if absent:
        raise InvalidArgumentError(
            f"{archive}: this {source.title} archive has no {absent[0]} data (it has: {', '.join(found.modalities)})"
        )
    chosen = [m for m in MODALITIES if m in chosen]
    label_sets = source.label_sets(chosen)
    params = {
        "archive": str(Path(archive).resolve()),
        "source": found.source,
        "modalities": chosen,
        "shard_size": shard_size,
        "compression": compression,
        "exclude": [str(Path(e).resolve()) if Path(e).is_file() else str(e) for e in exclude],
        "patches": None if patches is None else str(Path(patches).resolve()),
        "n_patches": len(names),
        "names_sha256": _names_digest(names),
        "n_excluded": n_excluded,
    }
    return chosen, label_sets, params


def _already_done(store: Store, started: float, missing: list[str], n_excluded: int, found: Archive) -> IngestResult:
    """The result of an ingest that found its store already complete (whose staging arrays a
    kill after it was marked complete may have left: they are deleted now)."""
    sweep_staging(store)
    result = _result(store, time.perf_counter() - started, 0, True, missing, n_excluded, found.version)
    result.already_complete = True
    return result


def _ingest_locked(found: Archive, names: list[str], missing: list[str], n_excluded: int, store_path: str,
                   params: dict[str, Any], chosen: list[str], label_sets: list[str], started: float, *,
                   workers: int, shard_size: int, compression: str, strict: bool, overwrite: bool, plan: bool,
                   parts: int | None, part: tuple[int, int] | None, storage_options: dict[str, Any] | None,
                   on_start: Callable[[int], None] | None, on_progress: Callable[[int], None] | None,
                   on_bad_patch: Callable[[str, str], None] | None,
                   runner: ShardRunner | None = None) -> IngestResult:
    """The body of :func:`ingest`, run with the store's (or part's) lock held."""
    # checked again under the lock: an identical ingest may have finished while this one waited
    done_before = None if overwrite else _already_complete(store_path, params, storage_options)
    if done_before is not None:
        return _already_done(done_before, started, missing, n_excluded, found)
    if part is not None:
        store = _open_part(store_path, params, part, storage_options)
        resumed = False  # set below, from the part's own shards (plan and part never go together)
    else:
        store, resumed = _prepare_store(store_path, names, params, shard_size, compression, overwrite,
                                        chosen, label_sets, get_source(found.source), storage_options)
    if plan:
        if parts:
            planned = store.attrs.get("parts")
            begun = bool(np.asarray(store.array(DONE_ARRAY)[:], dtype=bool).any())
            if planned and int(planned) != int(parts) and begun:  # the running parts' shard ranges would move
                raise InvalidArgumentError(
                    f"{store_path}: planned for {planned} parts, and parts have run; keep --parts {planned} "
                    "(or start again with --overwrite)"
                )
            store.update_attrs(parts=int(parts))
        return _result(store, time.perf_counter() - started, 0, resumed, missing, n_excluded, found.version)

    refs = [found.refs[name] for name in names]
    done = np.asarray(store.array(DONE_ARRAY)[:], dtype=bool)
    shards = part_shards(*part, store.n_shards) if part else range(store.n_shards)
    if part:  # continued only if this part had begun: a part is never "resumed" for being one
        resumed = bool(done[shards].any())
    shard_refs_of = {s: refs[s * shard_size:(s + 1) * shard_size] for s in shards}
    if on_start:
        on_start(sum(map(len, shard_refs_of.values())))
    tasks = [(s, shard_refs_of[s], s * shard_size) for s in shards if not done[s]]
    if on_progress and any(done[s] for s in shards):
        on_progress(sum(len(shard_refs_of[s]) for s in shards if done[s]))

    def finished(shard_refs: Sequence[PatchRef], failed: dict[str, str]) -> None:
        if on_bad_patch:
            for name, reason in failed.items():
                on_bad_patch(name, reason)
        if on_progress:
            on_progress(len(shard_refs))

    common = (store_path, storage_options, get_source(found.source), chosen)
    _run_shards(tasks, common, finished, runner, workers, store_path, strict, uuid.uuid4().hex)

    seconds = time.perf_counter() - started
    patches_written = sum(len(shard_refs) for _, shard_refs, _ in tasks)
    if not np.asarray(store.array(DONE_ARRAY)[:], dtype=bool).all():  # other parts still to run
        return _result(store, seconds, len(tasks), resumed, missing, n_excluded, found.version, patches_written)
    with finalize_lock(store_path):  # two parts that finish together: one finalises, the other waits
        store = open_store(store_path, mode="r+", require_complete=False, storage_options=storage_options)
        if not store.complete:
            try:
                _finalize(store)
            except Exception:
                # a URL store has no lock: two parts may both finalise, and the slower one find
                # the staging arrays gone, which is fine if the other one completed the store
                if not open_store(store_path, require_complete=False, storage_options=storage_options).complete:
                    raise
    store = open_store(store_path, mode="r+", require_complete=False, storage_options=storage_options)
    return _result(store, seconds, len(tasks), resumed, missing, n_excluded, found.version, patches_written)


def _open_part(store_path: str, params: dict[str, Any], part: tuple[int, int],
               storage_options: dict[str, Any] | None) -> Store:
    """The planned store that part ``part`` writes into, checked against this run's ``params``."""
    if not store_exists(store_path, storage_options):
        raise StoreNotFoundError(f"{store_path}: no planned store; run `benzarr ingest ARCHIVE STORE --plan` first")
    store = open_store(store_path, mode="r+", require_complete=False, storage_options=storage_options)
    if store.attrs.get("ingest") != params or not store.attrs.get("layout_complete"):
        raise StoreParametersError(
            f"{store_path}: the planned store was made with other ingest parameters; "
            "use the same archive, --shard-size, --compression, --exclude, --patches and modalities as --plan"
        )
    planned = store.attrs.get("parts")
    if planned and planned != part[1]:
        raise InvalidArgumentError(f"--part {part[0]}/{part[1]}: the store was planned for {planned} parts")
    return store


def _archive_files(refs: Sequence[PatchRef]) -> dict[str, Any] | None:
    """Where the refs' files lie in the archive's tars (:func:`benzarr.sources._files.export`),
    None for folders. Made as each task is handed out, so memory holds a few shards' worth."""
    return _files.export([path for ref in refs for path in (ref.s2_dir, ref.s1_dir, ref.reference_map)])


#: Shard tasks handed to the pool ahead of the free workers (each holds its refs and byte ranges).
TASKS_AHEAD_PER_WORKER = 2


def _run_shards(tasks: list[tuple[int, Sequence[PatchRef], int]], common: tuple[Any, ...],
                finished: Callable[[Sequence[PatchRef], dict[str, str]], None], runner: ShardRunner | None,
                workers: int, store_path: str, strict: bool, run: str) -> None:
    """Run :func:`ingest_shard` on ``tasks`` (``runner``, this process, or a spawn pool of
    ``workers``), calling ``finished`` as each shard ends. ``run``: this run's token (never
    written to the store: its bytes stay the same from run to run)."""
    if runner is not None:  # another executor (a Dask cluster) runs the same ingest_shard
        calls = [(*common, shard, shard_refs, start, strict, _archive_files(shard_refs), run)
                 for shard, shard_refs, start in tasks]
        for index, failed in runner(ingest_shard, calls):
            finished(tasks[index][1], failed)
    elif workers == 1 or len(tasks) <= 1:
        import rasterio

        # In the caller's process: one GDAL environment for the shards, left when they end (the
        # caller's own reads find .aux.xml/.ovr sidecars again, GDAL's log is theirs).
        with rasterio.Env(**GDAL_ENV):
            for shard, shard_refs, start in tasks:
                finished(shard_refs, ingest_shard(*common, shard, shard_refs, start, strict,
                                                  _archive_files(shard_refs), run))
    else:
        # spawn: zarr keeps an event-loop thread that a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        # its workers die with the driver (never an orphan writing shards beside the next run)
        # and leave Ctrl-C to it, which ends them (benzarr.procs)
        with worker_pool(max_workers=min(workers, len(tasks)), mp_context=context, then=_worker_init) as pool:
            waiting = iter(tasks)
            futures: dict[Any, Sequence[PatchRef]] = {}

            def hand_out() -> None:  # a few tasks ahead of the workers, not all: bounded memory
                task = next(waiting, None)
                if task is not None:
                    shard, shard_refs, start = task
                    future = pool.submit(ingest_shard, *common, shard, shard_refs, start, strict,
                                         _archive_files(shard_refs), run)
                    futures[future] = shard_refs

            for _ in range(min(workers, len(tasks)) * TASKS_AHEAD_PER_WORKER):
                hand_out()
            try:
                while futures:
                    complete, _ = wait(set(futures), return_when=FIRST_COMPLETED)
                    for future in complete:
                        finished(futures.pop(future), future.result())
                        hand_out()
            except BrokenProcessPool:
                raise StoreIncompleteError(
                    f"{store_path}: an ingest worker died; finished shards are kept, "
                    "run the same command again to resume"
                ) from None


def missing_parts(store: Store) -> list[int]:
    """Planned parts (1-based) with shards not written yet; [] when no parts were planned."""
    parts = store.attrs.get("parts")
    if not parts:
        return []
    done = np.asarray(store.array(DONE_ARRAY)[:], dtype=bool)
    return [i for i in range(1, parts + 1) if not done[part_shards(i, parts, store.n_shards)].all()]


def _result(store: Store, seconds: float, written: int, resumed: bool, missing: list[str], n_excluded: int,
            version: str, patches_written: int = 0) -> IngestResult:
    return IngestResult(
        store=store.path,
        n_patches=store.n_patches,
        failed=store.failed() if store.complete else {},
        shards_total=store.n_shards,
        shards_written=written,
        patches_written=patches_written,
        resumed=resumed,
        seconds=seconds,
        complete=store.complete,
        version=version,
        modalities=store.modalities,
        not_in_archive=missing,
        excluded=n_excluded,
        missing_parts=missing_parts(store),
    )


def _sweep_temporaries(store: Store) -> None:
    """Delete temporary files that killed writers left in a local store: shard writes'
    ``.<shard>.<pid>.tmp`` and zarr's ``*.partial`` (every shard is done, so none is in use)."""
    root = store.local_path()
    if root is None:
        return
    for folder, _, files in os.walk(root):
        for name in files:
            if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
                Path(folder, name).unlink(missing_ok=True)


def _finalize(store: Store) -> None:
    """Copy staged rows, combine statistics, then mark the store complete (:meth:`Store.mark_complete`, last)."""
    finalize_rows(store)
    stats = {"s2": combine_band_stats(np.asarray(store.array(STATS_ARRAY)[:], dtype=np.float64))}
    if "s1" in store.modalities:
        stats["s1"] = combine_band_stats(np.asarray(store.array(S1_STATS_ARRAY)[:], dtype=np.float64), S1_BANDS)
    _sweep_temporaries(store)
    store.mark_complete(stats=stats)
