"""A Lightning ``LightningDataModule`` over a benzarr store, in the batch format TorchGeo's tasks expect.

``BigEarthNetDataModule(store, split, ...)`` serves the ``train``, ``val`` and ``test``
subsets of a stored split (``benzarr split``) as batches ``{"image": float32 (B, C, 120,
120), "label": int64 multi-hot (B, L), "index": (B,) int64 store rows}`` (plus ``"mask"``
with the reference map): what ``torchgeo.trainers.ClassificationTask(task="multilabel",
loss="bce")`` reads in its steps, in the dtypes of TorchGeo's own ``BigEarthNet`` dataset.
The label is int64, not benzarr's float32, because the task's torchmetrics multi-label
metrics refuse float targets (``"bincount_cpu" not implemented for 'Float'``); the task
casts it to float for its BCE loss. ``label_dtype=torch.float32`` gives benzarr's dtype.

How the batches are built (two engines, ``engine=``):

* ``"dataloader"`` (default): each ``*_dataloader()`` returns a plain
  ``torch.utils.data.DataLoader`` over :class:`~benzarr.data.NativeBatches` of the dataset with
  ``batch_size``, a ``DistributedSampler`` (``seed``; rank and world size from the
  trainer's strategy) and ``collate_fn=collate_batch``: the DataLoader hands each list of
  indices to ``BigEarthNetDataset.read_batch``, so workers read benzarr's compact
  native-resolution uint16 batches (160 KB a patch instead of 691 KB as float32 at
  120x120). Lightning moves those to the device itself (pinned memory on CUDA), then
  :meth:`BigEarthNetDataModule.on_after_batch_transfer` runs the dataset's
  :class:`~benzarr.data.BatchTransform` there (float conversion, band selection,
  upsampling, normalisation, the resampling mode and, for training batches,
  augmentation, drawn from ``(seed, epoch, store row)`` with the epoch Lightning gave the
  sampler). This is the natural fit: Lightning knows a ``DataLoader``, so it
  calls ``set_epoch`` on our sampler each epoch, leaves it in place under DDP (it is
  already a ``DistributedSampler``), re-instantiates the loader for ``predict`` and
  handles workers as usual. The order is a function of ``(seed, epoch)``, as
  :func:`benzarr.data.make_loader`'s.
* ``"ring"``: the loader is benzarr's own :func:`~benzarr.data.make_loader` with the batch
  ring (:mod:`benzarr.ring`, forked workers decoding into fixed shared-memory slots; on
  CUDA page-locked slots and an asynchronous copy), which hands out batches already
  transformed on the trainer's device; Lightning's transfer is then a no-op and
  :meth:`on_after_batch_transfer` leaves them as they are. It needs workers and a local
  store; use it when the loader, not the model, limits a GPU run. Lightning only calls
  ``set_epoch`` on a loader's ``sampler``, so the ring is wrapped in a small iterable
  whose ``sampler.set_epoch`` reshuffles the ring itself.

``augment``, ``resample`` and ``align_corners`` are passed to ``BigEarthNetDataset`` only
when its constructor has those parameters (checked with :func:`inspect.signature`), so
this module works with benzarr versions before and after they were added; without them,
only their defaults (``"none"``, ``"bilinear"``, False: what the dataset then does anyway)
are accepted. ``augment`` applies to the training subset only; its seed is ``seed``, as
in :func:`~benzarr.data.make_loader`.

Lightning is an optional extra: ``pip install 'benzarr[lightning]'``; importing this
module without it raises :class:`~benzarr.errors.MissingDependencyError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benzarr.errors import InvalidArgumentError, MissingDependencyError, StoreChangedError

try:
    import lightning as L
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "benzarr.lightning needs Lightning: pip install 'benzarr[lightning]'"
    ) from exc

import torch
from torch.utils.data import DataLoader, DistributedSampler

from benzarr.bands import parse_modalities
from benzarr.checks import boolean, check_resample, check_seed, whole
from benzarr.data import (BatchTransform, BigEarthNetDataset, NativeBatches, collate_batch, compiles_on, make_loader,
                          resolve_bands, worker_start)
from benzarr.store import NOMENCLATURES

#: Values that need no dataset support: what BigEarthNetDataset does without the parameter.
_DEFAULTS: dict[str, Any] = {"augment": "none", "resample": "bilinear", "align_corners": False}
ENGINES = ("dataloader", "ring")
#: Lightning stage -> subset whose dataset (and transform) serves it.
_STAGE_SUBSETS = {"train": "train", "sanity_check": "val", "validate": "val", "test": "test", "predict": "test"}


def _dataset_accepts(name: str) -> bool:
    """True when ``BigEarthNetDataset(...)`` has a parameter ``name``."""
    return name in inspect.signature(BigEarthNetDataset.__init__).parameters


class _EpochSetter:
    """What Lightning finds as ``loader.sampler``: its ``set_epoch`` reshuffles the ring."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class _RingIterable:
    """A :class:`~benzarr.data.DeviceLoader` over the batch ring, as Lightning drives it."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.sampler = _EpochSetter(loader)
        self.batch_sampler = None  # Lightning looks for both attributes once it finds a sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)

    def close(self) -> None:
        self.loader.close()


class BigEarthNetDataModule(L.LightningDataModule):
    """The ``train``/``val``/``test`` subsets of a split of a benzarr store, for Lightning.

    Args:
        store: path of a local store, or an fsspec URL (``storage_options``).
        split: a stored split name (``benzarr split``); ``train_dataloader`` serves its
            ``train`` subset, ``val_dataloader`` ``val``, ``test_dataloader`` and
            ``predict_dataloader`` ``test``.
        bands: ``"all"``, ``"rgb"``, a preset or a list of band names (as ``BigEarthNetDataset``).
        labels: ``"clc43"`` or ``"clc19"``.
        batch_size: patches per batch (per rank).
        num_workers: loader worker processes (0: read in the training process).
        augment: ``"none"``, ``"flip"`` or ``"flip-rot90"``, on training batches, where
            ``BigEarthNetDataset`` supports it (see the module's docstring).
        resample: ``"bilinear"``, ``"nearest"`` or ``"bicubic"`` for the 20 m and 60 m bands,
            where ``BigEarthNetDataset`` supports it.
        align_corners: the interpolation convention (True: ConfigILM's, for the official
            reBEN weights), where ``BigEarthNetDataset`` supports it.
        normalize: standardise each band with the mean and std of the split's train subset
            (as ``BigEarthNetDataset``).
        seed: shuffling and augmentation seed, 0 .. 2**32 - 1 (the order is a function of
            ``(seed, epoch)``).
        engine: ``"dataloader"`` or ``"ring"`` (see the module's docstring).
        drop_last: drop the last incomplete training batch.
        prefetch_factor: batches each worker reads ahead (default 2).
        modalities, verify_checksums, storage_options: as ``BigEarthNetDataset``.
        transform: called on each device batch dict after the batch transform (batched
            tensors), as ``BigEarthNetDataset(transform=...)`` in ``make_loader``.
        compile_transform: on CUDA, the batch transform's image by one ``torch.compile``'d
            function (either engine), as ``make_loader(compile_transform=True)`` and
            ``benzarr train --compile-transform``: fewer kernels, for models whose step is short
            beside the transform; elsewhere it changes nothing (one warning says so).
        label_dtype: dtype of ``label``: int64 (default) as TorchGeo's ``BigEarthNet``
            returns it, which its ``ClassificationTask`` needs (torchmetrics' multi-label
            metrics refuse float targets; the task casts to float for ``loss="bce"``);
            ``torch.float32`` for a module that feeds ``BCEWithLogitsLoss`` directly, as
            benzarr's own loader does.

    Raises:
        InvalidArgumentError: a batch size, worker count, seed or prefetch factor that is not a
            whole number in range, a flag that is not True or False, a ``transform`` that is not
            callable, a ``label_dtype`` that is not a torch dtype, a bad engine; ``augment`` or
            ``resample`` other than the default where the dataset lacks them; ``engine="ring"``
            without workers. The store and split are opened in :meth:`setup`, which raises
            the dataset's errors (StoreNotFoundError, SplitNotFoundError, ...).
    """

    def __init__(
        self,
        store: str | Path,
        split: str,
        bands: str | Sequence[str] = "all",
        labels: str = "clc43",
        batch_size: int = 64,
        num_workers: int = 0,
        augment: str = "none",
        resample: str = "bilinear",
        align_corners: bool = False,
        normalize: bool = False,
        seed: int = 0,
        engine: str = "dataloader",
        drop_last: bool = False,
        prefetch_factor: int | None = None,
        modalities: Sequence[str] = ("s2",),
        verify_checksums: bool = True,
        storage_options: dict[str, Any] | None = None,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        label_dtype: torch.dtype = torch.int64,
        compile_transform: bool = False,
    ) -> None:
        super().__init__()
        # make_loader's checks, here at construction: 1.5 passed "< 1", "4" and None failed it as TypeError
        batch_size = whole("batch size", batch_size, 1)
        num_workers = whole("workers", num_workers, 0)
        seed = check_seed(seed)
        compile_transform = boolean("compile_transform", compile_transform)
        # drop_last="no" dropped the last batch (a str is true); normalize="no" failed only at setup()
        for name, flag in (("drop_last", drop_last), ("normalize", normalize), ("align_corners", align_corners),
                           ("verify_checksums", verify_checksums)):
            boolean(name, flag)
        if transform is not None and not callable(transform):  # failed only at the first batch
            raise InvalidArgumentError(f"transform must be a callable taking a batch dict, got {transform!r}")
        if prefetch_factor is not None:
            prefetch_factor = whole("prefetch_factor", prefetch_factor, 1)
        if not isinstance(label_dtype, torch.dtype):  # "float32" has no .is_floating_point
            raise InvalidArgumentError(f"label_dtype must be a torch.dtype such as torch.float32, got {label_dtype!r}")
        if engine not in ENGINES:
            raise InvalidArgumentError(f"unknown loader engine {engine!r}: choose {' or '.join(ENGINES)}")
        if engine == "ring" and num_workers < 1:
            raise InvalidArgumentError("engine='ring' needs num_workers >= 1")
        if not isinstance(labels, str) or labels not in NOMENCLATURES:  # a list: "unhashable" TypeError
            raise InvalidArgumentError(f"unknown label set {labels!r}: choose one of {', '.join(NOMENCLATURES)} "
                                       "(one label set, a str)")
        for name, value in (("augment", augment), ("resample", resample), ("align_corners", align_corners)):
            if value != _DEFAULTS[name] and not _dataset_accepts(name):
                raise InvalidArgumentError(
                    f"{name}={value!r}: this benzarr's BigEarthNetDataset has no {name!r} parameter "
                    f"(only the default {_DEFAULTS[name]!r} works)"
                )
        from benzarr.augment import check_augment
        check_augment(augment)  # here, not at setup(): the docstring promises it at construction
        check_resample(resample)
        modalities = parse_modalities(modalities)  # the dataset's own reading: validated, in stored order
        image_modalities = [m for m in modalities if m != "reference-map"] or ["s2"]
        self.store = str(store)
        self.split = split
        #: the channel names of ``image``, in order (``in_channels = len(dm.bands)``).
        self.bands: tuple[str, ...] = resolve_bands(bands, image_modalities)
        self.labels = labels
        #: the number of labels (``num_labels`` of a multi-label task): 43 or 19.
        self.num_classes = len(NOMENCLATURES[labels])
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.resample = resample
        self.align_corners = align_corners
        self.normalize = normalize
        self.seed = seed
        self.engine = engine
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor
        self.modalities = tuple(modalities)
        self.verify_checksums = verify_checksums
        self.storage_options = storage_options
        self.transform = transform
        if not (label_dtype.is_floating_point or label_dtype in (torch.int64, torch.int32, torch.uint8, torch.bool)):
            raise InvalidArgumentError(f"label_dtype {label_dtype} is neither a float nor an integer dtype torch can count")
        self.label_dtype = label_dtype
        self.compile_transform = compile_transform
        self._warned_compile = False
        # storage options may hold credentials: never in a checkpoint's hyperparameters; a
        # torch.dtype cannot go to hparams.yaml
        self.save_hyperparameters(ignore=["storage_options", "transform", "label_dtype"])
        self.datasets: dict[str, BigEarthNetDataset] = {}
        self._transforms: dict[tuple[str, str], BatchTransform] = {}
        self._made_with: dict[tuple[str, str], tuple[list[float], list[float]]] = {}  # each one's (mean, std)
        self._rings: dict[str, _RingIterable] = {}  # subset -> its live ring (one each)
        self._samplers: dict[str, DistributedSampler] = {}  # subset -> the DataLoader engine's sampler

    # -- datasets ---------------------------------------------------------------------
    def _dataset(self, subset: str) -> BigEarthNetDataset:
        if subset not in self.datasets:
            kwargs: dict[str, Any] = dict(
                split=self.split, subset=subset, bands=list(self.bands), labels=self.labels,
                normalize=self.normalize, modalities=self.modalities, storage_options=self.storage_options,
                verify_checksums=self.verify_checksums,
            )
            for name in ("resample", "align_corners"):
                if _dataset_accepts(name):
                    kwargs[name] = getattr(self, name)
            if _dataset_accepts("augment"):
                kwargs["augment"] = self.augment if subset == "train" else "none"
            self.datasets[subset] = BigEarthNetDataset(self.store, **kwargs)
        return self.datasets[subset]

    def setup(self, stage: str | None = None) -> None:
        """Open the datasets ``stage`` needs (``fit``: train and val; ``validate``: val;
        ``test`` and ``predict``: test; None: all three).

        A dataset kept from an earlier ``setup`` whose store was replaced since (``ingest
        --overwrite`` in the same notebook) is opened again here, with its transforms; during
        a run its reads raise :class:`~benzarr.errors.StoreChangedError` instead (a run never
        switches stores half-way)."""
        subsets = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                   "predict": ("test",)}.get(stage or "", ("train", "val", "test"))
        for subset in subsets:
            kept = self.datasets.get(subset)
            if kept is not None and hasattr(kept, "check_store"):
                try:
                    kept.check_store()
                except StoreChangedError:
                    del self.datasets[subset]
                    for key in [key for key in self._transforms if key[0] == subset]:
                        del self._transforms[key]
            self._dataset(subset)

    # -- loaders ----------------------------------------------------------------------
    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _world(self) -> tuple[int, int]:
        """(world size, rank) from the trainer's strategy; (1, 0) on one device."""
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not kwargs:
            return 1, 0
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _loader(self, subset: str, shuffle: bool) -> Any:
        ds = self._dataset(subset)
        drop_last = self.drop_last and shuffle
        world, rank = self._world()
        if self.engine == "ring":
            previous = self._rings.pop(subset, None)
            if previous is not None:  # asked again (reload_dataloaders_every_n_epochs, a notebook): its workers go
                previous.close()
            ring = _RingIterable(make_loader(
                ds, self.batch_size, shuffle, self.num_workers, self.seed, self._device(),
                distributed=world > 1, drop_last=drop_last, prefetch_factor=self.prefetch_factor, engine="ring",
                compile_transform=self._compiles_on(self._device()),
            ))
            self._rings[subset] = ring
            return ring
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed,
                                     drop_last=False)
        self._samplers[subset] = sampler
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["persistent_workers"] = True
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
            kwargs.update(worker_start(ds))  # a URL store's workers: spawned, as make_loader's
        return DataLoader(NativeBatches(ds), batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, collate_fn=collate_batch,
                          pin_memory=self._device().type == "cuda", **kwargs)

    def train_dataloader(self) -> Any:
        """Shuffled batches of the ``train`` subset."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        """Batches of the ``val`` subset, in store order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        """Batches of the ``test`` subset, in store order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> Any:
        """Batches of the ``test`` subset, in store order."""
        return self._loader("test", shuffle=False)

    def teardown(self, stage: str | None = None) -> None:
        """Stop the ring's workers (the DataLoader engine's end with their loaders)."""
        while self._rings:
            self._rings.popitem()[1].close()

    # -- the device side --------------------------------------------------------------
    def _subset_now(self) -> str:
        stage = self.trainer.state.stage if self.trainer is not None else None
        subset = _STAGE_SUBSETS.get(getattr(stage, "value", ""), "")
        if subset:
            return subset
        return next(iter(self.datasets), "train")  # called by hand: the first dataset opened

    def batch_transform(self, subset: str, device: str | torch.device) -> BatchTransform:
        """The :class:`~benzarr.data.BatchTransform` of ``subset``'s dataset on ``device`` (cached)."""
        device = torch.device(device)
        key = (subset, str(device))
        ds = self._dataset(subset)
        normalization = (list(getattr(ds, "mean", None) or []), list(getattr(ds, "std", None) or []))
        if key not in self._transforms or self._made_with.get(key) != normalization:
            # made again after ds.set_normalization: a cached one kept serving the old statistics
            self._made_with[key] = normalization
            if "seed" in inspect.signature(ds.batch_transform).parameters:
                self._transforms[key] = ds.batch_transform(device, seed=self.seed)  # augmentation seed
            else:
                self._transforms[key] = ds.batch_transform(device)
            if self._compiles_on(device):
                self._transforms[key].compiled = True
        return self._transforms[key]

    def _compiles_on(self, device: torch.device) -> bool:
        """Whether the batch transform on ``device`` is compiled: ``compile_transform`` on
        CUDA; elsewhere False, with one warning per module (not one per subset) when asked."""
        compiled = compiles_on(device, self.compile_transform, warn=not self._warned_compile, stacklevel=3)
        self._warned_compile |= self.compile_transform and not compiled
        return compiled

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint16 native batch on the device -> ``{"image", "label", "index"}`` (``"mask"``)
        model-ready, with the dataset's :class:`~benzarr.data.BatchTransform` (the ring's
        batches arrive model-ready); then ``transform``, if any."""
        if self.engine != "ring":
            subset = self._subset_now()
            transform = self.batch_transform(subset, batch["label"].device)
            sampler = self._samplers.get(subset)
            if sampler is not None and hasattr(transform, "set_epoch"):
                transform.set_epoch(sampler.epoch)  # augmentation draws: (seed, epoch, store row)
            batch = transform(batch)
        if batch["label"].dtype != self.label_dtype:
            batch["label"] = batch["label"].to(self.label_dtype)
        return self.transform(batch) if self.transform is not None else batch


__all__ = ["BigEarthNetDataModule"]
