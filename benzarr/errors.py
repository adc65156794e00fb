"""Every exception benzarr raises on purpose.

The library never prints and never exits; it raises one of these. The CLI maps each to one
error line and an exit code (``BenzarrError.exit_code``: 1, or 3 for bad patches; 2 is left
to the command line's usage errors). Messages name the file, patch or
store and, where there is one, the fix.

A setting is named in messages by its command-line flag, which maps one to one onto the
Python keyword (``--batch-size`` is ``batch_size=``, ``--overwrite`` is ``overwrite=True``):
one wording for both ways in, since the same check serves both.
"""

from __future__ import annotations

from collections.abc import Sequence


class BenzarrError(Exception):
    """Base class of benzarr's errors; the CLI exits with ``exit_code``."""

    exit_code: int = 1


class ArchiveNotFoundError(BenzarrError):
    """The archive folder does not exist."""


class NotAnArchiveError(BenzarrError):
    """A folder exists but holds no BigEarthNet patch folders."""


class ArchiveChangedError(BenzarrError):
    """A tar file of the archive was replaced or rewritten after benzarr indexed it: its
    recorded byte ranges no longer hold its members, so nothing more is read from it."""


class BadPatchError(BenzarrError):
    """One patch cannot be read: a band is missing, truncated, of the wrong shape or dtype,
    or its JSON is missing, malformed or names an unknown label.

    Attributes:
        patch: the patch name.
        reason: what is wrong, naming the file.
    """

    def __init__(self, patch: str, reason: str) -> None:
        super().__init__(f"{patch}: {reason}")
        self.patch = patch
        self.reason = reason

    def __reduce__(self) -> tuple:  # survives the trip back from an ingest worker process
        return (type(self), (self.patch, self.reason))


class StoreNotFoundError(BenzarrError):
    """No benzarr store at the path."""


class StoreChangedError(StoreNotFoundError):
    """The store an open dataset, loader or ``Store`` read from was replaced at its path
    (``ingest --overwrite``, another store moved there) or removed since it was opened: what
    was opened is no longer there, so nothing more is read from or written to it. Open it
    again. Exit code 1, as its parent's."""


class StoreExistsError(BenzarrError):
    """A store is already at the path and ``overwrite`` was not given."""


class UnsafeOverwriteError(BenzarrError):
    """``overwrite`` was asked for a path that holds something benzarr did not write there
    (user files, an archive, another program's Zarr store): nothing is deleted."""


class PathConflictError(BenzarrError):
    """Two paths of one command overlap: STORE is ARCHIVE, inside it, or holds it; or an
    output folder (``--out``) is a store or an archive, or lies inside one."""


class StoreLockedError(BenzarrError):
    """Another ingest holds the store's (or the part's) lock; the message names its pid and host."""


class RunLockedError(BenzarrError):
    """Another training run holds the run folder's lock; the message names its pid and host."""


class FileSystemError(BenzarrError):
    """The operating system refused a read or write: full disk, read-only file system, a file
    where a folder belongs, a symlink loop, no permission. The message names the path, the
    cause and what to do.

    Attributes:
        path: the file or folder concerned ("" if unknown).
        errno: the OS error number (None if unknown).
    """

    def __init__(self, message: str, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.path, self.errno))


class ObjectStoreError(BenzarrError):
    """A request to object storage (S3, GCS, Azure, HTTP) failed after the client's retries:
    network, permission, throttling. The message names the object's URL and the cause, never
    a credential."""


class StoreIncompleteError(BenzarrError):
    """The store's ingest has not finished; readers refuse it."""


class StoreParametersError(BenzarrError):
    """An incomplete store was started with other ingest parameters than the ones given."""


class StoreVersionError(BenzarrError):
    """The store was written by a newer format version than this benzarr reads."""


class StoreCorruptError(BenzarrError):
    """Bytes in the store do not decode or fail their checksum."""


class StoreVerifyError(StoreCorruptError):
    """``benzarr verify`` found corrupt chunks, indexes or metadata (listed before it); exit code 4."""

    exit_code = 4


class SplitNotFoundError(BenzarrError):
    """A split name that is not in the store; the message lists the names that are."""


class SplitExistsError(BenzarrError):
    """A split of that name exists and ``overwrite`` was not given."""


class InvalidArgumentError(BenzarrError):
    """An argument has a value benzarr cannot use (unknown band, bad fractions, ...)."""


class ClusterError(BenzarrError):
    """The Dask cluster of ``ingest --scheduler`` cannot be reached or has too few workers."""


class MissingDependencyError(BenzarrError):
    """An optional dependency (an extra) is needed for this call: see :func:`missing_extra`."""


#: Packages of the optional extras (``pip install 'benzarr[<extra>]'``), by import name.
EXTRAS: dict[str, str] = {
    "torch": "train", "torchvision": "train", "tensorboard": "train", "tbparse": "train",
    "h5py": "bench", "lmdb": "bench", "safetensors": "bench", "tfrecord": "bench", "tensorstore": "bench",
    "moto": "test", "s3fs": "test", "bigearthnet_common": "examples", "codecarbon": "emissions",
    "lightning": "lightning", "distributed": "dask", "obstore": "s3",
}


def some_of(items: Sequence[str], most: int = 3) -> str:
    """``"a, b, c and 7 more"``: the first ``most`` of ``items`` for a message, and how many
    were left out (the one way benzarr's messages shorten a list)."""
    shown = ", ".join(str(item) for item in items[:most])
    return shown + (f" and {len(items) - most:,} more" if len(items) > most else "")


def missing_extra(package: str, needed_by: str = "this command") -> MissingDependencyError:
    """The one error for a missing optional package (raise it):
    ``<needed_by> needs <package>, which comes with an extra: pip install 'benzarr[<extra>]'``.

    ``package`` is the import name (a dotted name counts by its first part), a key of ``EXTRAS``.
    """
    extra = EXTRAS[package.split(".")[0]]
    return MissingDependencyError(f"{needed_by} needs {package}, which comes with an extra: "
                                  f"pip install 'benzarr[{extra}]'")


class DownloadRequiredError(BenzarrError):
    """The request needs data or weights from the internet; benzarr never downloads."""


class IngestFailedPatchesError(BenzarrError):
    """The ingest finished but some patches were bad (named in the store); exit code 3
    (2 is the command line's usage error)."""

    exit_code = 3

    def __init__(self, failed: dict[str, str]) -> None:
        super().__init__(f"{len(failed)} patch(es) could not be ingested")
        self.failed = failed


class LoaderWorkerError(BenzarrError):
    """A loader worker process died (killed, out of memory) or the batch ring cannot go on."""


class PeerRankError(BenzarrError):
    """Another rank of a multi-process run failed where it worked alone (rank 0 refused the run
    folder's lock, say): this rank stops too rather than wait for it (:mod:`benzarr.ranks`)."""
