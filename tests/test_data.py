"""BigEarthNetDataset, BatchTransform and make_loader: what a training script relies on."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benzarr.bigearthnet import BANDS, CLC19, RGB_BANDS, band_location
from benzarr.data import BatchTransform, BigEarthNetDataset, make_loader
from benzarr.errors import InvalidArgumentError, SplitNotFoundError, StoreCorruptError, StoreIncompleteError
from benzarr.shards import ShardReader, ZarrRowReader
from benzarr.store import open_store
from tests.conftest import copy_tree


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory, synth_store_64: Path) -> Path:
    """The 64-patch lz4 store with a split ``s``: 40 train, 12 val, 10 test, 2 excluded."""
    store = copy_tree(synth_store_64, tmp_path_factory.mktemp("split") / "store.zarr")
    codes = np.array([0] * 40 + [1] * 12 + [2] * 10 + [-1] * 2, dtype=np.int8)
    codes = np.random.default_rng(0).permutation(codes)
    open_store(store, mode="r+").write_split("s", codes, {"method": "test"})
    return store


@pytest.fixture(scope="module")
def native(synth_store_64: Path) -> dict[str, np.ndarray]:
    """All band arrays and labels of the store, read with zarr-python."""
    group = zarr.open_group(str(synth_store_64), mode="r")
    return {name: np.asarray(group[path][:]) for name, path in
            [("10m", "s2/10m"), ("20m", "s2/20m"), ("60m", "s2/60m"), ("clc43", "labels/clc43"),
             ("clc19", "labels/clc19")]}


def reference_image(native: dict[str, np.ndarray], row: int, bands: list[str] | tuple[str, ...]) -> torch.Tensor:
    """(C, 120, 120): each native band upsampled with F.interpolate(bilinear, align_corners=False)."""
    planes = []
    for band in bands:
        group, channel = band_location(band)
        plane = torch.from_numpy(native[group][row, channel].astype(np.float32))[None, None]
        if plane.shape[-1] != 120:
            plane = F.interpolate(plane, size=(120, 120), mode="bilinear", align_corners=False)
        planes.append(plane[0, 0])
    return torch.stack(planes)


# -- samples ---------------------------------------------------------------------------


def test_sample_is_a_torchgeo_style_dict(synth_store_64: Path, native: dict[str, np.ndarray]) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    assert len(ds) == 64 and ds.fast
    sample = ds[5]
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (12, 120, 120)
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == (43,)
    assert sample["index"] == 5
    np.testing.assert_array_equal(sample["label"].numpy(), native["clc43"][5])


def test_sample_image_is_bilinear_upsampling_of_native_arrays(synth_store_64: Path,
                                                              native: dict[str, np.ndarray]) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    for i in (0, 17, 63):
        assert torch.equal(ds[i]["image"], reference_image(native, i, BANDS))
    assert ds[-1]["index"] == 63


def test_rgb_is_b04_b03_b02(synth_store_64: Path, native: dict[str, np.ndarray]) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    assert ds.bands == RGB_BANDS == ("B04", "B03", "B02")
    assert torch.equal(ds[3]["image"], torch.from_numpy(native["10m"][3, [2, 1, 0]].astype(np.float32)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bands=st.lists(st.sampled_from(BANDS), min_size=1, max_size=12, unique=True), row=st.integers(0, 63))
def test_band_selection_returns_those_bands_in_that_order(synth_store_64: Path, native: dict[str, np.ndarray],
                                                          bands: list[str], row: int) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands=bands)
    assert torch.equal(ds[row]["image"], reference_image(native, row, bands))
    batch = ds.read_batch([row])
    needed = {band_location(b)[0] for b in bands}
    assert set(batch) == needed | {"label", "index"}  # only the band groups the bands need


def test_unknown_band_is_named_with_the_valid_ones(synth_store_64: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"'B10'.*B01, B02.*B12"):
        BigEarthNetDataset(synth_store_64, bands=["B02", "B10"])
    with pytest.raises(InvalidArgumentError, match="rgbn"):
        BigEarthNetDataset(synth_store_64, bands="rgbn")


def test_clc19_labels(synth_store_64: Path, native: dict[str, np.ndarray]) -> None:
    ds = BigEarthNetDataset(synth_store_64, labels="clc19")
    assert ds.classes == list(CLC19)
    np.testing.assert_array_equal(ds[9]["label"].numpy(), native["clc19"][9])
    with pytest.raises(InvalidArgumentError, match="clc20"):
        BigEarthNetDataset(synth_store_64, labels="clc20")
    with pytest.raises(InvalidArgumentError, match=r"unknown label set \['clc19'\]: choose one of clc43, clc19"):
        BigEarthNetDataset(synth_store_64, labels=["clc19"])  # was TypeError: unhashable type: 'list'


def test_normalize_uses_store_band_statistics(synth_store_64: Path) -> None:
    stats = open_store(synth_store_64).band_stats()
    bands = ["B8A", "B02", "B09"]
    plain = BigEarthNetDataset(synth_store_64, bands=bands)[7]["image"]
    normal = BigEarthNetDataset(synth_store_64, bands=bands, normalize=True)[7]["image"]
    for c, band in enumerate(bands):
        expected = (plain[c] - stats[band]["mean"]) / stats[band]["std"]
        torch.testing.assert_close(normal[c], expected, rtol=1e-5, atol=1e-5)


def test_transform_is_applied_to_samples(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands="rgb", transform=lambda s: {**s, "image": s["image"] * 0})
    assert ds[0]["image"].abs().sum() == 0


# -- batches ---------------------------------------------------------------------------


def test_read_batch_returns_native_uint16_groups(synth_store_64: Path, native: dict[str, np.ndarray]) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    indices = [40, 3, 3, 63, 0, 17]  # across shards, repeated, unsorted
    batch = ds.read_batch(indices)
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == {
        "10m": ((6, 4, 120, 120), torch.uint16), "20m": ((6, 6, 60, 60), torch.uint16),
        "60m": ((6, 2, 20, 20), torch.uint16), "label": ((6, 43), torch.uint8), "index": ((6,), torch.int64)}
    for group in ("10m", "20m", "60m"):
        np.testing.assert_array_equal(batch[group].numpy(), native[group][indices])
    np.testing.assert_array_equal(batch["label"].numpy(), native["clc43"][indices])


def _double(sample: dict) -> dict:
    return {**sample, "image": sample["image"] * 2}  # module level: DataLoader workers unpickle it


@pytest.mark.parametrize("workers", [0, 2])
def test_a_plain_torch_dataloader_gets_the_samples_of_ds_i(split_store: Path, workers: int) -> None:
    """torch's fetcher calls ``__getitems__`` whenever a dataset has one and expects a list of
    samples: a plain ``DataLoader(ds, batch_size=4)`` (or one over ``random_split``) failed
    with ``KeyError: 0`` when ``__getitems__`` returned benzarr's native batch."""
    from torch.utils.data import DataLoader, random_split

    ds = BigEarthNetDataset(split_store, split="s", subset="train", bands=["B12", "B04", "B01"], normalize=True,
                            transform=_double)
    batches = list(DataLoader(ds, batch_size=4, num_workers=workers))
    assert len(batches) == 10 and batches[0]["image"].shape == (4, 3, 120, 120)
    for b, i in ((0, 0), (0, 3), (9, 39)):  # bit for bit the samples ds[i] gives, the transform applied
        for key in ("image", "label"):
            assert torch.equal(batches[b][key][i % 4], ds[i][key]), (key, i)
        assert batches[b]["index"][i % 4].item() == ds[i]["index"]
    part = random_split(ds, [0.5, 0.5], generator=torch.Generator().manual_seed(0))[0]
    first = next(iter(DataLoader(part, batch_size=3, num_workers=workers)))
    assert torch.equal(first["image"][2], ds[part.indices[2]]["image"])
    assert ds.__getitems__([]) == []


def test_zarr_fallback_reads_the_same_batches(synth_store_64: Path) -> None:
    fast = BigEarthNetDataset(synth_store_64)
    slow = BigEarthNetDataset(synth_store_64)
    slow._readers = {g: ZarrRowReader(r.array if hasattr(r, "array") else zarr.open_array(str(r.array_dir)), g)
                     for g, r in fast.readers.items()}
    assert all(isinstance(r, ShardReader) for r in fast.readers.values())
    indices = [1, 60, 30, 1]
    a, b = fast.read_batch(indices), slow.read_batch(indices)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_transform_matches_single_samples(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands=["B12", "B04", "B01"], normalize=True)
    out = BatchTransform(ds.bands, "cpu", ds.mean, ds.std)(ds.read_batch([2, 50]))
    assert out["image"].shape == (2, 3, 120, 120) and out["label"].dtype == torch.float32
    torch.testing.assert_close(out["image"][1], ds[50]["image"])


@pytest.mark.parametrize("kwargs, message", [
    ({"mean": [1, 2, 3], "std": [1, math.nan, 3]}, "mean and std must be finite numbers and std not negative"),
    ({"mean": [1, 2, 3], "std": [1, -2, 3]}, "mean and std must be finite numbers and std not negative"),
    ({"mean": "abc", "std": [1, 2, 3]}, "mean and std must be finite numbers and std not negative"),
    ({"mean": [1, 2], "std": [1, 2]}, "mean and std need one value per band (3), got 2 and 2"),
    ({"align_corners": "no"}, "align_corners must be True or False, got 'no'"),
    ({"augment": "flip", "seed": 1.7}, "seed must be a whole number, got 1.7"),
    ({"augment": "flip", "seed": -1}, "seed must be between 0 and 4294967295, got -1"),
    ({"bands": "rgb"}, "bands must be a list of band names in output order, such as a dataset's ds.bands"),
])
def test_batch_transform_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    """A NaN std made every image NaN and a negative one flipped the band, silently; a str mean
    was torch's ValueError "too many dimensions 'str'"; align_corners="no" was true, seed 1.7 was 1;
    bands="rgb" was "unknown band 'r'"."""
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        BatchTransform(**({"bands": ["B04", "B03", "B02"], "device": "cpu"} | kwargs))
    transform = BatchTransform(["B04"], "cpu", augment="flip")
    for epoch in (1.9, -5, "2"):  # 1.9 drew epoch 1's flips
        with pytest.raises(InvalidArgumentError, match=r"^epoch must be"):
            transform.set_epoch(epoch)


def test_a_batch_without_the_groups_the_bands_need_is_one_line(synth_store_64: Path) -> None:
    """A batch read for RGB given to a transform of B05 was KeyError: '20m'."""
    batch = BigEarthNetDataset(synth_store_64, bands="rgb").read_batch([0, 1])
    with pytest.raises(InvalidArgumentError, match=r"^the batch has no '20m' \(it has: 10m, label, index\); the bands "
                                                   r"B05 need 20m: read the batch with a dataset of these bands$"):
        BatchTransform(["B05"], "cpu")(batch)
    with pytest.raises(InvalidArgumentError, match=r"^the batch has no 'index'"):
        BatchTransform(["B04"], "cpu")({"10m": batch["10m"], "label": batch["label"]})


def test_a_zero_std_leaves_a_constant_band_centred(synth_store_64: Path) -> None:
    batch = BigEarthNetDataset(synth_store_64, bands="rgb").read_batch([0])
    image = BatchTransform(["B04", "B03", "B02"], "cpu", [0, 0, 0], [1, 0, 1])(batch)["image"]
    assert torch.isfinite(image).all()  # was inf: divided by zero


def test_a_transform_or_loader_on_a_device_it_cannot_use_is_one_line(synth_store_64: Path) -> None:
    """BatchTransform(bands, "gpu") was torch's RuntimeError; make_loader(device="meta") served
    shape-only tensors."""
    with pytest.raises(InvalidArgumentError, match=r"^device 'gpu': "):
        BatchTransform(["B04"], "gpu")
    with pytest.raises(InvalidArgumentError, match=r"^device 'meta': the meta device holds no data; use cpu or cuda$"):
        make_loader(BigEarthNetDataset(synth_store_64, bands="rgb"), 4, False, 0, seed=0, device="meta")


def test_flags_paths_and_callables_of_the_wrong_type_are_one_line(synth_store_64: Path) -> None:
    """shuffle="no" shuffled (a string is true), normalize="yes" was stored as a string,
    transform=5 failed only at ds[0], make_loader([1, 2, 3]) was an AttributeError."""
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    with pytest.raises(InvalidArgumentError, match=r"^shuffle must be True or False, got 'no'$"):
        make_loader(ds, 4, "no", 0, seed=0, device="cpu")
    with pytest.raises(InvalidArgumentError, match=r"^make_loader reads a BigEarthNetDataset, got list"):
        make_loader([1, 2, 3], 4, False, 0, seed=0, device="cpu")
    with pytest.raises(InvalidArgumentError, match=r"^normalize must be True or False, got 'yes'$"):
        BigEarthNetDataset(synth_store_64, normalize="yes")
    with pytest.raises(InvalidArgumentError, match=r"^transform must be a callable taking a sample, got 5$"):
        BigEarthNetDataset(synth_store_64, transform=5)
    with pytest.raises(InvalidArgumentError, match=r"^store must be a path or URL, got NoneType None$"):
        BigEarthNetDataset(None)


def test_split_subsets_and_unknown_split(split_store: Path) -> None:
    store = open_store(split_store)
    codes, _ = store.read_split("s")
    for subset, code in (("train", 0), ("val", 1), ("test", 2)):
        ds = BigEarthNetDataset(split_store, split="s", subset=subset)
        np.testing.assert_array_equal(ds.rows, np.flatnonzero(codes == code))
        assert ds[0]["index"] == ds.rows[0]
    assert len(BigEarthNetDataset(split_store, split="s")) == 62
    with pytest.raises(SplitNotFoundError, match=r"'official'.*s"):
        BigEarthNetDataset(split_store, split="official")
    with pytest.raises(InvalidArgumentError, match=r"^unknown subset \['train', 'val'\]: choose one of train, val, "
                                                   r"test \(one subset, a str; subset=None serves every row"):
        BigEarthNetDataset(split_store, split="s", subset=["train", "val"])  # TypeError: unhashable type


def test_incomplete_store_is_refused(tmp_path: Path, synth_store_64: Path) -> None:
    store = copy_tree(synth_store_64, tmp_path / "store.zarr")
    open_store(store, mode="r+").update_attrs(complete=False)
    with pytest.raises(StoreIncompleteError):
        BigEarthNetDataset(store)


def corrupt_copy(source: Path, target: Path, array: str, shard: int, position: int, flip: int) -> tuple[Path, Path]:
    """Copy a store and flip bits of one byte of a shard file: (store, shard file)."""
    store = copy_tree(source, target)
    path = store / array / "c" / str(shard) / "0" / "0" / "0"
    raw = bytearray(path.read_bytes())
    raw[position] ^= flip
    path.write_bytes(bytes(raw))
    return store, path


def test_corrupt_shard_names_array_file_and_patch(tmp_path: Path, synth_store_64: Path) -> None:
    store, shard = corrupt_copy(synth_store_64, tmp_path / "store.zarr", "s2/20m", 2, -20, 0x01)
    ds = BigEarthNetDataset(store)
    name = open_store(store).patch_names()[35]
    ds[20]  # other shards read fine
    with pytest.raises(StoreCorruptError) as info:
        ds[35]
    assert "s2/20m" in str(info.value) and str(shard) in str(info.value)
    assert "row 35" in str(info.value) and name in str(info.value)


def test_corrupt_shard_in_a_loader_worker_is_one_clean_error(tmp_path: Path, synth_store_64: Path) -> None:
    store, _ = corrupt_copy(synth_store_64, tmp_path / "store.zarr", "s2/10m", 1, -10, 0xFF)
    loader = make_loader(BigEarthNetDataset(store), 16, False, 1, seed=0, device="cpu")
    with pytest.raises(StoreCorruptError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith("s2/10m: shard file") and "crc32c" in message
    assert "Traceback" not in message and "\n" not in message


def test_dataset_pickles_without_maps(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._readers is None and clone._store is None
    assert torch.equal(clone[0]["image"], ds[0]["image"])


def test_plot_shows_rgb_with_labels(synth_store_64: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ds = BigEarthNetDataset(synth_store_64)
    sample = ds[4]
    figure = ds.plot(sample)
    title = figure.axes[0].get_title().replace("\n", " ")
    assert all(ds.classes[i] in title for i in np.flatnonzero(sample["label"].numpy()))
    import matplotlib.pyplot as plt

    plt.close(figure)


# -- loader ----------------------------------------------------------------------------


def _epoch(loader) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def test_loader_is_deterministic_for_a_seed(split_store: Path) -> None:
    ds = BigEarthNetDataset(split_store, split="s", subset="train", bands="rgb")
    first = make_loader(ds, 16, True, 0, seed=3, device="cpu")
    second = make_loader(ds, 16, True, 0, seed=3, device="cpu")
    assert len(first) == 3
    a, b = _epoch(first), _epoch(second)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert sorted(torch.cat([x["index"] for x in a]).tolist()) == ds.rows.tolist()
    first.set_epoch(1)
    reshuffled = torch.cat([x["index"] for x in _epoch(first)])
    assert not torch.equal(reshuffled, torch.cat([x["index"] for x in a]))
    second.set_epoch(1)
    assert torch.equal(reshuffled, torch.cat([x["index"] for x in _epoch(second)]))
    other = torch.cat([x["index"] for x in _epoch(make_loader(ds, 16, True, 0, seed=4, device="cpu"))])
    assert not torch.equal(other, torch.cat([x["index"] for x in a]))


def test_batches_skip_deterministic_modes_nan_fill_and_equal_the_other_modes(split_store: Path) -> None:
    """Under deterministic algorithms (the trainer's default) torch fills every new tensor with
    NaN; the loader's own buffers are written whole, so they skip it (it cost 0-worker CPU
    delivery of unnormalised batches a quarter of its speed): the fill is off while a batch is read and made, on
    again after (the model's tensors keep it), and the batches equal those made with
    deterministic algorithms off, with no NaN in them."""
    from benzarr import transform as transform_module

    ds = BigEarthNetDataset(split_store, split="s", subset="train", bands="all")
    seen: list[bool] = []
    original = BatchTransform._image  # what __call__ makes the image with

    def recording(self, *args, **kwargs):
        seen.append(torch.utils.deterministic.fill_uninitialized_memory)
        return original(self, *args, **kwargs)

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(BatchTransform, "_image", recording)
            det = _epoch(make_loader(ds, 16, True, 0, seed=3, device="cpu"))
        assert seen and not any(seen)
        assert torch.utils.deterministic.fill_uninitialized_memory is True
        assert torch.isnan(torch.empty(4)).all()  # anyone else's new tensors are still filled
        with pytest.raises(RuntimeError, match="boom"), transform_module.unfilled_allocations():
            assert torch.utils.deterministic.fill_uninitialized_memory is False
            raise RuntimeError("boom")
        assert torch.utils.deterministic.fill_uninitialized_memory is True
        torch.use_deterministic_algorithms(False)
        with transform_module.unfilled_allocations():  # not deterministic: nothing to change
            assert torch.utils.deterministic.fill_uninitialized_memory is True
        plain = _epoch(make_loader(ds, 16, True, 0, seed=3, device="cpu"))
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert len(det) == len(plain) == 3
    assert all(torch.equal(x[k], y[k]) for x, y in zip(det, plain) for k in x)
    assert not any(torch.isnan(x["image"]).any() for x in det)


def test_compile_transform_is_a_cuda_switch(split_store: Path) -> None:
    """``make_loader(compile_transform=True)``: off CUDA, one warning and the same batches as
    without it; on CUDA, the loader's transform has :attr:`BatchTransform.compiled` on (the
    compiled batches themselves are compared on a GPU by benchmarks/gpu_ring_check.py); a
    value that is not a bool is refused, as ``"no"`` would mean yes."""
    from benzarr import data

    ds = BigEarthNetDataset(split_store, split="s", subset="train", bands="all")
    with pytest.warns(UserWarning, match="compile_transform applies on CUDA only: on cpu"):
        compiled = make_loader(ds, 16, True, 0, seed=3, device="cpu", compile_transform=True)
    plain = make_loader(ds, 16, True, 0, seed=3, device="cpu")
    assert all(torch.equal(x[k], y[k]) for x, y in zip(_epoch(compiled), _epoch(plain)) for k in x)
    with pytest.raises(InvalidArgumentError, match="compile_transform must be True or False, got 'no'"):
        make_loader(ds, 16, True, 0, seed=3, device="cpu", compile_transform="no")
    transform = ds.batch_transform("cpu", 0)
    assert data._compiled(transform, True).compiled is False  # the CPU's stays eager
    transform.device = torch.device("cuda")  # (no GPU here: the switch alone)
    assert data._compiled(transform, False).compiled is False and data._compiled(transform, True).compiled is True


def test_loader_batches_are_device_transformed(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands=["B09", "B03"])
    batch = next(iter(make_loader(ds, 8, False, 0, seed=0, device="cpu")))
    assert batch["image"].shape == (8, 2, 120, 120) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (8, 43) and batch["label"].dtype == torch.float32
    assert torch.equal(batch["index"], torch.arange(8))
    assert torch.equal(batch["image"][6], ds[6]["image"])


def test_batches_made_here_reuse_the_buffers_the_consumer_let_go(synth_store_64: Path) -> None:
    """Without workers the CPU transform writes into recycled buffers (a fresh 44 MB image a
    batch cost 10,800 page faults): the same values as the transform alone, a buffer reused
    once its batch is dropped, and never while the consumer keeps a view of it."""
    ds = BigEarthNetDataset(synth_store_64, normalize=True, modalities=("s2",))
    transform = ds.batch_transform("cpu")
    expected = [transform(ds.read_batch(list(range(i, min(i + 12, 64)))))["image"] for i in range(0, 64, 12)]
    pointers, kept = [], None
    for i, batch in enumerate(make_loader(ds, 12, False, 0, seed=0, device="cpu")):
        assert torch.equal(batch["image"], expected[i]), i  # the last batch is short: 4 patches
        pointers.append(batch["image"].data_ptr())
        if i == 1:
            kept = batch["image"][1:3]  # a view the consumer keeps
    assert len(pointers) == 6 and len(set(pointers)) < len(pointers)  # buffers were reused...
    assert pointers.count(pointers[1]) == 1 and torch.equal(kept, expected[1][1:3])  # ...but not the kept one


def test_a_consumer_that_keeps_labels_keeps_at_most_four_buffers(synth_store_64: Path) -> None:
    """``labels.append(batch["label"])`` keeps each batch's buffer alive through the view:
    after four such buffers the batches come in fresh tensors, so memory stays bounded."""
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    kept = [(batch["label"], batch["index"]) for batch in make_loader(ds, 4, False, 0, seed=0, device="cpu")]
    assert len(kept) == 16
    in_buffers = [label.untyped_storage().nbytes() > label.numel() * 4 for label, _ in kept]
    assert in_buffers == [True] * 4 + [False] * 12
    assert torch.equal(torch.cat([index for _, index in kept]), torch.arange(64))
    assert torch.equal(torch.cat([label for label, _ in kept]), torch.from_numpy(ds._labels[:]).float())


def test_workers_deliver_the_same_batches(synth_store_64: Path) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    ds[0]  # maps shards in this process first: workers must not rely on them
    serial = make_loader(ds, 10, True, 0, seed=7, device="cpu")
    parallel = make_loader(ds, 10, True, 2, seed=7, device="cpu")
    for epoch in (0, 1):  # persistent workers follow set_epoch
        serial.set_epoch(epoch)
        parallel.set_epoch(epoch)
        a, b = _epoch(serial), _epoch(parallel)
        assert len(a) == len(b) == 7
        assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def _distributed_worker(rank: int, world: int, store: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        ds = BigEarthNetDataset(store, split="s", subset="train", bands=["B01"])
        loader = make_loader(ds, 8, True, 0, seed=1, device="cpu", distributed=True)
        rows = [batch["index"] for batch in loader]
        torch.save({"rows": torch.cat(rows), "batches": len(loader)}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_cover_the_subset_disjointly(tmp_path: Path, split_store: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(split_store), str(tmp_path / "init"), str(tmp_path)),
             nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    rows = [set(p["rows"].tolist()) for p in parts]
    assert all(len(p["rows"]) == 20 and p["batches"] == 3 for p in parts)
    assert rows[0].isdisjoint(rows[1])
    expected = BigEarthNetDataset(split_store, split="s", subset="train").rows
    assert rows[0] | rows[1] == set(expected.tolist())


def test_distributed_needs_a_process_group(synth_store_64: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="init_process_group"):
        make_loader(BigEarthNetDataset(synth_store_64), 4, True, 0, seed=0, device="cpu", distributed=True)


# -- benzarr bench ---------------------------------------------------------------------


def test_bench_store_measures_single_batched_and_loader(synth_store_64: Path) -> None:
    from benzarr.bench import bench_store

    results = bench_store(synth_store_64, batch_size=8, workers=0, min_seconds=0.01)
    assert [r.name for r in results] == ["single native", "single sample", "batched native", "loader, 0 workers"]
    assert all(r.patches > 0 and r.patches_per_s > 0 and r.bytes_per_patch == 160_000 for r in results)
    assert 0 < results[0].stored_bytes_per_patch < 160_000  # lz4


@pytest.mark.parametrize("kwargs, message", [({"min_seconds": float("nan")}, "--seconds must be a positive, finite"),
                                            ({"min_seconds": float("inf")}, "--seconds must be a positive, finite"),
                                            ({"batch_size": 0}, "--batch-size must be at least 1"),
                                            ({"workers": -1}, "--workers must be 0 or more"),
                                            # NumPy's bare "expected non-negative integer"
                                            ({"seed": -1}, "--seed must be between 0 and 4294967295, got -1"),
                                            ({"seed": 2**32}, "--seed must be between 0 and 4294967295")])
def test_bench_names_the_bad_option(synth_store_64: Path, kwargs: dict, message: str) -> None:
    """--seconds nan never ended; the three checks shared one message naming none."""
    from benzarr.bench import bench_store

    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        bench_store(synth_store_64, **({"batch_size": 8, "workers": 0, "min_seconds": 0.01} | kwargs))


def test_bench_bounds_the_batch_size_to_the_store(synth_store_64: Path) -> None:
    """--batch-size 1000000 asked for a 115 GB buffer: "unexpected RuntimeError ... allocate"."""
    from benzarr.bench import bench_store

    results = bench_store(synth_store_64, batch_size=10**6, workers=0, min_seconds=0.01)
    batched = [r for r in results if r.extra.get("batch_size") is not None]
    assert batched and all(r.extra["batch_size"] == 64 for r in batched)


@pytest.mark.parametrize("workers", [0, 2])
def test_make_loader_bounds_the_batch_size_to_the_patches(split_store: Path, workers: int) -> None:
    """`train --batch-size 99999999999999` on a small split: "unexpected ValueError: Maximum
    allowed dimension exceeded" (buffers for that many rows). No batch can hold more rows than
    the subset: the same single batch, and buffers for those rows."""
    ds = BigEarthNetDataset(split_store, split="s", subset="val", bands="rgb")
    whole = [b["index"].tolist() for b in make_loader(ds, len(ds), True, workers, seed=3, device="cpu")]
    with make_loader(ds, 10**14, True, workers, seed=3, device="cpu") as huge:
        assert [b["index"].tolist() for b in huge] == whole and len(whole) == 1 and len(whole[0]) == len(ds)
    with make_loader(ds, 10**14, True, workers, seed=3, device="cpu", drop_last=True) as none:
        assert len(none) == 0 and list(none) == []


@pytest.mark.parametrize("workers", [10**20, 10**5])
def test_make_loader_refuses_a_ring_larger_than_the_memory(split_store: Path, workers: int) -> None:
    """`bench --workers 99999999999999999999`: "unexpected OverflowError" from mmap; 100,000
    workers would map 8 TiB of shared memory and prefault it. One line naming the options."""
    ds = BigEarthNetDataset(split_store, split="s", subset="val", bands="rgb")
    with pytest.raises(InvalidArgumentError, match=r"needs [0-9,.]+ GiB of shared memory, more than this "
                                                   r"machine's .*use fewer --workers"):
        make_loader(ds, 8, True, workers, seed=0, device="cpu")


def test_bench_command_prints_throughput(synth_store_64: Path) -> None:
    from typer.testing import CliRunner

    from benzarr_cli.main import app

    result = CliRunner().invoke(app, ["bench", str(synth_store_64), "--workers", "0", "--seconds", "0.01",
                                      "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "patches/s" in result.output and "batched native" in result.output
    result = CliRunner().invoke(app, ["bench", str(synth_store_64), "--workers", "0", "--seconds", "0.01",
                                      "--batch-size", "8", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    loader = [r for r in json.loads(result.output) if r["name"].startswith("loader")]
    assert loader and all(r["extra"]["device"] == "cpu" for r in loader), loader


def test_bench_device_is_checked_before_measuring(synth_store_64: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device cuda`` on a machine without a GPU: one line naming the option, before any
    measurement runs (not after the CPU rows, at the first loader)."""
    import benzarr.bench

    def never(*args, **kwargs):
        raise AssertionError("measured before checking the device")

    monkeypatch.setattr(benzarr.bench, "timed", never)
    with pytest.raises(InvalidArgumentError, match=re.escape("--device 'cuda': no CUDA GPU is available here")):
        benzarr.bench.bench_store(synth_store_64, batch_size=8, workers=0, min_seconds=0.01, device="cuda")


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda"}, "no CUDA GPU is available here"),
    ({"device": "cuda:0"}, "no CUDA GPU is available here"),
    ({"device": "tpu"}, "device 'tpu'"),
    ({"batch_size": 2.5}, "batch size must be a whole number, got 2.5"),
    ({"batch_size": "4"}, "batch size must be a whole number, got '4'"),
    ({"seed": None}, "seed must be a whole number, got None"),
    ({"seed": 2**70}, "seed must be between 0 and 4294967295, got 1180591620717411303424"),
    ({"seed": -1}, "seed must be between 0 and 4294967295, got -1"),  # accepted: train and split refused it
    ({"prefetch_factor": 0}, "prefetch_factor must be 1 or more, got 0"),
    ({"num_workers": True}, "workers must be a whole number"),
    ({"device": None}, "device must be a str such as 'cpu' or 'cuda:0', or a torch.device; got None"),  # "expected one of:"
])
def test_make_loader_names_a_bad_argument_before_any_batch(synth_store_64: Path, kwargs: dict, message: str) -> None:
    """These leaked torch's own errors, some only at the first batch and after forking workers
    (an unavailable CUDA device), or were quietly changed (prefetch_factor 0 -> 1 on the ring)."""
    if str(kwargs.get("device", "")).startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = {"batch_size": 8, "shuffle": False, "num_workers": 0, "seed": 0, "device": "cpu"} | kwargs
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        make_loader(BigEarthNetDataset(synth_store_64), **args)


@pytest.mark.parametrize("index", [2.7, "3", True, [1, 2], None, slice(0, 3)])
def test_an_index_that_is_not_an_integer_is_a_type_error(synth_store_64: Path, index: object) -> None:
    """ds[2.7] read patch 2, ds["3"] patch 3, ds[True] patch 1 and ds[[1, 2]] patch 1 alone."""
    with pytest.raises(TypeError, match="integers"):
        BigEarthNetDataset(synth_store_64)[index]


@pytest.mark.parametrize("indices, error", [
    ([[1, 2], [3, 4]], TypeError), ([1.5, 2.2], TypeError), (["1"], TypeError), ([True, False], TypeError),
    ([10**20], IndexError), ([2**63 + 5], IndexError), ([64], IndexError), ([-65], IndexError),
])
def test_read_batch_takes_a_flat_sequence_of_integers_only(synth_store_64: Path, indices: list, error: type) -> None:
    ds = BigEarthNetDataset(synth_store_64)
    with pytest.raises(error):
        ds.read_batch(indices)
    with pytest.raises(TypeError, match=r"^indices must be a sequence of integers, got slice slice\(0, 2, None\) "
                                        r"\(list\(range\(start, stop\)\) gives a slice's\)$"):
        ds.read_batch(slice(0, 2))  # said "got shape ()"
    with pytest.raises(TypeError, match=r"^indices must be a sequence of integers, got int 3$"):
        ds.__getitems__(3)
    assert ds.read_batch([])["index"].shape == (0,)
    assert ds.read_batch(np.array([-1, 3], dtype=np.int32))["index"].tolist() == [63, 3]
    assert int(ds[np.int64(5)]["index"]) == 5 and int(ds[torch.tensor(6)]["index"]) == 6


@pytest.mark.parametrize("state", [{}, {"epoch": 0}, None, {"epoch": "x", "served": 1}, {"epoch": -5, "served": 0},
                                   {"epoch": 1.7, "served": 2.9}])
def test_a_bad_loader_state_is_refused_naming_it(synth_store_64: Path, state: object) -> None:
    loader = make_loader(BigEarthNetDataset(synth_store_64), 8, True, 0, seed=0, device="cpu")
    with pytest.raises(InvalidArgumentError, match="loader state"):
        loader.load_state_dict(state)
    for epoch in (-1, "3", None, 2**70):
        with pytest.raises(InvalidArgumentError, match="epoch"):
            loader.set_epoch(epoch)


@pytest.mark.parametrize("engine, workers", [("dataloader", 0), ("ring", 2)])
def test_a_loader_refuses_to_serve_after_its_dataset_normalisation_changed(synth_store_64: Path, engine: str,
                                                                          workers: int) -> None:
    """ds.set_normalization after make_loader: the loader kept serving unnormalised batches."""
    ds = BigEarthNetDataset(synth_store_64, bands="rgb")
    with make_loader(ds, 8, False, workers, seed=0, device="cpu", engine=engine) as loader:
        ds.set_normalization([1000.0] * 3, [10.0] * 3, "mine")
        with pytest.raises(InvalidArgumentError, match=r"^the dataset's normalisation changed \(set_normalization\) "
                                                       r"after make_loader made this loader"):
            next(iter(loader))
    assert float(next(iter(make_loader(ds, 8, False, 0, seed=0, device="cpu")))["image"].mean()) < 0  # a new one


@pytest.mark.parametrize("engine, workers", [("dataloader", 2), ("dataloader", 0), ("ring", 2)])
def test_served_counts_on_from_the_resume_point(synth_store_64: Path, engine: str, workers: int) -> None:
    loader = make_loader(BigEarthNetDataset(synth_store_64, bands="rgb"), 8, True, workers, seed=0, device="cpu",
                         engine=engine)
    loader.load_state_dict({"epoch": 0, "served": 3})
    iterator = iter(loader)
    next(iterator)
    assert loader.state_dict() == {"epoch": 0, "served": 4}
    loader.close()


# -- a dataset or loader kept while its store is replaced (a notebook) ----------------------


@pytest.fixture
def replaceable(tmp_path: Path, synth_archive_64: Path) -> tuple[Path, Path]:
    """(store, other archive): the 64-patch archive ingested at ``store``, and a 64-patch
    archive of other pixels and labels (seed 1) to put another store at the same path."""
    from benzarr.ingest import ingest
    from benzarr.synth import synth_archive

    store = tmp_path / "s.zarr"
    ingest(synth_archive_64, store, workers=1, shard_size=16)
    other = tmp_path / "other"
    synth_archive(other, 64, seed=1, workers=1)
    return store, other


CHANGED = "{}: the store was replaced or removed since this dataset was opened; open it again"


def test_a_dataset_refuses_to_read_once_another_store_is_at_its_path(replaceable: tuple[Path, Path]) -> None:
    """A dataset made before `ingest(..., overwrite=True)` at its path mixed the two stores:
    its labels were the old store's, shards it had mapped served old pixels, shards it had
    not served the new store's; no error."""
    from benzarr.errors import StoreChangedError
    from benzarr.ingest import ingest

    store, other = replaceable
    ds = BigEarthNetDataset(store)
    ds.read_batch([0])  # shard 0 mapped
    assert ds.fast
    ingest(other, store, workers=1, shard_size=16, overwrite=True)
    for read in (lambda: ds.read_batch([0, 20]), lambda: ds[40], lambda: ds.check_store()):
        with pytest.raises(StoreChangedError) as caught:
            read()
        assert str(caught.value) == CHANGED.format(store)
    assert ds._readers is None  # the old store's maps were dropped
    BigEarthNetDataset(store).read_batch([0, 20])  # opened again: reads


def test_splits_and_attributes_written_meanwhile_are_not_another_store(split_store: Path, tmp_path: Path) -> None:
    """What is done to a store in place (a split made, statistics and verify's record added)
    leaves a dataset made before it reading."""
    from benzarr.split import make_split
    from benzarr.stats import split_band_stats

    store = copy_tree(split_store, tmp_path / "s.zarr")
    ds = BigEarthNetDataset(store)
    ds.read_batch([0])
    make_split(open_store(store, mode="r+"), "later", "random", seed=3)
    split_band_stats(str(store), "later")
    open_store(store, mode="r+").update_attrs(note="x")
    assert ds.read_batch([0, 40])["index"].tolist() == [0, 40]


@pytest.mark.parametrize("engine,workers", [("ring", 2), ("dataloader", 2), ("dataloader", 0)])
def test_a_loader_kept_across_a_replace_raises_the_one_line_error(replaceable: tuple[Path, Path], engine: str,
                                                                   workers: int) -> None:
    """A loader made before the store was replaced went on serving old and new patches mixed,
    from its workers too; the error the workers raise reaches the caller as one line."""
    from benzarr.errors import StoreChangedError
    from benzarr.ingest import ingest

    store, other = replaceable
    ds = BigEarthNetDataset(store)
    with make_loader(ds, 16, True, workers, seed=0, device="cpu", engine=engine) as loader:
        assert sum(1 for _ in loader) == 4
        ingest(other, store, workers=1, shard_size=16, overwrite=True)
        with pytest.raises(StoreChangedError) as caught:
            for _ in range(2):  # the ring may have read the next epoch ahead, before the replace: then the one after
                for _ in loader:
                    pass
    assert str(caught.value) == CHANGED.format(store)
