"""Normalisation statistics of a split's training subset, per resampling mode, cached in the store.

Ingest records per-band statistics over the whole store (``Store.band_stats``), test
patches included: right for a data sheet, but normalising with them lets the test subset
shape the inputs. ConfigILM publishes statistics computed on the official train split, per
resampling mode, because upsampling changes them. This module does the same for any split:

* :func:`split_band_stats` computes the mean and standard deviation of every image channel
  (the 12 S2 bands, and VV, VH where the store has S1) over the ``train`` rows of a split,
  on the model-ready 120x120 images of one resampling mode (``bilinear``, ``nearest`` or
  ``bicubic``, with either ``align_corners``), exactly: float64 per-batch moments merged
  with Chan et al.'s parallel update. The std is the sample standard deviation (divisor
  ``count - 1``, as ``torch.std``; over 14,400 pixels a patch it differs from the
  population std by under 1e-6 relative from 36 train patches on).
* The result is cached in the store's ``benzarr`` attributes under ``split_stats``, keyed by
  split and mode and tied to the SHA-256 of the split's codes, so a split rewritten with
  ``--overwrite`` is recomputed. A store that cannot be written (read-only) is still served,
  computing the figures each time.

:class:`benzarr.data.BigEarthNetDataset` uses these when ``normalize=True`` and a ``split``
is given (every subset of the split is normalised with its train subset's figures).
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import closing
from typing import Any

import numpy as np

from benzarr.bigearthnet import BANDS, S1_BANDS
from benzarr.errors import BenzarrError, InvalidArgumentError
from benzarr.store import open_store, store_fingerprint

#: Attribute (inside ``benzarr``) holding the cache: split -> mode key -> entry.
CACHE_KEY = "split_stats"
#: Batch size used to compute the figures.
BATCH = 128


def mode_key(resample: str, align_corners: bool) -> str:
    """Cache key of a resampling mode: ``bilinear``, ``bicubic-align-corners``, ``nearest``."""
    return f"{resample}-align-corners" if align_corners and resample != "nearest" else resample


def split_digest(codes: np.ndarray) -> str:
    """SHA-256 of a split's int8 codes (as the trainer records it)."""
    return hashlib.sha256(np.asarray(codes, dtype=np.int8).tobytes()).hexdigest()


def _moments(store: str, split: str, bands: tuple[str, ...], modalities: tuple[str, ...], resample: str,
             align_corners: bool) -> dict[str, dict[str, float]]:
    """Mean and std (float64) of each band over the model-ready images of ``split``'s train rows."""
    import torch

    from benzarr.data import BigEarthNetDataset, make_loader
    from benzarr.split import default_label_set

    # the labels play no part, but the dataset reads a label set: the store's own (a v2 store
    # without reference maps has clc19 only, and could not normalise with the clc43 default)
    ds = BigEarthNetDataset(store, split=split, subset="train", bands=list(bands), modalities=modalities,
                            resample=resample, align_corners=align_corners,
                            labels=default_label_set(open_store(store)))
    count = 0
    mean = np.zeros(len(bands))
    m2 = np.zeros(len(bands))
    with make_loader(ds, BATCH, False, 0, seed=0, device="cpu") as loader, torch.no_grad(), closing(ds):
        for batch in loader:
            x = batch["image"].double()
            n = x.shape[0] * x.shape[2] * x.shape[3]
            batch_mean = x.mean(dim=(0, 2, 3)).numpy()
            batch_m2 = ((x - torch.from_numpy(batch_mean).view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)).numpy()
            delta = batch_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + batch_m2 + delta**2 * (count * n / total)
            count = total
    std = np.sqrt(m2 / max(count - 1, 1))
    return {band: {"mean": float(mean[i]), "std": float(std[i]), "count": int(count)} for i, band in enumerate(bands)}


#: Statistics a read-only store could not cache, by (store, split, mode, split SHA-256, store
#: fingerprint): the fingerprint (:func:`benzarr.store.store_fingerprint`) tells a store
#: rebuilt at the same path from another one, whose figures the path alone served.
_NOT_CACHED: dict[tuple[str, str, str, str, str], dict[str, dict[str, float]]] = {}


def split_band_stats(store: str, split: str, resample: str = "bilinear",
                     align_corners: bool = False) -> dict[str, dict[str, float]]:
    """Per-band ``{mean, std, count}`` over the train subset of ``split`` at one resampling mode.

    Bands: every image channel the store holds (B01…B12, then VV, VH with S1). ``count``
    is the number of pixels (train patches x 120 x 120); ``std`` is the sample standard
    deviation over them (divisor ``count - 1``). Cached in the store (see the module docstring).

    Raises:
        SplitNotFoundError: ``split`` is not in the store.
        InvalidArgumentError: the split has no train rows.
    """
    opened = open_store(store)
    codes, _ = opened.read_split(split)
    digest = split_digest(codes)
    key = mode_key(resample, align_corners)
    cached = opened.attrs.get(CACHE_KEY, {}).get(split, {}).get(key)
    if cached and cached.get("split_sha256") == digest:
        return cached["bands"]
    memo_key = (str(store), split, key, digest, store_fingerprint(opened.attrs))
    if memo_key in _NOT_CACHED:  # computed in this process, the store would not take them
        return _NOT_CACHED[memo_key]
    if not len(opened.subset_rows(split, "train")):
        raise InvalidArgumentError(f"split {split!r} of {store} has no train patches to compute statistics on")
    modalities = tuple(m for m in ("s2", "s1") if m in opened.modalities)
    bands = (BANDS if "s2" in modalities else ()) + (S1_BANDS if "s1" in modalities else ())
    figures = _moments(store, split, bands, modalities, resample, align_corners)
    try:
        # this one entry added to the cache as it is on disk now, under the store's write lock:
        # two trains caching their figures at once each keep theirs
        with open_store(store, mode="r+").editing_attrs() as attrs:
            cache: dict[str, Any] = attrs.setdefault(CACHE_KEY, {})
            cache.setdefault(split, {})[key] = {"split_sha256": digest, "subset": "train", "bands": figures}
    except (OSError, BenzarrError) as exc:  # a read-only store: serve the figures uncached
        warnings.warn(f"{store}: split statistics not cached ({exc})", stacklevel=2)
        # kept for this process: train's val and test datasets read them too (on a read-only
        # store each computed them again, a pass over the train subset, and warned again)
        _NOT_CACHED[memo_key] = figures
    return figures

