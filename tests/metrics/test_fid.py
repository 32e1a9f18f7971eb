"""FID against scipy.linalg.sqrtm on random features, and against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from scalegan.metrics import feature_statistics, fid_from_features, frechet_distance

# Both sides are float64; the eigendecomposition route and scipy's Schur-based sqrtm differ only
# by round-off, far below this. 1e-3 relative leaves room for sqrtm's own accuracy on
# moderately conditioned covariances.
RTOL_VS_SCIPY = 1e-3


def _correlated_features(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    """(n, d) Gaussian features with a random full covariance and mean ``shift`` per coordinate."""
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: numpy statistics and scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(root).real)


@pytest.mark.parametrize(("n1", "n2", "d"), [(500, 400, 16), (300, 350, 64)])
def test_matches_scipy_sqrtm(n1, n2, d):
    rng = np.random.default_rng(d)
    a = _correlated_features(rng, n1, d, 0.0)
    b = _correlated_features(rng, n2, d, 0.3) * 1.5
    want = _scipy_fid(a, b)
    assert want > 1.0  # the sets differ, so the comparison is not between two near-zeros
    assert fid_from_features(a, b) == pytest.approx(want, rel=RTOL_VS_SCIPY)


def test_statistics_match_numpy():
    rng = np.random.default_rng(0)
    x = _correlated_features(rng, 50, 7, 2.0)
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    assert mu.dtype == sigma.dtype == np.float64
    # the float32 tensor rounds the input to ~6e-8 relative
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-5, atol=1e-6)


def test_identical_sets_give_zero():
    # exactly 0 in exact arithmetic; float64 eigendecompositions of 64x64 matrices with trace ~64
    # leave round-off of order 1e-13, so 1e-6 can only fail on a real error
    x = _correlated_features(np.random.default_rng(1), 300, 64, 0.5)
    assert abs(fid_from_features(x, x)) <= 1e-6
    assert abs(fid_from_features(x, x.copy()[::-1])) <= 1e-6  # order does not matter


def test_symmetric():
    rng = np.random.default_rng(2)
    a, b = _correlated_features(rng, 200, 12, 0.0), _correlated_features(rng, 150, 12, 1.0)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)


def test_diagonal_closed_form():
    # diagonal covariances commute, so sqrtm(S1 S2) = diag(sqrt(a b)) and
    # d^2 = |mu1 - mu2|^2 + sum((sqrt(a) - sqrt(b))^2); a zero variance checks the clipping of
    # the singular case
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, -1.0])
    var1, var2 = np.array([1.0, 4.0, 0.0, 2.5]), np.array([9.0, 1.0, 3.0, 2.5])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_rotation_invariant():
    # rotating both Gaussians by the same orthogonal Q leaves the distance unchanged; the rotated
    # covariances are full matrices, so the eigendecompositions do real work
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    got = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="feature dims differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 3)))
