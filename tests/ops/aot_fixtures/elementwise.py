"""Fixture kernel module: ``y = alpha * x + beta`` over a flat tensor, in blocks of ``BLOCK``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _affine(x, alpha, beta):
    return x * alpha + beta


@triton.jit
def _affine_kernel(x_ptr, y_ptr, n, alpha, beta, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _affine(x, alpha, beta).to(y_ptr.dtype.element_ty), mask=mask)


def affine(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``alpha * x + beta`` elementwise, any shape, in ``x``'s dtype (computed in fp32)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    block = 1024
    _affine_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), alpha, beta, BLOCK=block)
    return y


def aot_launches():
    """fp32 and bf16, element counts divisible by 16 (4096), not (1000) and 1 (a constexpr)."""
    def call(n, dtype):
        return lambda: affine(torch.empty(n, device="meta", dtype=dtype), 2.0, 1.0)
    return [call(4096, torch.float32), call(1000, torch.float32), call(1, torch.float32),
            call(4096, torch.bfloat16)]


TENSOR_CORE_KERNELS: tuple[str, ...] = ()
