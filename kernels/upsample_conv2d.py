"""Triton kernel: nearest-2x upsampling fused into a 3x3 convolution, bias, leaky ReLU and gain.

Each program computes one output phase ``(a, b)`` (output pixels ``(2i + a, 2j + b)``) for a
block of low-resolution pixels ``(n, i, j)`` and a block of output channels, as an implicit GEMM:
four 2x2 taps of the low-resolution input times the phase's folded weights
(``scalegan.ops.upsample_conv2d.phase_weights``), accumulated in fp32. The upsampled input is
never formed. Imports torch and triton only.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _upsample_conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C_IN, H, W, C_OUT,
    negative_slope, gain,
    HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_co = tl.program_id(1)
    phase = tl.program_id(2)
    a = phase // 2
    b = phase % 2
    hw = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # flattened (n, i, j)
    mask_p = offs_p < N * hw
    n = offs_p // hw
    i = (offs_p % hw) // W
    j = offs_p % W
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_OUT
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for ci0 in range(0, C_IN, BLOCK_CI):
        offs_ci = ci0 + tl.arange(0, BLOCK_CI)
        mask_ci = offs_ci < C_IN
        for p in tl.static_range(2):
            for q in tl.static_range(2):
                r = i + a + p - 1  # input row / column read by tap (p, q) of this phase
                c = j + b + q - 1
                valid = mask_p & (r >= 0) & (r < H) & (c >= 0) & (c < W)
                x_ptrs = x_ptr + (n * C_IN * hw + r * W + c)[:, None] + offs_ci[None, :] * hw
                x_tile = tl.load(x_ptrs, mask=valid[:, None] & mask_ci[None, :], other=0.0)
                # weights laid out (phase, p, q, C_IN, C_OUT): contiguous along C_OUT
                w_ptrs = (w_ptr + ((phase * 4 + p * 2 + q) * C_IN + offs_ci[:, None]) * C_OUT
                          + offs_co[None, :])
                w_tile = tl.load(w_ptrs, mask=mask_ci[:, None] & mask_co[None, :], other=0.0)
                if DOT_FP32:
                    x_tile = x_tile.to(tl.float32)
                    w_tile = w_tile.to(tl.float32)
                acc += tl.dot(x_tile, w_tile)  # (BLOCK_P, BLOCK_CO)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[None, :]
    if LRELU:
        acc = tl.where(acc > 0, acc, acc * negative_slope)
    acc = acc * gain
    y_ptrs = (y_ptr + (n * C_OUT * 4 * hw + (2 * i + a) * 2 * W + 2 * j + b)[:, None]
              + offs_co[None, :] * 4 * hw)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_co[None, :])


def upsample_conv2d_forward(x: torch.Tensor, w4: torch.Tensor, bias: torch.Tensor | None,
                            lrelu: bool, negative_slope: float, gain: float) -> torch.Tensor:
    """x (N, C_in, H, W), phase weights w4 (C_out * 4, C_in, 2, 2) ordered (o, a, b), bias
    (C_out,) or None -> (N, C_out, 2H, 2W) in x's dtype."""
    n, c_in, h, w = x.shape
    c_out = w4.shape[0] // 4
    x = x.contiguous()
    w_t = w4.view(c_out, 4, c_in, 2, 2).permute(1, 3, 4, 2, 0).contiguous()  # (4, 2, 2, Ci, Co)
    y = torch.empty(n, c_out, 2 * h, 2 * w, device=x.device, dtype=x.dtype)
    block_p, block_co, block_ci = 32, 32, 16
    grid = (triton.cdiv(n * h * w, block_p), triton.cdiv(c_out, block_co), 4)
    # bf16 tl.dot is wrong in Triton's interpreter; fp32 inputs stay fp32 everywhere
    dot_fp32 = x.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    _upsample_conv2d_fwd_kernel[grid](
        x, w_t, bias if bias is not None else w_t, y,
        n, c_in, h, w, c_out, float(negative_slope), float(gain),
        HAS_BIAS=bias is not None, LRELU=lrelu, DOT_FP32=dot_fp32,
        BLOCK_P=block_p, BLOCK_CO=block_co, BLOCK_CI=block_ci,
    )
    return y
