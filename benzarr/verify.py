"""Check a whole store: every chunk of every array, shard indexes, chunk checksums, shapes and
metadata (what ``benzarr verify`` runs).

What is checked:

* every ``zarr.json`` under the store parses as JSON, and every array's opens in zarr-python;
* the arrays the store's attributes promise exist, with the expected shape and dtype
  ((N, 4, 120, 120) uint16 for ``s2/10m``, (N, 43) uint8 for ``labels/clc43``, ...);
* band arrays (``s2/*``, ``s1``, ``reference_map``), shard by shard with
  :meth:`benzarr.shards.ShardReader.check_shard`: the shard index's CRC-32C and bounds, then
  every stored chunk: its size (raw) or Blosc header sizes, and its own CRC-32C (store
  format 2); format 1 chunks have no CRC, so each is decoded instead (``decode=True``
  decodes format 2 chunks too); a shard file missing although its shard holds valid patches;
* every other array (labels, metadata, splits, ingest bookkeeping) through zarr-python, chunk
  by chunk, which decodes and checks its codecs (a ``crc32c`` on the row arrays of stores
  written since session 8);
* in a complete store, that the chunk files of those arrays that a writer always writes are
  there (:func:`_missing_chunks`): zarr reads a deleted chunk as fill values (blank patch names,
  zero bounds, shards not done), and skips writing a chunk that holds only fill values, so a
  chunk is required only where its rows cannot all be fill values;
* in a complete store, the labels and every split against the counts recorded when they were
  written (``label_counts``, a split's ``counts``): a bit flip that still decodes, in a store
  whose row arrays have no crc32c, changes them.

Band shards are spread over worker processes (one task a shard, read through a memory map in
file order), so a store is read at close to disk speed. Problems are collected, never raised
one by one: the :class:`VerifyReport` names every corrupt row by patch name. The result is
recorded in the store's ``benzarr`` attributes (``verified``), which ``benzarr info`` shows.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from benzarr import __version__
from benzarr.errors import BenzarrError, InvalidArgumentError, StoreCorruptError, StoreIncompleteError, StoreVerifyError
from benzarr.lock import ingest_running
from benzarr.procs import worker_pool
from benzarr.shards import ShardCheck, ShardLayout, ShardReader, parse_layout, shard_file
from benzarr.store import (
    BAND_ARRAYS,
    CHECKSUM_FORMAT,
    COORDINATES,
    DONE_ARRAY,
    LABEL_ARRAYS,
    PATCH_NAME_ARRAY,
    ROW_FIELDS,
    S1_STATS_ARRAY,
    SPLITS_GROUP,
    STAGE_GROUP,
    STATS_ARRAY,
    VALID_ARRAY,
    WRITER_LEFTOVER,
    Store,
    is_url,
    open_store,
)
from benzarr.timestamps import utc_timestamp

#: Attribute (inside the store's ``benzarr`` attributes) holding the last verification.
VERIFIED_KEY = "verified"
#: With ``workers=None``, band shards are read by one process per CPU from this many bytes
#: on, below it in the calling process (a spawned reader costs about a second to start).
PARALLEL_BYTES = 512 * 2**20


@dataclass
class Problem:
    """One thing found wrong.

    Attributes:
        array: the array's path in the store (e.g. ``"s2/10m"``).
        message: one line naming the file, what is wrong and (for a chunk) row and patch.
        rows: store rows whose data it affects (empty when not tied to rows, e.g. an
            unreadable ``zarr.json``).
        patches: those rows' patch names (``"row N"`` where names cannot be read).
    """

    array: str
    message: str
    rows: list[int] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes:
        path: the store.
        format_version: its store format version.
        checksums: every band array's chunks carry a CRC-32C (format 2); None for a
            labels-only store (no band arrays).
        complete: its ingest finished.
        n_patches: rows of the store.
        arrays: arrays checked.
        chunks: stored chunks read (band rows, plus zarr chunks of the other arrays).
        bytes: stored bytes of the band chunks read.
        seconds: wall time of the check.
        workers: processes that read band shards.
        problems: everything found wrong (empty: the store is sound).
        at: when the check finished (UTC, ISO 8601).
        recorded: the result was written to the store's attributes.
        not_recorded: why it was not, if it was not.
    """

    path: str
    format_version: int
    checksums: bool | None
    complete: bool
    n_patches: int
    arrays: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    problems: list[Problem] = field(default_factory=list)
    at: str = ""
    recorded: bool = False
    not_recorded: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing was found wrong."""
        return not self.problems

    @property
    def bad_patches(self) -> list[str]:
        """Names of the patches with corrupt data, in row order."""
        rows: dict[int, str] = {}
        for problem in self.problems:
            rows.update(zip(problem.rows, problem.patches))
        return [rows[row] for row in sorted(rows)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, plus ``ok`` and ``bad_patches``."""
        return {**asdict(self), "ok": self.ok, "bad_patches": self.bad_patches}


@dataclass
class _BandArray:
    name: str
    folder: Path
    layout: ShardLayout


def _expected_arrays(store: Store) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Array path -> (shape, numpy dtype name or None for strings) that the store must hold."""
    n = store.n_patches
    modalities = store.modalities
    expected: dict[str, tuple[tuple[int, ...], str | None]] = {}
    for path, band in BAND_ARRAYS.items():
        if band.modality in modalities:
            expected[path] = ((n, *band.row_shape), band.dtype)
    for path, spec in ROW_FIELDS.items():
        expected[path] = ((n, *spec.trailing), None if spec.dtype is str else np.dtype(spec.dtype).name)
    expected[DONE_ARRAY] = ((store.n_shards,), "bool")
    return expected


def _band_arrays(store: Store) -> set[str]:
    return set(BAND_ARRAYS)


def _metadata_files(root: Path) -> list[tuple[str, Path, dict[str, Any] | str]]:
    """(node path, its zarr.json, its contents or why they do not parse) for every node under
    ``root``, sorted; an array's chunk folders are not walked."""
    found: list[tuple[str, Path, dict[str, Any] | str]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if WRITER_LEFTOVER.fullmatch(d) is None)  # a killed writer's, not the store's
        here = Path(folder)
        rel = here.relative_to(root).as_posix()
        if "zarr.json" not in files or rel == ".":
            continue
        meta_path = here / "zarr.json"
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(metadata, dict):
                raise ValueError(f"a JSON {type(metadata).__name__}, not an object")
        except (OSError, ValueError, RecursionError) as exc:
            found.append((rel, meta_path, str(exc)))
            continue
        found.append((rel, meta_path, metadata))
        if metadata.get("node_type") != "group":
            dirs[:] = []  # an array: below it are only its chunks
    return sorted(found, key=lambda item: item[0])


def _check_shard(folder: str, name: str, layout: ShardLayout, shard: int, decode: bool | None,
                 names: list[str] | None) -> ShardCheck:
    """One worker task: read and check every chunk of one shard (``names``: its rows' patch names)."""
    first = shard * layout.shard_rows
    row_name = None if names is None else (lambda row: names[row - first])
    return ShardReader(folder, layout, name, row_name).check_shard(shard, decode)


def _shard_names(names: np.ndarray | None, layout: ShardLayout, shard: int) -> list[str] | None:
    if names is None or len(names) != layout.shape[0]:
        return None
    return [str(n) for n in names[shard * layout.shard_rows:(shard + 1) * layout.shard_rows]]


def _pool_context() -> multiprocessing.context.BaseContext:
    # spawn: the parent runs zarr-python's event-loop thread, which a forked child must not inherit
    return multiprocessing.get_context("spawn")


def verify_store(
    path: str | Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    record: bool = True,
    decode: bool | None = None,
) -> VerifyReport:
    """Read every chunk of every array of a local store and check it (see the module docstring).

    Args:
        path: the store's folder (complete or not; an incomplete store's unwritten shards
            read as fill value and are not problems).
        workers: processes reading band shards; 0 or 1: this process; None: one per
            CPU for stores of :data:`PARALLEL_BYTES` of band shards or more, else this process.
        progress: called as ``progress(n, total)`` while chunks are checked (``n`` new ones;
            ``total`` of the whole run, given on the first call).
        record: write the result into the store's ``benzarr`` attributes (``verified``:
            ``at``, ``ok``, ``chunks``, ``problems``, ``bad_patches``, ``package_version``);
            skipped, with the reason in ``not_recorded``, for an incomplete store or a
            store that cannot be written.
        decode: also decode every Blosc band chunk. None (default): only chunks without a
            crc32c (format 1); a matching crc32c already proves a chunk holds the bytes its
            writer wrote, and skipping the decode lets the check run at disk speed.

    Returns:
        The report; ``report.ok`` is False when anything is corrupt.

    Raises:
        InvalidArgumentError: a URL (verify reads local stores) or a negative ``workers``.
        StoreNotFoundError, StoreVersionError: from opening the store (its root ``zarr.json``
            must be readable to know what to check).
        StoreVerifyError: the root ``zarr.json`` is damaged (not JSON, or an attribute of the
            wrong type), so nothing else can be checked.
    """
    if is_url(path):
        raise InvalidArgumentError(f"{path}: benzarr verify reads local stores; copy the store to a local disk first")
    if workers is not None and workers < 0:
        raise InvalidArgumentError(f"--workers must be 0 or more, got {workers}")
    started = time.perf_counter()
    running = ingest_running(path)
    if running is not None:  # its arrays are being created and written: "missing" would mean nothing
        raise StoreIncompleteError(f"{path}: an ingest ({running}) is writing this store now; "
                                   "wait for it to finish, then verify")
    try:
        store = open_store(path, require_complete=False)
    except StoreVerifyError:
        raise
    except StoreCorruptError as exc:  # a damaged root zarr.json is what verify looks for: its exit code 4
        raise StoreVerifyError(str(exc)) from None
    report = VerifyReport(
        path=str(path), format_version=store.format_version, checksums=False, complete=store.complete,
        n_patches=store.n_patches,
    )
    names = _patch_names(store)
    expected = _expected_arrays(store)
    band_names = _band_arrays(store)
    opened, layouts = _check_metadata(store, report, expected, band_names)

    # what to read: band shards (workers), every other array (zarr-python, here)
    fast = {band.name for band in layouts}
    others = [(name, array) for name, array in opened.items() if name not in fast]
    tasks = [(band, shard) for band in layouts for shard in range(band.layout.n_shards)]
    total = sum(band.layout.shape[0] for band in layouts) + sum(_n_blocks(array) for _, array in others)
    advance = progress or (lambda n, total=None: None)
    advance(0, total)
    valid = _valid_rows(opened.get("meta/valid"), store.n_patches)
    done = _done_shards(opened.get(DONE_ARRAY))

    checks = _check_band_shards(tasks, workers, decode, names, advance, report)
    _shard_problems(checks, layouts, store, names, valid, done, report)
    for name, array in others:
        per_row = (name in ROW_FIELDS or name in band_names or name.startswith((f"{SPLITS_GROUP}/", f"{STAGE_GROUP}/"))) \
            and array.ndim >= 1 and array.shape[0] == store.n_patches
        report.chunks += _check_zarr_array(name, array, per_row, names, report.problems, advance)
        if store.complete:
            _missing_chunks(store, name, array, per_row, names, valid, report.problems)
    _check_recorded_counts(store, opened, report)

    report.seconds = time.perf_counter() - started
    report.at = utc_timestamp()
    if record:
        _record(store, report)
    return report


def _check_metadata(
    store: Store, report: VerifyReport, expected: dict[str, tuple[tuple[int, ...], str | None]], band_names: set[str],
) -> tuple[dict[str, zarr.Array], list[_BandArray]]:
    """Every zarr.json parses, every array opens, the promised arrays are there (problems into ``report``).

    Returns:
        (the arrays that open, by name; the band arrays of the sharded layout benzarr reads itself).
    """
    root = Path(store.path)
    problems = report.problems
    opened: dict[str, zarr.Array] = {}
    layouts: list[_BandArray] = []
    broken: set[str] = set()
    for name, meta_path, metadata in _metadata_files(root):
        if isinstance(metadata, str):
            problems.append(Problem(name, f"{meta_path}: metadata is not readable JSON ({metadata})"))
            broken.add(name)
            continue
        if metadata.get("node_type") == "group":
            continue
        try:
            array = zarr.open_array(str(root / name), mode="r")
        except Exception as exc:  # zarr raises many kinds for bad metadata; each is a finding
            problems.append(Problem(name, f"{meta_path}: not a valid Zarr v3 array ({type(exc).__name__}: {exc})"))
            broken.add(name)
            continue
        opened[name] = array
        if name in band_names:
            layout = parse_layout(metadata)
            if layout is None:
                problems.append(Problem(name, f"{meta_path}: not the sharded layout benzarr writes; read through zarr-python"))
            else:
                layouts.append(_BandArray(name, root / name, layout))
    for name, (shape, dtype) in expected.items():
        if name in broken:
            continue
        array = opened.get(name)
        if array is None:
            if (root / name).is_dir():  # its chunks are there: the metadata alone is gone
                problems.append(Problem(name, f"{root / name / 'zarr.json'}: the array's zarr.json is missing "
                                              "(its folder is there)"))
            else:
                problems.append(Problem(name, f"{root / name}: array is missing"))
            continue
        if tuple(array.shape) != shape:
            problems.append(Problem(name, f"{root / name}: shape {tuple(array.shape)}, expected {shape}"))
        if dtype is not None and np.dtype(array.dtype).name != dtype:
            problems.append(Problem(name, f"{root / name}: dtype {np.dtype(array.dtype).name}, expected {dtype}"))
    for name, array in opened.items():
        if name.startswith(f"{SPLITS_GROUP}/") and tuple(array.shape) != (store.n_patches,):
            problems.append(Problem(name, f"{root / name}: shape {tuple(array.shape)}, expected ({store.n_patches},)"))
    report.checksums = all(band.layout.checksum for band in layouts) if layouts else None
    if report.format_version >= CHECKSUM_FORMAT:
        for band in layouts:
            if not band.layout.checksum:
                problems.append(Problem(band.name, f"{band.folder / 'zarr.json'}: no crc32c in the inner codecs of a "
                                                   f"format {report.format_version} store"))
    report.arrays = len(opened)
    return opened, layouts


def _check_band_shards(
    tasks: list[tuple[_BandArray, int]],
    workers: int | None,
    decode: bool | None,
    names: np.ndarray | None,
    advance: Callable[..., None],
    report: VerifyReport,
) -> list[ShardCheck]:
    """Check every band shard of ``tasks``, here or in ``workers`` processes (in task order)."""
    checks: list[ShardCheck] = []
    if workers is None:  # starting a process costs about a second: worth it for large stores only
        big = _shard_bytes(tasks) >= PARALLEL_BYTES
        workers = (os.cpu_count() or 1) if big else 1
    n_workers = max(1, min(workers, len(tasks)))
    report.workers = n_workers
    if n_workers <= 1:
        for band, shard in tasks:
            checks.append(_check_shard(str(band.folder), band.name, band.layout, shard, decode,
                                       _shard_names(names, band.layout, shard)))
            advance(len(checks[-1].rows))
    else:
        with worker_pool(max_workers=n_workers, mp_context=_pool_context()) as pool:
            futures = [pool.submit(_check_shard, str(band.folder), band.name, band.layout, shard, decode,
                                   _shard_names(names, band.layout, shard))
                       for band, shard in tasks]
            for future in futures:  # in submission order: the report lists problems in store order
                checks.append(future.result())
                advance(len(checks[-1].rows))
    return checks


def _shard_problems(
    checks: list[ShardCheck],
    layouts: list[_BandArray],
    store: Store,
    names: np.ndarray | None,
    valid: np.ndarray | None,
    done: np.ndarray | None,
    report: VerifyReport,
) -> None:
    """Count ``checks`` into ``report`` with their problems, and a missing shard file that held valid patches."""
    root = Path(store.path)
    problems = report.problems
    by_name = {band.name: band for band in layouts}
    for check in checks:
        report.chunks += check.chunks
        report.bytes += check.bytes
        for rows, message in check.problems:
            problems.append(Problem(check.array, message, rows, [_name(names, row) for row in rows]))
        # a band array whose zarr.json claims more rows than the store (reported as a wrong
        # shape) has shards past ``done`` and rows past ``valid``: none of them holds a patch
        shard_done = done is None or (check.shard < len(done) and done[check.shard])
        if not check.exists and store.complete and shard_done:
            lost = [row for row in check.rows if valid is not None and row < len(valid) and valid[row]]
            if lost:
                missing = shard_file(root / check.array, check.shard, len(by_name[check.array].layout.shape))
                problems.append(Problem(
                    check.array,
                    f"{check.array}: shard file {missing} is missing, but its shard holds "
                    f"{len(lost)} valid patch(es) that now read as zeros; re-ingest the store (or restore this file)",
                    lost, [_name(names, row) for row in lost],
                ))


def _check_recorded_counts(store: Store, opened: dict[str, zarr.Array], report: VerifyReport) -> None:
    """Labels and splits against the counts recorded when they were written (a complete
    store): a bit flip that still decodes, in a store whose row arrays have no crc32c, shows
    up here (:meth:`Store.labels`, :meth:`Store.read_split`)."""
    if not store.complete:
        return
    damaged = {p.array for p in report.problems}
    if "meta/valid" in damaged:
        return
    checks = [(path, lambda n=name: store.labels(n)) for name, path in LABEL_ARRAYS.items()
              if name in store.attrs.get("label_sets", list(LABEL_ARRAYS))]
    checks += [(f"{SPLITS_GROUP}/{name}", lambda n=name: store.read_split(n)) for name in store.split_names()]
    for path, read in checks:
        if path in damaged or path not in opened:
            continue
        try:
            read()
        except StoreCorruptError as exc:
            report.problems.append(Problem(path, str(exc)))


def _patch_names(store: Store) -> np.ndarray | None:
    try:
        return store.patch_names()
    except Exception:  # meta/patch_name itself may be what is broken: rows are named by number then
        return None


def _valid_rows(array: zarr.Array | None, n: int) -> np.ndarray | None:
    if array is None:
        return None
    try:
        valid = np.asarray(array[:], dtype=bool)
    except Exception:  # reported when the array itself is checked
        return None
    return valid if valid.shape == (n,) else None


def _done_shards(array: zarr.Array | None) -> np.ndarray | None:
    if array is None:
        return None
    try:
        return np.asarray(array[:], dtype=bool)
    except Exception:  # reported when the array itself is checked
        return None


def _name(names: np.ndarray | None, row: int) -> str:
    if names is not None and 0 <= row < len(names):
        return str(names[row])
    return f"row {row}"


def _shard_bytes(tasks: list[tuple[_BandArray, int]]) -> int:
    """Bytes of the shard files to read (missing files count 0)."""
    total = 0
    for band, shard in tasks:
        try:
            total += shard_file(band.folder, shard, len(band.layout.shape)).stat().st_size
        except OSError:
            pass
    return total


def _n_blocks(array: zarr.Array) -> int:
    """Reads :func:`_check_zarr_array` makes of ``array`` (one a shard, or a chunk if unsharded)."""
    if array.ndim == 0:
        return 1
    step = (array.shards or array.chunks)[0]
    return max(1, -(-array.shape[0] // step))


def _required_rows(store: Store, name: str, array: zarr.Array, valid: np.ndarray | None) -> np.ndarray | None:
    """(rows along axis 0,) bool: where ``array`` of a complete store must have its chunks,
    since a writer gave them values other than the fill value (zarr writes no chunk that holds
    fill values only); None: not checked (any chunk may rightly be absent)."""
    rows = array.shape[0] if array.ndim else 0
    ingested = bool(store.modalities)  # a labels-only store has no bounds, done flags or statistics
    if name == PATCH_NAME_ARRAY or name in COORDINATES:  # names, written whole when the store is made
        return np.ones(rows, bool)
    if name == DONE_ARRAY:
        return np.full(rows, ingested)
    if name == VALID_ARRAY:  # a lost chunk reads as failed patches: more than the store recorded
        recorded = store.attrs.get("n_failed")
        lost = valid is not None and isinstance(recorded, int) and int((~valid).sum()) > recorded
        return np.full(rows, lost)
    if valid is None or not ingested:
        return None
    if name == "meta/bounds":  # every valid patch has bounds (ulx < lrx)
        return valid if rows == len(valid) else None
    if name in (STATS_ARRAY, S1_STATS_ARRAY):  # a shard with a valid patch has counts
        if name == S1_STATS_ARRAY and "s1" not in store.modalities:
            return None
        size = store.shard_size
        return np.asarray([valid[s * size:(s + 1) * size].any() for s in range(rows)], dtype=bool)
    return None


def _missing_chunks(store: Store, name: str, array: zarr.Array, per_row: bool, names: np.ndarray | None,
                    valid: np.ndarray | None, problems: list[Problem]) -> None:
    """A problem for each chunk of ``array`` (in a complete local store, unsharded) whose file
    is missing although rows it holds were written (:func:`_required_rows`): zarr would read
    them as fill values without a word (``split --export`` wrote blank patch names)."""
    required = _required_rows(store, name, array, valid)
    if required is None or array.ndim == 0 or array.shards is not None or not required.any():
        return
    folder = Path(store.path) / name
    step = array.chunks[0]
    for coords in itertools.product(*(range(n) for n in array.cdata_shape)):
        start, stop = coords[0] * step, min((coords[0] + 1) * step, array.shape[0])
        if not required[start:stop].any():
            continue
        key = array.metadata.encode_chunk_key(coords)
        if (folder / key).is_file():
            continue
        rows = list(range(start, stop)) if per_row else []
        what = (("row" if per_row else "entry") + f" {start}" if stop - start == 1
                else ("rows" if per_row else "entries") + f" {start}-{stop - 1}")
        problems.append(Problem(
            name, f"{name}: chunk file {folder / key} is missing, so {what} read as fill values "
                  "(blank names, zeros); re-ingest the store (or restore this file)",
            rows, [_name(names, row) for row in rows],
        ))


def _check_zarr_array(name: str, array: zarr.Array, per_row: bool, names: np.ndarray | None,
                      problems: list[Problem], advance: Callable[..., None]) -> int:
    """Read ``array`` block by block along axis 0 through zarr-python (which checks its codecs)."""
    if array.ndim == 0:
        blocks = [(0, 0)]
    else:
        step = (array.shards or array.chunks)[0]
        blocks = [(start, min(start + step, array.shape[0])) for start in range(0, array.shape[0], step)] or [(0, 0)]
    chunks = 0
    for start, stop in blocks:
        try:
            array[()] if array.ndim == 0 else array[start:stop]
        except Exception as exc:  # any failure to decode is a finding
            rows = list(range(start, stop)) if per_row else []
            where = f"rows {start}-{stop - 1}" if array.ndim else "its value"
            problems.append(Problem(
                name, f"{name}: {where} do not read ({type(exc).__name__}: {exc}); "
                + ("make the split again (benzarr split ... --overwrite)" if name.startswith("splits/") else "re-ingest the store"),
                rows, [_name(names, row) for row in rows],
            ))
        chunks += 1
        advance(1)
    return chunks


def _record(store: Store, report: VerifyReport) -> None:
    if not store.complete:
        report.not_recorded = "the store is incomplete"
        return
    result = {
        "at": report.at,
        "ok": report.ok,
        "chunks": report.chunks,
        "problems": len(report.problems),
        "bad_patches": len(report.bad_patches),
        "checksums": report.checksums,
        "package_version": __version__,
    }
    try:
        open_store(store.path, mode="r+", require_complete=False).update_attrs(**{VERIFIED_KEY: result})
    except (OSError, BenzarrError) as exc:
        report.not_recorded = f"cannot write {Path(store.path) / 'zarr.json'} ({exc})"
        return
    report.recorded = True


def last_verified(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The ``verified`` record of a store's ``benzarr`` attributes, or None if never verified."""
    value = attrs.get(VERIFIED_KEY)
    return value if isinstance(value, dict) else None
