"""Rows of a sharded band array read straight from object storage with ``obstore``.

For a store at an ``s3://`` URL (and ``gs://``, ``az://``, ``http(s)://``: anything
:func:`obstore.store.from_url` opens) :class:`ObjectStoreReader` does what
:class:`benzarr.shards.ShardReader` does on a local disk, with HTTP range requests instead
of a memory map:

* **shard indexes:** each shard's index (16 bytes a row, then its CRC-32C: the last
  ``16 * shard_rows + 4`` bytes of the shard object) is fetched once with a suffix range
  GET, which also returns the object's size; the CRC-32C and every entry's bounds are
  checked, and the index is cached for the life of the reader in this process. A shard
  object that does not exist reads as the fill value, as zarr-python reads it;
* **batch reads:** the chunks of a batch are fetched with concurrent range GETs
  (``max_concurrency`` in flight in the process, shared by the band arrays, whose requests
  :meth:`BigEarthNetDataset.read_into` starts together; default
  :data:`DEFAULT_MAX_CONCURRENCY`), rows of one
  shard whose chunks lie back to back are coalesced into one request (up to
  :data:`MAX_REQUEST_BYTES`), and each response is checked and decoded as soon as it
  arrives, while the others are still in flight, by the shard reader's own code
  (``ShardReader._chunk``: sizes and CRC-32C; ``ShardReader._decode``: Blosc), so a
  corrupt chunk raises the same :class:`~benzarr.errors.StoreCorruptError` naming the
  array, object, row and patch.

Requests run on one asyncio event loop in a background thread of each process
(obstore's ``get_range_async`` / ``get_async`` run in Rust and release the GIL). A reader
that crosses into another process (DataLoader workers, fork or spawn) opens its own
client there on first use: the client and the loop are found by ``os.getpid()``.

:func:`url_reader` is what :func:`benzarr.shards.row_reader` calls for a store that is not
on the local disk: it takes the URL and the fsspec ``storage_options`` from the zarr
array's ``FsspecStore`` (so ``BigEarthNetDataset("s3://...", storage_options=...)`` and
``benzarr bench s3://... --endpoint-url ...`` need nothing new) and returns None, leaving
the array to zarr-python, when obstore is not installed, the layout is not one benzarr
writes, or an option cannot be translated (an AWS profile name, say). Set
``BENZARR_OBJECT_READER=zarr`` to always read URL stores through zarr-python (the
reference path), and ``BENZARR_MAX_CONCURRENCY`` to change the requests in flight.

Credentials: s3fs-style options (``key``, ``secret``, ``token``, ``anon``,
``endpoint_url``, ``client_kwargs={"endpoint_url", "region_name"}``) are translated to
obstore's; without them obstore reads the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``)
itself. An ``http://`` endpoint is allowed (a local test server). Nothing here logs, and
no message or ``repr`` holds a credential.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benzarr.errors import InvalidArgumentError, ObjectStoreError
from benzarr.shards import (
    CRC_BYTES,
    EMPTY,
    ShardLayout,
    ShardReader,
    _Shard,
    check_index,
    check_rows,
    parse_layout,
    row_buffer,
)

#: Range requests in flight per reader (``--max-concurrency``; ``$BENZARR_MAX_CONCURRENCY``).
DEFAULT_MAX_CONCURRENCY = 64
#: The largest coalesced request: rows back to back in one shard are fetched together up to this.
MAX_REQUEST_BYTES = 8 << 20
#: URL schemes obstore opens (``obstore.store.from_url``).
SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "http", "https")
#: fsspec options that say nothing about where or who (zarr adds ``asynchronous``).
_IGNORED_OPTIONS = frozenset({"asynchronous", "skip_instance_cache", "use_listings_cache",
                              "listings_expiry_time", "max_paths", "default_fill_cache",
                              "default_cache_type", "default_block_size", "loop"})


def max_concurrency_default() -> int:
    """``$BENZARR_MAX_CONCURRENCY`` when set (and not empty), else :data:`DEFAULT_MAX_CONCURRENCY`.

    Raises:
        InvalidArgumentError: it holds anything but a positive integer (``64k`` and ``-3`` gave
            the default without a word, as if the variable were not set).
    """
    text = os.environ.get("BENZARR_MAX_CONCURRENCY", "").strip()
    if not text:
        return DEFAULT_MAX_CONCURRENCY
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgumentError(f"BENZARR_MAX_CONCURRENCY={text!r}: give a positive number of requests in flight "
                                   f"(default {DEFAULT_MAX_CONCURRENCY}), or unset it")
    return value


def obstore_settings(url: str, storage_options: dict[str, Any] | None) -> tuple[dict, dict] | None:
    """``(config, client_options)`` for ``obstore.store.from_url(url, ...)`` from fsspec
    ``storage_options``, or None when an option has no obstore counterpart here (the caller
    then leaves the store to zarr-python and fsspec, which understand it).

    s3: ``key``, ``secret``, ``token``, ``anon``, ``endpoint_url`` (also in
    ``client_kwargs``), ``region_name`` (in ``client_kwargs``) and ``region``; other
    schemes: no options (obstore reads their usual environment variables). An ``http://``
    endpoint (from the options or ``$AWS_ENDPOINT_URL``) turns on ``allow_http``.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        return None
    options = {k: v for k, v in (storage_options or {}).items() if k not in _IGNORED_OPTIONS}
    config: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if scheme in ("s3", "s3a"):
        client_kwargs = dict(options.pop("client_kwargs", None) or {})
        endpoint = options.pop("endpoint_url", None) or client_kwargs.pop("endpoint_url", None)
        region = options.pop("region", None) or client_kwargs.pop("region_name", None)
        if client_kwargs:
            return None  # e.g. a botocore config: zarr-python/s3fs understands it, we do not
        for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"), ("token", "session_token")):
            value = options.pop(ours, None)
            if value:
                config[theirs] = value
        if options.pop("anon", False):
            config["skip_signature"] = True
        if endpoint:
            config["endpoint"] = endpoint
        if region:
            config["region"] = region
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and str(endpoint).startswith("http://"):
            client["allow_http"] = True
    if scheme == "http":
        client["allow_http"] = True  # an http:// URL is a choice the user made explicitly
    if options:
        return None
    return config, client


# -- one client and one event loop per process --------------------------------------------


class _Loop:
    """An asyncio event loop running in a daemon thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.semaphores: dict[int, asyncio.Semaphore] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, name="benzarr-objstore", daemon=True)
        self.thread.start()

    def submit(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def semaphore(self, limit: int) -> asyncio.Semaphore:
        """The process-wide cap of ``limit`` requests in flight (used from the loop's thread
        only): the band arrays of one batch, fetched together, share it."""
        if limit not in self.semaphores:
            self.semaphores[limit] = asyncio.Semaphore(limit)
        return self.semaphores[limit]


_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "loop": None, "stores": {}}


def _after_fork_in_child() -> None:
    # another thread may have held the lock at the fork; the loop thread did not survive it
    global _lock
    _lock = threading.Lock()
    _state.update(pid=None, loop=None, stores={})


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _process_state() -> dict[str, Any]:
    """This process's loop and clients (made again after a fork: a child has no loop thread)."""
    if _state["pid"] != os.getpid():
        with _lock:
            if _state["pid"] != os.getpid():
                _state.update(pid=os.getpid(), loop=None, stores={})
    return _state


def _loop() -> _Loop:
    state = _process_state()
    if state["loop"] is None:
        with _lock:
            if state["loop"] is None:
                state["loop"] = _Loop()
    return state["loop"]


def _client(url: str, config: dict, client_options: dict) -> Any:
    """This process's obstore store for (url, settings), opened on first use."""
    from obstore.store import from_url

    key = json.dumps([url, config, client_options], sort_keys=True, default=str)
    stores = _process_state()["stores"]
    store = stores.get(key)
    if store is None:
        with _lock:
            store = stores.get(key)
            if store is None:
                store = stores[key] = from_url(url, config=config or None, client_options=client_options or None)
    return store


# -- the reader --------------------------------------------------------------------------


@dataclass
class RequestCounts:
    """Requests one reader made in this process (what tests and benchmarks count)."""

    index: int = 0
    ranges: int = 0
    bytes: int = 0
    rows: int = 0
    per_shard_index: dict[int, int] = field(default_factory=dict)


class PendingRead:
    """A read whose requests are in flight (:meth:`ObjectStoreReader.start_read`):
    ``result()`` waits, decodes and returns the rows; ``cancel()`` drops the requests."""

    def __init__(self, finish: Callable[[], np.ndarray], cancel: Callable[[], Any]) -> None:
        self._finish, self._cancel = finish, cancel

    def result(self) -> np.ndarray:
        return self._finish()

    def cancel(self) -> None:
        self._cancel()


class ObjectStoreReader:
    """Rows of one sharded array read from object storage (see the module's docstring).

    Args:
        url: the store's root URL (``s3://bucket/store.zarr``).
        path: the array's path in the store (``s2/10m``).
        layout: from :func:`benzarr.shards.parse_layout`.
        name: the array's name, for error messages.
        storage_options: fsspec-style options (see :func:`obstore_settings`).
        row_name: maps a row to its patch name, called only to word an error.
        verify_checksums: check each chunk's CRC-32C (store format 2); indexes are always checked.
        max_concurrency: range requests in flight in this process, one cap shared by every
            reader with the same value (default ``$BENZARR_MAX_CONCURRENCY`` or 64).

    Raises (from :meth:`read`):
        StoreCorruptError: as :class:`~benzarr.shards.ShardReader`.
        ObjectStoreError: a request failed after obstore's retries (network, permission).
    """

    # the shard reader's checks and messages, shared rather than copied: they need only
    # ``layout``, ``name`` and ``row_name`` of ``self`` and a _Shard-like buffer
    _chunk = ShardReader._chunk
    _decode = ShardReader._decode
    _corrupt = ShardReader._corrupt
    _missing = ShardReader._missing
    _where = ShardReader._where
    missing_ok = True  # as ShardReader.missing_ok

    def __init__(self, url: str, path: str, layout: ShardLayout, name: str,
                 storage_options: dict[str, Any] | None = None, row_name: Callable[[int], str] | None = None,
                 verify_checksums: bool = True, max_concurrency: int | None = None) -> None:
        settings = obstore_settings(url, storage_options)
        if settings is None:
            raise ValueError(f"{url}: not a URL or options obstore reads here")
        self.url = url.rstrip("/")
        self.path = path.strip("/")
        self.layout = layout
        self.name = name
        self.shape = layout.shape
        self.dtype = layout.dtype
        self.row_name = row_name
        self.verify_checksums = verify_checksums
        self.max_concurrency = int(max_concurrency or max_concurrency_default())
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._settings = settings
        self._indexes: dict[int, _Shard] = {}
        self._pid = os.getpid()
        self.counts = RequestCounts()

    def __repr__(self) -> str:  # never the options: they may hold a secret
        return f"ObjectStoreReader({self.url}/{self.path}, shape={self.shape}, max_concurrency={self.max_concurrency})"

    # a reader pickled into a worker (spawn) or inherited by fork starts with nothing cached
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_indexes"] = {}
        state["_pid"] = None
        state["counts"] = RequestCounts()
        return state

    def _own_process(self) -> None:
        if self._pid != os.getpid():
            self._indexes = {}
            self.counts = RequestCounts()
            self._pid = os.getpid()

    def object_key(self, shard: int) -> str:
        """Key of shard ``shard`` below the store's URL: ``<array>/c/<shard>/0/…/0``."""
        return "/".join([self.path, "c", str(shard), *("0",) * (len(self.shape) - 1)])

    def object_url(self, shard: int) -> str:
        return f"{self.url}/{self.object_key(shard)}"

    def _failed(self, shard: int, exc: BaseException) -> ObjectStoreError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ObjectStoreError(f"{self.name}: reading {self.object_url(shard)} failed ({type(exc).__name__}: "
                                f"{first}); check the endpoint, credentials and network")

    # -- requests (coroutines, run on this process's loop) ---------------------------------
    async def _get_index(self, store: Any, shard: int) -> tuple[int, Any, int] | None:
        """(shard, the index bytes with their CRC, the object's size); None: no such object."""
        import obstore

        want = 16 * self.layout.shard_rows + CRC_BYTES
        try:
            result = await obstore.get_async(store, self.object_key(shard), options={"range": {"suffix": want}})
            data = await result.bytes_async()
        except FileNotFoundError:
            return None
        return shard, data, int(result.meta["size"])

    async def _gather_indexes(self, store: Any, shards: list[int]) -> list[Any]:
        semaphore = _loop().semaphore(self.max_concurrency)

        async def one(shard: int) -> Any:
            async with semaphore:
                try:
                    return shard, await self._get_index(store, shard)
                except Exception as exc:  # noqa: BLE001 - handed back to the caller's thread
                    return shard, exc

        return await asyncio.gather(*(one(s) for s in shards))

    async def _fetch_ranges(self, store: Any, ranges: list[tuple[int, int, int]], results: queue.SimpleQueue) -> None:
        """Fetch each (shard, start, end); put (i, bytes or exception) on ``results`` as each lands."""
        import obstore

        semaphore = _loop().semaphore(self.max_concurrency)

        async def one(i: int, shard: int, start: int, end: int) -> None:
            async with semaphore:
                try:
                    results.put((i, await obstore.get_range_async(store, self.object_key(shard), start=start, end=end)))
                except Exception as exc:  # noqa: BLE001 - handed back to the caller's thread
                    results.put((i, exc))

        await asyncio.gather(*(one(i, *r) for i, r in enumerate(ranges)))

    # -- indexes ---------------------------------------------------------------------------
    def _load_indexes(self, shards: list[int], first_row: dict[int, int]) -> None:
        """Fetch, check and cache the indexes of ``shards`` (not cached yet), concurrently."""
        loop = _loop()
        store = _client(self.url, *self._settings)
        answers = loop.submit(self._gather_indexes(store, shards)).result()
        n_chunks = self.layout.shard_rows
        index_bytes = 16 * n_chunks
        for shard, answer in answers:
            self.counts.index += 1
            self.counts.per_shard_index[shard] = self.counts.per_shard_index.get(shard, 0) + 1
            where = self.object_url(shard)
            row = first_row[shard]
            if isinstance(answer, BaseException):
                raise self._failed(shard, answer)
            if answer is None:  # zarr writes no object for a shard of fill values only
                if not self.missing_ok:
                    raise self._missing(where, row)
                self._indexes[shard] = _Shard(None, [EMPTY] * n_chunks, [EMPTY] * n_chunks, where, None)
                continue
            _, tail, size = answer
            self.counts.bytes += len(tail)
            if size < index_bytes + CRC_BYTES or len(tail) != index_bytes + CRC_BYTES:
                raise self._corrupt(where, row, f"{size} bytes, shorter than its {index_bytes + CRC_BYTES}-byte index")
            data = np.frombuffer(tail, dtype=np.uint8)
            offsets, nbytes, problem = check_index(data[:index_bytes], data[index_bytes:], size - CRC_BYTES - index_bytes)
            if problem is not None:
                local, what = problem
                raise self._corrupt(where, row if local is None else shard * n_chunks + local, what)
            self._indexes[shard] = _Shard(None, offsets, nbytes, where, None)

    # -- reading ---------------------------------------------------------------------------
    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as (len(rows), *row_shape) of ``dtype``."""
        return self.start_read(rows, out).result()

    def start_read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> PendingRead:
        """Send the requests for ``rows`` and return at once; ``.result()`` decodes them into
        ``out`` as they land and returns it. Starting every band array of a batch before
        finishing any makes the batch cost one round trip instead of one per array."""
        layout = self.layout
        rows = check_rows(self.name, rows, layout.shape[0])
        out = row_buffer(layout, rows.size, out)
        if rows.size == 0:
            return PendingRead(lambda: out, lambda: None)
        self._own_process()
        per_shard = layout.shard_rows
        unique, inverse = np.unique(rows, return_inverse=True)
        positions: list[list[int]] = [[] for _ in range(unique.size)]
        for pos, k in enumerate(inverse.reshape(-1).tolist()):
            positions[k].append(pos)
        unique_rows = unique.tolist()
        first_row: dict[int, int] = {}
        for row in unique_rows:
            first_row.setdefault(row // per_shard, row)
        missing = [s for s in first_row if s not in self._indexes]
        if missing:
            self._load_indexes(missing, first_row)

        # plan: runs of rows whose chunks lie back to back in one shard become one request
        ranges: list[tuple[int, int, int]] = []
        members: list[list[tuple[int, int, int, int]]] = []  # per range: (row, k, offset, size)
        for k, row in enumerate(unique_rows):
            shard, local = divmod(row, per_shard)
            entry = self._indexes[shard]
            offset, size = entry.offsets[local], entry.nbytes[local]
            if offset == EMPTY:
                for pos in positions[k]:
                    out[pos] = layout.fill_value
                continue
            if ranges:
                last_shard, start, end = ranges[-1]
                if last_shard == shard and offset == end and offset + size - start <= MAX_REQUEST_BYTES:
                    ranges[-1] = (shard, start, offset + size)
                    members[-1].append((row, k, offset, size))
                    continue
            ranges.append((shard, offset, offset + size))
            members.append([(row, k, offset, size)])
        if not ranges:
            return PendingRead(lambda: out, lambda: None)

        results: queue.SimpleQueue = queue.SimpleQueue()
        store = _client(self.url, *self._settings)
        future = _loop().submit(self._fetch_ranges(store, ranges, results))
        finish = functools.partial(self._finish_read, ranges, members, positions, results, future, out)
        return PendingRead(finish, future.cancel)

    def _finish_read(self, ranges: list[tuple[int, int, int]], members: list[list[tuple[int, int, int, int]]],
                     positions: list[list[int]], results: queue.SimpleQueue, future: Any, out: np.ndarray) -> np.ndarray:
        """Decode each fetched range of :meth:`start_read` into ``out`` as it lands."""
        layout = self.layout
        flat = out.reshape(out.shape[0], -1).view(np.uint8)
        raw = layout.codec == "raw"
        verify = layout.checksum and self.verify_checksums
        try:
            for _ in range(len(ranges)):
                i, data = results.get()
                shard, start, end = ranges[i]
                if isinstance(data, BaseException):
                    raise self._failed(shard, data)
                if len(data) != end - start:
                    raise self._corrupt(self.object_url(shard), members[i][0][0],
                                        f"range {start}-{end} returned {len(data)} bytes: the object is shorter "
                                        "than its index says")
                view = memoryview(data)
                buffer = _Shard(np.frombuffer(view, dtype=np.uint8), [], [], self.object_url(shard), view)
                for row, k, offset, size in members[i]:
                    src = self._chunk(buffer, row, offset - start, size, verify)
                    first, *others = positions[k]
                    if raw:
                        flat[first] = src
                    else:
                        self._decode(buffer, row, src, flat[first])
                    for pos in others:
                        flat[pos] = flat[first]
                self.counts.ranges += 1
                self.counts.bytes += end - start
                self.counts.rows += len(members[i])
        except BaseException:
            future.cancel()
            raise
        future.result()
        return out


def url_reader(array: Any, name: str, row_name: Callable[[int], str] | None = None,
               verify_checksums: bool = True, max_concurrency: int | None = None) -> ObjectStoreReader | None:
    """An :class:`ObjectStoreReader` for a zarr array opened from a URL, or None to leave it
    to zarr-python: obstore not installed, ``BENZARR_OBJECT_READER=zarr``, not an fsspec
    store of a scheme obstore opens, options it does not translate, or a layout benzarr does
    not write."""
    choice = os.environ.get("BENZARR_OBJECT_READER", "obstore").strip().lower() or "obstore"
    if choice not in ("obstore", "zarr"):  # a typo read as the default without a word
        raise InvalidArgumentError(f"BENZARR_OBJECT_READER={choice!r}: use obstore (the default) or zarr")
    if choice == "zarr":
        return None
    try:
        import obstore  # noqa: F401
    except ImportError:
        return None
    store = getattr(array, "store", None)
    fs = getattr(store, "fs", None)
    root = getattr(store, "path", None)
    if fs is None or root is None:
        return None
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    url = root if "://" in root else f"{protocol}://{root}"
    if obstore_settings(url, getattr(fs, "storage_options", None)) is None:
        return None
    try:
        layout = parse_layout(array.metadata.to_dict())
    except (AttributeError, TypeError, ValueError):
        return None
    if layout is None:
        return None
    return ObjectStoreReader(url, array.path, layout, name, dict(fs.storage_options), row_name,
                             verify_checksums, max_concurrency)


