"""Chunk checksums end to end (store format 2): the dataset and loader name a chunk that fails its
crc32c, ``benzarr verify`` finds planted corruption in chunk data, shard indexes and metadata,
records its result, and format 1 stores stay readable."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benzarr.data import BigEarthNetDataset, make_loader
from benzarr.errors import StoreCorruptError
from benzarr.info import describe_store
from benzarr.shards import fast_reader
from benzarr.store import open_store
from benzarr.verify import verify_store
from tests.conftest import CLI, copy_tree, run_cli

SHARD = 16  # synth_store_64: 64 patches, shards of 16, lz4


def shard_path(store: Path, array: str, shard: int) -> Path:
    ndim = len(json.loads((store / array / "zarr.json").read_text())["shape"])
    return store.joinpath(array, "c", str(shard), *("0",) * (ndim - 1))


def chunk_span(store: Path, array: str, row: int) -> tuple[Path, int, int]:
    """(shard file, offset, nbytes) of ``row``'s chunk in a band array."""
    path = shard_path(store, array, row // SHARD)
    raw = path.read_bytes()
    index = np.frombuffer(raw[len(raw) - 4 - 16 * SHARD:-4], dtype="<u8").reshape(SHARD, 2)
    offset, nbytes = index[row % SHARD]
    return path, int(offset), int(nbytes)


def flip(path: Path, position: int, mask: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= mask
    path.write_bytes(bytes(raw))


def flip_chunk_data(store: Path, array: str, row: int) -> Path:
    """Flip one bit in the middle of ``row``'s encoded chunk (past the Blosc header, before the crc)."""
    path, offset, nbytes = chunk_span(store, array, row)
    flip(path, offset + 16 + (nbytes - 20) // 2)
    return path


@pytest.fixture()
def store(tmp_path: Path, synth_store_64: Path) -> Path:
    return copy_tree(synth_store_64, tmp_path / "store.zarr")


def patch_name(store: Path, row: int) -> str:
    return str(open_store(store).patch_names()[row])


# -- readers ---------------------------------------------------------------------------


def test_ingest_writes_format_2_with_a_crc32c_on_every_band_chunk(synth_store_64: Path) -> None:
    assert open_store(synth_store_64).format_version == 2
    for array in ("s2/10m", "s2/20m", "s2/60m"):
        metadata = json.loads((synth_store_64 / array / "zarr.json").read_text())
        inner = metadata["codecs"][0]["configuration"]["codecs"]
        assert [c["name"] for c in inner] == ["bytes", "blosc", "crc32c"]
        assert fast_reader(synth_store_64 / array, array).layout.checksum


def test_dataset_names_array_row_and_patch_of_a_chunk_failing_its_crc32c(store: Path) -> None:
    shard = flip_chunk_data(store, "s2/20m", 35)
    ds = BigEarthNetDataset(store)
    ds[20]  # other patches read
    with pytest.raises(StoreCorruptError) as info:
        ds[35]
    message = str(info.value)
    assert message.startswith("s2/20m: ") and str(shard) in message and "crc32c" in message
    assert "row 35" in message and patch_name(store, 35) in message


def test_verify_checksums_false_trusts_the_chunk_bytes(store: Path, synth_store_64: Path) -> None:
    path, offset, nbytes = chunk_span(store, "s2/10m", 9)
    flip(path, offset + nbytes - 1, 0x80)  # the stored crc32c itself: the pixels are intact
    with pytest.raises(StoreCorruptError, match="crc32c"):
        BigEarthNetDataset(store)[9]
    fast = BigEarthNetDataset(store, verify_checksums=False)
    assert fast.verify_checksums is False
    np.testing.assert_array_equal(fast[9]["image"].numpy(), BigEarthNetDataset(synth_store_64)[9]["image"].numpy())


def test_a_chunk_failing_its_crc32c_in_a_loader_worker_is_one_line(store: Path) -> None:
    flip_chunk_data(store, "s2/10m", 21)
    loader = make_loader(BigEarthNetDataset(store), batch_size=16, shuffle=False, num_workers=1, seed=0, device="cpu")
    with pytest.raises(StoreCorruptError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith("s2/10m: shard file") and "crc32c" in message
    assert patch_name(store, 21) in message
    assert "Traceback" not in message and "\n" not in message


# -- verify ----------------------------------------------------------------------------


def test_clean_store_verifies_and_records_the_result(store: Path) -> None:
    assert describe_store(store)["verified"] is None
    report = verify_store(store, workers=1)
    assert report.ok and report.checksums and report.problems == [] and report.bad_patches == []
    assert report.chunks >= 3 * 64 and report.bytes > 0
    assert report.recorded
    verified = describe_store(store)["verified"]
    assert verified["ok"] is True and verified["chunks"] == report.chunks and verified["at"] == report.at


def test_flipped_bit_in_chunk_data_is_named_by_patch(store: Path) -> None:
    shard = flip_chunk_data(store, "s2/60m", 50)
    report = verify_store(store, workers=1)
    assert not report.ok
    assert report.bad_patches == [patch_name(store, 50)]
    [problem] = report.problems
    assert problem.array == "s2/60m" and problem.rows == [50]
    assert str(shard) in problem.message and "crc32c" in problem.message
    assert f"row 50, patch {patch_name(store, 50)}" in problem.message
    assert open_store(store).attrs["verified"]["ok"] is False


def test_bad_shard_index_names_every_patch_of_its_shard(store: Path) -> None:
    path = shard_path(store, "s2/10m", 1)
    flip(path, path.stat().st_size - 30)  # inside the index
    report = verify_store(store, workers=1)
    [problem] = report.problems
    assert problem.rows == list(range(16, 32)) and "index fails its crc32c" in problem.message
    names = open_store(store).patch_names()
    assert report.bad_patches == [str(n) for n in names[16:32]]


@pytest.mark.parametrize("content", ["{not json", "{}", '{"zarr_format": 3, "node_type": "array"}', "[1, 2]"])
def test_broken_array_metadata_is_reported(store: Path, content: str) -> None:
    (store / "s2/20m" / "zarr.json").write_text(content)
    report = verify_store(store, workers=1)
    assert not report.ok
    assert [p.array for p in report.problems] == ["s2/20m"]
    assert "zarr.json" in report.problems[0].message
    assert not any(p.array == "s2/10m" for p in report.problems)  # the others are still read


def test_wrong_shape_in_metadata_is_reported(store: Path) -> None:
    meta = store / "labels/clc19" / "zarr.json"
    metadata = json.loads(meta.read_text())
    metadata["shape"] = [63, 19]
    meta.write_text(json.dumps(metadata))
    report = verify_store(store, workers=1)
    assert any(p.array == "labels/clc19" and "shape (63, 19), expected (64, 19)" in p.message for p in report.problems)


def test_a_band_array_with_more_rows_than_the_store_is_one_shape_problem(store: Path) -> None:
    """A band zarr.json that claims 80 rows in a 64-patch store: its shards past the store's
    end hold no patch, so they are no missing files; verify once stopped in an IndexError."""
    meta = store / "s2/10m" / "zarr.json"
    metadata = json.loads(meta.read_text())
    metadata["shape"][0] = 80
    meta.write_text(json.dumps(metadata))
    result = run_cli("verify", store, "--no-record")
    assert result.returncode == 4, result.stderr
    assert "shape (80, 4, 120, 120), expected (64, 4, 120, 120)" in result.stdout
    assert "unexpected" not in result.stderr and result.stderr.count("error:") == 1


def test_missing_shard_file_of_valid_patches_is_reported(store: Path) -> None:
    shard_path(store, "s2/20m", 3).unlink()
    report = verify_store(store, workers=1)
    [problem] = report.problems
    assert "is missing" in problem.message and problem.rows == list(range(48, 64))


def test_a_deleted_shard_file_is_an_error_to_the_dataset_not_zeros(store: Path) -> None:
    """zarr reads a missing shard as fill values; the dataset serves only patches that were
    written, so a deleted file must fail naming it (it once trained on zeros with exit 0)."""
    shard_path(store, "s2/20m", 3).unlink()
    ds = BigEarthNetDataset(store)
    ds[20]  # other shards read
    with pytest.raises(StoreCorruptError) as info:
        ds.read_batch([5, 50])
    message = str(info.value)
    assert message.startswith("s2/20m: shard file") and str(shard_path(store, "s2/20m", 3)) in message
    assert "is missing" in message and patch_name(store, 50) in message and "\n" not in message
    # the library's own reader keeps zarr's rule unless asked
    rows = open_store(store).row_reader("s2/20m").read([50])
    assert not rows.any()


def test_a_folder_in_place_of_a_shard_file_is_named_by_its_path(store: Path) -> None:
    path = shard_path(store, "s2/10m", 1)
    path.unlink()
    path.mkdir()
    with pytest.raises(StoreCorruptError, match=rf"shard file {path} is corrupt \(a folder where the shard file belongs\)"):
        BigEarthNetDataset(store)[20]


def test_a_shard_file_that_is_a_symlink_loop_is_named_by_its_path(store: Path) -> None:
    """The Dataset raised a bare OSError: [Errno 40] Too many levels of symbolic links."""
    from benzarr.errors import FileSystemError

    path = shard_path(store, "s2/10m", 1)
    path.unlink()
    path.symlink_to(path.name)
    with pytest.raises(FileSystemError, match=rf"{re.escape(str(path))}: symlink loop"):
        BigEarthNetDataset(store)[20]


def test_train_on_a_store_with_a_deleted_shard_fails_in_one_line(store: Path, tmp_path: Path) -> None:
    shard_path(store, "s2/10m", 0).unlink()
    result = run_cli("split", store, "--name", "s", "--method", "random", "--quiet")
    assert result.returncode == 0, result.stderr
    # a new process: train sets torch's process-wide determinism and thread settings
    result = subprocess.run([*CLI, "train", str(store), "--split", "s", "--epochs", "1", "--batch-size", "8",
                             "--workers", "1", "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: s2/10m: shard file") and "is missing" in lines[0]
    assert not (tmp_path / "run").exists()


# -- labels and splits ------------------------------------------------------------------


def test_row_arrays_end_in_crc32c_and_a_flipped_label_bit_is_one_named_error(store: Path) -> None:
    for array in ("labels/clc43", "labels/clc19", "meta/patch_name", "meta/valid", "labels/patch"):
        codecs = json.loads((store / array / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "crc32c", array
    chunk = store / "labels/clc43" / "c" / "0" / "0"
    flip(chunk, chunk.stat().st_size // 2, 0x10)
    with pytest.raises(StoreCorruptError) as info:
        open_store(store).labels()
    assert str(info.value).startswith(f"{store}/labels/clc43: does not read (")
    result = run_cli("split", store, "--name", "r", "--method", "random")
    assert result.returncode == 1 and result.stderr.startswith(f"error: {store}/labels/clc43: does not read")
    assert len(result.stderr.strip().splitlines()) == 1 and "unexpected" not in result.stderr


def _rewrite(store: Path, array: str, change: Callable[[np.ndarray], None]) -> None:
    """Change ``array``'s values as a bit flip that still decodes would (in a store whose row
    arrays had no crc32c): written back through zarr, attributes kept."""
    import zarr

    z = zarr.open_array(str(store / array), mode="r+")
    values = z[:]
    change(values)
    z[:] = values


def test_split_codes_that_no_longer_match_their_counts_are_refused(store: Path) -> None:
    run_cli("split", store, "--name", "s", "--method", "random", "--quiet")
    codes, attrs = open_store(store).read_split("s")
    val = int(np.flatnonzero(codes == 1)[0])

    def to_train(values: np.ndarray) -> None:
        values[val] = 0

    _rewrite(store, "splits/s", to_train)
    with pytest.raises(StoreCorruptError, match="differ from those recorded when the split was made"):
        open_store(store).read_split("s")
    report = verify_store(store, workers=1, record=False)
    assert [p.array for p in report.problems] == ["splits/s"]
    result = run_cli("verify", store)  # the patches are sound: it advised re-ingesting them
    assert result.returncode == 4 and "re-ingest" not in result.stderr
    assert result.stderr.strip().endswith("1 problem(s) found, 0 corrupt patch(es); make the split again "
                                          "(benzarr split STORE --name s ... --overwrite)")
    with pytest.raises(StoreCorruptError, match="splits/s: subset sizes"):  # the dataset reads it so too
        BigEarthNetDataset(store, split="s", subset="train")

    def to_minus_two(values: np.ndarray) -> None:
        values[val] = -2

    _rewrite(store, "splits/s", to_minus_two)
    with pytest.raises(StoreCorruptError, match=f"holds code -2 at row {val}"):
        open_store(store).read_split("s")


def test_labels_that_no_longer_match_their_recorded_counts_are_refused(store: Path) -> None:
    def add_a_label(values: np.ndarray) -> None:
        values[3, int(np.flatnonzero(values[3] == 0)[0])] = 1

    _rewrite(store, "labels/clc43", add_a_label)
    with pytest.raises(StoreCorruptError, match="counts differ from those recorded at ingest"):
        open_store(store).labels("clc43")
    open_store(store).labels("clc19")  # the other label set is sound
    result = run_cli("verify", store, "--no-record")
    assert result.returncode == 4 and "labels/clc43" in result.stdout and "recorded at ingest" in result.stdout

    def a_two(values: np.ndarray) -> None:
        values[5, 0] = 2

    _rewrite(store, "labels/clc19", a_two)
    with pytest.raises(StoreCorruptError, match="holds 2 at row 5, class 0"):
        open_store(store).labels("clc19")


def test_corrupt_label_chunk_is_found_through_zarr_python(store: Path) -> None:
    chunk = next(p for p in (store / "labels/clc43" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x00garbage" * 4)
    report = verify_store(store, workers=1)
    assert [p.array for p in report.problems] == ["labels/clc43"]
    assert report.problems[0].rows == list(range(64))


def test_decode_also_decodes_chunks_whose_crc32c_matches(store: Path) -> None:
    import google_crc32c

    path, offset, nbytes = chunk_span(store, "s2/10m", 40)
    raw = bytearray(path.read_bytes())
    body = offset + nbytes - 4
    raw[offset + 16:body] = b"\xff" * (body - offset - 16)  # keep the Blosc header, garble the blocks
    raw[body:body + 4] = google_crc32c.value(bytes(raw[offset:body])).to_bytes(4, "little")  # a writer's bug
    path.write_bytes(bytes(raw))
    assert verify_store(store, workers=1, record=False).ok  # the crc32c vouches for the bytes as written
    [problem] = verify_store(store, workers=1, record=False, decode=True).problems
    assert "does not decode" in problem.message and problem.rows == [40]


def test_workers_find_the_same_problems_as_one_process(store: Path) -> None:
    flip_chunk_data(store, "s2/10m", 3)
    flip_chunk_data(store, "s2/20m", 60)
    one = verify_store(store, workers=1, record=False)
    two = verify_store(store, workers=2, record=False)
    assert two.workers == 2
    assert [(p.array, p.rows) for p in two.problems] == [(p.array, p.rows) for p in one.problems]
    assert two.chunks == one.chunks and len(one.bad_patches) == 2


def test_progress_counts_up_to_its_total(store: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    verify_store(store, workers=1, record=False, progress=lambda n, total=None: seen.append((n, total)))
    assert seen[0][0] == 0 and seen[0][1] == sum(n for n, _ in seen[1:])


def test_cli_names_corrupt_patches_and_exits_4(store: Path) -> None:
    flip_chunk_data(store, "s2/10m", 5)
    path = shard_path(store, "s2/60m", 2)
    flip(path, path.stat().st_size - 30)
    (store / "meta/epsg" / "zarr.json").write_text("garbage")
    result = run_cli("verify", store)
    assert result.returncode == 4, result.stderr
    assert "CORRUPT: 3 problem(s), 17 patch(es)" in result.stdout
    assert patch_name(store, 5) in result.stdout and "meta/epsg" in result.stdout
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    as_json = run_cli("verify", store, "--json", "--workers", "1")
    assert as_json.returncode == 4
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and len(data["bad_patches"]) == 17 and len(data["problems"]) == 3


def test_cli_clean_store_exits_0_and_info_shows_last_verified(store: Path) -> None:
    assert "never verified" in run_cli("info", store).stdout
    result = run_cli("verify", store)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "crc32c on every band chunk" in result.stdout
    info = run_cli("info", store).stdout
    assert "last verified" in info and "OK" in info


# -- format 1 -------------------------------------------------------------------------


@pytest.fixture()
def format_1_store(tmp_path: Path, synth_archive_64: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The 64-patch archive ingested as benzarr 0.x wrote it: format 1, no chunk checksums."""
    import benzarr.store as store_module
    from benzarr.ingest import ingest

    original = store_module.band_compressors
    monkeypatch.setattr(store_module, "FORMAT_VERSION", 1)
    monkeypatch.setattr(store_module, "band_compressors",
                        lambda compression, dtype="uint16", checksum=True: original(compression, dtype, False))
    path = tmp_path / "v1.zarr"
    ingest(synth_archive_64, path, workers=1, shard_size=SHARD, compression="none")
    monkeypatch.undo()
    return path


def test_format_1_store_reads_and_verifies_without_chunk_checksums(format_1_store: Path, synth_store_64: Path) -> None:
    assert open_store(format_1_store).format_version == 1
    inner = json.loads((format_1_store / "s2/10m" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes"]
    old, new = BigEarthNetDataset(format_1_store), BigEarthNetDataset(synth_store_64)
    np.testing.assert_array_equal(old[17]["image"].numpy(), new[17]["image"].numpy())
    report = verify_store(format_1_store, workers=1)
    assert report.ok and not report.checksums and report.format_version == 1
    assert describe_store(format_1_store)["checksums"] is False
    info = run_cli("info", format_1_store).stdout
    assert "without chunk checksums" in info


# -- chunk files of the row arrays (A6) ---------------------------------------------------------


@pytest.mark.parametrize("chunk, array, rows", [
    ("meta/patch_name/c/0", "meta/patch_name", list(range(64))),
    ("meta/bounds/c/0/0", "meta/bounds", list(range(64))),
    ("meta/valid/c/0", "meta/valid", list(range(64))),
    ("ingest/done/c/2", "ingest/done", []),
    ("ingest/band_stats/c/1/0/0", "ingest/band_stats", []),
    ("labels/patch/c/0", "labels/patch", []),
])
def test_a_deleted_chunk_of_a_row_array_is_named_not_read_as_fill_values(store: Path, chunk: str, array: str,
                                                                          rows: list[int]) -> None:
    """zarr reads a missing chunk as fill values, so verify said OK for a store without its patch
    names (`split --export` then wrote blank names), bounds, done flags or statistics."""
    (store / chunk).unlink()
    report = verify_store(store, workers=1)
    assert not report.ok
    [problem] = [p for p in report.problems if p.array == array]
    assert f"chunk file {store / chunk} is missing" in problem.message
    assert problem.rows == rows
    result = run_cli("verify", store)
    assert result.returncode == 4 and f"{store / chunk} is missing" in result.stdout


def test_a_deleted_array_zarr_json_is_named_not_the_array(store: Path) -> None:
    """With s2/10m/zarr.json deleted and its chunks there, verify said "s2/10m: array is missing"."""
    (store / "s2" / "10m" / "zarr.json").unlink()
    result = run_cli("verify", store, "--no-record")
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"{store / 's2' / '10m' / 'zarr.json'}: the array's zarr.json is missing (its folder is there)" \
        in result.stdout and "array is missing" not in result.stdout


def test_patch_names_with_a_deleted_chunk_are_an_error_not_blank_names(store: Path, tmp_path: Path) -> None:
    assert run_cli("split", store, "--name", "r", "--method", "random", "-q").returncode == 0
    (store / "meta/patch_name/c/0").unlink()
    with pytest.raises(StoreCorruptError, match=r"meta/patch_name: 64 row\(s\) have no patch name"):
        open_store(store).patch_names()
    result = run_cli("split", store, "--name", "r", "--export", tmp_path / "lists")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "no patch name" in result.stderr
    assert not (tmp_path / "lists").exists()


def test_chunks_that_hold_only_fill_values_may_be_absent(synth_archive_64: Path, tmp_path: Path) -> None:
    """zarr writes no chunk that holds fill values only: a shard whose patches all failed has no
    statistics chunk, a store without failures no meta/error chunk; neither is damage."""
    from benzarr.ingest import ingest

    archive = copy_tree(synth_archive_64, tmp_path / "archive")
    for folder in sorted(p for p in archive.iterdir() if p.is_dir())[:SHARD]:  # the whole first shard fails
        next(folder.glob("*_B02.tif")).unlink()
    store = tmp_path / "s.zarr"
    assert len(ingest(archive, store, workers=1, shard_size=SHARD).failed) == SHARD
    assert not (store / "ingest/band_stats/c/0/0/0").exists() and not (store / "meta/s1_name/c/0").exists()
    assert verify_store(store, workers=1).ok
