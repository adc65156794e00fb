"""The random-access PyTorch dataset and the loader helper.

Workers read compact native-resolution uint16 batches (160,000 bytes a full patch instead
of 691,200 as float32 at 120x120); :class:`~benzarr.transform.BatchTransform` (its own
module, re-exported here) turns them into float images on the training device (float, band
selection, upsampling, optional normalisation, augmentation). See docs/design.md §4.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, get_worker_info

from benzarr.bands import BAND_PRESETS, MODALITIES, parse_modalities, resolve_bands
from benzarr.bands import band_groups_for
from benzarr.bands import band_location as channel_location
from benzarr.augment import check_augment
from benzarr.checks import boolean, check_resample, check_seed, whole as _whole
from benzarr.errors import BenzarrError, InvalidArgumentError, LoaderWorkerError, StoreChangedError
from benzarr.shards import RowReader
from benzarr.streams import current_stream, on_stream
from benzarr.procs import thread_blosc_lock
from benzarr.graphs import GraphedTransform
from benzarr.transform import (CHANNEL_GROUPS, Batch, BatchTransform, check_normalization,
                               unfilled_allocations)
from benzarr.store import (
    NOMENCLATURES,
    REFERENCE_MAP_ARRAY,
    Store,
    StoreWatch,
    is_url,
    open_store,
)

#: Modalities a dataset can serve: image channels (s2, s1) and the ``mask`` (reference-map).
DATA_MODALITIES = MODALITIES

Sample = dict[str, Any]


#: numpy -> torch dtypes of batch arrays.
_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {
    np.dtype(np.uint16): torch.uint16, np.dtype(np.float32): torch.float32, np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int64): torch.int64,
}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; in a DataLoader worker it lives in shared memory, so
    sending it to the main process costs no copy (as ``default_collate`` does)."""
    if get_worker_info() is None:
        with unfilled_allocations():  # the reader writes it whole
            return torch.empty(shape, dtype=dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    try:
        storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    except RuntimeError as exc:
        if "No space left on device" not in str(exc):
            raise
        raise LoaderWorkerError(_no_shared_memory(nbytes)) from None
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _no_shared_memory(nbytes: int) -> str:
    """What to do when a ``DataLoader`` worker finds no room in ``/dev/shm`` for a batch
    (torch's own error, "unable to allocate shared memory(shm) for file </torch_...>", came as a
    worker traceback; Docker gives a container 64 MB there)."""
    try:
        found = os.statvfs("/dev/shm")
        room = f" ({found.f_bavail * found.f_frsize / 2**20:,.0f} MB free of {found.f_blocks * found.f_frsize / 2**20:,.0f} MB)"
    except OSError:
        room = ""
    return (f"no room in shared memory for a {nbytes / 2**20:,.1f} MB batch array: DataLoader workers hand their "
            f"batches over through /dev/shm{room}; make it larger (docker run --shm-size=4g; in Kubernetes an "
            "emptyDir with medium Memory at /dev/shm), or use fewer workers or a smaller batch size "
            "(with a local store, the batch ring, engine='ring', uses no /dev/shm)")


class BigEarthNetDataset(Dataset):
    """BigEarthNet Sentinel-2 (and Sentinel-1, reference-map) patches from a benzarr store, by random access.

    The `BigEarthNet <https://bigearth.net>`__ dataset is a large-scale benchmark archive for
    multi-label land-cover classification of Sentinel-2 image patches.

    Dataset features:

    * 590,326 patches of 1.2 km x 1.2 km from 125 Sentinel-2 L2A tiles over 10 European
      countries (Austria, Belgium, Finland, Ireland, Kosovo, Lithuania, Luxembourg,
      Portugal, Serbia, Switzerland), June 2017 to May 2018
    * 12 spectral bands: 4 at 10 m (120x120 px), 6 at 20 m (60x60 px), 2 at 60 m (20x20 px);
      served upsampled to 120x120 (bilinear, half-pixel centres)
    * multi-label annotation from CORINE Land Cover 2018: 43 level-3 classes (``clc43``) or
      the 19-class nomenclature of Sumbul et al. 2021 (``clc19``)
    * the usual exclusion of 70,987 cloudy/shadowed and snowy patches leaves 519,284
    * BigEarthNet v2.0 (reBEN, 2024): 549,488 Sentinel-1/Sentinel-2 pairs (480,038 clean)
      with pixel-level CLC2018 reference maps and new train/validation/test splits; S1
      ``VV``/``VH`` backscatter (float32, dB, 120x120) and the reference map (``mask``) are
      served when the store holds them (``modalities``)

    Dataset format:

    * one Zarr v3 store written by ``benzarr ingest`` (docs/design.md §2): band arrays
      ``s2/10m`` (N, 4, 120, 120), ``s2/20m`` (N, 6, 60, 60), ``s2/60m`` (N, 2, 20, 20),
      uint16 surface reflectance x 10,000, sharded along N with one chunk per patch,
      uncompressed or Blosc lz4/zstd; multi-hot ``labels/clc43`` (N, 43) and
      ``labels/clc19`` (N, 19) uint8; splits ``splits/<name>`` (N,) int8
    * band order of every image: B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12
      (``bands="all"``); ``bands="rgb"`` is B04, B03, B02; a list keeps its own order

    Samples (``ds[i]``), as TorchGeo's BigEarthNet:

    * ``image``: float32 (C, 120, 120), reflectance x 10,000 (or ``(x - mean) / std`` per
      band with ``normalize=True``, using the store's band statistics)
    * ``label``: float32 (L,) multi-hot, L = 43 or 19
    * ``index``: int, the patch's store row
    * ``mask`` (with ``"reference-map"`` in ``modalities``): int64 (120, 120) CLC2018 code
      per pixel (e.g. 311 broad-leaved forest; :data:`benzarr.bigearthnet.CLC43_CODES`)

    Batches (:meth:`read_batch`, for :func:`make_loader`) stay uint16 at native
    resolution and are converted on the training device by :class:`BatchTransform`. A plain
    ``torch.utils.data.DataLoader(ds, batch_size=B)`` works too: torch's batched fetch,
    :meth:`__getitems__`, returns the samples ``ds[i]`` would, from one read of the batch.

    Classes (``clc19``): Urban fabric; Industrial or commercial units; Arable land;
    Permanent crops; Pastures; Complex cultivation patterns; Land principally occupied by
    agriculture, with significant areas of natural vegetation; Agro-forestry areas;
    Broad-leaved forest; Coniferous forest; Mixed forest; Natural grassland and sparsely
    vegetated areas; Moors, heathland and sclerophyllous vegetation; Transitional woodland,
    shrub; Beaches, dunes, sands; Inland wetlands; Coastal wetlands; Inland waters; Marine
    waters. The 43 ``clc43`` classes are CORINE level 3 in official order
    (:data:`benzarr.bigearthnet.CLC43`; ``ds.classes`` lists the selected set).

    If you use this dataset in your research, please cite the following papers:

    * G. Sumbul, M. Charfuelan, B. Demir, V. Markl, "BigEarthNet: A Large-Scale Benchmark
      Archive for Remote Sensing Image Understanding", IEEE International Geoscience and
      Remote Sensing Symposium (IGARSS), pp. 5901-5904, 2019.
      https://doi.org/10.1109/IGARSS.2019.8900532
    * G. Sumbul, A. de Wall, T. Kreuziger, F. Marcelino, H. Costa, P. Benevides, M. Caetano,
      B. Demir, V. Markl, "BigEarthNet-MM: A Large Scale Multi-Modal Multi-Label Benchmark
      Archive for Remote Sensing Image Classification and Retrieval", IEEE Geoscience and
      Remote Sensing Magazine, 9(3), pp. 174-180, 2021 (the 19-class nomenclature).
      https://doi.org/10.1109/MGRS.2021.3089174

    Args:
        store: path of a local store, or a URL (``s3://bucket/store.zarr``: band arrays read
            with concurrent range requests by :mod:`benzarr.objstore` when obstore is
            installed, else through zarr-python; ``storage_options`` as fsspec's).
        split: a stored split name (``benzarr split``); None serves every valid patch.
        subset: ``train``, ``val`` or ``test`` of ``split``; None: every row the split keeps.
        bands: ``"all"`` (every channel of the chosen modalities: 12 S2 bands, then VV, VH),
            ``"rgb"`` or a list of band names (S2 bands and/or ``VV``, ``VH``).
        labels: ``"clc43"`` or ``"clc19"``.
        transform: called on each sample dict from ``ds[i]``; in :func:`make_loader`, on
            each device batch dict (so it must accept batched tensors).
        normalize: standardise each band (S2 and S1 alike) with the mean and std of the
            split's train subset at this resampling mode, or the whole store's without a split.
        storage_options: fsspec options for URLs (endpoint, credentials).
        modalities: any of ``s2``, ``s1`` (image channels) and ``reference-map`` (adds
            ``mask``); each must be in the store.
        verify_checksums: check the crc32c of every chunk read (store format 2; on by
            default). Turn it off to read at full speed a store already checked with
            ``benzarr verify``; shard indexes are still checked. Format 1 stores have no
            chunk checksums. Stores read through zarr-python (URLs) are always checked.
        resample: how 20 m and 60 m bands reach 120x120: ``bilinear`` (default),
            ``nearest`` (as the official reBEN models were trained) or ``bicubic``.
        align_corners: bilinear/bicubic convention: False (half-pixel centres, as TorchGeo)
            or True (as ConfigILM 0.7.1, whose published weights saw those inputs).
        augment: ``none``, ``flip`` or ``flip-rot90``: random flips (and 90-degree
            rotations) of the image and mask, applied by :func:`make_loader` on the device,
            drawn as a pure function of (seed, epoch, store row); ``ds[i]`` is never augmented.

    Normalisation (``normalize=True``) uses the mean and std of the split's **train** subset
    at this resampling mode when ``split`` is given (:func:`benzarr.stats.split_band_stats`,
    computed once and cached in the store), else the whole store's ingest statistics.

    The dataset keeps what it read when it was made (its rows, labels, statistics) and maps
    shard files as it reads them, so it is tied to the store it opened: once another store
    is put at the path (``ingest(..., overwrite=True)``) or the store is removed, every read
    (``ds[i]``, :meth:`read_batch`, a loader's batch, in its workers too) raises
    :class:`~benzarr.errors.StoreChangedError` instead of mixing the two stores' data. The
    check is one ``os.stat`` of the root ``zarr.json`` a read (:class:`~benzarr.store.StoreWatch`);
    splits made and attributes recorded meanwhile do not count as another store. A URL store
    is not checked (no cheap way to): make the dataset again after replacing one.

    Raises:
        StoreNotFoundError, StoreIncompleteError, StoreVersionError: from opening the store.
        SplitNotFoundError: ``split`` is not in the store (the message lists the names).
        InvalidArgumentError: unknown band, label set or subset; ``normalize`` with a split
            that has no train patches.
    """

    def __init__(
        self,
        store: str | Path,
        split: str | None = None,
        subset: str | None = None,
        bands: str | Sequence[str] = "all",
        labels: str = "clc43",
        transform: Callable[[Sample], Sample] | None = None,
        normalize: bool = False,
        storage_options: dict[str, Any] | None = None,
        modalities: Sequence[str] = ("s2",),
        verify_checksums: bool = True,
        resample: str = "bilinear",
        align_corners: bool = False,
        augment: str = "none",
    ) -> None:
        if not isinstance(labels, str) or labels not in NOMENCLATURES:  # a list was "unhashable" (TypeError)
            raise InvalidArgumentError(f"unknown label set {labels!r}: choose one of {', '.join(NOMENCLATURES)} "
                                       "(one label set, a str)")
        if not isinstance(store, (str, os.PathLike)):
            raise InvalidArgumentError(f"store must be a path or URL, got {type(store).__name__} {store!r}")
        for name, flag in (("normalize", normalize), ("align_corners", align_corners),
                           ("verify_checksums", verify_checksums)):
            boolean(name, flag)
        if transform is not None and not callable(transform):  # failed only at ds[0]
            raise InvalidArgumentError(f"transform must be a callable taking a sample, got {transform!r}")
        self.modalities: tuple[str, ...] = parse_modalities(modalities)
        image_modalities = [m for m in self.modalities if m != "reference-map"] or ["s2"]
        self.bands: tuple[str, ...] = resolve_bands(bands, image_modalities)
        self.groups: tuple[str, ...] = band_groups_for(self.bands)
        self.path = str(store)
        self.storage_options = storage_options
        self.split = split
        self.subset = subset
        self.label_set = labels
        self.transform = transform
        self.normalize = normalize
        self.verify_checksums = verify_checksums
        check_resample(resample)
        self.resample, self.align_corners, self.augment = resample, bool(align_corners), check_augment(augment)
        opened = open_store(self.path, storage_options=storage_options)
        absent = [m for m in self.modalities if m not in opened.modalities]
        if absent:
            raise InvalidArgumentError(
                f"{self.path}: the store has no {absent[0]} data (it has: {', '.join(opened.modalities) or 'labels only'})"
            )
        self.rows: np.ndarray = opened.subset_rows(split, subset)
        self.classes: list[str] = opened.class_names(labels)
        self._labels = np.ascontiguousarray(opened.labels(labels)[self.rows])
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.stats_source: str | None = None
        if normalize:
            stats = self._normalisation_stats(opened)
            missing = [b for b in self.bands if (stats.get(b) or {}).get("mean") is None]
            if missing:
                raise InvalidArgumentError(f"{self.path}: no band statistics for {', '.join(missing)}; cannot normalise")
            self.mean = [float(stats[b]["mean"]) for b in self.bands]
            # a constant band has std 0: leave it centred rather than dividing by zero
            self.std = [float(stats[b]["std"]) or 1.0 for b in self.bands]
        self._store: Store | None = opened
        # the store this dataset read (its own copy: pickled into workers, each checking for itself)
        self._watch: StoreWatch | None = copy.copy(opened.watch)
        self._readers: dict[str, RowReader] | None = None
        self._names: np.ndarray | None = None
        self._cpu_transform = BatchTransform(self.bands, "cpu", self.mean, self.std, resample, self.align_corners)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float], source: str) -> None:
        """Normalise with these per-band values (one each per entry of ``bands``, in the
        bands' own units) instead of the store's: how ``benzarr evaluate`` reads any store
        with the statistics a run trained with. A std of 0 is taken as 1 (a constant band)."""
        self.mean, self.std = check_normalization(mean, std, len(self.bands))  # a NaN mean made every input NaN
        self.normalize = True
        self.stats_source = source
        self._cpu_transform = BatchTransform(self.bands, "cpu", self.mean, self.std, self.resample, self.align_corners)

    def _normalisation_stats(self, opened: Store) -> dict[str, dict[str, float]]:
        """Band -> {mean, std}: the split's train subset at this resampling mode, else the store's."""
        from benzarr.stats import mode_key, split_band_stats

        if self.split is not None:
            if not opened.subset_rows(self.split, "train").size:  # the store's figures were used: test patches' too
                raise InvalidArgumentError(
                    f"{self.path}: split {self.split!r} has no train patches, whose statistics normalize=True uses; "
                    "make the dataset with normalize=False and call ds.set_normalization(mean, std, source) with the "
                    "statistics the model was trained with")
            self.stats_source = f"split {self.split} train, {mode_key(self.resample, self.align_corners)}"
            return split_band_stats(self.path, self.split, self.resample, self.align_corners)
        self.stats_source = "store"
        return {**opened.band_stats("s2"), **opened.band_stats("s1")}

    # -- process-local state: never pickled into workers --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_readers"] = None
        state["_names"] = None
        return state

    def check_store(self) -> None:
        """Raise :class:`StoreChangedError` when the store this dataset opened was replaced
        or removed since (one ``os.stat``; nothing for a URL store). Every read checks it;
        its shard maps are dropped then (they hold the old store's deleted files on disk).

        Raises:
            StoreChangedError: ``<store>: the store was replaced or removed since this
                dataset was opened; open it again``.
        """
        if self._watch is None:
            return
        try:
            self._watch.check("this dataset")
        except StoreChangedError:
            self.close()
            self._store = None
            raise

    def _opened(self) -> Store:
        if self._store is None:
            self._store = open_store(self.path, storage_options=self.storage_options)
        return self._store

    def _row_name(self, row: int) -> str:
        """Patch name of store row ``row`` (read once, only to word an error)."""
        if self._names is None:
            self._names = self._opened().patch_names()
        return str(self._names[row])

    @property
    def readers(self) -> dict[str, RowReader]:
        """Band group -> row reader (the memory-mapped shard reader where it applies)."""
        if self._readers is None:
            store = self._opened()
            arrays = {group: CHANNEL_GROUPS[group][0] for group in self.groups}
            if "reference-map" in self.modalities:
                arrays["mask"] = REFERENCE_MAP_ARRAY
            # the dataset serves a complete store's valid patches only, each written to its
            # shard: a missing shard file is damage, never a patch of zeros
            self._readers = {key: store.row_reader(path, self._row_name, self.verify_checksums, missing_ok=False)
                             for key, path in arrays.items()}
        return self._readers

    def close(self) -> None:
        """Unmap the shards this process has read (the next read maps them again). A run that
        ends drops its datasets' maps at once, not when the garbage collector finds them."""
        readers, self._readers = self._readers, None
        for reader in (readers or {}).values():
            if hasattr(reader, "close"):
                reader.close()

    @property
    def fast(self) -> bool:
        """True when every needed band group is read by the memory-mapped shard reader."""
        from benzarr.shards import ShardReader

        return all(isinstance(r, ShardReader) for r in self.readers.values())

    # -- access ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.rows.size)

    def _positions(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` (a flat sequence of integers, negatives from the end) as int64
        positions; TypeError for anything else (floats, strings, a boolean mask, nested lists
        were truncated, parsed or flattened), IndexError out of range."""
        raw = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        n = len(self)
        if raw.size == 0:
            return np.zeros(0, dtype=np.int64)
        if raw.ndim == 0:  # a slice, a generator, one integer: "got shape ()" said nothing
            hint = " (list(range(start, stop)) gives a slice's)" if isinstance(indices, slice) else ""
            raise TypeError(f"indices must be a sequence of integers, got {type(indices).__name__} {indices!r}{hint}")
        if raw.ndim != 1:
            raise TypeError(f"indices must be a flat sequence of integers, got shape {raw.shape}")
        if raw.dtype == bool:
            raise TypeError("indices are integers, not a boolean mask (np.flatnonzero(mask) gives them)")
        if raw.dtype.kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in raw.tolist()):
            raise IndexError(f"index out of range for a dataset of {n} patches")  # beyond 64 bits
        if raw.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got {raw.dtype} values such as {raw.flat[0]!r}")
        if raw.min() < -n or raw.max() >= n:
            raise IndexError(f"index out of range for a dataset of {n} patches")
        positions = raw.astype(np.int64, copy=False)
        return np.where(positions < 0, positions + n, positions)

    def batch_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """What one patch of a :meth:`read_batch` batch holds: key -> (per-patch shape, numpy dtype).

        The keys, in order: the band groups the selection needs, ``mask`` (with
        ``reference-map``), ``label`` and ``index``; a batch of B patches is (B, *shape).
        """
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            key: (tuple(reader.shape[1:]), np.dtype(reader.dtype)) for key, reader in self.readers.items()
        }
        spec["label"] = ((int(self._labels.shape[1]),), np.dtype(np.uint8))
        spec["index"] = ((), np.dtype(np.int64))
        return spec

    def read_into(self, indices: Sequence[int] | np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Decode the batch of ``indices`` into ``out`` (as :meth:`batch_spec`, leading axis
        ``len(indices)``, C-contiguous), with no allocation: the batch ring's workers write
        straight into shared memory this way.

        Raises:
            StoreChangedError: the store was replaced since the dataset was made (:meth:`check_store`).
        """
        self.check_store()
        self._read_into(indices, out)

    def _read_into(self, indices: Sequence[int] | np.ndarray, out: dict[str, np.ndarray]) -> None:
        positions = self._positions(indices)
        rows = self.rows[positions]
        # object-store readers send every array's requests before any is decoded: one round
        # trip a batch, not one per band array
        pending = []
        try:
            for key, reader in self.readers.items():
                start = getattr(reader, "start_read", None)
                if start is None:
                    reader.read(rows, out=out[key])
                else:
                    pending.append(start(rows, out=out[key]))
            while pending:
                pending[0].result()
                pending.pop(0)
        except BaseException:
            for read in pending:
                read.cancel()
            raise
        np.take(self._labels, positions, axis=0, out=out["label"])
        out["index"][:] = rows

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """One batch at native resolution, read shard by shard.

        Args:
            indices: dataset indices (0 <= i < len(self)), any order, repeats allowed.

        Returns:
            A dict of CPU torch tensors, row ``b`` for ``indices[b]``; only the band groups
            the selected bands need, with all channels of each group (the device picks):

            * ``"10m"``: (B, 4, 120, 120) uint16, B02, B03, B04, B08
            * ``"20m"``: (B, 6, 60, 60) uint16, B05, B06, B07, B8A, B11, B12
            * ``"60m"``: (B, 2, 20, 20) uint16, B01, B09
            * ``"s1"``: (B, 2, 120, 120) float32, VV, VH (dB), when S1 channels are selected
            * ``"mask"``: (B, 120, 120) uint16 CLC2018 codes, with ``reference-map``
            * ``"label"``: (B, L) uint8 multi-hot
            * ``"index"``: (B,) int64 store rows

        Raises:
            StoreChangedError: the store was replaced since the dataset was made (:meth:`check_store`).
        """
        self.check_store()  # one os.stat a batch: before the readers, which would open the new store
        size = int(np.asarray(indices).size)
        batch: Batch = {key: _batch_tensor((size, *shape), _TORCH_DTYPES[dtype])
                        for key, (shape, dtype) in self.batch_spec().items()}
        self._read_into(indices, {key: tensor.numpy() for key, tensor in batch.items()})  # decoded in place
        return batch

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``: ``{"image": (C, 120, 120) float32, "label": (L,) float32, "index": int}``.

        Raises:
            TypeError: ``index`` is not an integer (a float, string, bool or list).
            IndexError: out of range (negative indices count from the end).
        """
        if isinstance(index, (bool, np.bool_)):
            raise TypeError(f"dataset indices are integers, got {index!r}")
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"dataset indices are integers, got {type(index).__name__} {index!r}") from None
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> list[Sample]:
        """``[self[i] for i in indices]``, from one :meth:`read_batch` and one CPU conversion:
        torch's batched fetch, which a plain ``DataLoader(ds, batch_size=B)`` calls (it expects
        a list of samples; :func:`make_loader` reads native batches with :meth:`read_batch`).
        Each sample's bits are those of ``ds[i]`` (the conversion is row by row)."""
        out = self._cpu_transform(self.read_batch(indices))
        samples: list[Sample] = []
        for b in range(out["label"].shape[0]):
            sample: Sample = {"image": out["image"][b], "label": out["label"][b], "index": int(out["index"][b])}
            if "mask" in out:
                sample["mask"] = out["mask"][b]
            samples.append(self.transform(sample) if self.transform is not None else sample)
        return samples

    def batch_transform(self, device: str | torch.device = "cpu", seed: int = 0) -> BatchTransform:
        """The :class:`BatchTransform` of this dataset's bands, normalisation, resampling and
        augmentation (drawn with ``seed``) on ``device``."""
        return BatchTransform(self.bands, device, self.mean, self.std, self.resample, self.align_corners,
                              self.augment, seed)

    def plot(self, sample: Sample, show_titles: bool = True, suptitle: str | None = None, *,
             panels: Sequence[str] | None = None, axes: Sequence[Any] | None = None, top: int = 5,
             panel_titles: bool = True) -> Any:
        """Plot a sample as a row of panels, as TorchGeo's datasets do; ``benzarr show`` draws
        each of its rows with this method.

        Panels (:func:`benzarr.show.default_panels`): true colour (B04, B03, B02), false
        colour (B08, B04, B03) and S1 VV/VH when their channels are selected, else the first
        channel in grey; the reference map in CORINE colours when the sample has a ``mask``;
        the top predictions when it has a ``prediction`` ((L,) scores in 0..1, true positives
        green, false positives red). Each channel is stretched between its 2nd and 98th
        percentiles, so native, dB and normalised samples all show.

        Args:
            sample: ``ds[i]``, optionally with ``prediction`` added.
            show_titles: title the first panel with the sample's label names.
            suptitle: the figure's title.
            panels: panel kinds to draw instead of the default (``rgb``, ``false-color``,
                ``swir``, ``VV,VH``, ``band:NAME``, ``reference map``, ``predictions``).
            axes: matplotlib Axes to draw into, one per panel (default: a new figure).
            top: predictions listed.
            panel_titles: head each panel with its kind.

        Returns:
            the matplotlib Figure.

        Raises:
            InvalidArgumentError: ``sample`` is not one sample of this dataset (a batch, an
                image alone, a sample of other bands or another label set).
        """
        from benzarr.show import draw_sample

        def host(key: str) -> np.ndarray | None:
            value = sample.get(key)
            return None if value is None else np.asarray(torch.as_tensor(value).detach().cpu().float())

        if not isinstance(sample, Mapping) or sample.get("image") is None or sample.get("label") is None:
            raise InvalidArgumentError(f"plot draws one sample, a dict with 'image' and 'label' as ds[i] returns; got "
                                       f"{type(sample).__name__}" + (f" with {', '.join(map(str, sample))}"
                                                                     if isinstance(sample, Mapping) else ""))
        image, label = host("image"), host("label")
        # a batch was an IndexError from deep in the drawing; a clc19 label under clc43 names, wrong titles
        if image.shape[:1] != (len(self.bands),) or image.ndim != 3 or label.shape != (len(self.classes),):
            raise InvalidArgumentError(
                f"plot draws one sample of this dataset: image ({len(self.bands)}, 120, 120) and label "
                f"({len(self.classes)},), got {tuple(image.shape)} and {tuple(label.shape)} (row b of a batch: "
                "{key: value[b] for key, value in batch.items()})")
        title = None
        if show_titles:
            title = "Labels: " + ", ".join(self.classes[i] for i in np.flatnonzero(label > 0.5))
        figure = draw_sample(image, self.bands, label, self.classes, mask=host("mask"),
                             prediction=host("prediction"), panels=panels, axes=axes, title=title,
                             panel_titles=panel_titles, top=top)
        if suptitle is not None:
            figure.suptitle(suptitle)  # a new figure's constrained layout makes room for it
        return figure

    def __repr__(self) -> str:
        where = f"split={self.split!r}, subset={self.subset!r}, " if self.split else ""
        return (f"BigEarthNetDataset({self.path!r}, {where}{len(self)} patches, bands={list(self.bands)}, "
                f"labels={self.label_set!r}, normalize={self.normalize})")


#: End of an iteration (``next(iterator, _END)``).
_END = object()

#: The default of :attr:`DeviceLoader.graphs` for loaders made from now on, process-wide (the
#: trainer's loaders included): True or False, or None to read ``BENZARR_CUDA_GRAPHS`` from
#: the environment (``1``/``on``/``true``/``yes`` or ``0``/``off``/``false``/``no``; unset:
#: off). Off by default until the graphs have been measured on a GPU (issue #10).
CUDA_GRAPHS: bool | None = None

_GRAPH_SWITCH = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}


def cuda_graphs_default() -> bool:
    """What :data:`CUDA_GRAPHS` says, or the environment when it is None.

    Raises:
        InvalidArgumentError: ``BENZARR_CUDA_GRAPHS`` holds anything but the values above.
    """
    if CUDA_GRAPHS is not None:
        return bool(CUDA_GRAPHS)
    value = os.environ.get("BENZARR_CUDA_GRAPHS", "0").strip().lower()
    if value not in _GRAPH_SWITCH:
        raise InvalidArgumentError(f"BENZARR_CUDA_GRAPHS={value!r}: use 1 (CUDA graphs on) or 0 (off)")
    return _GRAPH_SWITCH[value]


def _hand_over(batch: Batch, done: Any, index: int) -> Batch:
    """A batch made on a side stream, for use on the current stream of CUDA device ``index``
    (an int: :mod:`benzarr.streams`): the current stream waits for ``done`` (a CUDA event),
    and the allocator keeps each tensor until the current stream's work on it is finished."""
    consumer = current_stream(index)
    consumer.wait_event(done)
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(consumer)
    return batch


def collate_batch(batch: Batch) -> Batch:
    """The DataLoader's ``collate_fn`` over :class:`NativeBatches`: its fetch already returns a whole batch."""
    return batch


class NativeBatches(torch.utils.data.Dataset):
    """``dataset`` as a DataLoader of native batches sees it: its ``__getitems__`` is
    ``dataset.read_batch`` (uint16 groups, :meth:`BigEarthNetDataset.read_batch`), to pair
    with ``collate_fn=collate_batch``. :func:`make_loader`'s DataLoader engine and the
    Lightning DataModule hand this to their workers."""

    def __init__(self, dataset: BigEarthNetDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> Batch:
        return self.dataset.read_batch(indices)

    def __getitem__(self, index: int) -> Batch:
        return self.dataset.read_batch([index])


class ResumableBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose next pass can start part-way: ``skip`` batches of the next
    ``__iter__`` are left out (then ``skip`` is 0 again), so a resumed epoch decodes only
    the batches it still needs."""

    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        batches = super().__iter__()
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


class DeviceLoader:
    """Iterable of device batches ``{"image", "label", "index"}`` (see :class:`BatchTransform`).

    Two engines feed it (:func:`make_loader` picks): the batch ring
    (:class:`benzarr.ring.RingLoader`, local stores with workers) or a ``DataLoader``
    (no workers, or a store behind a URL).

    Attributes:
        loader: the engine (yields uint16 batches, or model-ready ones when ``ready``).
        sampler: its ``DistributedSampler`` (shuffle with ``seed + epoch``).
        transform: the :class:`BatchTransform` run here, or None when the engine's workers
            run it already (the ring on the CPU).
        overlap: on CUDA, transform batch k+1 on a side stream before handing out batch k
            (default True), so the transform's kernels fill the gaps of the training step's
            instead of queueing behind them; False runs it on the consumer's stream as each
            batch is handed out. The batches are the same bits either way.
        graphs: with ``overlap`` on CUDA, make each full batch's image by replaying a CUDA
            graph of the transform (:mod:`benzarr.graphs`; default
            :func:`cuda_graphs_default`, off: no gain measured on an H200): one replay instead of
            about 90 aten calls, which a host-bound training step feels. Same bits; False
            makes every batch the ordinary way. Set before iterating. The image is reused once the
            stream current at ``next`` is past the work queued on it: a consumer that uses
            batches on another stream must make that stream's work finish first (for example
            ``torch.cuda.current_stream().wait_stream(other)`` before the next ``next``);
            ``record_stream`` does not protect a static image. Or set ``graphs = False``.
        direct_copy: with ``graphs`` and the batch ring on CUDA, copy each ring slot in one
            transfer straight into the graphs' static inputs (default True;
            :meth:`benzarr.graphs.GraphedTransform.from_slot`); False stages it through a
            device batch of its own first, as the eager path does (an A/B switch for
            ``benchmarks/gpu_feed.py``, variant ``staged``). Same bits either way.
    """

    def __init__(self, dataset: BigEarthNetDataset, loader: Any, sampler: DistributedSampler,
                 transform: BatchTransform | None, batch_sampler: ResumableBatchSampler | None = None) -> None:
        self.dataset = dataset
        self.loader = loader
        self.sampler = sampler
        self.transform = transform
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.served = 0  # batches of ``epoch`` handed out so far
        self.overlap = True
        self._side_stream: Any = None  # created on the first overlapped iteration
        self.graphs = cuda_graphs_default()
        self.direct_copy = True
        self._graphed: GraphedTransform | None = None  # the graphs, kept across epochs
        self._graph_capture: Any = None  # benzarr.graphs.Capture; None: CUDA's
        self._iteration = 0  # iterations started; an older one raises when used
        self._closed = False
        # the normalisation the transforms were built with (a later ds.set_normalization is not seen by them)
        self._normalization = (copy.copy(dataset.mean), copy.copy(dataset.std))
        if isinstance(loader, DataLoader) and loader.num_workers > 0:
            # torch's persistent workers live in its iterator until that is collected, which at
            # exit is never: spawned workers (URL stores) then left their queues' semaphores for
            # the resource tracker to report as leaked. A finalizer also runs at exit.
            weakref.finalize(self, _stop_workers, loader)

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: ``{"epoch", "served"}`` (batches of that epoch handed out).

        Saved with a mid-epoch checkpoint, it lets :meth:`load_state_dict` serve exactly the
        batches of the epoch that were not yet served (the order is a function of
        (seed, epoch), so "the rest" is well defined).
        """
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``: the next iteration serves epoch ``state["epoch"]`` from batch
        ``state["served"]`` on (the skipped batches are never decoded); later epochs are whole.

        Raises:
            InvalidArgumentError: ``state`` is not such a dict of whole numbers, or ``served``
                is negative or beyond the epoch's batches.
        """
        if not isinstance(state, Mapping) or not {"epoch", "served"} <= set(state):
            raise InvalidArgumentError(f"loader state must be a dict with 'epoch' and 'served' "
                                       f"(from state_dict()), got {state!r}")
        epoch = _whole("loader state 'epoch'", state["epoch"], 0)
        served = _whole("loader state 'served'", state["served"], 0)
        if served < 0 or served > len(self):
            raise InvalidArgumentError(f"loader state: {served} batches served, but an epoch has {len(self)}")
        self.set_epoch(epoch)  # (an iteration still running ends here: see set_epoch)
        if self.batch_sampler is None:
            raise InvalidArgumentError("this loader cannot resume part-way through an epoch")
        self.batch_sampler.skip = served
        self.served = served

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``: the order is a function of (seed, epoch) only.

        An iteration already under way ends here (its next batch raises
        :class:`LoaderWorkerError`): it would go on serving its own epoch's order while
        :meth:`state_dict` counted it as ``epoch``'s, and the ring, prefetching the next epoch
        from the shared sampler, would consume a resume point. An iterator made but not yet
        started (Lightning makes one before it sets the epoch) serves ``epoch``.

        Raises:
            InvalidArgumentError: ``epoch`` is not a whole number from 0 to 2**62.
        """
        self.epoch, self.served = _whole("epoch", epoch, 0, 2**62), 0
        self._iteration += 1
        if self.batch_sampler is not None:
            self.batch_sampler.skip = 0
        self.sampler.set_epoch(epoch)
        if self.transform is not None:
            self.transform.set_epoch(epoch)  # the augmentation draws depend on it
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def _transformed_ahead(self, transform: BatchTransform) -> Iterator[Batch]:
        """Each batch fetched and transformed one batch ahead of the consumer; on CUDA on a side
        stream. Why: on the consumer's stream the transform's kernels (1.7 ms of an H200 for a
        256-patch batch, before the upsampling change of session 6) queue behind the training
        step's and add to every step; on a side stream, issued while the GPU is still busy
        with the previous step, they run in that step's gaps. The engine's copy to the GPU is
        awaited by the side stream (the ring hands its batches to the stream current at
        ``next``). :meth:`__iter__` uses it on CUDA only; elsewhere it is the same batches, in
        the same order, one fetch earlier."""
        device = transform.device
        cuda = device.type == "cuda"
        if cuda and self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=device)
        side = self._side_stream
        index = side.device_index if cuda else -1  # an int: torch's cheap path (benzarr.streams)

        def on_side() -> Any:
            return on_stream(side) if cuda else contextlib.nullcontext()

        graphed: GraphedTransform | None = None
        if self.graphs and (cuda or self._graph_capture is not None):  # (the suite captures eagerly on the CPU)
            if self._graphed is None or self._graphed.transform is not transform:
                self._graphed = GraphedTransform(transform, getattr(self.batch_sampler, "batch_size", None),
                                                 capture=self._graph_capture)
            graphed = self._graphed
        make: Callable[[Batch], Batch] = graphed if graphed is not None else transform
        # with graphs, the ring's batches stay in their slots until the graphs copy them
        # straight into their static inputs (benzarr.ring.HostSlot): one copy a batch
        slots = graphed is not None and self.direct_copy and hasattr(self.loader, "iter_slots")
        batches: Iterator[Any] = self.loader.iter_slots() if slots else iter(self.loader)
        # each batch's "made" event: reused in turn (creating one costs ~10 us of the main
        # process a batch); one is recorded again only after the consumer's stream was told
        # to wait on its previous recording, so that wait is unchanged
        events = [torch.cuda.Event() for _ in range(3)] if cuda else []
        turn = 0
        ahead: tuple[Batch, Any] | None = None
        while True:
            if graphed is not None:  # the consumer asks for a batch: images it let go of are free
                graphed.consumer_point(current_stream(index) if cuda else None)
            with on_side():
                batch = next(batches, None)
                if batch is None:
                    break
                out = graphed.from_slot(batch, side) if slots else make(batch)
                done = None
                if cuda:
                    done = events[turn]
                    turn = (turn + 1) % len(events)
                    done.record(side)
            if ahead is not None:
                yield _hand_over(*ahead, index) if cuda else ahead[0]
            ahead = (out, done)
        if ahead is not None:
            yield _hand_over(*ahead, index) if cuda else ahead[0]

    def _transformed_into_recycled(self, transform: BatchTransform) -> Iterator[Batch]:
        """Each batch transformed in this process on the CPU, into a buffer reused once the
        consumer has let go of the batch it last held (:class:`benzarr.ring.RecycledBuffers`:
        a fresh 44 MB image a batch cost 5,000-12,000 page faults); while the consumer keeps
        batches, in fresh tensors. The same values as ``transform(batch)``."""
        from benzarr.ring import RecycledBuffers

        buffers: RecycledBuffers | None = None
        for batch in self.loader:
            n = int(torch.as_tensor(batch["index"]).shape[0])
            if buffers is None:
                shapes = {key: (tuple(batch[key].shape[1:]), None) for key in ("label", "mask") if key in batch}
                size = getattr(self.batch_sampler, "batch_size", None) or n
                buffers = RecycledBuffers(transform.out_spec(shapes), max(size, n))
            yield transform(batch, out=buffers.take(n))  # None (fresh tensors) while the consumer keeps batches

    def graph_stats(self) -> dict[str, Any] | None:
        """What the CUDA graphs of :attr:`graphs` did so far, ``{"captured", "replayed",
        "disabled"}`` (:meth:`benzarr.graphs.GraphedTransform.stats`); None where this loader
        made none (graphs off, on the CPU, or not iterated yet)."""
        return None if self._graphed is None else self._graphed.stats()

    def close(self) -> None:
        """Stop the workers and release the ring's memory and the CUDA graphs' (also done when
        the loader is collected)."""
        self._closed = True
        if self._graphed is not None:
            self._graphed.release()
            self._graphed = None
        if isinstance(self.loader, DataLoader):
            _stop_workers(self.loader)
        elif hasattr(self.loader, "close"):
            self.loader.close()

    def __enter__(self) -> "DeviceLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        # where this iteration starts (a resume point), read before any engine iterator exists:
        # a DataLoader with workers starts the batch sampler at once, which resets its skip
        if self._closed:
            raise LoaderWorkerError("this loader was closed; make a new one (make_loader)")
        if (self.dataset.mean, self.dataset.std) != self._normalization:  # it served the old one, without a word
            raise InvalidArgumentError("the dataset's normalisation changed (set_normalization) after make_loader "
                                       "made this loader, whose batches would keep the old one; make the loader again")
        start = int(getattr(self.batch_sampler, "skip", 0) or 0)
        user = self.dataset.transform
        transform = self.transform
        if transform is None:
            batches: Iterator[Batch] = iter(self.loader)
        elif self.overlap and transform.device.type == "cuda":
            batches = self._transformed_ahead(transform)
        elif transform.device.type == "cpu":
            batches = self._transformed_into_recycled(transform)
        else:
            batches = (transform(batch) for batch in self.loader)
        # one iteration at a time, whatever the engine: a DataLoader's persistent workers feed
        # every iterator from one stream, so two at once would each get some of the batches
        self._iteration += 1
        mine = self._iteration
        self.served = start  # the epoch restarts (at a resume point)
        try:
            while True:
                if self._iteration != mine:
                    raise LoaderWorkerError(
                        "this iteration of the loader was superseded by a newer one, set_epoch or load_state_dict (a "
                        "loader serves one iteration at a time: finish or drop the old iterator first)"
                    )
                out = next(batches, _END)
                if out is _END:
                    return
                self.served += 1
                yield user(out) if user is not None else out
        except BenzarrError as exc:
            # torch re-raises a worker's error with the worker's traceback in the message;
            # keep one line (the error benzarr raised) so the CLI prints it as one line.
            text = str(exc)
            if "DataLoader worker" in text:
                marker = f"{type(exc).__module__}.{type(exc).__name__}: "
                text = text.rsplit(marker, 1)[-1].strip()
                raise type(exc)(text) from None
            raise
        except (RuntimeError, ConnectionError, EOFError) as exc:
            worker_error = _dataloader_worker_error(exc, self.loader)
            if worker_error is None:
                raise
            raise worker_error from None


def _stop_workers(loader: DataLoader) -> None:
    """Stop a ``DataLoader``'s persistent workers now (torch keeps them, in its iterator,
    until the loader is collected)."""
    iterator = getattr(loader, "_iterator", None)
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _dataloader_worker_error(exc: BaseException, loader: Any) -> LoaderWorkerError | None:
    """A ``DataLoader`` engine's failure of its workers (torch's timeout, a worker that died,
    its pipe cut) as the :class:`LoaderWorkerError` the ring raises for the same, or None for
    any other error. The workers are stopped first: torch's SIGCHLD handler would otherwise
    raise its own error later, wherever the main process then is."""
    if not isinstance(loader, DataLoader) or loader.num_workers == 0:
        return None
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    timed_out = isinstance(exc, RuntimeError) and text.startswith("DataLoader timed out")
    if text.startswith("Caught "):  # torch re-raising an error of the worker's own code, in its own type
        return None
    died = text.startswith("DataLoader worker") if isinstance(exc, RuntimeError) else True  # a cut pipe: a dead worker
    if not (timed_out or died):
        return None
    iterator = getattr(loader, "_iterator", None)
    if getattr(iterator, "_worker_pids_set", False):  # first, before torch's SIGCHLD handler raises its own error
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    workers = list(getattr(iterator, "_workers", None) or [])
    if died:  # a cut pipe can come before the worker's exit is seen: give it a moment
        deadline = time.monotonic() + 1.0
        while workers and all(w.exitcode is None for w in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
    dead = [w for w in workers if w.exitcode not in (None, 0)]
    if timed_out:  # a stuck worker would not answer torch's shutdown: kill it, as the ring does
        for worker in workers:
            worker.kill()
    _stop_workers(loader)
    if timed_out:
        pids = ", ".join(str(w.pid) for w in workers) or "?"
        return LoaderWorkerError(f"no batch from the loader workers (pids {pids}) in {loader.timeout:g} s: a worker "
                                 "may be stuck reading the store (a hung network file system?)")
    who, how = "a loader worker", text
    if dead:  # worded as the ring words it
        code = dead[0].exitcode
        who, how = f"a loader worker (pid {dead[0].pid})", f"signal {-code}" if code < 0 else f"exit code {code}"
        if code > 0 and _start_method(loader) == "spawn":  # an error of its own start-up, not the OOM killer's signal
            return LoaderWorkerError(
                f"{who} stopped as it started ({how}), with its error above: the workers of a URL store are spawned, "
                "and a spawned worker imports the main script again, so a script must create and iterate the "
                "loader under `if __name__ == \"__main__\":`")
    return LoaderWorkerError(f"{who} died unexpectedly ({how}); if it ran out of memory, "
                             "use fewer --workers or a smaller --batch-size")


def _start_method(loader: DataLoader) -> str | None:
    """How ``loader`` starts its workers: ``"spawn"`` for URL stores, else the default (fork)."""
    context = loader.multiprocessing_context
    return context.get_start_method() if context is not None else None


def make_loader(
    ds: BigEarthNetDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    device: str | torch.device,
    distributed: bool = False,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    engine: str = "auto",
    timeout: float = 0,
    compile_transform: bool = False,
) -> DeviceLoader:
    """Batches of ``ds`` ready on ``device``.

    With workers on a local store, the batch ring (:mod:`benzarr.ring`) feeds the batches:
    forked workers decode into fixed shared-memory slots; on CUDA the slots are page-locked
    and copied asynchronously, then converted on the GPU (:class:`BatchTransform`); on the
    CPU the workers run the conversion too, so model-ready delivery scales with them.
    Without workers, or for a store behind a URL, a ``DataLoader`` does (uint16 batches
    converted here). Then ``ds.transform``, if any, runs on each device batch.

    The order is a pure function of ``(seed, epoch)`` (call ``set_epoch`` before each epoch
    to reshuffle): the same seed gives the same batches, bit for bit, whatever
    ``num_workers`` and engine. As in torch's ``DistributedSampler`` (and so Lightning's and
    TorchGeo's loaders), the shuffle is seeded with ``(seed + epoch) mod 2**32``: seed 1's
    epoch 0 is seed 0's epoch 1, so give runs meant to be independent seeds further apart
    than their epochs (0, 1000, 2000). With ``distributed=True`` each rank of the initialised
    ``torch.distributed`` process group gets its ``DistributedSampler`` share
    (``ceil(len(ds) / world)`` patches; the last few repeat when ``len(ds)`` does not
    divide, as ``DistributedSampler`` does).

    Args:
        ds: the dataset.
        batch_size: patches per batch.
        shuffle: random order (else store-row order).
        num_workers: worker processes (0: read in this process).
        seed: shuffling seed, 0 .. 2**32 - 1 (the range of every benzarr seed).
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        distributed: shard by torch.distributed rank and world size.
        drop_last: drop the last incomplete batch.
        prefetch_factor: batches each worker reads ahead (default 2).
        engine: ``"auto"`` (the ring where it applies), ``"ring"`` or ``"dataloader"``.
        timeout: with workers, seconds to wait for a batch before raising
            :class:`LoaderWorkerError` (a worker stuck on a hung file system), on either
            engine; 0 (or ``inf``) waits for ever, as ``DataLoader``'s default.
        compile_transform: on CUDA, make each batch's model-ready image with one
            ``torch.compile``'d function (:attr:`BatchTransform.compiled`): a few fused
            kernels instead of about 15 passes, 0.42 against 0.72 ms for a 12-band batch of
            256 on an H200, and shortcnn-all fed at 0.97-0.98 of its ceiling against 0.92
            (``benchmarks/results/gpu_feed.json``). The first batch of each shape waits for the
            compilation (seconds); values may differ from the eager ones in the last bit, the
            same for every worker count and epoch. Needs Triton and a C compiler; where
            compilation fails, one warning and the eager transform. Elsewhere than CUDA it
            changes nothing (a warning says so).

    Raises:
        InvalidArgumentError: a batch size, worker count, seed, prefetch factor or timeout that
            is not a whole number in range, an unknown engine, a device this machine lacks,
            ``distributed`` without an initialised process group, or ``engine="ring"`` where
            it cannot run.
    """
    if not isinstance(ds, BigEarthNetDataset):
        raise InvalidArgumentError(f"make_loader reads a BigEarthNetDataset, got {type(ds).__name__} "
                                   "(a plain torch DataLoader serves other datasets)")
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last), ("distributed", distributed),
                       ("compile_transform", compile_transform)):
        boolean(name, flag)  # shuffle="no" shuffled
    batch_size = _whole("batch size", batch_size, 1)
    num_workers = _whole("workers", num_workers, 0)
    seed = check_seed(seed)  # one range for every seed benzarr takes (make_split, train, here)
    if prefetch_factor is not None:
        prefetch_factor = _whole("prefetch_factor", prefetch_factor, 1)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:  # (NaN too)
        raise InvalidArgumentError(f"timeout must be 0 (wait for ever) or positive seconds, got {timeout!r}")
    timeout = 0 if timeout == float("inf") else float(timeout)  # inf: wait for ever, as 0 says to both engines
    if engine not in ("auto", "ring", "dataloader"):
        raise InvalidArgumentError(f"unknown loader engine {engine!r}: choose auto, ring or dataloader")
    world, rank = _world_and_rank(distributed)
    device = check_device(device)
    compile_transform = compiles_on(device, compile_transform)
    # DistributedSampler with one replica is a seeded (seed + epoch) shuffler with set_epoch
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    # no batch holds more than the rank's patches: the same batches, and buffers for that many
    # rows (--batch-size 99999999999999 on a small split failed to allocate 15.7 TiB)
    batch_size = min(batch_size, len(sampler) + (1 if drop_last else 0) or 1)
    batches = ResumableBatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    ring_possible = num_workers > 0 and not is_url(ds.path) and ds.fast
    if engine == "ring" and not ring_possible:
        raise InvalidArgumentError("the batch ring needs workers and a local store read by the shard reader")
    if engine != "dataloader" and ring_possible:
        from benzarr.ring import RingLoader

        transform: BatchTransform | None = _compiled(ds.batch_transform(device, seed), compile_transform)
        in_workers = transform if device.type == "cpu" else None
        ring = RingLoader(ds, batches, num_workers, transform=in_workers, device=device,
                          prefetch_factor=prefetch_factor or 2, timeout=timeout)
        return DeviceLoader(ds, ring, sampler, None if in_workers is not None else transform, batches)
    loader = _dataloader(ds, batches, num_workers, prefetch_factor, device, seed, timeout)
    return DeviceLoader(ds, loader, sampler, _compiled(ds.batch_transform(device, seed), compile_transform), batches)


def compiles_on(device: torch.device, asked: bool, option: str = "compile_transform", warn: bool = True,
                stacklevel: int = 2) -> bool:
    """Whether the batch transform on ``device`` is compiled when ``asked``: on CUDA only.
    Elsewhere, when asked and ``warn``, one warning that the option changes nothing there
    (``stacklevel`` counted from the caller). :func:`make_loader`, the trainer and the
    Lightning DataModule ask here, the last two once for all their loaders: Python's own
    once-per-place rule does not hold, as every ``warnings.catch_warnings`` block clears it."""
    if asked and device.type != "cuda" and warn:
        warnings.warn(f"{option} applies on CUDA only: on {device.type} the batch transform runs as without it",
                      UserWarning, stacklevel=stacklevel + 1)
    return asked and device.type == "cuda"


def _compiled(transform: BatchTransform | None, compile_transform: bool) -> BatchTransform | None:
    """``transform`` with :attr:`BatchTransform.compiled` set on CUDA when asked (the switch
    does nothing elsewhere; :func:`make_loader` warned about that)."""
    if transform is not None and compile_transform and transform.device.type == "cuda":
        transform.compiled = True
    return transform


def check_device(device: str | torch.device, option: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has, or InvalidArgumentError saying why
    not (an unknown name, CUDA without a GPU or a driver, an index past the GPUs there are):
    torch would say so only at the first batch, in its own words. ``option`` names the
    setting in the message (``"--device"`` for the CLI's)."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        # torch's own line for None ended "... got (NoneType), but expected one of:"
        raise InvalidArgumentError(f"{option} must be a str such as 'cpu' or 'cuda:0', or a torch.device; got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"{option} {device!r}: {str(exc).splitlines()[0]}") from None
    shown = f"{option} {str(device)!r}"
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "meta":  # tensors of shapes alone: a loader there would serve no data
        raise InvalidArgumentError(f"{shown}: the meta device holds no data; use cpu or cuda")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"{shown}: no CUDA GPU is available here "
                                       "(torch.cuda.is_available() is False); use cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InvalidArgumentError(f"{shown}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return parsed
    try:
        torch.empty(1, device=parsed)
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        reason = str(exc).splitlines()[0].split(". ")[0][:200]  # torch's first sentence; the rest is a backend list
        raise InvalidArgumentError(f"{shown} is not usable here ({reason})") from None
    return parsed


def _world_and_rank(distributed: bool) -> tuple[int, int]:
    """(world size, rank) of the initialised process group, or (1, 0) when not ``distributed``."""
    if not distributed:
        return 1, 0
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidArgumentError("distributed=True needs torch.distributed.init_process_group() first")
    return dist.get_world_size(), dist.get_rank()


def worker_start(ds: BigEarthNetDataset) -> dict[str, Any]:
    """``DataLoader`` options for the workers of ``ds``: for a URL store, spawned workers
    (fsspec's event loop and sockets do not survive fork) with a thread lock for Blosc
    (:func:`benzarr.procs.thread_blosc_lock`: numcodecs' named semaphore was left registered
    by a worker ended as it exited, "leaked semaphore" at about 1 run in 5); else none."""
    if not is_url(ds.path):
        return {}
    return {"multiprocessing_context": "spawn", "worker_init_fn": thread_blosc_lock}


def _dataloader(ds: BigEarthNetDataset, batches: ResumableBatchSampler, num_workers: int,
                prefetch_factor: int | None, device: torch.device, seed: int, timeout: float = 0) -> DataLoader:
    """:func:`make_loader`'s ``DataLoader`` engine: uint16 batches of ``batches``, pinned for CUDA."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["timeout"] = timeout
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        kwargs.update(worker_start(ds))
    loader = DataLoader(
        NativeBatches(ds),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        # its own generator: each epoch's worker base seed is not drawn from torch's global
        # RNG, so a run resumed mid-epoch draws the same random numbers (dropout) as an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return loader


__all__ = [
    "BAND_PRESETS",
    "BatchTransform",
    "BigEarthNetDataset",
    "DeviceLoader",
    "NativeBatches",
    "ResumableBatchSampler",
    "band_groups_for",
    "channel_location",
    "collate_batch",
    "make_loader",
    "parse_modalities",
    "resolve_bands",
    "worker_start",
]
