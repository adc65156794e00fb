"""benzarr.streams: the loader's cheap ``torch.cuda.stream``.

The machines that run the suite have no GPU, so torch.cuda's four calls are replaced by a
recorder here; ``benchmarks/gpu_ring_check.py`` checks the same on a GPU (its case
"on_stream: the stream inside, the previous one after"), and its ring cases check the
loader's batches through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benzarr.streams import device_index, on_stream


@dataclass(frozen=True)
class FakeStream:
    name: str
    device_index: int


class FakeCuda:
    """torch.cuda's current device and per-device current stream, and what was called."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.current = {0: FakeStream("default0", 0), 1: FakeStream("default1", 1)}
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(torch.cuda, "current_stream", self.current_stream)
        monkeypatch.setattr(torch.cuda, "set_stream", self.set_stream)
        monkeypatch.setattr(torch.cuda, "stream", self.stream_context)

    def current_stream(self, index: object = None) -> FakeStream:
        assert isinstance(index, int), "an int: torch's cheap path"
        return self.current[index]

    def set_stream(self, stream: FakeStream) -> None:  # as torch's: the stream's device becomes current
        self.calls.append(f"set {stream.name}")
        self.current[stream.device_index] = stream
        self.device = stream.device_index

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
    side = FakeStream("side", 0)
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
    other = FakeStream("other", 1)
    with on_stream(other):
        assert cuda.current[1] == other
    assert cuda.calls == ["torch.cuda.stream other"]
    assert cuda.device == 0 and cuda.current[1].name == "default1"


def test_device_index_keeps_an_explicit_index_and_resolves_a_bare_cuda_once(monkeypatch):
    assert device_index(torch.device("cuda", 3)) == 3
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert device_index(torch.device("cuda")) == 2
