"""benzarr.streams: the loader's cheap ``torch.cuda.stream`` and ``torch.cuda.current_stream``.

The machines that run the suite have no GPU, so the torch C calls they use (current device,
a device's current stream, set a stream) are replaced by a recorder here;
``benchmarks/gpu_ring_check.py`` checks the same on a GPU (its case "on_stream: the stream
inside, the previous one after"), and its ring cases check the loader's batches through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benzarr import streams
from benzarr.streams import current_stream, device_index, on_stream


@dataclass(frozen=True)
class FakeStream:
    name: str
    device_index: int
    stream_id: int = 0
    device_type: int = 1


class FakeCuda:
    """torch's current device and per-device current stream (as its C calls see them), and
    what was called."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.streams = {"default0": FakeStream("default0", 0, 0), "default1": FakeStream("default1", 1, 0),
                        "side": FakeStream("side", 0, 7), "other": FakeStream("other", 1, 9)}
        self.current = {0: self.streams["default0"], 1: self.streams["default1"]}
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: self.device, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_getCurrentStream", self.get_current, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_setStream", self.set_stream, raising=False)
        monkeypatch.setattr(torch.cuda, "stream", self.stream_context)
        monkeypatch.setattr(torch.cuda, "Stream", self.make_stream)
        monkeypatch.setattr(streams, "_STREAMS", {})

    def get_current(self, index: object) -> tuple[int, int, int]:
        assert isinstance(index, int), "an int: torch's cheap path"
        s = self.current[index]
        return (s.stream_id, s.device_index, s.device_type)

    def by_key(self, stream_id: int, device_index: int) -> FakeStream:
        return next(s for s in self.streams.values() if (s.stream_id, s.device_index) == (stream_id, device_index))

    def set_stream(self, stream_id: int, device_index: int, device_type: int) -> None:
        # as torch's: the stream's device becomes current
        stream = self.by_key(stream_id, device_index)
        self.calls.append(f"set {stream.name}")
        self.current[device_index] = stream
        self.device = device_index

    def make_stream(self, stream_id: int, device_index: int, device_type: int) -> FakeStream:
        self.calls.append("new Stream")
        return self.by_key(stream_id, device_index)

    def stream_context(self, stream: FakeStream) -> object:
        self.calls.append(f"torch.cuda.stream {stream.name}")
        fake = self

        class Context:
            def __enter__(self) -> None:
                self.saved = (fake.device, dict(fake.current))
                fake.current[stream.device_index] = stream

            def __exit__(self, *exc: object) -> None:
                fake.device, fake.current = self.saved[0], self.saved[1]

        return Context()


def test_on_stream_sets_the_stream_and_restores_the_previous_one_also_after_an_error(monkeypatch):
    cuda = FakeCuda(device=0)
    cuda.install(monkeypatch)
    side = cuda.streams["side"]
    with on_stream(side):
        assert cuda.current[0] == side
    assert cuda.current[0].name == "default0" and cuda.device == 0
    with pytest.raises(KeyError), on_stream(side):
        raise KeyError("inside")
    assert cuda.current[0].name == "default0"
    assert cuda.calls == ["set side", "set default0", "set side", "set default0"]


def test_on_stream_of_another_device_goes_through_torch_cuda_stream(monkeypatch):
    # torch.cuda.set_stream also makes the stream's device current: only torch.cuda.stream
    # puts both the device and that device's stream back
    cuda = FakeCuda(device=0)
    cuda.install(monkeypatch)
    other = cuda.streams["other"]
    with on_stream(other):
        assert cuda.current[1] == other
    assert cuda.calls == ["torch.cuda.stream other"]
    assert cuda.device == 0 and cuda.current[1].name == "default1"


def test_device_index_keeps_an_explicit_index_and_resolves_a_bare_cuda_once(monkeypatch):
    assert device_index(torch.device("cuda", 3)) == 3
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert device_index(torch.device("cuda")) == 2


def test_current_stream_is_the_current_one_as_one_object_per_stream(monkeypatch):
    # torch.cuda.current_stream builds a new Stream object on every call (~15 us of the main
    # process, six times a batch): one object per stream id, and always the current stream
    cuda = FakeCuda(device=0)
    cuda.install(monkeypatch)
    first = current_stream(0)
    assert first == cuda.streams["default0"] and current_stream(0) is first
    with on_stream(cuda.streams["side"]):
        assert current_stream(0) == cuda.streams["side"]
    assert current_stream(0) is first and current_stream(1) == cuda.streams["default1"]
    assert cuda.calls.count("new Stream") == 3  # default0, side, default1: once each
    monkeypatch.setattr(streams, "_STREAMS_KEPT", 3)  # the cache starts afresh past its bound
    cuda.current[1] = cuda.streams["other"]
    assert current_stream(1) == cuda.streams["other"] and len(streams._STREAMS) == 1
