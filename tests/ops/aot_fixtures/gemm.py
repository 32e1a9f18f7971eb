"""Fixture kernel module: an autotuned GEMM with an optional bias, ``y = a @ b (+ bias)``.

``a`` ``(M, K)``, ``b`` ``(K, N)``, ``bias`` ``(N,)``, ``y`` ``(M, N)``, all row-major with the
given row strides; each program computes one ``(BLOCK_M, BLOCK_N)`` tile of ``y`` in fp32, looping
over ``K`` in steps of ``BLOCK_K`` (masked at the edges). ``triton.autotune`` picks one of two tile
configs on a GPU; on CPU tensors (Triton's interpreter) the launcher runs the first config directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=2),
]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K"])
@triton.jit
def _matmul_kernel(a_ptr, b_ptr, bias_ptr, y_ptr, M, N, K, stride_am, stride_bk, stride_ym,
                   HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :],
                    mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc += tl.dot(a, b, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a`` ``(M, K)`` @ ``b`` ``(K, N)`` (+ ``bias`` ``(N,)``) -> ``(M, N)`` in ``a``'s dtype;
    fp32 inputs multiply in TF32 when ``torch.backends.cuda.matmul.allow_tf32``, else in fp32."""
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    m, k = a.shape
    n = b.shape[1]
    a, b = a.contiguous(), b.contiguous()
    y = torch.empty(m, n, device=a.device, dtype=a.dtype)
    args = (a, b, bias if bias is not None else y, y, m, n, k, k, n, n)
    if a.device.type == "cpu":
        cfg = CONFIGS[0]
        grid = (triton.cdiv(m, cfg.kwargs["BLOCK_M"]), triton.cdiv(n, cfg.kwargs["BLOCK_N"]))
        _matmul_kernel.fn[grid](*args, HAS_BIAS=bias is not None,
                              INPUT_PRECISION=precision, **cfg.all_kwargs())
    else:
        def grid(meta):
            return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])
        _matmul_kernel[grid](*args, HAS_BIAS=bias is not None, INPUT_PRECISION=precision)
    return y


def aot_launches():
    """fp16 GEMMs with bias at sizes divisible by 16 (256) and not (100); fp32 GEMMs without
    bias, with TF32 on and off."""
    def call(size, with_bias, dtype=torch.float16, tf32=False):
        def launch():
            a = torch.empty(size, size, device="meta", dtype=dtype)
            bias = torch.empty(size, device="meta", dtype=dtype) if with_bias else None
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                return matmul(a, a, bias)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        return launch
    return [call(256, True), call(100, True), call(256, False, torch.float32, tf32=False),
            call(256, False, torch.float32, tf32=True)]


TENSOR_CORE_KERNELS = ("_matmul_kernel",)
