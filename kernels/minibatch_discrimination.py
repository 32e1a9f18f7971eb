"""Triton kernels: the pairwise part of minibatch discrimination and its backward.

For ``M`` ``(N, B, C)``: ``o[i, b] = sum_{j != i} K_ij^b`` with
``K_ij^b = exp(-||M[i, b] - M[j, b]||_1)``, and for ``g = dL/do``
``dM[i, b] = -sum_j (g[i, b] + g[j, b]) * K_ij^b * sign(M[i, b] - M[j, b])``.

Grid ``(cdiv(N, BLOCK_I), B)``: a program holds its ``BLOCK_I`` rows of one ``b``
(``(BLOCK_I, C_PAD)``, ``C_PAD`` = next power of 2 of ``C``, masked) and streams the ``N`` rows in
tiles of ``BLOCK_J``, forming the ``(BLOCK_I, BLOCK_J, C_PAD)`` differences in registers only;
the backward recomputes ``K`` per tile rather than storing ``(N, N, B)``. Everything is computed
in fp32 (loads are cast before any arithmetic: bf16 arithmetic is wrong in Triton's interpreter,
and the distances need fp32 anyway). Imports torch and triton only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_rows(m_ptr, offs_r, mask_r, b, B, C, offs_c, mask_c):
    """Rows ``offs_r`` of kernel ``b`` of M (contiguous (N, B, C)) as fp32 ``(rows, C_PAD)``;
    row r of kernel b starts at ``(r * B + b) * C``, padding and rows past N read 0."""
    return tl.load(m_ptr + (offs_r * B + b)[:, None] * C + offs_c[None, :],
                   mask=mask_r[:, None] & mask_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _mbd_fwd_kernel(
    m_ptr, o_ptr,
    N, B, C,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, C_PAD: tl.constexpr,
):
    pid_i = tl.program_id(0)
    b = tl.program_id(1)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_c = tl.arange(0, C_PAD)
    mask_i = offs_i < N
    mask_c = offs_c < C
    mi = _load_rows(m_ptr, offs_i, mask_i, b, B, C, offs_c, mask_c)
    acc = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        mj = _load_rows(m_ptr, offs_j, mask_j, b, B, C, offs_c, mask_c)
        # padded c are 0 - 0 in both rows: they add nothing to the distance
        dist = tl.sum(tl.abs(mi[:, None, :] - mj[None, :, :]), axis=2)  # (BLOCK_I, BLOCK_J)
        valid = mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])  # j < N, j != i
        acc += tl.sum(tl.where(valid, tl.exp(-dist), 0.0), axis=1)
    tl.store(o_ptr + offs_i * B + b, acc.to(o_ptr.dtype.element_ty), mask=mask_i)


@triton.jit
def _mbd_bwd_kernel(
    m_ptr, g_ptr, dm_ptr,
    N, B, C,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, C_PAD: tl.constexpr,
):
    pid_i = tl.program_id(0)
    b = tl.program_id(1)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_c = tl.arange(0, C_PAD)
    mask_i = offs_i < N
    mask_c = offs_c < C
    mask_ic = mask_i[:, None] & mask_c[None, :]
    mi = _load_rows(m_ptr, offs_i, mask_i, b, B, C, offs_c, mask_c)
    gi = tl.load(g_ptr + offs_i * B + b, mask=mask_i, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_I, C_PAD), dtype=tl.float32)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < N
        mj = _load_rows(m_ptr, offs_j, mask_j, b, B, C, offs_c, mask_c)
        gj = tl.load(g_ptr + offs_j * B + b, mask=mask_j, other=0.0).to(tl.float32)
        diff = mi[:, None, :] - mj[None, :, :]  # (BLOCK_I, BLOCK_J, C_PAD)
        k = tl.exp(-tl.sum(tl.abs(diff), axis=2))  # (BLOCK_I, BLOCK_J)
        # j == i needs no mask: its difference, hence its sign, is 0
        w = tl.where(mask_j[None, :], (gi[:, None] + gj[None, :]) * k, 0.0)
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        acc -= tl.sum(w[:, :, None] * sign, axis=1)  # (BLOCK_I, C_PAD)
    tl.store(dm_ptr + (offs_i * B + b)[:, None] * C + offs_c[None, :],
             acc.to(dm_ptr.dtype.element_ty), mask=mask_ic)


def _blocks(c: int) -> tuple[int, int, int]:
    """``(BLOCK_I, BLOCK_J, C_PAD)``: the ``(BLOCK_I, BLOCK_J, C_PAD)`` tile of differences is
    kept within 8192 fp32 values (registers of 4 warps), shrinking ``BLOCK_J`` as ``C`` grows."""
    c_pad = triton.next_power_of_2(c)
    block_i = 32
    block_j = max(1, min(32, 8192 // (block_i * c_pad)))
    return block_i, block_j, c_pad


def minibatch_discrimination_forward(m: torch.Tensor) -> torch.Tensor:
    """``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` in ``M``'s dtype (computed in fp32)."""
    n, nb, c = m.shape
    m = m.contiguous()
    o = torch.empty(n, nb, device=m.device, dtype=m.dtype)
    block_i, block_j, c_pad = _blocks(c)
    grid = (triton.cdiv(n, block_i), nb)
    _mbd_fwd_kernel[grid](m, o, n, nb, c, BLOCK_I=block_i, BLOCK_J=block_j, C_PAD=c_pad)
    return o


def minibatch_discrimination_backward(m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``dM`` ``(N, B, C)`` from ``M`` ``(N, B, C)`` and ``g = dL/do`` ``(N, B)``, in ``M``'s
    dtype."""
    n, nb, c = m.shape
    m = m.contiguous()
    g = g.contiguous()
    dm = torch.empty_like(m)
    block_i, block_j, c_pad = _blocks(c)
    grid = (triton.cdiv(n, block_i), nb)
    _mbd_bwd_kernel[grid](m, g, dm, n, nb, c, BLOCK_I=block_i, BLOCK_J=block_j, C_PAD=c_pad)
    return dm


class MinibatchDiscriminationFunction(torch.autograd.Function):
    """``apply(M, torch_backward)``: ``M`` ``(N, B, C)`` -> ``o`` ``(N, B)`` by the kernels.

    ``torch_backward(M, g) -> dM`` is the same backward in differentiable torch ops; it runs
    instead of the backward kernel when a double backward is asked for (``create_graph=True``,
    e.g. R1 or WGAN-GP), since a kernel's output has no graph. It is passed in because this
    package imports only torch and triton.
    """

    @staticmethod
    def forward(ctx, m, torch_backward):
        ctx.save_for_backward(m)
        ctx.torch_backward = torch_backward
        return minibatch_discrimination_forward(m)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return ctx.torch_backward(m, grad), None
        return minibatch_discrimination_backward(m, grad), None
