"""The fast iterative stratification gives exactly the iterative-stratification package's folds."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benzarr.stratify import iterative_stratification, kfold_assignment, shuffled_stratification



def _iterstrat():
    """The iterative-stratification package's module, imported at first use: it imports
    scikit-learn (about 0.8 s), which every pytest-xdist worker paid at collection."""
    import iterstrat.ml_stratifiers

    return iterstrat.ml_stratifiers


def package_folds(labels: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold, as the package yields them."""
    kfold = _iterstrat().MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [test for _, test in kfold.split(np.zeros(labels.shape[0]), labels)]


@st.composite
def label_matrices(draw: st.DrawFn, min_rows: int = 0, max_rows: int = 120) -> np.ndarray:
    """Small multi-hot matrices with skew, empty rows and repeated rows (to provoke ties)."""
    n = draw(st.integers(min_rows, max_rows))
    n_labels = draw(st.integers(2, 9))
    density = draw(st.sampled_from([0.05, 0.2, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    freq = rng.random(n_labels) * density
    return (rng.random((n, n_labels)) < freq).astype(np.uint8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=label_matrices(min_rows=5), n_splits=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_kfold_assignment_equals_package_folds(labels: np.ndarray, n_splits: int, seed: int) -> None:
    folds = kfold_assignment(labels, n_splits, seed)
    expected = package_folds(labels, n_splits, seed)
    for i in range(n_splits):
        np.testing.assert_array_equal(np.flatnonzero(folds == i), expected[i])


@settings(max_examples=150, deadline=None)
@given(
    labels=label_matrices(),
    shares=st.lists(st.integers(0, 10), min_size=2, max_size=4).filter(lambda s: sum(s) > 0),
    seed=st.integers(0, 2**32 - 1),
)
def test_uneven_shares_equal_package_function(labels: np.ndarray, shares: list[int], seed: int) -> None:
    """Uneven shares make desired counts non-integral and negative: float rounding must match."""
    r = np.asarray(shares, dtype=np.float64) / sum(shares)
    ours_rng, their_rng = np.random.RandomState(seed), np.random.RandomState(seed)
    ours = iterative_stratification(labels, r, ours_rng)
    theirs = _iterstrat().IterativeStratification(labels=labels.astype(bool), r=r, random_state=their_rng)
    np.testing.assert_array_equal(ours, theirs)
    # the generator is left in the same state, so anything drawn after matches too
    assert ours_rng.randint(0, 2**31) == their_rng.randint(0, 2**31)


def test_fractions_mode_is_the_package_procedure_with_other_shares() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random((400, 6)) < [0.5, 0.3, 0.1, 0.05, 0.02, 0.01]).astype(np.uint8)
    r = np.asarray([0.6, 0.2, 0.2])
    state = np.random.RandomState(11)
    order = np.arange(400)
    state.shuffle(order)
    expected = _iterstrat().IterativeStratification(labels=labels[order].astype(bool), r=r, random_state=state)
    np.testing.assert_array_equal(shuffled_stratification(labels, r, 11), expected[np.argsort(order)])


def test_skewed_matrix_of_a_few_thousand_rows_matches() -> None:
    from benzarr.bigearthnet import CLC43_FREQUENCY

    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 43)) < np.asarray(CLC43_FREQUENCY)).astype(np.uint8)
    folds = kfold_assignment(labels, 5, 0)
    for i, test in enumerate(package_folds(labels, 5, 0)):
        np.testing.assert_array_equal(np.flatnonzero(folds == i), test)


def test_label_less_rows_are_spread_evenly() -> None:
    labels = np.zeros((10, 3), dtype=np.uint8)
    folds = kfold_assignment(labels, 5, 1)
    assert np.bincount(folds, minlength=5).tolist() == [2, 2, 2, 2, 2]


def test_empty_input_gives_empty_assignment() -> None:
    assert iterative_stratification(np.zeros((0, 4), np.uint8), np.full(3, 1 / 3), np.random.RandomState(0)).shape == (0,)
