"""Fixture kernel module with a kernel ``aot_launches()`` forgets: ``_forgotten_kernel``.

``_scale_kernel`` (launched) calls the helper ``_double``, which is covered through it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _double(x):
    return x + x


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, _double(tl.load(x_ptr + offs, mask=mask)), mask=mask)


@triton.jit
def _forgotten_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, 0.0, mask=offs < n)


def double(x: torch.Tensor) -> torch.Tensor:
    """``2 * x`` for a contiguous tensor."""
    y = torch.empty_like(x)
    _scale_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
    return y


def aot_launches():
    return [lambda: double(torch.empty(512, device="meta"))]


TENSOR_CORE_KERNELS: tuple[str, ...] = ()
