"""benzarr.metrics against scikit-learn, and the absent-class convention."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from benzarr.errors import InvalidArgumentError
from benzarr.metrics import MultilabelMetrics, compute_metrics, json_friendly


@st.composite
def predictions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_score): small multi-hot matrices, some columns all zero (absent classes),
    scores on a coarse grid so that ties and scores equal to the threshold occur."""
    n = draw(st.integers(1, 40))
    n_labels = draw(st.integers(2, 8))  # sklearn reads an (N, 1) matrix as binary, not multi-label
    y_true = draw(arrays(np.uint8, (n, n_labels), elements=st.integers(0, 1)))
    absent = draw(arrays(bool, (n_labels,), elements=st.booleans()))
    y_true[:, absent] = 0
    y_score = draw(arrays(np.int64, (n, n_labels), elements=st.integers(0, 8))) / 8.0
    return y_true, y_score


def _sklearn_reference(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """The module's convention written with scikit-learn: micro over all classes, macro over
    present classes (``labels=``), zero_division=0."""
    # imported here, not at collection: about 1 s in every pytest-xdist worker
    from sklearn.metrics import average_precision_score, fbeta_score, precision_recall_fscore_support
    n_labels = y_true.shape[1]
    y_pred = (y_score > 0.5).astype(int)
    present = [i for i in range(n_labels) if y_true[:, i].any()]
    everything = list(range(n_labels))
    ref: dict[str, float] = {}
    p, r, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=everything, average="micro", zero_division=0
    )
    f2 = fbeta_score(y_true, y_pred, beta=2, labels=everything, average="micro", zero_division=0)
    ref.update(micro_precision=p, micro_recall=r, micro_f1=f1, micro_f2=f2)
    if y_true.any():
        ref["micro_map"] = average_precision_score(y_true, y_score, average="micro")
    if present:
        p, r, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=present, average="macro", zero_division=0
        )
        f2 = fbeta_score(y_true, y_pred, beta=2, labels=present, average="macro", zero_division=0)
        ap = average_precision_score(y_true[:, present], y_score[:, present], average="macro")
        ref.update(macro_precision=p, macro_recall=r, macro_f1=f1, macro_f2=f2, macro_map=ap)
    return ref


@settings(max_examples=150, deadline=None)
@given(predictions())
def test_aggregates_equal_sklearn_with_absent_classes(data: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_score = data
    result = compute_metrics(y_true, y_score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about ill-defined values we define
        ref = _sklearn_reference(y_true, y_score)
    for key, expected in ref.items():
        assert result[key] == pytest.approx(expected, abs=1e-12), key
    if not y_true.any():
        assert math.isnan(result["micro_map"])
        assert math.isnan(result["macro_f1"]) and result["n_classes_present"] == 0


@settings(max_examples=100, deadline=None)
@given(predictions())
def test_per_class_values_equal_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.metrics import average_precision_score, fbeta_score, precision_recall_fscore_support
    y_true, y_score = data
    result = compute_metrics(y_true, y_score)
    y_pred = (y_score > 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f1, support = precision_recall_fscore_support(
            y_true, y_pred, average=None, zero_division=0
        )
        f2 = fbeta_score(y_true, y_pred, beta=2, average=None, zero_division=0)
    for i, row in enumerate(result["per_class"]):
        assert row["support"] == support[i]
        assert row["predicted"] == y_pred[:, i].sum()
        if support[i] == 0:
            continue
        assert row["precision"] == pytest.approx(p[i], abs=1e-12)
        assert row["recall"] == pytest.approx(r[i], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert row["f2"] == pytest.approx(f2[i], abs=1e-12)
        assert row["ap"] == pytest.approx(average_precision_score(y_true[:, i], y_score[:, i]), abs=1e-12)


def test_absent_class_is_nan_per_class_and_left_out_of_macro() -> None:
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    # Class 2 is absent but predicted once: a false positive for micro, ignored by macro.
    y_score = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.9, 0.3]])
    result = compute_metrics(y_true, y_score, class_names=["a", "b", "c"])
    absent = result["per_class"][2]
    assert absent["class"] == "c" and absent["support"] == 0 and absent["predicted"] == 1
    for key in ("precision", "recall", "f1", "f2", "ap"):
        assert math.isnan(absent[key])
    assert result["n_classes_present"] == 2
    assert result["macro_f1"] == 1.0 and result["macro_map"] == 1.0
    assert result["micro_precision"] == pytest.approx(4 / 5)
    assert result["micro_recall"] == 1.0


def test_json_friendly_turns_nan_into_none() -> None:
    result = compute_metrics(np.array([[1, 0]]), np.array([[0.9, 0.1]]))
    text = json.dumps(json_friendly(result), allow_nan=False)
    assert json.loads(text)["per_class"][1]["ap"] is None


def test_perfect_predictions_give_one() -> None:
    rng = np.random.default_rng(1)
    y_true = (rng.random((64, 19)) < 0.3).astype(np.uint8)
    y_true[0] = 1  # every class present
    y_score = np.where(y_true == 1, 0.9, 0.1)
    result = compute_metrics(y_true, y_score)
    for key in ("micro_precision", "micro_recall", "micro_f1", "micro_f2", "micro_map",
                "macro_precision", "macro_recall", "macro_f1", "macro_f2", "macro_map"):
        assert result[key] == 1.0, key
    assert result["n_samples"] == 64


def test_threshold_is_strict() -> None:
    result = compute_metrics(np.array([[1]]), np.array([[0.5]]))
    assert result["per_class"][0]["predicted"] == 0


def test_accumulator_over_batches_equals_one_shot() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    y_true = (rng.random((100, 43)) < 0.1).astype(np.uint8)
    logits = rng.normal(0.0, 3.0, size=(100, 43)).astype(np.float32)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    acc = MultilabelMetrics(num_classes=43)
    for start in range(0, 100, 32):  # uneven last batch, torch tensors in
        acc.update(torch.from_numpy(logits[start : start + 32]), torch.from_numpy(y_true[start : start + 32]).float())
    assert acc.n_samples == 100
    batched = acc.compute()
    one_shot = compute_metrics(y_true, probs)
    assert batched.keys() == one_shot.keys()
    for key, value in one_shot.items():
        if key == "per_class":
            for a, b in zip(batched[key], value):
                assert a == pytest.approx(b, nan_ok=True)
        else:
            assert batched[key] == pytest.approx(value, nan_ok=True), key


def test_accumulator_takes_probabilities_and_resets() -> None:
    acc = MultilabelMetrics(class_names=["a", "b"], from_logits=False)
    acc.update(np.array([[0.9, 0.2]]), np.array([[1, 0]]))
    assert acc.compute()["per_class"][0]["class"] == "a"
    acc.reset()
    with pytest.raises(InvalidArgumentError, match="update"):
        acc.compute()


@pytest.mark.parametrize(
    ("y_true", "y_score", "match"),
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), "shape"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.full((2, 2), 2), np.zeros((2, 2)), "0 and 1"),
        (np.zeros((2, 2)), np.full((2, 2), np.nan), "NaN"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no samples"),
    ],
)
def test_bad_inputs_raise_invalid_argument(y_true: np.ndarray, y_score: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        compute_metrics(y_true, y_score)


def test_accumulator_refuses_another_class_count() -> None:
    acc = MultilabelMetrics()
    acc.update(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InvalidArgumentError, match="expected 3"):
        acc.update(np.zeros((2, 4)), np.zeros((2, 4)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_resampled_counts_follow_the_same_conventions(n: int, n_labels: int, seed: int) -> None:
    """The bootstrap's count formulas, with every sample drawn once, give compute_metrics' values."""
    from benzarr.metrics import BOOTSTRAP_KEYS, _count_metrics

    rng = np.random.default_rng(seed)
    y_true = rng.random((n, n_labels)) < 0.3
    y_score = rng.random((n, n_labels))
    pred = y_score > 0.5
    counts = [np.count_nonzero(a, axis=0)[None].astype(np.float64) for a in (y_true & pred, pred, y_true)]
    resampled = _count_metrics(*counts)
    point = compute_metrics(y_true, y_score)
    for key in BOOTSTRAP_KEYS:
        expected = point[key]
        got = float(resampled[key][0])
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected, abs=1e-12), key


def test_bootstrap_intervals_are_seeded_and_bracket_a_stable_score() -> None:
    from benzarr.metrics import BOOTSTRAP_KEYS, bootstrap_intervals

    rng = np.random.default_rng(0)
    y_true = rng.random((2000, 5)) < 0.3
    y_score = np.clip(y_true * 0.3 + rng.random((2000, 5)) * 0.7, 0, 1)
    a = bootstrap_intervals(y_true, y_score, n_resamples=200, seed=1)
    assert a == bootstrap_intervals(y_true, y_score, n_resamples=200, seed=1)
    assert a != bootstrap_intervals(y_true, y_score, n_resamples=200, seed=2)
    point = compute_metrics(y_true, y_score)
    for key in BOOTSTRAP_KEYS:
        low, high = a[key]
        assert low <= point[key] <= high and high - low < 0.1, key
    perfect = bootstrap_intervals(y_true, y_true.astype(float), n_resamples=50)
    assert all(pair == (1.0, 1.0) for pair in perfect.values())
    with pytest.raises(InvalidArgumentError, match="n_resamples"):
        bootstrap_intervals(y_true, y_score, n_resamples=0)
