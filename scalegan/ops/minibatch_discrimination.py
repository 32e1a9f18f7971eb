"""Minibatch discrimination (Salimans et al. 2016, "Improved Techniques for Training GANs").

``minibatch_discrimination(features, T)``: ``features`` ``(N, A)``, ``T`` ``(A, B, C)`` -> ``o``
``(N, B)``. Each sample's features are projected to ``B`` rows of ``C`` values,
``M = (features @ T.reshape(A, B * C)).reshape(N, B, C)``, and

    o[i, b] = sum over j != i of exp(-||M[i, b, :] - M[j, b, :]||_1)

tells D, for every sample, how close it is to the other samples of the batch: a collapsed G
produces batches whose samples are all close, which D can then see.

Implementations (``impl``, see ``scalegan.ops._impl``); the projection is a plain torch matmul
for all of them, only the pairwise part differs:

* ``ref``: the definition, with the ``(N, N, B, C)`` broadcast of ``|M_i - M_j|``; autograd.
* ``cpu``: an autograd Function on ``M`` that never forms ``(N, N, B, C)``: the forward takes
  ``torch.cdist(p=1)`` over blocks of ``b`` / rows whose temporaries stay within
  :data:`ELEMENT_BUDGET` elements, and saves only ``M``. The backward,
  ``dM[i, b] = -sum_j (g[i, b] + g[j, b]) * K_ij^b * sign(M[i, b] - M[j, b])`` with
  ``K_ij^b = exp(-||M[i, b] - M[j, b]||_1)``, is computed over the same kind of blocks: in place
  with one reused buffer for a plain backward, in differentiable torch ops when a double backward
  (R1, WGAN-GP) asks for a graph. That graph keeps the ``sign`` blocks, ``N * N * B * C``
  elements in all, as the ``ref`` graph does.
* ``triton``: Triton kernels for the forward and the backward (tiles of rows i against tiles of
  rows j, ``K`` recomputed in the backward); a double backward uses the ``cpu`` backward's torch
  ops.

bf16 / fp16 inputs: ``M`` and the pairwise part are computed in fp32 (``exp(-d)`` of a distance
rounded to 8 bits of mantissa would be off by ``d * 2**-8`` relatively, and the gradient's
``sign(M_i - M_j)`` would flip for near ties); the output is in the input dtype.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from scalegan.ops._impl import resolve_impl

__all__ = [
    "ELEMENT_BUDGET",
    "MinibatchDiscrimination",
    "minibatch_discrimination",
    "minibatch_discrimination_ref",
    "pairwise_similarity",
    "pairwise_similarity_backward",
]

# Elements of the largest temporary the cpu path forms per block ((Bc, rows, N) in the forward,
# (Bc, rows, N, C) in the backward): 16 MiB in fp32. Module-level so the tests can lower it.
ELEMENT_BUDGET = 2**22


def _check(features: torch.Tensor, T: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"minibatch_discrimination: features must be (N, A), got shape "
                         f"{tuple(features.shape)}")
    if T.ndim != 3:
        raise ValueError(f"minibatch_discrimination: T must be (A, B, C), got shape "
                         f"{tuple(T.shape)}")
    if T.shape[0] != features.shape[1]:
        raise ValueError(f"minibatch_discrimination: T of shape {tuple(T.shape)} must have "
                         f"A={features.shape[1]} rows for features of shape "
                         f"{tuple(features.shape)}")
    if features.shape[0] < 1 or min(T.shape) < 1:
        raise ValueError(f"minibatch_discrimination: empty input, features "
                         f"{tuple(features.shape)}, T {tuple(T.shape)}")


def _project(features: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``M = (features @ T.reshape(A, B * C)).reshape(N, B, C)`` in at least fp32.

    Low-precision inputs are cast before the matmul, not after: the gradient holds
    ``sign(M[i, b, c] - M[j, b, c])``, and a bf16-rounded ``M`` flips it for every near tie
    (measured: 10% of the largest gradient entry at N=64, C=16). Autocast is off for the same
    reason; the matmul is small next to the pairwise part.
    """
    a, b, c = T.shape
    dtype = torch.promote_types(torch.promote_types(features.dtype, T.dtype), torch.float32)
    off = (contextlib.nullcontext() if features.is_meta  # shapes only: no autocast there
           else torch.autocast(features.device.type, enabled=False))
    with off:
        m = features.to(dtype) @ T.to(dtype).reshape(a, b * c)
    return m.reshape(features.shape[0], b, c)


def minibatch_discrimination(features: torch.Tensor, T: torch.Tensor,
                             impl: str = "auto") -> torch.Tensor:
    """``features`` ``(N, A)``, ``T`` ``(A, B, C)`` -> ``o`` ``(N, B)`` in ``features``' dtype,
    ``o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1)``, ``M = features @ T``."""
    _check(features, T)
    impl = resolve_impl(impl, features, "minibatch_discrimination")
    if impl == "ref":
        return minibatch_discrimination_ref(features, T)
    m = _project(features, T)
    if impl == "triton":
        from scalegan.kernels import minibatch_discrimination as _k

        o = _k.MinibatchDiscriminationFunction.apply(m, pairwise_similarity_backward)
    else:
        o = _PairwiseSimilarity.apply(m)
    return o.to(features.dtype)


def minibatch_discrimination_ref(features: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """The definition in plain torch ops; forms ``(N, N, B, C)``."""
    _check(features, T)
    m = _project(features, T)  # (N, B, C)
    n = m.shape[0]
    dist = (m[:, None] - m[None, :]).abs().sum(-1)  # (N, N, B): ||M_i - M_j||_1 per b
    k = torch.exp(-dist)
    self_pair = torch.eye(n, dtype=torch.bool, device=m.device)[:, :, None]  # j == i
    return k.masked_fill(self_pair, 0.0).sum(1).to(features.dtype)  # (N, B)


def _blocks(n: int, b: int, per_pair: int, budget: int) -> tuple[int, int]:
    """``(b_block, row_block)`` with ``b_block * row_block * n * per_pair <= budget`` (or one
    row at a time when even that is over), whole rows first: fewer, larger torch calls."""
    per_b = n * n * per_pair
    if per_b <= budget:
        return max(1, min(b, budget // per_b)), n
    return 1, max(1, budget // (n * per_pair))


def pairwise_similarity(m: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` without autograd, blocks of at most ``budget``
    distance elements; the self pair is masked (``o = K.sum - 1`` would cancel: typical
    distances give ``K_ij`` far below fp32's resolution at 1)."""
    budget = ELEMENT_BUDGET if budget is None else budget
    n, nb, _ = m.shape
    mb = m.detach().permute(1, 0, 2).contiguous()  # (B, N, C): cdist batches over b
    out = m.new_empty(nb, n)
    b_block, row_block = _blocks(n, nb, 1, budget)
    for b0 in range(0, nb, b_block):
        m_all = mb[b0:b0 + b_block]  # (Bc, N, C)
        for i0 in range(0, n, row_block):
            rows = m_all[:, i0:i0 + row_block]  # (Bc, R, C)
            k = torch.cdist(rows, m_all, p=1).neg_().exp_()  # (Bc, R, N), in place: one buffer
            r = rows.shape[1]
            k[:, torch.arange(r, device=m.device), torch.arange(i0, i0 + r, device=m.device)] = 0
            out[b0:b0 + b_block, i0:i0 + r] = k.sum(-1)
    return out.t().contiguous()  # (N, B)


def pairwise_similarity_backward(m: torch.Tensor, grad: torch.Tensor,
                                 budget: int | None = None) -> torch.Tensor:
    """``dM`` ``(N, B, C)`` from ``M`` ``(N, B, C)`` and ``g = dL/do`` ``(N, B)``:
    ``dM[i, b] = -sum_j (g[i, b] + g[j, b]) * K_ij^b * sign(M[i, b] - M[j, b])``.

    Under grad mode (a double backward, ``create_graph=True``) in differentiable torch ops: the
    ``sign`` is a constant of the graph (its derivative is 0), ``K`` is recomputed with
    ``torch.cdist``, whose own backward gives the second-order terms. Otherwise (a plain backward)
    the same computation in place, see :func:`_backward_no_graph`. The self pair needs no mask:
    its ``sign`` is 0. Temporaries: ``(Bc, R, N, C)`` blocks within ``budget`` elements.
    """
    budget = ELEMENT_BUDGET if budget is None else budget
    n, nb, c = m.shape
    b_block, row_block = _blocks(n, nb, c, budget)
    if not torch.is_grad_enabled():
        return _backward_no_graph(m, grad, b_block, row_block)
    mb = m.permute(1, 0, 2).contiguous()  # (B, N, C), differentiable copy
    gb = grad.to(m.dtype).t()  # (B, N)
    per_b = []
    for b0 in range(0, nb, b_block):
        m_all, g_all = mb[b0:b0 + b_block], gb[b0:b0 + b_block]  # (Bc, N, C), (Bc, N)
        per_rows = []
        for i0 in range(0, n, row_block):
            rows, g_rows = m_all[:, i0:i0 + row_block], g_all[:, i0:i0 + row_block]
            bc, r = rows.shape[:2]
            with torch.no_grad():  # sign' = 0: keep it out of the graph
                sign = (rows[:, :, None] - m_all[:, None]).sign_()  # (Bc, R, N, C), one buffer
            k = torch.exp(-torch.cdist(rows, m_all, p=1))  # (Bc, R, N)
            w = (g_rows[:, :, None] + g_all[:, None, :]) * k  # (Bc, R, N)
            d = torch.bmm(w.reshape(bc * r, 1, n), sign.view(bc * r, n, c))  # (Bc * R, 1, C)
            per_rows.append(-d.view(bc, r, c))
        per_b.append(torch.cat(per_rows, dim=1))  # (Bc, N, C)
    return torch.cat(per_b, dim=0).permute(1, 0, 2)  # (N, B, C)


def _backward_no_graph(m: torch.Tensor, grad: torch.Tensor, b_block: int,
                       row_block: int) -> torch.Tensor:
    """:func:`pairwise_similarity_backward` without a graph: one ``(Bc, R, N, C)`` sign buffer
    for all blocks and in-place ops. A fresh 16 MiB temporary per block fragments the host
    allocator's heap: measured at N=512, B=64, C=16, the peak RSS of the backward was ~230 MiB
    that way instead of the block size."""
    n, nb, c = m.shape
    mb = m.permute(1, 0, 2).contiguous()  # (B, N, C)
    gb = grad.to(m.dtype).t().contiguous()  # (B, N)
    out = m.new_empty(nb, n, c)
    sign_buf = m.new_empty(min(b_block, nb) * min(row_block, n) * n * c)
    for b0 in range(0, nb, b_block):
        m_all, g_all = mb[b0:b0 + b_block], gb[b0:b0 + b_block]  # (Bc, N, C), (Bc, N)
        for i0 in range(0, n, row_block):
            rows, g_rows = m_all[:, i0:i0 + row_block], g_all[:, i0:i0 + row_block]
            bc, r = rows.shape[:2]
            sign = sign_buf[:bc * r * n * c].view(bc, r, n, c)
            torch.sub(rows[:, :, None], m_all[:, None], out=sign).sign_()
            w = torch.cdist(rows, m_all, p=1).neg_().exp_()  # K (Bc, R, N)
            w.mul_(g_rows[:, :, None] + g_all[:, None, :])  # (g_i + g_j) K_ij
            d = torch.bmm(w.view(bc * r, 1, n), sign.view(bc * r, n, c))  # (Bc * R, 1, C)
            out[b0:b0 + bc, i0:i0 + r] = d.view(bc, r, c).neg_()
    return out.permute(1, 0, 2)  # (N, B, C)


class _PairwiseSimilarity(torch.autograd.Function):
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)``, the cpu path; saves only ``M``."""

    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return pairwise_similarity(m)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return pairwise_similarity_backward(m, grad)


class MinibatchDiscrimination(nn.Module):
    """Minibatch-discrimination layer for D: ``x`` ``(N, in_features)`` ->
    ``cat([x, o], dim=1)`` ``(N, in_features + num_kernels)``.

    ``T`` ``(in_features, num_kernels, kernel_dim)`` ~ N(0, 1), scaled at run time by
    ``1 / sqrt(in_features)`` (equalized learning rate, as the other layers of D), so ``M`` has
    unit-scale entries for unit-scale features whatever the fan-in. ``impl`` is a plain attribute,
    not state: the state dict is the same whichever implementation runs.
    """

    def __init__(self, in_features: int, num_kernels: int, kernel_dim: int,
                 impl: str = "auto") -> None:
        super().__init__()
        self.in_features = in_features
        self.num_kernels = num_kernels
        self.kernel_dim = kernel_dim
        self.impl = impl
        self.scale = 1.0 / math.sqrt(in_features)
        self.T = nn.Parameter(torch.randn(in_features, num_kernels, kernel_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = minibatch_discrimination(x, self.T * self.scale, impl=self.impl)  # (N, B)
        return torch.cat([x, o], dim=1)  # (N, A + B)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
                f"kernel_dim={self.kernel_dim}, impl={self.impl!r}")
