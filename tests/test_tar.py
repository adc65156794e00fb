"""Ingest straight from tar files (benzarr.sources._files): the same store as from the unpacked folders."""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from benzarr.archive import open_archive
from benzarr.errors import ArchiveChangedError, ArchiveNotFoundError, NotAnArchiveError
from benzarr.ingest import ingest
from benzarr.sources import _files
from benzarr.store import open_store
from benzarr.synth import synth_archive
from tests.test_ingest import assert_stores_equal, run_cli


@pytest.fixture(autouse=True)
def _fresh_mounts() -> None:
    _files.unmount_all()  # each test indexes its own tars


def _tar(folder: Path, target: Path, arcname: str | None = None) -> Path:
    """``tar cf target -C folder.parent folder.name`` with Python's tarfile (GNU format, as the
    downloads); ``arcname``: another name for the folder in the tar."""
    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return target


@pytest.fixture(scope="module")
def v1_download(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A v1 S2+S1 archive unpacked (``root``) and as the two downloads' tars in one folder (``tars``)."""
    base = tmp_path_factory.mktemp("v1tar")
    root = base / "root"
    synth_archive(root, 48, seed=5, workers=1, s1=True)
    tars = base / "tars"
    tars.mkdir()
    _tar(root / "BigEarthNet-v1.0", tars / "BigEarthNet-S2-v1.0.tar")
    _tar(root / "BigEarthNet-S1-v1.0", tars / "BigEarthNet-S1-v1.0.tar")
    return {"root": root, "tars": tars}


def test_v1_tars_in_a_folder_give_the_store_of_the_unpacked_archive(v1_download: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    unpacked = ingest(v1_download["root"], tmp_path / "folders.zarr", workers=1, shard_size=4)
    # 12 shards for 2 processes: tasks are handed out a few at a time, each with its byte ranges
    packed = ingest(v1_download["tars"], tmp_path / "tars.zarr", workers=2, shard_size=4)
    assert packed.modalities == unpacked.modalities == ["s2", "s1"] and packed.n_patches == 48
    assert_stores_equal(tmp_path / "folders.zarr", tmp_path / "tars.zarr")
    assert open_store(tmp_path / "tars.zarr").attrs["ingest"]["archive"] == str(v1_download["tars"].resolve())


def test_a_tar_file_is_an_archive_and_the_cli_reads_it(v1_download: dict[str, Path], tmp_path: Path) -> None:
    tar = v1_download["tars"] / "BigEarthNet-S2-v1.0.tar"
    done = run_cli("ingest", tar, tmp_path / "s2.zarr", "--workers", "1", "--shard-size", "32")
    assert done.returncode == 0, done.stderr
    assert "48 patches of BigEarthNet v1 (s2) in 2 shards" in done.stdout
    ingest(v1_download["root"] / "BigEarthNet-v1.0", tmp_path / "s2-folders.zarr", workers=1, shard_size=32)
    assert_stores_equal(tmp_path / "s2.zarr", tmp_path / "s2-folders.zarr")


def test_v2_tars_and_parquet_give_the_store_of_the_unpacked_archive(synth_v2_archive: Path, tmp_path: Path) -> None:
    tars = tmp_path / "reBEN"
    tars.mkdir()
    for entry in synth_v2_archive.iterdir():
        if entry.is_dir():
            _tar(entry, tars / f"{entry.name}.tar")
        elif entry.suffix == ".parquet":
            shutil.copy(entry, tars / entry.name)
    ingest(synth_v2_archive, tmp_path / "folders.zarr", workers=1)
    result = ingest(tars, tmp_path / "tars.zarr", workers=1)
    assert set(result.modalities) == {"s2", "s1", "reference-map"}
    assert_stores_equal(tmp_path / "folders.zarr", tmp_path / "tars.zarr")


def test_compressed_tarballs_are_refused_with_the_command_that_decompresses_them(v1_download: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    tar = v1_download["tars"] / "BigEarthNet-S2-v1.0.tar"
    packed = tmp_path / "dl" / "BigEarthNet-S2-v1.0.tar.gz"
    packed.parent.mkdir()
    with open(tar, "rb") as source, gzip.open(packed, "wb", compresslevel=1) as target:
        shutil.copyfileobj(source, target)
    done = run_cli("ingest", packed, tmp_path / "a.zarr")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "gzip-compressed" in done.stderr and "gunzip -k BigEarthNet-S2-v1.0.tar.gz" in done.stderr
    done = run_cli("ingest", packed.parent, tmp_path / "b.zarr")  # a folder of the downloads, still packed
    assert done.returncode == 1 and "compressed tarballs (BigEarthNet-S2-v1.0.tar.gz): decompress" in done.stderr
    shutil.copy(tar, packed.parent / tar.name)  # decompressed beside it: the .tar is read, the .gz left alone
    assert run_cli("ingest", packed.parent, tmp_path / "c.zarr", "--workers", "1").returncode == 0
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    renamed = shutil.copy(packed, tmp_path / "renamed.tar")  # gunzip refuses a name without .gz
    done = run_cli("ingest", renamed, tmp_path / "e.zarr")
    assert "run `mv renamed.tar renamed.tar.gz && gunzip -k renamed.tar.gz`" in done.stderr
    (tmp_path / "zero.tar").write_bytes(b"")
    done = run_cli("ingest", tmp_path / "zero.tar", tmp_path / "d.zarr")
    assert done.returncode == 1 and "zero.tar: an empty file, not a tar archive" in done.stderr


def test_a_truncated_or_foreign_tar_is_one_error_and_writes_nothing(v1_download: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar"
    shutil.copy(v1_download["tars"] / "BigEarthNet-S2-v1.0.tar", cut)
    with open(cut, "r+b") as handle:
        handle.truncate(cut.stat().st_size // 2)
    with pytest.raises(NotAnArchiveError, match="the tar ends early .* truncated download"):
        ingest(cut, tmp_path / "a.zarr", workers=1)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(NotAnArchiveError, match="not a readable tar file"):
        ingest(junk, tmp_path / "b.zarr", workers=1)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_a_damaged_member_is_a_bad_patch_named_like_a_damaged_file(v1_download: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    root = tmp_path / "BigEarthNet-v1.0"
    shutil.copytree(v1_download["root"] / "BigEarthNet-v1.0", root)
    name = sorted(p.name for p in root.iterdir())[3]
    band = root / name / f"{name}_B04.tif"
    band.write_bytes(band.read_bytes()[:300])  # truncated GeoTIFF
    (root / sorted(p.name for p in root.iterdir())[7] / f"{sorted(p.name for p in root.iterdir())[7]}_B8A.tif").unlink()
    tar = _tar(root, tmp_path / "damaged.tar")
    from_tar = ingest(tar, tmp_path / "t.zarr", workers=1)
    _files.unmount_all()
    from_folder = ingest(root, tmp_path / "f.zarr", workers=1)
    assert from_tar.failed == from_folder.failed and len(from_tar.failed) == 2
    assert "unreadable GeoTIFF" in from_tar.failed[name] and "missing band file" in "".join(from_tar.failed.values())


def test_members_are_found_through_hard_links_and_dot_prefixes(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_bytes(b"alpha")
    tar = tmp_path / "links.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as out:
        out.add(folder / "sub" / "a.txt", arcname="./d/sub/a.txt")
        link = tarfile.TarInfo("d/sub/b.txt")
        link.type, link.linkname = tarfile.LNKTYPE, "./d/sub/a.txt"
        out.addfile(link)
    assert _files.mount(tar) == [str(tar)]
    assert _files.is_dir(tar) and _files.is_dir(tar / "d" / "sub") and not _files.is_dir(tar / "d" / "sub" / "a.txt")
    assert sorted(_files.listdir(tar / "d" / "sub")) == [("a.txt", False), ("b.txt", False)]
    assert _files.read_bytes(tar / "d" / "sub" / "b.txt") == b"alpha"
    with pytest.raises(FileNotFoundError):
        _files.read_bytes(tar / "d" / "sub" / "c.txt")
    exported = _files.export([tar / "d"])
    _files.unmount_all()
    with _files.installed(exported):  # what an ingest worker does: the byte ranges, without indexing again
        assert _files.read_bytes(tar / "d" / "sub" / "a.txt") == b"alpha" and _files.exists(tar / "d" / "sub" / "b.txt")
    assert not _files.exists(tar / "d" / "sub" / "a.txt")  # served for that task only


def test_the_real_example_patches_read_from_their_tar_equal_the_unpacked_ones(real_s2_archive: Path,
                                                                              tmp_path: Path) -> None:
    """bigearthnet-common's six real S2 patches: its .tar.bz2 decompressed to a .tar (as a user
    would the download) and a folder inside it given as ARCHIVE."""
    import bz2
    from importlib import resources

    tar = tmp_path / "BigEarthNet-S2-Example.tar"
    member = resources.files("bigearthnet_common").joinpath("BigEarthNet-S2-Example.tar.bz2")
    with resources.as_file(member) as path, bz2.open(path, "rb") as source, open(tar, "wb") as target:
        shutil.copyfileobj(source, target)
    from_tar = ingest(tar / "BigEarthNet-S2-Example", tmp_path / "t.zarr", workers=1)
    from_folder = ingest(real_s2_archive, tmp_path / "f.zarr", workers=1)
    assert from_tar.n_patches == from_folder.n_patches == 6 and not from_tar.failed
    assert_stores_equal(tmp_path / "t.zarr", tmp_path / "f.zarr")
    with pytest.raises(ArchiveNotFoundError, match="no such folder in the tar"):
        ingest(tar / "Nothing-Here", tmp_path / "n.zarr", workers=1)


_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\x00", exclude_categories=("Cs", "Cc")),
                min_size=1, max_size=60).filter(lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None)
@given(tree=st.lists(st.tuples(st.lists(_NAME, min_size=1, max_size=5), st.integers(0, 3000), st.booleans()),
                     min_size=1, max_size=12),
       tar_format=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]),
       links=st.booleans())
def test_the_header_scanner_reads_what_tarfile_reads(tmp_path_factory: pytest.TempPathFactory,
                                                      tree: list, tar_format: int, links: bool) -> None:
    """Any names (long, non-ASCII, nested), sizes, folders and hard links, in the ustar, GNU and
    pax formats: the fast scanner gives tarfile's members, offsets and sizes exactly."""
    path = tmp_path_factory.mktemp("fmt") / "t.tar"
    try:
        with tarfile.open(path, "w", format=tar_format) as out:
            for parts, size, folder in tree:
                info = tarfile.TarInfo("/".join(parts))
                if folder:
                    info.type = tarfile.DIRTYPE
                    out.addfile(info)
                else:
                    info.size = size
                    out.addfile(info, io.BytesIO(bytes(size)))
            if links:
                link = tarfile.TarInfo("linked/" + "/".join(tree[0][0]))
                link.type, link.linkname = tarfile.LNKTYPE, "/".join(tree[0][0])
                out.addfile(link)
    except ValueError:  # a name ustar cannot hold
        assume(False)
    assert list(_files.scan_headers(str(path))) == list(_files.tarfile_members(str(path)))
    assert _files.TarIndex.build(str(path)).dirs == _files.TarIndex.build(str(path), _files.tarfile_members).dirs


def test_a_tar_beside_its_unpacked_folder_is_not_indexed(v1_download: dict[str, Path], tmp_path: Path) -> None:
    both = tmp_path / "both"
    shutil.copytree(v1_download["root"] / "BigEarthNet-v1.0", both / "BigEarthNet-v1.0")
    shutil.copy(v1_download["tars"] / "BigEarthNet-S2-v1.0.tar", both)
    assert _files.mount(both) == [] and not _files._INDEXES  # the real folder is read; the tar is left alone
    assert ingest(both, tmp_path / "s.zarr", workers=1).n_patches == 48
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.tar").write_bytes(b"\x01" * 1024)
    with pytest.raises(NotAnArchiveError, match="x.tar: not a readable tar file"):
        _files.mount(broken)  # an unreadable tar is still reported, not skipped


def test_a_tar_or_folder_holding_the_archive_as_its_one_folder_says_which_path_to_give(
        real_s2_archive: Path, tmp_path: Path) -> None:
    """The examples' tar (and `tar cf reben.tar reben`) holds the archive one folder down: the
    error listed what was missing and not the path that works."""
    packed = tmp_path / "s2ex.tar"
    with tarfile.open(packed, "w") as tar:
        tar.add(real_s2_archive, arcname="BigEarthNet-S2-Example")
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copytree(real_s2_archive, holder / "inner")
    for outer, inner in ((packed, "BigEarthNet-S2-Example"), (holder, "inner")):
        with pytest.raises(NotAnArchiveError, match=rf"; the archive is its folder {inner}: give .*{inner}$"):
            ingest(outer, tmp_path / "s.zarr", workers=1)
        assert ingest(outer / inner, tmp_path / f"{inner}.zarr", workers=1).n_patches == 6


# -- one long-lived process (a notebook, a Dask worker) through several ingests -----------


def _replace_tar(folder: Path, target: Path) -> None:
    """Pack ``folder`` as BigEarthNet-v1.0 into a new file moved over ``target`` (a re-download)."""
    _tar(folder, target.with_suffix(".part"), "BigEarthNet-v1.0")
    os.replace(target.with_suffix(".part"), target)


def _files_open_on(path: str) -> list[str]:
    """What this process's open file descriptors point to at or below ``path`` (Linux)."""
    fds = Path("/proc/self/fd")
    targets = []
    for fd in os.listdir(fds):
        try:
            targets.append(os.readlink(fds / fd))
        except OSError:  # the descriptor listdir itself used, closed since
            continue
    return [target for target in targets if target.startswith(path)]


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files in /proc")


@needs_proc
def test_a_tar_replaced_at_its_path_is_read_anew_and_closed_when_the_ingest_ends(
        v1_download: dict[str, Path], synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    """In one process (workers=1 runs in the caller's): the first ingest's open file was kept by
    path and read at the new tar's byte ranges, every patch "malformed JSON" in a store marked
    complete; and it stayed open for the process's life, so a deleted 66 GB tar freed nothing."""
    tar = tmp_path / "BigEarthNet-S2-v1.0.tar"
    shutil.copy(v1_download["tars"] / "BigEarthNet-S2-v1.0.tar", tar)
    assert ingest(tar, tmp_path / "a.zarr", workers=1, shard_size=32).n_patches == 48
    assert _files_open_on(str(tar)) == []
    _replace_tar(synth_archive_64, tar)
    again = ingest(tar, tmp_path / "b.zarr", workers=1, shard_size=16, compression="lz4")
    assert again.failed == {} and again.n_patches == 64
    assert_stores_equal(tmp_path / "b.zarr", synth_store_64)  # the same archive as a folder
    tar.unlink()
    assert _files_open_on(str(tar)) == []  # the disk space is freed


def test_a_tar_deleted_and_unpacked_in_its_place_is_read_from_the_folder(
        v1_download: dict[str, Path], synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    """A folder holding a tar, looked at (open_archive) and ingested; the tar deleted and an
    archive unpacked in its place: the next ingest read the deleted tar's patches from its
    mount, still open."""
    downloads = tmp_path / "dl"
    downloads.mkdir()
    shutil.copy(v1_download["tars"] / "BigEarthNet-S2-v1.0.tar", downloads)
    assert len(open_archive(downloads).names) == 48  # its mounts stay, as a notebook's would
    ingest(downloads, tmp_path / "a.zarr", workers=1, shard_size=32)
    (downloads / "BigEarthNet-S2-v1.0.tar").unlink()
    shutil.copytree(synth_archive_64, downloads / "BigEarthNet-v1.0")
    assert ingest(downloads, tmp_path / "b.zarr", workers=1, shard_size=16, compression="lz4").failed == {}
    assert_stores_equal(tmp_path / "b.zarr", synth_store_64)


def _on(pool: ProcessPoolExecutor) -> Callable[[Callable[..., Any], list[tuple[Any, ...]]], Iterator[tuple[int, Any]]]:
    """An ingest runner that runs every shard task on ``pool``'s one long-lived process, as a
    Dask worker runs them (without distributed's weight in this test)."""

    def run(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        futures = [pool.submit(fn, *args) for args in calls]
        for index, future in enumerate(futures):
            yield index, future.result()

    return run


@needs_proc
def test_a_long_lived_worker_reads_a_replaced_tar_anew_and_keeps_no_file_open(
        v1_download: dict[str, Path], synth_archive_64: Path, synth_store_64: Path, tmp_path: Path) -> None:
    """A worker that outlives the ingest (Dask's) kept the tar open by path: the next ingest of
    a tar replaced at that path read the old file at the new byte ranges."""
    tar = tmp_path / "BigEarthNet-S2-v1.0.tar"
    shutil.copy(v1_download["tars"] / "BigEarthNet-S2-v1.0.tar", tar)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        ingest(tar, tmp_path / "a.zarr", runner=_on(pool), shard_size=32)
        assert pool.submit(_files_open_on, str(tar)).result() == []
        _replace_tar(synth_archive_64, tar)
        assert ingest(tar, tmp_path / "b.zarr", runner=_on(pool), shard_size=16, compression="lz4").failed == {}
    assert_stores_equal(tmp_path / "b.zarr", synth_store_64)


def test_a_tar_rewritten_after_it_was_indexed_is_not_read_at_the_old_byte_ranges(tmp_path: Path) -> None:
    """Rewritten in place (``curl -o`` over it: the same file, other bytes) while mounted: a
    read raises instead of returning whatever lies at the old offsets; mounting again reads it."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"alpha")
    tar = _tar(folder, tmp_path / "x.tar")
    _files.mount(tar)
    assert _files.read_bytes(tar / "d" / "a.txt") == b"alpha"
    (folder / "0.txt").write_bytes(b"0" * 30_000)  # before a.txt in the tar: its offset moves
    (folder / "a.txt").write_bytes(b"bravo")
    with open(tar, "r+b") as handle:  # the same inode
        handle.write(_tar(folder, tmp_path / "y.tar").read_bytes())
    with pytest.raises(ArchiveChangedError, match=f"^{tar}: the tar file changed .*after it was indexed"):
        _files.read_bytes(tar / "d" / "a.txt")
    _files.mount(tar)
    assert _files.read_bytes(tar / "d" / "a.txt") == b"bravo"


def test_byte_ranges_installed_for_a_task_are_its_threads_alone(tmp_path: Path) -> None:
    """A Dask worker runs shard tasks on several threads: a task's byte ranges replaced those
    of a task running beside it, whose next files were then missing."""
    folder = tmp_path / "d"
    for part, text in (("p1", b"one"), ("p2", b"two")):
        (folder / part).mkdir(parents=True)
        (folder / part / "f.txt").write_bytes(text)
    tar = _tar(folder, tmp_path / "x.tar")
    _files.mount(tar)
    first, second = _files.export([tar / "d" / "p1"]), _files.export([tar / "d" / "p2"])
    _files.unmount_all()
    seen: list[bytes] = []
    installed, finish = threading.Event(), threading.Event()

    def other_task() -> None:
        try:
            with _files.installed(second):
                seen.append(_files.read_bytes(tar / "d" / "p2" / "f.txt"))
                installed.set()
                finish.wait()
        finally:
            installed.set()

    with _files.installed(first):
        thread = threading.Thread(target=other_task)
        thread.start()
        installed.wait()  # the other task's ranges are installed, and it is still running
        try:
            assert _files.read_bytes(tar / "d" / "p1" / "f.txt") == b"one"
            assert not _files.exists(tar / "d" / "p2" / "f.txt")
        finally:
            finish.set()
            thread.join()
    assert seen == [b"two"] and not _files.exists(tar / "d" / "p1" / "f.txt")
