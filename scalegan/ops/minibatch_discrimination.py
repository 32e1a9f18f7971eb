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
* ``cpu``: autograd Functions on ``M`` that never form ``(N, N, B, C)``: the forward takes
  ``torch.cdist(p=1)`` over blocks of ``b`` / rows whose temporaries stay within
  :data:`ELEMENT_BUDGET` elements, and saves only ``M``. The backward,
  ``dM[i, b] = -sum_j (g[i, b] + g[j, b]) * K_ij^b * s_ij^b`` with
  ``K_ij^b = exp(-||M[i, b] - M[j, b]||_1)`` and ``s_ij^b = sign(M[i, b] - M[j, b])``, is a
  Function of ``(M, g)`` over the same kind of blocks (one reused sign buffer), and its own
  backward, the double backward of R1 / WGAN-GP, is the analytic
  ``dg_i = -sum_j K_ij Q_ij``, ``dM2_i = sum_j (g_i + g_j) K_ij Q_ij s_ij`` with
  ``Q_ij = sum_c (h_ic - h_jc) s_ijc`` for ``h = dL/d(dM)`` (``s`` is constant: its derivative
  is 0 almost everywhere, as ``torch.sign``'s), blocked the same way. So a double backward keeps
  ``M`` and ``g`` in the graph (``O(N * B * C)``) and peaks at one block, never the
  ``N * N * B * C`` signs. Third-order gradients are not supported (``once_differentiable``).
* ``triton``: Triton kernels for the forward, the backward and the double backward (tiles of
  rows i against tiles of rows j, a loop over ``C``, nothing of size ``N * N`` stored); same
  Function structure.

``across_ranks=True``: ``M`` ``(N, B, C)`` is gathered over the data-parallel ranks in rank
order (``torch.distributed.nn.functional.all_gather``, differentiable: the gradients of the
gathered rows return to their ranks) and ``o`` is this rank's rows of the statistic of the whole
gathered batch, the same at every world size. Its cost: every rank computes the pairwise part of
all ``world * N`` rows, ``world`` times the ``N x world * N`` pairs its rows need, in the forward
and in each backward, plus an all-gather of ``N * B * C`` values and, in the backward, an
all-to-all of ``world * N * B * C``. With one rank (or no process group) it is the plain op.

bf16 / fp16 inputs: ``M`` and the pairwise part are computed in fp32 (``exp(-d)`` of a distance
rounded to 8 bits of mantissa would be off by ``d * 2**-8`` relatively, and the gradient's
``sign(M_i - M_j)`` would flip for near ties); the output is in the input dtype.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn

from scalegan.ops._impl import resolve_impl

__all__ = [
    "ELEMENT_BUDGET",
    "MinibatchDiscrimination",
    "minibatch_discrimination",
    "minibatch_discrimination_ref",
    "pairwise_similarity",
    "pairwise_similarity_backward",
    "pairwise_similarity_double_backward",
]

# Elements of the largest temporary the cpu path forms per block ((Bc, rows, N) in the forward,
# (Bc, rows, N, C) in the backward and the double backward): 2 MiB in fp32. At N=512, B=64, C=16
# a backward block is 64 rows of one kernel; benchmarks/minibatch_discrimination.py measured the
# forward+backward's peak at 11 MiB with it (38 MiB with 16 MiB blocks). Module-level so the
# tests can lower it.
ELEMENT_BUDGET = 2**19


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


def minibatch_discrimination(features: torch.Tensor, T: torch.Tensor, impl: str = "auto",
                             across_ranks: bool = False) -> torch.Tensor:
    """``features`` ``(N, A)``, ``T`` ``(A, B, C)`` -> ``o`` ``(N, B)`` in ``features``' dtype,
    ``o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1)``, ``M = features @ T``.

    ``across_ranks``: ``j`` runs over the batch of every data-parallel rank (``M`` gathered in
    rank order, every rank passing the same ``N``), so ``o`` is the same at every world size; see
    the module docstring for its cost.
    """
    _check(features, T)
    impl = resolve_impl(impl, features, "minibatch_discrimination")
    world = dist.get_world_size() if across_ranks and dist.is_initialized() else 1
    if impl == "ref" and world == 1:
        return minibatch_discrimination_ref(features, T)
    m = _project(features, T)  # (N, B, C)
    n = m.shape[0]
    if world > 1:
        from torch.distributed.nn.functional import all_gather

        m = _ContiguousGrad.apply(torch.cat(all_gather(m.contiguous())))  # (world * N, B, C)
    if impl == "ref":
        o = _pairwise_ref(m)
    elif impl == "triton":
        from scalegan.kernels import minibatch_discrimination as _k

        o = _k.MinibatchDiscriminationFunction.apply(m)
    else:
        o = _PairwiseSimilarity.apply(m)
    if world > 1:
        first = dist.get_rank() * n  # this rank's rows of the gathered batch
        o = o[first:first + n]
    return o.to(features.dtype)  # (N, B)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous. all_gather's backward on gloo
    (an all-to-all of the gradient's slices) returns wrong values for a non-contiguous gradient:
    measured with torch 2.13, a transposed (4, 3) gradient came back with its elements
    scrambled. The backward is torch ops, so a double backward differentiates through it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def minibatch_discrimination_ref(features: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """The definition in plain torch ops; forms ``(N, N, B, C)``."""
    _check(features, T)
    return _pairwise_ref(_project(features, T)).to(features.dtype)


def _pairwise_ref(m: torch.Tensor) -> torch.Tensor:
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` through the ``(N, N, B, C)`` broadcast."""
    n = m.shape[0]
    dist_l1 = (m[:, None] - m[None, :]).abs().sum(-1)  # (N, N, B): ||M_i - M_j||_1 per b
    k = torch.exp(-dist_l1)
    self_pair = torch.eye(n, dtype=torch.bool, device=m.device)[:, :, None]  # j == i
    return k.masked_fill(self_pair, 0.0).sum(1)  # (N, B)


def _blocks(n: int, b: int, per_pair: int, budget: int) -> tuple[int, int]:
    """``(b_block, row_block)`` with ``b_block * row_block * n * per_pair <= budget`` (or one
    row at a time when even that is over), whole rows first: fewer, larger torch calls."""
    per_b = n * n * per_pair
    if per_b <= budget:
        return max(1, min(b, budget // per_b)), n
    return 1, max(1, budget // (n * per_pair))


@torch.no_grad()
def pairwise_similarity(m: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` without autograd, blocks of at most ``budget``
    distance elements; the self pair is masked (``o = K.sum - 1`` would cancel: typical
    distances give ``K_ij`` far below fp32's resolution at 1)."""
    budget = ELEMENT_BUDGET if budget is None else budget
    n, nb, _ = m.shape
    mb = m.permute(1, 0, 2)  # (B, N, C) view: cdist batches over b
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


def _row_blocks(m: torch.Tensor, c_per_pair: int, budget: int | None):
    """Yield ``(b0, i0, rows, m_all, sign)`` over blocks of kernels ``b0:b0 + Bc`` and rows
    ``i0:i0 + R``: ``m_all`` ``(Bc, N, C)`` and ``rows`` ``(Bc, R, C)`` slices of ``M`` laid out
    ``(B, N, C)``, and ``sign`` a ``(Bc, R, N, C)`` view of one buffer reused by every block
    (within ``budget`` elements), holding ``s_ijc = sign(M_ic - M_jc)``. A fresh temporary per
    block fragments the host allocator's heap: measured at N=512, B=64, C=16 with 16 MiB blocks,
    the peak RSS of the backward was ~230 MiB that way instead of the block size."""
    budget = ELEMENT_BUDGET if budget is None else budget
    n, nb, c = m.shape
    b_block, row_block = _blocks(n, nb, c_per_pair, budget)
    mb = m.permute(1, 0, 2)  # (B, N, C) view
    buf = m.new_empty(min(b_block, nb) * min(row_block, n) * n * c)
    for b0 in range(0, nb, b_block):
        m_all = mb[b0:b0 + b_block]  # (Bc, N, C)
        for i0 in range(0, n, row_block):
            rows = m_all[:, i0:i0 + row_block]  # (Bc, R, C)
            bc, r = rows.shape[:2]
            sign = buf[:bc * r * n * c].view(bc, r, n, c)
            torch.sub(rows[:, :, None], m_all[:, None], out=sign).sign_()
            yield b0, i0, rows, m_all, sign


@torch.no_grad()
def pairwise_similarity_backward(m: torch.Tensor, grad: torch.Tensor,
                                 budget: int | None = None) -> torch.Tensor:
    """``dM`` ``(N, B, C)`` from ``M`` ``(N, B, C)`` and ``g = dL/do`` ``(N, B)``, no autograd:
    ``dM[i, b] = -sum_j (g[i, b] + g[j, b]) * K_ij^b * sign(M[i, b] - M[j, b])``, one
    ``(Bc, R, N, C)`` block of signs at a time. The self pair needs no mask: its sign is 0."""
    n, nb, c = m.shape
    gb = grad.to(m.dtype).t()  # (B, N) view
    out = m.new_empty(n, nb, c)
    for b0, i0, rows, m_all, sign in _row_blocks(m, c, budget):
        bc, r = rows.shape[:2]
        g_all = gb[b0:b0 + bc]  # (Bc, N)
        w = torch.cdist(rows, m_all, p=1).neg_().exp_()  # K (Bc, R, N)
        w.mul_(g_all[:, i0:i0 + r, None] + g_all[:, None, :])  # (g_i + g_j) K_ij
        d = torch.bmm(w.view(bc * r, 1, n), sign.view(bc * r, n, c))  # (Bc * R, 1, C)
        out[i0:i0 + r, b0:b0 + bc] = d.view(bc, r, c).transpose(0, 1).neg()
    return out  # (N, B, C)


@torch.no_grad()
def pairwise_similarity_double_backward(m: torch.Tensor, grad: torch.Tensor, h: torch.Tensor,
                                        budget: int | None = None
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dM2, dg)``: the gradients w.r.t. ``M`` ``(N, B, C)`` and ``g`` ``(N, B)`` of
    ``<h, dM(M, g)>``, ``h`` ``(N, B, C)``, no autograd. With ``s`` constant (its derivative
    is 0 almost everywhere) and ``Q_ij = sum_c (h_ic - h_jc) s_ijc`` (symmetric, 0 at ``i = j``):
    ``dg_i = -sum_j K_ij Q_ij``, ``dM2_ic = sum_j (g_i + g_j) K_ij Q_ij s_ijc`` (per ``b``).

    Per block: ``sum_c h_ic s_ijc`` is a bmm, ``sum_c h_jc s_ijc`` a product into a second
    buffer of the sign block's size, summed over ``c``, and ``dM2`` a bmm. Memory: the two
    block buffers and ``(Bc, R, N)`` temporaries, nothing kept for a graph.
    """
    n, nb, c = m.shape
    gb = grad.to(m.dtype).t()  # (B, N) view
    hb = h.to(m.dtype).permute(1, 0, 2)  # (B, N, C) view
    dm2 = m.new_empty(n, nb, c)
    dg = m.new_empty(n, nb)
    scratch = None  # (Bc, R, N, C) products s_ijc h_jc; the first block is the largest
    for b0, i0, rows, m_all, sign in _row_blocks(m, c, budget):
        bc, r = rows.shape[:2]
        g_all, h_all = gb[b0:b0 + bc], hb[b0:b0 + bc]  # (Bc, N), (Bc, N, C)
        h_rows = h_all[:, i0:i0 + r]  # (Bc, R, C)
        q = torch.bmm(sign.view(bc * r, n, c), h_rows.reshape(bc * r, c, 1)).view(bc, r, n)
        scratch = sign.new_empty(sign.numel()) if scratch is None else scratch
        sh = torch.mul(sign, h_all[:, None], out=scratch[:sign.numel()].view_as(sign))
        q.sub_(sh.sum(-1))  # Q_ij = sum_c (h_ic - h_jc) s_ijc
        kq = torch.cdist(rows, m_all, p=1).neg_().exp_().mul_(q)  # K_ij Q_ij (Bc, R, N)
        dg[i0:i0 + r, b0:b0 + bc] = kq.sum(-1).neg_().t()
        kq.mul_(g_all[:, i0:i0 + r, None] + g_all[:, None, :])  # (g_i + g_j) K_ij Q_ij
        d = torch.bmm(kq.view(bc * r, 1, n), sign.view(bc * r, n, c))  # (Bc * R, 1, C)
        dm2[i0:i0 + r, b0:b0 + bc] = d.view(bc, r, c).transpose(0, 1)
    return dm2, dg.to(grad.dtype)  # (N, B, C), (N, B)


class _PairwiseSimilarity(torch.autograd.Function):
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)``, the cpu path; saves only ``M``. Its backward is
    :class:`_PairwiseSimilarityBackward`, differentiable once (R1, WGAN-GP)."""

    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return pairwise_similarity(m)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return _PairwiseSimilarityBackward.apply(m, grad)


class _PairwiseSimilarityBackward(torch.autograd.Function):
    """``(M, g)`` -> ``dM``; saves ``M`` and ``g`` (``O(N * B * C)``), not the signs. Its
    backward is ``once_differentiable``: a third-order gradient raises."""

    @staticmethod
    def forward(ctx, m, grad):
        ctx.save_for_backward(m, grad)
        return pairwise_similarity_backward(m, grad)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, h):
        m, grad = ctx.saved_tensors
        return pairwise_similarity_double_backward(m, grad, h)


class MinibatchDiscrimination(nn.Module):
    """Minibatch-discrimination layer for D: ``x`` ``(N, in_features)`` ->
    ``cat([x, o], dim=1)`` ``(N, in_features + num_kernels)``.

    ``T`` ``(in_features, num_kernels, kernel_dim)`` ~ N(0, 1), scaled at run time by
    ``1 / sqrt(in_features)`` (equalized learning rate, as the other layers of D), so ``M`` has
    unit-scale entries for unit-scale features whatever the fan-in. ``impl`` and ``across_ranks``
    (compare with the samples of every data-parallel rank, see :func:`minibatch_discrimination`)
    are plain attributes, not state: the state dict is the same whichever is used.
    """

    def __init__(self, in_features: int, num_kernels: int, kernel_dim: int,
                 impl: str = "auto", across_ranks: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_kernels = num_kernels
        self.kernel_dim = kernel_dim
        self.impl = impl
        self.across_ranks = across_ranks
        self.scale = 1.0 / math.sqrt(in_features)
        self.T = nn.Parameter(torch.randn(in_features, num_kernels, kernel_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = minibatch_discrimination(x, self.T * self.scale, impl=self.impl,
                                     across_ranks=self.across_ranks)  # (N, B)
        return torch.cat([x, o], dim=1)  # (N, A + B)

    def num_others(self, n: int) -> int:
        """How many samples each appended value sums over for a per-rank batch of ``n``:
        ``n - 1``, or ``world * n - 1`` with ``across_ranks`` in a process group."""
        world = dist.get_world_size() if self.across_ranks and dist.is_initialized() else 1
        return world * n - 1

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
                f"kernel_dim={self.kernel_dim}, impl={self.impl!r}, "
                f"across_ranks={self.across_ranks}")
