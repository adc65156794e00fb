"""Archive files in folders or inside uncompressed tar files, read the same way.

BigEarthNet ships as tarballs of some 7 million small files. Unpacking one takes hours on a
network file system and can exhaust an inode quota; benzarr reads the patches straight out of
the ``.tar`` instead (decompressed once: ``gunzip -k`` / ``zstd -d`` write one file):

- ARCHIVE may be a ``.tar`` file: it reads as the folder it would unpack into;
- a folder given as ARCHIVE may hold ``.tar`` files beside (or instead of) folders: each tar's
  top-level entries read as entries of that folder (``reBEN/BigEarthNet-S2.tar`` serves
  ``reBEN/BigEarthNet-S2/...``). A real entry of the same name wins.

:func:`mount` indexes those tars once (one pass over the tar headers, member name -> byte
range, kept per folder) and registers them in this process. Every reader of the sources goes
through the functions below (:func:`is_dir`, :func:`listdir`, :func:`read_bytes`,
:func:`open_raster`, ...), which fall through to the operating system for paths outside a
tar. Ingest workers do not index the tar again: :func:`export` gives the byte ranges of a
shard's patch folders, which travel with the shard's task, and :func:`installed` serves them
in the worker's thread for that task; the worker then reads each file with one ``pread``.

A notebook or a Dask worker lives through many ingests, and a tar may be replaced at the same
path between them (a re-download) or deleted. So an index records the identity of the file it
describes (device, inode, size, modification time) and holds its open file itself: every read
checks, with one ``fstat``, that the open file is still that one (else ArchiveChangedError), an
index is never reused for another file at the same path, :func:`mount` makes a folder's mounts
again from what is on disk, and :func:`session` (around an ingest) lets go of the mounts and
indexes it made, which closes their files: a deleted tar's disk space is freed.

Compressed tarballs (gzip, bzip2, xz, zstd) allow no random access and are refused with the
command that decompresses them.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benzarr.errors import ArchiveChangedError, NotAnArchiveError

#: Leading bytes of compressed files -> (format, the command that writes the plain .tar beside it).
COMPRESSED_MAGIC: dict[bytes, tuple[str, str]] = {
    b"\x1f\x8b": ("gzip", "gunzip -k"),
    b"BZh": ("bzip2", "bunzip2 -k"),
    b"\xfd7zXZ\x00": ("xz", "unxz -k"),
    b"\x28\xb5\x2f\xfd": ("zstd", "zstd -d"),
}
#: The suffix each decompressor expects of its input.
_SUFFIX = {"gzip": "gz", "bzip2": "bz2", "xz": "xz", "zstd": "zst"}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tzst")

#: One directory of a tar: child name -> (byte offset of its data, size in bytes), or None for a folder.
Listing = dict[str, "tuple[int, int] | None"]
#: A file's identity: (device, inode, size, modification time in ns). A tar replaced at its path
#: (a new inode) or rewritten in place (another size or time) has another.
Ident = tuple[int, int, int, int]


def identity(st: os.stat_result) -> Ident:
    """The :data:`Ident` of a file from its ``os.stat`` / ``os.fstat``."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _OpenTar:
    """A tar file open for ``pread``, closed when the last reference goes: the index holding it,
    or a read in progress on another thread, so it is never closed under a reader."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self, _close: Any = os.close) -> None:  # os may be gone at interpreter exit
        _close(self.fd)


@dataclass
class TarIndex:
    """Where every member of one uncompressed tar lies.

    Attributes:
        path: absolute path of the tar file.
        dirs: directory (member path without a trailing slash; "" the top) -> its listing.
        ident: the identity of the file indexed (None: not checked).
        opened: the tar open for reading, once a member was read (see :func:`read_bytes`).
    """

    path: str
    dirs: dict[str, Listing] = field(default_factory=dict)
    ident: Ident | None = None
    opened: _OpenTar | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, path: str, members: Any = None) -> TarIndex:
        """Index ``path`` in one pass over its headers (no member data is read).

        ``members``: the header reader, :func:`scan_headers` (the default: about 5x faster than
        tarfile) or :func:`tarfile_members` (the standard library's, the reference in tests).

        Raises:
            NotAnArchiveError: the file is compressed (naming the command that decompresses
                it), is no tar file, or ends early (a truncated download).
        """
        check_not_compressed(path)
        ident = identity(os.stat(path))  # before reading: a change while indexing fails the first read
        index, size, end, count = cls(path, ident=ident), ident[2], 0, 0
        try:
            for name, kind, offset, length, link in (members or scan_headers)(path):
                count += 1
                end = max(end, offset + length)
                if kind == "file":
                    index.add(name, (offset, length))
                elif kind == "dir":
                    index.add(name, None)
                elif kind == "link":  # a hard link: the data of an earlier member
                    target = index.entry(_clean(link))[1]
                    if target is not None:
                        index.add(name, target)
        except tarfile.ReadError as exc:
            if count == 0:
                raise NotAnArchiveError(f"{path}: not a readable tar file ({exc})") from None
            end = size + 1  # a header cut short
        if end > size:  # silently ingesting the part that is there would lose patches
            raise NotAnArchiveError(
                f"{path}: the tar ends early ({size:,} bytes, after {count:,} members; a truncated download "
                "or decompression?): make it again, then ingest")
        return index

    def add(self, name: str, where: tuple[int, int] | None) -> None:
        """Record member ``name`` (a file at ``where``, or a folder when None) and its parent folders."""
        name = _clean(name)
        if not name:
            self.dirs.setdefault("", {})
            return
        parent, _, base = name.rpartition("/")
        listing = self.dirs.get(parent)
        if listing is None:
            self.add(parent, None) if parent else self.dirs.setdefault("", {})
            listing = self.dirs[parent]
        if where is not None:
            listing[base] = where
        else:
            listing.setdefault(base, None)
            self.dirs.setdefault(name, {})

    def entry(self, member: str) -> tuple[bool, tuple[int, int] | None]:
        """``(exists, byte range or None for a folder)`` of ``member``."""
        if member in self.dirs:
            return True, None
        parent, _, name = member.rpartition("/")
        listing = self.dirs.get(parent)
        if listing is None or name not in listing:
            return False, None
        return True, listing[name]

    def files_under(self, member: str) -> Iterator[tuple[str, tuple[int, int]]]:
        """Every file at or below ``member``, with its byte range."""
        found, where = self.entry(member)
        if found and where is not None:
            yield member, where
            return
        for name, child in self.dirs.get(member, {}).items():
            path = f"{member}/{name}" if member else name
            if child is None:
                yield from self.files_under(path)
            else:
                yield path, child


def _clean(name: str) -> str:
    """A member name as a relative path without ``.`` parts or trailing slashes."""
    if name.startswith(("./", "/")) or name.endswith("/") or "//" in name or "/./" in name or name == ".":
        return "/".join(p for p in name.split("/") if p not in ("", "."))
    return name


#: (member path, "file" | "dir" | "link" | "other", byte offset of its data, data size, link target)
Member = tuple[str, str, int, int, str]
_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "link"}
_ZERO_BLOCK = bytes(512)
_CHUNK = 1 << 22


def tarfile_members(path: str) -> Iterator[Member]:
    """The members of an uncompressed tar, read by the standard library's ``tarfile``."""
    with tarfile.open(path, mode="r:") as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header otherwise: gigabytes for BigEarthNet
            kind = "file" if member.isfile() else "dir" if member.isdir() else "link" if member.islnk() else "other"
            yield member.name, kind, member.offset_data, member.size, member.linkname


def scan_headers(path: str) -> Iterator[Member]:
    """The members of an uncompressed tar (ustar, GNU and pax formats), from its headers read in
    4 MB slices: the same as :func:`tarfile_members`, without its per-member seek and objects.

    Raises:
        tarfile.ReadError: a header whose checksum is wrong, or a header cut short.
    """
    with open(path, "rb", buffering=0) as handle:
        buffer, start = b"", 0

        def read(position: int, n: int) -> bytes:
            nonlocal buffer, start
            if position < start or position + n > start + len(buffer):
                handle.seek(position)
                buffer, start = handle.read(max(_CHUNK, n)), position
            return buffer[position - start:position - start + n]

        position, long_name, long_link, pax = 0, b"", b"", {}
        while True:
            header = read(position, 512)
            if len(header) < 512:
                if not header:
                    return  # no end-of-archive blocks: tarfile accepts that too
                raise tarfile.ReadError("unexpected end of data")
            if header == _ZERO_BLOCK:
                return
            try:
                recorded, size = _number(header[148:156]), _number(header[124:136])
            except ValueError:
                raise tarfile.ReadError("invalid header") from None
            if recorded != _checksum(header) and recorded != _checksum(header, signed=True):
                raise tarfile.ReadError("invalid header (bad checksum)")
            kind = header[156:157]
            data = position + 512
            if kind in (b"L", b"K", b"x"):  # GNU long name / long link, pax extended header of the next member
                payload = read(data, size)
                if kind == b"L":
                    long_name = payload.split(b"\0", 1)[0]
                elif kind == b"K":
                    long_link = payload.split(b"\0", 1)[0]
                else:
                    pax = _pax_records(payload)
                position = data + (size + 511) // 512 * 512
                continue
            name = header[0:100].split(b"\0", 1)[0]
            if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field extends the name
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            name = pax.get("path") or long_name or name
            link = pax.get("linkpath") or long_link or header[157:257].split(b"\0", 1)[0]
            if "size" in pax:
                size = int(pax["size"])
            if kind == b"\0" and name.endswith(b"/"):  # an old-style folder (as tarfile reads it)
                kind = b"5"
            if kind == b"5":
                name = name.rstrip(b"/")
            if kind != b"g":  # a global pax header describes no member
                yield (_text(name), _KINDS.get(kind, "other"), data, size, _text(link))
            position = data + (size + 511) // 512 * 512
            long_name, long_link, pax = b"", b"", {}


def _checksum(header: bytes, signed: bool = False) -> int:
    """The sum of a header's bytes with its checksum field as spaces (ustar's rule; ``signed``:
    the bytes as signed, which some old tar programs wrote)."""
    if signed:
        return sum(b - 256 if b > 127 else b for b in header[:148]) + 8 * 32 + sum(
            b - 256 if b > 127 else b for b in header[156:])
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU's base-256 (first byte 0x80)."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(payload: bytes) -> dict[str, Any]:
    """``key -> value`` of a pax extended header (``"%d %s=%s\\n"`` records); paths stay bytes."""
    records: dict[str, Any] = {}
    position = 0
    while position < len(payload):
        space = payload.find(b" ", position)
        if space < 0:
            break
        length = int(payload[position:space])
        key, _, value = payload[space + 1:position + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value
        position += length
    return records


def _text(name: str | bytes) -> str:
    return name if isinstance(name, str) else name.decode("utf-8", "surrogateescape")


# -- this process's mounts --------------------------------------------------------------------

#: Absolute folder path -> (index, member path of that folder inside the tar), made by mount().
_MOUNTS: dict[str, tuple[TarIndex, str]] = {}
#: (tar path, identity) -> its whole index, so that mounting it again does not read it again.
_INDEXES: dict[tuple[str, Ident], TarIndex] = {}
_LOCK = threading.Lock()


class _Installed(threading.local):
    """The mounts :func:`installed` serves, per thread: a Dask worker runs shard tasks on
    several threads, each with its own shard's byte ranges."""

    def __init__(self) -> None:
        self.mounts: dict[str, tuple[TarIndex, str]] = {}


_INSTALLED = _Installed()
#: Sessions open now (see :func:`session`); the mounts, the indexes and the ids of the indexes
#: whose file was open when the first one began.
_SESSIONS = 0
_BEFORE: tuple[dict[str, tuple[TarIndex, str]], dict[tuple[str, Ident], TarIndex], set[int]] = ({}, {}, set())


def check_not_compressed(path: str | Path) -> None:
    """Raise NotAnArchiveError naming the decompression command when ``path`` is compressed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return
    for magic, (kind, command) in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            name = Path(path).name
            # gunzip & co. refuse a name without their suffix ("unknown suffix -- ignored")
            run = (f"`mv {name} {name}.{_SUFFIX[kind]} && {command} {name}.{_SUFFIX[kind]}`"
                   if name.lower().endswith(".tar") else f"`{command} {name}`")
            raise NotAnArchiveError(
                f"{path}: a {kind}-compressed file; benzarr reads tar archives in place but needs them "
                f"uncompressed for random access: run {run} (one file, no unpacking "
                "of millions of files) and give the .tar")


def compressed_tarballs(folder: str | Path) -> list[str]:
    """Names of the compressed tarballs directly in ``folder`` (sorted)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if is_tar_name(e.name) and not e.name.lower().endswith(".tar"))
    except OSError:
        return []


def is_tar_name(name: str) -> bool:
    """True for a file name with a tar suffix (compressed or not)."""
    return name.lower().endswith(_TAR_SUFFIXES)


def mount(path: str | Path) -> list[str]:
    """Index the tar ``path`` (an archive given as a file), or every tar file directly in the
    folder ``path``, and serve their members under it in this process. Returns the tar files
    mounted. Compressed tarballs among them raise (see :func:`check_not_compressed`)."""
    root = os.path.abspath(path)
    # What an earlier call mounted here is made again from the disk as it is now: the tar may
    # have been replaced, deleted, or unpacked in its place since.
    # (A tar given as a file, root/X.tar, is an archive of its own: left alone.)
    for virtual in [v for v, (_, top) in _MOUNTS.items() if v == root or (top and os.path.dirname(v) == root)]:
        del _MOUNTS[virtual]
    if os.path.isfile(root):
        if not is_tar_name(root) and not tarfile.is_tarfile(root):
            return []
        _MOUNTS[root] = (_index(root), "")
        _drop_unmounted()
        return [root]
    if not os.path.isdir(root):
        return []
    mounted = []
    with os.scandir(root) as entries:  # plain tars only: a .tar.gz beside its .tar is the download
        tars = sorted(e.path for e in entries if e.name.lower().endswith(".tar") and e.is_file())
    for tar_path in tars:
        top = _first_top(tar_path)
        if top and os.path.lexists(os.path.join(root, top)):
            continue  # unpacked beside it (a real folder wins): no need to index the tar
        index = _index(tar_path)
        for top, where in index.dirs.get("", {}).items():
            virtual = os.path.join(root, top)
            if where is None and not os.path.lexists(virtual):  # a real folder of that name wins
                _MOUNTS[virtual] = (index, top)
        mounted.append(tar_path)
    _drop_unmounted()
    return mounted


def _drop_unmounted() -> None:
    """Forget the indexes no mount serves any more (a tar replaced or deleted): their files close."""
    served = {id(index) for index, _ in _MOUNTS.values()}
    for key in [k for k, index in _INDEXES.items() if id(index) not in served]:
        del _INDEXES[key]


def _first_top(tar_path: str) -> str:
    """The top-level name of a tar's first member ("" when it has none or is unreadable)."""
    try:
        first = next(scan_headers(tar_path), None)
    except (tarfile.ReadError, OSError):
        return ""
    return _clean(first[0]).split("/", 1)[0] if first else ""


def mount_enclosing(path: str | Path) -> str | None:
    """Mount the tar file that ``path`` lies inside (``downloads/X.tar/BigEarthNet-v1.0``), if
    any; returns the tar's path.

    Raises:
        NotAnArchiveError: that tar is compressed or unreadable.
    """
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(probe):  # a path through a file does not exist for the OS
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    if os.path.isfile(probe) and is_tar_name(probe):
        check_not_compressed(probe)
        mount(probe)
        return probe
    return None


def _index(tar_path: str) -> TarIndex:
    """The whole index of the tar now at ``tar_path``: the one made before if it is the same
    file, else a new one (an older one of that path is dropped: its file is closed once no
    mount holds it)."""
    key = (tar_path, identity(os.stat(tar_path)))
    if key not in _INDEXES:
        for old in [k for k in _INDEXES if k[0] == tar_path]:
            del _INDEXES[old]
        _INDEXES[key] = TarIndex.build(tar_path)
    return _INDEXES[key]


def unmount_all() -> None:
    """Forget every mount of this process and this thread's installed ones; tar files that no
    read in progress holds are closed (tests)."""
    _MOUNTS.clear()
    _INDEXES.clear()
    _INSTALLED.mounts = {}


@contextmanager
def session() -> Iterator[None]:
    """Run the block, then forget the mounts and indexes it made, and close the tar files it
    opened: what an ingest mounted or opened does not outlive it (a deleted tar's space is
    freed). Mounts that were there before and are unchanged stay (a file they had not open is
    opened again by the next read). Sessions on several threads at once let go when the last
    one ends; a read in progress keeps its file open until it is done."""
    global _SESSIONS, _BEFORE
    with _LOCK:
        if _SESSIONS == 0:
            _BEFORE = dict(_MOUNTS), dict(_INDEXES), {id(ix) for ix in _INDEXES.values() if ix.opened is not None}
        _SESSIONS += 1
    try:
        yield
    finally:
        with _LOCK:
            _SESSIONS -= 1
            if _SESSIONS == 0:
                mounts, indexes, was_open = _BEFORE
                _BEFORE = {}, {}, set()
                for virtual, (index, prefix) in list(_MOUNTS.items()):
                    before = mounts.get(virtual)
                    if before is None or before[0] is not index or before[1] != prefix:
                        del _MOUNTS[virtual]
                    elif id(index) not in was_open:
                        index.opened = None
                for key in [k for k in _INDEXES if k not in indexes]:
                    del _INDEXES[key]


def _locate(path: str | Path) -> tuple[TarIndex, str] | None:
    """``(index, member path)`` when ``path`` lies in a mounted or installed tar, else None."""
    installed = _INSTALLED.mounts
    if not _MOUNTS and not installed:
        return None
    absolute = os.path.abspath(path)
    probe, rest = absolute, ""
    while True:
        mounted = installed.get(probe) or _MOUNTS.get(probe)
        if mounted is not None:
            index, prefix = mounted
            member = "/".join(p for p in (prefix, rest) if p)
            return index, member
        parent, name = os.path.split(probe)
        if parent == probe:
            return None
        rest = f"{name}/{rest}" if rest else name
        probe = parent


# -- what the sources call --------------------------------------------------------------------


def is_dir(path: str | Path) -> bool:
    """``Path(path).is_dir()``, for tar members too."""
    found = _locate(path)
    if found is None:
        return os.path.isdir(path)
    exists, where = found[0].entry(found[1])
    return exists and where is None


def is_file(path: str | Path) -> bool:
    """``Path(path).is_file()``, for tar members too."""
    found = _locate(path)
    if found is None:
        return os.path.isfile(path)
    exists, where = found[0].entry(found[1])
    return exists and where is not None


def exists(path: str | Path) -> bool:
    """``Path(path).exists()``, for tar members too."""
    found = _locate(path)
    if found is None:
        return os.path.exists(path)
    return found[0].entry(found[1])[0]


def _virtual_folders() -> list[str]:
    """The folders that mounted and installed tars serve."""
    return [*_MOUNTS, *_INSTALLED.mounts]


def has_mounts_in(folder: str | Path) -> bool:
    """True when a mounted tar serves entries directly in the real folder ``folder``."""
    if not _MOUNTS and not _INSTALLED.mounts:
        return False
    root = os.path.abspath(folder)
    return any(os.path.dirname(virtual) == root for virtual in _virtual_folders())


def in_tar(path: str | Path) -> bool:
    """True when ``path`` is served from a mounted tar."""
    return _locate(path) is not None


def listdir(path: str | Path) -> list[tuple[str, bool]]:
    """``(name, is a folder)`` of the entries of the folder ``path`` (unsorted), tar members and
    mounted tars' top-level folders included.

    Raises:
        OSError: as ``os.scandir`` for a path outside any tar (FileNotFoundError, ...).
    """
    found = _locate(path)
    if found is not None:
        index, member = found
        return [(name, where is None) for name, where in index.dirs.get(member, {}).items()]
    root = os.path.abspath(path)
    entries = []
    with os.scandir(root) as scan:
        for entry in scan:
            entries.append((entry.name, entry.is_dir()))
    have = {name for name, _ in entries}
    for virtual in _virtual_folders():
        parent, name = os.path.split(virtual)
        if parent == root and name not in have:
            have.add(name)
            entries.append((name, True))
    return entries


class SpecialFileError(OSError):
    """An archive file that is a FIFO, a device or a socket (or a link to one): opening a FIFO
    waited for a writer for ever, and a link to ``/dev/zero`` read without end."""


def _check_regular(path: str | Path) -> None:
    """Raise :class:`SpecialFileError` if the file ``path`` on disk is not a regular file (a
    folder passes: its readers say so themselves)."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SpecialFileError("not a regular file (a FIFO, a device or a socket), so not read")


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the file ``path``, from its tar or from disk.

    Raises:
        FileNotFoundError: no such file; SpecialFileError: a FIFO, device or socket; OSError:
            a read error, or a tar member cut short (a truncated tar); ArchiveChangedError:
            the tar is no longer the file that was indexed.
    """
    found = _locate(path)
    if found is None:
        _check_regular(path)
        with open(path, "rb") as handle:
            return handle.read()
    index, member = found
    exists_, where = index.entry(member)
    if not exists_ or where is None:
        raise FileNotFoundError(2, "No such file in the tar", str(path))
    offset, size = where
    opened = _opened(index)  # held while reading: the file stays open even if the index is let go
    data = os.pread(opened.fd, size, offset)
    if len(data) != size:
        raise OSError(f"{Path(path).name}: cut short in {index.path} ({len(data)} of {size} bytes; a truncated tar?)")
    return data


def _opened(index: TarIndex) -> _OpenTar:
    """``index``'s tar, open, and still the file indexed: one ``fstat`` a member read (a
    microsecond), so a tar replaced or rewritten since is never read at the old byte ranges.

    Raises:
        OSError: the tar cannot be opened (deleted: FileNotFoundError); ArchiveChangedError.
    """
    opened = index.opened
    if opened is None:
        with _LOCK:
            if index.opened is None:
                index.opened = _OpenTar(os.open(index.path, os.O_RDONLY))
            opened = index.opened
    if index.ident is not None and identity(os.fstat(opened.fd)) != index.ident:
        raise ArchiveChangedError(
            f"{index.path}: the tar file changed (replaced or rewritten) after it was indexed; "
            "run the command again once it is complete, to read it anew")
    return opened


@contextmanager
def open_raster(path: str | Path) -> Iterator[Any]:
    """``rasterio.open(path)``; a tar member is opened from its bytes in memory."""
    import rasterio
    from rasterio.io import MemoryFile

    if _locate(path) is None:
        _check_regular(path)
        with rasterio.open(path) as dataset:
            yield dataset
        return
    with MemoryFile(read_bytes(path)) as memory, memory.open() as dataset:
        yield dataset


# -- the seam to ingest workers ---------------------------------------------------------------


def export(paths: Sequence[str | Path | None]) -> dict[str, Any] | None:
    """The byte ranges of every file at or below ``paths`` that lie in tars, for
    :func:`install` in another process; None when none does (a plain folder archive)."""
    tars: dict[str, list[tuple[str, int, int]]] = {}
    idents: dict[str, Ident | None] = {}
    mounts: dict[str, tuple[str, str]] = {}
    for path in paths:
        if path is None:
            continue
        found = _locate(path)
        if found is None:
            continue
        index, member = found
        tars.setdefault(index.path, []).extend((name, *where) for name, where in index.files_under(member))
        idents[index.path] = index.ident  # the worker reads only that file
    if not tars:
        return None
    for virtual, (index, prefix) in [*_MOUNTS.items(), *_INSTALLED.mounts.items()]:
        if index.path in tars:
            mounts[virtual] = (index.path, prefix)
    return {"tars": tars, "idents": idents, "mounts": mounts}


@contextmanager
def installed(exported: dict[str, Any] | None) -> Iterator[None]:
    """Serve what :func:`export` gave in this thread while the block runs (an ingest task).

    Its tars are opened by the reads and closed at the end: a long-lived worker (Dask) keeps
    neither file nor byte ranges between tasks. A tar this process mounted whole (an ingest in
    the caller's process) is read through that mount instead.
    """
    if not exported:
        yield
        return
    idents = exported.get("idents", {})
    indexes = {}
    for tar_path, members in exported["tars"].items():
        ident = idents.get(tar_path)
        ident = None if ident is None else tuple(ident)
        if ident is not None and (tar_path, ident) in _INDEXES:
            continue  # mounted whole here by mount(): nothing to add
        index = TarIndex(tar_path, ident=ident)
        for name, offset, size in members:
            index.add(name, (offset, size))
        indexes[tar_path] = index
    mine = {virtual: (indexes[tar_path], prefix)
            for virtual, (tar_path, prefix) in exported["mounts"].items() if tar_path in indexes}
    previous = _INSTALLED.mounts
    _INSTALLED.mounts = {**previous, **mine}
    try:
        yield
    finally:
        _INSTALLED.mounts = previous
