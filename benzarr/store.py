"""The benzarr store format (version 2; version 1 stores are read too): layout constants, create, open, validate.

A store is one Zarr v3 group (see docs/design.md §2); this table is :func:`layout_table`, made
from the declarations below (:data:`BAND_ARRAYS`, :data:`ROW_FIELDS`, :data:`OTHER_ARRAYS`)::

    s2/10m                         (N, 4, 120, 120)  uint16   B02, B03, B04, B08, reflectance x 10,000
    s2/20m                         (N, 6, 60, 60)    uint16   B05, B06, B07, B8A, B11, B12, reflectance x 10,000
    s2/60m                         (N, 2, 20, 20)    uint16   B01, B09, reflectance x 10,000
    s1                             (N, 2, 120, 120)  float32  VV, VH backscatter, dB (with s1)
    reference_map                  (N, 120, 120)     uint16   CLC2018 level-3 code per pixel (with reference-map)
    labels/clc43                   (N, 43)           uint8    multi-hot, official 43-class order
    labels/clc19                   (N, 19)           uint8    multi-hot, official 19-class order
    meta/patch_name                (N,)              string   sorted; row i is patch i
    meta/tile_source               (N,)              string   the Sentinel-2 product
    meta/acquisition_time          (N,)              int64    seconds since epoch, UTC
    meta/bounds                    (N, 4)            float64  ulx, uly, lrx, lry in the patch CRS (metres)
    meta/epsg                      (N,)              int32    EPSG code of the patch CRS
    meta/valid                     (N,)              bool     False: the patch failed ingest (never served)
    meta/error                     (N,)              string   why it failed ("" when valid)
    meta/s1_name                   (N,)              string   the paired S1 patch
    meta/country                   (N,)              string   country of the patch (v2)
    meta/season                    (N,)              string   season of the acquisition (v2)
    meta/contains_seasonal_snow    (N,)              bool     v2 flag
    meta/contains_cloud_or_shadow  (N,)              bool     v2 flag
    meta/official_split            (N,)              string   v2 split column (train, validation, test)
    s2/patch                       (N,)              string   the patch names, equal to meta/patch_name
    s2/band_10m                    (4,)              string   B02, B03, B04, B08
    s2/band_20m                    (6,)              string   B05, B06, B07, B8A, B11, B12
    s2/band_60m                    (2,)              string   B01, B09
    patch                          (N,)              string   the patch names, equal to meta/patch_name (with s1 or reference-map)
    polarisation                   (2,)              string   VV, VH (with s1)
    labels/patch                   (N,)              string   the patch names, equal to meta/patch_name
    labels/class_clc43             (43,)             string   clc43 class names
    labels/class_clc19             (19,)             string   clc19 class names
    meta/patch                     (N,)              string   the patch names, equal to meta/patch_name
    meta/corner                    (4,)              string   ulx, uly, lrx, lry
    splits/<name>                  (N,)              int8     0 train, 1 val, 2 test, -1 excluded
    ingest/done                    (n_shards,)       bool     shard written completely (resume marker)
    ingest/band_stats              (n_shards, 12, 5) float64  per shard and S2 band: count, mean, M2, min, max
    ingest/s1_stats                (n_shards, 2, 5)  float64  the same per polarisation (with s1)
    ingest/stage/*                                            staged per-row arrays, one chunk a shard (while ingesting)

Band arrays are sharded along N (``shard_size`` patches a shard, one inner chunk per patch),
so one patch is one contiguous byte range per array. Label and metadata arrays are chunked
coarsely (:data:`ROW_CHUNK` rows) for fast whole-array reads; while an ingest runs, each
worker writes its rows into ``ingest/stage`` (chunked by shard, so a worker that owns a shard
owns every chunk it writes), and the final step copies them over before marking the store
complete.

Coordinate arrays (:data:`COORDINATES`) label the dimensions for xarray and other CF-aware
readers: a 1-D string array named like the dimension it labels, in the group of the arrays that
have it, is a dimension coordinate (``xr.open_zarr(store, group="s2").sel(band_10m="B04")``).
Each group with a ``patch`` dimension holds its own copy of the patch names (Zarr v3 has no links,
and ``xr.open_zarr`` sees one group). Stores written before them have none and read the same.

The group attribute ``benzarr`` holds the format version, completeness, band and class names,
per-band statistics and the ingest parameters. A store reads as complete only once
``benzarr.complete`` is true, which ingest writes last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from benzarr import __version__
from benzarr.bands import BAND_GROUPS, BANDS, PATCH_SIDE, S1_BANDS
from benzarr.bigearthnet import CLC19, CLC43, NOMENCLATURES
from benzarr.checks import is_whole
from benzarr.errors import (
    BenzarrError,
    InvalidArgumentError,
    ObjectStoreError,
    SplitExistsError,
    SplitNotFoundError,
    StoreChangedError,
    StoreCorruptError,
    StoreIncompleteError,
    StoreNotFoundError,
    StoreVersionError,
    UnsafeOverwriteError,
)
# What benzarr's writers leave beside a folder while they replace or delete it (never an array
# or group of the store: listings and `verify` skip it).
from benzarr.fsutil import WRITER_LEFTOVER
from benzarr.shards import RowReader, row_reader, write_shard
from benzarr.timestamps import utc_timestamp

#: Store format. 1: the first layout. 2: every inner chunk of the band arrays ends in a crc32c
#: (Zarr v3 ``crc32c`` codec last in the inner chain), checked by every reader. Format 1 stores
#: stay readable; they have no chunk checksums.
FORMAT_VERSION = 2
#: The first format whose band chunks carry a crc32c.
CHECKSUM_FORMAT = 2
ATTRS_KEY = "benzarr"

#: Band group -> array path.
S2_ARRAYS: dict[str, str] = {group: f"s2/{group}" for group in BAND_GROUPS}
LABEL_ARRAYS: dict[str, str] = {name: f"labels/{name}" for name in NOMENCLATURES}
SPLITS_GROUP = "splits"
DONE_ARRAY = "ingest/done"
STATS_ARRAY = "ingest/band_stats"
S1_ARRAY = "s1"
REFERENCE_MAP_ARRAY = "reference_map"
S1_STATS_ARRAY = "ingest/s1_stats"
#: Stored channel group (:data:`benzarr.bands.CHANNEL_GROUPS`) -> array path.
CHANNEL_ARRAYS: dict[str, str] = {**S2_ARRAYS, "s1": S1_ARRAY}
#: Columns of ``ingest/band_stats``.
STATS_FIELDS = ("count", "mean", "m2", "min", "max")

class BandArray(NamedTuple):
    """Declaration of a per-patch image array: (N, *row_shape), one inner chunk a patch,
    sharded along N (``shard_size`` patches a shard file)."""

    modality: str  #: the modality that adds it (:data:`benzarr.bands.MODALITIES`)
    dtype: str
    row_shape: tuple[int, ...]
    dims: tuple[str, ...]  #: dimension names after ``patch`` (unique per size, for xarray)
    channels: tuple[str, ...]  #: channel names along the first row axis (() for none)
    doc: str


#: Image arrays, in stored order: path -> declaration.
BAND_ARRAYS: dict[str, BandArray] = {
    **{S2_ARRAYS[group]: BandArray("s2", "uint16", (len(names), side, side),
                                   (f"band_{group}", f"y_{group}", f"x_{group}"), names,
                                   f"{', '.join(names)}, reflectance x 10,000")
       for group, (names, side, _) in BAND_GROUPS.items()},
    S1_ARRAY: BandArray("s1", "float32", (len(S1_BANDS), PATCH_SIDE, PATCH_SIDE), ("polarisation", "y_10m", "x_10m"),
                        S1_BANDS, f"{', '.join(S1_BANDS)} backscatter, dB"),
    REFERENCE_MAP_ARRAY: BandArray("reference-map", "uint16", (PATCH_SIDE, PATCH_SIDE), ("y_10m", "x_10m"), (),
                                   "CLC2018 level-3 code per pixel"),
}


class RowField(NamedTuple):
    """Declaration of a per-row array other than bands: (N, *trailing)."""

    dtype: Any  #: numpy dtype name, or ``str`` for variable-length strings
    trailing: tuple[int, ...]
    fill: Any
    attr: str | None  #: the :class:`~benzarr.sources.Patch` attribute ingest fills it from (None: ingest's own)
    doc: str


PATCH_NAME_ARRAY = "meta/patch_name"
VALID_ARRAY = "meta/valid"
ERROR_ARRAY = "meta/error"
#: Per-row arrays other than bands: path -> declaration. Ingest allocates (:func:`empty_rows`),
#: fills (:data:`PATCH_FIELDS`), stages and copies exactly these.
ROW_FIELDS: dict[str, RowField] = {
    LABEL_ARRAYS["clc43"]: RowField("uint8", (len(CLC43),), 0, "clc43", "multi-hot, official 43-class order"),
    LABEL_ARRAYS["clc19"]: RowField("uint8", (len(CLC19),), 0, "clc19", "multi-hot, official 19-class order"),
    PATCH_NAME_ARRAY: RowField(str, (), "", None, "sorted; row i is patch i"),
    "meta/tile_source": RowField(str, (), "", "tile_source", "the Sentinel-2 product"),
    "meta/acquisition_time": RowField("int64", (), 0, "acquisition_time", "seconds since epoch, UTC"),
    "meta/bounds": RowField("float64", (4,), 0.0, "bounds", "ulx, uly, lrx, lry in the patch CRS (metres)"),
    "meta/epsg": RowField("int32", (), 0, "epsg", "EPSG code of the patch CRS"),
    VALID_ARRAY: RowField("bool", (), False, None, "False: the patch failed ingest (never served)"),
    ERROR_ARRAY: RowField(str, (), "", None, 'why it failed ("" when valid)'),
    "meta/s1_name": RowField(str, (), "", "s1_name", "the paired S1 patch"),
    "meta/country": RowField(str, (), "", "country", "country of the patch (v2)"),
    "meta/season": RowField(str, (), "", "season", "season of the acquisition (v2)"),
    "meta/contains_seasonal_snow": RowField("bool", (), False, "snow", "v2 flag"),
    "meta/contains_cloud_or_shadow": RowField("bool", (), False, "cloud", "v2 flag"),
    "meta/official_split": RowField(str, (), "", "official_split", "v2 split column (train, validation, test)"),
}
#: (path, Patch attribute) of every row field ingest copies from a read patch.
PATCH_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (path, spec.attr) for path, spec in ROW_FIELDS.items() if spec.attr is not None
)
#: Rows per chunk of the final per-row arrays.
ROW_CHUNK = 1 << 16
#: Where ingest workers stage per-row data, one chunk per shard (removed once complete).
STAGE_GROUP = "ingest/stage"


def stage_path(path: str) -> str:
    """Staging array of a per-row array (``labels/clc43`` -> ``ingest/stage/labels.clc43``)."""
    return f"{STAGE_GROUP}/{path.replace('/', '.')}"


#: Arrays besides :data:`BAND_ARRAYS` and :data:`ROW_FIELDS`: path -> (shape, dtype, what).
OTHER_ARRAYS: dict[str, tuple[str, str, str]] = {
    f"{SPLITS_GROUP}/<name>": ("(N,)", "int8", "0 train, 1 val, 2 test, -1 excluded"),
    DONE_ARRAY: ("(n_shards,)", "bool", "shard written completely (resume marker)"),
    STATS_ARRAY: (f"(n_shards, {len(BANDS)}, {len(STATS_FIELDS)})", "float64",
                  "per shard and S2 band: count, mean, M2, min, max"),
    S1_STATS_ARRAY: (f"(n_shards, {len(S1_BANDS)}, {len(STATS_FIELDS)})", "float64", "the same per polarisation (with s1)"),
    f"{STAGE_GROUP}/*": ("", "", "staged per-row arrays, one chunk a shard (while ingesting)"),
}

#: Dimension ``corner`` of ``meta/bounds``.
BOUNDS_CORNERS = ("ulx", "uly", "lrx", "lry")


class Coordinate(NamedTuple):
    """Declaration of a coordinate array: 1-D strings named like the dimension they label, in the
    group of the arrays that have that dimension (Zarr v3 ``dimension_names`` = (its name,)), which
    xarray reads as a dimension coordinate (``xr.open_zarr(store, group="s2").sel(band_10m="B04")``)."""

    labels: tuple[str, ...] | None  #: the labels; None: the patch names (a copy of ``meta/patch_name``)
    modalities: tuple[str, ...]  #: written when the store holds any of these; () always
    doc: str


def _group_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _declare_coordinates() -> dict[str, Coordinate]:
    """:data:`COORDINATES` from :data:`BAND_ARRAYS` and :data:`ROW_FIELDS`: ``patch`` in every group
    with a per-patch array, channel names on each band array's channel dimension, class names on
    ``labels``, corner names on ``meta/bounds``."""
    coords: dict[str, Coordinate] = {}

    def add(path: str, labels: tuple[str, ...] | None, modality: str | None, doc: str) -> None:
        modalities = (modality,) if modality else ()
        if path in coords:  # written with any of the groups' arrays
            known = coords[path].modalities
            modalities = tuple(dict.fromkeys(known + modalities)) if known and modalities else ()
        coords[path] = Coordinate(labels, modalities, doc)

    patch_doc = "the patch names, equal to meta/patch_name"
    for path, band in BAND_ARRAYS.items():
        group = _group_of(path)
        add(f"{group}/patch".lstrip("/"), None, band.modality, patch_doc)
        if band.channels:
            add(f"{group}/{band.dims[0]}".lstrip("/"), band.channels, band.modality, ", ".join(band.channels))
    for path, spec in ROW_FIELDS.items():
        group = _group_of(path)
        add(f"{group}/patch", None, None, patch_doc)
        if group == "labels":
            name = path.rsplit("/", 1)[1]
            add(f"{group}/class_{name}", tuple(NOMENCLATURES[name]), None, f"{name} class names")
        elif spec.trailing:
            add(f"{group}/corner", BOUNDS_CORNERS, None, ", ".join(BOUNDS_CORNERS))
    return coords


#: Coordinate arrays (additions of format 2; stores written before them have none and read the
#: same): path -> declaration, written by :func:`create_store`.
COORDINATES: dict[str, Coordinate] = _declare_coordinates()

#: Every array :func:`lay_out` may create (any modality, the ingest staging copies too), and
#: the groups above them: with ``splits/<name>``, all that benzarr writes in a store.
_LAYOUT_ARRAYS = frozenset({*BAND_ARRAYS, *ROW_FIELDS, *map(stage_path, ROW_FIELDS), *COORDINATES,
                            DONE_ARRAY, STATS_ARRAY, S1_STATS_ARRAY})
_LAYOUT_GROUPS = frozenset({"", SPLITS_GROUP, *(path.rsplit("/", i)[0] for path in _LAYOUT_ARRAYS
                                               for i in range(1, path.count("/") + 1))})


def layout_node(path: str) -> str | None:
    """What benzarr writes at ``path`` in a store ("/"-separated, relative to the root, ``""``
    the root): ``"group"``, ``"array"`` (a :func:`lay_out` array, or any ``splits/<name>``: a
    split, or what writing one left), or None, where no benzarr writer puts anything (a user's
    array or folder). What ``--overwrite`` may delete is checked against this
    (:func:`benzarr.fsutil.foreign_files`)."""
    if path in _LAYOUT_GROUPS:
        return "group"
    group, _, name = path.rpartition("/")
    if path in _LAYOUT_ARRAYS or (group == SPLITS_GROUP and name):
        return "array"
    return None


def layout_table() -> str:
    """The store layout, one line an array, made from :data:`BAND_ARRAYS`,
    :data:`ROW_FIELDS`, :data:`COORDINATES` and :data:`OTHER_ARRAYS`: the table in this module's docstring (a test
    keeps the two equal)."""
    rows = [(path, f"(N, {', '.join(map(str, band.row_shape))})", band.dtype,
             band.doc if band.modality == "s2" else f"{band.doc} (with {band.modality})")
            for path, band in BAND_ARRAYS.items()]
    rows += [(path, f"(N, {', '.join(map(str, spec.trailing))})" if spec.trailing else "(N,)",
              "string" if spec.dtype is str else spec.dtype, spec.doc) for path, spec in ROW_FIELDS.items()]
    rows += [(path, "(N,)" if coord.labels is None else f"({len(coord.labels)},)", "string",
              coord.doc + (f" (with {' or '.join(coord.modalities)})" if coord.modalities not in ((), ("s2",))
                           else "")) for path, coord in COORDINATES.items()]
    rows += [(path, *rest) for path, rest in OTHER_ARRAYS.items()]
    width = max(len(path) for path, *_ in rows)
    return "\n".join(f"    {path:<{width}}  {shape:<17} {dtype:<8} {doc}".rstrip() for path, shape, dtype, doc in rows)


COMPRESSIONS = ("none", "lz4", "zstd")
DEFAULT_SHARD_SIZE = 256
#: Largest shard size: 65,536 patches (a 7.5 GB shard of 10 m bands; per-shard statistics are
#: exact in uint64 up to this size).
MAX_SHARD_SIZE = 1 << 16
DEFAULT_COMPRESSION = "lz4"

#: Split codes.
TRAIN, VAL, TEST, EXCLUDED = 0, 1, 2, -1
SUBSETS: dict[str, int] = {"train": TRAIN, "val": VAL, "test": TEST}


def band_compressors(compression: str, dtype: str = "uint16",
                     checksum: bool = True) -> list[BloscCodec | Crc32cCodec] | None:
    """Zarr v3 bytes-to-bytes codecs of a band array's inner chunks (after ``bytes(little)``).

    ``none`` stores raw little-endian bytes (read straight from a memory map);
    ``lz4``/``zstd`` use Blosc with bit-shuffle, which suits 12-bit reflectances in uint16,
    and byte-shuffle for float32 (S1 backscatter), where bit-shuffle gains nothing.
    With ``checksum`` (format 2 on) the chain ends in ``crc32c``: 4 bytes, little-endian,
    the CRC-32C of the encoded chunk, checked by benzarr, zarr-python and tensorstore.
    ``checksum=False`` gives format 1's chain (no chunk checksums).
    """
    shuffle = "bitshuffle" if dtype == "uint16" else "shuffle"
    if compression == "none":
        chain: list[BloscCodec | Crc32cCodec] = []
    elif compression == "lz4":
        chain = [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]
    elif compression == "zstd":
        chain = [BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)]
    else:
        raise InvalidArgumentError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    if checksum:
        chain.append(Crc32cCodec())
    return chain or None


#: Split names: ASCII letters, digits, ".", "_" and "-", not starting with "." (a name is a
#: folder of the store: no separators, no "..").
SPLIT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_split_name(name: str) -> str:
    """Return ``name`` if it is a valid split name (:data:`SPLIT_NAME`).

    Raises:
        InvalidArgumentError: naming the rule.
    """
    if not isinstance(name, str) or SPLIT_NAME.fullmatch(name) is None:
        raise InvalidArgumentError(
            f"invalid split name {name!r}: use letters A-Z a-z, digits, '.', '_' and '-' "
            "(not starting with '.')"
        )
    if name == "zarr.json":  # splits/zarr.json is the splits group's own metadata: no split can live there
        raise InvalidArgumentError("invalid split name 'zarr.json': it is the file that makes the store's splits/ "
                                   "folder a Zarr group; choose another name")
    return name


def is_url(path: str | Path) -> bool:
    """True for fsspec-style URLs (``s3://...``), false for local paths."""
    return "://" in str(path)


#: Packages whose exceptions mean that a request to object storage failed: the endpoint, the
#: network, the credentials or a permission (fsspec's S3, HTTP, GCS and Azure clients, obstore).
_REMOTE_CLIENTS = ("botocore", "aiobotocore", "s3fs", "aiohttp", "gcsfs", "adlfs", "obstore", "urllib3", "requests")


def remote_failure(url: str | Path, exc: BaseException) -> ObjectStoreError | None:
    """``exc``, raised while a store at ``url`` was accessed, as one line naming the store and
    what to check, when it is an object-storage client's error (an unreachable endpoint, missing
    credentials, access denied); None for a local path or any other exception. The client's
    message names the URL it asked for, never a credential."""
    if not is_url(url) or isinstance(exc, BenzarrError):
        return None
    if not any(t.__module__.split(".")[0] in _REMOTE_CLIENTS for t in type(exc).__mro__):
        return None
    return ObjectStoreError(f"{url}: the object store could not be reached or refused the request "
                            f"({type(exc).__name__}: {exc}); check the endpoint (--endpoint-url or "
                            "$AWS_ENDPOINT_URL), the credentials and the bucket")


#: Root attributes that ingest writes (:func:`create_store`, :meth:`Store.mark_complete`) and
#: nothing changes once a store is complete: their digest is the store's identity
#: (:func:`store_fingerprint`). Attributes recorded later (``split_stats``, ``verified``, a
#: user's own) are not part of it.
IDENTITY_KEYS = ("format_version", "complete", "n_patches", "shard_size", "compression", "modalities", "bands",
                 "label_sets", "band_order", "classes", "source", "ingest", "package_version", "stats",
                 "label_counts", "n_failed", "n_without_clc19")


def store_fingerprint(attrs: Mapping[str, Any]) -> str:
    """The identity of a complete store: SHA-256 (16 hex digits) of its ingest-time ``benzarr``
    attributes (:data:`IDENTITY_KEYS`). A store rebuilt at the same path from other data has
    other per-band statistics or label counts, so another fingerprint; a byte-identical
    rebuild has the same one (and the same data). Ingest records no random token: its stores
    are the same bytes from run to run."""
    chosen = {key: attrs.get(key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


class StoreWatch:
    """Tells whether the local store at ``path`` is still the one that was opened there.

    The cheap part is one ``os.stat`` of the root ``zarr.json`` (no read): while its (device,
    inode, mtime, size) are those last seen, nothing changed. When they differ (every write of
    the root attributes renames a new file into place), the file is read once and its
    :func:`store_fingerprint` compared: equal means attributes were added (``split_stats``,
    ``verified``, splits do not touch it at all) and the new stat is remembered; different
    means another store was put there. Why not the root folder's inode: ext4 hands a
    replaced store's new root folder the inode number the old one freed (seen on every
    ``ingest --overwrite`` here), and its mtime changes with every attribute write.

    Local stores only: a URL store (``s3://...``) has no cheap stat, so none is watched.
    Plain data: it pickles into loader workers, each of which then checks for itself.

    Attributes:
        path: the store's folder.
        fingerprint: :func:`store_fingerprint` of the store that was opened.
    """

    def __init__(self, path: str | Path, fingerprint: str, seen: tuple[int, int, int, int] | None) -> None:
        self.path = str(path)
        self.file = os.path.join(self.path, "zarr.json")  #: the root zarr.json, stat'ed by check
        self.fingerprint = fingerprint
        self._seen = seen

    def check(self, what: str = "it") -> bool:
        """Raise :class:`StoreChangedError` (``what`` names the holder in the message: "this
        dataset") when the store was replaced or removed; else return True when its root
        attributes were rewritten since the last check (same store), False when not.

        Raises:
            StoreChangedError: another store is at the path, or none.
            FileSystemError: the root ``zarr.json`` cannot be read (permission, I/O error).
            StoreCorruptError: it is there but is not JSON.
        """
        try:
            seen = _stat_key(os.stat(self.file))
        except FileNotFoundError:
            raise self._changed(what) from None
        except OSError as exc:
            from benzarr.fsutil import os_error

            raise os_error(exc, self.file, "checking the store") from None
        if seen == self._seen:
            return False
        fingerprint, seen = self._read()
        if fingerprint != self.fingerprint:
            raise self._changed(what)
        self._seen = seen
        return True

    def _read(self) -> tuple[str | None, tuple[int, int, int, int] | None]:
        """(fingerprint, stat key) of the root ``zarr.json`` now, from one open file (the
        stat and the bytes are of the same file); (None, None) when there is none or it
        holds no complete benzarr store."""
        try:
            with open(self.file, "rb") as fh:
                seen = _stat_key(os.fstat(fh.fileno()))
                raw = fh.read()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            from benzarr.fsutil import os_error

            raise os_error(exc, self.file, "checking the store") from None
        try:
            attrs = json.loads(raw).get("attributes", {}).get(ATTRS_KEY)
        except (ValueError, AttributeError, RecursionError) as exc:
            raise StoreCorruptError(f"{self.file}: damaged store metadata (not JSON: {exc}); restore that file "
                                    "or re-ingest the store") from None
        if not isinstance(attrs, dict) or not attrs.get("complete"):
            return None, seen
        return store_fingerprint(attrs), seen

    def _changed(self, what: str) -> StoreChangedError:
        return StoreChangedError(f"{self.path}: the store was replaced or removed since {what} was opened; "
                                 "open it again")


def watch_store(path: str | Path) -> tuple[int, int, int, int] | None:
    """The stat key of a local store's root ``zarr.json`` (taken before its attributes are
    read, so that a change in between is seen by the first :meth:`StoreWatch.check`); None
    for a URL or where there is none."""
    if is_url(path):
        return None
    try:
        return _stat_key(os.stat(os.path.join(str(path), "zarr.json")))
    except OSError:
        return None


class Store:
    """An opened benzarr store.

    Use :func:`open_store` or :func:`create_store` rather than the constructor.

    A Store of a complete local store is tied to that store (:attr:`watch`): once another
    store is put at its path (``ingest --overwrite``) or it is removed, every attribute read,
    array access and write through it raises :class:`StoreChangedError` (one ``os.stat``
    each, no read); attributes another call added meanwhile (``split_stats``, ``verified``)
    are read again. A URL store is not watched (no cheap check): open it again after
    replacing it.

    Attributes:
        path: where the store lives (a local path or an fsspec URL).
        group: the root ``zarr.Group``.
        watch: the :class:`StoreWatch` of a complete local store; None for a URL or an
            incomplete store (an ingest's own, whose attributes it is still writing).
    """

    def __init__(self, group: zarr.Group, path: str, watch: StoreWatch | None = None) -> None:
        self.group = group
        self.path = path
        self.watch = watch
        self._metadata: dict[str, dict[str, Any]] = {}  # band array -> zarr.json, for write_band_shard
        self._warned: set[str] = set()  # folders without zarr.json already warned about (_members)

    # -- attributes ------------------------------------------------------------------
    def check_unchanged(self) -> None:
        """Raise :class:`StoreChangedError` when the store at :attr:`path` was replaced or
        removed since this Store opened it; reload the root attributes when another call
        rewrote them (one ``os.stat`` when nothing changed; nothing for an unwatched store)."""
        if self.watch is not None and self.watch.check("this Store"):
            self._reload()

    def _reload(self) -> None:
        """Open the root group again (through the same zarr store: a URL's client options
        kept): zarr keeps the attributes it read at open."""
        self.group = zarr.open_group(self.group.store, mode="r" if self.group.read_only else "r+", zarr_format=3)

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the ``benzarr`` group attributes (as they are now on disk, for a watched store).

        Raises:
            StoreChangedError: the store was replaced or removed since it was opened.
        """
        self.check_unchanged()
        return deepcopy(dict(self.group.attrs.get(ATTRS_KEY, {})))

    def check_writable(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the store when it was opened read-only
        (zarr's own ValueError named neither the store nor the fix)."""
        if self.group.read_only:
            raise InvalidArgumentError(f"{self.path}: opened read-only; open_store({str(self.path)!r}, mode='r+') "
                                       "to write splits or attributes")

    def update_attrs(self, **changes: Any) -> None:
        """Merge ``changes`` into the ``benzarr`` attributes as they are on disk now (read,
        merge, one write of the root zarr.json, under the store's write lock): what another
        call or process recorded since this Store was opened (``split_stats``, ``verified``)
        is kept.

        Raises:
            StoreChangedError: the store was replaced or removed since it was opened (its
                attributes would be written over the new store's).
        """
        with self.editing_attrs() as attrs:
            attrs.update(changes)

    @contextmanager
    def editing_attrs(self) -> Iterator[dict[str, Any]]:
        """The ``benzarr`` attributes as they are on disk now, for the block to change; written
        back when it ends (one write of the root zarr.json). The whole read-change-write holds
        :func:`benzarr.lock.write_lock`, so two processes that each add a key (two trains
        caching split statistics, ``verify`` recording its result) both keep theirs. Nothing is
        written when the block raises.

        Raises:
            StoreChangedError: the store was replaced or removed since it was opened.
        """
        from benzarr.lock import write_lock

        self.check_writable()
        with write_lock(self.path):
            if self.watch is not None:
                self.watch.check("this Store")  # a store replaced meanwhile raises (no reload: the next line reads)
            self._reload()  # read under the lock: what another process wrote is in
            attrs = deepcopy(dict(self.group.attrs.get(ATTRS_KEY, {})))
            yield attrs
            self.group.attrs.update({ATTRS_KEY: attrs})
        if self.watch is not None:
            # our own write: its fingerprint (the user may rewrite an identity key), and the
            # file seen again at the next check (a write by another call just after ours is read then)
            self.watch.fingerprint = store_fingerprint(attrs)
            self.watch._seen = None

    @property
    def n_patches(self) -> int:
        """N, the number of rows (patches) in every per-patch array."""
        return int(self.attrs["n_patches"])

    @property
    def shard_size(self) -> int:
        """Patches per shard of the band arrays."""
        return int(self.attrs["shard_size"])

    @property
    def n_shards(self) -> int:
        """Number of shards along N."""
        return -(-self.n_patches // self.shard_size)

    @property
    def complete(self) -> bool:
        """True once every shard was written and statistics were stored."""
        return bool(self.attrs.get("complete", False))

    @property
    def format_version(self) -> int:
        """Format version the store was written with (0: none recorded).

        Raises:
            StoreCorruptError: the recorded version is not a whole number (damaged metadata).
        """
        value = self.attrs.get("format_version", 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StoreCorruptError(
                f"{self._where('zarr.json')}: the store's format_version is {value!r}, not a whole number; "
                "its metadata is damaged: restore that file or re-ingest the store"
            )
        return value

    def check_attrs(self) -> None:
        """Check the types of the root attributes benzarr reads (from the zarr.json already
        loaded: no I/O), so that a damaged file is named here, not met later as a bare
        AttributeError or TypeError, or read wrongly (``"complete": "false"`` read as True).

        Raises:
            StoreCorruptError: naming the root ``zarr.json`` and the attribute.
        """
        attrs = self.group.attrs.get(ATTRS_KEY)
        if not isinstance(attrs, dict):
            raise StoreCorruptError(f"{self._where('zarr.json')}: the store's {ATTRS_KEY!r} attributes are "
                                    f"{type(attrs).__name__}, not an object; {_DAMAGED}")
        self.format_version  # noqa: B018  (raises on its own damage)
        lacking = [key for key in _REQUIRED_ATTRS if key not in attrs]  # ('bands' gone: "unexpected KeyError" in show)
        if lacking:
            raise StoreCorruptError(f"{self._where('zarr.json')}: the store's attributes lack "
                                    f"{', '.join(map(repr, lacking))}; {_DAMAGED}")
        for key, (valid, expected) in _ATTR_TYPES.items():
            if key in attrs and not valid(attrs[key]):
                shown = json.dumps(attrs[key])  # as the file spells it: "false", null
                raise StoreCorruptError(
                    f"{self._where('zarr.json')}: the store's attribute {key!r} is "
                    f"{shown if len(shown) <= 60 else shown[:57] + '...'}, not {expected}; {_DAMAGED}"
                )
        # the names readers go by: the format fixes them, so any other list is damage (names
        # in another order labelled every channel wrongly; a class list cut short failed as
        # "unexpected IndexError" in info and as a loss of the wrong size in train)
        fixed = [("bands", array, list(BAND_ARRAYS[array].channels)) for array in attrs.get("bands", {})
                 if array in BAND_ARRAYS and BAND_ARRAYS[array].channels]
        fixed += [("classes", labels, list(NOMENCLATURES[labels])) for labels in attrs.get("classes", {})
                  if labels in NOMENCLATURES]
        for key, name, expected in fixed:
            got = [str(n) for n in attrs[key][name]]
            if got != expected:
                at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                where = (f"{got[at]!r} where this format has {expected[at]!r}" if at < min(len(got), len(expected))
                         else f"{len(got)} names where this format has {len(expected)}")
                raise StoreCorruptError(
                    f"{self._where('zarr.json')}: the store's attribute {key!r} lists the names of {name} wrongly "
                    f"from name {at + 1} on ({where}); {_DAMAGED}")

    # -- arrays ----------------------------------------------------------------------
    def array(self, name: str) -> zarr.Array:
        """The zarr array at ``name`` (e.g. ``"s2/10m"``).

        Raises:
            StoreCorruptError: the array is missing, or its ``zarr.json`` does not parse
                (naming the file).
        """
        self.check_unchanged()  # another store's arrays, checked against this one's attributes, would read as damage
        try:
            node = self.group[name]
        except KeyError:
            raise StoreCorruptError(f"{self.path}: array {name!r} is missing") from None
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # zarr.json garbage or {}
            raise self.metadata_error(exc, name) from None
        if not isinstance(node, zarr.Array):
            raise StoreCorruptError(f"{self.path}: {name!r} is not an array")
        self._check_declared(name, node)
        return node

    def _check_declared(self, name: str, node: zarr.Array) -> None:
        """Raise StoreCorruptError when a band or per-row array's ``zarr.json`` declares another
        number of rows than the store's patches, or a band or label array another row shape or
        data type than the format's (``"data_type": "int16"`` for the 10 m bands failed in
        training as "unexpected KeyError: dtype('int16')"; 200 rows of a 220-patch store as
        "unexpected IndexError"). Metadata only: no I/O."""
        n_patches = self.group.attrs.get(ATTRS_KEY, {}).get("n_patches")  # (self.attrs deep-copies them all)
        if (name in BAND_ARRAYS or name in ROW_FIELDS) and node.shape and isinstance(n_patches, int):
            if node.shape[0] != n_patches:
                raise StoreCorruptError(
                    f"{self._where(name + '/zarr.json')}: {node.shape[0]:,} rows in a store of {n_patches:,} "
                    f"patches; {_DAMAGED}")
        if name in BAND_ARRAYS:
            row_shape, dtype = BAND_ARRAYS[name].row_shape, BAND_ARRAYS[name].dtype
        elif name in LABEL_ARRAYS.values():
            row_shape, dtype = ROW_FIELDS[name].trailing, ROW_FIELDS[name].dtype
        else:
            return
        found = (tuple(node.shape[1:]), np.dtype(node.dtype).name)
        if found != (tuple(row_shape), dtype):
            raise StoreCorruptError(
                f"{self._where(name + '/zarr.json')}: rows of shape {found[0]} and data type {found[1]}, "
                f"where this format stores {tuple(row_shape)} and {dtype}; {_DAMAGED}")

    def has_array(self, name: str) -> bool:
        """True if an array exists at ``name`` (a damaged ``zarr.json`` raises StoreCorruptError)."""
        try:
            return isinstance(self.group[name], zarr.Array)
        except KeyError:
            return False
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise self.metadata_error(exc, name) from None

    def arrays(self) -> list[tuple[str, zarr.Array]]:
        """Every array of the store as (path, array), sorted by path.

        Raises:
            StoreCorruptError: a ``zarr.json`` does not parse (naming the file).
        """
        def walk(group: zarr.Group, prefix: str) -> list[tuple[str, zarr.Array]]:
            found = []
            for name, node in sorted(_members(group, self._where(prefix.rstrip("/")), self._warned), key=lambda item: item[0]):
                if isinstance(node, zarr.Array):
                    found.append((f"{prefix}{name}", node))
                else:
                    found.extend(walk(node, f"{prefix}{name}/"))
            return found

        try:
            return walk(self.group, "")
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise self.metadata_error(exc) from None

    def metadata_error(self, exc: BaseException, name: str = "") -> StoreCorruptError:
        """A StoreCorruptError naming the damaged ``zarr.json`` (found by reading each one of a
        local store; the array ``name`` otherwise) and the cause."""
        where, cause = (_damaged_metadata(Path(self.path)) if not is_url(self.path) else None) or (
            f"{self.path}/{name}/zarr.json" if name else f"{self.path}", _first_line(exc))
        return StoreCorruptError(f"{where}: damaged array metadata ({cause}); the store is damaged: "
                                 "restore that file or ingest again")

    # -- local paths, row readers and writers ----------------------------------------------
    def local_path(self, name: str = "") -> Path | None:
        """The folder of array ``name`` (of the store for ``""``) on the local file system;
        None for a URL store."""
        if is_url(self.path):
            return None
        return Path(self.path) / name if name else Path(self.path)

    def row_reader(self, name: str, row_name: Callable[[int], str] | None = None,
                   verify_checksums: bool = True, missing_ok: bool = True) -> RowReader:
        """The fastest row reader of band array ``name``: the memory-mapped
        :class:`~benzarr.shards.ShardReader` for a local store in a layout it reads, else
        zarr-python (:func:`benzarr.shards.row_reader`). ``row_name`` names a row's patch in
        errors; ``missing_ok=False``: a missing shard file is :class:`StoreCorruptError`
        (:attr:`~benzarr.shards.ShardReader.missing_ok`)."""
        return row_reader(self.array(name), name, self.local_path(name), row_name, verify_checksums=verify_checksums,
                          missing_ok=missing_ok)

    def write_band_shard(self, name: str, shard: int, data: np.ndarray) -> None:
        """Write shard ``shard`` of band array ``name`` whole: ``data`` is (rows, *row_shape).

        A local store gets the shard file from :func:`benzarr.shards.write_shard`
        (byte-identical to zarr-python's, atomically renamed into place, without zarr's
        per-chunk overhead: 0.4 s a 256-patch shard of S2 bands down to the Blosc time); a
        URL store, or a layout the writer does not handle, goes through zarr.
        """
        folder = self.local_path(name)
        if folder is not None:
            self.check_unchanged()  # (the metadata kept below is this store's)
            if name not in self._metadata:
                self._metadata[name] = self.array(name).metadata.to_dict()
            try:
                write_shard(folder, shard, data, self._metadata[name])
                return
            except ValueError:  # a layout the writer does not handle: let zarr do it
                pass
        start = shard * self.shard_size
        self.array(name)[start:start + data.shape[0]] = data

    def write_staged(self, name: str, start: int, data: np.ndarray) -> None:
        """Write rows ``start``... of per-row array ``name`` into its staging copy (one chunk
        a shard; :func:`finalize_rows` copies them over)."""
        self.array(stage_path(name))[start:start + data.shape[0]] = data

    def mark_complete(self, **attrs: Any) -> None:
        """Mark the store complete, as ingest and the labels-only synth both do: record
        ``attrs``, the failure and label summaries (``n_failed``, ``n_without_clc19``,
        ``label_counts`` over valid rows) and ``complete: true`` in one attribute write, then
        drop the staging arrays. Call it last, once every array holds its final rows."""
        valid = self.valid_mask()
        labels = {name: np.asarray(self.array(path)[:]) for name, path in LABEL_ARRAYS.items()}
        self.update_attrs(
            **attrs,
            n_failed=int((~valid).sum()),
            n_without_clc19=int((valid & (labels["clc19"].sum(axis=1) == 0)).sum()),
            label_counts={name: label_counts(rows, valid, NOMENCLATURES[name]) for name, rows in labels.items()},
            complete=True,
        )
        drop_staging(self)

    def labels(self, nomenclature: str = "clc43") -> np.ndarray:
        """Label matrix (N, L) uint8, multi-hot; ``nomenclature`` is ``clc43`` or ``clc19``."""
        if nomenclature not in LABEL_ARRAYS:
            raise InvalidArgumentError(
                f"unknown label set {nomenclature!r}: choose one of {', '.join(LABEL_ARRAYS)}"
            )
        available = self.attrs.get("label_sets", list(LABEL_ARRAYS))
        if nomenclature not in available:
            raise InvalidArgumentError(
                f"{self.path}: this store has no {nomenclature} labels (it has: {', '.join(available)})"
            )
        path = LABEL_ARRAYS[nomenclature]
        labels = np.asarray(self._read_rows(path), dtype=np.uint8)
        self._check_labels(path, nomenclature, labels)
        return labels

    def _read_rows(self, path: str, array: zarr.Array | None = None) -> np.ndarray:
        """Array ``path`` (``array`` when already open) whole, through zarr-python; a chunk that
        does not decode or fails its checksum is :class:`StoreCorruptError` naming the array
        (not the codec's bare error)."""
        try:
            return (self.array(path) if array is None else array)[:]
        except (RuntimeError, ValueError) as exc:  # numcodecs' zstd, zarr's crc32c raise these
            lines = str(exc).strip().splitlines()
            raise StoreCorruptError(
                f"{self._where(path)}: does not read ({type(exc).__name__}: {lines[0] if lines else ''}); "
                "the store is damaged: re-ingest it (benzarr verify lists every damaged array)"
            ) from None

    def _where(self, path: str) -> str:
        return f"{self.path.rstrip('/')}/{path}"

    def _check_labels(self, path: str, nomenclature: str, labels: np.ndarray) -> None:
        """Raise StoreCorruptError when ``labels`` (N, L) hold a value other than 0/1, or (complete
        store) per-class counts over valid rows other than those recorded at ingest: label
        chunks of stores before checksums, or a bit flip that still decodes, are caught so."""
        bad = labels > 1
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            raise StoreCorruptError(
                f"{self._where(path)}: holds {int(labels[row, column])} at row {row}, class {column} (labels are 0 or 1); "
                "a labels chunk is damaged: re-ingest the store"
            )
        recorded = self.attrs.get("label_counts", {}).get(nomenclature) if self.complete else None
        if not recorded:
            return
        counts = label_counts(labels, self.valid_mask(), self.class_names(nomenclature))
        differ = [(name, count, int(recorded.get(name, -1))) for name, count in counts.items()
                  if count != int(recorded.get(name, -1))]
        if differ:
            name, read, want = differ[0]
            raise StoreCorruptError(
                f"{self._where(path)}: {len(differ)} classes' counts differ from those recorded at ingest "
                f"(e.g. {name}: {read:,} read, {want:,} recorded); a labels chunk is damaged: re-ingest the store"
            )

    def class_names(self, nomenclature: str = "clc43") -> list[str]:
        """Class names of ``nomenclature`` in column order.

        Raises:
            InvalidArgumentError: not a nomenclature (``clc43`` or ``clc19``).
        """
        if nomenclature not in NOMENCLATURES:
            raise InvalidArgumentError(f"unknown label set {nomenclature!r}: choose one of {', '.join(NOMENCLATURES)}")
        return list(self.attrs.get("classes", {}).get(nomenclature, NOMENCLATURES[nomenclature]))

    def patch_names(self) -> np.ndarray:
        """Patch names (N,) as a numpy array of ``str``, in row order (sorted).

        Raises:
            StoreCorruptError: a row has no name (a chunk of ``meta/patch_name`` that was
                deleted reads as empty strings, zarr's fill value).
        """
        names = _as_str(self._read_rows(PATCH_NAME_ARRAY))
        blank = np.flatnonzero(names == "")
        if blank.size:
            raise StoreCorruptError(
                f"{self._where(PATCH_NAME_ARRAY)}: {blank.size:,} row(s) have no patch name (row {int(blank[0])} "
                "first); a chunk of the patch names is missing or damaged: re-ingest the store "
                "(benzarr verify lists every damaged array)")
        return names

    def valid_mask(self) -> np.ndarray:
        """(N,) bool: True for patches that were ingested (False: failed, never served)."""
        return np.asarray(self._read_rows("meta/valid"), dtype=bool)

    def failed(self) -> dict[str, str]:
        """Patches that failed ingest: name -> reason, in row order."""
        valid = self.valid_mask()
        if valid.all():
            return {}
        rows = np.flatnonzero(~valid)
        names = self.patch_names()
        errors = _as_str(self._read_rows("meta/error"))
        return {str(names[i]): str(errors[i]) for i in rows}

    def band_names(self, array: str) -> list[str]:
        """Band names of a band array, in channel order (e.g. ``s2/20m``).

        Raises:
            InvalidArgumentError: the store has no such band array (the message lists them).
        """
        bands = self.attrs["bands"]
        if array not in bands:
            raise InvalidArgumentError(f"{self.path}: no band array {array!r} (it has: {', '.join(bands)})")
        return list(bands[array])

    def band_stats(self, modality: str = "s2") -> dict[str, dict[str, float]]:
        """Per-band statistics over valid patches: band -> {count, mean, std, min, max}.

        ``modality`` is ``s2`` (B01…B12, reflectance x 10,000) or ``s1`` (VV, VH in dB); a
        store without S1 has none for ``s1`` (an empty dict).

        Raises:
            InvalidArgumentError: ``modality`` is neither (``"S2"`` or ``"B04"`` gave an empty dict).
        """
        if modality not in ("s2", "s1"):
            raise InvalidArgumentError(f"unknown modality {modality!r} for band statistics: choose s2 or s1")
        return deepcopy(self.attrs.get("stats", {}).get(modality, {}))

    @property
    def modalities(self) -> list[str]:
        """Modalities the store holds (``s2``, ``s1``, ``reference-map``)."""
        return list(self.attrs.get("modalities", []))

    # -- splits ----------------------------------------------------------------------
    def split_names(self) -> list[str]:
        """Names of the stored splits, sorted.

        What a killed :meth:`write_split` or :meth:`delete_split` leaves under ``splits/``
        (``.<name>.benzarr-partial-<pid>`` and the like: no split name starts with ".") is not
        a split; a folder there without a ``zarr.json`` is skipped with one warning naming it.
        """
        self.check_unchanged()  # (another store's splits are not this one's)
        if SPLITS_GROUP not in self.group:
            return []
        return sorted(name for name, node in _members(self.group[SPLITS_GROUP], self._where(SPLITS_GROUP), self._warned)
                      if isinstance(node, zarr.Array) and SPLIT_NAME.fullmatch(name))

    def read_split(self, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Codes (N,) int8 (0 train, 1 val, 2 test, -1 excluded) and attributes of a split.

        Raises:
            SplitNotFoundError: naming the splits that exist.
        """
        names = self.split_names()
        if name not in names:
            import difflib

            known = ", ".join(names) if names else "none"
            # the line named the splits only: what to do when there is none (train before split
            # is the usual first mistake), and the split meant when a letter's case differs
            close = [n for n in names if n.lower() == str(name).lower()] or difflib.get_close_matches(str(name), names, n=1)
            advice = (f"; did you mean {close[0]!r}?" if close else
                      f"; make it with `benzarr split {self.path} --name {name} --method iterative`" if not names else "")
            raise SplitNotFoundError(f"{self.path}: no split named {name!r} (splits in this store: {known}){advice}")
        path = f"{SPLITS_GROUP}/{name}"
        array = self.array(path)
        codes = np.asarray(self._read_rows(path, array), dtype=np.int8)
        attrs = dict(array.attrs)
        self._check_split(path, codes, attrs)
        return codes, attrs

    def _check_split(self, path: str, codes: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """Raise StoreCorruptError when a split holds a code other than -1/0/1/2, or subset
        sizes other than those recorded when it was written (``counts``)."""
        bad = ~np.isin(codes, (EXCLUDED, TRAIN, VAL, TEST))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise StoreCorruptError(
                f"{self._where(path)}: holds code {int(codes[row])} at row {row} (codes are -1, 0, 1, 2); "
                "the split's chunk is damaged: make the split again (benzarr split ... --overwrite)"
            )
        recorded = attrs.get("counts")
        if not isinstance(recorded, Mapping):
            return
        read = subset_counts(codes)
        subsets = list(read)
        want = {subset: recorded.get(subset) for subset in subsets}
        if any(want[s] is not None and int(want[s]) != read[s] for s in subsets):
            shown = " / ".join(f"{s} {read[s]:,}" for s in subsets)
            kept = " / ".join(f"{s} {want[s]}" for s in subsets)
            raise StoreCorruptError(
                f"{self._where(path)}: subset sizes {shown} differ from those recorded when the split was made "
                f"({kept}); the split's chunk is damaged: make the split again (benzarr split ... --overwrite)"
            )

    def write_split(self, name: str, codes: np.ndarray, attrs: Mapping[str, Any], overwrite: bool = False) -> None:
        """Store ``codes`` (N,) int8 as ``splits/<name>`` with ``attrs``.

        Codes of patches that failed ingest are forced to -1, so no reader serves them.

        Raises:
            InvalidArgumentError: ``codes`` is not (N,) or holds a value other than -1, 0, 1, 2.
        """
        self.check_writable()
        check_split_name(name)
        # checked before the cast to int8, which made 0.5 train and 1.7 val, and wrapped 255 to -1, 258 to 2
        raw = np.asarray(codes)
        if raw.shape != (self.n_patches,):
            raise InvalidArgumentError(f"split codes must have shape ({self.n_patches},), got {raw.shape}")
        valid_codes = raw.dtype.kind in "iuf" and np.isin(raw, (EXCLUDED, TRAIN, VAL, TEST))
        if raw.dtype == bool or not np.all(valid_codes):
            bad = raw.flat[0] if raw.dtype == bool or np.ndim(valid_codes) == 0 else raw[~valid_codes][0]
            raise InvalidArgumentError(f"split codes must be -1, 0, 1 or 2 (excluded, train, val, test), "
                                       f"got {raw.dtype} values such as {bad!r}")
        codes = np.where(self.valid_mask(), raw.astype(np.int8), EXCLUDED).astype(np.int8)
        attrs = dict(attrs)
        attrs.setdefault("names", {"0": "train", "1": "val", "2": "test", "-1": "excluded"})
        attrs.setdefault("created", utc_timestamp())
        attrs["counts"] = subset_counts(codes)
        folder = self.local_path(SPLITS_GROUP)
        if folder is None:  # an object store: written in place; a failed write removes what it wrote
            self.check_split_target(name, overwrite)  # (a local store checks under its write lock, below)
            path = f"{SPLITS_GROUP}/{name}"
            try:
                self._create_split_array(path, codes, attrs)
            except BaseException as exc:
                try:
                    del self.group[path]
                except Exception:  # best effort: the write's own error is the one to report
                    pass
                if isinstance(exc, OSError):
                    from benzarr.fsutil import os_error

                    raise os_error(exc, self.path, "writing the split") from None
                raise
            return
        from benzarr.fsutil import PARTIAL_TAG, os_error, rename_error
        from benzarr.lock import write_lock

        final = folder / name
        temporary = folder / f".{name}{PARTIAL_TAG}{os.getpid()}"
        # one split writer a store at a time (on any machine that shares the file system): the
        # leftovers swept below are then never another writer's folders in flight, and the
        # target is checked again here, where no other writer can create it before the rename
        with write_lock(self.path):
            try:
                self._recover_splits()
                self.check_split_target(name, overwrite)
                if temporary.exists():
                    shutil.rmtree(temporary)
                # written beside its final name, then renamed into place: a failure or a kill
                # never leaves a half-written split, and the old one stays until the new is whole
                self._create_split_array(f"{SPLITS_GROUP}/{temporary.name}", codes, attrs)
                try:
                    _rename_into_place(temporary, final)
                except OSError as exc:  # (an object-store mount renames no folders: say so)
                    raise rename_error(exc, final, "writing the split") from None
            except BaseException as exc:
                shutil.rmtree(temporary, ignore_errors=True)
                if isinstance(exc, OSError):  # read-only file system, full disk, ...
                    raise os_error(exc, final, "writing the split") from None
                raise

    def _create_split_array(self, path: str, codes: np.ndarray, attrs: Mapping[str, Any]) -> None:
        array = self.group.create_array(
            path,
            shape=(self.n_patches,),
            dtype="int8",
            chunks=(min(max(self.n_patches, 1), 1 << 20),),
            compressors=row_compressors(),
            fill_value=EXCLUDED,
            attributes=dict(attrs),
            overwrite=True,
        )
        array[:] = codes

    def _recover_splits(self) -> None:
        """Undo what killed split writes left under ``splits/`` (local stores, before a write):
        a half-written ``.<name>.benzarr-partial-<pid>`` is deleted, a replaced split moved
        aside (``.<name>.benzarr-replaced-<pid>``) goes back to its name if the new one never
        got there (deleted otherwise), and a deleted one's ``.benzarr-old-`` folder is deleted,
        each only once process ``pid`` is gone."""
        from benzarr.fsutil import REPLACED_TAG, _pid_alive, rmtree_held

        folder = self.local_path(SPLITS_GROUP)
        if folder is None or not folder.is_dir():
            return
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            found = WRITER_LEFTOVER.fullmatch(entry.name)
            if found is None or not entry.is_dir(follow_symlinks=False) or _pid_alive(int(found["pid"])):
                continue
            final = folder / found["name"]
            if found["tag"] == REPLACED_TAG and not os.path.lexists(final) and (Path(entry.path) / "zarr.json").is_file():
                os.rename(entry.path, final)
            else:  # what NFS keeps of files still open there stays, not to stop this write
                rmtree_held(entry.path)

    def delete_split(self, name: str) -> None:
        """Remove ``splits/<name>``.

        Raises:
            SplitNotFoundError: no such split.
            UnsafeOverwriteError: its folder holds files no Zarr writer put there (nothing is deleted).
        """
        self.check_writable()
        self.read_split(name)  # raises with the known names
        self._check_replaceable_split(name)
        folder = self.local_path(SPLITS_GROUP)
        if folder is None:
            del self.group[f"{SPLITS_GROUP}/{name}"]
            return
        from benzarr.fsutil import os_error, remove_folder
        from benzarr.lock import write_lock

        with write_lock(self.path):  # not under another writer's rename (see write_split)
            try:
                self._recover_splits()
            except OSError as exc:
                raise os_error(exc, folder / name, "removing the split") from None
            remove_folder(folder / name)  # renamed aside, then deleted: a kill never leaves half a split

    def check_split_target(self, name: str, overwrite: bool) -> None:
        """Raise unless split ``name`` may be written: a split of that name needs ``overwrite``
        (and no user's files in its folder); a folder of that name under ``splits/`` that is no
        split (its ``zarr.json`` deleted: its chunks are all that is left of it) is never replaced.

        Raises:
            SplitExistsError, UnsafeOverwriteError: naming the split or folder.
        """
        if name in self.split_names():
            if not overwrite:
                raise SplitExistsError(f"{self.path}: split {name!r} exists; pass --overwrite to replace it")
            self._check_replaceable_split(name)
            return
        folder = self.local_path(f"{SPLITS_GROUP}/{name}")
        if folder is not None and os.path.lexists(folder):
            raise UnsafeOverwriteError(
                f"{folder}: a folder that is not a split (no zarr.json) is in the way of split {name!r}; nothing "
                "was changed: move it out of the store, or choose another name")

    def _check_replaceable_split(self, name: str) -> None:
        """Refuse to replace or delete ``splits/<name>`` while its folder holds a user's files:
        zarr deletes the whole folder (:func:`benzarr.fsutil.foreign_files`, the rule of
        ``ingest --overwrite``)."""
        if is_url(self.path):
            return
        from benzarr.fsutil import foreign_files

        folder = Path(self.path) / SPLITS_GROUP / name
        foreign = foreign_files(folder)
        if foreign:
            raise UnsafeOverwriteError(
                f"{folder}: holds files that benzarr did not write ({', '.join(foreign)}); replacing split "
                f"{name!r} would delete them, so nothing was changed: move them out of the store first"
            )

    def subset_rows(self, split: str | None, subset: str | None, codes: np.ndarray | None = None) -> np.ndarray:
        """Store rows (int64, ascending) served for ``split``/``subset``.

        ``split=None`` means every valid patch; a split without ``subset`` means every row
        the split does not exclude. ``codes`` (N,) int8, from :meth:`read_split`, are used
        instead of reading the split again: several subsets of one version of the split.
        """
        valid = self.valid_mask()
        if split is None:
            if subset is not None:
                raise InvalidArgumentError("a subset needs a split (--split NAME; split=NAME in Python)")
            return np.flatnonzero(valid)
        if codes is None:
            codes, _ = self.read_split(split)
        if subset is None:
            return np.flatnonzero(valid & (codes != EXCLUDED))
        if not isinstance(subset, str) or subset not in SUBSETS:  # a list was "unhashable type" (TypeError)
            several = "" if isinstance(subset, str) else " (one subset, a str; subset=None serves every row the split keeps)"
            raise InvalidArgumentError(f"unknown subset {subset!r}: choose one of {', '.join(SUBSETS)}{several}")
        return np.flatnonzero(valid & (codes == SUBSETS[subset]))

    def __repr__(self) -> str:
        try:
            attrs = self.attrs
        except StoreChangedError:  # a notebook shows a stale handle without an error
            return f"Store({self.path!r}, replaced or removed since opened)"
        state = "complete" if attrs.get("complete") else "incomplete"
        return f"Store({self.path!r}, n_patches={attrs.get('n_patches')}, {state})"


#: zarr's warning for a folder (or key prefix) in a group that holds no ``zarr.json``.
_NOT_A_NODE = re.compile(r"Object at (?P<name>.+) is not recognized as a component of a Zarr hierarchy\.?")


#: zarr-python's own temporary file while it writes a ``zarr.json`` (``zarr.<uuid hex>.partial``,
#: renamed over the file at once): seen by a listing at that moment, it is no damaged folder.
_ZARR_TEMPORARY = re.compile(r"zarr\.[0-9a-f]{32}\.partial")


def _members(group: zarr.Group, where: str, warned: set[str] | None = None) -> list[tuple[str, Any]]:
    """``group.members()``, with zarr's warning about a folder that holds no ``zarr.json`` (in
    zarr's words, with its source line) given as one warning of benzarr's naming the folder
    (``where``/name); none for what a benzarr writer leaves while it works (``.*.benzarr-*-<pid>``)
    or zarr's temporary ``zarr.<uuid>.partial`` of a ``zarr.json`` being written, or a deleted file
    that NFS keeps while a process holds it open (``.nfs<hex>``, not a folder at all).
    Other warnings are passed on as they were; ``warned`` (the folders already warned about,
    updated) keeps it to one warning a folder."""
    from benzarr.fsutil import NFS_HELD

    with warnings.catch_warnings(record=True) as caught:  # zarr warns from its event-loop thread
        warnings.simplefilter("always")
        members = [(name, node) for name, node in group.members() if WRITER_LEFTOVER.fullmatch(name) is None]
    for warning in caught:
        found = _NOT_A_NODE.fullmatch(str(warning.message))
        if found is None:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif (WRITER_LEFTOVER.fullmatch(found["name"]) is None and _ZARR_TEMPORARY.fullmatch(found["name"]) is None
              and NFS_HELD.fullmatch(found["name"]) is None):
            folder = f"{where.rstrip('/')}/{found['name']}"
            if warned is not None:
                if folder in warned:
                    continue
                warned.add(folder)
            warnings.warn(f"{folder}: a folder without zarr.json, so neither an array "
                          "nor a group (its zarr.json was deleted?): skipped; restore that file or remove the folder",
                          stacklevel=3)
    return members


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``, 3.15
    and later); False where the system or file system cannot, and nothing was changed."""
    import ctypes
    import errno

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not glibc 2.28+ (musl, macOS)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # the kernel or file system has no exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def _rename_into_place(new: Path, final: Path) -> None:
    """Rename the folder ``new`` to ``final``. An existing ``final`` is swapped with ``new`` in
    one step where the system can (a reader never finds no split of that name), then deleted
    under ``new``'s name; a kill before that deletion leaves it there as a dead writer's
    ``.benzarr-partial-`` folder, which :meth:`Store._recover_splits` deletes. Elsewhere the
    old folder is moved aside (``.<name>.benzarr-replaced-<pid>``) first and deleted once
    ``new`` is in its place; a kill between the two renames leaves it aside, and
    :meth:`Store._recover_splits` puts it back."""
    from benzarr.fsutil import REPLACED_TAG

    if not os.path.lexists(final):
        os.rename(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # the old split, now under the temporary name
        return
    aside = final.with_name(f".{final.name}{REPLACED_TAG}{os.getpid()}")
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _damaged_metadata(root: Path) -> tuple[str, str] | None:
    """(path, cause) of the first ``zarr.json`` under ``root`` that is not valid Zarr v3
    metadata (not JSON, not an object, ``{}``, a wrong node type or array fields), or None."""
    import json
    import os

    from zarr.core.metadata.v3 import ArrayV3Metadata

    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if "zarr.json" not in files:
            continue
        path = Path(folder) / "zarr.json"
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            return str(path), f"not JSON: {_first_line(exc)}"
        if not isinstance(meta, dict):
            return str(path), "not a JSON object"
        if meta.get("zarr_format") != 3 or meta.get("node_type") not in ("array", "group"):
            return str(path), "no zarr_format 3 and node_type"
        if meta["node_type"] == "array":
            try:
                ArrayV3Metadata.from_dict(meta)
            except Exception as exc:  # zarr raises many kinds for bad fields
                return str(path), _first_line(exc)
    return None


def _as_str(values: Any) -> np.ndarray:
    """zarr returns variable-length strings as numpy StringDType (or object); give fixed-width ``str``."""
    return np.asarray(np.asarray(values).tolist(), dtype=str)


# -- opening ---------------------------------------------------------------------------


def _open_group(path: str | Path, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    kwargs: dict[str, Any] = {"mode": mode, "zarr_format": 3}
    if storage_options:
        kwargs["storage_options"] = storage_options
    return zarr.open_group(str(path), **kwargs)


def store_exists(path: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    """True if a Zarr group is at ``path``.

    Raises:
        ObjectStoreError: a URL whose endpoint does not answer (or refuses): "nothing there"
            would let ingest start a new store over one it could not see.
    """
    if not is_url(path):
        return (Path(path) / "zarr.json").is_file()
    try:
        _open_group(path, "r", storage_options)
    except Exception as exc:  # fsspec raises many kinds for a missing key
        failure = remote_failure(path, exc)
        if failure is not None:
            raise failure from None
        return False
    return True


def _enclosing_store(path: Path) -> Path | None:
    """The benzarr store that ``path`` lies inside (``s.zarr`` for ``s.zarr/s2/10m``), or None."""
    from benzarr.fsutil import is_benzarr_store

    return next((parent for parent in path.parents if str(parent) != "." and is_benzarr_store(parent)), None)


def _not_a_store(path: str | Path, exc: BaseException) -> str:
    """Why ``path`` (which exists) did not open as a store, and what it is when benzarr knows:
    an array inside a store, a run folder, an archive (the error path only: it may list the folder)."""
    if is_url(path):
        return f"{path}: not a Zarr v3 store ({exc})"
    from benzarr.fsutil import archive_sources, describe

    folder = Path(path)
    if not folder.is_dir():
        return f"{path}: is a file, not a benzarr store (a store is a folder)"
    if (folder / "zarr.json").is_file():  # a Zarr node that is no group: an array
        root = _enclosing_store(folder)
        if root is not None:
            return f"{path}: an array inside the benzarr store {root}, not a store; give the store's folder ({root})"
        return f"{path}: a Zarr array, not a benzarr store ({exc})"
    if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
        return (f"{path}: not a benzarr store (no zarr.json); it is a run folder of `benzarr train`, "
                "which `benzarr evaluate` and `benzarr report` read")
    try:
        found = describe(folder)
    except OSError as exc2:  # an unreadable folder: say so, as a store error
        return f"{path}: not a benzarr store (cannot read the folder: {exc2.strerror or exc2})"
    names = [source.name for source in archive_sources(folder)] if found.startswith("both ") else []
    if len(names) > 1:  # two layouts in one folder: ingest reads one, as --source says
        return (f"{path}: not a benzarr store (no zarr.json); it holds {found}: `benzarr ingest {path} STORE "
                f"--source {names[0]}` (or {', '.join(names[1:])}) makes a store of one of them")
    if " archive (" in found:
        return f"{path}: not a benzarr store (no zarr.json); it holds {found}: `benzarr ingest {path} STORE` makes a store of it"
    return f"{path}: not a benzarr store (no zarr.json); it holds {found}"


_DAMAGED = "its metadata is damaged: restore that file or re-ingest the store"


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_count(value: Any, least: int = 0) -> bool:
    return is_whole(value) and value >= least


#: The root attributes benzarr reads, when present: (valid?, what is expected, for the message).
#: Root attributes every benzarr store has had since its first format (written with its layout).
_REQUIRED_ATTRS = ("n_patches", "shard_size", "modalities", "bands", "label_sets", "classes")

_ATTR_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "complete": (lambda v: isinstance(v, bool), "a boolean (true or false)"),
    "layout_complete": (lambda v: isinstance(v, bool), "a boolean (true or false)"),
    "n_patches": (_is_count, "a whole number >= 0"),
    "shard_size": (lambda v: _is_count(v, 1), "a whole number >= 1"),
    "parts": (lambda v: v is None or _is_count(v, 1), "a whole number >= 1"),
    "compression": (lambda v: isinstance(v, str), "a string"),
    "modalities": (_is_names, "a list of names"),
    "label_sets": (_is_names, "a list of names"),
    "band_order": (_is_names, "a list of names"),
    "bands": (lambda v: isinstance(v, dict) and all(_is_names(b) for b in v.values()),
              "an object of band-name lists"),
    "classes": (lambda v: isinstance(v, dict) and all(_is_names(c) for c in v.values()),
                "an object of class-name lists"),
    "stats": (lambda v: isinstance(v, dict) and all(isinstance(m, dict) for m in v.values()), "an object"),
    "label_counts": (lambda v: isinstance(v, dict) and all(isinstance(c, dict) for c in v.values()), "an object"),
    "source": (lambda v: isinstance(v, dict), "an object"),
    "ingest": (lambda v: isinstance(v, dict), "an object"),
}


def open_store(
    path: str | Path,
    *,
    mode: str = "r",
    require_complete: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> Store:
    """Open a benzarr store.

    Args:
        path: local folder or fsspec URL (``s3://bucket/store.zarr``).
        mode: ``"r"`` to read, ``"r+"`` to add splits or finish an ingest.
        require_complete: refuse a store whose ingest did not finish.
        storage_options: passed to fsspec for URLs (endpoint, credentials).

    Raises:
        StoreNotFoundError: nothing, or no benzarr store, at ``path``.
        ObjectStoreError: a URL whose object store cannot be reached or refuses the request.
        StoreCorruptError: the root ``zarr.json`` is not JSON, or an attribute benzarr reads
            has the wrong type (``format_version`` not a whole number, ``complete`` not a
            boolean, ``classes`` or ``bands`` not an object, ...).
        StoreVersionError: written by a newer format version.
        StoreIncompleteError: ingest unfinished and ``require_complete``.
        InvalidArgumentError: ``mode`` is not ``"r"`` or ``"r+"`` (zarr's ``"w"`` would first
            empty the store; :func:`create_store` makes new ones), or ``storage_options``
            given with a local path.
    """
    if mode not in ("r", "r+"):
        raise InvalidArgumentError(f"mode must be 'r' (read) or 'r+' (add splits), got {mode!r}; "
                                   "a store is never opened to be emptied ('w')")
    if not isinstance(path, (str, os.PathLike)):  # open_store(3): a TypeError from deep in pathlib
        raise InvalidArgumentError(f"a store is a path or URL (str or os.PathLike), got {type(path).__name__}")
    if storage_options and not is_url(path):  # zarr's own TypeError: "'storage_options' was provided but unused"
        raise InvalidArgumentError(f"{path}: storage_options apply to a URL (s3://bucket/store.zarr), not to a local "
                                   "path; leave them out")
    if not is_url(path) and not Path(path).exists():
        raise StoreNotFoundError(f"{path}: no such store")
    seen = watch_store(path)  # before the attributes are read: a change in between is seen later
    try:
        group = _open_group(path, mode, storage_options)
    except Exception as exc:
        failure = remote_failure(path, exc)  # an endpoint that does not answer, access denied, ...
        if failure is not None:
            raise failure from None
        if not isinstance(exc, (FileNotFoundError, KeyError, ValueError)):
            raise
        root_json = None if is_url(path) else Path(path) / "zarr.json"
        if root_json is not None and root_json.is_file():
            try:
                json.loads(root_json.read_bytes())
            except (ValueError, RecursionError) as bad:  # the file is there but is not JSON: damage
                raise StoreCorruptError(
                    f"{root_json}: damaged store metadata (not JSON: {bad}); restore that file or re-ingest the store"
                ) from None
        raise StoreNotFoundError(_not_a_store(path, exc)) from None
    if ATTRS_KEY not in group.attrs:
        root = None if is_url(path) else _enclosing_store(Path(path))
        inside = f"; it is inside the benzarr store {root}: give that folder" if root else ""
        raise StoreNotFoundError(f"{path}: a Zarr group, but not a benzarr store (no '{ATTRS_KEY}' attributes){inside}")
    store = Store(group, str(path))
    store.check_attrs()
    loaded = group.attrs.get(ATTRS_KEY)
    if seen is not None and loaded.get("complete") is True:  # (an ingest's own store changes as it works)
        store.watch = StoreWatch(path, store_fingerprint(loaded), seen)
    if store.format_version > FORMAT_VERSION:
        raise StoreVersionError(
            f"{path}: written with store format version {store.format_version}; this benzarr "
            f"({__version__}) reads up to version {FORMAT_VERSION}. Upgrade benzarr."
        )
    if require_complete and not store.complete:
        from benzarr.lock import ingest_running

        running = ingest_running(path)
        if running is not None:  # not "run it again": that would meet the lock
            raise StoreIncompleteError(f"{path}: an ingest ({running}) is writing this store now; "
                                       "wait for it to finish")
        parts = store.attrs.get("parts")
        if parts:  # an ingest run in parts: name the parts still to run
            from benzarr.ingest import missing_parts  # ingest imports this module

            todo = missing_parts(store)
            if todo:
                raise StoreIncompleteError(
                    f"{path}: ingest did not finish: part{'s' if len(todo) > 1 else ''} "
                    f"{', '.join(f'{i}/{parts}' for i in todo)} still to run (`benzarr ingest ... --part I/{parts}`)"
                )
        raise StoreIncompleteError(
            f"{path}: ingest did not finish; run the same `benzarr ingest` command again to resume it"
        )
    return store


# -- creating --------------------------------------------------------------------------


def remove_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    """Delete a benzarr store (used by ``--overwrite``): a local folder or everything under a URL.

    A local folder must be a benzarr store (root ``zarr.json`` with benzarr's attributes);
    it is renamed aside, then deleted (:func:`benzarr.fsutil.remove_folder`), so a kill never
    leaves half of it.

    Raises:
        UnsafeOverwriteError: the local folder is not a benzarr store (nothing is deleted).
    """
    if is_url(path):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return
    from benzarr.fsutil import describe, is_benzarr_store, remove_folder

    if not is_benzarr_store(path):
        raise UnsafeOverwriteError(f"{path}: holds {describe(path)}, not a benzarr store; nothing was deleted")
    remove_folder(path)


def create_store(
    path: str | Path,
    patch_names: Sequence[str],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compression: str = DEFAULT_COMPRESSION,
    modalities: Sequence[str] = ("s2",),
    label_sets: Sequence[str] = ("clc43", "clc19"),
    source: Mapping[str, Any] | None = None,
    ingest: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Store:
    """Create the layout of an empty, incomplete store for ``patch_names`` (sorted, unique).

    Writes the root attributes first (``complete: false, layout_complete: false``), then every
    array and the patch names, then ``layout_complete: true``: a crash in between leaves a store
    that reads as incomplete and whose layout is rebuilt on resume.

    Args:
        modalities: any of ``s2``, ``s1``, ``reference-map``; ``()`` for a labels-only store.
        label_sets: the label matrices that hold real labels (a v2 archive without
            reference maps has no 43-class labels).
    """
    names = list(patch_names)
    if names != sorted(set(names)):
        raise InvalidArgumentError("patch names must be sorted and unique")
    if shard_size < 1 or shard_size > MAX_SHARD_SIZE or shard_size & (shard_size - 1):
        raise InvalidArgumentError(f"shard size must be a power of two from 1 to {MAX_SHARD_SIZE:,}, got {shard_size}")
    band_compressors(compression)  # an unknown compression fails before anything is written
    n = len(names)
    attrs: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "layout_complete": False,
        "n_patches": n,
        "shard_size": shard_size,
        "compression": compression,
        "modalities": list(modalities),
        "bands": {path: list(spec.channels) for path, spec in BAND_ARRAYS.items()
                  if spec.modality in modalities and spec.channels},
        "label_sets": list(label_sets),
        "band_order": list(BANDS),
        "classes": {"clc43": list(CLC43), "clc19": list(CLC19)},
        "source": dict(source or {"dataset": "BigEarthNet", "version": "1.0"}),
        "ingest": dict(ingest or {}),
        "package_version": __version__,
    }
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={ATTRS_KEY: attrs},
                            **({"storage_options": storage_options} if storage_options else {}))
    # The arrays are laid out in memory, then written in one concurrent pass (write_layout).
    layout = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    coordinates = lay_out(layout, names, shard_size=shard_size, compression=compression, modalities=modalities)
    write_layout(group, layout)
    if n:
        group[PATCH_NAME_ARRAY][:] = np.asarray(names, dtype=object)
    for coord_path, values in coordinates.items():
        if values:
            group[coord_path][:] = np.asarray(values, dtype=object)
    store = Store(group, str(path))
    store.update_attrs(layout_complete=True)
    return store


def lay_out(group: zarr.Group, names: list[str], *, shard_size: int, compression: str,
            modalities: Sequence[str]) -> dict[str, list[str]]:
    """Create every array of a store of ``names`` (sorted) in ``group``, metadata only (no chunk
    is written): the band arrays of ``modalities``, the row arrays and their ingest staging copies,
    the done flags and statistics, the coordinates. Returns each coordinate array's values, for
    the caller to write. :func:`create_store` lays out an in-memory group (``group`` on a store
    itself costs a round of existence checks per array: ``benchmarks/store_layout.py``)."""
    n = len(names)
    n_shards = max(1, -(-n // shard_size))
    for array_path, spec in BAND_ARRAYS.items():
        if spec.modality in modalities:
            group.create_array(array_path, shape=(n, *spec.row_shape), dtype=spec.dtype, chunks=(1, *spec.row_shape),
                               shards=(shard_size, *spec.row_shape), compressors=band_compressors(compression, spec.dtype),
                               fill_value=np.zeros((), spec.dtype)[()], dimension_names=("patch", *spec.dims))
    # Final per-row arrays are chunked coarsely (one read of 519k label rows: 0.27 s against
    # 2.4 s with 256-row chunks); ingest workers write 256-row staging copies instead.
    coarse = max(1, min(max(ROW_CHUNK, shard_size), n))
    staged = max(1, min(shard_size, n))
    for field_path, spec in ROW_FIELDS.items():
        _create_row_array(group, field_path, n, spec, coarse)
        if field_path != PATCH_NAME_ARRAY:
            _create_row_array(group, stage_path(field_path), n, spec, staged)
    group.create_array(DONE_ARRAY, shape=(n_shards,), dtype="bool", chunks=(1,), fill_value=False)
    if "s1" in modalities:
        group.create_array(S1_STATS_ARRAY, shape=(n_shards, len(S1_BANDS), len(STATS_FIELDS)), dtype="float64",
                           chunks=(1, len(S1_BANDS), len(STATS_FIELDS)), fill_value=0.0)
    group.create_array(STATS_ARRAY, shape=(n_shards, len(BANDS), len(STATS_FIELDS)), dtype="float64",
                       chunks=(1, len(BANDS), len(STATS_FIELDS)), fill_value=0.0)
    return _create_coordinates(group, names, modalities, coarse)


def subset_counts(codes: np.ndarray) -> dict[str, int]:
    """Patches of each subset of split ``codes`` (N,) int8: ``{"train", "val", "test",
    "excluded"}``, as a split records them (``counts``) and :meth:`Store.read_split` checks them."""
    return {subset: int((codes == code).sum()) for subset, code in {**SUBSETS, "excluded": EXCLUDED}.items()}


def label_counts(labels: np.ndarray, valid: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Valid patches with each class: ``labels`` (N, L) uint8 multi-hot, ``valid`` (N,) bool, as
    a complete store records them (``label_counts``) and :meth:`Store.labels` checks them."""
    return dict(zip(classes, map(int, labels[valid].sum(axis=0, dtype=np.int64))))


def row_compressors() -> list[ZstdCodec | Crc32cCodec]:
    """Codecs of the per-row arrays (labels, metadata, splits, patch coordinates): zarr's
    default zstd (level 0), then ``crc32c``, so that a bit flip in a labels or split chunk that
    still decodes fails its checksum instead of changing a label. Stores written before (no
    crc32c on these arrays) read the same; :meth:`Store.labels` and :meth:`Store.read_split`
    check their values against the counts recorded at writing."""
    return [ZstdCodec(level=0, checksum=False), Crc32cCodec()]


def _create_row_array(group: zarr.Group, path: str, n: int, spec: RowField, rows: int) -> None:
    last = path.rsplit("/", 1)[-1]
    names = ("patch",) + ((f"class_{last}",) if path.startswith("labels/") else ("corner",) if spec.trailing else ())
    kwargs: dict[str, Any] = {} if spec.dtype is str else {"fill_value": spec.fill}
    group.create_array(path, shape=(n, *spec.trailing), dtype=spec.dtype, chunks=(rows, *spec.trailing),
                       compressors=row_compressors(), dimension_names=names, overwrite=True, **kwargs)


def _create_coordinates(group: zarr.Group, names: list[str], modalities: Sequence[str],
                        rows: int) -> dict[str, list[str]]:
    """Create the :data:`COORDINATES` arrays of a store holding ``modalities``: the patch
    coordinates like ``meta/patch_name`` (same data type, chunks and codecs), the label
    coordinates in one chunk. Returns each array's values, to write once the layout is stored."""
    values: dict[str, list[str]] = {}
    for coord_path, coord in COORDINATES.items():
        if coord.modalities and not set(coord.modalities) & set(modalities):
            continue
        data = values[coord_path] = names if coord.labels is None else list(coord.labels)
        group.create_array(coord_path, shape=(len(data),), dtype=str, compressors=row_compressors(),
                           chunks=(rows if coord.labels is None else max(1, len(data)),),
                           dimension_names=(coord_path.rsplit("/", 1)[-1],), overwrite=True)
    return values


def write_layout(group: zarr.Group, layout: zarr.Group) -> None:
    """Write every group and array of ``layout`` (an in-memory group holding metadata only)
    under ``group``, concurrently, with ``zarr.create_hierarchy``.

    Why: ``create_array`` on the store itself checks, for each array, that no node is in the way
    and that every parent group exists, one request after another: about 480 requests for an S2
    store on S3 (the root's zarr.json alone read 129 times), 2-3 s against a local S3 server
    and far more against a remote one. Here each node is written once, all at the same time.
    """
    prefix = f"{group.store_path.path}/" if group.store_path.path else ""
    nodes = {prefix + name: node.metadata for name, node in layout.members(max_depth=None)}
    for _ in zarr.create_hierarchy(store=group.store, nodes=nodes, overwrite=False):
        pass


def finalize_rows(store: Store) -> None:
    """Copy the staged per-row data into the final, coarsely chunked arrays (idempotent)."""
    for path in ROW_FIELDS:
        if path == PATCH_NAME_ARRAY or not store.has_array(stage_path(path)):
            continue
        data = store.array(stage_path(path))[:]
        if data.dtype.kind in "OT":  # strings come back as StringDType; write plain objects
            data = np.asarray(data.tolist(), dtype=object)
        store.array(path)[:] = data


def empty_rows(n: int) -> dict[str, np.ndarray]:
    """One shard's staged per-row arrays, ``n`` rows at their fill values: every
    :data:`ROW_FIELDS` array but the patch names (strings as object arrays)."""
    return {path: np.full((n, *spec.trailing), spec.fill, dtype=object if spec.dtype is str else spec.dtype)
            for path, spec in ROW_FIELDS.items() if path != PATCH_NAME_ARRAY}


def drop_staging(store: Store) -> None:
    """Delete the staging arrays of a complete store (best effort: they are never read again;
    what a failure or a kill leaves, the next ``ingest`` of the complete store deletes:
    :func:`sweep_staging`). A local store's ``ingest/stage`` is renamed aside first, then
    deleted (:func:`benzarr.fsutil.remove_folder`), so a kill never leaves half of it."""
    from benzarr.errors import FileSystemError
    from benzarr.fsutil import remove_folder

    folder = store.local_path(STAGE_GROUP)
    try:
        if folder is None:
            del store.group[STAGE_GROUP]
        elif folder.is_dir():
            remove_folder(folder)
    except (KeyError, OSError, FileSystemError):
        pass


def has_staging(store: Store) -> bool:
    """True when the store holds staging arrays, or what a killed :func:`drop_staging` left
    (``ingest/.stage.benzarr-old-<pid>``)."""
    folder = store.local_path(STAGE_GROUP)
    if folder is None:
        return STAGE_GROUP in store.group
    from benzarr.fsutil import ASIDE_TAG

    return folder.is_dir() or any(folder.parent.glob(f".{folder.name}{ASIDE_TAG}*"))


def sweep_staging(store: Store) -> bool:
    """Delete what a kill after ``complete`` was written left of a complete store's staging
    arrays (:meth:`Store.mark_complete` writes ``complete`` first, then drops them); best
    effort (a store on a read-only file system keeps them). Returns True when there was any."""
    if not store.complete or not has_staging(store):
        return False
    from benzarr.fsutil import sweep_aside

    writable = store if not store.group.read_only else None
    try:
        writable = writable or open_store(store.path, mode="r+", require_complete=False)
    except (OSError, BenzarrError):
        return True
    folder = store.local_path(STAGE_GROUP)
    if folder is not None:
        sweep_aside(folder)  # folders of killed removals (of dead processes)
    drop_staging(writable)
    return True


# -- statistics ------------------------------------------------------------------------


def channel_stats(data: np.ndarray) -> np.ndarray:
    """(C, 5) float64 count, mean, M2, min, max per channel of (n, C, H, W) data (n may be 0).

    Integer data is summed exactly in uint64 (sum and sum of squares; a 65,536-patch shard of
    uint16 cannot overflow) and M2 = sum_sq - sum^2 / n is formed with Python integers: 20x
    faster than a float64 pass and exact. Float data (S1) takes a float64 pass.
    """
    out = np.zeros((data.shape[1], len(STATS_FIELDS)), dtype=np.float64)
    if data.shape[0] == 0:
        return out
    count = data.shape[0] * int(np.prod(data.shape[2:], dtype=np.int64))
    axes = (0, *range(2, data.ndim))
    lows, highs = data.min(axis=axes), data.max(axis=axes)
    if data.dtype.kind in "ui":
        sums = data.sum(axis=axes, dtype=np.uint64)
        flat = data.reshape(data.shape[0], data.shape[1], -1)
        squares = np.einsum("ncp,ncp->c", flat, flat, dtype=np.uint64)
        for c in range(data.shape[1]):
            total, square = int(sums[c]), int(squares[c])
            m2 = (square * count - total * total) / count  # exact numerator, one rounding
            out[c] = (count, total / count, m2, lows[c], highs[c])
        return out
    for c in range(data.shape[1]):
        values = data[:, c].astype(np.float64).ravel()
        mean = values.mean()
        out[c] = (count, mean, ((values - mean) ** 2).sum(), lows[c], highs[c])
    return out


def shard_band_stats(bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-band (count, mean, M2, min, max) of one shard's valid patches.

    Args:
        bands: band group -> (n, C, H, W) uint16 (only valid patches).

    Returns:
        (12, 5) float64 in :data:`BANDS` order; count 0 rows when ``n == 0``.
    """
    out = np.zeros((len(BANDS), len(STATS_FIELDS)), dtype=np.float64)
    for group_name, (names, _, _) in BAND_GROUPS.items():
        stats = channel_stats(bands[group_name])
        for c, band in enumerate(names):
            out[BANDS.index(band)] = stats[c]
    return out


def combine_band_stats(per_shard: np.ndarray, bands: Sequence[str] = BANDS) -> dict[str, dict[str, float | None]]:
    """Merge per-shard statistics (n_shards, C, 5) in shard order (Chan et al.'s update).

    Deterministic: the result depends on the shards' contents, not on which worker wrote them.
    """
    result: dict[str, dict[str, float]] = {}
    for b, band in enumerate(bands):
        count, mean, m2 = 0.0, 0.0, 0.0
        lo, hi = np.inf, -np.inf
        for n_b, mean_b, m2_b, min_b, max_b in per_shard[:, b]:
            if n_b == 0:
                continue
            delta = mean_b - mean
            total = count + n_b
            mean += delta * n_b / total
            m2 += m2_b + delta * delta * count * n_b / total
            count = total
            lo, hi = min(lo, min_b), max(hi, max_b)
        # JSON has no NaN: a band with no valid pixel gets None
        result[band] = {
            "count": int(count),
            "mean": float(mean) if count else None,
            "std": float(np.sqrt(m2 / count)) if count else None,
            "min": float(lo) if count else None,
            "max": float(hi) if count else None,
        }
    return result
