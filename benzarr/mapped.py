"""Read-only maps of whole files that hold no file descriptor.

Why: Python's ``mmap.mmap`` keeps a duplicate of the file's descriptor for as long as the map
lives (for its ``size()`` and ``resize()``). The shard reader keeps one map per shard file, so
it held one descriptor per shard: a pass over a full BigEarthNet store (about 2,300 shards of
256 patches for each of 3 band groups, 6,900 maps) stopped with "Too many open files" under the
usual soft limit of 1,024, a sixth of the way through its first epoch. Python 3.13 can map
without the duplicate (``trackfd=False``); before it, :func:`map_file` calls libc's ``mmap``
through ctypes and unmaps when the last view of the map is collected, the lifetime Python's
``mmap`` gives its exported buffers.

Where libc's ``mmap`` cannot be found (not Linux or macOS), Python's ``mmap`` is used and
:data:`HOLDS_DESCRIPTOR` is True: :func:`benzarr.shards.map_budget` then keeps the maps under
the open-file limit instead.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref
from typing import Any

import numpy as np


def _libc_calls() -> tuple[Any, Any] | None:
    """libc's ``mmap`` and ``munmap`` with their C signatures, or None where there are none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        map_call, unmap_call = libc.mmap, libc.munmap
    except (OSError, AttributeError, TypeError):
        return None
    map_call.restype = ctypes.c_void_p
    # off_t of the ``mmap`` symbol: a C long on Linux (32 bits on 32-bit Linux, where mmap64 takes
    # the 64-bit one) and 64 bits on macOS, whose long is 64 bits
    map_call.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    unmap_call.restype = ctypes.c_int
    unmap_call.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return map_call, unmap_call


_TRACKFD = sys.version_info >= (3, 13)  # mmap.mmap(..., trackfd=False)
_LIBC = None if _TRACKFD else _libc_calls()
_MAP_FAILED = ctypes.c_void_p(-1).value

#: Whether a map made by :func:`map_file` keeps a file descriptor open while it lives.
HOLDS_DESCRIPTOR = not _TRACKFD and _LIBC is None


def map_file(fd: int, size: int) -> tuple[np.ndarray, Any]:
    """Map the first ``size`` bytes (> 0, the whole file) of the open file ``fd`` read-only.

    Returns:
        ``(data, owner)``: ``data`` a read-only (size,) uint8 array of the map, ``owner`` the
        object that owns it (it supports the buffer protocol: ``struct.unpack_from(owner, i)``,
        ``owner[i:j]`` gives bytes). The map lives while either, or any view of ``data``, does;
        ``fd`` may be closed at once.

    Raises:
        OSError: the map could not be made (the errno of libc's ``mmap``).
    """
    if _TRACKFD:
        owner: Any = mmap.mmap(fd, size, access=mmap.ACCESS_READ, trackfd=False)  # type: ignore[call-arg]
    elif _LIBC is None:
        owner = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    else:
        map_call, unmap_call = _LIBC
        address = map_call(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        owner = (ctypes.c_char * size).from_address(address)
        # unmapped once the owner is collected: numpy's views hold it (their base) until then.
        # Not at exit: an object torn down after this finalizer might still read the map
        weakref.finalize(owner, unmap_call, address, size).atexit = False
    data = np.frombuffer(owner, dtype=np.uint8)
    data.flags.writeable = False  # a write to the PROT_READ pages would be a segmentation fault
    return data, owner
