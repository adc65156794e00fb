"""The batch ring: worker processes decode batches straight into fixed shared-memory slots.

Why (issue #10): with ``torch.utils.data.DataLoader`` every batch arrives in freshly
allocated shared memory that the main process maps and page-faults anew, and the pinning
thread copies it once more; on a 16-core GPU node that caps delivery near 13,000 patches/s
however many workers decode. Here the memory is allocated once:

* **Slots.** One anonymous shared mapping (``mmap(-1, n)``: ``MAP_SHARED | MAP_ANONYMOUS``)
  holds ``slots`` batch-sized slots, each with one region per batch key (band groups,
  ``mask``, ``label``, ``index``; 64-byte aligned). Forked workers inherit the mapping, so
  nothing is ever named in ``/dev/shm``: no leak is possible, even after ``kill -9``.
* **Workers** are forked processes. Each receives ``(generation, seq, slot, indices)`` on
  its own pipe, decodes with the dataset's shard readers straight into the slot
  (:meth:`BigEarthNetDataset.read_into`) and answers with the slot number only. With a CPU
  ``transform`` the worker also converts the batch (float32, upsampled, normalised) into
  the slot, so model-ready CPU delivery scales with workers.
* **CUDA.** The mapping is page-locked once with ``cudaHostRegister``. The main process
  copies a ready slot to the GPU on a side stream (``non_blocking``), records a CUDA event,
  and returns the slot to the free list only once that event has completed. The copy of
  batch k+1 is issued before batch k is handed out, so it overlaps batch k's transform.
  Steady state allocates no host memory and makes no host-side copy. A consumer that copies
  slots itself (:meth:`RingLoader.iter_slots`: the CUDA-graph transform copies a slot straight
  into its static inputs) gets each slot as a :class:`HostSlot` and hands it back once its copy
  is queued.
* **CPU.** A batch handed out on the CPU is a set of views into its slot; the slot returns
  to the free list when the last of those views is garbage (a weakref callback on the
  slot's buffer object), so a batch is never overwritten while someone holds it. A
  consumer that keeps more than :data:`CONSUMER_SLOTS` batches gets copies instead.
* **Order.** Batches are handed out in sampler order whatever the worker count, so the same
  ``(seed, epoch)`` gives the same batches, bit for bit, as the DataLoader path.
* **Epochs.** Once every batch of an epoch is dispatched, the workers go on with the next
  epoch's first batches (``epoch + 1`` when the caller drives epochs with ``set_epoch``);
  if the caller then asks for another epoch, that work is discarded.
* **Errors.** An exception in a worker is re-raised in the main process as the same
  benzarr error with the same one-line message; a worker that dies (killed, out of
  memory) raises :class:`~benzarr.errors.LoaderWorkerError`.
"""

from __future__ import annotations

import collections
import functools
import importlib
import mmap
import multiprocessing
import os
import selectors
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from benzarr.errors import BenzarrError, InvalidArgumentError, LoaderWorkerError
from benzarr.procs import children_start_deaf, default_sigterm, ignore_interrupts
from benzarr.streams import current_stream, on_stream
from benzarr.transform import unfilled_allocations

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]
Batch = dict[str, torch.Tensor]

#: Batches a CPU consumer may hold at once before it is handed copies (a training loop
#: holds one or two: the current batch and, while asking for the next, the previous).
CONSUMER_SLOTS = 4
#: Batches staged on the GPU ahead of the consumer (the copy of k+1 overlaps k's transform).
STAGE_DEPTH = 2
#: Alignment of every region in a slot (bytes): cache lines, and any dtype view.
ALIGN = 64
#: Seconds between liveness checks of the workers while waiting for a batch.
POLL_S = 1.0


#: ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+): map every page of a range now.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _check_ring_fits(size: int, workers: int, slots: int, batch_size: int) -> None:
    """Refuse a ring larger than this machine's memory, before it is mapped. The ring grows
    with the workers (``prefetch_factor`` slots each): ``bench --workers 99999999999999999999``
    stopped in "unexpected OverflowError" from ``mmap``, and a count that still fits a C size
    would map more shared memory than there is and prefault it, which the kernel answers by
    killing processes."""
    memory = _physical_memory()
    if memory is not None and size > memory:
        raise InvalidArgumentError(
            f"the batch ring of {workers:,} loader workers ({slots:,} slots of {batch_size:,} patches) needs "
            f"{size / 2**30:,.1f} GiB of shared memory, more than this machine's {memory / 2**30:,.1f} GiB; "
            "use fewer --workers (about the CPU cores) or a smaller --batch-size")


def _prefault(buffer: mmap.mmap) -> None:
    """Map every page of the ring into this process now.

    A forked worker inherits the shared mapping but not its page tables (Linux copies none
    for shared memory at fork), so without this every worker takes one page fault per 4 KB
    the first time it writes each slot: for 12 workers and 27 slots of 41 MB, 3.5 million
    faults at the start of training. ``MADV_POPULATE_WRITE`` maps them in one call
    without touching the contents; older kernels get a read of one byte per page, which
    maps shared memory writable too.
    """
    try:
        buffer.madvise(MADV_POPULATE_WRITE)
    except (OSError, ValueError, AttributeError):
        np.frombuffer(buffer, dtype=np.uint8)[::mmap.PAGESIZE].sum()


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


class SlotLayout:
    """Where each key of a batch lives inside one slot.

    Args:
        spec: key -> (per-patch shape, numpy dtype), e.g. ``{"10m": ((4, 120, 120), uint16)}``.
        batch_size: patches a slot holds.
    """

    def __init__(self, spec: Spec, batch_size: int) -> None:
        self.spec = dict(spec)
        self.batch_size = batch_size
        self.regions: dict[str, tuple[int, int]] = {}  # key -> (byte offset in slot, bytes per patch)
        position = 0
        for key, (shape, dtype) in self.spec.items():
            position = _align(position, ALIGN)
            per_patch = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            self.regions[key] = (position, per_patch)
            position += per_patch * batch_size
        self.slot_bytes = _align(max(position, 1), mmap.PAGESIZE)

    def numpy_views(self, buffer: Any, slot: int, n: int) -> dict[str, np.ndarray]:
        """(n, *shape) arrays of every key of slot ``slot`` in ``buffer``."""
        base = slot * self.slot_bytes
        views = {}
        for key, (shape, dtype) in self.spec.items():
            offset, per_patch = self.regions[key]
            count = n * int(np.prod(shape, dtype=np.int64))
            views[key] = np.frombuffer(buffer, dtype=dtype, count=count, offset=base + offset).reshape(n, *shape)
        return views

    def tensor_views(self, whole: torch.Tensor, n: int, keys: tuple[str, ...] | None = None) -> Batch:
        """(n, *shape) tensors of every key (or of ``keys``), as views of ``whole`` (one slot as
        uint8, or its first bytes, as far as those keys reach)."""
        # this runs in the main process for every batch: keep it to three view ops a key
        return {key: whole[offset:offset + n * per_patch].view(dtype).view(n, *shape)
                for key, offset, per_patch, dtype, shape in self._plan if keys is None or key in keys}

    def to_device(self, whole: torch.Tensor, n: int, device: torch.device, one_copy: bool = True) -> Batch:
        """The batch in ``whole`` (one slot as uint8, on the host) on ``device``: every key but
        ``index`` (which stays on the host, cloned), as views of one copy of the bytes they
        span when ``one_copy`` (one transfer and one allocation a batch: each transfer costs
        the host 10-20 us of launch and allocator work), else one copy per key."""
        keys = self.device_keys
        with unfilled_allocations():  # the copies overwrite what they allocate
            if one_copy:
                batch = self.tensor_views(whole[:self.span_bytes(n)].to(device, non_blocking=True), n, keys)
            else:
                batch = {k: v.to(device, non_blocking=True) for k, v in self.tensor_views(whole, n, keys).items()}
            batch["index"] = self.tensor_views(whole, n, ("index",))["index"].clone()
        return batch

    @functools.cached_property
    def device_keys(self) -> tuple[str, ...]:
        """Every key but ``index`` (which stays on the host): what goes to the device."""
        return tuple(key for key in self.spec if key != "index")

    def span_bytes(self, n: int) -> int:
        """Bytes from a slot's start that hold the :attr:`device_keys` of ``n`` patches."""
        return self._full_span if n == self.batch_size else self._span_of(n)

    def _span_of(self, n: int) -> int:
        return max((self.regions[key][0] + n * self.regions[key][1] for key in self.device_keys), default=0)

    @functools.cached_property
    def _full_span(self) -> int:  # asked for every batch on the graph path
        return self._span_of(self.batch_size)

    @functools.cached_property
    def _plan(self) -> list[tuple[str, int, int, torch.dtype, tuple[int, ...]]]:
        return [(key, *self.regions[key], _torch_dtype(dtype), tuple(shape))
                for key, (shape, dtype) in self.spec.items()]


class ReturnedWhenDead:
    """Tokens (a slot number, a buffer) given back once the array their batch views dies.

    :meth:`watch` ties a token to an array with a weakref whose callback is ``deque.append``,
    a method written in C; :meth:`returned` yields the tokens whose array has died since.

    Why not a Python callback (a lambda): Python runs a pending signal handler between
    bytecodes, also inside a weakref callback, and a KeyboardInterrupt raised there is
    printed as "Exception ignored" and lost. The trainer drops a batch every step, so a
    Ctrl-C (or a scheduler's SIGTERM) landing as the batch was freed would be swallowed, and the
    run would go on as if nothing had happened (``test_ctrl_c_as_a_batch_is_freed_is_not_swallowed``
    trips the signal there). A C callback runs no bytecode: the handler runs after it, in code
    that can raise.
    """

    def __init__(self) -> None:
        self._dead: collections.deque[weakref.ref] = collections.deque()  # appended by the callbacks
        self._tokens: dict[int, tuple[weakref.ref, Any]] = {}  # id(ref) -> (ref, token): keeps each ref alive

    def watch(self, array: Any, token: Any) -> None:
        """Give ``token`` back (through :meth:`returned`) once ``array`` is collected."""
        ref = weakref.ref(array, self._dead.append)
        self._tokens[id(ref)] = (ref, token)

    def returned(self) -> Iterator[Any]:
        """The tokens whose array died since the last call, oldest first."""
        while self._dead:
            yield self._tokens.pop(id(self._dead.popleft()))[1]


class RecycledBuffers:
    """Batch-sized host buffers for batches made in this process, each reused once no view of
    the batch it last held is alive (the ring's slot hand-back, without the ring).

    Why: a fresh 44 MB float32 image per 64-patch batch is mapped anew by glibc (blocks
    above 32 MB are never kept), so writing it took 5,000-12,000 page faults a batch; with
    the buffers, about 600.

    A consumer that keeps parts of its batches (``labels.append(batch["label"])``) would keep
    whole buffers alive through those views: once ``keep`` buffers are out, :meth:`take`
    returns None and the caller makes the batch in fresh tensors, as the ring's
    :data:`CONSUMER_SLOTS` rule does.

    Args:
        spec: key -> (per-patch shape, numpy dtype), as :class:`SlotLayout`.
        batch_size: patches a buffer holds.
        keep: buffers out at once, at most (and free ones kept).
    """

    def __init__(self, spec: Spec, batch_size: int, keep: int = CONSUMER_SLOTS) -> None:
        self.layout = SlotLayout(spec, batch_size)
        self.keep = keep
        self.out = 0  # buffers whose batch is still alive
        self._free: list[np.ndarray] = []
        self._returned = ReturnedWhenDead()  # blocks whose batch died

    def take(self, n: int) -> Batch | None:
        """(n, *shape) tensors of every key, in a buffer no live batch uses; None when
        ``keep`` buffers are out already."""
        for block in self._returned.returned():
            self.out -= 1
            if len(self._free) < self.keep:
                self._free.append(block)
        if self.out >= self.keep:
            return None
        block = self._free.pop() if self._free else np.empty(self.layout.slot_bytes, dtype=np.uint8)
        holder = block[:]  # every tensor view of the batch keeps this view, and so the block, alive
        self._returned.watch(holder, block)
        self.out += 1
        return self.layout.tensor_views(torch.from_numpy(holder), n)


@functools.lru_cache(maxsize=None)
def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


# -- the worker process ------------------------------------------------------------------

def _describe(exc: BaseException) -> tuple[str, str, str]:
    """(module, class name, one-line message) of an exception, to rebuild it in the parent."""
    return type(exc).__module__, type(exc).__qualname__, str(exc)


def _rebuild(described: tuple[str, str, str]) -> BaseException:
    """The exception a worker raised, as one line: benzarr's own class where it was one."""
    module, name, message = described
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        exc = cls.__new__(cls)
        BaseException.__init__(exc, message)  # BadPatchError & co. take other arguments
        if isinstance(exc, BenzarrError):
            return exc
        return exc if module == "builtins" else RuntimeError(f"in a loader worker: {name}: {message}")
    return RuntimeError(f"in a loader worker: {name}: {message}")


def _worker(dataset: Any, layout: SlotLayout, buffer: mmap.mmap, transform: Any, raw_spec: Spec,
            tasks: Connection, results: Connection) -> None:
    """A worker's loop: decode each task's indices into its slot, answer with the slot."""
    torch.set_num_threads(1)  # one core a worker, as DataLoader workers
    # SIGTERM ends a worker at once, as before, and Ctrl-C is the parent's, which closes the
    # ring (the worker reads its None, or finds the pipe closed). (No exit_with_parent here:
    # PR_SET_PDEATHSIG is tied to the thread that forks, and a loader may be built in a thread
    # that ends; a worker finds its parent gone when its task pipe closes.)
    default_sigterm()
    ignore_interrupts()
    _prefault(buffer)
    scratch = None
    if transform is not None:  # the raw batch, decoded once per task into private memory
        scratch = {key: np.empty((layout.batch_size, *shape), dtype=dtype) for key, (shape, dtype) in raw_spec.items()}
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        generation, seq, slot, indices, epoch = task
        n = len(indices)
        try:
            views = layout.numpy_views(buffer, slot, n)
            if transform is None:
                dataset.read_into(indices, views)
            else:
                raw = {key: array[:n] for key, array in scratch.items()}
                dataset.read_into(indices, raw)
                transform.set_epoch(epoch)  # augmentation draws are a function of (seed, epoch, row)
                transform({k: torch.from_numpy(v) for k, v in raw.items()},
                          out={k: torch.from_numpy(v) for k, v in views.items()})
            del views
            results.send((generation, seq, slot, n, None))
        except Exception as exc:  # reported to the parent, which raises it
            results.send((generation, seq, slot, n, _describe(exc)))


# -- resources, released by close() or by the garbage collector --------------------------

class _Resources:
    """Workers, pipes and the mapping; released once, by ``close`` or a finalizer."""

    def __init__(self) -> None:
        self.processes: list[Any] = []
        self.task_pipes: list[Connection] = []
        self.result_pipes: list[Connection] = []
        self.buffer: mmap.mmap | None = None
        self.registered_ptr: int | None = None
        self.copy_stream: Any = None  # the side stream that reads the page-locked ring
        self.copies: Any = ()  # the ring's (event, slot) of copies that read it (HostSlot's: on other streams)
        self.selector = selectors.DefaultSelector()  # the result pipes, registered once

    def release(self) -> None:
        self.selector.close()
        for pipe in self.task_pipes:
            try:
                pipe.send(None)
            except (OSError, ValueError):
                pass
        for process in self.processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
        for pipe in (*self.task_pipes, *self.result_pipes):
            pipe.close()
        self.processes, self.task_pipes, self.result_pipes = [], [], []
        if self.registered_ptr is not None:
            # only this ring's copies read the page-locked memory: wait for them, not for the
            # whole device (a ring collected mid-training must not stall the training stream)
            if self.copy_stream is not None:
                self.copy_stream.synchronize()
            for event, _ in self.copies:  # HostSlot copies, queued on the consumer's streams
                event.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self.registered_ptr)
            self.registered_ptr = None
        if self.buffer is not None:
            try:
                self.buffer.close()
            except BufferError:  # a batch the caller still holds maps it: unmapped with that batch
                pass
            self.buffer = None


class HostSlot:
    """One decoded batch still in its ring slot, for a consumer that copies it to the device
    itself (:meth:`RingLoader.iter_slots`): the CUDA-graph transform copies a full batch in one
    transfer straight into its static inputs (:meth:`benzarr.graphs.GraphedTransform.from_slot`),
    which saves the staged copy's allocation, per-key views and a device-to-device copy a batch.

    The slot is the consumer's until :meth:`release` (or :meth:`copy_into` / :meth:`to_device`,
    which release it): on CUDA it returns to the ring once the work then queued on the given
    stream, the copies that read it, has completed.

    Attributes:
        n: patches in the batch (the loader's batch size but for a short last batch).
        released: whether the slot was handed back.
    """

    __slots__ = ("_ring", "_slot", "n", "released")

    def __init__(self, ring: "RingLoader", slot: int, n: int) -> None:
        self._ring, self._slot, self.n, self.released = ring, slot, n, False

    @property
    def layout(self) -> SlotLayout:
        """Where each key lies in the slot (and in a device buffer laid out like it)."""
        return self._ring.layout

    @property
    def device_keys(self) -> tuple[str, ...]:
        """The keys that go to the device: every key but ``index``."""
        return self._ring.layout.device_keys

    def span_bytes(self) -> int:
        """Bytes from the slot's start that hold this batch's :attr:`device_keys`."""
        return self._ring.layout.span_bytes(self.n)

    def shapes(self, keys: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """``key -> (n, *per-patch shape)`` of ``keys``."""
        spec = self._ring.layout.spec
        return {key: (self.n, *spec[key][0]) for key in keys}

    def index(self) -> torch.Tensor:
        """The batch's store rows, (n,) int64, in memory of their own on the CPU."""
        ring = self._ring
        start = (self._slot * ring.layout.slot_bytes + ring.layout.regions["index"][0]) // 8  # regions are 64-byte aligned
        return torch.from_numpy(ring._as_int64()[start:start + self.n].copy())

    def copy_into(self, buffer: torch.Tensor, stream: Any) -> None:
        """Queue the copy of the batch's :attr:`device_keys` (its first :meth:`span_bytes`
        bytes) into ``buffer`` (uint8, laid out as the slot: :meth:`SlotLayout.tensor_views`
        gives the keys' views of it) on ``stream``, the current stream (None off CUDA); then
        the slot goes back to the ring, once that copy is done."""
        size = self.span_bytes()
        target = buffer if buffer.numel() == size else buffer[:size]
        target.copy_(self._ring._host_span(self._slot, size), non_blocking=True)
        self.release(stream)

    def to_device(self, stream: Any) -> Batch:
        """The batch on the loader's device in memory of its own (as iterating the loader gives
        it), copied on ``stream``, the current stream (None off CUDA); then the slot goes back."""
        ring = self._ring
        start = self._slot * ring.layout.slot_bytes
        batch = ring.layout.to_device(ring._host[start:start + ring.layout.slot_bytes], self.n, ring.device,
                                      ring.one_copy)
        self.release(stream)
        return batch

    def release(self, stream: Any) -> None:
        """Hand the slot back once the work queued so far on CUDA ``stream`` (the copies that
        read it) is done; at once with None. A second call does nothing."""
        if not self.released:
            self.released = True
            self._ring._release_after(self._slot, stream)


class RingLoader:
    """Batches of ``dataset`` decoded by ``num_workers`` forked workers into a ring of slots.

    Args:
        dataset: a :class:`~benzarr.data.BigEarthNetDataset` (``batch_spec``, ``read_into``).
        batch_sampler: yields lists of dataset indices (``torch.utils.data.BatchSampler``);
            its ``sampler.set_epoch`` is called for :meth:`set_epoch`, when it has one.
        num_workers: worker processes (at least 1).
        transform: a CPU :class:`~benzarr.data.BatchTransform` to run in the workers (the
            slots then hold its float32 output), or None for native uint16 batches.
        device: ``cuda`` devices get page-locked slots and asynchronous copies (batches are
            handed out on the device); anything else hands out CPU views of the slots.
        prefetch_factor: batches each worker may hold in flight.
        timeout: seconds to wait for a batch before raising :class:`LoaderWorkerError` (as
            ``DataLoader``'s ``timeout``); 0 waits for ever.
        slots: slots in the ring (default ``num_workers * prefetch_factor`` plus room for
            the consumer and the copies in flight).

    Attributes:
        one_copy: on CUDA, a slot goes to the device in one transfer, viewed per key (default
            True; False: one transfer per key, an A/B switch for ``benchmarks/gpu_feed.py``).

    Iterating yields batch dicts (keys as :meth:`BigEarthNetDataset.batch_spec`, or the
    transform's output): CPU tensors that view a slot (valid as long as they are
    referenced), or tensors on ``device`` (``index`` always stays on the CPU).

    Raises (while iterating):
        the benzarr error a worker raised, with its message; LoaderWorkerError when a
        worker died.
    """

    def __init__(self, dataset: Any, batch_sampler: Iterable[Sequence[int]], num_workers: int,
                 transform: Any = None, device: str | torch.device = "cpu", prefetch_factor: int = 2,
                 slots: int | None = None, timeout: float = 0) -> None:
        if num_workers < 1:
            raise ValueError("RingLoader needs at least one worker")
        if timeout < 0:
            raise ValueError("timeout must be 0 (wait for ever) or positive")
        self.timeout = float(timeout)
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.transform = transform
        self.device = torch.device(device)
        self.prefetch_factor = max(1, int(prefetch_factor))
        self.batch_size = int(getattr(batch_sampler, "batch_size", 0)) or max(len(b) for b in batch_sampler)
        raw_spec = dataset.batch_spec()
        self.spec: Spec = transform.out_spec(raw_spec) if transform is not None else raw_spec
        self.layout = SlotLayout(self.spec, self.batch_size)
        self._cuda = self.device.type == "cuda"
        spare = STAGE_DEPTH + 1 if self._cuda else CONSUMER_SLOTS
        self.n_slots = slots or num_workers * self.prefetch_factor + spare

        size = self.layout.slot_bytes * self.n_slots
        _check_ring_fits(size, num_workers, self.n_slots, self.batch_size)

        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        buffer = mmap.mmap(-1, size)
        self._res.buffer = buffer
        if not self._cuda:
            _prefault(buffer)  # the consumer reads every slot (CUDA: cudaHostRegister maps them)
        self._host = torch.frombuffer(buffer, dtype=torch.uint8)  # the whole ring, as one tensor
        context = multiprocessing.get_context("fork")  # workers inherit the mapping and the readers
        for _ in range(num_workers):
            task_out, task_in = context.Pipe(duplex=False)  # (receiving end, sending end)
            result_out, result_in = context.Pipe(duplex=False)
            process = context.Process(target=_worker, daemon=True,
                                      args=(dataset, self.layout, buffer, transform, raw_spec, task_out, result_in))
            with children_start_deaf():  # a Ctrl-C before the worker ignores it waits, blocked
                process.start()
            task_out.close()
            result_in.close()
            self._res.processes.append(process)
            self._res.task_pipes.append(task_in)
            self._res.result_pipes.append(result_out)
            self._res.selector.register(result_out, selectors.EVENT_READ, result_out)
        self.one_copy = True  # CUDA: a slot goes to the device in one transfer (False: one per key; an A/B switch)
        self._copy_stream = None
        if self._cuda:
            self._pin()
            self._copy_stream = torch.cuda.Stream(device=self.device)
            self._res.copy_stream = self._copy_stream

        self._free: collections.deque[int] = collections.deque(range(self.n_slots))
        self._returned = ReturnedWhenDead()  # slots whose CPU batch died
        self._held = 0                       # CPU batches the consumer holds
        self._copies: collections.deque[tuple[Any, int]] = collections.deque()  # (event, slot)
        self._res.copies = self._copies
        self._outstanding = [0] * num_workers
        self._tasks: collections.deque[tuple[int, int, list[int], int]] = collections.deque()
        self._in_flight: dict[tuple[int, int], int] = {}             # (generation, seq) -> worker
        self._ready: dict[tuple[int, int], tuple[int, int]] = {}     # (generation, seq) -> (slot, n)
        self._errors: dict[tuple[int, int], tuple[str, str, str]] = {}
        self._live: set[int] = set()         # generations whose results are kept
        self._generation = 0
        self._epoch = 0
        self._driven = False                 # set_epoch was called: predict epoch + 1 next
        self._next: tuple[int, int, int] | None = None  # (generation, epoch, n_batches) queued ahead
        self._events: list[Any] | None = None  # CUDA: one event per slot, re-recorded (creating one costs ~10 us)
        self._spans: list[torch.Tensor] | None = None  # HostSlot: each slot's full-batch span, as uint8 views
        self._int64: np.ndarray | None = None  # HostSlot: the ring as int64 values

    # -- set-up --------------------------------------------------------------------------
    def _pin(self) -> None:
        """Page-lock the ring once (it faults every page in), so copies to the GPU are DMA."""
        ptr, size = self._host.data_ptr(), self._host.numel()
        rc = torch.cuda.cudart().cudaHostRegister(ptr, size, 0)
        code = int(getattr(rc, "value", rc))
        if code != 0:
            raise LoaderWorkerError(f"cudaHostRegister of the {size:,}-byte batch ring failed (CUDA error {code})")
        self._res.registered_ptr = ptr

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the sampler's order is a function of (seed, epoch))."""
        self._epoch = int(epoch)
        self._driven = True

    def close(self) -> None:
        """Stop the workers and release the ring (also done when the loader is collected)."""
        self._host = None  # our own view of the mapping: the mapping goes when no batch views it
        self._spans = self._int64 = None  # our other views of it
        self._finalizer()

    def __enter__(self) -> "RingLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- scheduling ------------------------------------------------------------------------
    def _queue_epoch(self, epoch: int) -> tuple[int, int, int]:
        """Queue every batch of ``epoch`` under a new, live generation; returns the plan."""
        setter = getattr(getattr(self.batch_sampler, "sampler", None), "set_epoch", None)
        if setter is not None:
            setter(epoch)
        batches = [list(b) for b in self.batch_sampler]
        self._generation += 1
        self._live.add(self._generation)
        self._tasks.extend((self._generation, seq, b, epoch) for seq, b in enumerate(batches))
        return self._generation, epoch, len(batches)

    def _keep_only(self, generation: int) -> None:
        """Drop queued and ready work of every other generation (work in flight is freed
        when it arrives)."""
        self._live = {generation}
        self._tasks = collections.deque(t for t in self._tasks if t[0] == generation)
        for key in [k for k in self._ready if k[0] != generation]:
            self._free.append(self._ready.pop(key)[0])
        for key in [k for k in self._errors if k[0] != generation]:
            del self._errors[key]

    def _reclaim(self) -> None:
        """Move slots whose CPU batch died and slots whose GPU copy completed to the free list."""
        for slot in self._returned.returned():
            self._free.append(slot)
            self._held -= 1
        while self._copies and self._copies[0][0].query():
            self._free.append(self._copies.popleft()[1])

    def _dispatch(self) -> None:
        """Send queued tasks, in order, to the least busy workers while slots are free."""
        while self._tasks:
            worker = min(range(self.num_workers), key=self._outstanding.__getitem__)
            if self._outstanding[worker] >= self.prefetch_factor:
                return
            if not self._free:
                self._reclaim()  # never waits: a slot still being copied stays busy
            if not self._free:
                return
            generation, seq, indices, epoch = self._tasks.popleft()
            slot = self._free.popleft()
            try:
                self._res.task_pipes[worker].send((generation, seq, slot, indices, epoch))
            except (OSError, ValueError):
                self._check_workers()
                raise
            self._outstanding[worker] += 1
            self._in_flight[(generation, seq)] = worker

    def _check_workers(self) -> None:
        """Raise LoaderWorkerError (after closing the ring) if a worker has died."""
        for process in self._res.processes:
            if not process.is_alive():
                code = process.exitcode
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                self.close()
                raise LoaderWorkerError(
                    f"a loader worker (pid {process.pid}) died unexpectedly ({how}); "
                    "if it ran out of memory, use fewer --workers or a smaller --batch-size"
                )

    def _receive(self, block: bool, until: float | None = None) -> None:
        """Collect finished tasks (waiting for at least one when ``block``, but not past the
        ``time.monotonic()`` deadline ``until``)."""
        # a selector registered once: multiprocessing's wait() and Connection.poll() build a
        # new one on every call, which was most of this method's time
        select = self._res.selector.select
        while True:
            events = select(timeout=POLL_S if block else 0)
            if events or not block:
                break
            self._check_workers()
            if until is not None and time.monotonic() > until:
                return
        while events:  # one message from each readable pipe, until none is readable
            for key, _ in events:
                try:
                    generation, seq, slot, n, error = key.data.recv()
                except (EOFError, OSError):
                    # a worker that just died: give it a moment to be reaped (exitcode polls
                    # waitpid), so that the error names it and its signal
                    deadline = time.monotonic() + 0.5
                    while time.monotonic() < deadline and all(p.exitcode is None for p in self._res.processes):
                        time.sleep(0.01)
                    self._check_workers()
                    raise LoaderWorkerError("a loader worker closed its pipe unexpectedly") from None
                self._outstanding[self._in_flight.pop((generation, seq))] -= 1
                if generation not in self._live:
                    self._free.append(slot)
                elif error is not None:
                    self._free.append(slot)
                    self._errors[(generation, seq)] = error  # raised when that batch is due
                else:
                    self._ready[(generation, seq)] = (slot, n)
            events = select(timeout=0)

    def _wait_for(self, key: tuple[int, int]) -> tuple[int, int]:
        """The (slot, n) of batch ``key`` once a worker has decoded it (LoaderWorkerError after
        ``timeout`` seconds without it, when a timeout is set)."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while key not in self._ready:
            if deadline is not None and time.monotonic() > deadline:
                pids = ", ".join(str(p.pid) for p in self._res.processes)
                self.close()
                raise LoaderWorkerError(
                    f"no batch from the loader workers (pids {pids}) in {self.timeout:g} s: a worker may be "
                    "stuck reading the store (a hung network file system?)"
                )
            if key in self._errors:
                raise _rebuild(self._errors.pop(key))
            if key[0] not in self._live:
                raise LoaderWorkerError(
                    "this iteration of the loader was superseded by a newer one (a loader serves one "
                    "iteration at a time: finish or drop the old iterator first)"
                )
            self._reclaim()
            self._dispatch()
            if not self._in_flight:
                if self._copies:  # only now wait for a copy to the GPU: its slot is needed
                    self._copies[0][0].synchronize()
                    continue
                raise LoaderWorkerError(f"batch {key[1]} cannot be scheduled: every slot of the ring is held")
            self._receive(block=True, until=deadline)
        self._dispatch()
        return self._ready.pop(key)

    # -- handing batches out ---------------------------------------------------------------
    def _cpu_batch(self, slot: int, n: int) -> Batch:
        """Views of the slot, which returns to the ring when the last view is collected."""
        start = slot * self.layout.slot_bytes
        holder = np.frombuffer(self._res.buffer, dtype=np.uint8, count=self.layout.slot_bytes, offset=start)
        views = self.layout.tensor_views(torch.from_numpy(holder), n)
        if self._held >= CONSUMER_SLOTS:  # the consumer keeps batches: give it its own copy
            views = {k: v.clone() for k, v in views.items()}
            self._free.append(slot)
            return views
        self._held += 1
        self._returned.watch(holder, slot)  # a plain weakref: a fraction of weakref.finalize's cost
        return views

    def _as_int64(self) -> np.ndarray:
        """The whole ring as int64 values (made once: the store rows' regions are read through it)."""
        if self._int64 is None:
            self._int64 = np.frombuffer(self._res.buffer, dtype=np.int64)
        return self._int64

    def _host_span(self, slot: int, size: int) -> torch.Tensor:
        """The first ``size`` bytes of ``slot`` (a uint8 view of the ring; a full batch's are made once)."""
        if size != self.layout.span_bytes(self.batch_size):
            start = slot * self.layout.slot_bytes
            return self._host[start:start + size]
        if self._spans is None:
            starts = [s * self.layout.slot_bytes for s in range(self.n_slots)]
            self._spans = [self._host[start:start + size] for start in starts]
        return self._spans[slot]

    def _slot_event(self, slot: int) -> Any:
        """The CUDA event of ``slot``: recorded after the copies that read the slot, and
        recorded again only once it has completed and the slot has been handed out anew."""
        if self._events is None:
            self._events = [torch.cuda.Event() for _ in range(self.n_slots)]
        return self._events[slot]

    def _release_after(self, slot: int, stream: Any) -> None:
        """``slot`` back to the free list once the work queued so far on CUDA ``stream`` (the
        copies that read it) has completed; at once when ``stream`` is None (nothing in flight)."""
        if stream is None:
            self._free.append(slot)
            return
        event = self._slot_event(slot)
        event.record(stream)
        self._copies.append((event, slot))

    def _stage(self, slot: int, n: int) -> tuple[Batch, Any]:
        """Start the copy of a ready slot to the GPU on the copy stream: the batch, and the
        event the consumer's stream waits on."""
        with on_stream(self._copy_stream):
            batch = HostSlot(self, slot, n).to_device(self._copy_stream)
        return batch, self._slot_event(slot)  # recorded after the copy by to_device's release

    def _begin(self) -> tuple[int, int, int]:
        """Start an iteration: (generation, epoch, batches) of the epoch it serves, whose
        batches are queued (or were, ahead of it) and the only ones kept."""
        if self._host is None:  # close() was called: no workers, no memory
            raise LoaderWorkerError("this loader was closed; make a new one (make_loader)")
        resuming = getattr(self.batch_sampler, "skip", 0) > 0  # a part-epoch: not what was prefetched
        if self._next is not None and self._next[1] == self._epoch and not resuming:
            plan = self._next                # the workers started on this epoch already
        else:
            plan = self._queue_epoch(self._epoch)
        self._next = None
        self._keep_only(plan[0])
        return plan

    def _queue_ahead(self, epoch: int) -> None:
        """Once every batch of this epoch is dispatched, queue the next epoch for idle workers."""
        if self._next is None and not self._tasks:
            self._next = self._queue_epoch(epoch + 1 if self._driven else epoch)

    def iter_slots(self) -> Iterator["HostSlot"]:
        """This iteration's batches as :class:`HostSlot` s, in order: each batch still in its
        slot, for a consumer that copies it to the device itself and then hands the slot
        back (:meth:`HostSlot.release`, or :meth:`HostSlot.to_device`), before asking for the
        next. A slot handed out and not given back when the iteration stops is given back then.
        The same batches, in the same order, as iterating the loader."""
        generation, epoch, n_batches = self._begin()
        pending: HostSlot | None = None
        try:
            for seq in range(n_batches):
                self._queue_ahead(epoch)
                pending = HostSlot(self, *self._wait_for((generation, seq)))
                yield pending
        finally:
            if pending is not None and not pending.released:
                pending.release(current_stream(self._copy_stream.device_index) if self._cuda else None)

    def __iter__(self) -> Iterator[Batch]:
        generation, epoch, n_batches = self._begin()
        staged: collections.deque[tuple[Batch, Any]] = collections.deque()
        next_stage = 0
        for seq in range(n_batches):
            self._queue_ahead(epoch)
            if not self._cuda:
                slot, n = self._wait_for((generation, seq))
                yield self._cpu_batch(slot, n) if self.device.type == "cpu" else self._copy_sync(slot, n)
                continue
            # stage batch seq (waiting for it) and any later batch already decoded, up to
            # STAGE_DEPTH ahead: their copies overlap the consumer's work on batch seq
            while next_stage <= seq or (len(staged) < STAGE_DEPTH and next_stage < n_batches
                                        and (generation, next_stage) in self._ready):
                staged.append(self._stage(*self._wait_for((generation, next_stage))))
                next_stage += 1
                self._receive(block=False)
            batch, event = staged.popleft()
            stream = current_stream(self._copy_stream.device_index)  # an int: benzarr.streams
            stream.wait_event(event)
            for tensor in batch.values():
                if tensor.device.type == "cuda":
                    tensor.record_stream(stream)  # not reused by the allocator before the consumer is done
                    if self.one_copy:  # every key views one allocation: one record covers it
                        break
            yield batch

    def _copy_sync(self, slot: int, n: int) -> Batch:
        """Other devices: a blocking copy, then the slot is free at once."""
        start = slot * self.layout.slot_bytes
        views = self.layout.tensor_views(self._host[start:start + self.layout.slot_bytes], n)
        with unfilled_allocations():  # the copies overwrite what they allocate
            batch = {k: (v.clone() if k == "index" else v.to(self.device)) for k, v in views.items()}
        self._free.append(slot)
        return batch
