"""CUDA-graph batch transform (benzarr.graphs): the same batches as the eager transform, and
no image overwritten while the consumer holds it. The capture is CUDA's; here an eager
stand-in records the same closure, so the rotation, the hold test and the fallbacks are
what is tested. benchmarks/gpu_ring_check.py compares real graphs with the eager path on CUDA.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from benzarr.data import BigEarthNetDataset
from benzarr.graphs import GRAPH_COPIES, GraphedTransform


def eager_capture(fn, pool, stream):
    """A replay that re-runs ``fn`` (what a CUDA graph does, without CUDA)."""
    return fn, pool


def _batches(ds: BigEarthNetDataset, size: int, count: int) -> list[dict[str, torch.Tensor]]:
    return [ds.read_batch(list(range(i * size, (i + 1) * size))) for i in range(count)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kwargs", [{"normalize": True}, {"bands": ["B09", "B03", "B8A"]}], ids=["all", "list"])
def test_replays_give_the_eager_batches(synth_store_64: Path, kwargs: dict) -> None:
    ds = BigEarthNetDataset(synth_store_64, **kwargs)
    transform = ds.batch_transform("cpu")
    graphed = GraphedTransform(transform, capture=eager_capture)
    for batch in _batches(ds, 6, GRAPH_COPIES + 4):
        graphed.consumer_point(None)
        _same(graphed(batch), transform(batch))  # the previous batch is dropped here, as a loop does
    assert graphed.captured == GRAPH_COPIES and graphed.replayed == 4 and graphed.disabled is None


def test_images_the_consumer_keeps_are_never_overwritten(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    transform = ds.batch_transform("cpu")
    graphed = GraphedTransform(transform, capture=eager_capture)
    batches = _batches(ds, 5, GRAPH_COPIES + 3)
    kept = []
    for batch in batches:
        graphed.consumer_point(None)
        kept.append(graphed(batch)["image"])  # e.g. collected for a figure
    for image, batch in zip(kept, batches):
        assert torch.equal(image, transform(batch)["image"])
    assert graphed.replayed == 0  # every static image stayed held: the rest were made afresh
    # a view kept of one image is a hold too
    del kept
    graphed.consumer_point(None)
    part = graphed(batches[0])["image"][:, :2]
    for batch in batches[1:GRAPH_COPIES + 2]:
        graphed.consumer_point(None)
        graphed(batch)
    assert graphed.replayed > 0  # the other images were reused meanwhile
    assert torch.equal(part, transform(batches[0])["image"][:, :2])


def test_short_batches_and_augmentation_are_made_the_ordinary_way(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    transform = ds.batch_transform("cpu")
    graphed = GraphedTransform(transform, capture=eager_capture)
    full, short = ds.read_batch(list(range(8))), ds.read_batch([9, 3, 4])
    for batch in (full, short, full, short):
        graphed.consumer_point(None)
        _same(graphed(batch), transform(batch))
    assert graphed.captured == 2
    # a resumed epoch may start with its short last batch: graphs are for the loader's size
    sized = GraphedTransform(transform, batch_size=8, capture=eager_capture)
    for batch in (short, full, full):
        sized.consumer_point(None)
        _same(sized(batch), transform(batch))
    assert sized.captured == 2
    augmenting = ds.batch_transform("cpu")
    augmenting.augment = "flip-rot90"
    flips = GraphedTransform(augmenting, capture=eager_capture)
    _same(flips(full), augmenting(full))
    assert flips.captured == 0
    # a compiled transform is left alone too: its first call compiles, which no capture can hold
    compiled = ds.batch_transform("cpu")
    compiled.compiled = True
    fused = GraphedTransform(compiled, capture=eager_capture)
    _same(fused(full), transform(full))
    assert fused.captured == 0


def test_a_failed_capture_warns_once_and_batches_stay_right(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    transform = ds.batch_transform("cpu")

    def refuse(fn, pool, stream):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedTransform(transform, capture=refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in _batches(ds, 4, 3):
            _same(graphed(batch), transform(batch))
    assert len(caught) == 1 and "without CUDA graphs" in str(caught[0].message)
    assert "operation not permitted" in graphed.disabled and graphed.captured == 0 and graphed.held_bytes == 0


def test_the_loader_hands_out_replayed_batches_in_order(synth_store_64: Path) -> None:
    """DeviceLoader's one-batch-ahead path with graphs (the CUDA path, here with the eager
    stand-in): the same batches as without graphs, epoch after epoch, and the images a
    consumer keeps stay intact."""
    from benzarr.data import make_loader

    ds = BigEarthNetDataset(synth_store_64, normalize=True)
    plain = make_loader(ds, 6, True, 0, seed=2, device="cpu", drop_last=False)
    graphed = make_loader(ds, 6, True, 0, seed=2, device="cpu", drop_last=False)
    graphed.graphs, graphed._graph_capture = True, eager_capture
    for epoch in (0, 3):
        plain.set_epoch(epoch)
        graphed.set_epoch(epoch)
        expected = [{k: v.clone() for k, v in b.items()} for b in plain._transformed_ahead(plain.transform)]
        got = [{k: v.clone() for k, v in b.items()} for b in graphed._transformed_ahead(graphed.transform)]
        assert len(got) == len(expected) == 11
        for a, b in zip(expected, got):
            _same(a, b)
    assert graphed._graphed.replayed > 0
    assert graphed.graph_stats() == {"captured": graphed._graphed.captured, "replayed": graphed._graphed.replayed,
                                     "disabled": None} and plain.graph_stats() is None
    kept = list(graphed._transformed_ahead(graphed.transform))
    for a, b in zip(expected, kept):
        _same(a, b)
    made = graphed._graphed
    graphed.close()  # the graphs' memory goes with the loader's
    assert graphed._graphed is None and made.held_bytes == 0 and made.disabled == "released"
    assert graphed.graph_stats() is None


def test_graphs_are_off_unless_asked_for_and_a_bad_switch_is_named(monkeypatch) -> None:
    """Off by default until measured on a GPU; ``BENZARR_CUDA_GRAPHS=1`` (the switch for
    ``benzarr train``, which has no loader to set) or ``benzarr.data.CUDA_GRAPHS`` turn them on."""
    import benzarr.data
    from benzarr.errors import InvalidArgumentError

    monkeypatch.setattr(benzarr.data, "CUDA_GRAPHS", None)
    monkeypatch.delenv("BENZARR_CUDA_GRAPHS", raising=False)
    assert benzarr.data.cuda_graphs_default() is False
    for value, expected in (("1", True), ("on", True), ("off", False), (" No ", False)):
        monkeypatch.setenv("BENZARR_CUDA_GRAPHS", value)
        assert benzarr.data.cuda_graphs_default() is expected, value
    monkeypatch.setenv("BENZARR_CUDA_GRAPHS", "disable")
    with pytest.raises(InvalidArgumentError, match="BENZARR_CUDA_GRAPHS='disable'"):
        benzarr.data.cuda_graphs_default()
    monkeypatch.setattr(benzarr.data, "CUDA_GRAPHS", True)  # a benchmark's process-wide choice wins
    assert benzarr.data.cuda_graphs_default() is True


def test_a_capture_failing_after_others_worked_releases_them(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    transform = ds.batch_transform("cpu")
    calls = []

    def second_fails(fn, pool, stream):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return fn, pool

    graphed = GraphedTransform(transform, capture=second_fails)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        for batch in _batches(ds, 4, 4):
            graphed.consumer_point(None)
            _same(graphed(batch), transform(batch))
    assert graphed.captured == 1 and graphed.held_bytes == 0 and "out of memory" in graphed.disabled
    assert len(calls) == 2  # nothing captured after the failure


@pytest.mark.parametrize("modalities", [("s2",), ("s2", "s1", "reference-map")], ids=["s2", "s2+s1+mask"])
def test_ring_slots_copied_straight_into_the_graphs_give_the_eager_batches(synth_store_64: Path,
                                                                          synth_v2_store: Path,
                                                                          modalities: tuple) -> None:
    """The CUDA path with graphs (benzarr.ring.HostSlot, GraphedTransform.from_slot): each full
    batch's slot copied in one transfer into the static inputs, a short last batch and batches
    whose images the consumer keeps made the ordinary way; here on the CPU with the eager
    stand-in. The same batches as the eager transform, over two epochs, and every slot back."""
    from torch.utils.data import BatchSampler, RandomSampler

    from benzarr.ring import RingLoader

    store = synth_store_64 if modalities == ("s2",) else synth_v2_store
    ds = BigEarthNetDataset(store, modalities=modalities, normalize=True)
    transform = ds.batch_transform("cpu")
    size = 6 if len(ds) % 6 else 5  # a short last batch
    graphed = GraphedTransform(transform, batch_size=size, capture=eager_capture)
    batches = BatchSampler(RandomSampler(range(len(ds)), generator=torch.Generator().manual_seed(1)), size, False)
    kept = []
    with RingLoader(ds, batches, num_workers=2) as ring:
        for epoch in (0, 1):
            got = []
            for i, slot in enumerate(ring.iter_slots()):
                graphed.consumer_point(None)
                out = graphed.from_slot(slot)
                assert slot.released  # the slot went back once copied
                if epoch == 1 and i < GRAPH_COPIES + 1:
                    kept.append(out)  # held: the next batches cannot reuse these images
                got.append({k: v.clone() for k, v in out.items()})
            ring.set_epoch(epoch + 1)
            assert sorted(i for batch in got for i in batch["index"].tolist()) == list(range(len(ds)))
            assert len(got[-1]["index"]) < size
            for batch in got:
                _same(batch, transform(ds.read_batch(batch["index"].tolist())))
        abandoned = ring.iter_slots()
        slot = next(abandoned)
        abandoned.close()  # a consumer that stops before copying the slot it was given
        assert slot.released
        assert len(ring._free) + len(ring._copies) + sum(ring._outstanding) + len(ring._ready) == ring.n_slots
    assert graphed.replayed > 0 and graphed.captured == GRAPH_COPIES
    for batch in kept:  # images handed out and kept were never overwritten
        _same(batch, transform(ds.read_batch(batch["index"].tolist())))
    if "reference-map" in modalities:
        assert kept[0]["mask"].dtype == torch.int64


def test_the_loader_feeds_its_graphs_straight_from_the_ring_slots(synth_store_64: Path) -> None:
    """DeviceLoader's one-batch-ahead path over the batch ring with graphs (on CUDA the slots
    are copied straight into the graphs' inputs; here on the CPU with the eager stand-in): the
    same batches as the staged path and as no graphs, epoch after epoch, a part-epoch resumed
    included, and every slot back in the ring after each epoch."""
    from torch.utils.data import DistributedSampler

    from benzarr.data import DeviceLoader, ResumableBatchSampler
    from benzarr.ring import RingLoader

    ds = BigEarthNetDataset(synth_store_64, normalize=True)

    def loader(graphs: bool, direct: bool = True) -> DeviceLoader:
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=5, drop_last=False)
        batches = ResumableBatchSampler(sampler, batch_size=6, drop_last=False)
        made = DeviceLoader(ds, RingLoader(ds, batches, 2), sampler, ds.batch_transform("cpu"), batches)
        made.graphs, made._graph_capture, made.direct_copy = graphs, eager_capture, direct
        return made

    def epoch(made: DeviceLoader, number: int) -> list[dict[str, torch.Tensor]]:
        made.set_epoch(number)
        return [{k: v.clone() for k, v in b.items()} for b in made._transformed_ahead(made.transform)]

    plain, staged, direct = loader(False), loader(True, direct=False), loader(True)
    try:
        for number in (0, 1):
            expected = epoch(plain, number)
            assert len(expected) == 11
            for other in (staged, direct):
                got = epoch(other, number)
                assert len(got) == len(expected)
                for a, b in zip(expected, got):
                    _same(a, b)
            ring = direct.loader
            assert len(ring._free) + len(ring._copies) + sum(ring._outstanding) + len(ring._ready) == ring.n_slots
        assert direct._graphed._span is not None and staged._graphed._span is None  # each took its own path
        assert direct._graphed.replayed > 0
        # a part-epoch, as a resumed run asks for it: the rest of epoch 1 from its fourth batch
        direct.batch_sampler.skip = 3
        direct.sampler.set_epoch(1)
        rest = [{k: v.clone() for k, v in b.items()} for b in direct._transformed_ahead(direct.transform)]
        assert len(rest) == len(expected) - 3
        for a, b in zip(expected[3:], rest):
            _same(a, b)
    finally:
        for made in (plain, staged, direct):
            made.close()
