"""Data safety (issue 9 §1, §3, §4, §5): --overwrite deletes only benzarr's own folders, every
failure is one line with nothing left behind, one ingest per store at a time, names and inputs
are validated.

Disk-full and read-only cases run on a real tmpfs when this machine lets the test mount one
(root in a container usually can); otherwise they are skipped and the simulated-ENOSPC test
still covers the error line and the temporary-file cleanup.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

from benzarr.archive import discover_patches, open_archive
from benzarr.bigearthnet import is_patch_name, is_s1_name, is_v2_patch_name
from benzarr.errors import (
    FileSystemError,
    InvalidArgumentError,
    NotAnArchiveError,
    PathConflictError,
    StoreExistsError,
    StoreLockedError,
    UnsafeOverwriteError,
)
from benzarr.fsutil import ASIDE_TAG, check_outside_datasets, foreign_files, is_benzarr_store, remove_folder
from benzarr.ingest import ingest
from benzarr.lock import ingest_lock, lock_path
from benzarr.store import open_store
from tests.conftest import copy_tree
from tests.test_ingest import CLI, all_arrays, assert_stores_equal, run_cli


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI failed with exit 1 and exactly one ``error:`` line holding every needle."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- §1 --overwrite never deletes what benzarr did not write -------------------------------


@pytest.mark.parametrize("what", ["user-files", "archive", "foreign-zarr"])
def test_overwrite_refuses_a_folder_that_is_not_a_benzarr_store(what: str, synth_archive_64: Path,
                                                                  tmp_path: Path) -> None:
    target = tmp_path / "target"
    if what == "user-files":
        (target / "thesis").mkdir(parents=True)
        (target / "thesis" / "chapter1.tex").write_text("years of work")
    elif what == "archive":
        copy_tree(synth_archive_64, target)
    else:
        target.mkdir()
        (target / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    before = tree(target)
    result = run_cli("ingest", synth_archive_64, target, "--overwrite", "--workers", "1")
    line = one_error_line(result, str(target), "nothing was deleted")
    assert {"user-files": "thesis", "archive": "BigEarthNet v1 archive", "foreign-zarr": "Zarr store"}[what] in line
    assert tree(target) == before
    without = run_cli("ingest", synth_archive_64, target, "--workers", "1")
    one_error_line(without, str(target))
    with pytest.raises(UnsafeOverwriteError):
        ingest(synth_archive_64, target, workers=1, overwrite=True)
    assert tree(target) == before


@pytest.mark.parametrize("where", ["equal", "inside", "holding"])
def test_store_that_is_in_or_holds_the_archive_is_refused_before_writing(where: str, synth_archive_64: Path,
                                                                         tmp_path: Path) -> None:
    archive = copy_tree(synth_archive_64, tmp_path / "data" / "archive")
    store = {"equal": archive, "inside": archive / "store.zarr", "holding": tmp_path / "data"}[where]
    before = tree(tmp_path / "data")
    for extra in ([], ["--overwrite"]):
        result = run_cli("ingest", archive, store, "--workers", "1", *extra)
        one_error_line(result, "the archive")
        assert tree(tmp_path / "data") == before
    with pytest.raises(PathConflictError):
        ingest(archive, store, workers=1, overwrite=True)


def test_an_output_folder_in_a_store_or_an_archive_is_refused(synth_store_64: Path, synth_archive_64: Path,
                                                             tmp_path: Path) -> None:
    """``train --out s.zarr/splits/st`` used to write checkpoints into the store: every --out
    (train's, evaluate's, report's) is refused in a store or an archive, but not beside one: the
    folder that holds an unpacked download is where the README's study keeps its runs."""
    v1_download = tmp_path / "download"  # as `benzarr examples` unpacks: OUT/BigEarthNet-v1.0/<patches>
    patch = v1_download / "BigEarthNet-v1.0" / "S2A_MSIL2A_20170613T101031_0_45"
    patch.mkdir(parents=True)
    v2_download = tmp_path / "reben"
    tile = v2_download / "BigEarthNet-S2" / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    (tile / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57").mkdir(parents=True)
    (v2_download / "metadata.parquet").write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(synth_store_64)
    for path, found in ((synth_store_64, f"is the benzarr store {synth_store_64}"),
                        (synth_store_64 / "splits" / "x", f"lies inside the benzarr store {synth_store_64}"),
                        (link / "runs" / "a", f"lies inside the benzarr store {synth_store_64}"),
                        (synth_archive_64 / "runs" / "a", f"lies inside the synthetic archive {synth_archive_64}"),
                        (v1_download / "BigEarthNet-v1.0" / "r",
                         f"lies inside the archive folder {patch.parent} (it holds patch folders such as {patch.name})"),
                        (tile / "r", f"lies inside the archive folder {tile} (it holds patch folders such as")):
        with pytest.raises(PathConflictError, match=re.escape(f"{path}: --out {found}")):
            check_outside_datasets(path)
    with pytest.raises(PathConflictError, match=re.escape("--predictions is the benzarr store")):
        check_outside_datasets(synth_store_64, "--predictions", "the predictions")
    for path in (tmp_path / "runs" / "a", tmp_path, synth_store_64.parent / "runs", "s3://bucket/runs/a",
                 v1_download / "runs", v2_download / "runs", v2_download / "report"):
        check_outside_datasets(path)  # beside a store or an archive is fine


def test_overwrite_replaces_a_benzarr_store_complete_or_not(synth_archive_64: Path, synth_store_64: Path,
                                                            tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=32)
    open_store(store, mode="r+").update_attrs(complete=False)
    result = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert all_arrays(store).keys() == all_arrays(synth_store_64).keys()
    assert not list(tmp_path.glob(f".*{ASIDE_TAG}*")) and not list(tmp_path.glob(".*.lock"))


@pytest.mark.parametrize("where", ["MYNOTES.txt", "labels/notes.md"])
def test_overwrite_keeps_a_store_that_holds_a_users_files(synth_archive_64: Path, synth_store_64: Path,
                                                          tmp_path: Path, where: str) -> None:
    """A user's notes inside a store were deleted with it by `ingest --overwrite`."""
    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    (store / where).write_text("my notes")
    before = tree(store)
    result = run_cli("ingest", synth_archive_64, store, "--compression", "zstd", "--workers", "1", "--overwrite")
    one_error_line(result, str(store), where, "benzarr did not write", "nothing was deleted")
    assert tree(store) == before


@pytest.mark.parametrize("where", ["s2/10m/c/notes.txt", "labels/clc43/c/notes.txt", "splits/strat/c/notes.txt",
                                   "s2/10m/c/0/notes", "meta/valid/c/0.bak", "s2/10m/c/mine/", "mylink", "s2/60m/c/9"])
def test_overwrite_keeps_a_store_with_a_users_file_among_its_chunks_or_a_link(synth_archive_64: Path, synth_store_64: Path,
                                                                              tmp_path: Path, where: str) -> None:
    """Every file below an array's c/ folder passed as a chunk, so `ingest --overwrite` (and
    `split --overwrite`) deleted a user's notes there, and any symlink a user had put in a
    store (a link to their thesis, say) went with it unreported. Chunk files are named by their
    coordinates alone, and no Zarr writer makes a link."""
    from benzarr.split import make_split

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "strat", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    (tmp_path / "thesis").mkdir()
    if where in ("mylink", "s2/60m/c/9"):
        (store / where).symlink_to(tmp_path / "thesis")
    elif where.endswith("/"):
        (store / where).mkdir()
    else:
        (store / where).parent.mkdir(exist_ok=True)
        (store / where).write_text("mine")
    before = tree(store)
    with pytest.raises(UnsafeOverwriteError, match=re.escape(f"holds files that benzarr did not write ({where})")):
        ingest(synth_archive_64, store, workers=1, overwrite=True)
    assert tree(store) == before and os.path.lexists(store / where)


@pytest.mark.parametrize("where, named", [
    ("my_annotations", "my_annotations/c/0, my_annotations/zarr.json"),
    ("labels/my_annotations", "labels/my_annotations/c/0, labels/my_annotations/zarr.json"),
    ("mydata/zarr.json", "mydata/zarr.json"), ("s2/10m/c/99/0/0/0", "s2/10m/c/99/0/0/0"),
    ("s2/10m/c/3/0/0/1", "s2/10m/c/3/0/0/1"), ("labels/clc43/c/1/0", "labels/clc43/c/1/0"),
    ("ingest/done/c/4", "ingest/done/c/4"), ("splits/strat/c/7", "splits/strat/c/7"), ("s2/mine/c/0", "s2/mine/c/0"),
])
def test_overwrite_keeps_a_users_arrays_and_chunk_named_files_outside_the_layout(
        synth_archive_64: Path, synth_store_64: Path, tmp_path: Path, where: str, named: str) -> None:
    """Every zarr.json, and every digit-named file below any c/, passed as benzarr's: a user's
    own array in the store (or a group of theirs holding only its zarr.json), and a file named
    like a chunk outside an array's grid (shard 99 of a 4-shard array), went with `ingest
    --overwrite`. Now only the arrays benzarr lays out, and the chunks of their grids, pass."""
    import zarr

    from benzarr.split import make_split

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "strat", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    if where.endswith("my_annotations"):
        array = zarr.open_group(store, mode="r+").create_array(where, shape=(64,), dtype="f4", chunks=(64,))
        array[:] = 1
    elif where == "mydata/zarr.json":
        zarr.open_group(store / "mydata", mode="w", zarr_format=3)
    else:
        (store / where).parent.mkdir(parents=True, exist_ok=True)
        (store / where).write_bytes(b"mine")
    before = tree(store)
    result = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1", "--overwrite")
    one_error_line(result, f"holds files that benzarr did not write ({named})", "nothing was deleted")
    assert tree(store) == before
    with pytest.raises(UnsafeOverwriteError, match=re.escape(f"({named})")):
        from benzarr.synth.labels_store import synth_labels_store

        synth_labels_store(store, 10, overwrite=True)
    assert tree(store) == before


def test_what_benzarr_writes_in_a_store_is_its_own_in_every_state(synth_archive_64: Path, synth_store_64: Path,
                                                                   synth_v2_store: Path, tmp_path: Path) -> None:
    """The check of what benzarr wrote passes every store benzarr writes: planned, part-way
    (staging arrays, some shards), complete with splits and cached split statistics, v2 with
    S1 and reference maps, labels-only, with a killed write's temporary files; and each is
    replaced by `--overwrite`."""
    import uuid

    from benzarr.fsutil import foreign_files
    from benzarr.split import make_split
    from benzarr.stats import split_band_stats
    from benzarr.synth.labels_store import synth_labels_store

    planned, part = tmp_path / "planned.zarr", tmp_path / "part.zarr"
    ingest(synth_archive_64, planned, workers=1, shard_size=16, plan=True, parts=2)
    ingest(synth_archive_64, part, workers=1, shard_size=16, plan=True, parts=2)
    ingest(synth_archive_64, part, workers=1, shard_size=16, part=(1, 2))
    assert list((part / "ingest" / "stage").iterdir()) and len(list((part / "s2/10m/c").iterdir())) == 2
    split = copy_tree(synth_store_64, tmp_path / "split.zarr")
    make_split(open_store(split, mode="r+"), "strat", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    split_band_stats(str(split), "strat")
    assert "split_stats" in open_store(split).attrs
    v2 = copy_tree(synth_v2_store, tmp_path / "v2.zarr")
    make_split(open_store(v2, mode="r+"), "official", "official")
    labels = tmp_path / "labels.zarr"
    synth_labels_store(labels, 50)
    killed = copy_tree(synth_store_64, tmp_path / "killed.zarr")  # temporary files of writes killed midway
    (killed / "s2/10m/c/3/0/0/.0.4242.tmp").write_bytes(b"half")
    (killed / "labels/clc43/c/0" / f"0.{uuid.uuid4().hex}.partial").write_bytes(b"half")
    (killed / "meta" / f"zarr.{uuid.uuid4().hex}.partial").write_bytes(b"half")
    for store in (planned, part, split, v2, labels, killed):
        assert foreign_files(store) == [], store
    assert foreign_files(split / "splits" / "strat") == []
    for store in (planned, part, split, killed):
        ingest(synth_archive_64, store, workers=1, shard_size=16, overwrite=True)
        assert open_store(store).complete
    synth_labels_store(labels, 20, overwrite=True)
    synth_labels_store(v2, 20, overwrite=True)
    assert open_store(labels).n_patches == open_store(v2).n_patches == 20


def test_removal_renames_the_old_store_aside_first(synth_store_64: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    before = tree(store)

    def killed(path: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if killed while deleting

    monkeypatch.setattr("benzarr.fsutil.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_folder(store)
    monkeypatch.undo()
    # nothing half-deleted at STORE: the whole old store sits aside, under a name of its own
    assert not store.exists()
    (aside,) = tmp_path.glob(f".s.zarr{ASIDE_TAG}*")
    assert tree(aside) == before
    # a leftover of a process that is gone is swept by the next removal
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside.rename(tmp_path / f".s.zarr{ASIDE_TAG}{int(dead.stdout)}")
    copy_tree(synth_store_64, store)
    remove_folder(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_overwrite_through_a_symlink_is_refused_and_keeps_the_link(synth_store_64: Path, tmp_path: Path) -> None:
    """`ingest ARCHIVE LINK --overwrite` renamed the link aside, failed to delete through it,
    and left it under the aside name."""
    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    (tmp_path / "link").symlink_to("s.zarr")
    before = tree(store)
    with pytest.raises(FileSystemError, match="link: is a symbolic link \\(to s.zarr\\); nothing was deleted"):
        remove_folder(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and tree(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "s.zarr"]


def test_synth_overwrite_needs_its_own_marker(real_s2_archive: Path, tmp_path: Path) -> None:
    download = copy_tree(real_s2_archive, tmp_path / "real")  # looks exactly like a synthetic v1 archive
    before = tree(download)
    result = run_cli("synth", download, "--patches", "2", "--workers", "1", "--overwrite")
    one_error_line(result, str(download), "nothing was deleted")
    assert tree(download) == before
    labels = run_cli("synth", download, "--labels-only", "--patches", "5", "--overwrite")
    one_error_line(labels, "not a benzarr store")
    assert tree(download) == before
    # what synth wrote, it may replace
    assert run_cli("synth", tmp_path / "s", "--patches", "2", "--workers", "1").returncode == 0
    assert run_cli("synth", tmp_path / "s", "--patches", "3", "--workers", "1", "--overwrite").returncode == 0
    assert len(discover_patches(tmp_path / "s")) == 3


@pytest.mark.parametrize("where", ["{patch}/MYNOTES.txt", "{patch}/mine/{patch}_B01.tif", "{patch}/mylink",
                                   "{patch}/{patch}_B99.tif", "{patch}/{patch}_my_notes.json",
                                   "{patch}/{patch}_B02_corrected.tif"])
def test_synth_overwrite_keeps_an_archive_whose_patch_folders_hold_a_users_files(tmp_path: Path, where: str) -> None:
    """`synth --overwrite` deleted patch folders whole, a user's files in them included."""
    from benzarr.synth import synth_archive

    names = synth_archive(tmp_path / "a", 2, workers=1)
    (tmp_path / "a" / where.format(patch=names[0])).parent.mkdir(exist_ok=True)
    if where.endswith("mylink"):  # a link of the user's (to a folder: os.walk lists it as one) went too
        (tmp_path / "thesis").mkdir()
        (tmp_path / "a" / where.format(patch=names[0])).symlink_to(tmp_path / "thesis")
    else:
        (tmp_path / "a" / where.format(patch=names[0])).write_text("mine")
    before = tree(tmp_path / "a")
    with pytest.raises(UnsafeOverwriteError, match=f"holds files that benzarr did not write \\({where.format(patch=names[0])}\\)"):
        synth_archive(tmp_path / "a", 3, workers=1, overwrite=True)
    assert tree(tmp_path / "a") == before


@pytest.mark.parametrize("where", [
    "BigEarthNet-S2/{product}/{patch}/{patch}_B99.tif", "BigEarthNet-S2/{product}/{patch}/{patch}_labels_metadata.json",
    "BigEarthNet-S2/{product}/notes.txt", "BigEarthNet-S1/{s1_product}/{s1}/{s1}_VV_filtered.tif",
    "BigEarthNet-S1/{s1_product}/{s1}/{s1}_B02.tif", "Reference_Maps/{product}/{patch}/{patch}_B02.tif",
    "Reference_Maps/{product}/mine/", "BigEarthNet-S2/{product}/{patch}/{patch}_B01.tif/notes.txt",
])
def test_synth_overwrite_keeps_a_v2_archive_whose_folders_hold_a_users_files(tmp_path: Path, where: str) -> None:
    """A file under a v2 archive's folders passed as synth's when its name began with its
    folder's name and ended .tif or .json (`<patch>_B99.tif`, an S2 labels JSON in a v2 folder,
    an empty folder of the user's): only the exact files the writers make pass now."""
    from benzarr.bigearthnet import s1_product, v2_tile_product
    from benzarr.synth import synth_archive_v2

    out = tmp_path / "a"
    ids = synth_archive_v2(out, 3, s1=True, reference_maps=True, workers=1)
    s1 = pq.read_table(out / "metadata.parquet").column("s1_name").to_pylist()[0]
    patch = pq.read_table(out / "metadata.parquet").column("patch_id").to_pylist()[0]
    assert patch in ids
    path = where.format(patch=patch, product=v2_tile_product(patch), s1=s1, s1_product=s1_product(s1))
    if path.endswith("/"):
        (out / path).mkdir()
    else:
        if (out / path).parent.is_file():
            (out / path).parent.unlink()
        (out / path).parent.mkdir(exist_ok=True)
        (out / path).write_text("mine")
    before = tree(out)
    with pytest.raises(UnsafeOverwriteError, match=f"holds files that benzarr did not write \\({re.escape(path)}\\)"):
        synth_archive_v2(out, 4, s1=True, workers=1, overwrite=True)
    assert tree(out) == before and os.path.lexists(out / path)


def test_synth_overwrite_replaces_each_layout_it_writes(tmp_path: Path) -> None:
    """Every layout synth writes (v1, v1 with S1, v2 with S1 and reference maps) passes the
    check of what it wrote, and is replaced by any other."""
    from benzarr.synth import synth_archive, synth_archive_v2

    out = tmp_path / "a"
    synth_archive(out, 2, workers=1)
    (out / "mine").mkdir()
    write = [lambda: synth_archive(out, 2, workers=1, s1=True, overwrite=True),
             lambda: synth_archive_v2(out, 2, s1=True, reference_maps=True, workers=1, overwrite=True),
             lambda: synth_archive(out, 3, workers=1, overwrite=True)]
    for step in write:
        step()
    assert (out / "mine").is_dir() and len(discover_patches(out)) == 3
    assert sorted(p.name for p in out.iterdir() if not is_patch_name(p.name)) == [".benzarr", "mine"]


def test_synth_labels_only_replaces_only_a_benzarr_store(tmp_path: Path) -> None:
    store = tmp_path / "labels.zarr"
    assert run_cli("synth", store, "--labels-only", "--patches", "50").returncode == 0
    assert is_benzarr_store(store)
    one_error_line(run_cli("synth", store, "--labels-only", "--patches", "60"), "--overwrite")
    assert run_cli("synth", store, "--labels-only", "--patches", "60", "--overwrite").returncode == 0
    assert open_store(store).n_patches == 60


def test_synth_labels_only_keeps_a_store_that_holds_a_users_files(synth_store_64: Path, tmp_path: Path) -> None:
    """`synth --labels-only --overwrite` deleted an ingested store with a user's notes in it,
    which `ingest --overwrite` refuses."""
    from benzarr.synth.labels_store import synth_labels_store

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    (store / "MYNOTES.txt").write_text("mine")
    before = tree(store)
    with pytest.raises(UnsafeOverwriteError, match=r"s.zarr: holds files that benzarr did not write \(MYNOTES.txt\)"):
        synth_labels_store(store, 10, overwrite=True)
    assert tree(store) == before


def test_examples_never_replace_a_folder(tmp_path: Path) -> None:
    pytest.importorskip("bigearthnet_common")
    (tmp_path / "BigEarthNet-v1.0").mkdir()
    (tmp_path / "BigEarthNet-v1.0" / "mine.txt").write_text("mine")
    one_error_line(run_cli("examples", tmp_path), "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BigEarthNet-v1.0"]  # no half-written S1 folder
    (tmp_path / "file").write_text("x")
    one_error_line(run_cli("examples", tmp_path / "file"), "is a file")


# -- §3 one line for every failure, nothing left behind -------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (a real small disk) at tmp_path/mnt; skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_synth_on_a_full_disk_names_the_archive_and_a_fix_that_works(tmpfs: Path) -> None:
    """It said "no space left on device while running; ... run the same command again", which
    then refused the half-written archive."""
    from benzarr.synth import synth_archive

    with pytest.raises(FileSystemError, match=r"no space left on device while writing the synthetic archive .*"
                                              r"run the same command with --overwrite"):
        synth_archive(tmpfs / "a", 40, workers=1)  # 8.6 MB on a 3 MB disk
    assert len(synth_archive(tmpfs / "a", 4, workers=1, overwrite=True)) == 4  # the advice, once there is room


def test_full_disk_is_one_line_leaves_no_temporary_files_and_resumes(tmpfs: Path, synth_archive_64: Path,
                                                                     synth_store_64: Path) -> None:
    store = tmpfs / "s.zarr"  # 6.7 MB of store on a 3 MB disk
    result = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "2")
    one_error_line(result, "no space left on device while writing", str(store),
                   "free space and run the same command to resume")
    leftovers = [p for p in tmpfs.rglob("*") if p.name.endswith((".tmp", ".partial")) or p.name.endswith(".lock")]
    assert leftovers == []
    subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)
    resumed = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_stores_equal(store, synth_store_64)
    assert [p for p in store.rglob("*") if p.name.endswith((".tmp", ".partial"))] == []


def test_read_only_file_system_for_ingest_and_split(tmpfs: Path, synth_archive_64: Path,
                                                   synth_store_64: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)
    store = copy_tree(synth_store_64, tmpfs / "s.zarr")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    one_error_line(run_cli("ingest", synth_archive_64, tmpfs / "new.zarr", "--workers", "1"),
                   "read-only file system", str(tmpfs / "new.zarr"))
    one_error_line(run_cli("split", store, "--name", "s", "--method", "random"),
                   "read-only file system", str(store))


def test_failed_shard_write_removes_its_temporary_file(synth_archive_64: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a tmpfs: ENOSPC simulated at the shard write, after part of the bytes went out."""
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.endswith(".tmp"):
            real_write(self, bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    store = tmp_path / "s.zarr"
    with pytest.raises(FileSystemError, match="no space left on device while writing .*s2/10m; free space"):
        ingest(synth_archive_64, store, workers=1, shard_size=16)
    assert [p for p in store.rglob("*") if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    assert ingest(synth_archive_64, store, workers=1, shard_size=16).complete


def test_store_that_is_a_file_or_under_a_file(synth_archive_64: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    one_error_line(run_cli("ingest", synth_archive_64, tmp_path / "notes.txt", "--overwrite"), "is a file")
    one_error_line(run_cli("ingest", synth_archive_64, tmp_path / "notes.txt" / "s.zarr"), "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("content", ["garbage{", "{}"])
def test_damaged_array_metadata_is_named_by_info_and_split(content: str, synth_store_64: Path,
                                                           tmp_path: Path) -> None:
    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    (store / "labels" / "clc43" / "zarr.json").write_text(content)
    for args in (["info", store], ["split", store, "--name", "s", "--method", "random"]):
        one_error_line(run_cli(*args), str(store / "labels" / "clc43" / "zarr.json"), "damaged array metadata")


def test_symlink_loop_in_the_archive(synth_archive_64: Path, tmp_path: Path) -> None:
    archive = copy_tree(synth_archive_64, tmp_path / "archive")
    loop = archive / "S2A_MSIL2A_20990101T000000_1_1"
    loop.symlink_to(loop.name)
    one_error_line(run_cli("ingest", archive, tmp_path / "s.zarr"), str(loop), "symlink loop")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    one_error_line(run_cli("ingest", tmp_path / "a", tmp_path / "s.zarr"), "symlink loop")
    assert not (tmp_path / "s.zarr").exists()


def test_huge_shard_size_is_refused_before_anything_is_created(synth_archive_64: Path, tmp_path: Path) -> None:
    result = run_cli("ingest", synth_archive_64, tmp_path / "s.zarr", "--shard-size", "1099511627776")
    one_error_line(result, "--shard-size", "65,536")
    assert sorted(tmp_path.iterdir()) == []


def test_deeply_nested_labels_json_is_a_bad_patch_and_the_run_goes_on(synth_archive_64: Path,
                                                                      tmp_path: Path) -> None:
    archive = copy_tree(synth_archive_64, tmp_path / "archive")
    name = discover_patches(archive)[5]
    (archive / name / f"{name}_labels_metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    result = run_cli("ingest", archive, tmp_path / "s.zarr", "--shard-size", "16", "--workers", "1")
    assert result.returncode == 3, result.stderr
    assert f"bad patch {name}" in result.stderr and "nested too deeply" in result.stderr
    assert open_store(tmp_path / "s.zarr").valid_mask().sum() == 63


def test_split_name_with_a_backslash_writes_nothing(synth_store_64: Path, tmp_path: Path) -> None:
    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    before = tree(store)
    for name in ("x\\..\\..\\PWNED", "../up", ".hidden", "a b", "é"):
        one_error_line(run_cli("split", store, "--name", name, "--method", "random"), "invalid split name")
    assert tree(store) == before
    assert run_cli("split", store, "--name", "Fold-1_v2.0", "--method", "random").returncode == 0


def _run_main(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point after ``code`` (which plants a failure)."""
    script = f"{code}\nimport sys\nfrom benzarr_cli.main import main\nsys.argv = ['benzarr', 'info', 'x.zarr']\nmain()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_unexpected_errors_are_one_line_unless_debugging() -> None:
    plant = "import benzarr.info\nbenzarr.info.describe_store = lambda *a, **k: {}['missing']"
    one_error_line(_run_main(plant, {"BENZARR_DEBUG": ""}), "unexpected KeyError", "BENZARR_DEBUG=1")
    debug = _run_main(plant, {"BENZARR_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "KeyError" in debug.stderr
    io = "import benzarr.info, errno\ndef f(*a, **k): raise OSError(errno.EIO, 'Input/output error')\nbenzarr.info.describe_store = f"
    one_error_line(_run_main(io, {"BENZARR_DEBUG": ""}), "input/output error")


# -- §4 one ingest per store at a time; reruns ----------------------------------------------


def _hold_lock(store: Path, part: str = "") -> subprocess.Popen:
    """A process that holds the ingest lock of ``store`` (or of part "i/n") until killed."""
    part_arg = f", ({part.replace('/', ', ')})" if part else ""
    code = (f"import time\nfrom benzarr.lock import ingest_lock\nwith ingest_lock({str(store)!r}{part_arg}):\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_second_ingest_is_refused_and_a_killed_ones_lock_is_taken_over(synth_archive_64: Path,
                                                                     synth_store_64: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    holder = _hold_lock(store)
    try:
        result = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1")
        one_error_line(result, f"another ingest, pid {holder.pid} on {socket.gethostname()}, is writing {store}")
        with pytest.raises(StoreLockedError):
            ingest(synth_archive_64, store, workers=1, shard_size=16)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(store).exists()  # the killed holder's file stays; its flock died with it
    result = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert not lock_path(store).exists()
    assert all_arrays(store).keys() == all_arrays(synth_store_64).keys()


def test_a_symlink_to_a_store_shares_its_lock(synth_archive_64: Path, tmp_path: Path) -> None:
    """``alias.zarr -> real.zarr``: one store, one lock. lock_path was not resolved, so an ingest
    into the alias ran beside one into the real store, which then failed ("array
    'ingest/stage/...' is missing")."""
    real, alias = tmp_path / "real.zarr", tmp_path / "alias.zarr"
    real.mkdir()  # an empty folder, to be the store
    alias.symlink_to(real.name)
    assert lock_path(alias) == lock_path(real) and lock_path(alias, (1, 2)) == lock_path(real, (1, 2))
    holder = _hold_lock(real)
    try:
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            ingest(synth_archive_64, alias, workers=1, shard_size=16)
    finally:
        holder.kill()
        holder.wait()
    assert not any(real.iterdir())
    holder = _hold_lock(alias, "1/2")  # a part through the link blocks a whole ingest of the target
    try:
        with pytest.raises(StoreLockedError, match="--part 1/2"):
            ingest(synth_archive_64, real, workers=1, shard_size=16)
    finally:
        holder.kill()
        holder.wait()


def test_two_identical_ingests_started_together_give_one_correct_store(synth_archive_64: Path,
                                                                       synth_store_64: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    args = [sys.executable, "-m", "benzarr_cli", "ingest", str(synth_archive_64), str(store),
            "--shard-size", "16", "--workers", "1"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # communicate() before the exit code: wait() on a child that fills its stderr pipe never returns
    outcomes = [(p.communicate(timeout=240), p.returncode)[::-1] for p in (first, second)]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 1]), outcomes
    for code, (out, err) in outcomes:  # the loser says why; a late one finds the work done
        assert code == 0 or "another ingest, pid" in err, err
    assert_stores_equal(store, synth_store_64)


def test_a_store_being_ingested_is_named_as_such_not_sent_to_resume(synth_archive_64: Path, tmp_path: Path) -> None:
    """train, evaluate or info --require-complete on a store an ingest is writing said "ingest
    did not finish; run the same benzarr ingest command again", which would meet the lock."""
    from benzarr.errors import StoreIncompleteError

    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True)  # laid out, not complete
    with ingest_lock(store), pytest.raises(StoreIncompleteError, match=(
            rf"^{re.escape(str(store))}: an ingest \(pid {os.getpid()} on .*\) is writing this store now; wait for it")):
        open_store(store)
    with pytest.raises(StoreIncompleteError, match="run the same `benzarr ingest` command again"):
        open_store(store)  # once it is not
    # verify read the arrays an ingest was still creating and called them missing: CORRUPT, exit 4
    with ingest_lock(store):
        verified = run_cli("verify", store)
    assert verified.returncode == 1 and verified.stderr == (
        f"error: {store}: an ingest (pid {os.getpid()} on {socket.gethostname()}) is writing this store now; "
        "wait for it to finish, then verify\n")


def test_parts_run_side_by_side_but_not_under_a_whole_ingest(synth_archive_64: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=16, plan=True)
    holder = _hold_lock(store, "1/2")
    try:
        other = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1", "--part", "2/2")
        assert other.returncode == 0, other.stderr
        same = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1", "--part", "1/2")
        one_error_line(same, "part 1/2", f"pid {holder.pid}")
        whole = run_cli("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1")
        one_error_line(whole, "--part 1/2", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    with ingest_lock(store, (1, 2)):  # a part's lock never blocks another part
        with ingest_lock(store, (2, 2)):
            pass


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_file_system_without_flock_runs_unlocked_and_leaves_no_lock_files(code: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """NFSv3 without a lock daemon raises ENOLCK, Lustre mounted without ``-o flock`` ENOSYS.
    ENOSYS was not among the codes taken for "no flock here": ingest and train on Lustre stopped
    with "s.zarr: Function not implemented (while locking it)"; and where a lock was skipped
    its empty file stayed beside the store and in the run folder."""
    from benzarr.lock import finalize_lock, run_lock, write_lock

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr("benzarr.lock.fcntl.flock", no_flock)
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    with ingest_lock(store), ingest_lock(store, (1, 2)), finalize_lock(store), write_lock(store), run_lock(run):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock file, and run/ (made for the lock) gone


def test_rerun_of_a_completed_ingest_has_nothing_to_do(synth_archive_64: Path, tmp_path: Path) -> None:
    store = tmp_path / "new" / "folders" / "s.zarr"  # the lock's folder is created like the store's
    args = ("ingest", synth_archive_64, store, "--shard-size", "16", "--workers", "1")
    assert run_cli(*args).returncode == 0
    before = tree(store)
    again = run_cli(*args)
    assert again.returncode == 0 and "already complete, nothing to do" in again.stdout, again
    assert tree(store) == before
    assert run_cli(*args, "--quiet").stdout == ""
    one_error_line(run_cli("ingest", synth_archive_64, store, "--shard-size", "32"), "other ingest parameters")
    with pytest.raises(StoreExistsError):
        ingest(synth_archive_64, store, workers=1, shard_size=32)


# -- §5 names and inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "S2A_MSIL2A_20170613T101031_٣_٤", "S2A_MSIL2A_20170613T101031_5_5\n", "S2A_MSIL2A_2017O613T101031_5_5",
    " S2A_MSIL2A_20170613T101031_5_5", "S2A_MSIL2A_20170613T101031_5_5/..",
])
def test_patch_names_take_ascii_digits_only_and_no_newline(name: str) -> None:
    assert not is_patch_name(name)
    assert is_patch_name("S2A_MSIL2A_20170613T101031_5_5")
    v2 = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    assert is_v2_patch_name(v2) and not is_v2_patch_name(v2 + "\n") and not is_v2_patch_name(v2[:-1] + "٧")
    s1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    assert is_s1_name(s1) and not is_s1_name(s1 + "\n") and not is_s1_name(s1.replace("87", "٨٧"))


def _rewrite_parquets(archive: Path, change) -> None:
    for path in archive.glob("metadata*.parquet"):
        pq.write_table(change(pq.read_table(path)), path)


def test_v2_s1_name_is_validated_like_every_name(synth_v2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(synth_v2_archive, tmp_path / "reBEN")

    def evil(table: pa.Table) -> pa.Table:
        names = table["s1_name"].to_pylist()
        names[0] = "../../outside/EVIL"
        return table.set_column(table.schema.get_field_index("s1_name"), "s1_name", pa.array(names))

    clean = pq.read_table(archive / "metadata.parquet")
    pq.write_table(evil(clean), archive / "metadata.parquet")
    with pytest.raises(NotAnArchiveError, match="'../../outside/EVIL'.*not a Sentinel-1 patch name"):
        open_archive(archive)
    one_error_line(run_cli("ingest", archive, tmp_path / "s.zarr"), "EVIL", "not a Sentinel-1 patch name")
    # the error names the file the row is in, the archive's path with it (was "metadata.parquet"
    # for a row of the flagged patches' file too)
    pq.write_table(clean, archive / "metadata.parquet")
    flagged = archive / "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
    pq.write_table(evil(pq.read_table(flagged)), flagged)
    with pytest.raises(NotAnArchiveError, match=f"^{re.escape(str(flagged))}: s1_name '../../outside/EVIL'"):
        open_archive(archive)


def test_v2_metadata_needs_only_the_four_columns_it_uses(synth_v2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(synth_v2_archive, tmp_path / "reBEN")
    keep = ["patch_id", "labels", "split", "s1_name"]
    _rewrite_parquets(archive, lambda table: table.select(keep))
    result = ingest(archive, tmp_path / "s.zarr", workers=1, shard_size=16)
    assert result.complete and not result.failed
    assert set(open_store(tmp_path / "s.zarr").array("meta/country")[:].tolist()) == {""}
    _rewrite_parquets(archive, lambda table: table.drop_columns(["split"]))
    with pytest.raises(NotAnArchiveError, match="missing columns split"):
        open_archive(archive)


def _rewrite_band(path: Path, data: np.ndarray) -> None:
    with rasterio.open(path) as tif:
        profile = tif.profile | {"dtype": str(data.dtype)}
    with rasterio.open(path, "w", **profile) as out:
        out.write(data[None])


def test_integer_bands_are_accepted_when_the_cast_changes_no_value(real_s2_archive: Path, tmp_path: Path) -> None:
    archive = copy_tree(real_s2_archive, tmp_path / "archive")
    good, bad = discover_patches(archive)[:2]
    with rasterio.open(archive / good / f"{good}_B03.tif") as tif:
        values = np.minimum(tif.read(1), 32767).astype(np.int16)  # int16, no negative value
    _rewrite_band(archive / good / f"{good}_B03.tif", values)
    with rasterio.open(archive / bad / f"{bad}_B11.tif") as tif:
        negative = tif.read(1).astype(np.int32)
    negative[3, 4] = -7
    _rewrite_band(archive / bad / f"{bad}_B11.tif", negative)
    result = run_cli("ingest", archive, tmp_path / "s.zarr", "--workers", "1")
    assert result.returncode == 3, result.stderr
    assert f"bad patch {bad}: {bad}_B11.tif: dtype int32 value -7 at row 3, column 4 does not fit uint16" in result.stderr
    store = open_store(tmp_path / "s.zarr")
    row = list(store.patch_names()).index(good)
    assert store.valid_mask()[row] and list(store.failed()) == [bad]
    assert np.array_equal(store.array("s2/10m")[row, 1], values.astype(np.uint16))


def test_exit_codes_usage_2_bad_patches_3_and_workers_must_be_positive(synth_archive_64: Path,
                                                                       tmp_path: Path) -> None:
    assert run_cli("ingest").returncode == 2  # click's usage error
    assert run_cli("ingest", synth_archive_64, tmp_path / "s.zarr", "--no-such-option").returncode == 2
    for workers in ("-1", "0"):
        one_error_line(run_cli("ingest", synth_archive_64, tmp_path / "s.zarr", "--workers", workers), "--workers")
    with pytest.raises(InvalidArgumentError, match="--workers"):
        ingest(synth_archive_64, tmp_path / "s.zarr", workers=-4)
    assert not (tmp_path / "s.zarr").exists()


def test_ctrl_c_exits_130_with_one_line(synth_store_64: Path, tmp_path: Path) -> None:
    """An interrupted run must not read as a success to a shell or a scheduler (it exited 0 once)."""
    from benzarr.split import make_split

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "r", "random", fractions=(0.6, 0.2, 0.2), seed=0)
    run = tmp_path / "run"
    # a shell starts a background job (`pytest ... &`) with SIGINT ignored, and an ignored signal
    # stays ignored across exec: Python would install no handler and the run would go on
    child = subprocess.Popen([*CLI, "train", str(store), "--split", "r", "--epochs", "1000", "--batch-size", "8",
                              "--device", "cpu", "--out", str(run), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (run / "config.json").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # inside the training loop
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: interrupted; {run}: ")
    assert err.rstrip().endswith(("run the same command with --resume to go on from checkpoints/last.pt",
                                  "no checkpoint was written yet; run the same command again to start over"))


def test_main_run_again_in_one_process_starts_clean_and_puts_back_what_it_changed(
        synth_archive_64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``benzarr_cli.main.main`` called again in one process (a test, a notebook, a driver
    script): a later command's Ctrl-C was reported with an earlier ingest's advice, one SIGTERM
    made every later Ctrl-C "terminated (SIGTERM)" with exit 143, and the SIGTERM handler,
    warning display and unraisable hook stayed installed after ``main`` returned."""
    import warnings

    import benzarr.synth
    from benzarr_cli import main as cli

    def process_state() -> tuple[object, ...]:  # (an interruption reported is forgotten too: it once
        # left the hook of a later run, or a test's own, believing an interruption was being reported)
        return (signal.getsignal(signal.SIGTERM), warnings.showwarning, sys.unraisablehook, list(cli._STOPPING),
                list(cli._TERMINATED))

    before = process_state()
    store = tmp_path / "s.zarr"
    assert run_cli("ingest", synth_archive_64, store, "--workers", "1", "--shard-size", "16", "-q").returncode == 0
    assert process_state() == before

    def stopped_by(signum: int):
        def synth_archive(*args: object, **kwargs: object) -> None:
            if signum == signal.SIGTERM:
                cli._on_sigterm(signum, None)  # what the handler main installs does on SIGTERM
            raise KeyboardInterrupt
        return synth_archive

    monkeypatch.setattr(benzarr.synth, "synth_archive", stopped_by(signal.SIGTERM))
    terminated = run_cli("synth", tmp_path / "a1", "--patches", "8", "-q")
    assert (terminated.returncode, terminated.stderr) == (143, "error: terminated (SIGTERM)\n")
    monkeypatch.setattr(benzarr.synth, "synth_archive", stopped_by(signal.SIGINT))
    interrupted = run_cli("synth", tmp_path / "a2", "--patches", "8", "-q")
    assert (interrupted.returncode, interrupted.stderr) == (130, "error: interrupted\n")
    assert process_state() == before


def test_a_closed_stdout_is_no_traceback(synth_store_64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``benzarr info STORE >&-``: Python starts with ``sys.stdout`` None, and the first look
    at it stopped in "AttributeError: 'NoneType' object has no attribute 'fileno'" (a
    traceback, exit 1). The run writes to /dev/null instead, as ``print`` would, and its exit
    code and error lines still say how it went; ``sys.stdout`` is None again afterwards."""
    import contextlib
    import io

    from benzarr_cli.main import main

    def run(*args: object) -> tuple[object, str]:
        err = io.StringIO()
        monkeypatch.setattr(sys, "argv", ["benzarr", *map(str, args)])
        monkeypatch.setattr(sys, "stdout", None)
        with contextlib.redirect_stderr(err):
            try:
                main()
                code: object = 0
            except SystemExit as exc:
                code = exc.code
        assert sys.stdout is None
        return code, err.getvalue()

    assert run("info", synth_store_64) == (0, "")
    assert run("verify", tmp_path / "none.zarr") == (1, f"error: {tmp_path / 'none.zarr'}: no such store\n")


def test_an_ingest_interrupted_with_its_workers_says_one_line_and_resumes(synth_archive_64: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C (and a scheduler's SIGTERM) reaches the whole process group, the
    pool's workers too: each printed its own KeyboardInterrupt traceback, one dying with its
    task queue's lock left the others blocked and the exit waiting on them for ever, and the
    workers' Blosc locks were "leaked semaphore objects" after the error line. The workers now
    leave the signal to the driver, which ends them. (The driver's SIGTERM, which also ends the
    workers, is tests/test_ingest.py's: it caught the semaphores too.)"""
    import glob

    store = tmp_path / "s.zarr"
    args = [*CLI, "ingest", str(synth_archive_64), str(store), "--workers", "2", "--shard-size", "1", "-q"]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored (`pytest &`)
    deadline = time.monotonic() + 60
    while not glob.glob(str(store / "s2" / "10m" / "c" / "*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and every worker
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert out == "" and err == f"error: interrupted; {store}: the shards written so far are kept; run the same command again to resume\n"
    resumed = run_cli("ingest", synth_archive_64, store, "--workers", "2", "--shard-size", "1", "-q")
    assert resumed.returncode == 0 and resumed.stderr == ""
    assert open_store(store).n_patches == 64


def test_a_fifo_or_a_link_to_a_device_in_the_archive_is_a_bad_patch_not_a_hang(synth_archive_64: Path,
                                                                              tmp_path: Path) -> None:
    """A band file that was a FIFO made ingest wait for a writer for ever, a labels JSON linked
    to /dev/zero read without end, and a band linked to /dev/urandom was "empty (0 bytes)"."""
    archive = copy_tree(synth_archive_64, tmp_path / "a")
    first, second, third = discover_patches(archive)[:3]
    os.remove(archive / first / f"{first}_B03.tif")
    os.mkfifo(archive / first / f"{first}_B03.tif")
    for patch, name, device in ((second, f"{second}_labels_metadata.json", "/dev/zero"),
                                (third, f"{third}_B8A.tif", "/dev/urandom")):
        os.remove(archive / patch / name)
        os.symlink(device, archive / patch / name)
    result = subprocess.run([*CLI, "ingest", str(archive), str(tmp_path / "s.zarr"), "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    special = "not a regular file (a FIFO, a device or a socket), so not read"
    for patch, name in ((first, f"{first}_B03.tif"), (second, f"{second}_labels_metadata.json"),
                        (third, f"{third}_B8A.tif")):
        assert f"bad patch {patch}: {name}: {special}" in result.stderr
    assert sorted(open_store(tmp_path / "s.zarr").failed()) == sorted([first, second, third])


def test_an_entry_named_like_a_patch_that_is_not_a_folder_is_a_bad_patch(synth_archive_64: Path,
                                                                         tmp_path: Path) -> None:
    """A file, a broken link or a FIFO named like a patch (a cut download, a stray copy) was
    skipped without a word: the store then silently lacked a patch the archive listed."""
    from benzarr.ingest import ingest

    archive = copy_tree(synth_archive_64, tmp_path / "a")
    first = discover_patches(archive)[0]
    stem = first.rsplit("_", 2)[0]
    empty, broken, fifo = (f"{stem}_{row}_{col}" for row, col in ((97, 1), (97, 2), (97, 3)))
    (archive / empty).write_bytes(b"")
    os.symlink(archive / "nowhere", archive / broken)
    os.mkfifo(archive / fifo)
    assert {empty, broken, fifo} <= set(discover_patches(archive))
    result = ingest(archive, tmp_path / "s.zarr", workers=1)
    assert sorted(result.failed) == sorted([empty, broken, fifo])
    assert all(reason.startswith("not a folder (a file or a broken link named like a patch")
               for reason in result.failed.values()), result.failed
    assert open_store(tmp_path / "s.zarr").valid_mask().sum() == 64


@pytest.mark.parametrize("slow_start", [False, True], ids=["prompt-thread-start", "slow-thread-start"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_swallowed_by_a_callback_is_delivered_again(monkeypatch: pytest.MonkeyPatch, signum: int,
                                                                 slow_start: bool) -> None:
    """Python drops a KeyboardInterrupt raised inside a ``__del__`` or a weakref callback (any
    library's, not only benzarr's): the CLI's ``sys.unraisablehook`` raises it again in the main
    thread, so Ctrl-C or a scheduler's SIGTERM still stops the command. Also when the main
    thread wakes from starting the hook's timer only after it fired (a loaded machine: the
    interrupt landed in the hook, was dropped again, and the command went on)."""
    import ctypes
    import threading
    import weakref

    from benzarr_cli import main as cli_main

    if slow_start:
        starts = []

        class SlowToReturn(threading.Timer):
            def start(self) -> None:
                super().start()
                starts.append(self)
                if len(starts) == 1:  # the first only: descheduled past the timer's 10 ms
                    time.sleep(0.1)

        monkeypatch.setattr(threading, "Timer", SlowToReturn)

    class Held:
        pass

    raise_signal = ctypes.PYFUNCTYPE(None, ctypes.c_int)(("PyErr_SetInterruptEx", ctypes.pythonapi))
    held = Held()
    # the signal arrives as a Python weakref callback runs: its handler's exception is dropped there
    swallowing = weakref.ref(held, lambda _: raise_signal(signum))  # noqa: F841
    monkeypatch.setattr(sys, "unraisablehook", cli_main._deliver_lost_interrupt)
    monkeypatch.setattr(cli_main, "_TERMINATED", [])
    monkeypatch.setattr(cli_main, "_STOPPING", [])
    handler = cli_main._on_sigterm if signum == signal.SIGTERM else signal.default_int_handler
    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            del held
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the interrupt lands here, from the hook's thread
                time.sleep(0.01)
    finally:
        signal.signal(signum, previous)
    assert isinstance(raised.value, cli_main._Terminated) == (signum == signal.SIGTERM)


@pytest.mark.parametrize("then", ["stopping", "main-returned"])
def test_a_lost_interrupt_is_not_delivered_once_the_command_stops_or_returns(monkeypatch: pytest.MonkeyPatch,
                                                                            then: str) -> None:
    """The hook delivers a dropped Ctrl-C a moment later; by then the command may already be
    reporting an interruption, or its main() may have returned. A late delivery escaped main()
    and ended the process with SIGINT (exit -2) instead of 130: it is not made then."""
    import types

    from benzarr_cli import main as cli_main

    monkeypatch.setattr(cli_main, "_STOPPING", [])
    monkeypatch.setattr(cli_main, "_RUN", [7])
    lost = KeyboardInterrupt()
    cli_main._deliver_lost_interrupt(types.SimpleNamespace(exc_value=lost))
    if then == "stopping":
        cli_main._STOPPING.append(True)
    else:
        cli_main._RUN[0] += 1
    try:
        time.sleep(0.1)  # the timer fires meanwhile
    except KeyboardInterrupt:
        pytest.fail(f"a lost interrupt was delivered after the command was {then}")


def test_torchs_notice_of_a_killed_loader_worker_is_not_printed_above_the_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's SIGCHLD handler can raise "DataLoader worker (pid N) is killed by signal" inside a
    weakref callback (seen when a worker is killed mid-batch): Python printed it as an "Exception
    ignored" traceback above the loader's own LoaderWorkerError line. The CLI's hook drops that
    notice; any other unraisable error is still shown."""
    from benzarr_cli import main as cli_main

    class Dying:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def __del__(self) -> None:
            raise self.exc

    monkeypatch.setattr(sys, "unraisablehook", cli_main._unraisable)
    Dying(RuntimeError("DataLoader worker (pid 21179) is killed by signal: Killed. "))  # collected at once
    assert capsys.readouterr().err == ""
    Dying(RuntimeError("something else"))
    assert "RuntimeError: something else" in capsys.readouterr().err


def test_patches_not_in_the_archive_are_listed_even_when_quiet(synth_archive_64: Path, tmp_path: Path) -> None:
    names = discover_patches(synth_archive_64)[:3]
    absent = [f"S2A_MSIL2A_20990101T000000_{i}_{i}" for i in range(12)]
    wanted = tmp_path / "wanted.txt"
    wanted.write_text("\n".join(names + absent) + "\n")
    result = run_cli("ingest", synth_archive_64, tmp_path / "s.zarr", "--patches", wanted, "--quiet", "--workers", "1")
    assert result.returncode == 0 and result.stdout == ""
    assert "12 names in --patches are not in the archive" in result.stderr
    assert all(name in result.stderr for name in sorted(absent)[:10])
    assert sorted(absent)[10] not in result.stderr and "and 2 more" in result.stderr
    assert open_store(tmp_path / "s.zarr").n_patches == 3


def test_a_reader_that_leaves_early_is_no_error(synth_store_64: Path) -> None:
    """`benzarr info STORE | head -1`: rich met the closed pipe and exited 1 without a word; now
    141 (as a tool killed by SIGPIPE), and still nothing on stderr."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    child = subprocess.Popen([*CLI, "info", str(synth_store_64)], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 141 and err == ""


@pytest.mark.parametrize("command", ["train", "report", "export"])
def test_an_output_folder_that_is_a_file_says_so(tmp_path: Path, synth_store_64: Path, command: str) -> None:
    """train/evaluate/report --out and split --export on a file said "File exists (while running)",
    some only after the work (evaluate: after scoring)."""
    from benzarr.errors import FileSystemError
    from benzarr.fsutil import os_error

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(FileSystemError, match=f"notes.txt: is a file, not a folder; choose another path for the "):
        if command == "train":
            from benzarr.train import TrainConfig, train

            train(TrainConfig(store=str(synth_store_64), split="none", device="cpu", out=str(notes)))
        elif command == "report":
            from benzarr.report import write_report

            write_report([tmp_path / "no-run"], notes)
        else:
            from benzarr.split import export_split
            from benzarr.store import open_store

            export_split(open_store(synth_store_64), "none", notes)
    assert notes.read_text() == "mine"
    with pytest.raises(FileExistsError) as info:  # and any other mkdir the checks miss
        notes.mkdir()
    assert str(os_error(info.value, action="running")) == f"{notes}: is a file, not a folder"


# -- a split write that fails or is killed (A5) -----------------------------------------------


def _run_planted(code: str, *args: object) -> subprocess.CompletedProcess:
    """Run ``benzarr ARGS`` through the real entry point after ``code`` (which plants a failure)."""
    script = (f"{code}\nimport sys\nfrom benzarr_cli.main import main\n"
              f"sys.argv = ['benzarr', *{[str(a) for a in args]!r}]\nmain()\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


#: Between a split array's zarr.json and its chunk: a full disk, or the process killed.
_SPLIT_CHUNK_FAILS = """
import errno, os
import zarr.core.array as za
real = za.Array.__setitem__
def planted(self, key, value):
    if self.path.startswith("splits/"):
        if {kill!r}:
            os._exit(9)
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.store.root, self.path, "c", "0"))
    return real(self, key, value)
za.Array.__setitem__ = planted
"""


def test_a_split_replaced_with_overwrite_is_never_missing_for_a_reader(synth_store_64: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`split --overwrite` moved the old split aside, then renamed the new one in: a reader
    between the two renames (train, evaluate, split --list) found no split of that name. Now the
    two folders are swapped in one step (renameat2 RENAME_EXCHANGE) where the system can."""
    import benzarr.store as store_module
    from benzarr.store import _exchange

    store_path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    store = open_store(store_path, mode="r+")
    codes = np.zeros(store.n_patches, dtype=np.int8)
    store.write_split("s", codes, {"version": 1})
    probe = tmp_path / "probe"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    if not _exchange(probe / "a", probe / "b"):
        pytest.skip("this kernel or file system cannot swap two folders in one step")
    seen: list[bool] = []  # a reader at every rename of the write: is the split there?
    rename = os.rename

    def reading_rename(src: object, dst: object) -> None:
        seen.append("s" in open_store(store_path).split_names())
        rename(src, dst)
        seen.append("s" in open_store(store_path).split_names())

    monkeypatch.setattr(store_module.os, "rename", reading_rename)
    store.write_split("s", codes + 1, {"version": 2}, overwrite=True)
    assert all(seen), seen
    assert open_store(store_path).read_split("s")[1]["version"] == 2
    assert [p.name for p in (store_path / "splits").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kill", [False, True], ids=["disk-full", "killed"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_a_failed_or_killed_split_write_keeps_the_store_and_the_old_split(synth_store_64: Path, tmp_path: Path,
                                                                          kill: bool, overwrite: bool) -> None:
    """It left splits/NAME/zarr.json without its chunk: every command then failed for the whole
    store ("subset sizes ... differ"), the rerun the error advised said "exists; pass --overwrite",
    and with --overwrite the old split was deleted before the new one was written."""
    from typer.testing import CliRunner

    from benzarr.split import make_split
    from benzarr_cli.main import app

    def in_process(*command: object) -> None:  # rc 0 and nothing on stderr (a subprocess each cost 0.8 s)
        result = CliRunner().invoke(app, [str(part) for part in command])
        assert result.exit_code == 0 and result.stderr == "", (command, result.output)

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "r", "random")
    old = open_store(store).read_split("r")
    name = "r" if overwrite else "n"
    args = ("split", store, "--name", name, "--method", "random", "--seed", "5", *(["--overwrite"] if overwrite else []))
    failed = _run_planted(_SPLIT_CHUNK_FAILS.format(kill=kill), *args)
    if kill:
        assert failed.returncode == 9, failed.stderr
    else:
        one_error_line(failed, "no space left on device while writing the split", str(store / "splits" / name),
                       "run the same command again")
        assert not [p for p in (store / "splits").iterdir() if p.name.startswith(".")]  # nothing left behind
    # the store reads as before: the old split whole, no half-written one
    reopened = open_store(store)
    assert reopened.split_names() == ["r"]
    np.testing.assert_array_equal(reopened.read_split("r")[0], old[0])
    assert reopened.read_split("r")[1] == old[1]
    for command in (("info", store), ("split", store, "--list"), ("verify", store)):
        in_process(*command)
    # and the same command now succeeds (sweeping what a killed one left)
    in_process(*args, "-q")
    assert open_store(store).read_split(name)[1]["seed"] == 5
    assert sorted(p.name for p in (store / "splits").iterdir()) == sorted({"zarr.json", "r", name})
    in_process("verify", store)


def test_a_split_moved_aside_by_a_killed_replacement_comes_back(synth_store_64: Path, tmp_path: Path) -> None:
    """A kill between moving the old split aside and renaming the new one into place: the next
    write puts the old one back, and deletes the new one's leftovers."""
    from benzarr.fsutil import PARTIAL_TAG, REPLACED_TAG
    from benzarr.split import make_split

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "r", "random", seed=1)
    make_split(open_store(store, mode="r+"), "new", "random", seed=2)
    old = open_store(store).read_split("r")[0]
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    splits = store / "splits"
    (splits / "r").rename(splits / f".r{REPLACED_TAG}{dead}")
    (splits / "new").rename(splits / f".r{PARTIAL_TAG}{dead}")
    assert open_store(store).split_names() == []  # leftovers are never splits
    assert run_cli("split", store, "--list").returncode == 0
    make_split(open_store(store, mode="r+"), "other", "random", seed=3)
    assert open_store(store).split_names() == ["other", "r"]
    np.testing.assert_array_equal(open_store(store).read_split("r")[0], old)
    assert not [p for p in splits.iterdir() if p.name.startswith(".")]


# -- NFS: files deleted while another process holds them open ("silly rename") ----------------

#: What a Linux NFS client names a file deleted while a process holds it open: .nfs and hex digits.
NFS_NAME = ".nfs0000000001a2b3c400000001"


def _nfs_holding_open(monkeypatch: pytest.MonkeyPatch, held: str) -> None:
    """Make ``os.unlink`` act as on NFS while another process (a notebook that memory-mapped
    the shards) holds open each file whose folder path contains ``held``: the file is renamed
    to ``.nfs<hex>`` in its folder instead of going, and deleting a ``.nfs<hex>`` file fails
    with EBUSY ("Device or resource busy"), so its folder cannot be removed (ENOTEMPTY)."""
    unlink, count = os.unlink, iter(range(1, 1 << 20))

    def nfs_unlink(path: str | Path, *, dir_fd: int | None = None) -> None:
        name = os.path.basename(os.fsdecode(path))
        folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.path.dirname(os.path.abspath(path))
        if name.startswith(".nfs"):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        if held in folder:
            os.rename(os.path.join(folder, name), os.path.join(folder, f".nfs{next(count):024x}"))
            return
        unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", nfs_unlink)


def test_a_store_replaced_on_nfs_while_another_process_reads_it(synth_store_64: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`ingest --overwrite` on NFS while a notebook had the old store's shards open: the store
    was moved aside, its deletion met the .nfs files of the open shards, and the command
    stopped with "s.zarr: Directory not empty (while removing the old folder)", the store gone.
    A .nfs file already in the store made --overwrite refuse it as "files that benzarr did not
    write ...: move them out of the store first", which no one can do while it is open."""
    from benzarr.demo import _RUN_FILES, _RUN_FOLDERS, _foreign_in_folder

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    (store / NFS_NAME).write_bytes(b"")
    (store / "s2" / "10m" / "c" / "0" / "0" / "0" / NFS_NAME).write_bytes(b"")
    assert foreign_files(store) == []
    _nfs_holding_open(monkeypatch, "/s2/")
    with pytest.warns(UserWarning, match=r"s\.zarr: [0-9]+ files of the old folder .* still open in another process"):
        remove_folder(store)
    assert not store.exists()  # replaced: what stays is only what NFS keeps for the reader
    (aside,) = tmp_path.glob(f".s.zarr{ASIDE_TAG}*")
    assert {p.name[:4] for p in aside.rglob("*") if p.is_file()} == {".nfs"}
    run = tmp_path / "runs" / "shortcnn-all"  # demo --overwrite while tensorboard reads the run
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / NFS_NAME).write_bytes(b"")
    assert _foreign_in_folder(run, _RUN_FILES, _RUN_FOLDERS) == []


def test_splits_on_nfs_with_files_another_process_holds_open(synth_store_64: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A .nfs file under splits/ was warned about as "a folder without zarr.json ... restore that
    file or remove the folder"; one in a split's folder made `split --overwrite` refuse it as a
    user's file; one in a dead writer's leftover folder made every later split write fail with
    "splits/NAME: Device or resource busy (while writing the split)"."""
    import warnings

    from benzarr.fsutil import PARTIAL_TAG
    from benzarr.split import make_split

    store_path = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store_path, mode="r+"), "r", "random", seed=1)
    splits = store_path / "splits"
    (splits / NFS_NAME).write_bytes(b"")
    (splits / "r" / "c" / NFS_NAME).write_bytes(b"")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    leftover = splits / f".n{PARTIAL_TAG}{dead}" / "c"
    leftover.mkdir(parents=True)
    (leftover / NFS_NAME).write_bytes(b"")
    _nfs_holding_open(monkeypatch, "/splits/")
    store = open_store(store_path, mode="r+")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.split_names() == ["r"]
    make_split(store, "n", "random", seed=2)
    make_split(store, "r", "random", seed=3, overwrite=True)
    assert open_store(store_path).read_split("r")[1]["seed"] == 3
    with pytest.warns(UserWarning, match="still open in another process"):  # its chunk is held open
        store.delete_split("n")
    assert open_store(store_path).split_names() == ["r"]


@pytest.mark.parametrize("code", ["EXDEV", "ENOTSUP"])
def test_a_file_system_that_renames_no_folders_changes_nothing_and_says_so(code: str, synth_store_64: Path,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Object-store FUSE mounts (gcsfuse, mountpoint-s3, s3fs) rename files but not folders.
    A split write said only "splits/n: Invalid cross-device link (while writing the split)";
    removing a folder there (`ingest --overwrite`, the staging arrays at the end of an ingest)
    took EXDEV for a mount point, moved nothing and left an empty .benzarr-old-PID folder inside,
    which the next `ingest --overwrite` refused as a user's folder."""
    from benzarr.split import make_split

    store = copy_tree(synth_store_64, tmp_path / "s.zarr")
    make_split(open_store(store, mode="r+"), "r", "random", seed=1)
    before = tree(store)
    rename = os.rename

    def no_folder_rename(src: str | Path, dst: str | Path, **kwargs: object) -> None:
        if os.path.isdir(src):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(src))
        rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", no_folder_rename)
    with pytest.raises(FileSystemError, match=r"splits/n: this file system cannot rename folders .* s3:// URL"):
        make_split(open_store(store, mode="r+"), "n", "random", seed=2)
    for folder in (store, store / "ingest" / "done"):
        with pytest.raises(FileSystemError, match=f"{folder}: this file system cannot rename folders"):
            remove_folder(folder)
    assert tree(store) == before and foreign_files(store) == []  # nothing changed, nothing left
    assert [p.name for p in store.rglob(".*")] == []


def test_a_file_system_that_renames_no_files_is_named_as_such(synth_archive_64: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket mounted by a FUSE client that renames no files (mountpoint-s3): every zarr write
    is a temporary file renamed into place, and ingest said only "s.zarr: Function not
    implemented (while writing)"."""

    def no_rename(src: str | Path, dst: str | Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", no_rename)
    monkeypatch.setattr(os, "rename", no_rename)
    store = tmp_path / "s.zarr"
    result = run_cli("ingest", synth_archive_64, store, "--workers", "1", "-q")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {store}: this file system cannot rename files (function not implemented, "
                                    "while writing)"), result.stderr
    assert "s3:// URL" in result.stderr


# -- staging arrays left in a complete store (A8) ----------------------------------------------


@pytest.mark.parametrize("when", ["before-the-drop", "during-the-drop"])
def test_staging_left_by_a_kill_after_complete_goes_with_the_rerun(synth_archive_64: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A kill after `complete` was written but before ingest/stage was dropped left the staging
    arrays in the store for good: the rerun said "already complete" and never swept them."""
    import benzarr.store

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if killed there

    if when == "before-the-drop":
        monkeypatch.setattr(benzarr.store, "drop_staging", killed)
    else:  # the folder is renamed aside, then killed while it is deleted
        import shutil

        real_rmtree = shutil.rmtree

        def rmtree(path: object, *args: object, **kwargs: object) -> None:
            if ".stage" in str(path):
                killed()
            real_rmtree(path, *args, **kwargs)

        monkeypatch.setattr(shutil, "rmtree", rmtree)
    store = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        ingest(synth_archive_64, store, workers=1, shard_size=16)
    monkeypatch.undo()
    assert open_store(store).complete
    leftovers = [p for p in (store / "ingest").iterdir() if "stage" in p.name]
    assert len(leftovers) == 1  # ingest/stage, or its folder renamed aside (by a process now gone)
    if when == "during-the-drop":
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        leftovers[0].rename(store / "ingest" / f".stage{ASIDE_TAG}{int(dead.stdout)}")
    # benzarr's own leftover: --overwrite replaces the store (it refused, naming the staging
    # chunks inside ingest/.stage.benzarr-old-PID as "files that benzarr did not write")
    assert foreign_files(store) == []
    again = ingest(synth_archive_64, store, workers=1, shard_size=16)
    assert again.already_complete
    assert sorted(p.name for p in (store / "ingest").iterdir()) == ["band_stats", "done", "zarr.json"]
    assert [name for name, _ in open_store(store).arrays() if "stage" in name] == []


def test_output_in_an_ascii_encoding_or_of_a_non_utf8_path_is_no_unicode_error(
        synth_store_64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``PYTHONIOENCODING=ascii`` (or an ASCII locale) ``report``'s "mean ± 95% CI" and
    ``split --quality``'s class names cut with "…" stopped the command with "unexpected
    UnicodeEncodeError" after its files were written (``report --help`` too); under a UTF-8
    locale, so did any path holding a byte that is not UTF-8 (``info caf\\xe9/s.zarr``). Such
    characters get ASCII stand-ins (``+/-``), such a byte is written back as it was (as ``ls``
    does), and the streams' own error handlers are put back after the run."""
    import contextlib
    import io

    from benzarr_cli.main import main

    def run(encoding: str, *args: object) -> tuple[object, bytes, bytes]:
        out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
        err = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")
        monkeypatch.setattr(sys, "argv", ["benzarr", *map(str, args)])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code: object = 0
            except SystemExit as exc:
                code = exc.code
        assert (out.errors, err.errors) == ("strict", "strict")
        out.flush(), err.flush()
        return code, out.buffer.getvalue(), err.buffer.getvalue()

    code, out, err = run("ascii", "report", "--help")
    assert (code, err) == (0, b"") and b"mean +/- 95% CI" in out
    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.zarr")  # a surrogate escape in the str
    os.symlink(synth_store_64, odd)
    code, out, err = run("utf-8", "info", odd)
    assert (code, err) == (0, b"") and out.startswith(b"store ") and b"caf\xe9.zarr" in out.splitlines()[0]
    code, out, err = run("ascii", "info", odd + "x")
    assert code == 1 and err == b"error: " + os.fsencode(odd + "x") + b": no such store\n"
    # --json stays JSON: escaped in the document itself, not by the stream's stand-ins (which
    # wrote caf\xe9 or the raw byte, and json.loads failed on what exited 0)
    accented = str(tmp_path / "café.zarr")
    os.symlink(synth_store_64, accented)
    for encoding, path in (("ascii", accented), ("ascii", odd), ("utf-8", odd)):
        code, out, err = run(encoding, "info", path, "--json")
        assert (code, err) == (0, b"") and json.loads(out.decode("ascii"))["path"] == path
    code, out, err = run("ascii", "info", accented)  # text output: a \u escape, as JSON and Python write it
    assert code == 0 and out.splitlines()[0].endswith(b"caf\\u00e9.zarr")


def test_lock_files_follow_the_umask_so_a_group_can_take_them(tmp_path: Path) -> None:
    """In a shared lab folder (umask 002) a lock file was made 0644 whatever the umask: while
    one member's split held a store's write lock, another's could not open the file and wrote
    unlocked; and the lock file a killed ingest left behind stopped a colleague's resume with
    "permission denied". Lock files are made as every other file is, by the umask."""
    from benzarr.lock import finalize_lock, run_lock, run_lock_path, write_lock

    store, run = tmp_path / "s.zarr", tmp_path / "run"
    previous = os.umask(0o002)
    try:
        with ingest_lock(store), finalize_lock(store), write_lock(store), run_lock(run):
            modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.glob(".s.zarr.*.lock"), run_lock_path(run)]}
    finally:
        os.umask(previous)
    assert len(modes) == 4 and set(modes.values()) == {0o664}, modes


def test_a_home_matplotlib_cannot_write_is_one_warning_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME read-only or missing (a compute node, a container): ``show`` and ``report`` printed
    matplotlib's "mkdir -p failed for path ..." and a 300-character "Matplotlib created a
    temporary cache directory ..." log records above their output. One ``warning:`` line now
    says what to set. (matplotlib's own look-up runs inside the command, as when imported.)"""
    import matplotlib

    import benzarr.report
    from benzarr.errors import InvalidArgumentError

    def write_report(*args: object, **kwargs: object) -> None:
        matplotlib._get_config_or_cache_dir(lambda: "/dev/null")  # ~/.config under HOME=/dev/null
        raise InvalidArgumentError("stop here")

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)  # matplotlib sets it; put back after the test
    monkeypatch.setattr(benzarr.report, "write_report", write_report)
    result = run_cli("report", tmp_path, "--out", tmp_path / "r")
    assert result.returncode == 1 and result.stderr.splitlines() == [
        "warning: matplotlib cannot write its settings and cache folder, the default path (/dev/null/matplotlib): "
        "it used a temporary one; set MPLCONFIGDIR to a writable folder", "error: stop here"], result.stderr


def test_a_store_name_too_long_for_its_lock_file_says_so(synth_archive_64: Path, tmp_path: Path) -> None:
    """A 240-character store name is a valid name, but its lock file beside it
    (``.NAME.benzarr-ingest.lock``) is not: the error said the store's own name was too long.
    It now names the lock and the longest store name that works; nothing is written."""
    name = "s" * 235 + ".zarr"
    result = run_cli("ingest", synth_archive_64, tmp_path / name, "--workers", "1", "-q")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"error: {tmp_path / name}: its name is too long for the ingest lock file benzarr keeps "
                             f"beside it (.{'s' * 23}...zarr.benzarr-ingest.lock, 261 bytes; a file name holds at most "
                             "255): give the store a name of at most 234 bytes\n")
    assert os.listdir(tmp_path) == []
