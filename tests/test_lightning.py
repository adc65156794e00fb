"""benzarr.lightning: the DataModule feeds TorchGeo's multi-label ClassificationTask (CPU, offline)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import copy_tree

from benzarr.data import BigEarthNetDataset, make_loader
from benzarr.errors import InvalidArgumentError
from benzarr.store import open_store


@pytest.fixture(scope="module", autouse=True)
def _lightning() -> None:
    """Lightning and benzarr.lightning (about 3 s of imports), imported by this module's first
    test rather than at collection: every pytest-xdist worker collects every module, and only
    the worker that runs these tests needs them. Sets the module-level names of the global line."""
    global L, BigEarthNetDataModule, _dataset_accepts, Recorder, AUGMENT
    L = pytest.importorskip("lightning")
    from benzarr.lightning import BigEarthNetDataModule, _dataset_accepts

    class Recorder(L.Callback):
        """Keeps what the task's training_step received."""

        def __init__(self) -> None:
            self.batches: list[dict[str, torch.Tensor]] = []
            self.val_batches: list[dict[str, torch.Tensor]] = []

        def on_train_batch_start(self, trainer: object, module: object, batch: dict, batch_idx: int) -> None:
            self.batches.append({k: v.detach().clone() for k, v in batch.items()})

        def on_validation_batch_start(self, trainer: object, module: object, batch: dict, batch_idx: int,
                                      dataloader_idx: int = 0) -> None:
            self.val_batches.append({k: v.detach().clone() for k, v in batch.items()})

    #: augmentation where this benzarr's dataset has it (the module passes it through only then)
    AUGMENT = "flip-rot90" if _dataset_accepts("augment") else "none"


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory, synth_store_64: Path) -> Path:
    """The 64-patch lz4 store with a split ``s``: 40 train, 12 val, 10 test, 2 excluded
    (as tests/test_data.py's fixture)."""
    store = copy_tree(synth_store_64, tmp_path_factory.mktemp("split-lightning") / "store.zarr")
    codes = np.array([0] * 40 + [1] * 12 + [2] * 10 + [-1] * 2, dtype=np.int8)
    codes = np.random.default_rng(0).permutation(codes)
    open_store(store, mode="r+").write_split("s", codes, {"method": "test"})
    return store


def _trainer(**kwargs: object) -> "L.Trainer":
    options = dict(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0)
    options.update(kwargs)
    return L.Trainer(**options)


def reference_batches(store: Path, seed: int, epochs: int, **dataset_kwargs: object) -> list[dict]:
    """The first batch of each epoch from benzarr's own loader (batch size 8, shuffled)."""
    if AUGMENT != "none":
        dataset_kwargs["augment"] = AUGMENT
    ds = BigEarthNetDataset(store, split="s", subset="train", **dataset_kwargs)
    loader = make_loader(ds, batch_size=8, shuffle=True, num_workers=0, seed=seed, device="cpu")
    firsts = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        firsts.append(next(iter(loader)))
    return firsts


def test_torchgeo_multilabel_task_trains_two_steps(split_store: Path) -> None:
    from torchgeo.trainers import ClassificationTask

    torch.manual_seed(0)
    dm = BigEarthNetDataModule(split_store, "s", bands="all", labels="clc43", batch_size=8, num_workers=0,
                               seed=3, augment=AUGMENT)
    task = ClassificationTask(model="resnet18", weights=None, in_channels=len(dm.bands), task="multilabel",
                              num_labels=dm.num_classes, loss="bce")
    before = [p.detach().clone() for p in task.parameters()]
    recorder = Recorder()
    # two epochs of one batch each: step 2 is epoch 1 (reshuffled, augmented anew)
    trainer = _trainer(callbacks=[recorder], max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2
    assert len(recorder.batches) == 2
    # the weights moved: the loss had gradients through the whole batch path
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, task.parameters()))

    # the task saw the batches benzarr's own loader gives for (seed 3, epoch 0) and (seed 3, epoch 1)
    for seen, expected in zip(recorder.batches, reference_batches(split_store, 3, 2), strict=True):
        assert seen["image"].dtype == torch.float32 and seen["image"].shape == (8, 12, 120, 120)
        assert seen["label"].dtype == torch.int64 and seen["label"].shape == (8, 43)  # TorchGeo's dtype
        torch.testing.assert_close(seen["image"], expected["image"], rtol=0, atol=0)
        assert torch.equal(seen["label"].float(), expected["label"])
        assert torch.equal(seen["index"].cpu(), expected["index"])
    assert not torch.equal(recorder.batches[0]["index"], recorder.batches[1]["index"])
    # validation after each epoch: the val subset in store order, never augmented, TorchGeo's validation_step
    val = BigEarthNetDataset(split_store, split="s", subset="val")
    plain = make_loader(val, batch_size=8, shuffle=False, num_workers=0, seed=3, device="cpu")
    expected_val = next(iter(plain))
    assert len(recorder.val_batches) == 2
    for seen in recorder.val_batches:
        assert seen["index"].tolist() == val.rows[:8].tolist()
        torch.testing.assert_close(seen["image"], expected_val["image"], rtol=0, atol=0)
    assert "val_loss" in trainer.callback_metrics


def test_subsets_bands_and_epochs(split_store: Path) -> None:
    dm = BigEarthNetDataModule(split_store, "s", bands="rgb", labels="clc19", batch_size=16,
                               label_dtype=torch.float32)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 40, "val": 12, "test": 10}
    assert dm.bands == ("B04", "B03", "B02") and dm.num_classes == 19
    loader = dm.train_dataloader()
    assert len(loader) == 3
    raw = next(iter(loader))
    assert raw["10m"].dtype == torch.uint16  # workers deliver benzarr's native batches
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch["image"].shape == (16, 3, 120, 120) and batch["label"].shape == (16, 19)
    assert batch["label"].dtype == torch.float32
    # Lightning calls sampler.set_epoch: the order is a function of (seed, epoch)
    orders = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        orders.append(torch.cat([b["index"] for b in loader]).tolist())
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[0]) == sorted(dm.datasets["train"].rows.tolist())
    val = torch.cat([b["index"] for b in dm.val_dataloader()]).tolist()
    assert val == dm.datasets["val"].rows.tolist()


@pytest.mark.parametrize("engine, workers", [("dataloader", 0), ("ring", 1)])
def test_compile_transform_is_recorded_and_a_cuda_switch(split_store: Path, engine: str, workers: int) -> None:
    """``compile_transform=True``: a hyperparameter; on the CPU the same batches as without it
    and one warning for the module, not one per subset or loader (the compiled transform
    itself is compared with the eager one on CUDA by benchmarks/gpu_ring_check.py); a value
    that is not a bool is refused."""
    with pytest.raises(InvalidArgumentError, match="compile_transform must be True or False, got 'yes'"):
        BigEarthNetDataModule(split_store, "s", compile_transform="yes")
    made = {}
    for compiled in (True, False):
        dm = BigEarthNetDataModule(split_store, "s", batch_size=16, num_workers=workers, engine=engine,
                                   compile_transform=compiled)
        dm.setup()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = [dm.on_after_batch_transfer(next(iter(loader())), 0)
                       for loader in (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader)]
        dm.teardown()
        said = [str(w.message) for w in caught if "CUDA only" in str(w.message)]
        assert said == (["compile_transform applies on CUDA only: on cpu the batch transform runs as without it"]
                        if compiled else []), said
        assert dm.hparams["compile_transform"] is compiled
        assert not any(t.compiled for t in dm._transforms.values())
        made[compiled] = batches
    assert all(torch.equal(a[k], b[k]) for a, b in zip(made[True], made[False]) for k in a)


def test_ring_engine_fits(split_store: Path) -> None:
    from torchgeo.trainers import ClassificationTask

    dm = BigEarthNetDataModule(split_store, "s", bands=["B02", "B8A"], batch_size=8, num_workers=1,
                               engine="ring", seed=1, augment=AUGMENT)
    task = ClassificationTask(model="resnet18", weights=None, in_channels=2, task="multilabel",
                              num_labels=43, loss="bce")
    recorder = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(callbacks=[recorder], max_epochs=2, limit_train_batches=1, limit_val_batches=1).fit(
            task, datamodule=dm)  # TorchGeo's ReduceLROnPlateau needs val_loss each epoch
    assert not dm._rings  # teardown stopped the workers
    # Lightning's set_epoch reached the ring: epoch 1 is reshuffled (and augmented anew)
    expected = reference_batches(split_store, 1, 2, bands=["B02", "B8A"])
    for seen, reference in zip(recorder.batches, expected, strict=True):
        torch.testing.assert_close(seen["image"], reference["image"], rtol=0, atol=0)
        assert torch.equal(seen["index"].cpu(), reference["index"])


def test_a_ring_asked_for_again_replaces_the_last_one(split_store: Path) -> None:
    """Lightning asks for the train loader every epoch with reload_dataloaders_every_n_epochs=1
    (and a notebook may ask by hand): each request started a ring whose workers lived until
    teardown, 2, 4, then 6 processes for 3 epochs at 2 workers."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    dm = BigEarthNetDataModule(split_store, "s", bands=["B02"], batch_size=8, num_workers=2, engine="ring")
    dm.setup("fit")
    for _ in range(3):
        assert sum(len(batch["index"]) for batch in dm.train_dataloader()) > 0
    assert len(set(multiprocessing.active_children()) - before) == 2  # one ring's workers
    dm.teardown("fit")
    assert not set(multiprocessing.active_children()) - before


def test_bad_arguments(split_store: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="batch size"):
        BigEarthNetDataModule(split_store, "s", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="engine"):
        BigEarthNetDataModule(split_store, "s", engine="fast")
    with pytest.raises(InvalidArgumentError, match="num_workers"):
        BigEarthNetDataModule(split_store, "s", engine="ring")
    with pytest.raises(InvalidArgumentError, match="label set"):
        BigEarthNetDataModule(split_store, "s", labels="clc10")
    for name, value in (("augment", "flip"), ("resample", "nearest")):
        if not _dataset_accepts(name):
            with pytest.raises(InvalidArgumentError, match=name):
                BigEarthNetDataModule(split_store, "s", **{name: value})


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 1.5}, "batch size must be a whole number, got 1.5"),  # accepted
    ({"batch_size": "4"}, "batch size must be a whole number, got '4'"),  # TypeError
    ({"num_workers": None}, "workers must be a whole number, got None"),  # TypeError
    ({"seed": 0.5}, "seed must be a whole number, got 0.5"),
    ({"seed": 2**32}, "seed must be between 0 and 4294967295, got 4294967296"),  # accepted: train refused it
    ({"label_dtype": "float32"}, "label_dtype must be a torch.dtype"),  # AttributeError
    ({"labels": ["clc19"]}, "unknown label set ['clc19']"),  # TypeError: unhashable
    ({"drop_last": "no"}, "drop_last must be True or False, got 'no'"),  # dropped the last batch
    ({"normalize": "no"}, "normalize must be True or False, got 'no'"),  # only at setup()
    ({"verify_checksums": 0}, "verify_checksums must be True or False, got 0"),
    ({"transform": 5}, "transform must be a callable taking a batch dict, got 5"),  # TypeError at the first batch
])
def test_arguments_of_the_wrong_type_are_invalid_arguments(split_store: Path, kwargs: dict, message: str) -> None:
    """The docstring promises InvalidArgumentError; these raised TypeError/AttributeError or passed."""
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        BigEarthNetDataModule(split_store, "s", **kwargs)


def test_missing_lightning_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from benzarr.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning -> ImportError
    monkeypatch.delitem(sys.modules, "benzarr.lightning")  # restored afterwards
    with pytest.raises(MissingDependencyError, match=r"benzarr\[lightning\]"):
        importlib.import_module("benzarr.lightning")


def test_setup_opens_again_the_datasets_of_a_replaced_store(tmp_path: Path, synth_archive_64: Path) -> None:
    """The DataModule kept its datasets across `ingest(..., overwrite=True)` at the store's
    path: a later fit read the old store's labels with a mix of old and new pixels. Now its
    reads raise, and the next setup (a new fit) opens the new store."""
    from benzarr.errors import StoreChangedError
    from benzarr.ingest import ingest
    from benzarr.synth import synth_archive

    store = tmp_path / "s.zarr"
    codes = np.random.default_rng(0).permutation(np.array([0] * 40 + [1] * 12 + [2] * 12, dtype=np.int8))

    def build(archive: Path, overwrite: bool = False) -> None:
        ingest(archive, store, workers=1, shard_size=16, overwrite=overwrite)
        open_store(store, mode="r+").write_split("s", codes, {"method": "test"})

    build(synth_archive_64)
    dm = BigEarthNetDataModule(store, "s", batch_size=8, normalize=True)
    dm.setup("fit")
    old = dm.datasets["train"]
    next(iter(dm.train_dataloader()))
    synth_archive(tmp_path / "other", 64, seed=1, workers=1)
    build(tmp_path / "other", overwrite=True)
    with pytest.raises(StoreChangedError, match="replaced or removed since this dataset was opened"):
        next(iter(dm.train_dataloader()))
    dm.setup("fit")
    assert dm.datasets["train"] is not old and dm.datasets["train"].mean != old.mean
    next(iter(dm.train_dataloader()))
    fresh = BigEarthNetDataset(store, split="s", subset="val")
    assert np.array_equal(dm.datasets["val"]._labels, fresh._labels)


def test_set_normalization_after_the_first_batch_reaches_the_next_batches(split_store: Path) -> None:
    # the module kept its first BatchTransform per (subset, device): new statistics set on the
    # dataset (a notebook's ds.set_normalization) never reached the batches
    dm = BigEarthNetDataModule(split_store, "s", bands="rgb", batch_size=8, normalize=True)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    before = dm.on_after_batch_transfer(dict(raw), 0)["image"]
    ds = dm.datasets["train"]
    ds.set_normalization([100.0, 200.0, 300.0], [10.0, 20.0, 30.0], source="a notebook")
    after = dm.on_after_batch_transfer(dict(raw), 0)["image"]
    assert not torch.equal(before, after)
    assert torch.equal(after, ds.batch_transform("cpu")(dict(raw))["image"])
