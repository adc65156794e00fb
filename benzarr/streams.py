"""CUDA stream switching at a fraction of the host cost of ``torch.cuda.stream``.

Why (issue #10): the loader switches streams and reads the consumer's current stream several
times a batch, in the main process, whose time comes off every step of a host-bound model
(resnet18: a 14-16 ms step, the main process at 100% of a core). A cProfile of ``next()`` on
the H200 node (``benchmarks/gpu_next_profile.py``, session 22) found 8 lookups of the *current
device* a batch, each through ``torch.cuda.is_available()`` and an environment read: about
260 µs of a 1.0 ms ``next()``. They come from ``torch.device("cuda")`` without an index
(``torch.cuda.current_stream(device)`` resolves it on every call) and from
``torch.cuda.stream(s)``, whose context object asks for the current device twice. A device
*index* (an int) takes torch's fast path; :func:`on_stream` does what ``torch.cuda.stream``
does for a stream of the current device, with one cheap device read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def device_index(device: torch.device) -> int:
    """The CUDA device index ``device`` means now (``cuda`` without an index: the current
    device). Resolve it once, where a loader is made: torch resolves an index-less device on
    every stream call."""
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def on_stream(stream: Any) -> Iterator[None]:
    """``with torch.cuda.stream(stream)``: work queued inside goes to ``stream``, and the
    stream current before is current again after.

    A stream of another device than the current one takes ``torch.cuda.stream`` itself:
    ``torch.cuda.set_stream`` also makes the stream's device current, which only
    ``torch.cuda.stream`` puts back."""
    index = stream.device_index
    if torch.cuda.current_device() != index:
        with torch.cuda.stream(stream):
            yield
        return
    previous = torch.cuda.current_stream(index)
    torch.cuda.set_stream(stream)
    try:
        yield
    finally:
        torch.cuda.set_stream(previous)
