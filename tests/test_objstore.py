"""The obstore reader against a real S3 server (moto) on loopback: same batches as zarr-python,
corrupt chunks and indexes named, indexes fetched once, adjacent rows coalesced, workers."""

from __future__ import annotations

import pickle
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("obstore")

from benzarr.data import BigEarthNetDataset, make_loader  # noqa: E402
from benzarr.errors import StoreCorruptError  # noqa: E402
from benzarr.objstore import ObjectStoreReader, obstore_settings  # noqa: E402
from benzarr.shards import CRC_BYTES, ZarrRowReader  # noqa: E402

GROUPS = ("s2/10m", "s2/20m", "s2/60m")


def upload(s3: dict, store: Path, bucket: str) -> str:
    """``store`` uploaded to a new bucket of the moto server: its s3:// URL."""
    client = s3["client"]
    client.create_bucket(Bucket=bucket)
    for path in store.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"store.zarr/{path.relative_to(store).as_posix()}")
    return f"s3://{bucket}/store.zarr"


class CountingProxy:
    """A TCP proxy in front of the S3 server that counts the HTTP GETs passing through."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.gets = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _seen(self, data: bytes, source: socket.socket, sink: socket.socket, request: bool) -> None:
        """Called with each chunk passing through (``request``: client to server)."""
        if request:
            with self.lock:
                self.gets += data.count(b"GET /")

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                self._seen(data, source, sink, count)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def s3_store(s3_server: dict, synth_store_64: Path) -> Iterator[tuple[str, dict]]:
    """The 64-patch lz4 store (shards of 16) on the moto server: (URL, storage_options)."""
    yield upload(s3_server, synth_store_64, "objstore-test"), s3_server["options"]


def options_via(s3_server: dict, endpoint: str) -> dict:
    return {**s3_server["options"], "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def test_url_stores_use_the_obstore_reader_and_match_zarr_python(s3_store: tuple[str, dict], synth_store_64: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, options = s3_store
    fast = BigEarthNetDataset(url, storage_options=options)
    assert all(isinstance(r, ObjectStoreReader) for r in fast.readers.values())
    assert "testing" not in repr(fast.readers["10m"])  # no credential in a repr
    monkeypatch.setenv("BENZARR_OBJECT_READER", "zarr")
    reference = BigEarthNetDataset(url, storage_options=options)
    assert all(isinstance(r, ZarrRowReader) for r in reference.readers.values())
    local = BigEarthNetDataset(synth_store_64)
    rng = np.random.default_rng(0)
    for indices in ([63, 2, 17, 2, 16, 15], rng.integers(64, size=40), np.arange(64), [5]):
        a, b, c = fast.read_batch(indices), reference.read_batch(indices), local.read_batch(indices)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_reader_reads_any_order_into_out(s3_store: tuple[str, dict]) -> None:
    url, options = s3_store
    ds = BigEarthNetDataset(url, bands=["B04"], storage_options=options)
    reader = ds.readers["10m"]
    want = ds.readers["10m"].read(np.arange(64))
    rows = np.array([40, 3, 3, 63, 0, 17])
    out = np.full((6, *reader.shape[1:]), 7, dtype=reader.dtype)
    assert reader.read(rows, out) is out
    assert np.array_equal(out, want[rows])
    assert reader.read([]).shape == (0, *reader.shape[1:])
    with pytest.raises(IndexError):
        reader.read([64])


def test_index_read_once_per_shard_and_process(s3_server: dict, s3_store: tuple[str, dict]) -> None:
    url, _ = s3_store
    proxy = CountingProxy(s3_server["endpoint"])
    try:
        ds = BigEarthNetDataset(url, bands=["B04"], storage_options=options_via(s3_server, proxy.endpoint))
        reader = ds.readers["10m"]
        before = proxy.gets
        reader.read([0, 20, 40, 60])  # four shards: four index GETs, four chunk GETs
        assert proxy.gets - before == 8
        assert reader.counts.index == 4 and reader.counts.ranges == 4
        before = proxy.gets
        reader.read([1, 21, 41, 61])  # indexes cached: chunks only
        reader.read([1])
        assert proxy.gets - before == 5
        assert reader.counts.per_shard_index == {0: 1, 1: 1, 2: 1, 3: 1}
        # a copy in another process starts with nothing cached and reads its indexes itself
        copy = pickle.loads(pickle.dumps(reader))
        assert copy.counts.index == 0 and copy._indexes == {}
        assert np.array_equal(copy.read([5, 6]), reader.read([5, 6]))
        assert copy.counts.index == 1
    finally:
        proxy.close()


def test_adjacent_rows_coalesced(s3_store: tuple[str, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    url, options = s3_store
    ds = BigEarthNetDataset(url, bands=["B04"], storage_options=options)
    reader = ds.readers["10m"]
    reader.read(np.arange(64))  # every index cached
    reader.counts.ranges = 0
    reader.read([3, 0, 1, 2, 2])  # rows 0-3 of shard 0, back to back: one request
    assert reader.counts.ranges == 1
    reader.counts.ranges = 0
    reader.read([0, 2, 15, 16])  # 0 | 2 | 15 (end of shard 0) | 16 (start of shard 1)
    assert reader.counts.ranges == 4
    reader.counts.ranges = 0
    reader.read(np.arange(64))  # four shards, four requests
    assert reader.counts.ranges == 4
    import benzarr.objstore as objstore

    monkeypatch.setattr(objstore, "MAX_REQUEST_BYTES", 1)  # no coalescing past the cap
    reader.counts.ranges = 0
    got = reader.read(np.arange(16))
    assert reader.counts.ranges == 16
    assert np.array_equal(got, BigEarthNetDataset(url, bands=["B04"], storage_options=options).readers["10m"].read(np.arange(16)))


def test_max_concurrency_one_still_reads_everything(s3_store: tuple[str, dict]) -> None:
    url, options = s3_store
    ds = BigEarthNetDataset(url, storage_options=options)
    reader = ds.readers["20m"]
    slow = ObjectStoreReader(reader.url, reader.path, reader.layout, reader.name, options, max_concurrency=1)
    rows = [9, 33, 1, 50]
    assert np.array_equal(slow.read(rows), reader.read(rows))


def _corrupt_copy(source: Path, target: Path, change) -> Path:
    shutil.copytree(source, target)
    shard = target / "s2" / "10m" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    change(data)
    shard.write_bytes(bytes(data))
    return target


def test_corrupt_chunk_names_array_row_and_patch(s3_server: dict, synth_store_64: Path, tmp_path: Path) -> None:
    def flip_first_chunk_byte(data: bytearray) -> None:
        data[40] ^= 0xFF  # inside row 16's chunk (the first of shard 1), after its Blosc header

    store = _corrupt_copy(synth_store_64, tmp_path / "bad.zarr", flip_first_chunk_byte)
    url = upload(s3_server, store, "objstore-bad-chunk")
    ds = BigEarthNetDataset(url, storage_options=s3_server["options"])
    assert isinstance(ds.readers["10m"], ObjectStoreReader)
    name = str(BigEarthNetDataset(synth_store_64)._opened().patch_names()[16])
    with pytest.raises(StoreCorruptError) as caught:
        ds.read_batch([3, 16, 40])
    message = str(caught.value)
    assert "s2/10m" in message and "row 16" in message and name in message and "crc32c" in message
    assert "testing" not in message
    ds.read_batch([3, 17, 40])  # the other rows still read


def test_corrupt_index_is_refused(s3_server: dict, synth_store_64: Path, tmp_path: Path) -> None:
    def flip_index_byte(data: bytearray) -> None:
        data[-CRC_BYTES - 3] ^= 0x01

    store = _corrupt_copy(synth_store_64, tmp_path / "bad-index.zarr", flip_index_byte)
    url = upload(s3_server, store, "objstore-bad-index")
    ds = BigEarthNetDataset(url, storage_options=s3_server["options"])
    with pytest.raises(StoreCorruptError, match=r"s2/10m.*c/1/0/0/0.*index fails its crc32c"):
        ds.read_batch([20])
    ds.read_batch([0, 63])


def test_missing_shard_object_reads_as_fill_value(s3_server: dict, s3_store: tuple[str, dict]) -> None:
    url, options = s3_store
    reader = BigEarthNetDataset(url, storage_options=options).readers["10m"]
    s3_server["client"].copy_object(Bucket="objstore-test", Key="store.zarr/s2/10m/c/1/0/0/0.keep",
                                    CopySource={"Bucket": "objstore-test", "Key": "store.zarr/s2/10m/c/1/0/0/0"})
    s3_server["client"].delete_object(Bucket="objstore-test", Key="store.zarr/s2/10m/c/1/0/0/0")
    try:
        fresh = ObjectStoreReader(reader.url, reader.path, reader.layout, reader.name, options)
        got = fresh.read([16, 0])
        assert (got[0] == reader.layout.fill_value).all() and got[1].any()
    finally:
        s3_server["client"].copy_object(Bucket="objstore-test", Key="store.zarr/s2/10m/c/1/0/0/0",
                                        CopySource={"Bucket": "objstore-test", "Key": "store.zarr/s2/10m/c/1/0/0/0.keep"})


def test_loader_workers_open_their_own_clients(s3_store: tuple[str, dict]) -> None:
    url, options = s3_store
    ds = BigEarthNetDataset(url, bands="rgb", storage_options=options)
    ds.read_batch([0, 1])  # the parent has a client and a loop thread before the workers fork
    serial = [b["image"] for b in make_loader(ds, 16, False, 0, seed=0, device="cpu")]
    forked = [b["image"] for b in make_loader(ds, 16, False, 2, seed=0, device="cpu")]
    assert len(serial) == len(forked) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial, forked))


def test_storage_options_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    config, client = obstore_settings("s3://b/s.zarr", {
        "key": "K", "secret": "S", "anon": False, "asynchronous": True,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}})
    assert config == {"access_key_id": "K", "secret_access_key": "S", "endpoint": "http://127.0.0.1:9000",
                      "region": "eu-west-1"}
    assert client == {"allow_http": True}
    assert obstore_settings("s3://b/s.zarr", {"endpoint_url": "https://s3.example.org"}) == (
        {"endpoint": "https://s3.example.org"}, {})
    assert obstore_settings("s3://b/s.zarr", {"anon": True}) == ({"skip_signature": True}, {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
    assert obstore_settings("s3://b/s.zarr", None) == ({}, {"allow_http": True})
    # what obstore cannot take here is left to zarr-python and fsspec
    assert obstore_settings("s3://b/s.zarr", {"profile": "work"}) is None
    assert obstore_settings("s3://b/s.zarr", {"client_kwargs": {"config": object()}}) is None
    assert obstore_settings("gs://b/s.zarr", {"token": "x.json"}) is None
    assert obstore_settings("gs://b/s.zarr", None) == ({}, {})
    assert obstore_settings("memory://x", None) is None


def test_bench_cli_reads_s3_with_the_obstore_reader(s3_server: dict, s3_store: tuple[str, dict],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``benzarr bench s3://... --endpoint-url URL`` with credentials from the AWS variables."""
    import json

    from typer.testing import CliRunner

    from benzarr_cli.main import app

    url, _ = s3_store
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_REGION", "us-east-1"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    import benzarr.bench
    from benzarr.objstore import max_concurrency_default

    monkeypatch.setenv("BENZARR_MAX_CONCURRENCY", "64")
    seen: list[int] = []  # the requests in flight while the command measures
    measure = benzarr.bench.bench_store

    def bench_store(*args: object, **kwargs: object) -> list:
        seen.append(max_concurrency_default())
        return measure(*args, **kwargs)

    monkeypatch.setattr(benzarr.bench, "bench_store", bench_store)
    result = CliRunner().invoke(app, ["bench", url, "--endpoint-url", s3_server["endpoint"], "--workers", "0",
                                      "--seconds", "0.01", "--batch-size", "8", "--max-concurrency", "8", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["patches_per_s"] > 0 for r in rows)
    assert seen == [8]
    # and as it was after it: the command may run inside a longer-lived process (it stayed 8)
    assert max_concurrency_default() == 64
    assert "testing" not in result.output


class InFlightProxy(CountingProxy):
    """A proxy that holds each GET 50 ms and records which arrays had GETs in flight at once."""

    def __init__(self, endpoint: str) -> None:
        self.in_flight: dict[int, list[str]] = {}  # connection -> arrays of its unanswered GETs
        self.most_arrays = 0
        super().__init__(endpoint)

    def _seen(self, data: bytes, source: socket.socket, sink: socket.socket, request: bool) -> None:
        import re
        import time

        key = id(source) if request else id(sink)  # the client-side socket names the connection
        with self.lock:
            queue = self.in_flight.setdefault(key, [])
            if request:
                queue += [m.decode() for m in re.findall(rb"GET /[^/]+/store\.zarr/(s2/\w+)/", data)]
                arrays = {a for q in self.in_flight.values() for a in q}
                self.most_arrays = max(self.most_arrays, len(arrays))
            elif data.startswith(b"HTTP/1.1") and queue:
                queue.pop(0)
        if request:
            time.sleep(0.05)


def test_a_batch_sends_every_band_arrays_requests_before_decoding_any(s3_server: dict, s3_store: tuple[str, dict],
                                                                    synth_store_64: Path) -> None:
    url, _ = s3_store
    proxy = InFlightProxy(s3_server["endpoint"])
    try:
        ds = BigEarthNetDataset(url, storage_options=options_via(s3_server, proxy.endpoint))
        ds.read_batch(np.arange(64))  # every shard index fetched and cached
        proxy.most_arrays = 0
        batch = ds.read_batch([5, 40, 17, 63])
        assert proxy.most_arrays == 3  # 10m, 20m and 60m requests were out together
        local = BigEarthNetDataset(synth_store_64).read_batch([5, 40, 17, 63])
        assert all(torch.equal(batch[k], local[k]) for k in local)
    finally:
        proxy.close()


class RangeHandler:
    """A static file server with single byte-range support (``Range: bytes=a-b`` and
    ``bytes=-n``), as any web server or CDN has; Python's own http.server ignores ranges."""

    @staticmethod
    def serve(root: Path) -> tuple[Any, str]:
        import http.server
        import re

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, head_only: bool) -> None:
                path = root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if match:
                    a, b = match.groups()
                    start, end = (len(data) - int(b), len(data) - 1) if a == "" else (int(a), int(b or len(data) - 1))
                    body = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._send(False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._send(True)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_an_http_store_reads_through_obstore_like_the_local_store(synth_store_64: Path, tmp_path: Path) -> None:
    # obstore refuses plain http unless told: an http:// store URL says so (it failed before)
    assert obstore_settings("http://example.org/s.zarr", None) == ({}, {"allow_http": True})
    assert obstore_settings("https://example.org/s.zarr", None) == ({}, {})
    shutil.copytree(synth_store_64, tmp_path / "site" / "store.zarr")
    server, root = RangeHandler.serve(tmp_path / "site")
    try:
        remote = BigEarthNetDataset(f"{root}/store.zarr")
        assert all(isinstance(r, ObjectStoreReader) for r in remote.readers.values())
        local = BigEarthNetDataset(synth_store_64)
        indices = [63, 2, 17, 2, 40]
        a, b = remote.read_batch(indices), local.read_batch(indices)
        assert all(torch.equal(a[k], b[k]) for k in b)
    finally:
        server.shutdown()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("BENZARR_MAX_CONCURRENCY", "64k", "BENZARR_MAX_CONCURRENCY='64k': give a positive number of requests in flight "
                                       "(default 64), or unset it"),
    ("BENZARR_MAX_CONCURRENCY", "-3", "BENZARR_MAX_CONCURRENCY='-3': give a positive number"),
    ("BENZARR_OBJECT_READER", "zar", "BENZARR_OBJECT_READER='zar': use obstore (the default) or zarr"),
])
def test_a_junk_environment_setting_is_one_line_not_the_default(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                value: str, message: str) -> None:
    """A typo in these variables gave the default without a word, as if they were unset (as
    BENZARR_CUDA_GRAPHS's does, it is now refused); unset or empty still means the default."""
    from benzarr.errors import InvalidArgumentError
    from benzarr.objstore import max_concurrency_default, url_reader

    def read() -> object:
        return max_concurrency_default() if name == "BENZARR_MAX_CONCURRENCY" else url_reader(object(), "s2/10m")

    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgumentError) as caught:
        read()
    assert str(caught.value).startswith(message)
    monkeypatch.setenv(name, "")
    assert read() in (64, None)  # the default; url_reader: not an fsspec store, left to zarr-python
