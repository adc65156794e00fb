"""Shared fixtures: the six real BigEarthNet patches and small synthetic archives and stores.

Session-scoped fixtures are built once and must be treated as read-only; tests that modify
an archive or a store copy it first (``copy_tree``).
"""

from __future__ import annotations

import shutil
import tarfile
from importlib import resources
from pathlib import Path

import pytest


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
