"""Worker processes that never outlive the process that started them.

Why: ``concurrent.futures.ProcessPoolExecutor`` workers are plain children. When their parent
dies without shutting the pool down (``kill -9``, an out-of-memory kill, a batch scheduler's
``SIGKILL``), they are re-parented to init and go on working: an orphaned ingest worker kept
writing shards after its parent was killed, beside the next run of the same command, which
had taken over the dead parent's lock. Linux can signal a child when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); :func:`exit_with_parent`, a pool's ``initializer``, asks for
that. Elsewhere (macOS) it does nothing, and an orphan finishes its task and exits when it
next finds its pipe to the dead parent closed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


def default_sigterm() -> None:
    """Let ``SIGTERM`` end this (worker) process at once: a forked child inherits the CLI's
    handler, which raises KeyboardInterrupt for the CLI's own clean-up (and a worker would
    print that traceback). Signal handlers belong to the main thread: elsewhere, nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_with_parent() -> None:
    """Have the kernel ``SIGKILL`` this process when its parent process dies (Linux), and
    let ``SIGTERM`` end it at once (the default action).

    Call it first thing in a child (a pool's ``initializer``). The signal is tied to the
    parent *thread* that forked or spawned the child: pools of this package are created and
    fed from the thread that waits for them, which lives as long as the pool. A parent that
    died before the call is caught through its sentinel (``parent_process().is_alive()``).
    """
    default_sigterm()
    if not sys.platform.startswith("linux"):
        return
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: keep the old behaviour
        return
    # a parent that died before the prctl took effect: its sentinel pipe is closed (this holds
    # for fork, spawn and forkserver children alike, whose direct parent may be the forkserver)
    if parent is not None and not parent.is_alive():
        os._exit(1)  # nobody wants this worker's results


@contextmanager
def worker_pool(**options: Any) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor(**options)`` whose workers die with their parent
    (:func:`exit_with_parent`). Left by an exception (Ctrl-C, the CLI's SIGTERM), it cancels
    the tasks not yet started and does not wait for the running ones: ``with
    ProcessPoolExecutor()`` would first run every queued task, so a ``kill PID`` of verify
    waited for the whole store."""
    pool = ProcessPoolExecutor(initializer=exit_with_parent, **options)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
