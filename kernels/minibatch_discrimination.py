"""Triton kernels: the pairwise part of minibatch discrimination, its backward and the backward
of that backward (R1 / WGAN-GP through D).

Per kernel ``b`` (dropped from the notation), for ``M`` ``(N, C)``:

* forward: ``o_i = sum_{j != i} K_ij`` with ``K_ij = exp(-D_ij)``, ``D_ij = sum_c |M_ic - M_jc|``;
* backward, ``g = dL/do``: ``dM_ic = -sum_j (g_i + g_j) K_ij s_ijc``,
  ``s_ijc = sign(M_ic - M_jc)``;
* double backward, ``h = dL/d(dM)`` (``s`` is a constant: its derivative is 0 almost
  everywhere, as for ``torch.sign``): with ``Q_ij = sum_c (h_ic - h_jc) s_ijc`` (symmetric),
  ``dg_i = -sum_j K_ij Q_ij`` and ``dM2_ic = sum_j (g_i + g_j) K_ij Q_ij s_ijc``.
  (From ``L2 = <h, dM> = -1/2 sum_ij (g_i + g_j) K_ij Q_ij`` and ``dK_ij/dM_kc =
  -K_ij s_ijc (delta_ik - delta_jk)``.)

Layout: the launchers copy ``M`` (and ``h``) to fp32 ``(B, C, N)`` contiguous, so column ``c``
of kernel ``b`` is ``N`` contiguous values, and ``g`` to fp32 ``(B, N)``; that copy is also where
bf16 / fp16 inputs become fp32 (the distances and the signs of near ties need fp32), so every
kernel computes and loads fp32 only. Outputs come back in the input's dtype and layout.

Tiling: one program per (kernel ``b``, tile of ``BLOCK_I`` rows i), flattened on grid axis 0
(``B * cdiv(N, BLOCK_I)`` programs, so ``B`` is not bound by the 65535 limit of axes 1 and 2).
It streams the ``N`` rows j in tiles of ``BLOCK_J``; for each j tile a loop over ``c`` loads
column ``c`` of its i rows and of the j rows and accumulates ``|M_ic - M_jc|`` into a
``(BLOCK_I, BLOCK_J)`` distance tile, so the registers hold ``BLOCK_I x BLOCK_J`` values whatever
``C`` is. ``exp`` is taken once per pair. The backward kernels then run a second loop over ``c``
that adds ``sum_j w_ij s_ijc`` for the tile's weights ``w`` into column ``c`` of the program's
own rows of an fp32 ``(B, C, N)`` output in global memory: no other program writes those rows,
and a barrier after each j tile makes one tile's stores visible to the threads that load them in
the next (a reduced ``(BLOCK_I,)`` vector is held by several threads, and only one of them
stores each element). Nothing of size ``N * N`` or ``N * N * C`` is ever stored. No ``tl.dot``
(the pairs need ``|a - b|``, not products), so no tensor-core kernels. Imports torch and triton
only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import triton
import triton.language as tl

# No kernel here is a tl.dot GEMM.
TENSOR_CORE_KERNELS: tuple[str, ...] = ()

# Rows i x rows j per program. 32 x 32 fp32 tiles over 4 warps are 8 registers per thread each;
# the double backward keeps about four such tiles live (distances, Q, a difference, weights).
BLOCK_I = 32
BLOCK_J = 32
NUM_WARPS = 4


@triton.jit
def _row_tile(N, BLOCK_I: tl.constexpr):
    """This program's kernel ``b`` (int64: ``b * C * N`` may pass 2^31) and its ``BLOCK_I`` rows
    i (offsets and mask): axis 0 enumerates (b, row tile), row tiles fastest."""
    pid = tl.program_id(0)
    tiles_i = tl.cdiv(N, BLOCK_I)
    offs_i = (pid % tiles_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    return (pid // tiles_i).to(tl.int64), offs_i, offs_i < N


@triton.jit
def _l1_distances(m_b, offs_i, mask_i, offs_j, mask_j, N, C,
                  BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """``D_ij = sum_c |M_ic - M_jc|`` ``(BLOCK_I, BLOCK_J)`` from the ``(C, N)`` slab ``m_b``."""
    dist = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    col = m_b  # advanced by N per c: pointer arithmetic, no int32 product c * N
    for _ in range(C):
        mi = tl.load(col + offs_i, mask=mask_i, other=0.0)
        mj = tl.load(col + offs_j, mask=mask_j, other=0.0)
        dist += tl.abs(mi[:, None] - mj[None, :])
        col += N
    return dist


@triton.jit
def _add_signed_sums(m_b, out_b, w, offs_i, mask_i, offs_j, mask_j, N, C):
    """``out[c, i] += sum_j w_ij sign(M_ic - M_jc)`` for every ``c``; ``out_b`` and ``m_b`` are
    ``(C, N)`` slabs, ``w`` is ``(BLOCK_I, BLOCK_J)`` and 0 at masked pairs."""
    col = m_b
    out = out_b
    for _ in range(C):
        mi = tl.load(col + offs_i, mask=mask_i, other=0.0)
        mj = tl.load(col + offs_j, mask=mask_j, other=0.0)
        diff = mi[:, None] - mj[None, :]
        signed = tl.where(diff > 0, w, 0.0) - tl.where(diff < 0, w, 0.0)
        prev = tl.load(out + offs_i, mask=mask_i, other=0.0)
        tl.store(out + offs_i, prev + tl.sum(signed, axis=1), mask=mask_i)
        col += N
        out += N


@triton.jit
def _mbd_fwd_kernel(mt_ptr, o_ptr, N, C, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """``o`` ``(B, N)`` from ``M`` ``(B, C, N)``."""
    b, offs_i, mask_i = _row_tile(N, BLOCK_I)
    m_b = mt_ptr + b * C * N
    acc = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        dist = _l1_distances(m_b, offs_i, mask_i, offs_j, mask_j, N, C, BLOCK_I, BLOCK_J)
        valid = mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])  # j < N, j != i
        acc += tl.sum(tl.where(valid, tl.exp(-dist), 0.0), axis=1)
    tl.store(o_ptr + b * N + offs_i, acc, mask=mask_i)


@triton.jit
def _mbd_bwd_kernel(mt_ptr, g_ptr, dm_ptr, N, C, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """``dM`` ``(B, C, N)`` (zero on entry) from ``M`` ``(B, C, N)`` and ``g`` ``(B, N)``."""
    b, offs_i, mask_i = _row_tile(N, BLOCK_I)
    m_b = mt_ptr + b * C * N
    dm_b = dm_ptr + b * C * N
    gi = tl.load(g_ptr + b * N + offs_i, mask=mask_i, other=0.0)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        gj = tl.load(g_ptr + b * N + offs_j, mask=mask_j, other=0.0)
        dist = _l1_distances(m_b, offs_i, mask_i, offs_j, mask_j, N, C, BLOCK_I, BLOCK_J)
        # the self pair needs no mask: its sign is 0
        w = tl.where(mask_j[None, :], -(gi[:, None] + gj[None, :]) * tl.exp(-dist), 0.0)
        _add_signed_sums(m_b, dm_b, w, offs_i, mask_i, offs_j, mask_j, N, C)
        tl.debug_barrier()


@triton.jit
def _mbd_bwd_bwd_kernel(mt_ptr, g_ptr, ht_ptr, dg_ptr, dm2_ptr, N, C,
                        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """``dg`` ``(B, N)`` and ``dM2`` ``(B, C, N)`` (zero on entry) from ``M``, ``h``
    ``(B, C, N)`` and ``g`` ``(B, N)``."""
    b, offs_i, mask_i = _row_tile(N, BLOCK_I)
    m_b = mt_ptr + b * C * N
    h_b = ht_ptr + b * C * N
    dm2_b = dm2_ptr + b * C * N
    gi = tl.load(g_ptr + b * N + offs_i, mask=mask_i, other=0.0)
    dg = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        gj = tl.load(g_ptr + b * N + offs_j, mask=mask_j, other=0.0)
        dist = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        q = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)  # Q_ij
        m_col = m_b
        h_col = h_b
        for _ in range(C):
            diff = (tl.load(m_col + offs_i, mask=mask_i, other=0.0)[:, None]
                    - tl.load(m_col + offs_j, mask=mask_j, other=0.0)[None, :])
            dh = (tl.load(h_col + offs_i, mask=mask_i, other=0.0)[:, None]
                  - tl.load(h_col + offs_j, mask=mask_j, other=0.0)[None, :])
            dist += tl.abs(diff)
            q += tl.where(diff > 0, dh, 0.0) - tl.where(diff < 0, dh, 0.0)
            m_col += N
            h_col += N
        kq = tl.where(mask_j[None, :], tl.exp(-dist) * q, 0.0)  # Q_ii = 0: no self mask
        dg -= tl.sum(kq, axis=1)
        u = (gi[:, None] + gj[None, :]) * kq
        _add_signed_sums(m_b, dm2_b, u, offs_i, mask_i, offs_j, mask_j, N, C)
        tl.debug_barrier()
    tl.store(dg_ptr + b * N + offs_i, dg, mask=mask_i)


def _dense(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a contiguous tensor of ``dtype``, in one copy whatever its strides."""
    return torch.empty(x.shape, device=x.device, dtype=dtype).copy_(x)


def _columns(x: torch.Tensor) -> torch.Tensor:
    """``(N, B, C)`` -> fp32 ``(B, C, N)`` contiguous (one copy, casting on the way)."""
    return _dense(x.permute(1, 2, 0), torch.float32)


def _per_kernel(x: torch.Tensor) -> torch.Tensor:
    """``(N, B)`` (any strides, e.g. an expanded gradient) -> fp32 ``(B, N)`` contiguous."""
    return _dense(x.t(), torch.float32)


def _grid(n: int, nb: int) -> tuple[int]:
    return (nb * triton.cdiv(n, BLOCK_I),)


def minibatch_discrimination_forward(m: torch.Tensor) -> torch.Tensor:
    """``M`` ``(N, B, C)`` (fp32, bf16 or fp16) -> ``o`` ``(N, B)`` in ``M``'s dtype."""
    n, nb, c = m.shape
    o = torch.empty(nb, n, device=m.device, dtype=torch.float32)
    _mbd_fwd_kernel[_grid(n, nb)](_columns(m), o, n, c, BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J,
                                  num_warps=NUM_WARPS)
    return _dense(o.t(), m.dtype)


def minibatch_discrimination_backward(m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``dM`` ``(N, B, C)`` in ``M``'s dtype from ``M`` ``(N, B, C)`` and ``g = dL/do``
    ``(N, B)``."""
    n, nb, c = m.shape
    dm = torch.zeros(nb, c, n, device=m.device, dtype=torch.float32)
    _mbd_bwd_kernel[_grid(n, nb)](_columns(m), _per_kernel(g), dm, n, c, BLOCK_I=BLOCK_I,
                                  BLOCK_J=BLOCK_J, num_warps=NUM_WARPS)
    return _dense(dm.permute(2, 0, 1), m.dtype)


def minibatch_discrimination_double_backward(
        m: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dM2, dg)``: the gradients, w.r.t. ``M`` ``(N, B, C)`` and ``g`` ``(N, B)``, of
    ``<h, dM(M, g)>`` for ``h`` ``(N, B, C)``; in ``M``'s and ``g``'s dtypes."""
    n, nb, c = m.shape
    dg = torch.empty(nb, n, device=m.device, dtype=torch.float32)
    dm2 = torch.zeros(nb, c, n, device=m.device, dtype=torch.float32)
    _mbd_bwd_bwd_kernel[_grid(n, nb)](_columns(m), _per_kernel(g), _columns(h), dg, dm2, n, c,
                                      BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, num_warps=NUM_WARPS)
    return _dense(dm2.permute(2, 0, 1), m.dtype), _dense(dg.t(), g.dtype)


class MinibatchDiscriminationFunction(torch.autograd.Function):
    """``apply(M)``: ``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` by the forward kernel; saves only
    ``M``. Its backward is :class:`MinibatchDiscriminationBackward`, itself differentiable once,
    so a double backward (``create_graph=True``) keeps ``M`` and ``g`` in the graph, not pairs."""

    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return minibatch_discrimination_forward(m)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return MinibatchDiscriminationBackward.apply(m, grad)


class MinibatchDiscriminationBackward(torch.autograd.Function):
    """``apply(M, g)`` -> ``dM`` by the backward kernel; its backward (the double backward kernel)
    gives ``(dM2, dg)``. That one is ``once_differentiable``: third-order gradients raise."""

    @staticmethod
    def forward(ctx, m, g):
        ctx.save_for_backward(m, g)
        return minibatch_discrimination_backward(m, g)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, h):
        m, g = ctx.saved_tensors
        return minibatch_discrimination_double_backward(m, g, h)


def aot_launches() -> list[Callable[[], object]]:
    """The launchers on ``device="meta"`` tensors: every input dtype (each is cast to fp32 in the
    layout copy, so the kernels themselves only see fp32), ``N`` and ``C`` divisible by 16 and
    not. The tile (``BLOCK_I`` x ``BLOCK_J``) is the same for every shape."""
    calls: list[Callable[[], object]] = []
    cases = [(torch.float32, (64, 4, 16)), (torch.float32, (37, 3, 5)),
             (torch.bfloat16, (64, 4, 16)), (torch.float16, (37, 3, 5))]
    for dtype, (n, nb, c) in cases:
        m = torch.empty(n, nb, c, device="meta", dtype=dtype)
        g = torch.empty(n, nb, device="meta", dtype=dtype)
        calls += [functools.partial(minibatch_discrimination_forward, m),
                  functools.partial(minibatch_discrimination_backward, m, g),
                  functools.partial(minibatch_discrimination_double_backward, m, g, m)]
    return calls
