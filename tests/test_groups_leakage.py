"""Spatial leakage: the spatial hash finds exactly the neighbours a brute-force search finds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benzarr.errors import InvalidArgumentError
from benzarr.leakage import centres, has_neighbour, split_leakage


def brute_force(q: np.ndarray, qe: np.ndarray, r: np.ndarray, re: np.ndarray, km: float) -> np.ndarray:
    return np.array([any(qe[i] == re[j] and np.abs(q[i] - r[j]).max() <= km * 1000 + 1e-6 for j in range(len(r)))
                     for i in range(len(q))], dtype=bool)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 50), m=st.integers(0, 50), seed=st.integers(0, 2**32 - 1),
       km=st.sampled_from([0.0, 0.3, 1.2, 1.7, 2.4, 5.0]), step=st.sampled_from([300.0, 600.0, 1200.0, 977.3]))
def test_spatial_hash_equals_brute_force(n, m, seed, km, step) -> None:
    rng = np.random.default_rng(seed)
    q = rng.integers(-5, 9, (n, 2)) * step + 400_000
    r = rng.integers(-5, 9, (m, 2)) * step + 400_000
    qe = rng.choice([32633, 32634], n)
    re = rng.choice([32633, 32634], m)
    np.testing.assert_array_equal(has_neighbour(q, qe, r, re, km), brute_force(q, qe, r, re, km))


def test_edge_and_corner_neighbours_leak_at_one_patch_side() -> None:
    # a 5 x 5 grid of 1200 m patches; train is the centre patch only
    row, col = np.divmod(np.arange(25), 5)
    bounds = np.stack([col * 1200.0, -row * 1200.0, (col + 1) * 1200.0, -(row + 1) * 1200.0], axis=1) + [500_000, 5e6, 500_000, 5e6]
    codes = np.full(25, 2, np.int8)
    codes[12] = 0
    leak = split_leakage(codes, bounds, np.full(25, 32633))
    assert leak["test_near_train"] == 8 and leak["test_patches"] == 24  # the ring of eight
    assert np.isnan(leak["val"]) and leak["val_patches"] == 0
    assert split_leakage(codes, bounds, np.full(25, 32633), km=2.4)["test_near_train"] == 24
    assert split_leakage(codes, bounds, np.full(25, 32633), km=1.0)["test_near_train"] == 0


def test_patches_of_other_crs_are_never_neighbours() -> None:
    xy = np.array([[500_600.0, 5_000_600.0]])
    assert not has_neighbour(xy, [32633], xy, [32634]).any()
    assert has_neighbour(xy, [32633], xy, [32633]).all()  # same place, another acquisition


def test_centres_and_bad_distance() -> None:
    np.testing.assert_array_equal(centres(np.array([[0, 1200, 1200, 0]])), [[600, 600]])
    with pytest.raises(InvalidArgumentError):
        has_neighbour(np.zeros((1, 2)), [1], np.zeros((1, 2)), [1], km=-1)
