"""Kernel inception distance (Bińkowski et al. 2018): the unbiased estimate of the squared maximum
mean discrepancy with the polynomial kernel ``k(x, y) = (x . y / D + 1)^3``, averaged over random
subsets of the two feature sets.

Defaults (100 subsets of 1000 samples; the kernel above) follow the KID paper and torch-fidelity.
Unlike FID the estimate is unbiased, so it can be slightly negative when the two distributions
are equal, and values computed from different sample counts are comparable.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from scalegan.metrics.fid import as_float64_features


class KIDResult(NamedTuple):
    """Mean and standard deviation (``ddof=0``, as torch-fidelity) of the per-subset MMD^2."""

    mean: float
    std: float


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x @ y.T / D + 1) ** 3`` for ``x`` ``(M, D)`` and ``y`` ``(N, D)`` -> ``(M, N)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Unbiased MMD^2 estimate between samples ``x`` ``(M, D)`` and ``y`` ``(N, D)``, M, N >= 2.

    The within-set means leave out the diagonal ``k(x_i, x_i)``: keeping it (the V-statistic)
    biases the estimate upwards by about ``(E k(x, x) - E k(x, x')) (1/M + 1/N)``.
    """
    x = as_float64_features(x, "mmd2_unbiased x")
    y = as_float64_features(y, "mmd2_unbiased y")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2_unbiased: need (M, D) and (N, D) with M, N >= 2, got {x.shape} "
                         f"and {y.shape}")
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor,
                      num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> KIDResult:
    """KID between ``real`` ``(N1, D)`` and ``fake`` ``(N2, D)`` features.

    Each of ``num_subsets`` draws takes ``min(subset_size, N1, N2)`` samples without replacement
    from each set (``numpy.random.default_rng(seed)``) and computes :func:`mmd2_unbiased`.
    Returns the mean and the spread of these estimates (in squared-kernel units; papers often
    report ``mean * 1000``).
    """
    real = as_float64_features(real, "kid_from_features real")
    fake = as_float64_features(fake, "kid_from_features fake")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if num_subsets < 1 or size < 2:
        raise ValueError(f"kid_from_features: need num_subsets >= 1 and subsets of >= 2 samples; "
                         f"got num_subsets={num_subsets}, subset size {size} "
                         f"(subset_size={subset_size}, N1={real.shape[0]}, N2={fake.shape[0]})")
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        real_rows = rng.choice(real.shape[0], size, replace=False)
        fake_rows = rng.choice(fake.shape[0], size, replace=False)
        estimates[i] = mmd2_unbiased(real[real_rows], fake[fake_rows])
    return KIDResult(float(estimates.mean()), float(estimates.std()))
