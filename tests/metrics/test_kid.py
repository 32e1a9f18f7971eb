"""KID: the unbiased MMD^2 against a direct double sum, its unbiasedness, and the subset loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalegan.metrics import kid_from_features, mmd2_unbiased


def _kernel(a: np.ndarray, b: np.ndarray) -> float:
    return (a @ b / a.shape[0] + 1.0) ** 3


def _mmd2_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: the U-statistic written out term by term."""
    m, n = len(x), len(y)
    xx = sum(_kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(_kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _mmd2_biased(x: np.ndarray, y: np.ndarray) -> float:
    """The V-statistic: like the U-statistic but the diagonal k(x_i, x_i) is kept."""
    d = x.shape[1]
    k = lambda a, b: (np.einsum("id,jd->ij", a, b) / d + 1.0) ** 3  # noqa: E731
    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_matches_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.5, 1.2, size=(7, 3))
    # same float64 sums in a different order: only round-off differs
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_double_loop(x, y), rel=1e-12, abs=1e-12)
    assert mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        mmd2_unbiased(x, y), rel=1e-12)


def test_unbiased_for_equal_distributions():
    # x and y fresh from the same distribution: the true MMD^2 is 0, so the U-statistic must
    # average to 0 within a few standard errors, while the V-statistic is biased upwards by about
    # (E k(x,x) - E k(x,x')) (1/m + 1/n) > 0
    rng = np.random.default_rng(1)
    draws, m, n, d = 2000, 10, 12, 4
    unbiased, biased = np.empty(draws), np.empty(draws)
    for i in range(draws):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(n, d))
        unbiased[i], biased[i] = mmd2_unbiased(x, y), _mmd2_biased(x, y)
    std_error = unbiased.std(ddof=1) / np.sqrt(draws)
    assert abs(unbiased.mean()) < 4 * std_error
    assert biased.mean() > 20 * biased.std(ddof=1) / np.sqrt(draws)


def test_full_subsets_equal_one_estimate():
    # subsets as large as both sets are permutations of them, and the estimate does not depend on
    # the order: every subset gives mmd2_unbiased(x, y), so the spread is 0 (up to round-off)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 6)), rng.normal(0.3, 1.0, size=(30, 6))
    result = kid_from_features(x, y, num_subsets=5, subset_size=1000)  # clipped to 30
    assert result.mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-10)
    assert result.std <= 1e-12


def test_seeded_subsets():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 8)), rng.normal(0.2, 1.0, size=(150, 8))
    first = kid_from_features(x, y, num_subsets=20, subset_size=50, seed=7)
    assert kid_from_features(x, y, num_subsets=20, subset_size=50, seed=7) == first
    other = kid_from_features(x, y, num_subsets=20, subset_size=50, seed=8)
    assert other != first
    assert first.std > 0  # different subsets give different estimates


def test_grows_with_separation():
    rng = np.random.default_rng(4)
    real, base = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    means = [kid_from_features(real, base + shift, num_subsets=10, subset_size=200).mean
             for shift in (0.0, 0.25, 1.0, 3.0)]
    assert all(a < b for a, b in zip(means, means[1:], strict=False)), means
    assert abs(means[0]) < means[1] / 5  # same distribution: ~0 next to a small shift


def test_rejects_tiny_sets():
    with pytest.raises(ValueError, match="subsets of >= 2"):
        kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
