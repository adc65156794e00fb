"""The time stamps benzarr writes into a store (a split's ``created``, ``verify``'s record).

The same inputs and seed give the same store bytes, except for these stamps. Where byte-identical
stores matter (a store built twice to compare, a checksum published with a paper), set
``SOURCE_DATE_EPOCH`` (seconds since 1970-01-01 UTC, the reproducible-builds convention that
pip, Sphinx and GNU tar honour too): every stamp is then that time.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from benzarr.errors import InvalidArgumentError


def utc_timestamp() -> str:
    """Now in UTC, ISO 8601 to the second (``2026-11-27T17:03:44+00:00``), or
    ``$SOURCE_DATE_EPOCH`` when it is set.

    Raises:
        InvalidArgumentError: ``SOURCE_DATE_EPOCH`` is not a whole number of seconds.
    """
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not fixed:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        seconds = int(fixed)
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        raise InvalidArgumentError(f"SOURCE_DATE_EPOCH must be a whole number of seconds since 1970, "
                                   f"got {fixed!r}; unset it to stamp the current time") from None
