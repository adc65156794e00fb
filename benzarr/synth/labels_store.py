"""The labels-only store: real v1.0 patch names with synthetic skewed labels, no band arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benzarr.bigearthnet import clc43_to_clc19
from benzarr.errors import InvalidArgumentError
from benzarr.synth.labels import synth_labels


def synth_labels_store(
    path: str | Path,
    n_patches: int,
    seed: int = 0,
    overwrite: bool = False,
) -> list[str]:
    """Write a complete labels-only store (no band arrays) with BigEarthNet's label skew.

    Rows are real BigEarthNet v1.0 patch names: all 519,284 names of the official
    train/val/test lists when ``n_patches`` is that many, else a sample of them drawn with
    ``seed`` (so ``benzarr split --method official`` means something on it). Labels are
    :func:`synth_labels` rows. Building the full 519,284 x 43 store takes a few seconds; it is
    what the split benchmark runs on.

    Raises:
        InvalidArgumentError: ``n_patches`` outside 1..519,284, or the path exists without
            ``overwrite``.
    """
    from benzarr.fsutil import foreign_files, is_benzarr_store, replace_output
    from benzarr.resources import read_official_list
    from benzarr.store import create_store

    official = sorted({name for subset in ("train", "val", "test") for name in read_official_list(subset)})
    if not 1 <= n_patches <= len(official):
        raise InvalidArgumentError(f"a labels-only store holds 1 to {len(official):,} patches, got {n_patches}")
    replace_output(path, overwrite=overwrite, owned=is_benzarr_store, what="a benzarr store", command="synth",
                   foreign=foreign_files)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB]))
    names = official if n_patches == len(official) else sorted(rng.choice(official, n_patches, replace=False).tolist())
    clc43 = synth_labels(n_patches, seed)
    store = create_store(path, names, shard_size=1 << 16, modalities=(),
                         source={"dataset": "BigEarthNet", "version": "1.0", "modality": "labels-only (synthetic)"},
                         ingest={"synthetic": True, "seed": seed, "n_patches": n_patches})
    store.array("labels/clc43")[:] = clc43
    clc19 = clc43_to_clc19(clc43)
    store.array("labels/clc19")[:] = clc19
    store.array("meta/valid")[:] = np.ones(n_patches, dtype=bool)
    store.mark_complete()  # as ingest does: failure and label summaries, complete, staging dropped
    return names
