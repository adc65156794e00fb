"""Every exception benzarr raises on purpose.

The library never prints and never exits; it raises one of these. The CLI maps each to one
error line and an exit code (``BenzarrError.exit_code``). Messages name the file, patch or
store and, where there is one, the fix.
"""

from __future__ import annotations


class BenzarrError(Exception):
    """Base class of benzarr's errors; the CLI exits with ``exit_code``."""

    exit_code: int = 1


class ArchiveNotFoundError(BenzarrError):
    """The archive folder does not exist."""


class NotAnArchiveError(BenzarrError):
    """A folder exists but holds no BigEarthNet patch folders."""


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


class StoreNotFoundError(BenzarrError):
    """No benzarr store at the path."""


class StoreExistsError(BenzarrError):
    """A store is already at the path and ``overwrite`` was not given."""


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


class MissingDependencyError(BenzarrError):
    """An optional dependency (an extra) is needed for this call."""


class DownloadRequiredError(BenzarrError):
    """The request needs data or weights from the internet; benzarr never downloads."""


class IngestFailedPatchesError(BenzarrError):
    """The ingest finished but some patches were bad (named in the store); exit code 2."""

    exit_code = 2

    def __init__(self, failed: dict[str, str]) -> None:
        super().__init__(f"{len(failed)} patch(es) could not be ingested")
        self.failed = failed
