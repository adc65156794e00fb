"""CUDA stream switching and lookups at a fraction of the host cost of ``torch.cuda``'s.

Why (issue #10): the loader switches streams and reads the consumer's current stream several
times a batch, in the main process, whose time comes off every step of a host-bound model
(resnet18: a 10-16 ms step, the main process at 100% of a core). A cProfile of ``next()`` on
the H200 node (``benchmarks/gpu_next_profile.py``, session 22) found 8 lookups of the *current
device* a batch, each through ``torch.cuda.is_available()`` and an environment read: about
260 µs of a 1.0 ms ``next()``. They came from ``torch.device("cuda")`` without an index
(``torch.cuda.current_stream(device)`` resolves it on every call) and from
``torch.cuda.stream(s)``, whose context object asks for the current device twice. After that
fix, the same profile still spent about 100 µs a batch building ``torch.cuda.Stream`` objects
(``torch.cuda.current_stream`` makes a new one on every call) and about 65 µs in
``contextlib``'s generator context and ``torch.cuda.set_stream``'s wrappers. Here a device
*index* (an int) is resolved once, the current stream's Python object is cached by its id
(:func:`current_stream`), and :class:`on_stream` switches with torch's own C calls.
"""

from __future__ import annotations

from typing import Any

import torch

#: ``(stream_id, device_index, device_type)`` -> its ``torch.cuda.Stream`` (:func:`current_stream`).
_STREAMS: dict[tuple[int, int, int], Any] = {}
#: Entries of :data:`_STREAMS` past which it starts afresh (a process sees a few dozen streams).
_STREAMS_KEPT = 1024


def device_index(device: torch.device) -> int:
    """The CUDA device index ``device`` means now (``cuda`` without an index: the current
    device). Resolve it once, where a loader is made: torch resolves an index-less device on
    every stream call."""
    return device.index if device.index is not None else torch.cuda.current_device()


def current_stream(index: int) -> Any:
    """``torch.cuda.current_stream(index)`` for an int ``index``: the same stream, as one
    ``torch.cuda.Stream`` object per stream id instead of a new object each call (a Stream is
    a handle of its id; two with one id are equal and interchangeable). CUDA must be
    initialised (the caller holds a stream or a tensor of the device)."""
    key = torch._C._cuda_getCurrentStream(index)  # (stream_id, device_index, device_type)
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) >= _STREAMS_KEPT:
            _STREAMS.clear()
        stream = _STREAMS[key] = torch.cuda.Stream(stream_id=key[0], device_index=key[1], device_type=key[2])
    return stream


class on_stream:  # noqa: N801 (used as ``with on_stream(s):``, as torch.cuda.stream)
    """``with torch.cuda.stream(stream)``: work queued inside goes to ``stream``, and the
    stream current before is current again after (also after an exception).

    A stream of another device than the current one takes ``torch.cuda.stream`` itself:
    setting a stream also makes its device current, which only ``torch.cuda.stream`` puts
    back. CUDA must be initialised (``stream`` exists)."""

    __slots__ = ("_stream", "_previous", "_context")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._previous: tuple[int, int, int] | None = None
        self._context: Any = None

    def __enter__(self) -> None:
        stream = self._stream
        index = stream.device_index
        if torch._C._cuda_getDevice() != index:
            self._context = torch.cuda.stream(stream)
            self._context.__enter__()
            return
        self._previous = torch._C._cuda_getCurrentStream(index)
        torch._C._cuda_setStream(stream_id=stream.stream_id, device_index=index, device_type=stream.device_type)

    def __exit__(self, *exc: Any) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(*exc)
            return
        previous = self._previous
        if previous is not None:
            self._previous = None
            torch._C._cuda_setStream(stream_id=previous[0], device_index=previous[1], device_type=previous[2])
