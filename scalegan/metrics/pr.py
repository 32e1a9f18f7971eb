"""Improved precision and recall (Kynkäänniemi et al. 2019).

Each sample of a set gets a ball whose radius is the distance to its k-th nearest neighbour in
the same set (the sample itself excluded). The balls of the real set approximate the real
manifold: **precision** is the share of generated samples inside at least one real ball (are the
samples realistic?). **Recall** swaps the roles: the share of real samples inside at least one
generated ball (is the real distribution covered?).

Distances are computed in float64 with ``torch.cdist`` one block of ``row_batch`` query rows at a
time, so memory is ``O(row_batch * N)`` (``row_batch * N * 8`` bytes per block), never ``N^2``.
float64 makes the round-off of the matrix-product form that ``cdist`` uses for large inputs
(``|x|^2 + |y|^2 - 2 x.y``) negligible next to the radii; float32 would halve the memory but can
flip ``distance <= radius`` for samples near a ball's boundary.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class PrecisionRecall(NamedTuple):
    """Shares in [0, 1]."""

    precision: float
    recall: float


def _as_float64_tensor(features: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``(N, D)`` numpy (-> CPU) or torch (stays on its device) -> float64 tensor."""
    x = torch.as_tensor(features).to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(x.shape)}")
    return x


def _row_blocks(num_rows: int, row_batch: int) -> range:
    if row_batch < 1:
        raise ValueError(f"row_batch must be >= 1, got {row_batch}")
    return range(0, num_rows, row_batch)


def knn_radii(features: np.ndarray | torch.Tensor, k: int = 3,
              row_batch: int = 512) -> torch.Tensor:
    """Distance from each row of ``features`` ``(N, D)`` to its k-th nearest other row: ``(N,)``.

    The row itself is at distance 0, the smallest of its row of distances, so the k-th nearest
    other row is the (k+1)-th smallest entry (duplicates of the row count as neighbours at 0).
    """
    x = _as_float64_tensor(features, "knn_radii")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"knn_radii: need 1 <= k < N, got k={k} with N={x.shape[0]}")
    radii = []
    for start in _row_blocks(x.shape[0], row_batch):
        distances = torch.cdist(x[start:start + row_batch], x)  # (B, N)
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def coverage(queries: np.ndarray | torch.Tensor, centers: np.ndarray | torch.Tensor,
             radii: torch.Tensor, row_batch: int = 512) -> float:
    """Share of ``queries`` ``(Q, D)`` within ``radii`` ``(M,)`` of at least one of ``centers``
    ``(M, D)`` (boundary included)."""
    q = _as_float64_tensor(queries, "coverage queries")
    c = _as_float64_tensor(centers, "coverage centers").to(q.device)
    radii = radii.to(q.device, torch.float64)
    if c.shape[1] != q.shape[1] or radii.shape != (c.shape[0],):
        raise ValueError(f"coverage: queries {tuple(q.shape)}, centers {tuple(c.shape)} and radii "
                         f"{tuple(radii.shape)} do not match")
    inside = 0
    for start in _row_blocks(q.shape[0], row_batch):
        distances = torch.cdist(q[start:start + row_batch], c)  # (B, M)
        inside += int((distances <= radii).any(dim=1).sum())
    return inside / q.shape[0]


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3,
                     row_batch: int = 512) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` ``(N2, D)`` with respect to ``real`` ``(N1, D)``.

    ``k`` = 3 is the paper's default; both sets need more than ``k`` samples.
    """
    real = _as_float64_tensor(real, "precision_recall real")
    fake = _as_float64_tensor(fake, "precision_recall fake").to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: feature dims differ: {real.shape[1]} vs "
                         f"{fake.shape[1]}")
    precision = coverage(fake, real, knn_radii(real, k, row_batch), row_batch)
    recall = coverage(real, fake, knn_radii(fake, k, row_batch), row_batch)
    return PrecisionRecall(precision, recall)
