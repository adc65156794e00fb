"""Label sampling: BigEarthNet's per-class shares, 1 to 6 labels a patch (v2: never without a 19-class label).

Rows follow the sorted patch names of :func:`benzarr.synth.synth_patch_names`; each draw has
its own stream of the seed, so the label matrix depends only on ``(n_patches, seed)``.
"""

from __future__ import annotations

import numpy as np

from benzarr.bigearthnet import CLC43_FREQUENCY, clc43_to_clc19
from benzarr.errors import InvalidArgumentError

#: Labels per patch.
MIN_LABELS, MAX_LABELS = 1, 6
# Streams of a seed (spawn keys) for the labels and their v2 redraws.
_LABEL_STREAM, _REDRAW_STREAM = 1, 5


def _check_count(n_patches: int, seed: int) -> None:
    if isinstance(n_patches, bool) or not isinstance(n_patches, (int, np.integer)) or n_patches < 0:
        raise InvalidArgumentError(f"n_patches must be an integer >= 0, got {n_patches!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"seed must be an integer >= 0, got {seed!r}")


def synth_labels(n_patches: int, seed: int = 0) -> np.ndarray:
    """Multi-hot CLC43 labels of the synthetic archive ``(n_patches, seed)``.

    Each class is drawn independently with its real share of patches
    (:data:`CLC43_FREQUENCY`); a patch left empty gets one class drawn in proportion to the
    shares; a patch with more than :data:`MAX_LABELS` keeps a uniformly random 6 of them. The
    shares therefore stay close to the real ones (a few classes in 30-45 % of patches, many
    under 0.5 %), with about 2.9 labels per patch.

    Row ``i`` belongs to the patch ``synth_patch_names(n_patches, seed)[i]``, and depends only
    on ``seed`` and ``i`` (a longer archive of the same seed extends the label matrix).

    Returns:
        (n_patches, 43) uint8, 0 or 1, official CLC43 order. 519,284 rows take about a
        second.
    """
    _check_count(n_patches, seed)
    p = np.asarray(CLC43_FREQUENCY, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_LABEL_STREAM,)))
    out = np.empty((n_patches, len(p)), dtype=np.uint8)
    block = 65536  # bounded memory; one float64 draw per cell keeps the stream row-aligned
    for start in range(0, n_patches, block):
        u = rng.random((min(block, n_patches - start), len(p)))
        out[start : start + len(u)] = _labels_from_uniform(u, p)
    return out


def _labels_from_uniform(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(rows, 43) bool labels from (rows, 43) uniform draws ``u`` and class shares ``p``."""
    on = u < p
    # Given on, u / p is uniform and independent across classes: a free random
    # priority for keeping MAX_LABELS of the set labels.
    count = on.sum(axis=1)
    over = np.flatnonzero(count > MAX_LABELS)
    if over.size:
        keys = np.where(on[over], u[over] / p, np.inf)
        keep = np.argsort(keys, axis=1)[:, :MAX_LABELS]
        on[over] = False
        on[over[:, None], keep] = True
    # Given off, (u - p) / (1 - p) is uniform; argmin of Exp(1) / p picks class c with
    # probability p_c / sum(p) (an exponential race).
    empty = np.flatnonzero(count == 0)
    if empty.size:
        v = (u[empty] - p) / (1.0 - p)
        race = -np.log1p(-v) / p
        on[empty, np.argmin(race, axis=1)] = True
    return on



def synth_labels_v2(n_patches: int, seed: int = 0) -> np.ndarray:
    """CLC43 labels of the synthetic v2.0 archive: :func:`synth_labels`, with each row whose
    19-class conversion would be empty (only classes outside the 19-class nomenclature, such
    as road networks or bare rock) redrawn from its own stream until it is not (reBEN has no
    patch without 19-class labels).

    Returns:
        (n_patches, 43) uint8, row i for the i-th patch of ``synth_patch_names(n, seed)``
        (the v1 names the v2 patches carry as ``s2v1_name``).
    """
    labels = synth_labels(n_patches, seed)
    bad = np.flatnonzero(clc43_to_clc19(labels).sum(axis=1) == 0)
    p = np.asarray(CLC43_FREQUENCY, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_REDRAW_STREAM,)))
    while bad.size:
        candidates = _labels_from_uniform(rng.random((bad.size, len(p))), p).astype(np.uint8)
        ok = clc43_to_clc19(candidates).any(axis=1)
        labels[bad[ok]] = candidates[ok]
        bad = bad[~ok]
    return labels

