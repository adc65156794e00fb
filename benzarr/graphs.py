"""The batch transform replayed as a CUDA graph: one replay a batch instead of about 90 aten calls.

Why (issue #10): on a GPU the loader's main-process work per batch (``next_ms``, 1.1-1.3 ms
on session 6's H200) is mostly the host side of the transform's kernel launches: about 90
aten calls for 12 bands (cast, normalise, upsample, one copy per run of output channels),
each a few microseconds of Python and dispatcher. A model whose training step is itself
host-bound (resnet18 in fast mode: 10.4 ms a step) loses that time from every step, and
fed throughput stayed at 0.79-0.90 of its ceiling. A CUDA graph of the transform is
replayed with one call, so the host's part of a batch becomes a few copies and a replay.

How, and what keeps it correct:

* **Static buffers.** Graphs read fixed addresses: the batch's band groups are copied
  (device to device, ~41 MB for 12 bands at batch 256, tens of microseconds) into static
  inputs, and each of :data:`GRAPH_COPIES` graphs writes its own static ``image``. From the
  batch ring (:meth:`GraphedTransform.from_slot`), a full batch goes host to device once,
  straight into static inputs laid out as a ring slot (session 24: a third of ``next()``). The
  graphs differ only in their output, so batch k+1 is made while the consumer still holds
  batch k.
* **Nothing the consumer holds is overwritten.** A static image is handed out as a fresh
  view; before its graph is replayed again, the storage's use count (the same liveness test
  torch's inductor applies to its CUDA-graph outputs) must be back to what this module
  holds. A consumer that keeps batches (``images.append(batch["image"])``) gets them made
  the ordinary way, in fresh memory, as the ring's ``CONSUMER_SLOTS`` rule does.
* **Nor anything its GPU work still reads.** When a handed-out image is first seen free, an
  event is recorded on the consumer's stream: all work on the image was queued by then (the
  consumer held it until then). The graph's next replay waits for that event, which has
  normally long completed (the image was freed two batches before it is reused).
* **The same bits.** A replay runs the kernels the eager transform runs, on the same data;
  the batch that triggers a capture is itself made eagerly. Labels, the store rows and masks
  are made eagerly (one or two small kernels). ``benchmarks/gpu_ring_check.py`` compares
  the loader's batches with the eager path's on CUDA.
* **Off by default:** session 12's H200 run measured the eager loader as fast (0.99× over 8
  model-and-mode pairs, interleaved). ``DeviceLoader.graphs = True`` or
  ``BENZARR_CUDA_GRAPHS=1`` turns it on (:func:`benzarr.data.cuda_graphs_default`).
* **Only where it applies.** Batches of the size the graphs were made for (the last, short
  batch of an epoch is eager), no augmentation (its flips and rotations differ per row
  and batch) and no compiled transform (``BatchTransform.compiled``: already fused, and its
  first call compiles, which no capture can hold). A capture that fails turns graphs off for this loader with one warning; the
  batches are then made eagerly, as before. So are batches whose static images would take
  more than :data:`MEMORY_SHARE` of the GPU's memory.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benzarr.streams import current_stream, device_index
from benzarr.transform import Batch, BatchTransform

#: Static images (and graphs) per loader: batch k+1 is made while the consumer holds batch k
#: and the loader holds the next one; a fourth keeps an image's reuse two batches after it
#: is freed, so a replay never waits for the training step in progress.
GRAPH_COPIES = 4

#: Largest share of the GPU's memory the static images and inputs may take; beyond it (batch
#: 1024 of 12 bands on a 24 GB card, say) batches are made eagerly, as before graphs.
MEMORY_SHARE = 0.1

#: ``capture(fn, pool, stream) -> (replay, pool)``: record ``fn``'s kernels once on ``stream``
#: (sharing the memory ``pool`` of earlier captures when not None), return a callable that
#: re-runs them on the current stream, and the pool. :func:`capture_cuda` on CUDA; the suite
#: substitutes an eager stand-in on the CPU.
Capture = Callable[[Callable[[], None], Any, Any], tuple[Callable[[], None], Any]]

#: Every live GraphedTransform, for the process-wide :data:`MEMORY_SHARE` (a run's train,
#: validation and test loaders each hold static images).
_LIVE: weakref.WeakSet[GraphedTransform] = weakref.WeakSet()


def capture_cuda(fn: Callable[[], None], pool: Any, stream: Any) -> tuple[Callable[[], None], Any]:
    """``fn`` captured as a ``torch.cuda.CUDAGraph`` on ``stream`` (a stream of the loader's
    device: torch's shared default capture stream lives on whichever device first used it,
    and a capture on another device's stream records nothing). Its temporaries go in
    ``pool``, shared by the loader's graphs: they replay one at a time, on one stream."""
    graph = torch.cuda.CUDAGraph()
    current = torch.cuda.current_stream(stream.device)
    try:
        # thread_local: another thread's CUDA calls (a user's, a logger's) do not break the capture
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            fn()
    finally:
        # a capture that fails at its end leaves torch's capture stream current
        # (torch.cuda.graph.__exit__ restores it only after a successful capture_end)
        torch.cuda.set_stream(current)
    return graph.replay, graph.pool()


def _uses(tensor: torch.Tensor) -> int:
    """Tensors (C++ references included, such as autograd's saved ones) that share ``tensor``'s
    storage, plus one for the query itself."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


@dataclass(eq=False)
class _StaticImage:
    """One graph and the image it writes, with who may be using that image."""

    image: torch.Tensor  # float32 (B, C, 120, 120) on the device, rewritten by each replay
    replay: Callable[[], None]
    baseline: int  # the image's use count when only this module holds it (:func:`_uses`)
    out: bool = False  # handed out and not yet seen free
    freed: Any = None  # the consumer-stream event after which it is free (None: free now)
    event: Any = None  # CUDA: the event ``freed`` is, made with the graph (None off CUDA)


def graphs_supported() -> bool:
    """Whether this torch has what :class:`GraphedTransform` needs."""
    return hasattr(torch._C, "_storage_Use_Count") and hasattr(torch.cuda, "graph")


class GraphedTransform:
    """A :class:`~benzarr.transform.BatchTransform` whose image is made by CUDA graphs.

    Called exactly like the transform (``graphed(batch) -> {"image", "label", "index"[,
    "mask"]}``) and giving the same values; falls back to ``transform(batch)`` for batches
    graphs do not cover (see the module's docstring). Call :meth:`consumer_point` with the
    consumer's stream each time the consumer asks for a batch, and run :meth:`__call__` on
    the stream the transform runs on (both as :meth:`benzarr.data.DeviceLoader` does).

    Args:
        transform: the device transform; its switches (``fused``, ``planes``) are read when
            a graph is captured, so set them before the first batch.
        batch_size: the patches of the batches graphs make (others are made eagerly); None:
            those of the first batch.
        copies: static images, and graphs, at most.
        capture: how a graph is recorded (:data:`Capture`); :func:`capture_cuda` by default.

    Attributes:
        disabled: why graphs are off (a capture failed, not enough memory, an old torch), or None.
        captured: graphs recorded so far (at most ``copies``).
        replayed: batches made by a replay.
    """

    def __init__(self, transform: BatchTransform, batch_size: int | None = None, copies: int = GRAPH_COPIES,
                 capture: Capture | None = None) -> None:
        self.transform = transform
        self.batch_size = batch_size
        self.copies = int(copies)
        self._capture = capture or capture_cuda
        self._cuda = transform.device.type == "cuda"
        self._index = device_index(transform.device) if self._cuda else -1  # an int: benzarr.streams
        self.disabled: str | None = None if graphs_supported() else "this torch lacks CUDA graph support"
        self.captured = 0
        self.replayed = 0
        self._shapes: dict[str, tuple[int, ...]] | None = None  # group -> full-batch shape the graphs take
        self._inputs: dict[str, torch.Tensor] = {}  # group -> static copy of the batch's group
        self._span: torch.Tensor | None = None  # from_slot: the static inputs' one buffer, laid out as a ring slot
        self._span_views: dict[str, torch.Tensor] = {}  # from_slot: every device key's view of it
        self._statics: list[_StaticImage] = []  # one per graph, in capture order
        self._pool: Any = None
        self._stream: Any = None  # the capture stream, on the transform's device
        self._turn = 0
        self.held_bytes = 0  # device memory of the static images and inputs
        _LIVE.add(self)

    def consumer_point(self, stream: Any) -> None:
        """The consumer asks for a batch: images it no longer holds are free once the work now
        queued on ``stream`` (its CUDA stream; None off CUDA) is done."""
        for static in self._statics:
            if static.out and _uses(static.image) == static.baseline:
                if static.event is not None:  # the image's own event: re-recorded only after its replay waited on it
                    static.event.record(stream)
                static.out, static.freed = False, static.event

    def _applies(self) -> bool:
        """Whether graphs may make this transform's batches at all (see the module's docstring)."""
        transform = self.transform
        # augmentation differs per batch; a compiled transform (BatchTransform.compiled) is
        # already a few fused kernels, and its first call compiles, which no capture can hold
        return self.disabled is None and transform.augment == "none" and not getattr(transform, "compiled", False)

    def _copy_for(self, shapes: dict[str, tuple[int, ...]]) -> int | None:
        """The static image (by number; ``len(statics)`` for a new one) that makes a batch of
        these band-group ``shapes``, or None: a short batch, not enough memory, or the
        consumer holds every image."""
        if self._shapes is None and self.batch_size in (None, shapes[self.transform.groups[0]][0]):
            self._shapes = shapes
        if shapes != self._shapes or (not self._statics and not self._fits(shapes)):
            return None
        return self._free_copy()

    def __call__(self, batch: Batch) -> Batch:
        transform = self.transform
        copy = None
        if self._applies():
            copy = self._copy_for({group: tuple(batch[group].shape) for group in transform.groups})
        if copy is None:  # a short last batch, or the consumer holds every image: the ordinary way
            return transform(batch)
        for group in transform.groups:
            if group not in self._inputs:  # on the device, whatever the batch's (the DataLoader's are on the host)
                with torch.inference_mode(False):  # usable in training whatever mode the first batch came in
                    self._inputs[group] = torch.empty(tuple(batch[group].shape), dtype=batch[group].dtype,
                                                      device=transform.device)
                self.held_bytes += self._inputs[group].nbytes
            self._inputs[group].copy_(batch[group], non_blocking=True)
        return self._made(copy, batch)

    def from_slot(self, slot: Any, stream: Any = None) -> Batch:
        """The batch still in ring slot ``slot`` (:class:`benzarr.ring.HostSlot`), as
        :meth:`__call__` makes it from the same batch on the device, with the slot handed
        back to the ring once its copy is done. A full batch is copied in one transfer
        straight into the static inputs, which are then views of one buffer laid out as the
        slot: no allocation, no per-key views and no device-to-device copy a batch. Run it
        on ``stream``, the current stream (None off CUDA), as :meth:`__call__`.

        Why (issue #10): these were about 0.4 ms of the main process's 0.7 ms a batch on the
        H200 node, and resnet18's training step (about 10 ms, bound by the host) loses every
        such millisecond: fed at 0.91 of its ceiling in session 24."""
        transform = self.transform
        if not self._applies() or (self._span is None and self._inputs):  # graphs off, or __call__'s inputs
            return self(slot.to_device(stream))
        copy = self._copy_for(slot.shapes(transform.groups))
        if copy is None:  # a short batch, or the consumer holds every image: the ordinary way
            return transform(slot.to_device(stream))
        if self._span is None:
            with torch.inference_mode(False):
                self._span = torch.empty(slot.span_bytes(), dtype=torch.uint8, device=transform.device)
            self._span_views = slot.layout.tensor_views(self._span, slot.n, slot.device_keys)
            self._inputs = {group: self._span_views[group] for group in transform.groups}
            self.held_bytes += self._span.nbytes
        # the copy is queued on this stream after the last batch's replay and companions,
        # which read the buffer: nothing reads it while it is overwritten
        slot.copy_into(self._span, stream)
        return self._made(copy, {**self._span_views, "index": slot.index()})

    def _made(self, copy: int, batch: Batch) -> Batch:
        """The batch whose band groups are in the static inputs, by static image ``copy``
        (a new one captured, or a replay): its image, and the transform's companions of ``batch``."""
        transform = self.transform
        if copy == len(self._statics):
            image = self._new_copy()
        else:
            static = self._statics[copy]
            if static.freed is not None:
                current_stream(self._index).wait_event(static.freed)
            static.replay()
            self.replayed += 1
            image = static.image
        if copy < len(self._statics):  # a static image (not the eager one of a failed capture)
            self._statics[copy].out, self._statics[copy].freed = True, None
            self._turn = (copy + 1) % self.copies
            image = image.view(image.shape)  # a view of its own: its use count says who holds it
        return {"image": image, **transform.companions(batch)}

    def release(self, why: str = "released") -> None:
        """Drop every graph, static image and input (their memory goes back to torch's
        allocator once no batch handed out still views it); batches are made eagerly from now
        on, ``disabled`` saying ``why``."""
        self.disabled = why
        self._inputs, self._statics = {}, []
        self._span, self._span_views = None, {}
        self._pool, self.held_bytes = None, 0

    def stats(self) -> dict[str, Any]:
        """``{"captured", "replayed", "disabled"}``: what the graphs did so far (benchmarks record it)."""
        return {"captured": self.captured, "replayed": self.replayed, "disabled": self.disabled}

    def _fits(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Whether the static images and inputs take at most :data:`MEMORY_SHARE` of the
        device's memory; if not, graphs are off (``disabled`` says why): the training step
        needs that memory more than the loader needs graphs."""
        if not self._cuda:
            return True
        size = next(iter(shapes.values()))[0]
        need = (self.copies * 4 * torch.Size(self.transform.image_shape(size)).numel()  # float32 images
                + sum(4 * torch.Size(shape).numel() for shape in shapes.values()))  # inputs: 4 bytes a value at most
        device = self.transform.device
        others = sum(g.held_bytes for g in list(_LIVE) if g is not self and g.transform.device == device)
        total = torch.cuda.get_device_properties(device).total_memory
        if need + others <= MEMORY_SHARE * total:
            return True
        self.disabled = (f"the static images of {self.copies} graphs would take {need / 2**30:.1f} GiB, and other "
                         f"loaders' {others / 2**30:.1f} GiB: more than {MEMORY_SHARE:.0%} of the GPU's "
                         f"{total / 2**30:.0f} GiB")
        return False

    def _free_copy(self) -> int | None:
        """The next static image in turn that no one holds, a new one while fewer than
        ``copies`` exist, or None."""
        for step in range(self.copies):
            copy = (self._turn + step) % self.copies
            if copy >= len(self._statics):
                return len(self._statics)
            if not self._statics[copy].out:
                return copy
        return None

    def _new_copy(self) -> torch.Tensor:
        """A new static image, made eagerly from the inputs for this batch, and its graph (or,
        when the capture fails, the eager image alone, and graphs off from now on)."""
        transform = self.transform
        size = self._shapes[transform.groups[0]][0]
        static = {**self._inputs, "index": torch.empty(size, dtype=torch.int64)}  # image() reads its length
        with torch.inference_mode(False):  # a normal tensor: it may be saved for backward later
            image = torch.empty(transform.image_shape(size), dtype=torch.float32, device=transform.device)
        transform.image(static, out=image)  # this batch, the ordinary way (also the capture's warm-up)
        if self._stream is None and self._cuda:
            self._stream = torch.cuda.Stream(device=transform.device)
        try:
            replay, self._pool = self._capture(lambda: transform.image(static, out=image), self._pool, self._stream)
        except Exception as exc:  # any failure to capture: eager from now on, as before graphs
            self.release(f"CUDA graph capture failed ({type(exc).__name__}: {exc})")
            warnings.warn(f"benzarr: the loader makes batches without CUDA graphs: {self.disabled}",
                          RuntimeWarning, stacklevel=3)
            return image
        self._statics.append(_StaticImage(image, replay, baseline=_uses(image),
                                          event=torch.cuda.Event() if self._cuda else None))
        self.held_bytes += image.nbytes
        self.captured += 1
        return image
