"""Advisory locks that keep two ingests from writing one store, or two trains one run folder,
at the same time.

A lock is a ``fcntl.flock`` on a small file beside the store, ``.<store name>.benzarr-ingest.lock``
(beside, not inside, so that replacing the store with ``--overwrite`` never moves the lock). Lock
paths are resolved (symlinks, ``..``): every spelling of one store has one lock.
The kernel drops a flock when its process dies, so the lock of a killed ingest is stale at
once and the next ingest simply takes it over; the file holds ``pid host`` of the holder for
the error message only. The holder deletes the file when it is done; an acquirer checks that
the file it locked is still the one at the path (same inode), so deleting it is race-free.

- A whole-store ingest (and ``--plan``) holds the store lock exclusively.
- A ``--part I/N`` ingest holds the store lock shared and its own part lock
  (``.<name>.benzarr-ingest-part-I-of-N.lock``) exclusively: parts run side by side, two runs
  of one part do not, and no whole-store ingest runs while any part does.
- Writing a split or the root attributes holds ``.<name>.benzarr-write.lock`` exclusively,
  waiting for it (:func:`write_lock`), for as long as that write takes.
- Finalising a store (staged rows into their arrays, then ``complete``) holds
  ``.<name>.benzarr-ingest-finalize.lock`` exclusively, waiting for it: of two parts that
  finish together, one finalises and the other finds the store complete.

Stores behind URLs (``s3://``) are not locked: object stores have no such lock.

A training run holds :func:`run_lock` on its run folder for its whole life, a lock of the same
kind inside the folder (``RUNDIR/.benzarr-train.lock``: a run needs write access to its own
folder only; report, evaluate and show read no hidden file there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benzarr.errors import FileSystemError, RunLockedError, StoreLockedError
from benzarr.fsutil import os_error


def lock_path(store: str | Path, part: tuple[int, int] | None = None) -> Path:
    """The lock file of ``store`` (or of its part ``(i, n)``), beside the store.

    The path is resolved (symlinks, ``..``), as :func:`run_lock_path`'s is: ``alias.zarr``, a
    link to ``real.zarr``, once got a lock of its own, and two ingests wrote one store at once."""
    suffix = f"-part-{part[0]}-of-{part[1]}" if part else ""
    return _beside(store, f"ingest{suffix}")


def _beside(store: str | Path, kind: str) -> Path:
    """``.<name>.benzarr-<kind>.lock`` beside the store, its path resolved: every lock file's name."""
    store = Path(store).resolve()
    return store.with_name(f".{store.name}.benzarr-{kind}.lock")


def _holder(path: Path) -> str:
    """``pid N on HOST`` from a lock file, or ``a process`` if it says nothing."""
    try:
        pid, host = path.read_text(encoding="utf-8").split()[:2]
        return f"pid {int(pid)} on {host}"
    except (OSError, ValueError):
        return "a process"


def _live_part_holders(store: Path) -> list[tuple[str, str]]:
    """(part, holder) of every part lock of ``store`` that a live process holds."""
    prefix = f".{store.name}.benzarr-ingest-part-"
    found = []
    try:
        names = sorted(name for name in os.listdir(store.parent) if name.startswith(prefix) and name.endswith(".lock"))
    except OSError:
        return []
    for name in names:
        holder = held_by(store.parent / name)
        if holder is not None:
            found.append((name[len(prefix):-len(".lock")].replace("-of-", "/"), holder))
    return found


def held_by(path: Path) -> str | None:
    """``pid N on HOST`` when a live process holds the lock file ``path`` exclusively (a running
    ingest, a running train), else None: a message can then say "wait for it", not "run it again"."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def ingest_running(store: str | Path) -> str | None:
    """Who is ingesting ``store`` now (``pid N on HOST``, ``--part I/N, pid ...``), or None; a
    local store only."""
    if "://" in str(store):
        return None
    holder = held_by(lock_path(store))
    if holder is not None:
        return holder
    parts = _live_part_holders(Path(store).resolve())
    return f"--part {parts[0][0]}, {parts[0][1]}" if parts else None


def run_lock_path(run_dir: str | Path) -> Path:
    """The train lock file of the run folder ``run_dir``, inside it (a run needs write access
    to its folder only, not to the folder above: ``--out $HOME`` works).

    The path is resolved (symlinks, ``..``), so every spelling of one folder has one lock."""
    return Path(run_dir).resolve() / ".benzarr-train.lock"


#: What ``flock`` raises on a file system that has none: NFSv3 without a lock daemon (ENOLCK),
#: Lustre mounted without ``-o flock`` (ENOSYS), some FUSE and SMB mounts (EOPNOTSUPP, EINVAL).
#: There the lock is not taken and the command runs unlocked, as it would without benzarr's locks.
NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})


class _Lock:
    def __init__(self, path: Path, exclusive: bool, store: str, what: str = "ingest") -> None:
        self.path = path
        self.exclusive = exclusive
        self.store = store
        self.what = what  # the command the lock is for, in messages
        self.fd = -1
        self.unlocked = False  # the file system has no flock: the file is kept only to be deleted

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        for _ in range(100):  # only repeats when a releasing holder deleted the file under us
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)  # STORE may be a new folder's child
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
            except OSError as exc:  # named by the store: the lock file is benzarr's business
                if exc.errno == errno.ENAMETOOLONG and len(self.path.name.encode()) > 255:
                    # the store's own name fits: "file name too long" named it, not the lock's longer name
                    most = 255 - (len(self.path.name.encode()) - len(Path(self.store).name.encode()))
                    raise FileSystemError(
                        f"{self.store}: its name is too long for the {self.what} lock file benzarr keeps beside it "
                        f"({self.path.name[:24]}...{self.path.name[-24:]}, {len(self.path.name.encode())} bytes; a "
                        f"file name holds at most 255): give the store a name of at most {most} bytes",
                        str(self.path), errno.ENAMETOOLONG) from None
                raise os_error(OSError(exc.errno, exc.strerror), self.store, f"creating its {self.what} lock") from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                if exc.errno in NO_FLOCK:  # a file system without flock: run unlocked, as before,
                    self.fd, self.unlocked = fd, True  # and delete the file we made at release
                    return True
                os.close(fd)
                raise os_error(OSError(exc.errno, exc.strerror), self.store, "locking it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.fd = fd
            if self.exclusive:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return True
        return False

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if not self.exclusive and not self.unlocked:
                # delete the file only if no one else holds it (the shared lock may be lost here:
                # it is being released anyway)
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def ingest_lock(store: str | Path, part: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the ingest lock of ``store`` (and of ``part``) for the ``with`` block.

    Raises:
        StoreLockedError: "another ingest, pid N on HOST, is writing STORE".
        FileSystemError: the lock file cannot be created (read-only folder, ...).
    """
    if "://" in str(store):
        yield
        return
    name = str(store)
    with ExitStack() as stack:
        main = _Lock(lock_path(store), exclusive=part is None, store=name)
        if not main.acquire():
            parts = _live_part_holders(Path(store).resolve())
            if part is None and parts:
                which, holder = parts[0]
                raise StoreLockedError(f"another ingest (--part {which}), {holder}, is writing {name}; "
                                       "wait until the parts finish")
            raise StoreLockedError(f"another ingest, {_holder(main.path)}, is writing {name}; "
                                   "wait for it to finish (or stop it) and run this command again")
        stack.callback(main.release)
        if part is not None:
            mine = _Lock(lock_path(store, part), exclusive=True, store=name)
            if not mine.acquire():
                raise StoreLockedError(f"another ingest of part {part[0]}/{part[1]}, {_holder(mine.path)}, "
                                       f"is writing {name}; wait for it to finish (or stop it) and run this command again")
            stack.callback(mine.release)
        yield


@contextmanager
def finalize_lock(store: str | Path, poll_s: float = 0.05) -> Iterator[None]:
    """Hold the finalisation lock of ``store`` (``.<name>.benzarr-ingest-finalize.lock``) for the
    ``with`` block, waiting while another process holds it.

    The parts of a planned store run side by side, and each that finds every shard done
    finalises the store. Two that finish together must not both: one's sweep of temporary files
    deleted the other's in flight, and both could fail. Under this lock the second finds the
    store complete. URL stores are not locked (object stores have no such lock).

    Raises:
        FileSystemError: the lock file cannot be created (read-only folder, ...).
    """
    if "://" in str(store):
        yield
        return
    lock = _Lock(_beside(store, "ingest-finalize"), exclusive=True, store=str(store))
    while not lock.acquire():
        time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()


#: A thread lock a store, taken before its write lock's flock: threads of one process wait for
#: each other there, and a thread that holds it may take it again (a flock of the same file by
#: a second descriptor of this process would wait for ever).
_THREAD_LOCKS: dict[Path, threading.RLock] = {}
#: How deep each store's holder (one thread, under its RLock) has nested write_lock.
_DEPTH: dict[Path, int] = {}
_REGISTRY_LOCK = threading.Lock()


@contextmanager
def write_lock(store: str | Path, poll_s: float = 0.01) -> Iterator[None]:
    """Hold the metadata write lock of ``store`` (``.<name>.benzarr-write.lock`` beside it) for
    the ``with`` block, waiting while another process or thread holds it: a split written,
    renamed into place or deleted, and a read-merge-write of the root attributes. Two ``split``
    runs (on two machines of a shared file system too) then never delete each other's folders
    in flight or both "create" one name, and two attribute writes never drop each other's keys.

    Re-entrant in the thread that holds it. URL stores are not locked; where the lock file
    cannot be made (the store's parent folder read-only) or the file system has no ``flock``,
    the block runs unlocked between processes, as before.
    """
    if "://" in str(store):
        yield
        return
    resolved = Path(store).resolve()
    with _REGISTRY_LOCK:
        in_process = _THREAD_LOCKS.setdefault(resolved, threading.RLock())
    with in_process:
        depth = _DEPTH.get(resolved, 0)
        lock: _Lock | None = None
        if depth == 0:
            lock = _Lock(_beside(resolved, "write"), exclusive=True, store=str(store), what="write")
            try:
                while not lock.acquire():
                    time.sleep(poll_s)
            except FileSystemError:  # no lock file here: the writes are what they were without one
                lock = None
        _DEPTH[resolved] = depth + 1
        try:
            yield
        finally:
            _DEPTH[resolved] = depth
            if lock is not None:
                lock.release()


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the train lock of the run folder ``run_dir`` for the ``with`` block (exclusive).

    Creates ``run_dir`` and the hidden lock file in it (deleted when the block ends, and the
    folder too if this made it and nothing else was written there: a run that fails before
    writing leaves nothing; no reader of run folders looks at the lock). A killed holder's
    lock is taken over, as an ingest's is.

    Raises:
        RunLockedError: "another train, pid N on HOST, is writing RUNDIR".
        FileSystemError: the lock file cannot be created (read-only folder, ...).
    """
    name = str(run_dir)
    lock = _Lock(run_lock_path(run_dir), exclusive=True, store=name, what="train")
    made = not lock.path.parent.exists()
    if not lock.acquire():
        raise RunLockedError(f"another train, {_holder(lock.path)}, is writing the run folder {name}; "
                             "wait for it to finish (or stop it), or give this run another --out")
    try:
        yield
    finally:
        lock.release()
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote there, and it stays
                lock.path.parent.rmdir()
