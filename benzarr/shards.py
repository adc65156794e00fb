"""A fast reader of the sharded band arrays: memory-mapped shard files, one inner chunk a row.

This module follows the Zarr v3 ``sharding_indexed`` codec, version 1.0, "Binary shard
format" (https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/index.html#binary-shard-format):

* a shard file holds the encoded inner chunks, then (``index_location: end``) the shard index;
* the index is one ``(offset, nbytes)`` pair of uint64 little-endian values per inner chunk,
  in C order of the chunks inside the shard, encoded by ``index_codecs``; benzarr writes
  ``[bytes(little), crc32c]``, so the index is followed by the CRC-32C (Castagnoli) of the
  index bytes, 4 bytes little-endian;
* an inner chunk that was never written has ``offset = nbytes = 2**64 - 1`` and reads as the
  array's fill value; a shard file that does not exist reads as fill value throughout.

Shard files use the default chunk key encoding with separator ``/``: shard ``i`` of an array
``(N, C, H, W)`` sharded ``(S, C, H, W)`` is ``<array>/c/<i>/0/0/0``.

:class:`ShardReader` supports exactly the layouts that ``benzarr ingest`` writes (see
:func:`benzarr.store.band_compressors`): rows sharded along the first axis only, one inner
chunk per row, inner codecs ``[bytes(little)]`` (copied straight from the memory map) or
``[bytes(little), blosc(lz4|zstd)]`` (decoded by numcodecs straight into the output),
each followed in store format 2 by ``crc32c`` (Zarr v3 ``crc32c`` codec: the chunk's
encoded bytes, then their CRC-32C, 4 bytes little-endian;
https://zarr-specs.readthedocs.io/en/latest/v3/codecs/crc32c/index.html). The reader checks
that CRC on every chunk it reads (``google_crc32c``, the CPU's CRC instruction) unless told
not to (``verify_checksums=False``).
:func:`row_reader` returns it where it applies and a :class:`ZarrRowReader` (zarr-python's
own API: other writers, other codecs, remote stores through fsspec) everywhere else, so
callers never have to care which one they got.

Each process maps a shard file once, on first use, and checks the index's CRC-32C and
bounds then; a reader that crosses into another process (fork or pickle) drops its maps and
maps the files again itself.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Protocol

import google_crc32c
import numpy as np
import zarr
from numcodecs import blosc

from benzarr.errors import StoreCorruptError
from benzarr.fsutil import os_error
from benzarr.mapped import HOLDS_DESCRIPTOR, map_file

SHARDING_SPEC_URL = (
    "https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/index.html#binary-shard-format"
)
#: offset and nbytes of an inner chunk that is not stored (read as the fill value).
EMPTY = 2**64 - 1
#: Bytes after the index: its CRC-32C.
CRC_BYTES = 4
#: Blosc's header: version, versionlz, flags, typesize (1 byte each), nbytes, blocksize, cbytes.
BLOSC_HEADER = 16
_BLOSC_SIZES = struct.Struct("<4xI4xI")  # (nbytes, cbytes) of a Blosc header
#: Blosc compressors this reader accepts (all that ``benzarr ingest`` writes).
BLOSC_CNAMES = ("lz4", "zstd")



def _fast_crc32c() -> Callable[[Any], int] | None:
    """ICRAR's ``crc32c`` package when it is installed and uses the CPU's CRC instruction."""
    try:
        import crc32c
    except ImportError:
        return None
    return crc32c.crc32c if getattr(crc32c, "hardware_based", False) else None


#: CRC-32C (Castagnoli) of a buffer (bytes or a C-contiguous uint8 array), as zarr's ``crc32c``
#: codec computes it. google-crc32c (a dependency of zarr) by default; the ``crc32c`` package
#: where installed with hardware support (it comes with the ``bench`` extra): it interleaves
#: three streams of the SSE4.2/ARMv8 instruction and ran 12-14 GB/s here against
#: google-crc32c's 2.3-8.5 GB/s, which decides whether checking lz4 chunks costs 20% or under 10%.
crc32c_value: Callable[[Any], int] = _fast_crc32c() or google_crc32c.value

_NUMPY_DTYPES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2", "int32": "<i4",
    "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float32": "<f4", "float64": "<f8",
}


@dataclass(frozen=True)
class ShardLayout:
    """What the fast reader needs from an array's ``zarr.json``.

    Attributes:
        shape: array shape, (N, *row_shape).
        dtype: numpy dtype (little-endian).
        shard_rows: rows per shard (S).
        codec: ``"raw"`` (inner codecs ``[bytes]``) or ``"blosc"``.
        fill_value: value of rows whose chunk is not stored.
        checksum: the inner chain ends in ``crc32c`` (store format 2): every stored chunk
            is its encoded bytes followed by their CRC-32C, 4 bytes little-endian.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    shard_rows: int
    codec: str
    fill_value: Any
    checksum: bool = False

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (one inner chunk), e.g. (4, 120, 120)."""
        return self.shape[1:]

    @cached_property
    def row_nbytes(self) -> int:
        """Decoded bytes of one row (computed once: the reader asks for it per chunk)."""
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def n_shards(self) -> int:
        """Shards along the first axis (the last one may be partial)."""
        return -(-self.shape[0] // self.shard_rows)


def _is_bytes_le(codec: Any) -> bool:
    return (
        isinstance(codec, dict)
        and codec.get("name") == "bytes"
        and (codec.get("configuration") or {}).get("endian", "little") == "little"
    )


def parse_layout(metadata: dict[str, Any]) -> ShardLayout | None:
    """The :class:`ShardLayout` of an array's ``zarr.json`` contents, or None when unsupported.

    Supported means exactly what ``benzarr ingest`` writes: a Zarr v3 array of a fixed-size
    numeric type, regular chunk grid sharded along axis 0 only, default ``/`` chunk keys,
    one ``sharding_indexed`` codec with inner chunk (1, *row_shape), inner codecs
    ``[bytes(little)]`` or ``[bytes(little), blosc(lz4|zstd)]`` (format 1), either one
    followed by ``crc32c`` (format 2), index codecs ``[bytes(little), crc32c]`` at the end,
    and no storage transformers.
    """
    try:
        if metadata.get("zarr_format") != 3 or metadata.get("node_type") != "array":
            return None
        if metadata.get("storage_transformers"):
            return None
        dtype_name = metadata["data_type"]
        if not isinstance(dtype_name, str) or dtype_name not in _NUMPY_DTYPES:
            return None
        shape = tuple(int(s) for s in metadata["shape"])
        grid = metadata["chunk_grid"]
        if grid.get("name") != "regular" or len(shape) < 1:
            return None
        shard_shape = tuple(int(s) for s in grid["configuration"]["chunk_shape"])
        if len(shard_shape) != len(shape) or shard_shape[1:] != shape[1:] or shard_shape[0] < 1:
            return None
        keys = metadata.get("chunk_key_encoding") or {}
        if keys.get("name") != "default" or (keys.get("configuration") or {}).get("separator", "/") != "/":
            return None
        codecs = metadata["codecs"]
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        config = codecs[0]["configuration"]
        inner_shape = tuple(int(s) for s in config["chunk_shape"])
        if inner_shape != (1, *shape[1:]):
            return None
        if config.get("index_location", "end") != "end":
            return None
        index_codecs = config.get("index_codecs") or []
        if len(index_codecs) != 2 or not _is_bytes_le(index_codecs[0]) or index_codecs[1].get("name") != "crc32c":
            return None
        inner = list(config["codecs"])
        checksum = bool(inner) and isinstance(inner[-1], dict) and inner[-1].get("name") == "crc32c"
        if checksum:
            inner = inner[:-1]
        if len(inner) == 1 and _is_bytes_le(inner[0]):
            codec = "raw"
        elif (
            len(inner) == 2
            and _is_bytes_le(inner[0])
            and inner[1].get("name") == "blosc"
            and (inner[1].get("configuration") or {}).get("cname") in BLOSC_CNAMES
        ):
            codec = "blosc"  # the Blosc header describes clevel, shuffle and typesize itself
        else:
            return None
        fill = metadata.get("fill_value", 0)
        dtype = np.dtype(_NUMPY_DTYPES[dtype_name])
        if isinstance(fill, str):  # "NaN", "Infinity", hex floats: leave those to zarr-python
            return None
        fill_value = dtype.type(fill)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None
    return ShardLayout(shape, dtype, shard_shape[0], codec, fill_value, checksum)


def shard_file(array_dir: str | Path, shard: int, ndim: int) -> Path:
    """File of shard ``shard`` of an ``ndim``-dimensional array sharded along axis 0 only:
    ``<array>/c/<shard>/0/…/0`` (default chunk key encoding, separator ``/``)."""
    return Path(array_dir).joinpath("c", str(shard), *("0",) * (ndim - 1))


def check_index(index: np.ndarray, crc: Any, chunks_end: int) -> tuple[list[int], list[int], tuple[int | None, str] | None]:
    """Check one shard index: ``index`` (uint8, 16 bytes a chunk), ``crc`` (its 4 CRC-32C
    bytes, little-endian) and every stored chunk within the ``chunks_end`` bytes before it.

    Returns:
        (offsets, nbytes, problem): ``problem`` is None, or (the chunk's number in the shard,
        or None for the whole index; what is wrong) for the caller to raise with its own
        file name (memory-mapped file or object URL).
    """
    if google_crc32c.value(index.tobytes()) != int.from_bytes(bytes(crc), "little"):
        return [], [], (None, "shard index fails its crc32c checksum")
    pairs = index.view("<u8").reshape(-1, 2)
    offsets, nbytes = pairs[:, 0], pairs[:, 1]
    empty = (offsets == EMPTY) & (nbytes == EMPTY)
    with np.errstate(over="ignore"):
        bad = ~empty & ((offsets > chunks_end) | (nbytes > chunks_end) | (offsets + nbytes > chunks_end))
    if bad.any():
        local = int(np.flatnonzero(bad)[0])
        return [], [], (local, f"chunk {local} at offset {int(offsets[local])}, {int(nbytes[local])} bytes, "
                               f"lies outside the {chunks_end} bytes of chunk data")
    return offsets.tolist(), nbytes.tolist(), None


def check_rows(name: str, rows: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """``rows`` as a flat int64 array, each in [0, ``n``) (IndexError naming array ``name`` if not)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"{name}: rows must lie in [0, {n}), got {rows.min()}..{rows.max()}")
    return rows


def row_buffer(layout: ShardLayout, n_rows: int, out: np.ndarray | None) -> np.ndarray:
    """``out`` checked to hold ``n_rows`` rows of ``layout`` (C-contiguous), or a new such array."""
    if out is None:
        return np.empty((n_rows, *layout.row_shape), dtype=layout.dtype)
    if out.shape != (n_rows, *layout.row_shape) or out.dtype != layout.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {(n_rows, *layout.row_shape)} {layout.dtype}")
    return out


def patch_suffix(row_name: Callable[[int], str] | None, row: int) -> str:
    """``", patch <name>"`` of ``row`` for an error message, or "" without a name."""
    if row_name is None:
        return ""
    try:
        return f", patch {row_name(row)}"
    except Exception:  # the name is a courtesy; never hide the real error
        return ""


class RowReader(Protocol):
    """Reads whole rows (first-axis slices) of an array."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` as (len(rows), *row_shape), in the order given."""
        ...


class _Shard:
    """One memory-mapped shard file: ``data`` (read-only uint8 view of the map), its checked
    index, and ``map`` (the map's owner, :func:`benzarr.mapped.map_file`; None for a shard
    zarr never wrote)."""

    __slots__ = ("data", "offsets", "nbytes", "path", "map")

    def __init__(self, data: np.ndarray | None, offsets: list[int], nbytes: list[int], path: Path,
                 handle: Any) -> None:
        self.data = data
        self.offsets = offsets
        self.nbytes = nbytes
        self.path = path
        self.map = handle


#: Every :class:`ShardReader` of this process that has mapped a shard (for :func:`_make_room`).
_READERS: "weakref.WeakSet[ShardReader]" = weakref.WeakSet()
_READERS_LOCK = threading.Lock()  # readers used from several threads make room one at a time


def _new_lock_in_child() -> None:
    """A forked child gets a free lock: one a parent's thread held at the fork stays held for ever."""
    global _READERS_LOCK
    _READERS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


@cache
def map_budget() -> int:
    """Shard maps this process may hold at once, over all its readers: a quarter of the
    kernel's limit of maps a process (``vm.max_map_count``, 65,530 by default: a full
    BigEarthNet store at the default shard size needs about 6,900 a dataset, and train, val
    and test each map the files they read), or, where a map holds a file descriptor
    (:data:`benzarr.mapped.HOLDS_DESCRIPTOR`), half the soft limit of open files. Beyond it
    the readers drop their older maps (:func:`_make_room`) and map again what they read next:
    slower (85 us a map on this 2-core machine), never "Too many open files" or ENOMEM."""
    if HOLDS_DESCRIPTOR:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return 1 << 20 if soft == resource.RLIM_INFINITY else max(8, soft // 2)
    try:
        maps = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):  # not Linux: macOS has no such limit short of memory
        maps = 65530
    return max(64, maps // 4)


def _make_room(budget: int) -> None:
    """With ``budget`` maps or more held in this process, drop the older half of every
    reader's (each unmaps once no array views it)."""
    with _READERS_LOCK:
        readers = list(_READERS)
        if sum(len(r._shards) for r in readers) < budget:
            return
        for reader in readers:
            for shard in list(reader._shards)[: (len(reader._shards) + 1) // 2]:
                reader._shards.pop(shard, None)  # (another thread may have read it since)


class ShardReader:
    """Rows of one sharded array read straight from its shard files.

    Args:
        array_dir: the array's folder (holding ``zarr.json`` and ``c/``).
        layout: from :func:`parse_layout`.
        name: the array's name in the store, for error messages (e.g. ``"s2/10m"``).
        row_name: maps a row to its patch name, called only to word an error.
        verify_checksums: check each chunk's CRC-32C as it is read (store format 2; format 1
            chunks have none). Off, a chunk's bytes are trusted: for stores already checked
            with ``benzarr verify``. The shard index's CRC-32C is always checked.

    Attributes:
        missing_ok: a shard file that does not exist reads as the fill value (True, zarr's
            rule: no file is written for a shard of fill values only); False raises instead,
            for readers of rows known to hold data (a complete store's valid patches, which
            :class:`~benzarr.data.BigEarthNetDataset` serves), so that a deleted shard file
            is an error and never a batch of zeros.

    Raises (from :meth:`read`):
        StoreCorruptError: bad index CRC-32C, a chunk outside its file, a chunk that fails
            its CRC-32C, does not decode or decodes to the wrong size, or (``missing_ok``
            False) a missing shard file; naming the array, shard file, row and patch.
    """

    missing_ok = True

    def __init__(self, array_dir: str | Path, layout: ShardLayout, name: str,
                 row_name: Callable[[int], str] | None = None, verify_checksums: bool = True) -> None:
        self.array_dir = Path(array_dir)
        self.layout = layout
        self.name = name
        self.shape = layout.shape
        self.dtype = layout.dtype
        self.row_name = row_name
        self.verify_checksums = verify_checksums
        self._shards: dict[int, _Shard] = {}
        self._pid = os.getpid()

    # Maps belong to the process that made them: never pickle them, drop them after a fork.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def shard_path(self, shard: int) -> Path:
        """File of shard ``shard``: ``<array>/c/<shard>/0/0/0`` (default chunk key encoding)."""
        return shard_file(self.array_dir, shard, len(self.shape))

    def close(self) -> None:
        """Drop this process's maps (they close once no array views them)."""
        self._shards.clear()

    def _where(self, row: int) -> str:
        return f"row {row}{patch_suffix(self.row_name, row)}"

    def _corrupt(self, path: Path, row: int, what: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"{self.name}: shard file {path} is corrupt ({what}) reading {self._where(row)}; "
            "re-ingest the store (or restore this file)"
        )

    def _missing(self, path: Any, row: int) -> StoreCorruptError:
        return StoreCorruptError(
            f"{self.name}: shard file {path} is missing, but {self._where(row)} is a patch of this complete "
            "store; the store is damaged: restore the file or re-ingest (benzarr verify lists every damaged shard)"
        )

    def _open_shard(self, shard: int, row: int) -> _Shard:
        """Map shard ``shard`` and check its index (``row``: the row asking, for errors)."""
        path = self.shard_path(shard)
        n_chunks = self.layout.shard_rows
        index_bytes = 16 * n_chunks
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < index_bytes + CRC_BYTES:
                    raise self._corrupt(path, row, f"{size} bytes, shorter than its {index_bytes + CRC_BYTES}-byte index")
                data, handle = map_file(fh.fileno(), size)  # holds no descriptor once fh is closed
        except IsADirectoryError:
            raise self._corrupt(path, row, "a folder where the shard file belongs") from None
        except FileNotFoundError:
            if not self.missing_ok:
                raise self._missing(path, row) from None
            # zarr writes no file for a shard whose chunks are all fill value
            return _Shard(None, [EMPTY] * n_chunks, [EMPTY] * n_chunks, path, None)
        except OSError as exc:  # a symlink loop, no permission, an I/O error: the file named, not Errno 40
            raise os_error(exc, path, f"reading {self._where(row)}") from None
        end = size - CRC_BYTES
        offsets, nbytes, problem = check_index(data[end - index_bytes:end], data[end:size], end - index_bytes)
        if problem is not None:
            local, what = problem
            raise self._corrupt(path, row if local is None else shard * n_chunks + local, what)
        return _Shard(data, offsets, nbytes, path, handle)

    def _shard(self, shard: int, row: int) -> _Shard:
        if self._pid != os.getpid():  # forked: map our own files
            self._shards = {}
            self._pid = os.getpid()
        entry = self._shards.get(shard)
        if entry is None:
            _make_room(map_budget())  # a map a shard file: keep under the process's limits
            entry = self._shards[shard] = self._open_shard(shard, row)
            if self not in _READERS:
                with _READERS_LOCK:
                    _READERS.add(self)
        return entry

    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as (len(rows), *row_shape) of ``dtype``.

        Rows are visited shard by shard (each shard's index is looked up once) and written
        to their place in ``out`` (allocated when not given; must be C-contiguous).
        """
        layout = self.layout
        rows = check_rows(self.name, rows, layout.shape[0])
        out = row_buffer(layout, rows.size, out)
        if rows.size == 0:
            return out
        flat = out.reshape(rows.size, -1).view(np.uint8)  # one byte row per output row
        per_shard = layout.shard_rows
        raw = layout.codec == "raw"
        verify = layout.checksum and self.verify_checksums
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order].tolist()
        positions = order.tolist()
        current, entry = -1, None
        for row, pos in zip(sorted_rows, positions):
            shard, local = divmod(row, per_shard)
            if shard != current:
                entry = self._shard(shard, row)
                current = shard
            offset = entry.offsets[local]
            size = entry.nbytes[local]
            if offset == EMPTY:
                out[pos] = layout.fill_value
                continue
            src = self._chunk(entry, row, offset, size, verify)
            if raw:
                flat[pos] = src
            else:
                self._decode(entry, row, src, flat[pos])
        return out

    def _chunk(self, entry: _Shard, row: int, offset: int, size: int, verify: bool) -> np.ndarray:
        """The encoded bytes of ``row``'s stored chunk (without its crc32c), after checking its
        size (raw) or Blosc header sizes, and its crc32c when ``verify``."""
        layout = self.layout
        expected = layout.row_nbytes
        body = size - CRC_BYTES if layout.checksum else size
        if layout.codec == "raw":
            if body != expected:
                raise self._corrupt(entry.path, row, f"chunk of {size} bytes, expected {size - body + expected}")
        else:
            # Blosc header: uncompressed bytes at 4..8, compressed bytes at 12..16
            if body < BLOSC_HEADER:
                raise self._corrupt(entry.path, row, f"blosc chunk of {size} bytes has no header")
            decoded, coded = _BLOSC_SIZES.unpack_from(entry.map, offset)
            if decoded != expected or coded != body:
                raise self._corrupt(
                    entry.path, row,
                    f"blosc chunk decodes to {decoded} bytes from {coded}, expected {expected} from {body}",
                )
        src = entry.data[offset:offset + body]
        if verify and crc32c_value(src) != int.from_bytes(entry.map[offset + body:offset + size], "little"):
            raise self._corrupt(entry.path, row, "chunk fails its crc32c checksum")
        return src

    def _decode(self, entry: _Shard, row: int, src: np.ndarray, dest: np.ndarray) -> None:
        try:
            blosc.decompress(src, dest)
        except Exception as exc:  # numcodecs raises RuntimeError; keep any reason
            raise self._corrupt(entry.path, row, f"blosc chunk does not decode: {exc}") from None

    def check_shard(self, shard: int, decode: bool | None = None) -> ShardCheck:
        """Read every stored chunk of shard ``shard``, checking all that :meth:`read` checks,
        including each chunk's CRC-32C (whatever ``verify_checksums`` says).

        Args:
            shard: the shard's number.
            decode: also decode each Blosc chunk. None (default): only where chunks have no
                crc32c (format 1); a chunk whose crc32c matches holds exactly the bytes the
                writer wrote, so decoding it again checks nothing more and costs most of
                the time.

        Problems are collected, not raised: a shard whose file or index is bad gives one
        problem for all its rows; a bad chunk gives one problem for its row. The shard's map
        is dropped afterwards (a whole-store check keeps no maps).
        """
        layout = self.layout
        first = shard * layout.shard_rows
        rows = range(first, min(first + layout.shard_rows, layout.shape[0]))
        result = ShardCheck(self.name, shard, rows)
        try:
            entry = self._shard(shard, first)
        except (StoreCorruptError, OSError) as exc:
            result.exists = self.shard_path(shard).exists()
            message = str(exc) if isinstance(exc, StoreCorruptError) else (
                f"{self.name}: cannot read shard file {self.shard_path(shard)} ({exc})")
            result.problems.append((list(rows), message))
            return result
        result.exists = entry.map is not None
        decode = (layout.codec == "blosc") and (not layout.checksum if decode is None else decode)
        scratch = np.empty(layout.row_nbytes, dtype=np.uint8)
        try:
            for row in rows:
                offset, size = entry.offsets[row - first], entry.nbytes[row - first]
                if offset == EMPTY:
                    continue
                result.chunks += 1
                result.bytes += size
                try:
                    src = self._chunk(entry, row, offset, size, layout.checksum)
                    if decode:
                        self._decode(entry, row, src, scratch)
                except StoreCorruptError as exc:
                    result.problems.append(([row], str(exc)))
        finally:
            self._shards.pop(shard, None)
        return result


@dataclass
class ShardCheck:
    """What :meth:`ShardReader.check_shard` found in one shard.

    Attributes:
        array: the array's name.
        shard: the shard's number.
        rows: the rows the shard holds.
        exists: a shard file is there (no file: every row reads as the fill value).
        chunks: stored chunks read.
        bytes: their stored bytes.
        problems: (rows, message) for each bad chunk, or one for all rows when the file or
            its index is bad.
    """

    array: str
    shard: int
    rows: range
    exists: bool = False
    chunks: int = 0
    bytes: int = 0
    problems: list[tuple[list[int], str]] = field(default_factory=list)


class ZarrRowReader:
    """The fallback: rows through zarr-python (any codec, any store zarr-python can open).

    Args:
        array: an open ``zarr.Array``.
        name: the array's name, for messages.
        row_name: maps a row to its patch name, called only to word an error.

    Raises (from :meth:`read`):
        StoreCorruptError: a chunk zarr-python cannot decode (a failed ``crc32c`` check,
            a Blosc error), naming the array, row and patch.
    """

    def __init__(self, array: zarr.Array, name: str, row_name: Callable[[int], str] | None = None) -> None:
        self.array = array
        self.name = name
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.row_name = row_name

    def _corrupt(self, rows: np.ndarray, exc: Exception) -> StoreCorruptError | None:
        """The error for the first of ``rows`` that zarr-python cannot read (only on failure)."""
        for row in rows.tolist():
            try:
                self.array[row]
            except (ValueError, RuntimeError) as row_exc:
                return StoreCorruptError(
                    f"{self.name}: chunk of row {row}{patch_suffix(self.row_name, row)} is corrupt ({row_exc}); "
                    "re-ingest the store (or restore its shard file)"
                )
        return None

    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as (len(rows), *row_shape)."""
        rows = check_rows(self.name, rows, self.shape[0])
        # one orthogonal selection of the sorted unique rows: zarr fetches whole shards' chunks at once
        unique, inverse = np.unique(rows, return_inverse=True)
        try:
            data = np.asarray(self.array.get_orthogonal_selection((unique,))) if unique.size else np.empty(
                (0, *self.shape[1:]), dtype=self.dtype)
        except (ValueError, RuntimeError) as exc:  # zarr's crc32c and Blosc codecs raise these
            error = self._corrupt(unique, exc)
            if error is None:
                raise
            raise error from None
        result = data[inverse]
        if out is None:
            return np.ascontiguousarray(result)
        out[...] = result
        return out


def fast_reader(array_dir: str | Path, name: str, row_name: Callable[[int], str] | None = None,
                verify_checksums: bool = True) -> ShardReader | None:
    """A :class:`ShardReader` for the local array folder ``array_dir``, or None when its
    ``zarr.json`` describes a layout this reader does not support (or cannot be read)."""
    try:
        metadata = json.loads((Path(array_dir) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    layout = parse_layout(metadata)
    if layout is None:
        return None
    return ShardReader(array_dir, layout, name, row_name, verify_checksums)


def row_reader(array: zarr.Array, name: str, local_dir: str | Path | None,
               row_name: Callable[[int], str] | None = None, verify_checksums: bool = True,
               missing_ok: bool = True) -> RowReader:
    """The fastest reader for ``array``: :class:`ShardReader` when ``local_dir`` (its folder
    on a local file system) holds a supported layout; for an array opened from a URL
    (``s3://``, ``gs://``, ``az://``, ``http(s)://``), :class:`benzarr.objstore.ObjectStoreReader`
    (obstore's concurrent range requests) where :func:`benzarr.objstore.url_reader` takes
    it; else :class:`ZarrRowReader`.

    ``verify_checksums`` and ``missing_ok`` (:attr:`ShardReader.missing_ok`) apply to the
    shard and object-store readers; zarr-python always checks a ``crc32c`` codec (its
    failure is raised as :class:`StoreCorruptError` all the same) and reads a missing shard
    as fill values."""
    reader: Any = None
    if local_dir is not None:
        reader = fast_reader(local_dir, name, row_name, verify_checksums)
    else:
        from benzarr.objstore import url_reader

        reader = url_reader(array, name, row_name, verify_checksums)
    if reader is None:
        return ZarrRowReader(array, name, row_name)
    reader.missing_ok = missing_ok
    return reader


# -- writing -----------------------------------------------------------------------------

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def encode_shard(data: np.ndarray, metadata: dict[str, Any]) -> bytes | None:
    """The bytes of one full shard file holding ``data``, as zarr-python writes them.

    The counterpart of :class:`ShardReader` for the layouts ``benzarr ingest`` writes: each
    row is one inner chunk, encoded ``bytes(little)`` then, if configured, Blosc with the
    array's (cname, clevel, shuffle, typesize, blocksize), then, in format 2, followed by
    the CRC-32C of those bytes (``crc32c`` codec); rows equal to the fill value are
    not stored (index entry ``2**64 - 1``, as zarr-python's ``write_empty_chunks=False``);
    the index of (offset, nbytes) uint64 LE pairs and its CRC-32C follow the chunks.

    Args:
        data: (rows, *row_shape) with ``rows`` at most the shard's row count.
        metadata: the array's ``zarr.json`` contents.

    Returns:
        The file's bytes, or None when every row is fill value (zarr stores no file then).

    Raises:
        ValueError: a layout this writer does not handle (use zarr-python instead).
    """
    layout = parse_layout(metadata)
    if layout is None:
        raise ValueError("not a layout benzarr writes")
    if data.shape[0] > layout.shard_rows or data.shape[1:] != layout.shape[1:]:
        raise ValueError(f"data of shape {data.shape} does not fit a shard of {layout.shard_rows} rows")
    data = np.ascontiguousarray(data, dtype=layout.dtype.newbyteorder("<"))
    compressor = None
    if layout.codec == "blosc":
        inner = metadata["codecs"][0]["configuration"]["codecs"][1]["configuration"]
        compressor = blosc_codec(inner, layout.dtype.itemsize)
    index = np.full((layout.shard_rows, 2), EMPTY, dtype="<u8")
    parts: list[bytes] = []
    position = 0
    empty = (data == layout.fill_value).reshape(data.shape[0], -1).all(axis=1)
    for row in range(data.shape[0]):
        if empty[row]:
            continue
        raw = data[row]
        encoded = raw.tobytes() if compressor is None else bytes(compressor.encode(raw))
        if layout.checksum:
            encoded += google_crc32c.value(encoded).to_bytes(CRC_BYTES, "little")
        index[row] = (position, len(encoded))
        parts.append(encoded)
        position += len(encoded)
    if not parts:
        return None
    index_bytes = index.tobytes()
    return b"".join(parts) + index_bytes + google_crc32c.value(index_bytes).to_bytes(CRC_BYTES, "little")


def blosc_codec(config: dict[str, Any], itemsize: int) -> Any:
    """numcodecs Blosc configured as zarr-python configures it from a Zarr v3 ``blosc`` codec."""
    from numcodecs import Blosc

    settings: dict[str, Any] = {
        "cname": config["cname"],
        "clevel": int(config["clevel"]),
        "shuffle": _SHUFFLES[config["shuffle"]],
        "blocksize": int(config.get("blocksize", 0)),
    }
    try:
        return Blosc.from_config({**settings, "typesize": int(config.get("typesize") or itemsize)})
    except TypeError:  # numcodecs < 0.16 has no typesize: it takes the buffer's item size
        return Blosc.from_config(settings)


def write_shard(array_dir: str | Path, shard: int, data: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write shard ``shard`` of a local array atomically (temporary file, then rename).

    A crash leaves either the old file or the new one, never a torn shard.
    """
    payload = encode_shard(data, metadata)  # raises ValueError for a layout it does not handle
    path = shard_file(array_dir, shard, len(metadata["shape"]))
    if payload is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(payload)
        os.replace(temporary, path)
    except BaseException:  # a full disk, a kill signal: leave no temporary file in the store
        temporary.unlink(missing_ok=True)
        raise
