"""Issue 13 §1-2: resampling modes, augmentation on the device, split-train normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from benzarr.augment import AUGMENTATIONS, apply_code, transform_codes
from benzarr.data import BigEarthNetDataset, make_loader
from benzarr.errors import InvalidArgumentError
from benzarr.stats import CACHE_KEY, split_band_stats
from benzarr.store import open_store
from tests.conftest import copy_tree


def _epoch(loader) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory, synth_store_64: Path) -> Path:
    store = copy_tree(synth_store_64, tmp_path_factory.mktemp("aug") / "store.zarr")
    codes = np.random.default_rng(1).permutation(np.array([0] * 40 + [1] * 12 + [2] * 12, dtype=np.int8))
    open_store(store, mode="r+").write_split("s", codes, {"method": "test"})
    return store


@pytest.mark.parametrize("resample,align", [("bilinear", False), ("bilinear", True), ("nearest", False),
                                            ("bicubic", False), ("bicubic", True)])
def test_each_resampling_mode_is_f_interpolate(synth_store_64: Path, resample: str, align: bool) -> None:
    ds = BigEarthNetDataset(synth_store_64, bands=["B05", "B01", "B02"], resample=resample, align_corners=align)
    group = zarr.open_group(str(synth_store_64), mode="r")
    image = ds[7]["image"]
    corners = None if resample == "nearest" else align
    for channel, (path, index) in enumerate([("s2/20m", 0), ("s2/60m", 0)]):
        plane = torch.from_numpy(np.asarray(group[path][7, index]).astype(np.float32))[None, None]
        expected = F.interpolate(plane, size=(120, 120), mode=resample, align_corners=corners)[0, 0]
        assert torch.equal(image[channel], expected)
    assert torch.equal(image[2], torch.from_numpy(np.asarray(group["s2/10m"][7, 0]).astype(np.float32)))


def test_unknown_resampling_and_augmentation_are_named(synth_store_64: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="bilinear, nearest, bicubic"):
        BigEarthNetDataset(synth_store_64, resample="area")
    with pytest.raises(InvalidArgumentError, match="none, flip, flip-rot90"):
        BigEarthNetDataset(synth_store_64, augment="rot")


def test_codes_are_a_pure_function_of_seed_epoch_and_row() -> None:
    rows = np.arange(5000)
    a = transform_codes(rows, seed=3, epoch=1, augment="flip-rot90")
    assert np.array_equal(a, transform_codes(rows, seed=3, epoch=1, augment="flip-rot90"))
    assert not np.array_equal(a, transform_codes(rows, seed=3, epoch=2, augment="flip-rot90"))
    assert not np.array_equal(a, transform_codes(rows, seed=4, epoch=1, augment="flip-rot90"))
    assert np.array_equal(transform_codes(rows[::-1], 3, 1, "flip-rot90"), a[::-1])  # order-free
    counts = np.bincount(a, minlength=8)
    assert counts.min() > 500  # all eight symmetries, about evenly
    assert set(np.unique(transform_codes(rows, 3, 1, "flip"))) == {0, 1, 2, 3}
    assert not transform_codes(rows, 3, 1, "none").any()


@pytest.mark.parametrize("augment", ["flip", "flip-rot90"])
def test_augmented_batches_are_symmetries_of_the_plain_ones_whatever_the_workers(synth_v2_store: Path,
                                                                                  augment: str) -> None:
    kwargs = {"modalities": ("s2", "s1", "reference-map"), "normalize": True}
    plain = BigEarthNetDataset(synth_v2_store, **kwargs)
    augmented = BigEarthNetDataset(synth_v2_store, augment=augment, **kwargs)
    reference = make_loader(plain, 8, True, 0, seed=5, device="cpu")
    serial = make_loader(augmented, 8, True, 0, seed=5, device="cpu")
    with make_loader(augmented, 8, True, 2, seed=5, device="cpu") as parallel:
        for epoch in (0, 1):
            for loader in (reference, serial, parallel):
                loader.set_epoch(epoch)
            base, one, two = _epoch(reference), _epoch(serial), _epoch(parallel)
            changed = 0
            for p, a, b in zip(base, one, two):
                assert all(torch.equal(a[k], b[k]) for k in a)  # same bits with 0 and 2 workers
                codes = transform_codes(p["index"], 5, epoch, augment)
                for i, code in enumerate(codes.tolist()):
                    # flipped at native resolution, then upsampled: the same as flipping the
                    # upsampled image, up to the last bit
                    torch.testing.assert_close(a["image"][i], apply_code(p["image"][i], code), rtol=1e-5, atol=1e-5)
                    ten = [1, 2, 3, 7]  # B02, B03, B04, B08: not resampled, so exact
                    assert torch.equal(a["image"][i][ten], apply_code(p["image"][i][ten], code))
                    assert torch.equal(a["mask"][i], apply_code(p["mask"][i], code))  # same transform
                changed += int((codes != 0).sum())
                assert torch.equal(a["label"], p["label"])
            assert changed > 0


def test_split_statistics_are_the_train_subset_at_the_mode_and_cached(tmp_path: Path, split_store: Path) -> None:
    store = copy_tree(split_store, tmp_path / "store.zarr")
    figures = split_band_stats(str(store), "s", "nearest")
    train = BigEarthNetDataset(store, split="s", subset="train", resample="nearest")
    images = torch.stack([train[i]["image"] for i in range(len(train))]).double()
    for c, band in enumerate(train.bands):
        assert figures[band]["mean"] == pytest.approx(images[:, c].mean().item(), rel=1e-9)
        # the sample std (n - 1), nearest mode being exact: 1e-6 could not tell it from the population one
        assert figures[band]["std"] == pytest.approx(images[:, c].std(correction=1).item(), rel=1e-10)
        assert figures[band]["std"] != pytest.approx(images[:, c].std(correction=0).item(), rel=1e-10)
        assert figures[band]["count"] == 40 * 120 * 120
    cache = open_store(store).attrs[CACHE_KEY]["s"]
    assert set(cache) == {"nearest"} and cache["nearest"]["bands"] == figures
    bilinear = split_band_stats(str(store), "s", "bilinear")
    assert bilinear["B01"]["mean"] != figures["B01"]["mean"]  # upsampling changes the figures
    # every subset of the split is normalised with the train figures
    test = BigEarthNetDataset(store, split="s", subset="test", normalize=True, resample="nearest")
    assert test.mean == [figures[b]["mean"] for b in test.bands]
    assert test.stats_source == "split s train, nearest"
    assert BigEarthNetDataset(store, normalize=True).stats_source == "store"
    # a rewritten split is recomputed, not served from the cache
    codes = np.roll(open_store(store).read_split("s")[0], 5)
    open_store(store, mode="r+").write_split("s", codes, {"method": "test"}, overwrite=True)
    assert split_band_stats(str(store), "s", "nearest")["B01"]["mean"] != figures["B01"]["mean"]
    # a split with no train subset (a test list alone) was normalised with the whole store's
    # figures, its own test patches' included, without a word
    open_store(store, mode="r+").write_split("tests", np.full(64, 2, np.int8), {"method": "test"})
    with pytest.raises(InvalidArgumentError, match=r": split 'tests' has no train patches, whose statistics "
                                                   r"normalize=True uses; make the dataset with normalize=False"):
        BigEarthNetDataset(store, split="tests", subset="test", normalize=True)
    assert len(BigEarthNetDataset(store, split="tests", subset="test")) == 64


def test_statistics_a_read_only_store_cannot_cache_are_computed_once_a_process(
        tmp_path: Path, split_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train's three datasets each made a pass over the train subset of a read-only store,
    warning three times that the figures were not cached."""
    import errno

    import benzarr.stats as stats
    from benzarr.store import Store

    store = copy_tree(split_store, tmp_path / "ro.zarr")

    def refuse(self: Store) -> None:  # the attribute write of the statistics cache
        raise OSError(errno.EROFS, "Read-only file system", str(store / "zarr.json"))

    monkeypatch.setattr(Store, "editing_attrs", refuse)
    passes: list[str] = []
    moments = stats._moments
    monkeypatch.setattr(stats, "_moments", lambda *a, **k: passes.append("pass") or moments(*a, **k))
    with pytest.warns(UserWarning, match="split statistics not cached") as caught:
        means = [BigEarthNetDataset(store, split="s", subset=subset, normalize=True).mean
                 for subset in ("train", "val", "test")]
    assert len(passes) == 1 and len([w for w in caught if "not cached" in str(w.message)]) == 1
    assert means[0] == means[1] == means[2]
    assert CACHE_KEY not in open_store(store).attrs


def test_a_read_only_store_rebuilt_at_the_same_path_gets_its_own_statistics(
        tmp_path: Path, synth_archive_64: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures a read-only store could not cache were kept in the process by path, split,
    mode and split codes: a store rebuilt at the same path (a shared data folder, the same
    split) was normalised with the old store's figures."""
    import errno
    import warnings

    import benzarr.stats as stats
    from benzarr.ingest import ingest
    from benzarr.store import Store
    from benzarr.synth import synth_archive

    store = tmp_path / "ro.zarr"
    codes = np.random.default_rng(0).permutation(np.array([0] * 40 + [1] * 12 + [2] * 12, dtype=np.int8))
    synth_archive(tmp_path / "other", 64, seed=1, workers=1)
    real_editing = Store.editing_attrs

    def refuse(self: Store) -> None:  # every attribute write
        raise OSError(errno.EROFS, "Read-only file system", str(store / "zarr.json"))

    figures = []
    for archive in (synth_archive_64, tmp_path / "other"):
        monkeypatch.setattr(Store, "editing_attrs", real_editing)  # ingest and the split write
        ingest(archive, store, workers=1, shard_size=16, overwrite=True)
        open_store(store, mode="r+").write_split("s", codes, {"method": "test"})
        monkeypatch.setattr(Store, "editing_attrs", refuse)  # then read-only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figures.append(split_band_stats(str(store), "s")["B02"])
    stats._NOT_CACHED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert figures[1] == split_band_stats(str(store), "s")["B02"] != figures[0]  # computed afresh


def test_tensor_and_numpy_paths_agree() -> None:
    from benzarr.augment import augment_numpy, augment_tensor

    x = torch.arange(6 * 2 * 5 * 5, dtype=torch.int32).view(6, 2, 5, 5)
    codes = np.array([0, 1, 2, 4, 7, 5], dtype=np.uint8)
    via_numpy = torch.from_numpy(augment_numpy(x.numpy(), codes, np.float32))
    via_torch = augment_tensor(x, codes).float()
    assert torch.equal(via_numpy, via_torch)
    assert torch.equal(via_torch[4], x[4].flip(-1).flip(-2).transpose(-1, -2).float())
    assert torch.equal(augment_tensor(x, np.full(6, 3, np.uint8)), x.flip(-1).flip(-2))
    u16 = torch.from_numpy(np.arange(6 * 5 * 5, dtype=np.uint16).reshape(6, 5, 5) * 2000)  # values above 32,767
    moved = augment_tensor(u16, codes)
    assert moved.dtype == torch.uint16
    assert np.array_equal(moved.numpy(), augment_numpy(u16.numpy(), codes, np.uint16))


@settings(max_examples=30, deadline=None)
@given(side=st.sampled_from([20, 60, 120]), channels=st.integers(1, 4),
       codes=st.lists(st.integers(0, 7), min_size=1, max_size=9))
def test_numpy_augmentation_of_uint16_rows_at_band_sizes(side: int, channels: int, codes: list[int]) -> None:
    """uint16 rows of the bands' real sizes (the CPU path converts a flipped or transposed
    60x60 or 120x120 row through a row buffer) equal torch's flips and transposes."""
    from benzarr.augment import augment_numpy, augment_tensor

    rng = np.random.default_rng(side * 10 + channels)
    x = rng.integers(0, 65536, (len(codes), channels, side, side), dtype=np.uint16)
    code_array = np.array(codes, dtype=np.uint8)
    expected = augment_tensor(torch.from_numpy(x.astype(np.int32)), code_array).float()
    assert torch.equal(torch.from_numpy(augment_numpy(x, code_array, np.float32)), expected)


@settings(max_examples=40, deadline=None)
@given(side=st.sampled_from([1, 2, 3, 20, 60]), middle=st.sampled_from([(), (1,), (3,), (2, 2)]),
       dtype=st.sampled_from([torch.uint16, torch.int16, torch.float32, torch.int64, torch.uint8]),
       codes=st.lists(st.integers(0, 7), min_size=1, max_size=9))
def test_one_gather_equals_each_rows_own_transform(side: int, middle: tuple[int, ...], dtype: torch.dtype,
                                                   codes: list[int]) -> None:
    """The device augmentation (one gather through a source-pixel table, whatever the mix of
    codes) moves every row's values exactly as :func:`apply_code` does: images with any
    number of planes, masks (B, H, W), every stored dtype, uint16 values above 32,767."""
    from benzarr.augment import augment_tensor

    rng = np.random.default_rng(side * 100 + len(codes))
    x = torch.from_numpy(rng.integers(0, 65536, (len(codes), *middle, side, side)).astype(np.int64)).to(dtype)
    code_array = np.array(codes, dtype=np.uint8)
    before = x.clone()
    got = augment_tensor(x, code_array)
    assert got.dtype == dtype and got.shape == x.shape
    bits = (lambda t: t.view(torch.int16)) if dtype == torch.uint16 else (lambda t: t)
    for row, code in enumerate(codes):
        assert torch.equal(bits(got[row]), bits(apply_code(x[row], code))), (row, code)
    assert torch.equal(bits(x), bits(before))  # the input is left alone


def test_augmentation_names() -> None:
    assert list(AUGMENTATIONS) == ["none", "flip", "flip-rot90"]


@pytest.mark.parametrize("resample, augment", [("bilinear", "none"), ("nearest", "flip"), ("bicubic", "flip-rot90")])
def test_cpu_transform_bits_do_not_depend_on_the_thread_count(synth_store_64: Path, resample: str, augment: str) -> None:
    # With several threads the main process splits the rows among them, each on one thread:
    # every patch must come out as a one-threaded loader worker makes it.
    ds = BigEarthNetDataset(synth_store_64, normalize=True, resample=resample, augment=augment)
    batch = ds.read_batch(list(range(37)))
    transform = ds.batch_transform("cpu", seed=3)
    transform.set_epoch(1)
    threads = torch.get_num_threads()
    images = {}
    try:
        for n in (1, 2, 3, 5, 7):
            torch.set_num_threads(n)
            images[n] = transform(batch)["image"]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(images[1], images[n]) for n in (2, 3, 5, 7))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), c=st.integers(1, 6), side=st.sampled_from([20, 60, 120]), align=st.booleans(),
       sliced=st.booleans())
def test_gpu_bilinear_path_is_f_interpolate(b: int, c: int, side: int, align: bool, sliced: bool) -> None:
    """The GPU path's bilinear (the native kernel on the B*C planes as the channels of one
    channels-last image: issue #10) gives F.interpolate's values as a plain NCHW tensor. Run
    here on the CPU, whose channels-last kernel rounds differently in the last bit (CUDA's
    computes the same expression in both layouts): the reshapes, the part that could go wrong,
    are the same on every device, and a wrong one would be wrong by far more than an ulp."""
    from benzarr.transform import _upsample_bilinear_planes

    x = torch.rand(b, c * (2 if sliced else 1), side, side) * 10_000
    if sliced:
        x = x[:, ::2]  # a non-contiguous group, as after a channel selection
    got = _upsample_bilinear_planes(x, align)
    assert got.shape == (b, c, 120, 120) and got.is_contiguous()
    expected = F.interpolate(x, size=(120, 120), mode="bilinear", align_corners=align)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)


def test_channel_runs_cover_each_slot_once() -> None:
    from benzarr.transform import _runs

    assert _runs([4, 5, 6, 8, 10, 11]) == ((0, 4, 3), (3, 8, 1), (4, 10, 2))
    assert _runs([1, 2, 3, 7]) == ((0, 1, 3), (3, 7, 1))
    assert _runs([9, 0]) == ((0, 9, 1), (1, 0, 1))
    for slots in ([0], [3, 4], [5, 3, 4]):
        covered = [slot + k for _, slot, n in _runs(slots) for k in range(n)]
        assert covered == list(slots)


def _session6_image(transform, batch: dict, codes) -> torch.Tensor:
    """The device path as session 6 measured it, here on the CPU: float32 copy, channel
    gather, normalise, bilinear on the planes (else ``_upsample``), one copy a run."""
    from benzarr.transform import PATCH_SIDE, _to_float, _upsample, _upsample_bilinear_planes

    size = batch["index"].shape[0]
    image = torch.full((size, len(transform.bands), PATCH_SIDE, PATCH_SIDE), float("nan"))
    for group, gather, _ in transform._plan:
        x = _to_float(batch[group], codes)
        if gather is not None:
            x = x.index_select(1, gather)
        if transform._norm is not None:
            x = x.sub_(transform._norm[group][0]).div_(transform._norm[group][1])
        if x.shape[-1] != PATCH_SIDE:
            x = (_upsample_bilinear_planes(x, transform.align_corners) if transform.resample == "bilinear"
                 else _upsample(x, transform.resample, transform.align_corners))
        for first, slot, count in transform._runs[group]:
            image[:, slot:slot + count] = x[:, first:first + count]
    return image


ALL_CHANNELS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "VV", "VH"]


def _drawn_transform_and_batch(data, b: int, normalize: bool, resample: str, align: bool):
    """A CPU BatchTransform of a drawn band list (drawn mean and std with ``normalize``) and a
    random native batch of ``b`` patches for it: uint16 groups over the whole range, S1 in dB,
    store rows 3, 10, 17, ..."""
    from benzarr.transform import CHANNEL_GROUPS, BatchTransform

    bands = data.draw(st.lists(st.sampled_from(ALL_CHANNELS), min_size=1, max_size=14, unique=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    mean = (rng.random(len(bands)) * 2000).tolist() if normalize else None
    std = (rng.random(len(bands)) * 900 + 100).tolist() if normalize else None
    transform = BatchTransform(bands, "cpu", mean, std, resample=resample, align_corners=align)
    batch: dict = {"index": torch.arange(b, dtype=torch.int64) * 7 + 3}
    for group in transform.groups:
        _, names, side = CHANNEL_GROUPS[group]
        shape = (b, len(names), side, side)
        batch[group] = (torch.from_numpy((rng.random(shape) * 40 - 25).astype(np.float32)) if group == "s1"
                        else torch.from_numpy(rng.integers(0, 65536, shape, dtype=np.uint16)))
    return transform, batch


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), normalize=st.booleans(), augment=st.booleans(), align=st.booleans(),
       resample=st.sampled_from(["bilinear", "bilinear", "nearest", "bicubic"]))
def test_fused_device_path_gives_the_same_bits(data, b: int, normalize: bool, augment: bool, align: bool,
                                               resample: str) -> None:
    """Issue #10: the device path that casts inside the first kernel and writes groups
    straight into the image (``BatchTransform.fused``, run here on the CPU) gives the same
    bits as session 6's passes, for any band list, order, normalisation, augmentation and
    resampling."""
    from benzarr.augment import transform_codes

    transform, batch = _drawn_transform_and_batch(data, b, normalize, resample, align)
    codes = transform_codes(batch["index"], 5, 2, "flip-rot90") if augment else None
    got = torch.full((b, len(transform.bands), 120, 120), float("nan"))
    transform._image_rows_fused(batch, got, codes)
    assert torch.equal(got, _session6_image(transform, batch, codes)), (transform.bands, normalize, augment, resample)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), normalize=st.booleans(), align=st.booleans(),
       resample=st.sampled_from(["bilinear", "nearest", "bicubic"]), augment=st.booleans())
def test_model_ready_image_gives_the_transforms_values(data, b: int, normalize: bool, align: bool,
                                                       resample: str, augment: bool) -> None:
    """``model_ready_image``, the plain-torch form that ``BatchTransform.compiled`` hands to
    ``torch.compile`` on CUDA, gives the transform's image bit for bit when run eagerly (on
    one thread, as the transform's CPU path), for any band list and order, normalisation and
    resampling, with and without augmentation (a gather of each row's pixels through its
    transform's source-pixel table): compiling may change only the order of the same float32
    operations."""
    from benzarr.augment import source_index
    from benzarr.transform import model_ready_image

    transform, batch = _drawn_transform_and_batch(data, b, normalize, resample, align)
    groups = [batch[group] for group, _, _ in transform._plan]
    norms = None if transform._norm is None else [transform._norm[group] for group, _, _ in transform._plan]
    codes = np.array(data.draw(st.lists(st.integers(0, 7), min_size=b, max_size=b)), dtype=np.uint8) if augment else None
    sources = None if codes is None else [source_index(codes, x.shape[-1], torch.device("cpu")) for x in groups]
    # on one intra-op thread, as the transform runs F.interpolate on the CPU: torch splits a
    # multi-threaded upsampling at points whose last bit depends on the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = model_ready_image(groups, transform._keeps, norms, transform._order, resample, align, sources)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, transform.image(batch, codes=codes)), (transform.bands, normalize, resample, align, codes)


def test_a_failed_compilation_turns_compiled_off_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """``BatchTransform.compiled`` where ``torch.compile`` fails (no Triton on the node, say):
    one warning naming the failure, ``compiled`` off, and the caller makes the batch eagerly."""
    import benzarr.transform as transform_module

    def failing(*args, **kwargs):
        raise RuntimeError("Cannot find a working triton installation\nmore detail")

    monkeypatch.setattr(transform_module, "compiled_model_ready_image", lambda: failing)
    transform = transform_module.BatchTransform(["B02", "B05"], "cpu")
    transform.compiled = True
    batch = {"index": torch.arange(2), "10m": torch.zeros((2, 4, 120, 120), dtype=torch.uint16),
             "20m": torch.zeros((2, 6, 60, 60), dtype=torch.uint16)}
    with pytest.warns(RuntimeWarning, match="compiled turned off: torch.compile failed "
                                            r"\(RuntimeError: Cannot find a working triton installation\)"):
        assert transform._compiled_image(batch) is None
    assert transform.compiled is False
    # on the CPU the switch is never used: the image is the eager one
    transform.compiled = True
    assert torch.equal(transform.image(batch), torch.zeros((2, 2, 120, 120)))


def test_fused_path_widens_first_where_a_device_has_no_uint16_kernel() -> None:
    """A device whose kernels refuse uint16 (the fallback ``_cast_normalize`` keeps) gets the
    same bits by widening first, and stops trying after the first refusal."""
    from benzarr.data import BatchTransform

    transform = BatchTransform(["B02", "B05"], "cpu", [900.0, 1100.0], [300.0, 450.0])
    x = torch.randint(0, 65535, (3, 1, 20, 20), dtype=torch.int32).to(torch.uint16)
    norm = (torch.tensor([900.0]).view(1, 1, 1, 1), torch.tensor([300.0]).view(1, 1, 1, 1))
    expected = torch.empty(3, 1, 20, 20)
    transform._cast_normalize(x, expected, norm)
    refused = x.view(torch.int16).view(torch.uint16)

    class NoUInt16(torch.Tensor):  # a tensor whose arithmetic refuses uint16, as such a device does
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.sub, torch.Tensor.copy_) and any(
                    isinstance(a, torch.Tensor) and a.dtype == torch.uint16 for a in args):
                raise NotImplementedError("sub not implemented for 'UInt16'")
            return super().__torch_function__(func, types, args, kwargs or {})

    got = torch.empty(3, 1, 20, 20)
    transform._cast_normalize(refused.as_subclass(NoUInt16), got, norm)
    assert torch.equal(got, expected) and transform._cast_in_kernel is False


@pytest.mark.parametrize("fused", [False, True])
def test_the_transform_leaves_its_input_alone(synth_v2_store: Path, fused: bool) -> None:
    """A float32 group (S1) normalised in place used to change the caller's batch: a second
    call on the same batch then normalised it twice. Both device paths (the fused one run
    here on the CPU) leave the batch as it was and give the same image every time."""
    ds = BigEarthNetDataset(synth_v2_store, modalities=("s2", "s1"), normalize=True)
    transform = ds.batch_transform("cpu")
    batch = ds.read_batch([0, 3, 5])
    before = {k: v.clone() for k, v in batch.items()}

    def image() -> torch.Tensor:
        if not fused:
            return transform(batch)["image"]
        out = torch.empty(3, len(transform.bands), 120, 120)
        return transform._image_rows_fused(batch, out, None)

    first, second = image(), image()
    assert torch.equal(first, second)
    assert all(torch.equal(before[k], batch[k]) for k in before)
