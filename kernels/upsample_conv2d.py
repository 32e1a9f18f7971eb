"""Triton kernels: nearest-2x upsampling fused into a 3x3 convolution, bias, leaky ReLU and gain,
forward and backward.

The op is ``y = act(conv2d(up2(x), w, b, padding=1)) * gain`` with ``x`` ``(N, C_in, H, W)``,
``y`` ``(N, C_out, 2H, 2W)``, NCHW. By the phase decomposition
(``scalegan.ops.upsample_conv2d.phase_weights``), output pixel ``(2i + a, 2j + b)`` is a 2x2
convolution of the low-resolution input with the folded phase weights ``w4``
``(C_out * 4, C_in, 2, 2)``, channels ordered ``(o, a, b)``:

    z[n, o, 2i + a, 2j + b] = sum_{c, p, q} w4[(o, a, b), c, p, q]
                                            * x[n, c, i + a + p - 1, j + b + q - 1]

(reads outside the image are 0). Every kernel is an implicit GEMM with fp32 accumulation whose
pixel tiles are ``ROWS x BLOCK_W`` low-resolution pixels of one image (``BLOCK_P = ROWS *
BLOCK_W``). The launcher chooses ``BLOCK_W`` from ``W`` and the K step from the dot's input type;
the autotuner chooses the M x N tile, warps and stages. Weights are passed re-laid out per tap,
rows zero-padded to 16 elements.

* forward ``_upsample_conv2d_fwd_kernel``: ``M = C_out``, ``N = pixels``, ``K = C_in x 2 x 2``.
  A program owns one row phase ``a`` and computes both column phases ``b = 0, 1`` from three
  column-shifted input tiles per input row ``p`` (shift -1 feeds ``b = 0``, shift +1 feeds
  ``b = 1``, shift 0 both). The two accumulators are interleaved with ``tl.join`` into output
  row segments of ``2 * BLOCK_W`` contiguous elements, so stores run along the output rows. Bias,
  leaky ReLU, gain and (for the backward) the pre-activation's sign are the epilogue.
* input gradient ``_upsample_conv2d_bwd_input_kernel``: the adjoint is a stride-2 4x4
  convolution of ``g = dL/dz``: input pixel ``(r, c)`` receives output rows ``2r - 1 + dy`` and
  columns ``2c - 1 + dx``, ``dy, dx in 0..3``, each pair one (phase, tap):
  ``dy = 2 (1 - p) + (1 - a)``, ``dx = 2 (1 - q) + (1 - b)``. ``M = C_in``, ``N = pixels``,
  ``K = C_out x 4 x 4``; the four columns of one row come from two contiguous row segments
  (starting at ``2c - 1`` and ``2c + 1``) split into their even and odd elements.
* weight gradient ``_upsample_conv2d_bwd_weight_kernel``: per phase ``(a, b)`` and tap ``(p, q)``
  ``dw4[(o, a, b), c, p, q] = sum_{n, i, j} x[n, c, i + a + p - 1, j + b + q - 1] *
  g[n, o, 2i + a, 2j + b]``: ``M = C_in``, ``N = C_out``, ``K = N x H x W`` pixels. A program
  owns one phase and tap row ``p`` (two accumulators, ``q = 0, 1``, sharing the ``g`` tile), and
  the pixel reduction is split over ``SPLIT`` programs that write fp32 partials; the launcher
  sums them in torch (deterministic: no atomics). The bias gradient ``sum g`` is the same
  programs' by-product.

``g`` is formed as it is loaded: ``dL/dy * gain * (1 if z > 0 else negative_slope)`` from the
sign mask the forward stored. Dots: fp32 inputs use ``input_precision`` "tf32" when
``torch.backends.cudnn.allow_tf32`` else "ieee"; bf16 / fp16 inputs use 16-bit dots. In Triton's
interpreter (CPU tensors) a bf16 ``tl.dot`` is wrong, so bf16 tiles are converted to fp16 there
first: exact for magnitudes in fp16's normal range [2^-14, 65504] (bf16 has 8 significant bits,
fp16 11), within 2^-25 absolute below it (fp16 subnormals); the tests' values stay far below
65504. Offsets run in int64 (``INT64``) when a tensor has
2^31 elements or more. Imports torch and triton only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

# The GEMM kernels: mma.sync / wgmma for 16-bit and TF32 inputs. Their fp32 "ieee" launches
# (torch.backends.cudnn.allow_tf32 off) run on the FMA units by design (no tensor-core fp32 is
# exact), through the plain JITFunction with one fixed config (_FMA_CONFIGS), not the autotuner.
TENSOR_CORE_KERNELS: tuple[str, ...] = (
    "_upsample_conv2d_fwd_kernel",
    "_upsample_conv2d_bwd_input_kernel",
    "_upsample_conv2d_bwd_weight_kernel",
)

_INT32_LIMIT = 2**31
_MAX_GRID_0 = 2**31 - 1
_MAX_GRID_12 = 65535
# the weight gradient splits its pixel reduction until about this many programs run
_WGRAD_TARGET_PROGRAMS = 512

# Tiles the autotuner chooses among (M x N of the GEMMs); the K step (BLOCK_K, or BLOCK_P for the
# weight gradient) is the launcher's, from the dot's input type: see _k_step. maxnreg=255 on the
# 8-warp configs: left to itself ptxas held some 256-thread specialisations to 128 registers
# and spilled (checked by compiling every aot_launches() case for sm_80 and sm_90).
_FWD_CONFIGS = [
    triton.Config({"BLOCK_CO": 64, "BLOCK_P": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_CO": 128, "BLOCK_P": 64}, num_warps=8, num_stages=2, maxnreg=255),
    triton.Config({"BLOCK_CO": 64, "BLOCK_P": 128}, num_warps=8, num_stages=2, maxnreg=255),
]
_BWD_INPUT_CONFIGS = [
    triton.Config({"BLOCK_CI": 64, "BLOCK_P": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_CI": 128, "BLOCK_P": 64}, num_warps=8, num_stages=2, maxnreg=255),
    triton.Config({"BLOCK_CI": 64, "BLOCK_P": 128}, num_warps=8, num_stages=2, maxnreg=255),
]
_BWD_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_CI": 64, "BLOCK_CO": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_CI": 128, "BLOCK_CO": 64}, num_warps=8, num_stages=3, maxnreg=255),
    triton.Config({"BLOCK_CI": 64, "BLOCK_CO": 128}, num_warps=8, num_stages=2, maxnreg=255),
]


# fp32 "ieee" dots run on the FMA units with both operands in registers: smaller tiles, untuned
_FMA_CONFIGS = {
    "_upsample_conv2d_fwd_kernel": triton.Config({"BLOCK_CO": 64, "BLOCK_P": 64}, num_warps=4,
                                                 num_stages=2),
    "_upsample_conv2d_bwd_input_kernel": triton.Config({"BLOCK_CI": 64, "BLOCK_P": 64},
                                                       num_warps=4, num_stages=2),
    "_upsample_conv2d_bwd_weight_kernel": triton.Config({"BLOCK_CI": 64, "BLOCK_CO": 32},
                                                        num_warps=4, num_stages=2),
}


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, FP16_DOT: tl.constexpr):
    """``acc + a @ b`` in fp32; ``FP16_DOT``: through fp16 (the interpreter's bf16 stand-in)."""
    if FP16_DOT:
        a = a.to(tl.float16)
        b = b.to(tl.float16)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _pixel_tile(t, H, W, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """Pixel tile ``t`` of the ``(N, cdiv(H, ROWS), cdiv(W, BLOCK_W))`` tiling (column tiles
    fastest) -> image ``n``, first row ``i0``, first column ``j0``."""
    n_wt = tl.cdiv(W, BLOCK_W)
    n_rt = tl.cdiv(H, ROWS)
    j0 = (t % n_wt) * BLOCK_W
    t = t // n_wt
    i0 = (t % n_rt) * ROWS
    return t // n_rt, i0, j0


@triton.autotune(configs=_FWD_CONFIGS, key=["C_IN", "C_OUT", "H", "W"])
@triton.jit
def _upsample_conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, s_ptr,
    C_IN, C_OUT, H, W, W_STRIDE,
    negative_slope, gain,
    HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, STORE_SIGN: tl.constexpr,
    INT64: tl.constexpr, INPUT_PRECISION: tl.constexpr, FP16_DOT: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(2 * N * cdiv(H, ROWS) * cdiv(W, BLOCK_W), cdiv(C_OUT, BLOCK_CO))``, row phase
    fastest on axis 0. ``x`` (N, C_IN, H, W); ``w`` (a, b, p, q, C_OUT, W_STRIDE >= C_IN);
    ``y`` (N, C_OUT, 2H, 2W); ``s`` (N, C_OUT, 2H, 2W) uint8, ``z > 0``, if ``STORE_SIGN``."""
    tl.static_assert(BLOCK_P >= BLOCK_W, "a pixel tile holds at least one row segment")
    ROWS: tl.constexpr = BLOCK_P // BLOCK_W
    pid = tl.program_id(0)
    a = pid % 2
    n, i0, j0 = _pixel_tile(pid // 2, H, W, ROWS, BLOCK_W)
    offs_co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        n = n.to(tl.int64)
        offs_co = offs_co.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    mask_co = offs_co < C_OUT
    offs_p = tl.arange(0, BLOCK_P)
    i = i0 + offs_p // BLOCK_W  # (BLOCK_P,) low-resolution row and column of each pixel
    j = j0 + offs_p % BLOCK_W
    hw = H * W
    x_img = x_ptr + n * C_IN * hw
    ok_l = (j >= 1) & (j <= W)  # column j - 1 inside the image
    ok_c = j < W
    ok_r = j + 1 < W
    w_plane = C_OUT * W_STRIDE
    acc0 = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float32)  # column phase b = 0
    acc1 = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float32)  # column phase b = 1
    # K = (C_IN block, input row p): p is the fast index so each step holds 3 x tiles, 4 w tiles
    for kk in range(0, 2 * tl.cdiv(C_IN, BLOCK_K)):
        p = kk % 2
        ci = (kk // 2) * BLOCK_K + offs_k
        mask_ci = ci < C_IN
        r = i + a + p - 1
        row_ok = (r >= 0) & (r < H)
        x_row = x_img + ci[:, None] * hw + (r * W + j)[None, :]  # (BLOCK_K, BLOCK_P)
        m_row = mask_ci[:, None] & row_ok[None, :]
        x_l = tl.load(x_row - 1, mask=m_row & ok_l[None, :], other=0.0)
        x_c = tl.load(x_row, mask=m_row & ok_c[None, :], other=0.0)
        x_r = tl.load(x_row + 1, mask=m_row & ok_r[None, :], other=0.0)
        # w tile (b, q) of this (a, p): (BLOCK_CO, BLOCK_K), contiguous along C_IN
        w_tap = w_ptr + (a * 8 + p * 2) * w_plane + offs_co[:, None] * W_STRIDE + ci[None, :]
        m_w = mask_co[:, None] & mask_ci[None, :]
        w00 = tl.load(w_tap, mask=m_w, other=0.0)
        w01 = tl.load(w_tap + w_plane, mask=m_w, other=0.0)
        w10 = tl.load(w_tap + 4 * w_plane, mask=m_w, other=0.0)
        w11 = tl.load(w_tap + 5 * w_plane, mask=m_w, other=0.0)
        acc0 = _mma(w00, x_l, acc0, INPUT_PRECISION, FP16_DOT)  # b = 0 reads columns j - 1, j
        acc0 = _mma(w01, x_c, acc0, INPUT_PRECISION, FP16_DOT)
        acc1 = _mma(w10, x_c, acc1, INPUT_PRECISION, FP16_DOT)  # b = 1 reads columns j, j + 1
        acc1 = _mma(w11, x_r, acc1, INPUT_PRECISION, FP16_DOT)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)
        acc0 += bias[:, None]
        acc1 += bias[:, None]
    # (BLOCK_CO, BLOCK_P, 2) -> (BLOCK_CO, ROWS, 2 * BLOCK_W): element (o, r, 2 jj + b) is
    # output pixel (2 (i0 + r) + a, 2 (j0 + jj) + b), the output rows' own order
    z = tl.reshape(tl.join(acc0, acc1), (BLOCK_CO, ROWS, 2 * BLOCK_W))
    out_row = 2 * (i0 + tl.arange(0, ROWS)) + a
    out_col = 2 * j0 + tl.arange(0, 2 * BLOCK_W)
    offs = (offs_co[:, None, None] * (4 * hw) + (out_row * (2 * W))[None, :, None]
            + out_col[None, None, :])
    mask = (mask_co[:, None, None] & (out_row < 2 * H)[None, :, None]
            & (out_col < 2 * W)[None, None, :])
    img = n * C_OUT * (4 * hw)
    if STORE_SIGN:
        tl.store(s_ptr + img + offs, (z > 0).to(tl.uint8), mask=mask)
    if LRELU:
        z = tl.where(z > 0, z, z * negative_slope)
    z = z * gain
    tl.store(y_ptr + img + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_grad_segment(g_ptr, s_ptr, offs, mask, negative_slope, gain,
                       LRELU: tl.constexpr):
    """``dL/dz`` at ``offs`` in fp32: ``dL/dy * gain``, times ``negative_slope`` where the
    stored sign says ``z <= 0``."""
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if LRELU:
        positive = tl.load(s_ptr + offs, mask=mask, other=0)
        g = tl.where(positive != 0, g, g * negative_slope)
    return g * gain


@triton.autotune(configs=_BWD_INPUT_CONFIGS, key=["C_IN", "C_OUT", "H", "W"])
@triton.jit
def _upsample_conv2d_bwd_input_kernel(
    g_ptr, s_ptr, w_ptr, dx_ptr,
    C_IN, C_OUT, H, W, W_STRIDE,
    negative_slope, gain,
    LRELU: tl.constexpr, INT64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    FP16_DOT: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(N * cdiv(H, ROWS) * cdiv(W, BLOCK_W), cdiv(C_IN, BLOCK_CI))``. ``g`` = dL/dy and
    ``s`` (sign mask, if ``LRELU``) (N, C_OUT, 2H, 2W); ``w`` (dy, dx, C_IN, W_STRIDE >= C_OUT);
    ``dx`` (N, C_IN, H, W)."""
    tl.static_assert(BLOCK_P >= BLOCK_W, "a pixel tile holds at least one row segment")
    ROWS: tl.constexpr = BLOCK_P // BLOCK_W
    n, i0, j0 = _pixel_tile(tl.program_id(0), H, W, ROWS, BLOCK_W)
    offs_ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        n = n.to(tl.int64)
        offs_ci = offs_ci.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    mask_ci = offs_ci < C_IN
    hw = H * W
    rows = i0 + tl.arange(0, ROWS)
    seg = tl.arange(0, 2 * BLOCK_W)
    col_l = 2 * j0 - 1 + seg  # columns 2c - 1, 2c of each pixel c, interleaved
    col_r = 2 * j0 + 1 + seg  # columns 2c + 1, 2c + 2
    ok_l = (col_l >= 0) & (col_l < 2 * W)
    ok_r = col_r < 2 * W
    g_img = n * C_OUT * (4 * hw)
    w_plane = C_IN * W_STRIDE
    acc = tl.zeros((BLOCK_CI, BLOCK_P), dtype=tl.float32)
    # K = (C_OUT block, output row offset dy): 2 g segments and 4 w tiles per step
    for kk in range(0, 4 * tl.cdiv(C_OUT, BLOCK_K)):
        dy = kk % 4
        co = (kk // 4) * BLOCK_K + offs_k
        mask_co = co < C_OUT
        out_row = 2 * rows - 1 + dy
        row_ok = (out_row >= 0) & (out_row < 2 * H)
        base = co[:, None, None] * (4 * hw) + (out_row * (2 * W))[None, :, None]
        m_row = mask_co[:, None, None] & row_ok[None, :, None]
        g_l = _load_grad_segment(g_ptr + g_img, s_ptr + g_img, base + col_l[None, None, :],
                                 m_row & ok_l[None, None, :], negative_slope, gain, LRELU)
        g_r = _load_grad_segment(g_ptr + g_img, s_ptr + g_img, base + col_r[None, None, :],
                                 m_row & ok_r[None, None, :], negative_slope, gain, LRELU)
        # (BLOCK_K, ROWS, 2 BLOCK_W) -> (BLOCK_K, BLOCK_P, 2) -> even / odd columns
        g0, g1 = tl.split(tl.reshape(g_l.to(dx_ptr.dtype.element_ty), (BLOCK_K, BLOCK_P, 2)))
        g2, g3 = tl.split(tl.reshape(g_r.to(dx_ptr.dtype.element_ty), (BLOCK_K, BLOCK_P, 2)))
        w_tap = w_ptr + (dy * 4) * w_plane + offs_ci[:, None] * W_STRIDE + co[None, :]
        m_w = mask_ci[:, None] & mask_co[None, :]
        acc = _mma(tl.load(w_tap, mask=m_w, other=0.0), g0, acc, INPUT_PRECISION, FP16_DOT)
        acc = _mma(tl.load(w_tap + w_plane, mask=m_w, other=0.0), g1, acc,
                   INPUT_PRECISION, FP16_DOT)
        acc = _mma(tl.load(w_tap + 2 * w_plane, mask=m_w, other=0.0), g2, acc,
                   INPUT_PRECISION, FP16_DOT)
        acc = _mma(tl.load(w_tap + 3 * w_plane, mask=m_w, other=0.0), g3, acc,
                   INPUT_PRECISION, FP16_DOT)
    cols = j0 + tl.arange(0, BLOCK_W)
    offs = (offs_ci[:, None, None] * hw + (rows * W)[None, :, None] + cols[None, None, :])
    mask = mask_ci[:, None, None] & (rows < H)[None, :, None] & (cols < W)[None, None, :]
    tl.store(dx_ptr + n * C_IN * hw + offs,
             tl.reshape(acc, (BLOCK_CI, ROWS, BLOCK_W)).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_BWD_WEIGHT_CONFIGS, key=["C_IN", "C_OUT", "H", "W"])
@triton.jit
def _upsample_conv2d_bwd_weight_kernel(
    x_ptr, g_ptr, s_ptr, dw_ptr, db_ptr,
    N, C_IN, C_OUT, H, W, SPLIT,
    negative_slope, gain,
    LRELU: tl.constexpr, HAS_BIAS: tl.constexpr, INT64: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, FP16_DOT: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):
    """Grid ``(8 * cdiv(C_IN, BLOCK_CI) * SPLIT, cdiv(C_OUT, BLOCK_CO))``, (phase, tap row p)
    fastest on axis 0. ``x`` (N, C_IN, H, W); ``g``, ``s`` (N, C_OUT, 2H, 2W); writes fp32
    partials ``dw`` (SPLIT, a, b, p, q, C_IN, C_OUT) and ``db`` (SPLIT, a, b, C_OUT) (from the
    programs of tap row 0 and the first C_IN block), each program over its share of the pixel
    tiles (``ROWS x TILE_W`` pixels, ``TILE_W = min(BLOCK_W, BLOCK_P)``)."""
    TILE_W: tl.constexpr = BLOCK_W if BLOCK_W < BLOCK_P else BLOCK_P
    ROWS: tl.constexpr = BLOCK_P // TILE_W
    pid = tl.program_id(0)
    phase = pid % 4
    a = phase // 2
    b = phase % 2
    p = (pid // 4) % 2
    pid = pid // 8
    n_ci = tl.cdiv(C_IN, BLOCK_CI)
    ci_block = pid % n_ci
    split = pid // n_ci
    offs_ci = ci_block * BLOCK_CI + tl.arange(0, BLOCK_CI)
    offs_co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    if INT64:
        offs_ci = offs_ci.to(tl.int64)
        offs_co = offs_co.to(tl.int64)
    mask_ci = offs_ci < C_IN
    mask_co = offs_co < C_OUT
    hw = H * W
    offs_p = tl.arange(0, BLOCK_P)
    num_tiles = N * tl.cdiv(H, ROWS) * tl.cdiv(W, TILE_W)
    per_split = tl.cdiv(num_tiles, SPLIT)
    acc0 = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)  # tap (p, 0)
    acc1 = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)  # tap (p, 1)
    acc_b = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for t in range(split * per_split, tl.minimum(split * per_split + per_split, num_tiles)):
        n, i0, j0 = _pixel_tile(t, H, W, ROWS, TILE_W)
        if INT64:
            n = n.to(tl.int64)
        i = i0 + offs_p // TILE_W
        j = j0 + offs_p % TILE_W
        inside = (i < H) & (j < W)
        # g of phase (a, b): (BLOCK_P, BLOCK_CO), pixels outside the image read 0
        g_offs = (offs_co[None, :] * (4 * hw) + ((2 * i + a) * (2 * W) + 2 * j + b)[:, None])
        g_img = n * C_OUT * (4 * hw)
        g = _load_grad_segment(g_ptr + g_img, s_ptr + g_img, g_offs,
                               inside[:, None] & mask_co[None, :], negative_slope, gain, LRELU)
        if HAS_BIAS:
            acc_b += tl.sum(g, axis=0)
        g = g.to(x_ptr.dtype.element_ty)
        r = i + a + p - 1  # input row and first column of tap (p, 0); (p, 1) reads c + 1
        c = j + b - 1
        row_ok = (r >= 0) & (r < H)
        x_tap = x_ptr + n * C_IN * hw + offs_ci[:, None] * hw + (r * W + c)[None, :]
        m = mask_ci[:, None] & row_ok[None, :]
        x0 = tl.load(x_tap, mask=m & ((c >= 0) & (c < W))[None, :], other=0.0)
        x1 = tl.load(x_tap + 1, mask=m & (c + 1 < W)[None, :], other=0.0)
        acc0 = _mma(x0, g, acc0, INPUT_PRECISION, FP16_DOT)  # (BLOCK_CI, BLOCK_CO)
        acc1 = _mma(x1, g, acc1, INPUT_PRECISION, FP16_DOT)
    w_plane = C_IN * C_OUT
    dw = (dw_ptr + (split * 16 + phase * 4 + p * 2) * w_plane + offs_ci[:, None] * C_OUT
          + offs_co[None, :])
    m_w = mask_ci[:, None] & mask_co[None, :]
    tl.store(dw, acc0, mask=m_w)
    tl.store(dw + w_plane, acc1, mask=m_w)
    if HAS_BIAS:
        if (ci_block == 0) & (p == 0):
            tl.store(db_ptr + (split * 4 + phase) * C_OUT + offs_co, acc_b, mask=mask_co)


# ------------------------------------------------------------------------------------- launchers

def _dot_options(dtype: torch.dtype, interpreted: bool) -> tuple[str, bool]:
    """``(INPUT_PRECISION, FP16_DOT)`` of the precision policy for inputs of ``dtype``."""
    if dtype == torch.float32:
        tf32 = torch.backends.cudnn.allow_tf32 and not interpreted
        return ("tf32" if tf32 else "ieee"), False
    return "ieee", interpreted and dtype == torch.bfloat16


def _fma(dtype: torch.dtype, precision: str) -> bool:
    """fp32 "ieee" dots: no tensor cores, the FMA units."""
    return dtype == torch.float32 and precision == "ieee"


def _k_step(dtype: torch.dtype, precision: str) -> int:
    """The GEMMs' K step: 32 for 16-bit tensor-core dots, 16 for TF32 (the same 64 bytes a row),
    8 for "ieee" fp32 dots, which run on the FMA units with both operands held in registers."""
    if dtype != torch.float32:
        return 32
    return 16 if precision == "tf32" else 8


def _pad_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` copied contiguous with its last dimension zero-padded to a multiple of 16: the
    kernels' weight rows then start 16-element aligned, so their loads vectorise for any
    channel count (the weights are small next to the activations)."""
    k = w.shape[-1]
    out = w.new_zeros(*w.shape[:-1], triton.cdiv(k, 16) * 16)
    out[..., :k] = w
    return out


def _block_w(w: int) -> int:
    """Pixel tiles are ``ROWS x BLOCK_W``: a row segment of up to 64 columns, at least 4."""
    return min(64, max(4, triton.next_power_of_2(w)))


def _interpreter_config(**blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=4, num_stages=1)


def _check_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"upsample_conv2d kernels take float32, bfloat16 or float16, got {dtype}")
    for t in tensors[1:]:
        if t is not None and t.dtype != dtype:
            raise TypeError(f"upsample_conv2d kernels: mixed dtypes {dtype} and {t.dtype}")
    return dtype


def _needs_int64(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and t.numel() >= _INT32_LIMIT for t in tensors)


def _check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    if grid[0] > _MAX_GRID_0 or any(g > _MAX_GRID_12 for g in grid[1:]):
        raise ValueError(f"upsample_conv2d: launch grid {grid} exceeds CUDA's limits")
    return grid


def _launch(kernel, grid_fn: Callable[[dict], tuple[int, ...]], interpreted: bool, fma: bool,
            interp_config: triton.Config, gpu_kwargs: dict, args: tuple, kwargs: dict) -> None:
    """Under the interpreter one config sized to the problem, straight through ``kernel.fn``
    (autotuning would time every config). On CUDA / meta tensors, with ``gpu_kwargs`` (the
    launcher's own block choices): ``fma`` (fp32 "ieee" dots, on the FMA units rather than
    tensor cores) takes the one register-light config of :data:`_FMA_CONFIGS`, again through
    ``kernel.fn``; the rest the autotuner, with a grid of its chosen config."""
    if interpreted or fma:
        config = interp_config if interpreted else _FMA_CONFIGS[kernel.fn.__name__]
        meta = {**kwargs, **(gpu_kwargs if not interpreted else {}), **config.all_kwargs()}
        kernel.fn[_check_grid(grid_fn(meta))](*args, **meta)
    else:
        kernel[lambda meta: _check_grid(grid_fn(meta))](*args, **kwargs, **gpu_kwargs)


def upsample_conv2d_forward(x: torch.Tensor, w4: torch.Tensor, bias: torch.Tensor | None,
                            lrelu: bool, negative_slope: float, gain: float,
                            sign_out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(z) * gain`` with ``z`` the upsample-conv of ``x`` (N, C_in, H, W) by the phase
    weights ``w4`` (C_out * 4, C_in, 2, 2) ordered (o, a, b) plus ``bias`` (C_out,) or None:
    (N, C_out, 2H, 2W) in ``x``'s dtype (fp32, bf16 or fp16; ``w4`` and ``bias`` the same).
    ``sign_out``: a uint8 (N, C_out, 2H, 2W) tensor that receives ``z > 0``."""
    n, c_in, h, w = x.shape
    c_out = w4.shape[0] // 4
    dtype = _check_dtype(x, w4, bias)
    if 4 * h * w >= _INT32_LIMIT:
        raise ValueError(f"upsample_conv2d: an output plane of {4 * h * w} pixels is too large")
    interpreted = x.device.type == "cpu"
    x = x.contiguous()
    # (o, a, b, i, p, q) -> (a, b, p, q, o, i): tap (a, b, p, q) is a (C_out, C_in) matrix
    w_t = _pad_rows(w4.view(c_out, 2, 2, c_in, 2, 2).permute(1, 2, 4, 5, 0, 3))
    y = torch.empty(n, c_out, 2 * h, 2 * w, device=x.device, dtype=dtype)
    if sign_out is not None and (sign_out.shape != y.shape or sign_out.dtype != torch.uint8
                                 or not sign_out.is_contiguous()):
        raise ValueError("upsample_conv2d: sign_out must be a contiguous uint8 tensor shaped "
                         "like the output")
    precision, fp16_dot = _dot_options(dtype, interpreted)
    block_w = _block_w(w)

    def grid(meta):
        rows = meta["BLOCK_P"] // block_w
        return (2 * n * triton.cdiv(h, rows) * triton.cdiv(w, block_w),
                triton.cdiv(c_out, meta["BLOCK_CO"]))

    interp = _interpreter_config(
        BLOCK_CO=min(64, triton.next_power_of_2(c_out)),
        BLOCK_P=block_w * min(triton.next_power_of_2(h), max(1, 64 // block_w)),
        BLOCK_K=min(32, triton.next_power_of_2(c_in)))
    _launch(_upsample_conv2d_fwd_kernel, grid, interpreted, _fma(dtype, precision), interp,
            dict(BLOCK_K=_k_step(dtype, precision)),
            (x, w_t, bias if bias is not None else w_t, y, sign_out if sign_out is not None else y,
             c_in, c_out, h, w, w_t.shape[-1], float(negative_slope), float(gain)),
            dict(HAS_BIAS=bias is not None, LRELU=bool(lrelu), STORE_SIGN=sign_out is not None,
                 INT64=_needs_int64(x, y), INPUT_PRECISION=precision, FP16_DOT=fp16_dot,
                 BLOCK_W=block_w))
    return y


def upsample_conv2d_backward(grad_y: torch.Tensor, x: torch.Tensor, w4: torch.Tensor,
                             sign: torch.Tensor | None, has_bias: bool, negative_slope: float,
                             gain: float, need_x: bool = True, need_w: bool = True,
                             need_bias: bool = True
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                        torch.Tensor | None]:
    """Gradients of :func:`upsample_conv2d_forward` from ``grad_y`` (N, C_out, 2H, 2W), the
    forward's ``x``, ``w4`` and ``sign`` (its uint8 ``z > 0`` mask when the activation is the
    leaky ReLU, else None): ``grad_x`` (N, C_in, H, W) in ``x``'s dtype, ``grad_w4``
    (C_out * 4, C_in, 2, 2) and ``grad_bias`` (C_out,) in fp32; None for those not asked for."""
    n, c_in, h, w = x.shape
    c_out = w4.shape[0] // 4
    dtype = _check_dtype(x, w4)
    interpreted = x.device.type == "cpu"
    grad_y = grad_y.to(dtype).contiguous()
    x = x.contiguous()
    lrelu = sign is not None
    sign_arg = sign if lrelu else grad_y
    precision, fp16_dot = _dot_options(dtype, interpreted)
    block_w = _block_w(w)
    int64 = _needs_int64(x, grad_y)
    slope, gain = float(negative_slope), float(gain)
    grad_x = grad_w4 = grad_b = None
    if need_x:
        # (o, a, b, i, p, q), flipped so that a' = 1 - a, p' = 1 - p, ... then (p', a') is dy
        # and (q', b') is dx: (dy, dx, i, o)
        w_t = _pad_rows(w4.view(c_out, 2, 2, c_in, 2, 2).flip(1, 2, 4, 5).permute(4, 1, 5, 2, 3, 0)
                        .reshape(4, 4, c_in, c_out))
        grad_x = torch.empty_like(x)

        def grid_x(meta):
            rows = meta["BLOCK_P"] // block_w
            return (n * triton.cdiv(h, rows) * triton.cdiv(w, block_w),
                    triton.cdiv(c_in, meta["BLOCK_CI"]))

        interp = _interpreter_config(
            BLOCK_CI=min(64, triton.next_power_of_2(c_in)),
            BLOCK_P=block_w * min(triton.next_power_of_2(h), max(1, 64 // block_w)),
            BLOCK_K=min(32, triton.next_power_of_2(c_out)))
        _launch(_upsample_conv2d_bwd_input_kernel, grid_x, interpreted, _fma(dtype, precision),
                interp,
                dict(BLOCK_K=_k_step(dtype, precision)),
                (grad_y, sign_arg, w_t, grad_x, c_in, c_out, h, w, w_t.shape[-1], slope, gain),
                dict(LRELU=lrelu, INT64=int64, INPUT_PRECISION=precision, FP16_DOT=fp16_dot,
                     BLOCK_W=block_w))
    want_bias = has_bias and need_bias
    if need_w or want_bias:
        interp = _interpreter_config(
            BLOCK_CI=min(64, triton.next_power_of_2(c_in)),
            BLOCK_CO=min(64, triton.next_power_of_2(c_out)),
            BLOCK_P=block_w * min(triton.next_power_of_2(h), max(1, 64 // block_w)))
        k_step = _k_step(dtype, precision)
        if interpreted:
            split = 2
        else:
            programs = 8 * triton.cdiv(c_in, 64) * triton.cdiv(c_out, 64)
            tile_w = min(block_w, k_step)
            tiles = n * triton.cdiv(h, k_step // tile_w) * triton.cdiv(w, tile_w)
            split = max(1, min(tiles, _WGRAD_TARGET_PROGRAMS // programs))
        dw = torch.empty(split, 4, 4, c_in, c_out, device=x.device, dtype=torch.float32)
        db = torch.empty(split, 4, c_out, device=x.device, dtype=torch.float32)

        def grid_w(meta):
            return (8 * triton.cdiv(c_in, meta["BLOCK_CI"]) * split,
                    triton.cdiv(c_out, meta["BLOCK_CO"]))

        _launch(_upsample_conv2d_bwd_weight_kernel, grid_w, interpreted, _fma(dtype, precision),
                interp,
                dict(BLOCK_P=k_step),
                (x, grad_y, sign_arg, dw, db, n, c_in, c_out, h, w, split, slope, gain),
                dict(LRELU=lrelu, HAS_BIAS=want_bias, INT64=int64, INPUT_PRECISION=precision,
                     FP16_DOT=fp16_dot, BLOCK_W=block_w))
        if need_w:
            # (a, b, p, q, i, o) -> (o, a, b, i, p, q)
            grad_w4 = (dw.sum(0).view(2, 2, 2, 2, c_in, c_out).permute(5, 0, 1, 4, 2, 3)
                       .reshape(c_out * 4, c_in, 2, 2))
        if want_bias:
            grad_b = db.sum(dim=(0, 1))
    return grad_x, grad_w4, grad_b


# --------------------------------------------------------------------------- autograd Function

class UpsampleConv2dFunction(torch.autograd.Function):
    """``apply(x, weight, bias, lrelu, negative_slope, gain, phase_weights, phase_weights_grad)``
    -> ``act(conv2d(up2(x), weight, bias, padding=1)) * gain`` by the kernels.

    ``x`` (N, C_in, H, W), ``weight`` (C_out, C_in, 3, 3), ``bias`` (C_out,) or None.
    ``phase_weights(weight) -> w4`` folds the 3x3 kernel into the (C_out * 4, C_in, 2, 2) phase
    weights and ``phase_weights_grad(grad_w4) -> grad_weight`` is its adjoint (passed in, since
    this package imports only torch and triton). Under autocast the op computes in the autocast
    dtype; the gradients go back in each input's own dtype. The backward is the two backward
    kernels and is ``once_differentiable``: this op sits in the generator, whose loss is never
    differentiated twice (a double backward raises).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lrelu, negative_slope, gain, phase_weights,
                phase_weights_grad):
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else torch.promote_types(x.dtype, weight.dtype))
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        with torch.autocast(device, enabled=False):
            x = x.to(dtype)
            # fold the taps in at least fp32
            w4 = phase_weights(weight.to(torch.promote_types(weight.dtype, torch.float32)))
            w4 = w4.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            sign = None
            if lrelu and any(ctx.needs_input_grad[:3]):
                sign = torch.empty(x.shape[0], w4.shape[0] // 4, 2 * x.shape[2], 2 * x.shape[3],
                                   device=x.device, dtype=torch.uint8)
            y = upsample_conv2d_forward(x, w4, bias, lrelu, negative_slope, gain, sign_out=sign)
        ctx.save_for_backward(x, w4, sign)
        ctx.has_bias, ctx.negative_slope, ctx.gain = bias is not None, negative_slope, gain
        ctx.phase_weights_grad = phase_weights_grad
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, w4, sign = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w4, grad_b = upsample_conv2d_backward(
            grad_y, x, w4, sign, ctx.has_bias, ctx.negative_slope, ctx.gain,
            need_x=need_x, need_w=need_w, need_bias=need_b)
        grad_w = None
        if grad_w4 is not None:
            grad_w = ctx.phase_weights_grad(grad_w4).to(w_dtype)
        return (None if grad_x is None else grad_x.to(x_dtype), grad_w,
                None if grad_b is None else grad_b.to(b_dtype), None, None, None, None, None)


# ----------------------------------------------------------------------------------- AOT compile

def aot_launches() -> list[Callable[[], object]]:
    """Zero-argument calls of the launchers on ``device="meta"`` tensors that together reach
    every specialisation a GPU run can produce: fp32 (tf32 and ieee), bf16, fp16; bias or not;
    leaky ReLU (with the sign mask) or not; ``INT64`` both ways; every ``BLOCK_W`` (4 to 64);
    channel counts and widths divisible by 16 and not."""

    def fwd(shape, dtype, bias, lrelu, tf32=True):
        n, c_in, h, w, c_out = shape

        def launch():
            meta = dict(device="meta", dtype=dtype)
            x = torch.empty(n, c_in, h, w, **meta)
            w4 = torch.empty(4 * c_out, c_in, 2, 2, **meta)
            b = torch.empty(c_out, **meta) if bias else None
            sign = (torch.empty(n, c_out, 2 * h, 2 * w, device="meta", dtype=torch.uint8)
                    if lrelu else None)
            with torch.backends.cudnn.flags(allow_tf32=tf32):
                return upsample_conv2d_forward(x, w4, b, lrelu, 0.2, 1.41, sign_out=sign)
        return launch

    def bwd(shape, dtype, bias, lrelu, tf32=True):
        n, c_in, h, w, c_out = shape

        def launch():
            meta = dict(device="meta", dtype=dtype)
            x = torch.empty(n, c_in, h, w, **meta)
            w4 = torch.empty(4 * c_out, c_in, 2, 2, **meta)
            g = torch.empty(n, c_out, 2 * h, 2 * w, **meta)
            sign = (torch.empty(n, c_out, 2 * h, 2 * w, device="meta", dtype=torch.uint8)
                    if lrelu else None)
            with torch.backends.cudnn.flags(allow_tf32=tf32):
                return upsample_conv2d_backward(g, x, w4, sign, bias, 0.2, 1.41)
        return launch

    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    cases = [  # (N, C_in, H, W, C_out), dtype, bias, lrelu, tf32
        ((4, 64, 8, 8, 64), f32, True, True, True),        # BLOCK_W 8, aligned
        ((4, 64, 8, 8, 64), f32, True, True, False),       # ieee
        ((2, 17, 13, 13, 19), f32, False, False, False),   # BLOCK_W 16, odd sizes
        ((8, 128, 4, 4, 128), bf16, True, True, True),     # BLOCK_W 4
        ((2, 48, 32, 32, 96), bf16, False, False, True),   # BLOCK_W 32
        ((1, 16, 100, 100, 3), bf16, True, False, True),   # BLOCK_W 64, unaligned width
        ((4, 64, 16, 16, 32), f16, True, True, True),
        ((2, 3, 7, 9, 5), f16, False, True, True),
        ((2, 512, 8, 8, 512), bf16, True, True, True),     # 512 weight-gradient programs: SPLIT 1
        ((33, 64, 512, 512, 64), bf16, True, True, True),  # 2^31+ output elements: INT64
        ((33, 64, 512, 512, 64), f32, False, False, True),
    ]
    return ([fwd(*case) for case in cases] + [bwd(*case) for case in cases])
