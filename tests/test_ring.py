"""The batch ring (benzarr.ring): the same batches as the DataLoader path, bit for bit, on
every modality, band selection and label set; errors as one line; no leaked memory or
processes; epochs prefetched and discarded correctly."""

from __future__ import annotations

import gc
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DistributedSampler

from benzarr.bigearthnet import BANDS
from benzarr.data import BigEarthNetDataset, make_loader
from benzarr.errors import InvalidArgumentError, LoaderWorkerError, StoreCorruptError
from benzarr.ring import CONSUMER_SLOTS, RingLoader, SlotLayout
from tests.test_data import corrupt_copy


def _epoch(loader) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            assert torch.equal(x[key], y[key]), key


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bands": "rgb", "labels": "clc19"},
        {"bands": ["B09", "B03", "B8A"], "normalize": True},
    ],
    ids=["all", "rgb-clc19", "list-normalized"],
)
def test_ring_matches_dataloader_on_s2(synth_store_64: Path, kwargs: dict) -> None:
    ds = BigEarthNetDataset(synth_store_64, **kwargs)
    reference = make_loader(ds, 10, True, 0, seed=5, device="cpu", engine="dataloader")
    with make_loader(ds, 10, True, 2, seed=5, device="cpu", engine="ring") as ring:
        for epoch in (0, 1):
            reference.set_epoch(epoch)
            ring.set_epoch(epoch)
            _same(_epoch(reference), _epoch(ring))


def test_ring_matches_dataloader_on_s1_and_reference_maps(synth_v2_store: Path) -> None:
    ds = BigEarthNetDataset(synth_v2_store, modalities=("s2", "s1", "reference-map"), normalize=True)
    reference = _epoch(make_loader(ds, 8, True, 0, seed=1, device="cpu", engine="dataloader"))
    with make_loader(ds, 8, True, 1, seed=1, device="cpu", engine="ring") as ring:
        batches = _epoch(ring)
    _same(reference, batches)
    assert {"image", "label", "index", "mask"} <= batches[0].keys()
    assert batches[0]["mask"].dtype == torch.int64 and batches[0]["image"].shape[1] == 14


def test_raw_ring_matches_getitems_under_a_distributed_sampler(synth_v2_store: Path) -> None:
    """Rank 1 of 2, uint16 batches straight from the slots (what a GPU copy reads)."""
    ds = BigEarthNetDataset(synth_v2_store, modalities=("s2", "s1", "reference-map"))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3)
    batches = BatchSampler(sampler, batch_size=7, drop_last=False)
    with RingLoader(ds, batches, num_workers=2) as ring:
        for epoch in (0, 1):
            ring.set_epoch(epoch)
            got = _epoch(ring)
            sampler.set_epoch(epoch)
            _same([ds.read_batch(b) for b in batches], got)
    assert got[0]["10m"].dtype == torch.uint16 and got[0]["s1"].dtype == torch.float32


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bands=st.lists(st.sampled_from(BANDS), min_size=1, max_size=12, unique=True),
       batch_size=st.integers(1, 17), workers=st.integers(1, 3))
def test_ring_band_selection_property(synth_store_64: Path, bands: list[str], batch_size: int, workers: int) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands=bands, normalize=True)
    reference = _epoch(make_loader(ds, batch_size, True, 0, seed=2, device="cpu", engine="dataloader"))
    with make_loader(ds, batch_size, True, workers, seed=2, device="cpu", engine="ring") as ring:
        _same(reference, _epoch(ring))


def test_auto_engine_uses_the_ring_for_local_stores_with_workers(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    with make_loader(ds, 8, False, 1, seed=0, device="cpu") as loader:
        assert isinstance(loader.loader, RingLoader) and loader.transform is None  # converted in the workers
    assert not isinstance(make_loader(ds, 8, False, 0, seed=0, device="cpu").loader, RingLoader)


def test_next_epoch_is_prefetched_and_discarded_when_another_is_asked(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    reference = make_loader(ds, 8, True, 0, seed=9, device="cpu", engine="dataloader")
    with make_loader(ds, 8, True, 2, seed=9, device="cpu", engine="ring") as ring:
        for epoch in (0, 1, 7, 7, 2):  # 1 follows 0 (prefetched); 7 and 2 were not predicted
            reference.set_epoch(epoch)
            ring.set_epoch(epoch)
            _same(_epoch(reference), _epoch(ring))
        # an epoch abandoned half-way, then the same epoch from the start
        ring.set_epoch(3)
        iterator = iter(ring)
        next(iterator)
        next(iterator)
        reference.set_epoch(3)
        _same(_epoch(reference), _epoch(ring))
        with pytest.raises(LoaderWorkerError, match="superseded"):  # the old iterator cannot go on
            next(iterator)


@pytest.mark.parametrize("engine, workers", [("dataloader", 2), ("dataloader", 0), ("ring", 2)])
def test_a_second_iteration_supersedes_the_first_on_every_engine(synth_store_64: Path, engine: str,
                                                                  workers: int) -> None:
    """The DataLoader engine's persistent workers fed both iterators from one stream: each got
    some of the batches, silently, and ``served`` counted past the epoch."""
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    reference = _epoch(make_loader(ds, 8, True, 0, seed=4, device="cpu", engine="dataloader"))
    with make_loader(ds, 8, True, workers, seed=4, device="cpu", engine=engine) as loader:
        first = iter(loader)
        next(first)
        second = iter(loader)
        _same(reference, list(second))
        assert loader.state_dict() == {"epoch": 0, "served": len(reference)}
        with pytest.raises(LoaderWorkerError, match="superseded"):
            next(first)


@pytest.mark.parametrize("engine, workers", [("dataloader", 2), ("dataloader", 0), ("ring", 2)])
def test_set_epoch_ends_an_iteration_under_way(synth_store_64: Path, engine: str, workers: int) -> None:
    """set_epoch(1) inside an epoch's loop (a misplaced line): the old iteration went on with
    epoch 0's order while state_dict() said epoch 1, with its batches counted as epoch 1's, so
    a checkpoint taken then resumed epoch 1 past batches it never served."""
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    reference = make_loader(ds, 8, True, 0, seed=4, device="cpu", engine="dataloader")
    reference.set_epoch(1)
    with make_loader(ds, 8, True, workers, seed=4, device="cpu", engine=engine) as loader:
        old = iter(loader)
        next(old)
        loader.set_epoch(1)
        with pytest.raises(LoaderWorkerError, match="superseded by a newer one, set_epoch or load_state_dict"):
            next(old)
        assert loader.state_dict() == {"epoch": 1, "served": 0}
        made_first = iter(loader)  # made before set_epoch but not started (as Lightning does): the new epoch
        loader.set_epoch(1)
        _same(_epoch(reference), list(made_first))


def test_batches_kept_by_the_consumer_stay_intact(synth_store_64: Path) -> None:
    """list(loader) holds every batch: the ring must never overwrite one that is referenced."""
    ds = BigEarthNetDataset(synth_store_64)
    reference = _epoch(make_loader(ds, 4, False, 0, seed=0, device="cpu", engine="dataloader"))
    with make_loader(ds, 4, False, 1, seed=0, device="cpu", engine="ring") as ring:
        kept = list(ring)  # 16 batches, more than the ring has slots
        assert len(kept) == 16 > ring.loader.n_slots
        _same(reference, kept)
        assert ring.loader._held <= CONSUMER_SLOTS
        del kept
        gc.collect()
        _same(reference, _epoch(ring))  # the slots came back


def test_worker_error_is_one_clean_line(tmp_path: Path, synth_store_64: Path) -> None:
    store, _ = corrupt_copy(synth_store_64, tmp_path / "store.zarr", "s2/10m", 1, -10, 0xFF)
    with make_loader(BigEarthNetDataset(store), 16, False, 2, seed=0, device="cpu", engine="ring") as loader:
        with pytest.raises(StoreCorruptError) as info:
            list(loader)
    message = str(info.value)
    assert message.startswith("s2/10m: shard file") and "row 16" in message
    assert "Traceback" not in message and "\n" not in message


def test_no_shared_memory_or_process_left_after_close_error_or_kill(tmp_path: Path, synth_store_64: Path) -> None:
    before = _shm()
    ds = BigEarthNetDataset(synth_store_64)
    # deleted without close
    loader = make_loader(ds, 8, True, 2, seed=0, device="cpu")
    next(iter(loader))
    processes = list(loader.loader._res.processes)
    del loader
    gc.collect()
    assert not any(p.is_alive() for p in processes)
    # a worker killed mid-epoch
    loader = make_loader(ds, 8, True, 2, seed=0, device="cpu")
    iterator = iter(loader)
    next(iterator)
    victim = loader.loader._res.processes[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    with pytest.raises(LoaderWorkerError, match=f"pid {victim.pid}.*signal 9"):
        for _ in iterator:
            pass
    assert not any(p.is_alive() for p in loader.loader._res.processes) or not loader.loader._res.processes
    # an error in a worker
    store, _ = corrupt_copy(synth_store_64, tmp_path / "store.zarr", "s2/60m", 0, -10, 0xFF)
    broken = make_loader(BigEarthNetDataset(store), 8, False, 1, seed=0, device="cpu")
    with pytest.raises(StoreCorruptError):
        list(broken)
    broken.close()
    # the ring is an anonymous mapping: nothing is ever named there. Other test processes
    # (pytest-xdist) may name and unlink files of their own meanwhile, so wait out
    # transient ones: a leak stays
    deadline = time.monotonic() + 5
    while _shm() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _shm() - before


@pytest.mark.parametrize("engine,workers", [("dataloader", 0), ("dataloader", 1), ("ring", 2)])
def test_loader_state_resumes_the_rest_of_an_epoch(synth_store_64: Path, engine: str, workers: int) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    reference = make_loader(ds, 6, True, 0, seed=4, device="cpu", engine="dataloader")
    reference.set_epoch(2)
    whole = _epoch(reference)
    first = make_loader(ds, 6, True, workers, seed=4, device="cpu", engine=engine)
    first.set_epoch(2)
    iterator = iter(first)
    served = [{k: v.clone() for k, v in next(iterator).items()} for _ in range(4)]
    state = first.state_dict()
    assert state == {"epoch": 2, "served": 4}
    first.close()
    with make_loader(ds, 6, True, workers, seed=4, device="cpu", engine=engine) as resumed:
        resumed.load_state_dict(state)
        rest = _epoch(resumed)
        _same(whole, served + rest)  # exactly the batches not yet served
        assert resumed.state_dict() == {"epoch": 2, "served": len(whole)}
        resumed.set_epoch(3)  # later epochs are whole again
        reference.set_epoch(3)
        _same(_epoch(reference), _epoch(resumed))
        # a resume point set while an older iteration runs: that one ends, and the resume point
        # holds (the ring's prefetch of the old iteration's next epoch used to consume it)
        resumed.set_epoch(0)
        old = iter(resumed)
        next(old)
        resumed.load_state_dict(state)
        with pytest.raises(LoaderWorkerError, match="superseded"):
            for _ in old:
                pass
        _same(rest, _epoch(resumed))
    with pytest.raises(InvalidArgumentError, match="batches served"):
        reference.load_state_dict({"epoch": 0, "served": 99})


def test_a_stuck_worker_raises_after_the_timeout(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    with make_loader(ds, 4, False, 2, seed=0, device="cpu", engine="ring", timeout=1.5) as loader:
        iterator = iter(loader)
        next(iterator)
        stuck = loader.loader._res.processes[0]
        os.kill(stuck.pid, signal.SIGSTOP)  # alive but silent, as on a hung file system
        started = time.monotonic()
        with pytest.raises(LoaderWorkerError, match=r"no batch from the loader workers \(pids .*\) in 1.5 s"):
            for _ in iterator:
                pass
        assert time.monotonic() - started < 30
        assert not stuck.is_alive()  # closed: the stopped worker was killed, not left behind
    with pytest.raises(InvalidArgumentError, match="timeout"):
        make_loader(ds, 4, False, 1, seed=0, device="cpu", timeout=-1)


def test_transform_one_batch_ahead_serves_every_batch_once_in_order(tmp_path: Path, synth_store_64: Path) -> None:
    """The CUDA path's one-ahead generator (``DeviceLoader._transformed_ahead``; on the CPU it
    runs without streams): the same batches in the same order as the plain path, and a bad
    chunk as its one-line error."""
    ds = BigEarthNetDataset(synth_store_64, bands="all", normalize=True)
    plain = make_loader(ds, 9, True, 0, seed=2, device="cpu", engine="dataloader")
    ahead = make_loader(ds, 9, True, 0, seed=2, device="cpu", engine="dataloader")
    for loader in (plain, ahead):
        loader.set_epoch(1)
    expected = _epoch(plain)
    got = [{k: v.clone() for k, v in b.items()} for b in ahead._transformed_ahead(ahead.transform)]
    _same(expected, got)
    store, _ = corrupt_copy(synth_store_64, tmp_path / "bad.zarr", "s2/10m", 1, -10, 0xFF)
    bad = make_loader(BigEarthNetDataset(store), 16, False, 0, seed=0, device="cpu", engine="dataloader")
    with pytest.raises(StoreCorruptError, match="row 16"):
        list(bad._transformed_ahead(bad.transform))


def test_prefault_maps_the_ring_without_touching_its_contents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers map the whole ring when they start (``MADV_POPULATE_WRITE``), and on a kernel
    without it fall back to reading one byte a page: either way the slots keep their bytes."""
    import mmap

    from benzarr import ring

    for advice in (ring.MADV_POPULATE_WRITE, 987654):  # the real advice, then one every kernel refuses
        monkeypatch.setattr(ring, "MADV_POPULATE_WRITE", advice)
        buffer = mmap.mmap(-1, 8 * mmap.PAGESIZE)
        buffer[mmap.PAGESIZE:mmap.PAGESIZE + 5] = b"slot1"
        ring._prefault(buffer)
        assert buffer[mmap.PAGESIZE:mmap.PAGESIZE + 5] == b"slot1" and buffer[:4] == b"\0\0\0\0"
        buffer.close()


def test_a_closed_ring_says_so(synth_store_64: Path) -> None:
    loader = make_loader(BigEarthNetDataset(synth_store_64, bands="rgb"), 16, False, 2, seed=0, device="cpu")
    loader.close()
    with pytest.raises(LoaderWorkerError, match="closed"):
        next(iter(loader))


class _HungFrom(BigEarthNetDataset):
    """Reads of rows 12 and on never return."""

    def read_batch(self, indices: list[int]) -> dict:
        if min(indices) >= 12:
            time.sleep(3600)
        return super().read_batch(indices)


class _ResetFrom(BigEarthNetDataset):
    """Reads of rows 12 and on fail as an object store's dropped connection does."""

    def read_batch(self, indices: list[int]) -> dict:
        if min(indices) >= 12:
            raise ConnectionResetError("connection reset by the object store")
        return super().read_batch(indices)


def test_an_error_of_the_read_itself_is_not_taken_for_a_dead_worker(synth_store_64: Path) -> None:
    """torch re-raises a worker's own ConnectionResetError in its type: it was reported as
    "a loader worker died unexpectedly ... ran out of memory"."""
    with make_loader(_ResetFrom(synth_store_64, bands="rgb"), 4, False, 1, seed=0, device="cpu",
                     engine="dataloader") as loader:
        with pytest.raises(ConnectionResetError, match="connection reset by the object store"):
            list(loader)


def test_a_dataloader_worker_without_room_in_dev_shm_says_what_to_do(synth_store_64: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader engine's workers (URL stores, the Lightning default) hand batches over
    through /dev/shm, 64 MB in a Docker container: a full one came up as torch's worker traceback
    ("Caught RuntimeError in DataLoader worker process 0 ... unable to allocate shared
    memory(shm) for file </torch_...>: No space left on device (28)"), saying nothing of what to do."""

    def no_room(size: int) -> torch.UntypedStorage:  # torch's words on a full /dev/shm
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)")

    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", staticmethod(no_room))  # forked workers inherit it
    with make_loader(BigEarthNetDataset(synth_store_64, bands="rgb"), 8, False, 1, seed=0, device="cpu",
                     engine="dataloader") as loader:
        with pytest.raises(LoaderWorkerError) as info:
            next(iter(loader))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert re.search(r"no room in shared memory for a [0-9.]+ MB batch array: .*/dev/shm.*--shm-size", message), message


def test_the_dataloader_engine_closes_and_fails_as_the_ring_does(synth_store_64: Path) -> None:
    """``engine="dataloader"`` (URL stores, the Lightning default): ``close()`` stops its
    persistent workers and a closed loader says so; a stuck worker and a killed one are the
    ring's LoaderWorkerError lines, not torch's RuntimeError (nor a late one from torch's
    SIGCHLD handler); ``timeout=inf`` waits for ever, as 0 does."""
    import multiprocessing

    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    loader = make_loader(ds, 8, True, 2, seed=0, device="cpu", engine="dataloader")
    next(iter(loader))
    workers = multiprocessing.active_children()
    assert len(workers) >= 2
    loader.close()
    assert not any(w.is_alive() for w in workers)
    with pytest.raises(LoaderWorkerError, match="closed"):
        next(iter(loader))
    # a read that never returns, as on a hung file system (a stopped worker would not do: the
    # batches it already queued pass their memory through a thread of the worker, and torch
    # waits for that without a timeout)
    with make_loader(_HungFrom(synth_store_64, bands="rgb"), 4, False, 1, seed=0, device="cpu", engine="dataloader",
                     timeout=1.5) as stuck_loader:
        iterator = iter(stuck_loader)
        next(iterator)
        (stuck,) = stuck_loader.loader._iterator._workers
        with pytest.raises(LoaderWorkerError, match=rf"no batch from the loader workers \(pids {stuck.pid}\) in 1.5 s"):
            for _ in iterator:
                pass
        assert not stuck.is_alive()
    with make_loader(ds, 4, False, 1, seed=0, device="cpu", engine="dataloader", timeout=float("inf")) as killed_loader:
        assert killed_loader.loader.timeout == 0
        iterator = iter(killed_loader)
        next(iterator)
        (victim,) = killed_loader.loader._iterator._workers
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(LoaderWorkerError, match=rf"a loader worker \(pid {victim.pid}\) died unexpectedly \(signal 9\)"):
            for _ in iterator:
                pass
    time.sleep(0.2)  # a SIGCHLD handled now would raise here: the workers' pids were let go of
    with pytest.raises(InvalidArgumentError, match="timeout"):
        make_loader(ds, 4, False, 1, seed=0, device="cpu", engine="dataloader", timeout=float("nan"))


def test_one_transfer_of_a_slot_gives_the_per_key_batch() -> None:
    """The ring's single host-to-device copy of a slot, viewed per key, equals one copy per key,
    for a full and a short batch. To the CPU ``.to`` copies nothing: what this checks is the
    span and the per-key offsets and views, which are the same on CUDA."""
    spec = {"10m": ((4, 3, 3), np.dtype(np.uint16)), "label": ((5,), np.dtype(np.uint8)),
            "index": ((), np.dtype(np.int64)), "s1": ((2, 3, 3), np.dtype(np.float32))}
    layout = SlotLayout(spec, 6)
    whole = torch.randint(0, 256, (layout.slot_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for n in (6, 4):
        one = layout.to_device(whole, n, torch.device("cpu"), one_copy=True)
        per_key = layout.to_device(whole, n, torch.device("cpu"), one_copy=False)
        assert list(one) == list(per_key) == ["10m", "label", "s1", "index"]
        for key in one:  # bit for bit (random bytes viewed as float32 include NaNs)
            assert one[key].dtype == per_key[key].dtype and one[key].shape == per_key[key].shape, key
            assert torch.equal(one[key].contiguous().view(torch.uint8), per_key[key].contiguous().view(torch.uint8)), key
        assert one["index"].shape == (n,) and one["s1"].shape == (n, 2, 3, 3)


@pytest.mark.parametrize("tracked", ["tracker", "recycled-buffers"])
def test_ctrl_c_as_a_batch_is_freed_is_not_swallowed(tracked: str) -> None:
    """A Ctrl-C whose handler runs just as the last view of a batch dies must reach the
    consumer. With a Python weakref callback (a lambda) the handler ran inside the callback,
    and its KeyboardInterrupt was printed as "Exception ignored" and lost: the training went on.

    ``PyErr_SetInterrupt``, as a weakref callback registered later (so called first), trips
    SIGINT inside the collection, exactly as a signal arriving there does."""
    import ctypes
    import weakref

    from benzarr.ring import RecycledBuffers, ReturnedWhenDead

    interrupt = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("PyErr_SetInterrupt", ctypes.pythonapi))
    if tracked == "tracker":
        tracker, array = ReturnedWhenDead(), np.zeros(4)
        tracker.watch(array, "slot 3")
        returned = lambda: list(tracker.returned())  # noqa: E731
    else:
        buffers = RecycledBuffers({"image": ((2,), np.dtype(np.float32))}, 4)
        array = buffers.take(4)["image"]
        returned = lambda: [buffers.take(4)["image"].data_ptr() == array_ptr]  # noqa: E731 - the same buffer again
        array_ptr = array.data_ptr()
    # the array whose death gives the batch back: for the buffers, the one their tracker watches
    watched = array if tracked == "tracker" else next(iter(buffers._returned._tokens.values()))[0]()
    trigger = weakref.ref(watched, interrupt)  # noqa: F841
    del watched
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored in a background job (`pytest &`)
    try:
        with pytest.raises(KeyboardInterrupt):
            del array
            time.sleep(0.2)  # without the interrupt the test would go on (and fail)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert returned() == (["slot 3"] if tracked == "tracker" else [True])
