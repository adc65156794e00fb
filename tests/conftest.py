"""Shared fixtures: the six real BigEarthNet patches and small synthetic archives and stores.

Session-scoped fixtures are built once and must be treated as read-only; tests that modify
an archive or a store copy it first (``copy_tree``).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from importlib import resources
from collections.abc import Iterator
from pathlib import Path

import pytest

# One intra-op thread in every test process and in every process a test starts (they inherit the
# environment), set before torch is imported. pytest-xdist runs a worker a core, and each worker
# and its CLI subprocesses would otherwise start one OpenMP thread a core too: on 2 cores, 2-4
# threads a core, whose spin-waits burned a quarter of test_train.py's and test_evaluate.py's CPU
# time (118 s of user time against 85 s, 71 s of wall time against 55 s) and took the whole run
# from about 300 s to 280-290 s. The tests
# about thread counts set theirs explicitly (test_train, test_augment_resample); a developer's
# own OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The suite's temporary files peak at about 0.65 GB (passing tests' folders are removed as they
# end: tmp_path_retention_policy in pyproject.toml). With less free space, hundreds of tests
# would fail on ENOSPC one by one; one line says why instead.
NEEDED_FREE_BYTES = 1_500_000_000


def pytest_sessionstart(session: pytest.Session) -> None:
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < NEEDED_FREE_BYTES:
        pytest.exit(f"only {free / 1e9:.2f} GB free in {folder} (TMPDIR); the tests need "
                    f"{NEEDED_FREE_BYTES / 1e9:.1f} GB", returncode=3)


#: ``benzarr`` as a new process runs it (tests of signals, pipes and tracebacks start one).
CLI = [sys.executable, "-m", "benzarr_cli"]

# Python's own warning filters (what a fresh ``benzarr`` process starts with), in the order
# warnings.filters lists them: the CLI's warnings on stderr must be the ones a user sees, not
# pytest's "always" for DeprecationWarning.
_PROCESS_WARNING_FILTERS = (("ignore", ResourceWarning), ("ignore", ImportWarning),
                            ("ignore", PendingDeprecationWarning), ("ignore", DeprecationWarning))


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """``benzarr ARGS`` through its console entry point (``benzarr_cli.main.main``), in this
    process: the same exit code, stdout and stderr as ``python -m benzarr_cli ARGS`` with both
    streams piped, without a new interpreter's ~0.7 s of start-up and imports (about 90 calls
    in the suite). ``main`` puts back what it changes in the process (tests/test_safety.py
    checks it); this puts back ``sys.argv`` and the warning filters."""
    from benzarr_cli.main import main

    argv, out, err = ["benzarr", *map(str, args)], io.StringIO(), io.StringIO()
    saved_argv, code = sys.argv, 0
    try:
        sys.argv = argv
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category in _PROCESS_WARNING_FILTERS:
                warnings.simplefilter(action, category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = saved_argv
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed on stderr, status 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a folder (an archive or a store) so a test can modify it."""
    shutil.copytree(source, target)
    return target


def _extract_example(tmp_root: Path, member: str) -> Path:
    # bigearthnet-common ships the examples as package data; read them with
    # importlib.resources instead of importing its modules (old dependencies).
    data = resources.files("bigearthnet_common").joinpath(member)
    with resources.as_file(data) as path, tarfile.open(path, "r:bz2") as tar:
        tar.extractall(tmp_root, filter="data")
    return tmp_root / member.removesuffix(".tar.bz2")


@pytest.fixture(scope="session")
def real_s2_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six real S2 patches of bigearthnet-common, as a v1.0 archive folder (read-only)."""
    return _extract_example(tmp_path_factory.mktemp("real-s2"), "BigEarthNet-S2-Example.tar.bz2")


@pytest.fixture(scope="session")
def real_s1_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six real S1 patches of bigearthnet-common (read-only)."""
    return _extract_example(tmp_path_factory.mktemp("real-s1"), "BigEarthNet-S1-Example.tar.bz2")


@pytest.fixture(scope="session")
def synth_archive_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-patch synthetic archive, seed 0 (read-only)."""
    from benzarr.synth import synth_archive

    out = tmp_path_factory.mktemp("synth64") / "archive"
    synth_archive(out, 64, seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def synth_store_64(tmp_path_factory: pytest.TempPathFactory, synth_archive_64: Path) -> Path:
    """The 64-patch synthetic archive ingested with shard size 16, lz4 (read-only)."""
    from benzarr.ingest import ingest

    store = tmp_path_factory.mktemp("store64") / "store.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=16, compression="lz4")
    return store


@pytest.fixture(scope="session")
def real_v1_root(tmp_path_factory: pytest.TempPathFactory, real_s2_archive: Path, real_s1_archive: Path) -> Path:
    """The six real S2 patches and their six S1 patches as the v1 downloads unpack (read-only)."""
    root = tmp_path_factory.mktemp("real-v1") / "download"
    shutil.copytree(real_s2_archive, root / "BigEarthNet-v1.0")
    shutil.copytree(real_s1_archive, root / "BigEarthNet-S1-v1.0")
    return root


@pytest.fixture(scope="session")
def s3_server() -> "Iterator[dict]":
    """A moto S3 server on 127.0.0.1 (no internet): {"endpoint", "options", "client"}."""
    import socket

    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        options = {"key": "testing", "secret": "testing", "anon": False,
                   "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield {"endpoint": endpoint, "options": options, "client": client}
    finally:
        server.stop()


@pytest.fixture(scope="session")
def synth_v2_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48-patch synthetic v2.0 archive with S1 and reference maps, seed 0 (read-only)."""
    from benzarr.synth import synth_archive_v2

    out = tmp_path_factory.mktemp("synth-v2") / "reBEN"
    synth_archive_v2(out, 48, seed=0, s1=True, reference_maps=True, workers=1)
    return out


@pytest.fixture(scope="session")
def synth_v2_store(tmp_path_factory: pytest.TempPathFactory, synth_v2_archive: Path) -> Path:
    """``synth_v2_archive`` ingested with every modality, shard size 16 (read-only)."""
    from benzarr.ingest import ingest

    store = tmp_path_factory.mktemp("store-v2") / "store.zarr"
    ingest(synth_v2_archive, store, workers=1, shard_size=16)
    return store
