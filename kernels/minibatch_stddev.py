"""Triton kernels: the minibatch-stddev statistic, its input gradient and that gradient's backward.

Layout. ``x`` is a contiguous ``(N, C, H, W)`` tensor; a group is ``G`` consecutive samples and
channel group ``f`` of sample ``n`` is the contiguous run of ``E = C / F * H * W`` elements
starting at ``n * C * H * W + f * E``. Member ``k`` of group ``grp`` therefore starts at
``(grp * G + k) * ROW + f * E`` with ``ROW = C * H * W``.

Work split. Every kernel runs a 1-D grid of ``groups * F * cdiv(E, BLOCK_E)`` programs on axis 0
(no axis near CUDA's 65535 limit of axes 1 and 2, whatever the size); program ``pid`` takes
element block ``pid % NUM_BLOCKS`` of ``(group, f) = divmod(pid // NUM_BLOCKS, F)`` and, for each
of its ``BLOCK_E`` elements, walks the ``G`` members in a runtime loop (any group size, no
register tile of ``G`` rows): the member mean, then the deviations ``d_k = x_k - mean``, both in
fp32, then ``s = sqrt(sum_k d_k^2 / G + eps)``. Offsets are int64 (``x`` may exceed 2^31
elements). Reductions over a (group, f) pair are written as one fp32 partial per program and
summed by torch in a fixed order: deterministic, no atomics.

Math, per (group, f) with ``S = mean_e s_e`` the statistic and ``c = dL/dS / (E * G)``:

* forward: ``S``;
* input gradient: ``dx_k = c * d_k / s``;
* its backward, given ``u_k = dL/d(dx_k)``: ``dL/dx_k = c / s * ((u_k - mean_k u) - d_k * (sum_j
  u_j d_j) / (G s^2))`` and ``dL/d(dL/dS) = sum_e (sum_k u_k d_k) / s / (E * G)``.

Imports torch and triton only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

# element blocks the launchers choose from, largest first: they take the largest that still gives
# TARGET_PROGRAMS programs (fewer partials and longer contiguous runs per program)
BLOCKS_E = (1024, 512, 256, 128)
# about 8 programs per SM of a 132-SM GPU: enough to fill it before blocks get larger
TARGET_PROGRAMS = 1024
MAX_GRID_0 = 2**31 - 1

TENSOR_CORE_KERNELS: tuple[str, ...] = ()


@triton.jit
def _member_stats(x_ptr, pid, G, F, E, ROW, NUM_BLOCKS, eps, BLOCK_E: tl.constexpr):
    """This program's int64 offsets of member 0's elements, their mask, and per element the
    member mean and ``s`` (fp32, ``(BLOCK_E,)``)."""
    pid = pid.to(tl.int64)
    gf = pid // NUM_BLOCKS
    grp = gf // F
    f = gf % F
    offs_e = (pid % NUM_BLOCKS) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = offs_e < E
    offs = grp * G * ROW + f * E + offs_e
    total = tl.zeros((BLOCK_E,), dtype=tl.float32)
    o = offs
    for _ in range(G):
        total += tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32)
        o += ROW
    mean = total / G
    ssq = tl.zeros((BLOCK_E,), dtype=tl.float32)
    o = offs
    for _ in range(G):
        d = tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32) - mean
        ssq += d * d
        o += ROW
    return offs, mask, mean, tl.sqrt(ssq / G + eps)


@triton.jit
def _group_stddev_fwd_kernel(x_ptr, partial_ptr, G, F, E, ROW, NUM_BLOCKS, eps,
                             BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    _, mask, _, s = _member_stats(x_ptr, pid, G, F, E, ROW, NUM_BLOCKS, eps, BLOCK_E)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, s, 0.0), axis=0))


@triton.jit
def _group_stddev_bwd_kernel(x_ptr, grad_ptr, dx_ptr, G, F, E, ROW, NUM_BLOCKS, eps,
                             BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    offs, mask, mean, s = _member_stats(x_ptr, pid, G, F, E, ROW, NUM_BLOCKS, eps, BLOCK_E)
    scale = tl.load(grad_ptr + pid // NUM_BLOCKS).to(tl.float32) / E / G / s  # c / s
    for _ in range(G):
        d = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean
        tl.store(dx_ptr + offs, (d * scale).to(dx_ptr.dtype.element_ty), mask=mask)
        offs += ROW


@triton.jit
def _group_stddev_bwd_bwd_kernel(x_ptr, grad_ptr, u_ptr, gx_ptr, partial_ptr, G, F, E, ROW,
                                 NUM_BLOCKS, eps, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    offs, mask, mean, s = _member_stats(x_ptr, pid, G, F, E, ROW, NUM_BLOCKS, eps, BLOCK_E)
    u_total = tl.zeros((BLOCK_E,), dtype=tl.float32)
    ud = tl.zeros((BLOCK_E,), dtype=tl.float32)  # sum_k u_k d_k
    o = offs
    for _ in range(G):
        u = tl.load(u_ptr + o, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32) - mean
        u_total += u
        ud += u * d
        o += ROW
    u_mean = u_total / G
    inv_s = 1.0 / s
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, ud * inv_s, 0.0), axis=0))
    scale = tl.load(grad_ptr + pid // NUM_BLOCKS).to(tl.float32) / E / G * inv_s  # c / s
    d_coef = ud * inv_s * inv_s / G
    o = offs
    for _ in range(G):
        u = tl.load(u_ptr + o, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(x_ptr + o, mask=mask, other=0.0).to(tl.float32) - mean
        gx = scale * ((u - u_mean) - d * d_coef)
        tl.store(gx_ptr + o, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        o += ROW


def _layout(x: torch.Tensor, group_size: int, num_channels: int) -> tuple[int, int, int, int]:
    """``(groups * F, E, ROW, BLOCK_E)`` for ``x`` ``(N, C, H, W)``."""
    n, c, h, w = x.shape
    pairs, e, row = n // group_size * num_channels, c // num_channels * h * w, c * h * w
    return pairs, e, row, block_e(pairs, e)


def block_e(pairs: int, e: int) -> int:
    """Elements per program: the largest of :data:`BLOCKS_E` that still gives ``pairs`` (group,
    channel group) pairs of ``e`` elements at least :data:`TARGET_PROGRAMS` programs (or the
    smallest block)."""
    for block in BLOCKS_E:
        if pairs * triton.cdiv(e, block) >= TARGET_PROGRAMS:
            return block
    return BLOCKS_E[-1]


def _grid(pairs: int, e: int, block: int) -> tuple[int]:
    programs = pairs * triton.cdiv(e, block)
    if programs > MAX_GRID_0:
        raise ValueError(f"minibatch_stddev: {programs} programs exceed CUDA's grid limit")
    return (programs,)


def group_stddev_forward(x: torch.Tensor, group_size: int, num_channels: int,
                         eps: float) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` -> the statistic ``(N // G, F)`` fp32."""
    x = x.contiguous()
    pairs, e, row, block = _layout(x, group_size, num_channels)
    grid = _grid(pairs, e, block)
    partials = torch.empty(grid[0], device=x.device, dtype=torch.float32)
    _group_stddev_fwd_kernel[grid](x, partials, group_size, num_channels, e, row,
                                   grid[0] // pairs, float(eps), BLOCK_E=block)
    return (partials.view(pairs, -1).sum(dim=1) / e).view(-1, num_channels)


def group_stddev_backward(x: torch.Tensor, grad_stats: torch.Tensor, group_size: int,
                          num_channels: int, eps: float) -> torch.Tensor:
    """dL/dx ``(N, C, H, W)`` in x's dtype from dL/dstats ``(N // G, F)``."""
    x = x.contiguous()
    pairs, e, row, block = _layout(x, group_size, num_channels)
    grid = _grid(pairs, e, block)
    dx = torch.empty_like(x)
    _group_stddev_bwd_kernel[grid](x, grad_stats.float().contiguous(), dx, group_size,
                                   num_channels, e, row, grid[0] // pairs, float(eps),
                                   BLOCK_E=block)
    return dx


def group_stddev_backward_backward(x: torch.Tensor, grad_stats: torch.Tensor,
                                   grad_dx: torch.Tensor, group_size: int, num_channels: int,
                                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of :func:`group_stddev_backward`: from ``grad_dx`` = dL/d(dx) ``(N, C, H,
    W)``, dL/dx (x's dtype) and dL/d(grad_stats) ``(N // G, F)`` fp32."""
    x = x.contiguous()
    pairs, e, row, block = _layout(x, group_size, num_channels)
    grid = _grid(pairs, e, block)
    gx = torch.empty_like(x)
    partials = torch.empty(grid[0], device=x.device, dtype=torch.float32)
    _group_stddev_bwd_bwd_kernel[grid](
        x, grad_stats.float().contiguous(), grad_dx.to(x.dtype).contiguous(), gx, partials,
        group_size, num_channels, e, row, grid[0] // pairs, float(eps), BLOCK_E=block)
    ggrad = (partials.view(pairs, -1).sum(dim=1) / (e * group_size)).view(-1, num_channels)
    return gx, ggrad


def aot_launches() -> list[Callable[[], object]]:
    """Launcher calls on meta tensors reaching every specialisation: each dtype with each block
    size (one ``(4, 1, 1, E)`` input per block, ``E`` picked so that :func:`block_e` chooses it),
    plus odd sizes (no int divisible by 16), a group of one (``G = 1`` specialised to a
    constant), an input of more than 2^31 elements and one whose samples are (``E`` and ``ROW``
    passed as int64)."""
    shapes = [((4, 1, 1, TARGET_PROGRAMS * b), 4, 1) for b in BLOCKS_E]  # G = 4, F = 1
    shapes += [((13, 21, 3, 3), 13, 7), ((1, 17, 4, 4), 1, 1), ((32, 512, 4, 4), 4, 2),
               ((68, 512, 256, 256), 4, 1), ((4, 1, 1, 2**31 + 16), 4, 1)]
    calls = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape, g, f in shapes:
            def forward(shape=shape, g=g, f=f, dtype=dtype):
                return group_stddev_forward(torch.empty(shape, device="meta", dtype=dtype),
                                            g, f, 1e-8)

            def backward(shape=shape, g=g, f=f, dtype=dtype):
                x = torch.empty(shape, device="meta", dtype=dtype)
                grad = torch.empty(shape[0] // g, f, device="meta")
                return (group_stddev_backward(x, grad, g, f, 1e-8),
                        group_stddev_backward_backward(x, grad, torch.empty_like(x), g, f, 1e-8))
            calls += [forward, backward]
    return calls
