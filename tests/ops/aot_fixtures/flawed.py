"""Fixture kernel module whose launches each break one AOT check.

* ``_interleaved_matmul_kernel`` writes ``a @ b`` into the even elements of each row of ``y``
  ``(M, 2N)`` (the odd ones are left alone): no two stored elements are adjacent in memory, so
  every store is scalar even when everything is 16-aligned; launched with ``maxnreg=32`` (a
  ``64 x 64`` fp32 accumulator on 4 warps is 32 values per thread on its own) it spills on sm_80,
  and ptxas refuses it on sm_90 (its wgmma needs more registers).
* ``_copy_kernel`` has no ``tl.dot`` but is listed in ``TENSOR_CORE_KERNELS``, and one of its
  launches puts 70000 programs on grid axis 1 (CUDA allows 65535).
* the last ``aot_launches()`` entry launches nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _interleaved_matmul_kernel(a_ptr, b_ptr, y_ptr, M, N, K,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * N + offs_n[None, :],
                    mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    tl.store(y_ptr + offs_m[:, None] * 2 * N + 2 * offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


def interleaved_matmul(a, b, **options):
    m, k = a.shape
    n = b.shape[1]
    y = torch.empty(m, 2 * n, device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(m, 64), triton.cdiv(n, 64))
    _interleaved_matmul_kernel[grid](a, b, y, m, n, k, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32,
                                     **options)
    return y


def copy(x, rows):
    y = torch.empty_like(x)
    _copy_kernel[(triton.cdiv(x.numel(), 64 * rows), rows)](x, y, x.numel(), BLOCK=64)
    return y


def aot_launches():
    a = torch.empty(256, 256, device="meta", dtype=torch.float16)
    x = torch.empty(64 * 70000, device="meta")
    return [lambda: interleaved_matmul(a, a), lambda: interleaved_matmul(a, a, maxnreg=32),
            lambda: copy(x, 1), lambda: copy(x, 70000), lambda: None]


TENSOR_CORE_KERNELS = ("_interleaved_matmul_kernel", "_copy_kernel")
