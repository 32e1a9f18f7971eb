"""Triton kernels: the minibatch-stddev statistic and its backward.

Groups are ``G`` consecutive samples; channel group ``f`` of sample ``n`` is the contiguous run of
``E = C / F * H * W`` elements at ``n * C * H * W + f * E``. The forward program of (group, f)
walks those runs of the G members in blocks of ``BLOCK_E`` elements, computing per element the
std over the members, and sums it; the backward program of (group, f, block) writes
``dx_k = grad / E * (x_k - mean) / (G * std)``. Statistics in fp32. Imports torch and triton only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _group_stddev_fwd_kernel(x_ptr, out_ptr, G, E, F, eps,
                             G_PAD: tl.constexpr, BLOCK_E: tl.constexpr):
    grp = tl.program_id(0)
    f = tl.program_id(1)
    members = tl.arange(0, G_PAD)
    mask_k = members < G
    # (G_PAD,) offsets of each member's run for channel group f
    base = ((grp * G + members) * F + f) * E
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        mask = mask_k[:, None] & mask_e[None, :]
        v = tl.load(x_ptr + base[:, None] + offs_e[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(v, axis=0) / G
        dev = tl.where(mask, v - mean[None, :], 0.0)
        var = tl.sum(dev * dev, axis=0) / G
        acc += tl.where(mask_e, tl.sqrt(var + eps), 0.0)
    tl.store(out_ptr + grp * F + f, tl.sum(acc, axis=0) / E)


@triton.jit
def _group_stddev_bwd_kernel(x_ptr, grad_ptr, dx_ptr, G, E, F, eps,
                             G_PAD: tl.constexpr, BLOCK_E: tl.constexpr):
    gf = tl.program_id(0)  # group * F + f
    grp = gf // F
    f = gf % F
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    members = tl.arange(0, G_PAD)
    mask = (members < G)[:, None] & (offs_e < E)[None, :]
    offs = (((grp * G + members) * F + f) * E)[:, None] + offs_e[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(v, axis=0) / G
    dev = tl.where(mask, v - mean[None, :], 0.0)
    std = tl.sqrt(tl.sum(dev * dev, axis=0) / G + eps)
    coef = tl.load(grad_ptr + gf).to(tl.float32) / (E * G)
    dx = coef * dev / std[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def group_stddev_forward(x: torch.Tensor, group_size: int, num_channels: int,
                         eps: float) -> torch.Tensor:
    """(N, C, H, W) -> (N // G, F) float32 (float64 for float64 input)."""
    n, c, h, w = x.shape
    x = x.contiguous()
    groups, e = n // group_size, c // num_channels * h * w
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(groups, num_channels, device=x.device, dtype=out_dtype)
    _group_stddev_fwd_kernel[(groups, num_channels)](
        x, out, group_size, e, num_channels, float(eps),
        G_PAD=triton.next_power_of_2(group_size), BLOCK_E=256)
    return out


def group_stddev_backward(x: torch.Tensor, grad_stats: torch.Tensor, group_size: int,
                          num_channels: int, eps: float) -> torch.Tensor:
    """dL/dx (N, C, H, W) in x's dtype from dL/dstats (N // G, F)."""
    n, c, h, w = x.shape
    x = x.contiguous()
    groups, e = n // group_size, c // num_channels * h * w
    dx = torch.empty_like(x)
    block_e = 256
    _group_stddev_bwd_kernel[(groups * num_channels, triton.cdiv(e, block_e))](
        x, grad_stats.contiguous(), dx, group_size, e, num_channels, float(eps),
        G_PAD=triton.next_power_of_2(group_size), BLOCK_E=block_e)
    return dx
