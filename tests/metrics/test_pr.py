"""Improved precision / recall against a brute-force N x N computation and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalegan.metrics import precision_recall
from scalegan.metrics.pr import knn_radii


def _brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Reference: full distance matrices in numpy; column 0 of a sorted row is the point itself."""
    def distances(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    real_radii = np.sort(distances(real, real), axis=1)[:, k]
    fake_radii = np.sort(distances(fake, fake), axis=1)[:, k]
    precision = (distances(fake, real) <= real_radii[None, :]).any(1).mean()
    recall = (distances(real, fake) <= fake_radii[None, :]).any(1).mean()
    return float(precision), float(recall)


def test_by_hand():
    # k = 1: every real point's nearest other point is 1 away. Fake 0.5 is inside, 4 is on the
    # boundary of 3's ball (inside: the balls are closed), 10 is outside -> precision 2/3. The
    # fake radii are 3.5, 3.5 and 6: every real point is within 3.5 of 0.5 -> recall 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [4.0], [10.0]])
    assert precision_recall(real, fake, k=1) == (2 / 3, 1.0)
    np.testing.assert_array_equal(knn_radii(real, k=1).numpy(), [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(knn_radii(real, k=2).numpy(), [2.0, 1.0, 1.0, 2.0])


# batches: 1 row, a size that divides neither N (37 real, 29 fake), larger than both
@pytest.mark.parametrize("row_batch", [1, 8, 1000])
@pytest.mark.parametrize("k", [1, 3])
def test_matches_brute_force(row_batch, k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(37, 5))
    fake = rng.normal(0.4, 1.3, size=(29, 5))
    got = precision_recall(real, fake, k=k, row_batch=row_batch)
    # shares of at most 37 samples: equal unless a distance lies within round-off of a radius
    # (probability ~0 for continuous data), so compare exactly
    assert got == _brute_force(real, fake, k)
    assert 0.0 < got.precision < 1.0 and 0.0 < got.recall < 1.0  # a non-trivial case
    want_radii = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), axis=1)[:, k]
    np.testing.assert_allclose(knn_radii(real, k, row_batch).numpy(), want_radii, rtol=1e-12)


def test_identical_sets():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


@pytest.mark.parametrize("dim", [2, 8])
def test_falls_as_fake_moves_away(dim):
    # the fake set is the real set translated: identical at shift 0, disjoint at 10 standard
    # deviations. (Two independent samples would add sampling noise of ~0.01 at N = 400, larger
    # than the change between shifts 0 and 1, which is small: k-NN balls in the tails are wide.)
    real = np.random.default_rng(dim).normal(size=(400, dim))
    direction = np.eye(dim)[0]
    results = [precision_recall(real, real + shift * direction) for shift in (0.0, 1.0, 3.0, 10.0)]
    for values in zip(*results, strict=True):  # precisions, then recalls
        assert values[0] == 1.0 and values[-1] == 0.0, values
        assert values[0] >= values[1] > values[2] > values[3], values


def test_rejects_k_too_large():
    with pytest.raises(ValueError, match="k < N"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
