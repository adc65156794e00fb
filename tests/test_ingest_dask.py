"""``benzarr ingest --scheduler``: shards as tasks on a real Dask cluster.

A ``dask scheduler`` and two ``dask worker`` processes (one thread each, no dashboard, random
ports on 127.0.0.1) are started for the module; stores are compared file by file, byte for
byte, with a ``--workers 2`` ingest of the same archive, which holds one bad patch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from benzarr.errors import BadPatchError, InvalidArgumentError, MissingDependencyError
from benzarr.ingest import ingest
from benzarr.store import DONE_ARRAY
from tests.conftest import copy_tree
from tests.test_ingest import CLI, _damage, all_arrays, assert_stores_equal, run_cli

distributed = pytest.importorskip("distributed")

from benzarr.dask_ingest import dask_runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARD = "8"  # 64 patches: 8 shards, 8 tasks


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_same_bytes(a: Path, b: Path) -> None:
    files_a, files_b = store_files(a), store_files(b)
    assert sorted(files_a) == sorted(files_b)
    assert [name for name in files_a if files_a[name] != files_b[name]] == []


class Cluster:
    """A scheduler and worker processes of the ``dask`` CLI on 127.0.0.1; ``close`` ends them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        info = folder / "scheduler.json"
        self._start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info)], "scheduler")
        deadline = time.monotonic() + 60
        while not info.is_file() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written in one go, but give it a moment
        self.address = json.loads(info.read_text())["address"]

    def _start(self, command: list[str], log: str) -> subprocess.Popen:
        # PYTHONPATH: workers import this module for _slow_down (client.run pickles it by reference)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.folder / f"{log}.log", "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.processes.append(process)
        return process

    def add_worker(self) -> subprocess.Popen:
        worker = self._start([sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
                              "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"], f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        # workers first, then the scheduler; a test cluster owes nothing to a process that is slow
        # to stop (under a loaded suite one took the whole 10 s), so it is killed after 3 s
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    # not waiting for the workers here: they start while the process-pool reference is written,
    # and `--workers 2` makes the first ingest wait for both
    found = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        for _ in range(2):
            found.add_worker()
        yield found
    finally:
        found.close()


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory: pytest.TempPathFactory, synth_archive_64: Path) -> tuple[Path, str]:
    """The 64-patch archive with one truncated band: (archive, the bad patch's name)."""
    archive = copy_tree(synth_archive_64, tmp_path_factory.mktemp("dask-archive") / "archive")
    name = sorted(p.name for p in archive.iterdir() if p.is_dir())[21]
    _damage(archive, name, "truncated")
    return archive, name


@pytest.fixture(scope="module")
def pool_store(tmp_path_factory: pytest.TempPathFactory, bad_archive: tuple[Path, str]) -> Path:
    """``--workers 2`` (process pool) ingest of ``bad_archive``."""
    archive, name = bad_archive
    store = tmp_path_factory.mktemp("dask-pool") / "pool.zarr"
    done = run_cli("ingest", archive, store, "--shard-size", SHARD, "--workers", "2")
    assert done.returncode == 3, done.stderr
    assert f"bad patch {name}: {name}_B04.tif: unreadable GeoTIFF" in done.stderr
    return store


def test_tcp_cluster_store_equals_process_pool(cluster: Cluster, bad_archive: tuple[Path, str], pool_store: Path,
                                               tmp_path: Path) -> None:
    archive, name = bad_archive
    store = tmp_path / "dask.zarr"
    done = run_cli("ingest", archive, store, "--shard-size", SHARD, "--scheduler", cluster.address, "--workers", "2")
    assert done.returncode == 3, done.stderr  # bad patches: exit 3, named on stderr
    assert f"bad patch {name}: {name}_B04.tif: unreadable GeoTIFF" in done.stderr
    assert "(8 written this run)" in done.stdout and "1 bad" in done.stdout
    assert_same_bytes(store, pool_store)


def test_a_tar_archive_on_the_cluster_gives_the_store_of_its_folder(cluster: Cluster, bad_archive: tuple[Path, str],
                                                                   pool_store: Path, tmp_path: Path) -> None:
    """Dask workers read the shards' files out of the tar with the byte ranges their tasks carry."""
    import tarfile

    archive, name = bad_archive
    tar = tmp_path / "archive.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as out:
        out.add(archive, arcname="BigEarthNet-v1.0")
    store = tmp_path / "tar.zarr"
    done = run_cli("ingest", tar, store, "--shard-size", SHARD, "--scheduler", cluster.address)
    assert done.returncode == 3, done.stderr
    assert f"bad patch {name}: {name}_B04.tif: unreadable GeoTIFF" in done.stderr
    assert_stores_equal(store, pool_store)  # the arrays; zarr.json records another archive path


def test_strict_stops_at_the_bad_patch(cluster: Cluster, bad_archive: tuple[Path, str], tmp_path: Path) -> None:
    archive, name = bad_archive
    with pytest.raises(BadPatchError, match=name) as raised:  # raised on a worker, re-raised here
        ingest(archive, tmp_path / "strict.zarr", shard_size=int(SHARD), strict=True,
               runner=dask_runner(cluster.address, 2))
    assert raised.value.patch == name


def test_workers_write_an_s3_store(cluster: Cluster, s3_server: dict, tmp_path: Path) -> None:
    from benzarr.synth import synth_archive

    archive = tmp_path / "archive16"  # 2 shards: moto is slow
    synth_archive(archive, 16, seed=3, workers=1)
    local = tmp_path / "local.zarr"
    ingest(archive, local, workers=1, shard_size=int(SHARD))
    s3_server["client"].create_bucket(Bucket="dask-ingest")
    url = "s3://dask-ingest/store.zarr"
    result = ingest(archive, url, shard_size=int(SHARD), storage_options=s3_server["options"],
                    runner=dask_runner(cluster.address, 2))
    assert result.complete and result.shards_written == 2
    remote = zarr.open_group(url, mode="r", storage_options=s3_server["options"])
    for array, data in all_arrays(local).items():
        assert np.array_equal(np.asarray(remote[array][:]), data), array


def _slow_down(seconds: float) -> None:
    """On a worker: make benzarr.ingest.ingest_shard (which the driver's tasks name) sleep first."""
    import benzarr.ingest as module

    original = getattr(module.ingest_shard, "original", module.ingest_shard)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    slow.original = original
    module.ingest_shard = slow


def _done(store: Path) -> np.ndarray:
    try:
        return np.asarray(zarr.open_array(str(store / DONE_ARRAY), mode="r")[:], dtype=bool)
    except Exception:  # noqa: BLE001 - not created yet, or being written
        return np.zeros(0, dtype=bool)


def test_killed_client_and_worker_then_rerun_gives_same_store(cluster: Cluster, bad_archive: tuple[Path, str],
                                                              pool_store: Path, tmp_path: Path) -> None:
    archive, name = bad_archive
    store = tmp_path / "killed.zarr"
    with distributed.Client(cluster.address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        client.run(_slow_down, 0.3)
    command = [*CLI, "ingest", str(archive), str(store), "--shard-size", SHARD, "--scheduler", cluster.address,
               "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _done(store).sum() < 1:
            assert driver.poll() is None and time.monotonic() < deadline, "no shard finished"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    victim = cluster.workers[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not _done(store).all()  # killed mid-run
    cluster.add_worker()  # a fresh machine joins; the other worker is still slowed down
    # the rerun in this process (the CLI's own path is the first test's)
    rerun = ingest(archive, store, shard_size=int(SHARD), runner=dask_runner(cluster.address, 2))
    assert rerun.resumed and 0 < rerun.shards_written < 8 and list(rerun.failed) == [name]
    assert_same_bytes(store, pool_store)


def test_local_cluster_with_progress(bad_archive: tuple[Path, str], pool_store: Path, tmp_path: Path) -> None:
    archive, name = bad_archive
    progress: list[int] = []
    bad: list[str] = []
    result = ingest(archive, tmp_path / "local.zarr", shard_size=int(SHARD), runner=dask_runner("local", 1),
                    on_progress=progress.append, on_bad_patch=lambda patch, reason: bad.append(patch))
    assert progress == [8] * 8  # one call per completed task
    assert bad == [name] and list(result.failed) == [name]
    assert_same_bytes(tmp_path / "local.zarr", pool_store)


def test_scheduler_argument_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgumentError, match="tcp://HOST:8786"):
        dask_runner("127.0.0.1:8786")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'benzarr\[dask\]'"):
        dask_runner("local")


def test_shards_waiting_without_workers_are_reported_and_finish_when_one_joins(
        synth_archive_64: Path, tmp_path: Path) -> None:
    """Dask waits for workers for ever (they may join late): the runner says so once, then the
    ingest finishes on the worker that joins."""
    import threading

    from benzarr.dask_ingest import DaskShardRunner

    (tmp_path / "cluster").mkdir()
    lonely = Cluster(tmp_path / "cluster")  # a scheduler, no worker yet
    try:
        notices: list[str] = []
        runner = DaskShardRunner(lonely.address, on_wait=notices.append, wait_notice_s=1.0)
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = ingest(synth_archive_64, tmp_path / "s.zarr", shard_size=int(SHARD), runner=runner)
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        driver = threading.Thread(target=run, daemon=True)
        driver.start()
        deadline = time.monotonic() + 60
        while not notices and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(notices) == 1, notices
        assert "no Dask worker has been connected for 1 s; 8 shard(s) wait" in notices[0]
        assert "run the same command again later" in notices[0]
        lonely.add_worker()
        driver.join(120)
        assert not driver.is_alive() and "error" not in outcome, outcome
        assert outcome["result"].shards_written == 8 and len(notices) == 1
    finally:
        lonely.close()
