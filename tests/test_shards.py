"""The memory-mapped shard reader returns exactly what zarr-python returns, checks every chunk's
crc32c (store format 2), reads format 1 stores (no chunk checksums), and names corruption."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, GzipCodec

from benzarr.errors import StoreCorruptError
from benzarr.shards import EMPTY, ShardReader, ZarrRowReader, fast_reader, parse_layout, row_reader
from benzarr.store import band_compressors

ROW_SHAPE = (2, 6, 6)


def make_array(path: Path, data: np.ndarray, shard_rows: int, compression: str, written: np.ndarray,
               checksum: bool = True) -> zarr.Array:
    """A band-like array as ``benzarr ingest`` writes it (format 2; ``checksum=False``: format 1);
    only rows in ``written`` are stored."""
    array = zarr.create_array(
        str(path), shape=data.shape, dtype="uint16", chunks=(1, *data.shape[1:]),
        shards=(shard_rows, *data.shape[1:]), compressors=band_compressors(compression, checksum=checksum),
        fill_value=0, zarr_format=3,
    )
    for row in np.flatnonzero(written):
        array[row] = data[row]
    return array


def read_both(path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reader = fast_reader(path, "test")
    assert isinstance(reader, ShardReader)
    return reader.read(rows), zarr.open_array(str(path), mode="r")[:][rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40),
    shard_exp=st.integers(0, 4),
    compression=st.sampled_from(["none", "lz4", "zstd"]),
    checksum=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_reader_equals_zarr_python_on_random_stores(tmp_path_factory: pytest.TempPathFactory, n: int,
                                                     shard_exp: int, compression: str, checksum: bool, seed: int,
                                                     data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**16, size=(n, *ROW_SHAPE), dtype=np.uint16)
    # some rows stay unwritten (empty chunks -> fill value), some are all zero (zarr skips them)
    written = rng.random(n) < 0.85
    values[rng.random(n) < 0.1] = 0
    path = tmp_path_factory.mktemp("arr") / "a.zarr"
    make_array(path, values, 2**shard_exp, compression, written, checksum)
    rows = np.asarray(data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n)), dtype=np.int64)
    mine, theirs = read_both(path, rows)
    assert mine.dtype == theirs.dtype == np.uint16
    np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_reader_equals_zarr_python_on_patch_sized_rows(tmp_path: Path, compression: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 12000, size=(11, 4, 120, 120), dtype=np.uint16)
    path = tmp_path / "a.zarr"
    make_array(path, values, 4, compression, np.ones(11, bool))  # shards of 4, 4, 3 rows
    rows = rng.integers(0, 11, size=30)
    mine, theirs = read_both(path, rows)
    np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(mine, values[rows])


@pytest.mark.parametrize("checksum", [True, False], ids=["format2", "format1"])
def test_layout_of_ingest_codecs_is_supported(tmp_path: Path, checksum: bool) -> None:
    for compression, codec in [("none", "raw"), ("lz4", "blosc"), ("zstd", "blosc")]:
        make_array(tmp_path / compression, np.zeros((3, *ROW_SHAPE), np.uint16), 2, compression, np.zeros(3, bool),
                   checksum)
        metadata = json.loads((tmp_path / compression / "zarr.json").read_text())
        inner = [c["name"] for c in metadata["codecs"][0]["configuration"]["codecs"]]
        assert (inner[-1] == "crc32c") is checksum  # zarr's own codec, last in the inner chain
        layout = parse_layout(metadata)
        assert layout is not None and layout.codec == codec and layout.shard_rows == 2
        assert layout.checksum is checksum


def test_other_codecs_fall_back_to_zarr_python(tmp_path: Path) -> None:
    values = np.arange(5 * 8, dtype=np.uint16).reshape(5, 2, 2, 2)
    gzip = zarr.create_array(str(tmp_path / "gzip"), shape=values.shape, dtype="uint16", chunks=(1, 2, 2, 2),
                             shards=(2, 2, 2, 2), compressors=[GzipCodec()], zarr_format=3)
    gzip[:] = values
    unsharded = zarr.create_array(str(tmp_path / "plain"), shape=values.shape, dtype="uint16",
                                  chunks=(1, 2, 2, 2), compressors=[BloscCodec(cname="lz4")], zarr_format=3)
    unsharded[:] = values
    for array, folder in [(gzip, "gzip"), (unsharded, "plain")]:
        assert fast_reader(tmp_path / folder, folder) is None
        reader = row_reader(array, folder, tmp_path / folder)
        assert isinstance(reader, ZarrRowReader)
        np.testing.assert_array_equal(reader.read([4, 0, 4]), values[[4, 0, 4]])


def test_missing_shard_file_reads_as_fill_value(tmp_path: Path) -> None:
    values = np.ones((4, *ROW_SHAPE), np.uint16)
    make_array(tmp_path / "a", values, 2, "lz4", np.array([True, True, False, False]))
    assert not (tmp_path / "a" / "c" / "1" / "0" / "0" / "0").exists()
    mine, theirs = read_both(tmp_path / "a", np.arange(4))
    np.testing.assert_array_equal(mine, theirs)


def test_reader_pickles_without_its_maps(tmp_path: Path) -> None:
    values = np.full((4, *ROW_SHAPE), 7, np.uint16)
    make_array(tmp_path / "a", values, 2, "none", np.ones(4, bool))
    reader = fast_reader(tmp_path / "a", "a")
    reader.read([0, 3])
    assert reader._shards
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._shards == {}
    np.testing.assert_array_equal(clone.read([3]), values[[3]])


def test_open_maps_stay_within_the_process_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mapped shard holds a file descriptor (Python's mmap keeps a duplicate): a reader
    kept them all, so a pass over a full-size store ran out of descriptors ("Too many open
    files" at a sixth of BigEarthNet with a limit of 1,024). The maps of all readers stay under
    the budget, and rows read again after their shard was dropped are still right."""
    import os

    import benzarr.shards as shards

    values = np.random.default_rng(0).integers(0, 5000, size=(24, *ROW_SHAPE), dtype=np.uint16)
    make_array(tmp_path / "a", values, 2, "lz4", np.ones(24, bool))
    make_array(tmp_path / "b", values, 2, "none", np.ones(24, bool))
    monkeypatch.setattr(shards, "map_budget", lambda: 4, raising=False)
    readers = [fast_reader(tmp_path / "a", "a"), fast_reader(tmp_path / "b", "b")]
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(2):
        for row in range(24):
            for reader in readers:
                np.testing.assert_array_equal(reader.read([row]), values[[row]])
                assert sum(len(r._shards) for r in readers) <= 4
                assert len(os.listdir("/proc/self/fd")) <= before + 4


def test_shard_maps_hold_no_file_descriptor(tmp_path: Path) -> None:
    """Python's mmap keeps a duplicate descriptor per map: a reader holding a map a shard held a
    descriptor a shard, and a full BigEarthNet store (6,900 maps) ran out of them under the
    usual limit of 1,024. Every shard of both arrays stays mapped, and no descriptor is held."""
    import os

    values = np.random.default_rng(1).integers(0, 5000, size=(24, *ROW_SHAPE), dtype=np.uint16)
    make_array(tmp_path / "a", values, 2, "lz4", np.ones(24, bool))
    make_array(tmp_path / "b", values, 2, "none", np.ones(24, bool))
    readers = [fast_reader(tmp_path / "a", "a"), fast_reader(tmp_path / "b", "b")]
    before = len(os.listdir("/proc/self/fd"))
    for reader in readers:
        np.testing.assert_array_equal(reader.read(np.arange(24)[::-1]), values[::-1])
    assert [len(reader._shards) for reader in readers] == [12, 12]
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_file_map_is_read_only_and_lives_as_long_as_a_view_of_it(tmp_path: Path) -> None:
    """map_file's map is unmapped once neither its owner nor any view of its data is alive,
    and not before (a view read after the owner is gone must not fault)."""
    import gc
    import os
    import struct

    from benzarr.mapped import map_file

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)

    def mapped() -> bool:
        return str(path) in Path("/proc/self/maps").read_text()

    with open(path, "rb") as fh:
        data, owner = map_file(fh.fileno(), os.fstat(fh.fileno()).st_size)
    assert data.dtype == np.uint8 and data.shape == (16384,) and data[300] == 44
    assert struct.unpack_from("<I", owner, 4) == (0x07060504,) and owner[2:5] == b"\x02\x03\x04"
    with pytest.raises(ValueError, match="read-only"):
        data[0] = 1
    view = data[256:512]
    del data, owner
    gc.collect()
    assert mapped() and view[3] == 3  # the view keeps the map
    del view
    gc.collect()
    assert not mapped()


# -- corruption ------------------------------------------------------------------------


def _corrupt_store(tmp_path: Path, compression: str, checksum: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5000, size=(8, *ROW_SHAPE), dtype=np.uint16)
    make_array(tmp_path / "a", values, 4, compression, np.ones(8, bool), checksum)
    return tmp_path / "a", tmp_path / "a" / "c" / "1" / "0" / "0" / "0"


def _reader(path: Path, verify_checksums: bool = True) -> ShardReader:
    return fast_reader(path, "s2/10m", row_name=lambda row: f"PATCH_{row}", verify_checksums=verify_checksums)


def _chunk_span(shard: Path, n_chunks: int, local: int) -> tuple[int, int]:
    """(offset, nbytes) of inner chunk ``local`` from the shard's index."""
    raw = shard.read_bytes()
    index = np.frombuffer(raw[len(raw) - 4 - 16 * n_chunks:-4], dtype="<u8").reshape(n_chunks, 2)
    return int(index[local, 0]), int(index[local, 1])


def _flip(shard: Path, position: int, bit: int = 0) -> None:
    raw = bytearray(shard.read_bytes())
    raw[position] ^= 1 << bit
    shard.write_bytes(bytes(raw))


def test_bad_index_checksum_names_array_file_and_patch(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "lz4")
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index, before the crc
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError) as info:
        _reader(path).read([6])
    message = str(info.value)
    assert "s2/10m" in message and str(shard) in message and "crc32c" in message
    assert "row 6" in message and "PATCH_6" in message
    np.testing.assert_array_equal(_reader(path).read([1]).shape, (1, *ROW_SHAPE))  # other shard fine


def _rewrite_index(shard: Path, n_chunks: int, change: callable) -> None:
    import google_crc32c

    raw = bytearray(shard.read_bytes())
    start = len(raw) - 4 - 16 * n_chunks
    index = np.frombuffer(bytes(raw[start:-4]), dtype="<u8").reshape(n_chunks, 2).copy()
    change(index)
    body = index.tobytes()
    raw[start:-4] = body
    raw[-4:] = google_crc32c.value(body).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))


def test_chunk_outside_the_file_is_corrupt(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "none")

    def push(index: np.ndarray) -> None:
        index[2, 0] = 10**9

    _rewrite_index(shard, 4, push)
    with pytest.raises(StoreCorruptError, match=r"outside.*row 6, patch PATCH_6"):
        _reader(path).read([5])


def test_wrong_chunk_size_is_corrupt(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "none")

    def shrink(index: np.ndarray) -> None:
        index[1, 1] -= 2

    _rewrite_index(shard, 4, shrink)
    # 2 x 6 x 6 uint16 = 144 bytes and its 4-byte crc32c
    with pytest.raises(StoreCorruptError, match=r"expected 148.*row 5, patch PATCH_5"):
        _reader(path).read([5])


def test_undecodable_blosc_chunk_is_corrupt(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "lz4")
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(raw[-4 - 64:-4]), dtype="<u8").reshape(4, 2)
    offset, nbytes = int(index[0, 0]), int(index[0, 1])
    raw[offset + 16:offset + nbytes] = b"\xff" * (nbytes - 16)  # keep the header, garble the blocks
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match=r"s2/10m.*row 4, patch PATCH_4"):
        _reader(path).read([4])


def test_truncated_shard_is_corrupt(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "zstd")
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(StoreCorruptError, match=str(shard)):
        _reader(path).read([7])


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_flipped_byte_in_chunk_data_fails_its_crc32c(tmp_path: Path, compression: str) -> None:
    path, shard = _corrupt_store(tmp_path, compression)
    offset, nbytes = _chunk_span(shard, 4, 2)
    _flip(shard, offset + (nbytes - 4) // 2 + 8)  # past any Blosc header, before the crc
    with pytest.raises(StoreCorruptError) as info:
        _reader(path).read([1, 6, 7])
    message = str(info.value)
    assert "s2/10m" in message and str(shard) in message and "crc32c" in message
    assert "row 6, patch PATCH_6" in message
    assert len(message.splitlines()) == 1
    np.testing.assert_array_equal(_reader(path).read([4, 5, 7]).shape, (3, *ROW_SHAPE))  # its neighbours read


def test_flipped_crc_bytes_fail_the_check(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "lz4")
    offset, nbytes = _chunk_span(shard, 4, 0)
    _flip(shard, offset + nbytes - 1, 7)
    with pytest.raises(StoreCorruptError, match=r"crc32c.*row 4, patch PATCH_4"):
        _reader(path).read([4])


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compression=st.sampled_from(["none", "lz4", "zstd"]), local=st.integers(0, 3), where=st.floats(0, 1),
       bit=st.integers(0, 7))
def test_every_random_bit_flip_in_a_chunk_is_caught(tmp_path_factory: pytest.TempPathFactory, compression: str,
                                                     local: int, where: float, bit: int) -> None:
    """Issue 9: 90 of 90 random flips went unnoticed in format 1; crc32c catches every single-bit error."""
    path, shard = _corrupt_store(tmp_path_factory.mktemp("flip"), compression)
    offset, nbytes = _chunk_span(shard, 4, local)
    _flip(shard, offset + min(int(where * nbytes), nbytes - 1), bit)
    with pytest.raises(StoreCorruptError, match=rf"row {4 + local}, patch PATCH_{4 + local}"):
        _reader(path).read([4 + local])


def test_crc32c_implementations_agree_with_zarrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import google_crc32c

    from benzarr import shards

    rng = np.random.default_rng(3)
    for size in (0, 1, 7, 4096, 100_003):
        buffer = rng.integers(0, 256, size, dtype=np.uint8)
        assert shards.crc32c_value(buffer) == google_crc32c.value(buffer.tobytes())
    # the fallback (google-crc32c alone) checks as well
    monkeypatch.setattr(shards, "crc32c_value", google_crc32c.value)
    path, shard = _corrupt_store(tmp_path, "none")
    _reader(path).read(np.arange(8))
    offset, nbytes = _chunk_span(shard, 4, 1)
    _flip(shard, offset + 3)
    with pytest.raises(StoreCorruptError, match="crc32c.*PATCH_5"):
        _reader(path).read([5])


def test_without_verification_a_flipped_byte_reads_as_wrong_pixels(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "none")
    before = _reader(path).read([6])
    offset, _ = _chunk_span(shard, 4, 2)
    _flip(shard, offset + 10)
    after = _reader(path, verify_checksums=False).read([6])  # the documented switch: no check
    assert (after != before).sum() == 1
    with pytest.raises(StoreCorruptError):
        _reader(path).read([6])


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_zarr_python_refuses_the_same_flipped_byte(tmp_path: Path, compression: str) -> None:
    path, shard = _corrupt_store(tmp_path, compression)
    offset, nbytes = _chunk_span(shard, 4, 3)
    _flip(shard, offset + nbytes - 6)
    array = zarr.open_array(str(path), mode="r")
    with pytest.raises(ValueError, match="checksum"):
        array[7]
    fallback = ZarrRowReader(array, "s2/10m", row_name=lambda row: f"PATCH_{row}")
    with pytest.raises(StoreCorruptError, match=r"s2/10m.*row 7, patch PATCH_7"):
        fallback.read([0, 7, 2])
    np.testing.assert_array_equal(fallback.read([6]), _reader(path).read([6]))


def test_tensorstore_refuses_the_same_flipped_byte(tmp_path: Path) -> None:
    ts = pytest.importorskip("tensorstore")
    path, shard = _corrupt_store(tmp_path, "lz4")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    np.testing.assert_array_equal(ts.open(spec).result()[5].read().result(), _reader(path).read([5])[0])
    offset, nbytes = _chunk_span(shard, 4, 1)
    _flip(shard, offset + nbytes // 2)
    with pytest.raises(ValueError, match="[Dd]igest mismatch"):
        ts.open(spec).result()[5].read().result()


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_format_1_store_reads_without_chunk_checksums(tmp_path: Path, compression: str) -> None:
    path, shard = _corrupt_store(tmp_path, compression, checksum=False)
    reader = _reader(path)
    assert not reader.layout.checksum
    mine, theirs = read_both(path, np.arange(8))
    np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_check_shard_names_every_bad_row_and_keeps_no_map(tmp_path: Path, compression: str) -> None:
    path, shard = _corrupt_store(tmp_path, compression)
    for local in (0, 3):
        offset, nbytes = _chunk_span(shard, 4, local)
        _flip(shard, offset + nbytes // 2)
    reader = _reader(path, verify_checksums=False)  # check_shard checks crc32c regardless
    clean, bad = reader.check_shard(0), reader.check_shard(1)
    assert clean.problems == [] and clean.chunks == 4 and clean.exists
    assert [rows for rows, _ in bad.problems] == [[4], [7]] and bad.chunks == 4
    assert all("crc32c" in message or "decode" in message for _, message in bad.problems)
    assert reader._shards == {} and reader.verify_checksums is False


def test_check_shard_reports_a_bad_index_for_all_its_rows(tmp_path: Path) -> None:
    path, shard = _corrupt_store(tmp_path, "lz4")
    _flip(shard, shard.stat().st_size - 10)
    result = _reader(path).check_shard(1)
    assert len(result.problems) == 1
    rows, message = result.problems[0]
    assert rows == [4, 5, 6, 7] and "index fails its crc32c" in message


def test_empty_marker_constant_matches_spec() -> None:
    assert EMPTY == 0xFFFF_FFFF_FFFF_FFFF


# -- the writer --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), shard=st.sampled_from([1, 2, 4, 8]), compression=st.sampled_from(["none", "lz4", "zstd"]),
       dtype=st.sampled_from(["uint16", "float32"]), seed=st.integers(0, 2**32 - 1), zero_rows=st.sets(st.integers(0, 8)),
       checksum=st.booleans())
def test_shard_writer_writes_zarr_pythons_bytes(rows: int, shard: int, compression: str, dtype: str, seed: int,
                                                zero_rows: set[int], checksum: bool) -> None:
    """Format 2 (inner crc32c) and format 1 alike: encode_shard's bytes are zarr-python's."""
    import json
    import tempfile

    from benzarr.shards import encode_shard
    from benzarr.store import band_compressors

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 5000, (rows, 2, 5, 5)).astype(dtype)
    for r in zero_rows:
        if r < rows:
            data[r] = 0  # fill value: zarr stores no chunk for it
    with tempfile.TemporaryDirectory() as tmp:
        array = zarr.create_array(tmp, shape=data.shape, dtype=dtype, chunks=(1, 2, 5, 5), shards=(shard, 2, 5, 5),
                                  compressors=band_compressors(compression, dtype, checksum), fill_value=0)
        array[:] = data
        metadata = json.loads((Path(tmp) / "zarr.json").read_text())
        for s in range(-(-rows // shard)):
            mine = encode_shard(data[s * shard:(s + 1) * shard], metadata)
            path = Path(tmp) / "c" / str(s) / "0" / "0" / "0"
            assert mine == (path.read_bytes() if path.exists() else None)
