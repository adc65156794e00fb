"""Safe file-system steps shared by every command that writes or replaces a folder.

One rule for ``--overwrite`` everywhere (``ingest``, ``synth``, ``demo``, ``synth
--labels-only``): a command replaces only a folder that benzarr itself wrote for the same
purpose, recognised by its contents, never by its name:

- a store: its root ``zarr.json`` carries benzarr's ``benzarr`` attributes (complete or not);
- a synthetic archive or a demo folder: it holds the marker file :data:`MARKER` naming the
  command that wrote it.

Anything else (user files, a real archive, another program's Zarr store) is refused with one
line that says what is there, and nothing is deleted. Removal renames the folder aside first
(``.<name>.benzarr-old-<pid>`` beside it) and deletes it from there, so a kill at any moment
leaves either the old folder whole or no old folder at all, never half of it mixed with new
files; leftovers of killed removals are swept on the next replace.

OS errors become :class:`~benzarr.errors.FileSystemError` through :func:`os_error`, which
names the path, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benzarr.errors import (
    FileSystemError,
    InvalidArgumentError,
    PathConflictError,
    UnsafeOverwriteError,
)

#: Marker file of folders benzarr writes that are not stores (synthetic archives, demos).
MARKER = ".benzarr"
#: Name part of folders renamed aside while being deleted: ``.<name>.benzarr-old-<pid>``.
ASIDE_TAG = ".benzarr-old-"
#: Name parts of the temporary files and folders benzarr writes beside their final path: an
#: error names the final path instead (the temporary one means nothing to the user).
PARTIAL_TAG = ".benzarr-partial-"  # a folder being filled beside its final name (benzarr.examples, splits)
#: Name part of a folder moved aside while its new version is renamed into place
#: (``.<name>.benzarr-replaced-<pid>``, :meth:`benzarr.store.Store.write_split`): a kill between
#: the two renames leaves it there, and the next write puts it back.
REPLACED_TAG = ".benzarr-replaced-"
TEMPORARY_TAGS = (ASIDE_TAG, PARTIAL_TAG, REPLACED_TAG)
#: A folder a benzarr writer moved aside, is filling or swapped out: ``.<name><tag><pid>``.
WRITER_LEFTOVER = re.compile(r"\.(?P<name>.+?)(?P<tag>" + "|".join(re.escape(tag) for tag in TEMPORARY_TAGS)
                             + r")(?P<pid>[0-9]+)")
#: What an NFS client keeps of a file deleted (or renamed over) while a process still holds it
#: open, such as a shard a notebook's dataset has memory-mapped ("silly rename"): ``.nfs`` and hex
#: digits, in the same folder, until the last holder closes it. Deleting it fails (EBUSY), and so
#: does removing its folder (ENOTEMPTY). It is no one's file: not a user's, and never kept.
NFS_HELD = re.compile(r"\.nfs[0-9A-Fa-f]{4,}")


# -- OS errors -------------------------------------------------------------------------

#: What a file system that cannot rename a file says (an OSError that names two paths).
_NO_RENAME = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
#: What a file system that cannot rename a folder says: object-store FUSE mounts (gcsfuse,
#: mountpoint-s3, s3fs) among them.
NO_FOLDER_RENAME = _NO_RENAME | {errno.EXDEV}


def os_error(exc: OSError, path: str | Path = "", action: str = "writing", hint: str | None = None) -> FileSystemError:
    """A one-line :class:`FileSystemError` for ``exc``: the path, the cause, the fix.

    Args:
        exc: the OSError raised.
        path: the file or folder being worked on (``exc.filename`` wins when it is set).
        action: what was being done (``"writing"``, ``"reading"``, ``"creating"``).
        hint: what to do after a full disk (default: run the same command again).
    """
    named = getattr(exc, "filename", None)
    # a path opened as bytes (TensorBoard's reader opens event files so) read b'runs/a/...'
    where = (os.fsdecode(named) if isinstance(named, (str, bytes, os.PathLike)) else str(named)) if named else str(path)
    # a writer's temporary file or folder (or something inside one): name what it was for
    if path and (where.endswith((".partial", ".tmp")) or any(tag in where for tag in TEMPORARY_TAGS)):
        where = str(path)
    at = f"{where}: " if where else ""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        target = f" {where}" if where else ""
        message = f"{cause} while {action}{target}; {hint or 'free space and run the same command again'}"
    elif code == errno.EROFS:
        message = f"{at}read-only file system (while {action}); choose a writable location"
    elif code in (errno.EACCES, errno.EPERM):
        message = f"{at}permission denied (while {action})"
    elif code == errno.ENOTDIR:
        message = f"{at}a file is in the way (part of this path is a file, not a folder)"
    elif code == errno.EISDIR:
        message = f"{at}is a folder, not a file"
    elif code == errno.EEXIST and where and os.path.lexists(where) and not os.path.isdir(where):
        # mkdir of a path that is a file (train/evaluate/report --out, split --export): "File exists"
        message = f"{at}is a file, not a folder"
    elif code == errno.ELOOP:
        message = f"{at}symlink loop (too many levels of symbolic links); fix or remove the link"
    elif code == errno.ENAMETOOLONG:
        message = f"{at}file name too long"
    elif code == errno.EIO:
        message = f"{at}input/output error while {action} (a failing disk or network file system?)"
    elif code in _NO_RENAME and getattr(exc, "filename2", None):
        # a rename that the file system does not do (a FUSE mount of a bucket that renames no
        # files, mountpoint-s3 among them): it said only "Function not implemented (while writing)"
        cause = (exc.strerror or type(exc).__name__).lower()
        message = (f"{at}this file system cannot rename files ({cause}, while {action}), and zarr and benzarr "
                   "write each file under a temporary name, then rename it into place; on an object-store mount "
                   "(gcsfuse, mountpoint-s3, s3fs) give the bucket's s3:// URL instead")
    else:
        cause = exc.strerror or str(exc) or type(exc).__name__
        message = f"{at}{cause} (while {action})"
    return FileSystemError(message, where, code)


def rename_error(exc: OSError, path: str | Path, action: str) -> FileSystemError:
    """:func:`os_error` for a failed rename of a folder: where the file system cannot rename
    folders at all, it says so and what to do, rather than "Invalid cross-device link" or
    "Operation not supported" alone."""
    if exc.errno not in NO_FOLDER_RENAME:
        return os_error(exc, path, action)
    cause = (exc.strerror or type(exc).__name__).lower()
    return FileSystemError(
        f"{path}: this file system cannot rename folders ({cause}, while {action}), and benzarr moves folders "
        "aside or into place whole, so nothing was changed; on an object-store mount (gcsfuse, mountpoint-s3, "
        "s3fs) give the bucket's s3:// URL instead", str(path), exc.errno)


# -- what is at a path -----------------------------------------------------------------


def is_benzarr_store(path: str | Path) -> bool:
    """True if ``path`` is a folder whose root ``zarr.json`` carries benzarr's attributes."""
    try:
        with open(Path(path) / "zarr.json", "rb") as handle:
            meta = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):
        return False
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attributes, dict) and isinstance(attributes.get("benzarr"), dict)


def has_marker(path: str | Path, command: str) -> bool:
    """True if ``path`` holds the :data:`MARKER` file written by ``command`` (``"synth"``, ``"demo"``)."""
    try:
        meta = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("written_by") == f"benzarr {command}"


def write_marker(path: str | Path, command: str) -> None:
    """Mark ``path`` as written by ``benzarr <command>`` (deterministic bytes)."""
    (Path(path) / MARKER).write_text(json.dumps({"written_by": f"benzarr {command}"}) + "\n", encoding="utf-8")


def _is_ours(name: str) -> bool:
    return name == MARKER or ASIDE_TAG in name


def describe(path: str | Path) -> str:
    """What is at ``path``, in a few words, for an error message."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "a broken or looping symlink"
    if path.is_file():
        return "a file"
    if not path.is_dir():
        return "nothing"
    if (path / "zarr.json").is_file():
        if is_benzarr_store(path):
            return "a benzarr store"
        try:
            json.loads((path / "zarr.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            return "a Zarr store whose zarr.json is damaged (not JSON), so not known to be benzarr's"
        return "a Zarr store that benzarr did not write"
    names: list[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            names.append(entry.name)
            if len(names) > 1000:
                break
    if not names:
        return "an empty folder"
    sources = archive_sources(path)
    count = "over 1,000 entries" if len(names) > 1000 else f"{len(names):,} entr{'y' if len(names) == 1 else 'ies'}"
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    if len(sources) > 1:  # it said "12 entries that benzarr did not write" of two archives in one folder
        return f"both {' and '.join(f'a {s.title}' for s in sources)} archive ({count}: {shown})"
    if sources:
        return f"a {sources[0].title} archive ({count}: {shown})"
    return f"{count} that benzarr did not write ({shown})"


def archive_sources(path: str | Path) -> list[Any]:
    """The archive sources (``benzarr.sources``) that read the folder ``path``: one for an
    archive, two for a folder that holds both layouts, none for anything else or for a folder
    that cannot be told (a symlink loop in it)."""
    from benzarr.sources import matching_sources  # lazy: rasterio

    try:
        return matching_sources(Path(path))
    except Exception:
        return []


def read_utf8(path: Path, advice: str) -> str:
    """The text of ``path``, a list a user wrote (patch names, split CSVs): UTF-8, a leading
    byte-order mark dropped (spreadsheets write one; it is no part of the first name).

    Raises:
        InvalidArgumentError: not UTF-8, naming the byte and its line, then ``advice``.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InvalidArgumentError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                                   f"{advice}") from None


def foreign_files(store: str | Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` entries inside the benzarr store folder ``store``, or inside one of its
    split folders (``splits/<name>``), that benzarr did not write (paths relative to it, an
    empty folder with a trailing ``/``): what ``ingest --overwrite``, ``synth --labels-only
    --overwrite`` and ``split --overwrite`` would delete with it.

    Checked against the layout benzarr writes (:func:`benzarr.store.layout_node`): a group or
    array folder at a path no benzarr writer uses (a user's array, a folder with a
    ``zarr.json`` of their own) is foreign with all its files; in a group folder only its ``zarr.json``
    passes, in an array folder its ``zarr.json`` and the chunk files of its grid (shape and
    chunk or shard shape from that ``zarr.json``: ``c/99/0/0/0`` beyond 5 shards is a
    user's), with the temporary files of a killed write (zarr's ``*.<hex>.partial``,
    benzarr's ``.<chunk>.<pid>.tmp``). Any symlink is foreign (no writer makes one). An array
    whose ``zarr.json`` does not read (a damaged store) keeps the old rule: every name below
    ``c/`` a chunk coordinate."""
    from benzarr.store import layout_node  # lazy: zarr

    root = Path(store)
    found: list[str] = []
    if is_benzarr_store(root):
        _foreign_in_group(root, "", layout_node, found, limit)
    else:  # a split folder
        _foreign_in_array(root, "", found, limit)
    return found[:limit]


# zarr's LocalStore writes KEY as Path(KEY).with_suffix(".<uuid4 hex>.partial"), then renames it
_ZARR_PARTIAL = re.compile(r"(.+)\.[0-9a-f]{32}\.partial")
_SHARD_TMP = re.compile(r"\.(.+)\.[0-9]+\.tmp")  # benzarr.shards.write_shard: .KEY.PID.tmp


def _written_file(name: str, wanted: Callable[[str], bool]) -> bool:
    """``name`` is a file ``wanted`` accepts, or a killed write's temporary file of one."""
    if wanted(name):
        return True
    if match := _SHARD_TMP.fullmatch(name):
        return wanted(match[1])
    match = _ZARR_PARTIAL.fullmatch(name)
    return match is not None and (wanted(match[1]) or wanted(f"{match[1]}.json"))  # 0 or zarr(.json)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _scan(folder: Path, rel: str, found: list[str], limit: int, written: Callable[[str], bool],
          enter: Callable[[Path, str, str], None]) -> None:
    """The one walk of a store folder ``folder`` (``rel`` in the store): add to ``found`` each
    symlink and each file that ``written`` does not take for benzarr's (by name, see
    :func:`_written_file`) or for a deleted file NFS keeps while it is open (:data:`NFS_HELD`),
    and call ``enter(sub-folder, its rel path, its name)`` for each folder; stop once ``found``
    holds ``limit``."""
    for entry in _entries(folder):
        if len(found) >= limit:
            return
        path = _join(rel, entry.name)
        if entry.is_symlink():
            found.append(path)
        elif not entry.is_dir():
            if not _written_file(entry.name, written) and not NFS_HELD.fullmatch(entry.name):
                found.append(path)  # (a file held open on NFS is a deleted one's, not a user's)
        else:
            enter(Path(entry.path), path, entry.name)


def _foreign_in_group(folder: Path, rel: str, layout_node: Callable[[str], str | None], found: list[str],
                      limit: int) -> None:
    """Add to ``found`` what in the group folder ``folder`` (``rel`` in the store) benzarr did not write."""
    def enter(sub: Path, path: str, name: str) -> None:
        node = layout_node(path)
        left = WRITER_LEFTOVER.fullmatch(name) if node is None else None
        if left is not None:
            # what a killed (or NFS-held) removal of a benzarr folder left, ingest/.stage.benzarr-old-PID:
            # checked as the folder it was (the layout below it, seen through its own name)
            real = _join(rel, left["name"])
            node = layout_node(real)
            if node == "group":
                _foreign_in_group(sub, path, lambda below: layout_node(real + below[len(path):]), found, limit)
                return
        if node == "group":
            _foreign_in_group(sub, path, layout_node, found, limit)
        elif node == "array":
            _foreign_in_array(sub, path, found, limit)
        else:  # an array, group or folder of the user's
            _all_below(sub, path, found, limit)

    _scan(folder, rel, found, limit, lambda name: name == "zarr.json", enter)


def _all_below(folder: Path, rel: str, found: list[str], limit: int) -> None:
    """Add to ``found`` the files in ``folder`` (``rel`` in the store), which benzarr did not
    write: each file and symlink, and each empty folder as ``rel/``."""
    entries = _entries(folder)
    if not entries:
        found.append(f"{rel}/")
    for entry in entries:
        if len(found) >= limit:
            return
        path = _join(rel, entry.name)
        if entry.is_dir() and not entry.is_symlink():
            _all_below(Path(entry.path), path, found, limit)
        else:
            found.append(path)


def _chunk_grid(folder: Path) -> tuple[bool, tuple[int, ...] | None]:
    """Whether the ``zarr.json`` in the array folder ``folder`` may be benzarr's, and the grid
    of chunks (shards) of its ``c/1/0/...`` keys (``ceil(shape / chunk or shard shape)``):
    ``(False, ())`` for a group's (a user's group where benzarr writes an array), ``(True,
    None)`` for a missing one or one that does not read as an array's (a damaged store:
    ``{}``, not JSON), whose chunk files then pass by their names alone."""
    try:
        meta = json.loads((folder / "zarr.json").read_bytes())
        if meta.get("node_type") == "group":
            return False, ()
        shape = [int(n) for n in meta["shape"]]
        chunks = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        if (encoding.get("name") != "default" or encoding.get("configuration", {}).get("separator", "/") != "/"
                or len(shape) != len(chunks) or min(chunks, default=1) < 1):
            return True, None
    except (OSError, ValueError, RecursionError, AttributeError, KeyError, TypeError):
        return True, None
    return True, tuple(-(-n // c) for n, c in zip(shape, chunks))


def _foreign_in_array(folder: Path, rel: str, found: list[str], limit: int) -> None:
    """Add to ``found`` what in the array folder ``folder`` (``rel`` in the store) is neither
    its ``zarr.json`` nor a chunk of its grid."""
    ours, grid = _chunk_grid(folder)

    def written(name: str) -> bool:  # a 0-d array's one chunk is the file c
        return (name == "zarr.json" and ours) or (name == "c" and grid == ())

    def enter(sub: Path, path: str, name: str) -> None:
        if name == "c" and grid != ():
            _foreign_in_chunks(sub, path, grid, found, limit)
        else:
            _all_below(sub, path, found, limit)

    _scan(folder, rel, found, limit, written, enter)


def _index(name: str, size: int | None) -> bool:
    """``name`` is a chunk coordinate below ``size`` (any, when None)."""
    return name.isascii() and name.isdigit() and (size is None or int(name) < size)


def _foreign_in_chunks(folder: Path, rel: str, shape: tuple[int, ...] | None, found: list[str], limit: int) -> None:
    """Add to ``found`` what in the chunk folder ``folder`` (``rel``: ``.../c`` and the
    coordinates so far) is not a chunk of the grid ``shape`` (its remaining axes; None: any
    coordinate names, at any depth)."""
    last = shape is not None and len(shape) == 1
    size = shape[0] if shape else None

    def enter(sub: Path, path: str, name: str) -> None:
        if not last and _index(name, size):
            _foreign_in_chunks(sub, path, shape[1:] if shape is not None else None, found, limit)
        else:
            _all_below(sub, path, found, limit)

    # a chunk file only on the grid's last axis (or anywhere, for a grid that is not known)
    _scan(folder, rel, found, limit, lambda name: (last or shape is None) and _index(name, size), enter)


def is_empty_folder(path: Path) -> bool:
    """True for a folder with nothing in it but benzarr's own leftovers (marker, folders set aside)."""
    with os.scandir(path) as entries:
        return all(_is_ours(entry.name) for entry in entries)


def check_output(path: str | Path, *, overwrite: bool, owned: Callable[[Path], bool], what: str,
                 command: str) -> str:
    """Check that a command may write a folder at ``path``; write nothing.

    Args:
        overwrite: ``--overwrite`` was given.
        owned: recognises a folder this command may replace (e.g. :func:`is_benzarr_store`).
        what: the kind of folder the command writes, for messages (``"a benzarr store"``).
        command: the command, for messages (``"ingest"``).

    Returns:
        ``"missing"``, ``"empty"`` (an empty folder) or ``"owned"`` (a folder ``owned``
        recognises; whether to replace it, resume it or refuse is the caller's choice).

    Raises:
        FileSystemError: ``path`` is a file, sits under a file, or is a symlink loop.
        UnsafeOverwriteError: ``path`` holds something else and ``overwrite`` was given.
        InvalidArgumentError: ``path`` holds something else and no ``overwrite``.
    """
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise FileSystemError(f"{path}: a broken symlink; remove it or choose another path", str(path)) from None
        _check_parents(path)
        return "missing"
    except NotADirectoryError:
        _check_parents(path)
        raise FileSystemError(f"{path}: cannot be created: a part of this path is a file", str(path)) from None
    except OSError as exc:
        raise os_error(exc, path, "checking") from None
    if not path.is_dir():
        raise FileSystemError(f"{path}: is a file, not a folder; choose another path for {what}", str(path),
                              errno.ENOTDIR)
    try:
        if is_empty_folder(path):
            return "empty"
        if owned(path):
            return "owned"
        found = describe(path)
    except OSError as exc:
        raise os_error(exc, path, "reading") from None
    if overwrite:
        raise UnsafeOverwriteError(
            f"{path}: holds {found}, not {what}; --overwrite replaces only {what} (benzarr {command} "
            "never deletes anything else), so nothing was deleted: choose another path"
        )
    raise InvalidArgumentError(f"{path}: exists and holds {found}; choose another path (an empty or new folder)")


def check_replaceable_file(path: str | Path, *, owned: Callable[[Path], bool], what: str, command: str) -> bool:
    """Check that ``benzarr <command>`` may write the file ``path`` (an image, a table): a new
    file, or one that ``owned`` recognises as one benzarr wrote (an earlier run's output,
    which is replaced); write nothing. The rule of ``--overwrite`` for files: a user's file is
    never replaced, and no option changes that.

    Args:
        owned: recognises a file benzarr wrote (e.g. :func:`benzarr.show.is_benzarr_image`).
        what: the kind of file, for messages (``"an image"``).

    Returns:
        True if an earlier file is there (to be replaced), False if none.

    Raises:
        FileSystemError: ``path`` is a folder or a broken symlink.
        UnsafeOverwriteError: a file ``owned`` does not recognise (nothing is written).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if path.is_dir():
        raise FileSystemError(f"{path}: is a folder where benzarr {command} writes {what}; remove it or choose "
                              "another path", str(path), errno.EISDIR)
    if not path.exists():
        raise FileSystemError(f"{path}: a broken symlink; remove it or choose another path", str(path))
    try:
        ours = owned(path)
    except OSError:
        ours = False
    if not ours:
        raise UnsafeOverwriteError(f"{path}: exists and is not {what} that benzarr wrote; benzarr {command} replaces "
                                   "only its own files, so nothing was written: choose another path, or move the file away")
    return True


#: Endings of the files benzarr writes into its output folders: a folder to be made with one of
#: them (``evaluate --out dir/metrics.json``) is a file's name given for the folder.
FILE_ENDINGS = (".json", ".csv")


def check_not_a_file(path: str | Path, what: str) -> None:
    """Refuse, before any work, a path where a folder is to be written that is a file (mkdir
    would say only "File exists"), or that would make a folder of a file's name (one ending in
    :data:`FILE_ENDINGS`); a missing path of another name, or a folder, passes.

    Raises:
        FileSystemError: ``path`` is a file, or cannot be made because a parent is one; ``what``
            names the folder (``"the run folder (--out)"``).
        InvalidArgumentError: ``path``, or a missing folder above it, ends in .json or .csv.
    """
    if not os.path.lexists(path):
        _check_parents(Path(path))  # notes.txt/run: a file where a parent folder would go
        for made in (Path(path), *Path(path).parents):  # the folders mkdir would make
            if os.path.lexists(made):
                break
            if made.suffix.lower() in FILE_ENDINGS:  # evaluate --out d/metrics.json made a folder metrics.json
                hint = f", such as {made.parent}" if made.parent != Path(".") else ""
                raise InvalidArgumentError(f"{made}: a {made.suffix} file's name given for {what}, a folder: give "
                                           f"the folder the files go into{hint}")
    elif not os.path.isdir(path):
        raise FileSystemError(f"{path}: is a file, not a folder; choose another path for {what}", str(path),
                              errno.ENOTDIR)


def _check_parents(path: Path) -> None:
    """Raise if the nearest existing parent of ``path`` is not a folder."""
    for parent in path.absolute().parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise FileSystemError(f"{path}: cannot be created: {parent} is a file, not a folder",
                                      str(path), errno.ENOTDIR)
            return


def check_disjoint(store: str | Path, archive: str | Path) -> None:
    """Refuse a STORE that is ARCHIVE, lies inside it, or holds it (before anything is written).

    Raises:
        PathConflictError: naming both paths.
    """
    s, a = Path(store).resolve(), Path(archive).resolve()
    if s == a:
        raise PathConflictError(f"{store}: STORE is the archive itself; write the store somewhere else")
    if a in s.parents:
        raise PathConflictError(f"{store}: STORE is inside the archive {archive}; write the store somewhere else")
    if s in a.parents:
        raise PathConflictError(f"{store}: STORE holds the archive {archive}; write the store somewhere else")


def _dataset_at(folder: Path) -> str | None:
    """What dataset folder ``folder`` is, in a few words ("the benzarr store X", "the
    synthetic archive X", "the archive folder X (it holds patch folders)"), or None for any
    other folder. Only a folder that holds patch folders itself counts as an archive: the
    folder that holds an unpacked download (``BigEarthNet-v1.0/``, reBEN's folders and
    ``metadata.parquet``) is where users keep their runs too."""
    if is_benzarr_store(folder):
        return f"the benzarr store {folder}"
    if has_marker(folder, "synth"):
        return f"the synthetic archive {folder}"
    from benzarr.bigearthnet import is_patch_name, is_s1_name, is_v2_patch_name

    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if (is_patch_name(name) or is_v2_patch_name(name) or is_s1_name(name)) and entry.is_dir():
                    return f"the archive folder {folder} (it holds patch folders such as {name})"
    except OSError:  # unreadable: not known to be an archive
        return None
    return None


def check_outside_datasets(path: str | Path, option: str = "--out", what: str = "the run folder") -> None:
    """Refuse an output folder that is a benzarr store or an archive, or lies inside one.

    A run folder, evaluation or report written there would mix its files with the data's
    (a store's checkpoints/ beside its arrays, a run folder among an archive's patches).
    Checked before anything is written: ``path`` and each of its parents (symlinks resolved)
    that is a benzarr store, holds ``benzarr synth``'s marker, or holds patch folders itself
    (an unpacked archive's ``BigEarthNet-v1.0/``, a reBEN tile folder; beside them is fine).
    URLs are not checked.

    Args:
        path: the output folder (it need not exist).
        option: the option that named it, for the message (``"--out"``).
        what: what is written there, for the message (``"the run folder"``).

    Raises:
        PathConflictError: naming ``path``, the option and the store or archive.
    """
    if "://" in str(path):
        return
    target = Path(path).resolve()
    for folder in (target, *target.parents):
        found = _dataset_at(folder)
        if found is None:
            continue
        where = "is" if folder == target else "lies inside"
        raise PathConflictError(f"{path}: {option} {where} {found}; write {what} outside it")


# -- removing --------------------------------------------------------------------------


def rmtree_held(path: str | Path) -> list[str]:
    """Delete the folder ``path`` as ``shutil.rmtree`` does, except what an NFS client keeps of
    files that other processes still hold open (:data:`NFS_HELD`): those and the folders that
    hold them stay, and go once they are closed (the client deletes them then, or the next sweep
    of a leftover's name). On NFS a notebook that had the old store open made ``ingest
    --overwrite`` fail with "Directory not empty" after the store had been moved aside.

    Returns:
        The held files left, relative to ``path`` (empty when all is gone).

    Raises:
        OSError: the first error, when anything else could not be deleted.
    """
    try:
        shutil.rmtree(path)
        return []
    except OSError as exc:
        first = exc
    shutil.rmtree(path, ignore_errors=True)  # all else that can go
    held: list[str] = []

    def unreadable(exc: OSError) -> None:
        raise first

    for here, _, names in os.walk(path, onerror=unreadable):  # what could not go
        for name in names:
            if not NFS_HELD.fullmatch(name):
                raise first
            held.append(os.path.relpath(os.path.join(here, name), path))
    if os.path.lexists(path) and not held:
        raise first
    return sorted(held)


def _warn_held(path: Path, aside: Path, held: list[str]) -> None:
    """One warning that ``aside``, the removed ``path`` renamed, stays for the files in it that
    other processes hold open on NFS (:func:`rmtree_held`)."""
    import warnings

    count = f"{len(held)} file{'s' if len(held) != 1 else ''}"
    warnings.warn(f"{path}: {count} of the old folder ({held[0]}{', ...' if len(held) > 1 else ''}) {'is' if len(held) == 1 else 'are'} still open in "
                  f"another process (NFS keeps them until it closes them), so {aside} stays until then; a later "
                  "replace deletes it", stacklevel=3)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(folder: Path, prefix: str) -> None:
    """Delete ``<prefix><pid>`` folders in ``folder`` whose process is gone (left by a kill)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        tail = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and tail.isascii() and tail.isdigit() and not _pid_alive(int(tail)):
            shutil.rmtree(entry.path, ignore_errors=True)


def sweep_aside(path: str | Path) -> None:
    """Delete what killed removals of ``path`` left beside it (``.<name>.benzarr-old-<pid>``
    of processes that are gone)."""
    path = Path(path)
    _sweep(path.parent, f".{path.name}{ASIDE_TAG}")


def remove_entries(folder: str | Path, names: Iterable[str]) -> None:
    """Delete the entries ``names`` of ``folder`` (files or folders), safe to interrupt: they
    are moved into ``folder/.benzarr-old-<pid>`` first, then that is deleted.

    Raises:
        FileSystemError: naming the folder and the cause.
    """
    folder = Path(folder)
    _sweep(folder, ASIDE_TAG)
    aside = folder / f"{ASIDE_TAG}{os.getpid()}"
    moved: list[str] = []
    try:
        aside.mkdir(exist_ok=True)
        for name in names:
            os.rename(folder / name, aside / name)
            moved.append(name)
    except OSError as exc:
        # nothing deleted yet: put back what was moved, and leave no aside folder (inside a
        # store it read as a user's empty folder, and the next --overwrite refused the store)
        with contextlib.suppress(OSError):
            for name in reversed(moved):
                os.rename(aside / name, folder / name)
            aside.rmdir()
        raise rename_error(exc, folder, "removing old files") from None
    try:
        held = rmtree_held(aside)
    except OSError as exc:
        raise os_error(exc, folder, "removing old files") from None
    if held:
        _warn_held(folder, aside, held)


def remove_folder(path: str | Path) -> None:
    """Delete the folder ``path``: renamed aside first, then deleted (safe to interrupt).

    The caller has checked that the folder is benzarr's (:func:`check_output`). A mount
    point, which cannot be renamed, has its entries moved into a hidden folder inside it
    and deleted from there.

    Raises:
        FileSystemError: ``path`` is a symbolic link; the rename or the deletion failed
            (naming the folder and the cause).
    """
    path = Path(path)
    if path.is_symlink():  # renaming would move the link, and deleting through it is refused
        raise FileSystemError(f"{path}: is a symbolic link (to {os.readlink(path)}); nothing was deleted: give the "
                              "folder it points to, or remove the link first", str(path), errno.ELOOP)
    sweep_aside(path)
    aside = path.with_name(f".{path.name}{ASIDE_TAG}{os.getpid()}")
    try:
        try:
            os.rename(path, aside)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EBUSY):
                raise rename_error(exc, path, "removing the old folder") from None
            # a mount point: move its entries aside inside it instead
            remove_entries(path, [name for name in os.listdir(path)
                                  if not name.startswith(ASIDE_TAG) and not NFS_HELD.fullmatch(name)])
            return
        held = rmtree_held(aside)
    except OSError as exc:
        raise os_error(exc, path, "removing the old folder") from None
    if held:
        _warn_held(path, aside, held)


def replace_output(path: str | Path, *, overwrite: bool, owned: Callable[[Path], bool], what: str,
                   command: str, foreign: Callable[[Path], list[str]] | None = None) -> bool:
    """The one rule of ``--overwrite``: make ``path`` free for a new ``what``.

    Removes the folder (:func:`remove_folder`) only when ``owned`` recognises it, ``foreign``
    finds nothing in it that benzarr did not write, and ``overwrite`` is given; refuses
    everything else (see :func:`check_output`).

    Args:
        foreign: lists files in the folder that its writer did not put there
            (:func:`foreign_files` for a store); None: nothing to look for.

    Returns:
        True if an old folder was removed.

    Raises:
        InvalidArgumentError: ``owned`` recognises the folder but ``overwrite`` was not given.
        UnsafeOverwriteError: ``foreign`` found a user's files (nothing is deleted).
        and everything :func:`check_output` raises.
    """
    state = check_output(path, overwrite=overwrite, owned=owned, what=what, command=command)
    if state != "owned":
        return False
    if not overwrite:
        raise InvalidArgumentError(f"{path}: {what} is already there; pass --overwrite to replace it")
    check_no_foreign(path, foreign(Path(path)) if foreign is not None else [], what)
    remove_folder(path)
    return True


def check_no_foreign(path: str | Path, found: list[str], what: str) -> None:
    """Refuse to replace ``path`` (``what``) when ``found`` lists files a user put in it.

    Raises:
        UnsafeOverwriteError: naming the files; nothing was deleted.
    """
    if found:
        raise UnsafeOverwriteError(
            f"{path}: holds files that benzarr did not write ({', '.join(found)}); --overwrite replaces only "
            f"what benzarr wrote, so nothing was deleted: move them out of {what} first"
        )


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block has run, then deliver it.

    For a write that must finish once begun: torch.save interrupted by a KeyboardInterrupt
    raises a RuntimeError from its C++ writer instead, and leaves a temporary file behind.
    Outside the main thread (where Python cannot set signal handlers) the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)  # to the handler restored above (KeyboardInterrupt by default)
