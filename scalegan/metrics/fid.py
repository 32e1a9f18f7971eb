"""Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

``d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``. ``S1 S2`` is not symmetric, but
it is similar to ``A = sqrt(S1) S2 sqrt(S1)`` (symmetric positive semi-definite), so
``tr(sqrtm(S1 S2)) = sum(sqrt(eig(A)))``. Two symmetric eigendecompositions (``numpy.linalg.eigh``)
give it without the complex round-off of a general ``sqrtm``; eigenvalues that round-off pushes
slightly below zero (singular covariances, e.g. fewer samples than feature dimensions) are clipped
to 0. Everything is float64, with numpy only (no scipy at run time).
"""

from __future__ import annotations

import numpy as np
import torch


def as_float64_features(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``features`` (N, D), numpy or torch on any device -> float64 numpy (N, D)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return array


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (as ``numpy.cov(rowvar=False)``) of
    ``features`` ``(N, D)``, N >= 2, both float64."""
    x = as_float64_features(features, "feature_statistics")
    if x.shape[0] < 2:
        raise ValueError(f"feature_statistics: need at least 2 samples, got {x.shape[0]}")
    mu = x.mean(axis=0)
    centered = x - mu
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return mu, sigma


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix; negative round-off eigenvalues -> 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    root = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * root) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` for symmetric PSD ``(D, D)`` matrices."""
    root1 = _symmetric_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # symmetric in exact arithmetic; eigh reads one triangle
    eigenvalues = np.clip(np.linalg.eigvalsh(inner), 0.0, None)
    return float(np.sqrt(eigenvalues).sum())


def _check_statistics(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, ...]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"frechet_distance: mu{which} must be (D,) and sigma{which} (D, D), got "
                         f"{mu.shape} and {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``mu`` ``(D,)``, ``sigma`` ``(D, D)`` symmetric PSD; the result is in squared feature units.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "1")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: feature dims differ: {mu1.shape[0]} vs "
                         f"{mu2.shape[0]}")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    trace_term = float(np.trace(sigma1) + np.trace(sigma2))
    return mean_term + trace_term - 2.0 * trace_sqrt_product(sigma1, sigma2)


def fid_from_features(features1: np.ndarray | torch.Tensor,
                      features2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (e.g. real and generated)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
