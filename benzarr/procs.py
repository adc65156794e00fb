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


@contextmanager
def children_start_deaf() -> Iterator[None]:
    """Block Ctrl-C (SIGINT) in this thread while it starts worker processes.

    A child inherits the blocked mask through fork and exec, so a Ctrl-C during its start-up
    waits, blocked, until :func:`ignore_interrupts` (first thing in the child) discards it;
    before, it raised KeyboardInterrupt in every starting worker, which printed a traceback
    each. This process's own Ctrl-C is not lost: it is delivered when the block ends (or at
    once, through another thread of this process).
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_interrupts() -> None:
    """In a worker process: ignore Ctrl-C, which a terminal sends to the whole process group.

    The parent handles it and stops its workers (closing their pipes, or SIGTERM). A worker
    that raised KeyboardInterrupt itself printed a traceback, and one that died holding its
    pool's task-queue lock left the others blocked on it, so that the parent's exit waited
    for them for ever. Signal handlers belong to the main thread: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started under children_start_deaf: a held Ctrl-C is now dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """End ``pool`` now, from a parent that was interrupted or failed: end the workers with
    SIGTERM (their default action, :func:`default_sigterm`) instead of waiting for the running
    tasks, which ignore Ctrl-C (:func:`ignore_interrupts`): an ingest shard takes seconds. What
    a worker was writing is left as a kill leaves it, which resuming handles (shards are
    written whole or not at all)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's
    if not processes:
        pool.shutdown(wait=False, cancel_futures=True)
        return
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5.0)
    # then the pool's own thread finds its workers gone, fails the tasks left (none is
    # cancelled first: Python 3.11's pool raised InvalidStateError on a cancelled one there)
    # and ends, and the queues are closed: left open, their semaphores were "leaked
    # semaphore objects" to the resource tracker at exit
    pool.shutdown(wait=True)


def exit_with_parent() -> None:
    """Have the kernel ``SIGKILL`` this process when its parent process dies (Linux), let
    ``SIGTERM`` end it at once (the default action), and ignore Ctrl-C (:func:`ignore_interrupts`).

    Call it first thing in a child (a pool's ``initializer``). The signal is tied to the
    parent *thread* that forked or spawned the child: pools of this package are created and
    fed from the thread that waits for them, which lives as long as the pool. A parent that
    died before the call is caught through its sentinel (``parent_process().is_alive()``).
    """
    default_sigterm()
    ignore_interrupts()
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


class _Pool(ProcessPoolExecutor):
    """A process pool whose workers start deaf to Ctrl-C (:func:`children_start_deaf`): a
    spawn pool starts its workers as the first tasks are submitted."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with children_start_deaf():
            return super().submit(fn, *args, **kwargs)


def _start_worker(then: Any = None) -> None:
    """A pool worker's initializer: :func:`exit_with_parent`, a Blosc lock of this process's
    own, then ``then()`` if given.

    numcodecs' Blosc guards its global context with a ``multiprocessing.Lock`` that it makes
    at the first call: a named semaphore that a worker ended by :func:`stop_workers` never
    unregisters, so after the one error line of a Ctrl-C the resource tracker warned of
    "leaked semaphore objects" (numcodecs issue #230). The context it guards is this
    process's alone, and the pool's workers start fresh (spawn), so a thread lock does the
    same job. (Set only where numcodecs still has these names and has made no lock yet.)"""
    exit_with_parent()
    thread_blosc_lock()
    if then is not None:
        then()


def thread_blosc_lock(worker_id: int | None = None) -> None:
    """Give numcodecs' Blosc a ``threading.Lock`` in a fresh (spawned) worker, before its first
    call makes a named semaphore (:func:`_start_worker` says why); also a DataLoader
    ``worker_init_fn`` (``worker_id`` unused). Does nothing once a lock exists or where
    numcodecs lacks these names."""
    import numcodecs.blosc

    if getattr(numcodecs.blosc, "_MUTEX_IS_INIT", None) is False:
        numcodecs.blosc._MUTEX = threading.Lock()
        numcodecs.blosc._MUTEX_IS_INIT = True


@contextmanager
def worker_pool(*, then: Any = None, **options: Any) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor(**options)`` whose workers die with their parent and ignore
    Ctrl-C, which the parent handles (:func:`exit_with_parent`); each then runs ``then()``
    (a module-level function: a spawned worker unpickles it). Left by an exception (Ctrl-C,
    the CLI's SIGTERM), it ends the workers, running tasks and all (:func:`stop_workers`): ``with ProcessPoolExecutor()`` would first run every queued task,
    so a ``kill PID`` of verify waited for the whole store."""
    pool = _Pool(initializer=_start_worker, initargs=(then,), **options)
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)
