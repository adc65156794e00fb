"""Iterative stratification (Sechidis et al. 2011), bit-for-bit as iterative-stratification 0.1.9.

:func:`iterative_stratification` returns exactly what
``iterstrat.ml_stratifiers.IterativeStratification(labels, r, random_state)`` returns for the
same input and the same ``numpy.random.RandomState``, and leaves that generator in the same
state; :func:`kfold_assignment` returns exactly the fold of every sample that
``MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)`` yields. Tests compare
both with the package on many random inputs (tests/test_stratify.py).

Why a reimplementation: the package runs one Python iteration with about ten NumPy calls per
sample and recomputes ``labels[remaining].sum(axis=0)`` over the whole matrix for every label,
about 13 us a sample, plus about 2 s to import scikit-learn. Here:

* Deciding the fold of a sample only reads the processed label's column of desired counts
  and the per-fold totals, so the per-sample loop is K Python floats, not NumPy calls.
* The other columns are read only when their label is processed, later; their decrements are
  applied in bulk once per label. Sequential ``x -= 1`` and one ``x - k`` give the same float
  whenever ``x - k >= 0`` (every intermediate value is then a multiple of ulp(x) no larger
  than x, hence exact); entries that would go negative are decremented one by one, as the
  package does, so rounding below zero is reproduced too.
* Remaining label counts are kept up to date by subtraction instead of recomputed.

The random generator is consumed by the same calls, in the same order: ``choice(n)`` on each
tie between labels, between folds, and for the label-less samples left at the end.
"""

from __future__ import annotations

import numpy as np

__all__ = ["iterative_stratification", "kfold_assignment", "shuffled_stratification"]


def iterative_stratification(labels: np.ndarray, r: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
    """Assign each sample to a subset by iterative stratification.

    Args:
        labels: (n, L) multi-hot matrix, any integer or bool dtype (non-zero = has the label).
        r: (K,) float64 desired share of each subset (the package uses ``[1/K] * K`` for K-fold).
        random_state: the generator the package would get; consumed identically.

    Returns:
        (n,) int64 subset index in ``0..K-1`` of each sample, in input order.
    """
    labels = np.asarray(labels).astype(bool, copy=False)
    n, n_labels = labels.shape
    r = np.asarray(r, dtype=np.float64)
    k = r.shape[0]
    folds = np.zeros(n, dtype=np.int64)
    if n == 0:
        return folds

    # Same float values as the package: desired totals and desired per-label counts.
    label_totals = labels.sum(axis=0)
    c_folds = [float(v) for v in r * n]
    c_labels = np.outer(r, label_totals)  # (K, L) float64, columns updated in bulk below
    columns_t = np.ascontiguousarray(labels.T)  # (L, n): a label's samples without strided reads
    remaining = label_totals.astype(np.int64)
    processed = np.zeros(n, dtype=bool)
    fold_range = range(k)
    choice = random_state.choice

    while True:
        nonzero = remaining[remaining > 0]
        if nonzero.size == 0:
            break
        candidates = np.flatnonzero(remaining == nonzero.min())
        if candidates.shape[0] > 1:
            label = int(candidates[choice(candidates.shape[0])])
        else:
            label = int(candidates[0])

        samples = np.flatnonzero(columns_t[label] & ~processed)
        column = [float(v) for v in c_labels[:, label]]
        chosen = np.empty(samples.shape[0], dtype=np.int64)
        for i in range(samples.shape[0]):
            top = max(column)
            if column.count(top) == 1:
                fold = column.index(top)
            else:
                # tie on the label's desired count: largest desired total, then at random
                tied = [f for f in fold_range if column[f] == top]
                top_total = max([c_folds[f] for f in tied])
                best = [f for f in tied if c_folds[f] == top_total]
                fold = best[choice(len(best))] if len(best) > 1 else best[0]
            chosen[i] = fold
            column[fold] -= 1.0
            c_folds[fold] -= 1.0

        folds[samples] = chosen
        processed[samples] = True
        rows = labels[samples]
        remaining -= rows.sum(axis=0, dtype=np.int64)
        # Apply the other columns' decrements, exactly as k sequential `x -= 1`.
        for fold in fold_range:
            counts = rows[chosen == fold].sum(axis=0, dtype=np.int64)
            _decrement(c_labels[fold], counts)

    # Samples without any label: spread over the subsets with the largest desired totals.
    for sample in np.flatnonzero(~processed):
        top = max(c_folds)
        tied = [f for f in fold_range if c_folds[f] == top]
        fold = tied[choice(len(tied))] if len(tied) > 1 else tied[0]
        folds[sample] = fold
        c_folds[fold] -= 1.0
    return folds


def _decrement(values: np.ndarray, counts: np.ndarray) -> None:
    """In place, ``values[j]`` minus 1.0 ``counts[j]`` times, rounding as sequential float ops."""
    exact = values - counts
    safe = exact >= 0  # no intermediate value drops below 1 before its last step: all exact
    values[safe] = exact[safe]
    for j in np.flatnonzero(~safe & (counts > 0)):
        v = float(values[j])
        for _ in range(int(counts[j])):
            v -= 1.0
        values[j] = v


def shuffled_stratification(labels: np.ndarray, r: np.ndarray, seed: int) -> np.ndarray:
    """``MultilabelStratifiedKFold._make_test_folds`` with desired shares ``r``.

    ``RandomState(seed)`` shuffles the sample order, iterative stratification runs on the
    shuffled rows with the same generator, and the result is put back in input order.

    Returns:
        (n,) int64 subset index of each sample, in input order.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    order = np.arange(labels.shape[0])
    rng.shuffle(order)
    folds = iterative_stratification(labels[order], r, rng)
    return folds[np.argsort(order)]


def kfold_assignment(labels: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold of each sample as ``MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)``.

    Fold ``i``'s test indices are ``np.flatnonzero(result == i)``, the i-th ``test`` array the
    package's ``split`` yields.

    Args:
        labels: (n, L) multi-hot matrix.

    Returns:
        (n,) int64 in ``0..n_splits-1``.
    """
    r = np.asarray([1 / n_splits] * n_splits)  # built as the package builds it
    return shuffled_stratification(labels, r, seed)
