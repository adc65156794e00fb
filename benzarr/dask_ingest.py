"""Ingest on a Dask cluster: each shard is one ``dask.distributed`` task.

:func:`dask_runner` returns a shard runner for :func:`benzarr.ingest.ingest` (its ``runner``
argument; ``benzarr ingest ... --scheduler``). The tasks run the same
:func:`benzarr.ingest.ingest_shard` as the process pool, so a shard's work has one
implementation and the store has the same bytes; the driver (this process) keeps everything
else: the store's lock, the done markers it reads to resume, the progress and bad-patch
callbacks as tasks complete, and the final step that merges the per-shard statistics and
staged rows. Workers read the archive and write the store themselves, so both must be at the
same path on every worker (a shared file system) or the store an ``s3://`` URL.

Resuming: a shard counts as done only once its ``done`` marker is written, after all its data,
so killing the driver, a worker or the whole cluster leaves only unfinished shards to redo on
the next run. A task that a dead driver left running on a live worker of the same cluster
keeps writing its shard; the next run waits for such tasks before it submits its own (see
:func:`wait_for_orphans`), so no two tasks write one shard at once.

``distributed`` is imported only here and only when a runner is made (extra ``benzarr[dask]``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from benzarr.errors import BenzarrError, ClusterError, InvalidArgumentError, StoreIncompleteError, missing_extra

#: Scheduler address schemes accepted by ``--scheduler`` besides ``local``.
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
#: Seconds to wait for a scheduler to answer, and for ``workers`` workers to join one.
CONNECT_TIMEOUT = 30.0
WORKERS_TIMEOUT = 300.0
#: Seconds between two looks at tasks a dead driver left running.
ORPHAN_POLL = 0.2
#: Seconds with shards waiting and no worker connected before ``on_wait`` is told (Dask waits
#: for workers for ever, as an adaptive cluster's may come late: the run goes on waiting).
WAIT_NOTICE_S = 30.0

# (store path, shard) of the shard tasks running in this worker process, for wait_for_orphans.
_RUNNING: set[tuple[str, int]] = set()
_RUNNING_LOCK = threading.Lock()


def _distributed() -> Any:
    try:
        import distributed
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("distributed", "dask"):
            raise
        raise missing_extra("distributed", "ingest --scheduler") from None
    return distributed


def check_scheduler(scheduler: str) -> str:
    """``local``, a scheduler address (``tcp://HOST:PORT``, also tls/ws/wss/ucx) or a scheduler
    file (JSON written by ``dask scheduler --scheduler-file``); returns it stripped.

    Raises:
        InvalidArgumentError: anything else.
    """
    text = scheduler.strip()
    if text == "local" or Path(text).is_file():
        return text
    scheme, sep, rest = text.partition("://")
    host, colon, port = rest.rpartition(":")
    if not (sep and scheme in SCHEMES and host and colon and port.isdigit()):
        raise InvalidArgumentError(
            f"--scheduler {scheduler!r}: give 'local', a scheduler address such as tcp://HOST:8786, "
            "or a scheduler file written by `dask scheduler --scheduler-file`"
        )
    return text


class DaskShardRunner:
    """Runs :func:`benzarr.ingest.ingest` 's shard tasks on a Dask cluster (a ``runner``).

    Called with the shard function and one argument tuple per shard (the first is the store
    path, the fifth the shard number), it yields ``(index, result)`` as tasks complete. The
    cluster is reached (or, for ``local``, started) only then, so a plan or an already
    complete store starts nothing.

    Args:
        scheduler: see :func:`check_scheduler`.
        workers: ``local``: worker processes of the ``LocalCluster`` (default: one per core,
            one thread each); an address: wait until this many workers have joined.
        on_wait: called with one message when shards have waited ``wait_notice_s`` seconds
            with no worker connected (again after workers came and went); the run keeps
            waiting, since Dask clusters may add workers late (``benzarr ingest`` prints it).
        wait_notice_s: see ``on_wait``.
    """

    def __init__(self, scheduler: str, workers: int | None = None,
                 on_wait: Callable[[str], None] | None = None, wait_notice_s: float = WAIT_NOTICE_S) -> None:
        self.scheduler = check_scheduler(scheduler)
        self.workers = workers
        self.on_wait = on_wait
        self.wait_notice_s = float(wait_notice_s)
        _distributed()  # a missing extra fails before anything is written

    def _client(self, n_tasks: int) -> AbstractContextManager[Any]:
        distributed = _distributed()

        @contextmanager
        def connect() -> Iterator[Any]:
            if self.scheduler == "local":
                import logging

                n = min(self.workers or os.cpu_count() or 1, max(n_tasks, 1))
                # no dashboard; the scheduler's HTTP routes (health, metrics) on a free port, not 8787
                with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                              dashboard_address=None, silence_logs=logging.ERROR,
                                              scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
                        distributed.Client(cluster) as client:
                    yield client
                return
            where = {"scheduler_file": self.scheduler} if Path(self.scheduler).is_file() else {"address": self.scheduler}
            try:
                client = distributed.Client(**where, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                raise ClusterError(f"--scheduler {self.scheduler}: cannot reach the Dask scheduler ({exc}); "
                                   "run the same command again once it is up (the store is kept)") from None
            with client:
                if self.workers:
                    try:
                        client.wait_for_workers(self.workers, timeout=WORKERS_TIMEOUT)
                    except TimeoutError:
                        have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
                        raise ClusterError(
                            f"--scheduler {self.scheduler}: {have} worker(s) joined in {WORKERS_TIMEOUT:.0f} s, "
                            f"--workers asked for {self.workers}"
                        ) from None
                yield client

        return connect()

    def __call__(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        distributed = _distributed()
        if not calls:
            return
        store_path = calls[0][0]
        run = uuid.uuid4().hex[:8]
        with self._client(len(calls)) as client:
            futures: dict[Any, int] = {}
            try:
                wait_for_orphans(client, store_path)
                for index, args in enumerate(calls):
                    key = f"benzarr-shard-{args[4]}-{run}"
                    futures[client.submit(run_shard, fn, *args, key=key, pure=False)] = index
                for future in self._completed(client, futures):
                    index = futures.pop(future)
                    try:
                        result = future.result()
                    except distributed.KilledWorker:
                        raise StoreIncompleteError(
                            f"{store_path}: Dask workers died running shard {calls[index][4]} "
                            "(each one that tried); finished shards are kept, run the same command again to resume"
                        ) from None
                    yield index, result
            except (distributed.comm.CommClosedError, distributed.client.FutureCancelledError) as exc:
                # the client lost the scheduler (its futures are cancelled when it gives up)
                raise StoreIncompleteError(
                    f"{store_path}: lost the Dask scheduler {self.scheduler} ({exc}); finished shards are kept, "
                    "run the same command again to resume"
                ) from None
            finally:
                if futures:  # an error or a consumer that stopped early: leave nothing queued
                    try:
                        client.cancel(list(futures))
                    except Exception:  # noqa: BLE001 - the scheduler may be gone already
                        pass


    def _completed(self, client: Any, futures: dict[Any, int]) -> Iterator[Any]:
        """The futures of ``futures`` as they finish (the caller pops them), telling
        ``on_wait`` once per stretch of ``wait_notice_s`` seconds with no worker connected."""
        distributed = _distributed()
        poll = max(0.05, min(5.0, self.wait_notice_s / 4))
        idle_since: float | None = None
        told = False
        while futures:
            try:
                done, _ = distributed.wait(list(futures), timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:  # distributed's TimeoutError is the builtin one
                done = set()
            if done:
                idle_since, told = None, False
                yield from sorted(done, key=futures.__getitem__)  # submission order among ties
                continue
            if self.on_wait is None:
                continue
            connected = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            if connected:
                idle_since, told = None, False
            elif idle_since is None:
                idle_since = time.monotonic()
            elif not told and time.monotonic() - idle_since >= self.wait_notice_s:
                told = True
                self.on_wait(f"--scheduler {self.scheduler}: no Dask worker has been connected for "
                             f"{self.wait_notice_s:.0f} s; {len(futures)} shard(s) wait for one (finished shards "
                             "are kept: stop with Ctrl-C and run the same command again later)")


def dask_runner(scheduler: str, workers: int | None = None,
                on_wait: Callable[[str], None] | None = None) -> DaskShardRunner:
    """A ``runner`` for :func:`benzarr.ingest.ingest` on the Dask cluster ``scheduler``
    (``local`` or an address); see :class:`DaskShardRunner`.

    Raises:
        InvalidArgumentError: a malformed scheduler; MissingDependencyError: no ``distributed``.
    """
    return DaskShardRunner(scheduler, workers, on_wait)


def run_shard(fn: Callable[..., Any], *args: Any) -> Any:
    """The task: ``fn(*args)`` in a GDAL environment of this thread, recorded in ``_RUNNING``
    while it runs (``args`` as in :class:`DaskShardRunner`)."""
    import rasterio

    from benzarr.sources import GDAL_ENV

    entry = (args[0], args[4])
    with _RUNNING_LOCK:
        _RUNNING.add(entry)
    try:
        # per task: a worker may run tasks on several threads, and a GDAL environment is per thread
        with rasterio.Env(**GDAL_ENV):
            return fn(*args)
    except BenzarrError as exc:
        # Dask sends the exception back with its chain; a chained rasterio error does not
        # unpickle, which would turn ours into a bare Exception. Its message says it all.
        exc.__context__ = exc.__cause__ = None
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(entry)


def running_shards(store_path: str) -> list[int]:
    """Shards of ``store_path`` whose tasks run in this worker process (run by ``client.run``)."""
    with _RUNNING_LOCK:
        return sorted(shard for path, shard in _RUNNING if path == store_path)


def wait_for_orphans(client: Any, store_path: str, timeout: float | None = None) -> None:
    """Wait until no worker of ``client``'s cluster runs a shard task of ``store_path``: tasks
    that a killed driver left running go on writing their shard, and a shard must not be
    written twice at once. ``timeout`` (seconds, default none) raises ClusterError."""
    started = time.monotonic()
    while True:
        answers = client.run(running_shards, store_path, on_error="return")  # a dying worker answers an error
        busy = {worker: shards for worker, shards in answers.items() if isinstance(shards, list) and shards}
        if not busy:
            return
        if timeout is not None and time.monotonic() - started > timeout:
            listed = "; ".join(f"{w}: {', '.join(map(str, s))}" for w, s in busy.items())
            raise ClusterError(f"{store_path}: shard tasks of an earlier run are still running ({listed})")
        time.sleep(ORPHAN_POLL)
