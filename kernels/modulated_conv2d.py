"""Triton kernel of StyleGAN2's modulated convolution: one shared-weight "scaled convolution",
forward, backward and double backward.

Design. Modulation and demodulation only scale channels: with ``w''_noc = W_oc * s_nc * d_no``,
``y_n = d_n * conv(s_n * x_n, W)`` (see ``scalegan.ops.modulated_conv2d``). So the op is ONE
implicit-GEMM convolution with the shared weight ``W`` (no per-sample weights), the style ``s``
applied to each input tile as it is loaded and the demodulation ``d`` to the fp32 accumulator
before the store (no ``s * x`` temporary in memory). ``d`` itself is a tiny ``(N, C_out)``
matmul done in torch (``demodulation()``), so autograd differentiates it.

The kernel ``_scaled_conv2d_kernel`` computes, NCHW, for ``x`` ``(N, C_in, H, W)``,
``W`` ``(C_out, C_in, k, k)``, ``in_scale`` ``(N, C_in)``, ``out_scale`` ``(N, C_out)`` (either
scale may be absent, i.e. 1):

    out[n, o, r, c] = out_scale[n, o] * sum_{i, ky, kx} W[o, i, ky, kx] * in_scale[n, i]
                                        * X[n, i, r * S + ky - P, c * S + kx - P]

with stride ``S`` (``STRIDE``) and padding ``P`` (reads outside the image are 0); ``X`` is ``x``
when ``UP == 1`` and, when ``UP == 2``, ``x`` with zeros inserted between its pixels (``X[2i] =
x[i]``, ``X[2i + 1] = 0``, ``2H - 1`` rows). ``UP=2, P=k-1`` is the stride-2 transposed
convolution of StyleGAN2's upsampling layer (``2H + k - 2`` rows), which the op follows by the
``[1, 3, 3, 1]`` blur (gain 4) in torch (``scalegan.ops.upfirdn2d``), exactly the ref's numbers.
The zero insertion is implicit: for ``UP == 2`` a program owns one output phase ``(a, b)``
(pixels ``(2i + a, 2j + b)``) and loops only over the taps that meet real pixels there (``a + ky
- P`` and ``b + kx - P`` even), reading ``x[i + (a + ky - P) / 2, j + (b + kx - P) / 2]``: the
4-phase sub-pixel decomposition, each phase an ordinary convolution with a sub-kernel (for k=3:
2x2, 2x1, 1x2, 1x1 taps), so no upsampled tensor exists and no inserted zero is multiplied. The
same kernel in its three modes (``STRIDE, UP`` = ``1, 1``, ``2, 1``, ``1, 2``) is closed under
taking adjoints, which the backward below uses. A phase's stores are stride-2 along the row
(scalar stores; the ``up=2`` outputs, ``2H + k - 2`` wide, are odd-sized anyway).

GEMM layout: ``M = C_out`` (``BLOCK_CO``), ``N`` = output pixels of one image (of one phase for
``UP == 2``), flattened row-major (``BLOCK_P`` consecutive pixels, so with ``UP == 1`` every
output channel's store is one contiguous run), ``K = taps * C_in`` (``k * k`` taps, or a phase's
own), the loop over (tap, ``BLOCK_K`` input channels). The weight is passed re-laid out as
``(k, k, C_out, C_in)`` with rows zero-padded to 16 elements (aligned, vectorised loads). fp32
accumulation; fp32 inputs use TF32 dots when ``torch.backends.cudnn.allow_tf32``
(else "ieee", one fixed register-light config on the FMA units), bf16 / fp16 inputs 16-bit dots:
the scaled input tile ``x * s`` is rounded to the input dtype before its dot. Under Triton's
interpreter (CPU tensors) a bf16 ``tl.dot`` is wrong, so there 16-bit tiles are widened to fp32
(exactly) and dotted in fp32: the same products and fp32 sums as a tensor-core dot. float64 is
accepted under the interpreter only (for ``gradcheck``; the op never sends float64 to the
kernels). Offsets run in int64 (``INT64``) when a tensor has 2^31 elements or more.

Backward (:class:`ScaledConv2dFunction`), written with differentiable calls only (the Function
again, plus torch ops), so autograd takes it to the second order (R1, path length):

* ``dL/dx`` and ``dL/din_scale``: with ``g = dL/dy`` and the adjoint convolution
  ``A = conv^T(out_scale * g, W)``, ``dL/dx = in_scale * A`` and ``dL/din_scale = sum_pixels
  x * A``. ``conv^T`` of mode ``(S, U, P)`` is the scaled convolution of mode ``(U, S, k - 1 -
  P)`` with ``W`` transposed and flipped (``(C_in, C_out, k, k)``) and ``out_scale`` as its input
  scale: the Function itself.
* ``dL/dout_scale = sum_pixels g * y / out_scale`` from the saved output (``out_scale`` must be
  nonzero; the op's demodulation ``d = rsqrt(... + eps)`` is positive).
* ``dL/dW``: the weight gradient of the equivalent torch convolution of ``in_scale * x`` and
  ``out_scale * g`` by ``aten.convolution_backward`` (cuDNN / oneDNN). Torch ops because autograd
  knows their double backward; a Triton weight-gradient kernel would need second-order rules of
  its own. This forms the two scaled temporaries in the backward.

Imports torch and triton only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

# the GEMM kernel: mma.sync / wgmma for 16-bit and TF32 inputs; its fp32 "ieee" launches run on
# the FMA units by design, with the one fixed config _FMA_CONFIG
TENSOR_CORE_KERNELS: tuple[str, ...] = ("_scaled_conv2d_kernel",)

_INT32_LIMIT = 2**31
_MAX_GRID_0 = 2**31 - 1
_MAX_GRID_1 = 65535

_CONFIGS = [
    triton.Config({"BLOCK_CO": 64, "BLOCK_P": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_CO": 128, "BLOCK_P": 64}, num_warps=8, num_stages=2, maxnreg=255),
    triton.Config({"BLOCK_CO": 64, "BLOCK_P": 128}, num_warps=8, num_stages=2, maxnreg=255),
]
# 64 x 32: half the FMA tile's accumulators (64 x 64 spilled on sm_80 in a 1x1 specialisation)
_FMA_CONFIG = triton.Config({"BLOCK_CO": 64, "BLOCK_P": 32}, num_warps=4, num_stages=2)


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """``acc + a @ b``; ``WIDEN``: operands widened to fp32 first (the interpreter's stand-in
    for a 16-bit dot: exact products, fp32 sums)."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.autotune(configs=_CONFIGS, key=["C_IN", "C_OUT", "H", "W", "H_OUT", "W_OUT"])
@triton.jit
def _scaled_conv2d_kernel(
    x_ptr, w_ptr, is_ptr, os_ptr, y_ptr,
    C_IN, C_OUT, H, W, H_OUT, W_OUT, HW_OUT, W_STRIDE, PAD,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, UP: tl.constexpr,
    HAS_IN_SCALE: tl.constexpr, HAS_OUT_SCALE: tl.constexpr,
    INT64: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(N * cdiv(HW_OUT, BLOCK_P), cdiv(C_OUT, BLOCK_CO))``, pixel tiles fastest.
    ``x`` (N, C_IN, H, W); ``w`` (KSIZE, KSIZE, C_OUT, W_STRIDE >= C_IN); ``is`` (N, C_IN) and
    ``os`` (N, C_OUT) in the accumulator's dtype; ``y`` (N, C_OUT, H_OUT, W_OUT),
    ``HW_OUT = H_OUT * W_OUT``. See the module docstring for the formula."""
    pid = tl.program_id(0)
    if UP == 2:
        # output phase (a, b): pixels (2i + a, 2j + b), an (ROWS_P, COLS_P) grid
        phase = pid % 4
        pid = pid // 4
        a = phase // 2
        b = phase % 2
        rows_p = (H_OUT - a + 1) // 2
        cols_p = (W_OUT - b + 1) // 2
        n_pt = tl.cdiv(((H_OUT + 1) // 2) * ((W_OUT + 1) // 2), BLOCK_P)  # phase (0, 0)'s
    else:
        n_pt = tl.cdiv(HW_OUT, BLOCK_P)
    n = pid // n_pt
    offs_p = (pid % n_pt) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        n = n.to(tl.int64)
        offs_co = offs_co.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    mask_co = offs_co < C_OUT
    if UP == 2:
        mask_p = offs_p < rows_p * cols_p
        row = offs_p // cols_p  # phase-grid coordinates
        col = offs_p % cols_p
        # X = x with zeros inserted: tap (ky, kx) reads a real pixel only where
        # a + ky - PAD and b + kx - PAD are even, so a phase loops over those taps alone
        ky0 = (PAD + a) % 2
        kx0 = (PAD + b) % 2
        ntx = (KSIZE - kx0 + 1) // 2
        n_taps = ((KSIZE - ky0 + 1) // 2) * ntx
    else:
        mask_p = offs_p < HW_OUT
        row = offs_p // W_OUT
        col = offs_p % W_OUT
        n_taps = KSIZE * KSIZE
    hw = H * W
    x_img = x_ptr + n * C_IN * hw
    if ACC_FP64:
        acc = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float32)
    n_cb = tl.cdiv(C_IN, BLOCK_K)
    w_plane = C_OUT * W_STRIDE
    for kk in range(0, n_taps * n_cb):
        t = kk // n_cb
        ci = (kk % n_cb) * BLOCK_K + offs_k
        mask_ci = ci < C_IN
        if UP == 2:
            ky = ky0 + 2 * (t // ntx)
            kx = kx0 + 2 * (t % ntx)
            # X[2i + a + ky - PAD] = x[i + (a + ky - PAD) / 2], the division exact (even)
            u = row + (a + ky - PAD) // 2
            v = col + (b + kx - PAD) // 2
        else:
            ky = t // KSIZE
            kx = t % KSIZE
            u = row * STRIDE + ky - PAD
            v = col * STRIDE + kx - PAD
        ok = (u >= 0) & (v >= 0) & (u < H) & (v < W) & mask_p
        xt = tl.load(x_img + ci[:, None] * hw + (u * W + v)[None, :],
                     mask=mask_ci[:, None] & ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_P)
        if HAS_IN_SCALE:
            s = tl.load(is_ptr + n * C_IN + ci, mask=mask_ci, other=0.0)
            xt = (xt.to(s.dtype) * s[:, None]).to(x_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + (ky * KSIZE + kx) * w_plane + offs_co[:, None] * W_STRIDE
                     + ci[None, :], mask=mask_co[:, None] & mask_ci[None, :],
                     other=0.0)  # (BLOCK_CO, BLOCK_K)
        acc = _dot(wt, xt, acc, INPUT_PRECISION, WIDEN)
    if HAS_OUT_SCALE:
        d = tl.load(os_ptr + n * C_OUT + offs_co, mask=mask_co, other=0.0)
        acc = acc * d[:, None].to(acc.dtype)
    if UP == 2:
        pix = (2 * row + a) * W_OUT + 2 * col + b
    else:
        pix = offs_p  # consecutive: each channel's store is one contiguous run
    offs = n * C_OUT * HW_OUT + offs_co[:, None] * HW_OUT + pix[None, :]
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty),
             mask=mask_co[:, None] & mask_p[None, :])


# ------------------------------------------------------------------------------------- launcher

def _dot_policy(dtype: torch.dtype, interpreted: bool) -> tuple[str, bool, int]:
    """``(INPUT_PRECISION, WIDEN, BLOCK_K)``: TF32 (K step 16) or "ieee" (8, FMA units) for
    fp32 by torch's flag, 16-bit dots with a K step of 32, float64 "ieee"."""
    if dtype == torch.float32:
        tf32 = torch.backends.cudnn.allow_tf32 and not interpreted
        return ("tf32", False, 16) if tf32 else ("ieee", False, 8)
    if dtype == torch.float64:
        return "ieee", False, 16
    return "ieee", interpreted, 32


def _check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    if grid[0] > _MAX_GRID_0 or grid[1] > _MAX_GRID_1:
        raise ValueError(f"modulated_conv2d: launch grid {grid} exceeds CUDA's limits")
    return grid


def _out_size(h: int, k: int, stride: int, up: int, padding: int) -> int:
    """Rows of the scaled convolution's output for ``h`` input rows."""
    rows = 2 * h - 1 if up == 2 else h
    return (rows + 2 * padding - k) // stride + 1


def scaled_conv2d_forward(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None,
                          out_scale: torch.Tensor | None, stride: int = 1, up: int = 1,
                          padding: int = 0,
                          out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The scaled convolution (module docstring) of ``x`` (N, C_in, H, W) by ``weight``
    (C_out, C_in, k, k), same dtype (fp32, bf16, fp16; float64 under the interpreter only),
    ``in_scale`` (N, C_in) / ``out_scale`` (N, C_out) or None -> (N, C_out, H_out, W_out) in
    ``x``'s dtype; ``out_size`` defaults to the convolution's own size."""
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    dtype = x.dtype
    interpreted = x.device.type == "cpu"
    allowed = (torch.float32, torch.bfloat16, torch.float16) + ((torch.float64,) if interpreted
                                                                else ())
    if dtype not in allowed or weight.dtype != dtype:
        raise TypeError(f"modulated_conv2d kernel takes x and weight of one dtype among "
                        f"{allowed}, got {dtype} and {weight.dtype}")
    if (stride, up) not in ((1, 1), (2, 1), (1, 2)):
        raise ValueError(f"modulated_conv2d kernel: stride={stride}, up={up} is not a mode")
    h_out, w_out = out_size or (_out_size(h, k, stride, up, padding),
                                _out_size(w, k, stride, up, padding))
    if max(h * w, h_out * w_out) >= _INT32_LIMIT:
        raise ValueError(f"modulated_conv2d kernel: a plane of {max(h * w, h_out * w_out)} "
                         f"pixels is too large (pixel offsets are int32)")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.contiguous()
    # (o, i, ky, kx) -> (ky, kx, o, i), rows padded to 16 elements
    w_t = weight.new_zeros(k, k, c_out, triton.cdiv(c_in, 16) * 16)
    w_t[..., :c_in] = weight.permute(2, 3, 0, 1)
    s_in = None if in_scale is None else in_scale.to(acc).contiguous()
    s_out = None if out_scale is None else out_scale.to(acc).contiguous()
    y = torch.empty(n, c_out, h_out, w_out, device=x.device, dtype=dtype)
    precision, widen, block_k = _dot_policy(dtype, interpreted)
    hw_out = h_out * w_out

    # pixels per program tile: a whole plane, or (up=2) its largest output phase, 4 per image
    tiled, phases = (hw_out, 1) if up == 1 else (-(-h_out // 2) * -(-w_out // 2), 4)

    def grid(meta):
        return _check_grid((n * phases * triton.cdiv(tiled, meta["BLOCK_P"]),
                            triton.cdiv(c_out, meta["BLOCK_CO"])))

    args = (x, w_t, w_t if s_in is None else s_in, w_t if s_out is None else s_out, y,
            c_in, c_out, h, w, h_out, w_out, hw_out, w_t.shape[-1], padding)
    kwargs = dict(KSIZE=k, STRIDE=stride, UP=up, HAS_IN_SCALE=s_in is not None,
                  HAS_OUT_SCALE=s_out is not None,
                  INT64=max(x.numel(), y.numel()) >= _INT32_LIMIT, INPUT_PRECISION=precision,
                  WIDEN=widen, ACC_FP64=acc == torch.float64)
    kernel = _scaled_conv2d_kernel
    if interpreted:
        # one config sized to the problem (autotuning would time every config)
        meta = dict(BLOCK_CO=min(64, triton.next_power_of_2(c_out)),
                    BLOCK_P=min(256, triton.next_power_of_2(tiled)),
                    BLOCK_K=min(64, triton.next_power_of_2(c_in)), num_warps=4, num_stages=1)
        kernel.fn[grid({**kwargs, **meta})](*args, **kwargs, **meta)
    elif precision == "ieee" and dtype == torch.float32:
        meta = {**_FMA_CONFIG.all_kwargs(), "BLOCK_K": block_k}
        kernel.fn[grid(meta)](*args, **kwargs, **meta)
    else:
        kernel[grid](*args, **kwargs, BLOCK_K=block_k)
    return y


def _weight_grad(gz: torch.Tensor, xs: torch.Tensor, weight: torch.Tensor, stride: int, up: int,
                 padding: int) -> torch.Tensor:
    """``dL/dW`` of the scaled convolution from ``gz = out_scale * dL/dy`` and ``xs = in_scale *
    x``: the weight gradient of the equivalent torch convolution (differentiable)."""
    k = weight.shape[-1]
    mask = [False, True, False]
    if up == 1:
        _, gw, _ = torch.ops.aten.convolution_backward(
            gz, xs, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, mask)
        return gw
    # zero insertion + correlation with padding P is conv_transpose2d with padding k - 1 - P
    # and the weight transposed and flipped
    pad_t = k - 1 - padding
    out_pad = [gz.shape[d] - ((xs.shape[d] - 1) * 2 - 2 * pad_t + k) for d in (2, 3)]
    v = weight.transpose(0, 1).flip(2, 3)
    _, gv, _ = torch.ops.aten.convolution_backward(
        gz, xs, v, None, [2, 2], [pad_t] * 2, [1, 1], True, out_pad, 1, mask)
    return gv.flip(2, 3).transpose(0, 1)


class ScaledConv2dFunction(torch.autograd.Function):
    """``apply(x, weight, in_scale, out_scale, stride, up, padding, out_size)`` -> the scaled
    convolution (module docstring) by the kernel, differentiable to any order: the backward is
    this Function (the adjoint mode) and torch ops. ``x`` and ``weight`` are computed in their
    promoted dtype, or under autocast in the autocast dtype (as ``F.conv2d`` would); gradients
    go back in each input's own dtype. ``out_scale`` must be nonzero where a gradient to it is
    asked for."""

    @staticmethod
    def forward(ctx, x, weight, in_scale, out_scale, stride, up, padding, out_size):
        device = x.device.type
        # (meta tensors, as aot_launches() uses, have no autocast)
        autocast = device != "meta" and torch.is_autocast_enabled(device)
        dtype = (torch.get_autocast_dtype(device) if autocast
                 else torch.promote_types(x.dtype, weight.dtype))
        ctx.dtypes = x.dtype, weight.dtype
        x, weight = x.to(dtype), weight.to(dtype)
        y = scaled_conv2d_forward(x, weight, in_scale, out_scale, stride, up, padding, out_size)
        ctx.save_for_backward(x, weight, in_scale, out_scale,
                              y if out_scale is not None and ctx.needs_input_grad[3] else None)
        ctx.mode = stride, up, padding
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, in_scale, out_scale, y = ctx.saved_tensors
        stride, up, padding = ctx.mode
        x_dtype, w_dtype = ctx.dtypes
        need_x, need_w, need_in, need_out = ctx.needs_input_grad[:4]
        k = weight.shape[-1]
        acc = torch.promote_types(x.dtype, torch.float32)
        g = grad_y.to(x.dtype)
        grad_x = grad_w = grad_in = grad_out = None
        if need_x or need_in:
            # A = conv^T(out_scale * g, W): the adjoint mode, out_scale applied on load
            a = ScaledConv2dFunction.apply(g, weight.transpose(0, 1).flip(2, 3), out_scale, None,
                                           up, stride, k - 1 - padding, tuple(x.shape[2:]))
            if need_x:
                grad_x = a if in_scale is None else a * in_scale[:, :, None, None]
                grad_x = grad_x.to(x_dtype)
            if need_in:
                grad_in = (a.to(acc) * x.to(acc)).sum(dim=(2, 3)).to(in_scale.dtype)
        if need_out:
            grad_out = ((g.to(acc) * y.to(acc)).sum(dim=(2, 3)) / out_scale.to(acc))
            grad_out = grad_out.to(out_scale.dtype)
        if need_w:
            gz = g if out_scale is None else (g * out_scale[:, :, None, None]).to(x.dtype)
            xs = x if in_scale is None else (x * in_scale[:, :, None, None]).to(x.dtype)
            grad_w = _weight_grad(gz, xs, weight, stride, up, padding).to(w_dtype)
        return grad_x, grad_w, grad_in, grad_out, None, None, None, None


def scaled_conv2d(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None,
                  out_scale: torch.Tensor | None, *, up: int = 1,
                  padding: int = 0) -> torch.Tensor:
    """``out_scale * conv(in_scale * x, weight)`` (``up=1``, stride 1, ``padding``) or the
    stride-2 transposed convolution (``up=2``, zero insertion then correlation with padding
    ``padding``), differentiable to any order; shapes as :func:`scaled_conv2d_forward`."""
    return ScaledConv2dFunction.apply(x, weight, in_scale, out_scale, 1, up, padding, None)


# ----------------------------------------------------------------------------------- AOT compile

def aot_launches() -> list[Callable[[], object]]:
    """Zero-argument calls on ``device="meta"`` tensors reaching every specialisation a GPU run
    of the op makes: the forward, the backward and the R1-shaped double backward (autograd on
    meta tensors: every mode ``(STRIDE, UP)``, both scales present or absent) of StyleGAN2 layers
    (3x3 demodulated, 3x3 up=2, 1x1 toRGB without demodulation) in bf16, fp16, fp32 with TF32 and
    with "ieee" dots; odd channel counts and widths; 2^31+ elements (``INT64``)."""

    def layer(shape, k, up, demodulate, dtype, tf32=True):
        n, c_in, c_out, h = shape

        def launch():
            meta = dict(device="meta", dtype=dtype)
            x = torch.empty(n, c_in, h, h, **meta, requires_grad=True)
            w = torch.empty(c_out, c_in, k, k, **meta, requires_grad=True)
            s = torch.empty(n, c_in, **meta, requires_grad=True)
            d = torch.empty(n, c_out, device="meta", dtype=torch.float32) if demodulate else None
            if d is not None:
                d = d + (w.float().sum() + s.float().sum())  # a d that depends on w and s
            with torch.backends.cudnn.flags(allow_tf32=tf32):
                y = scaled_conv2d(x, w, s, d, up=up, padding=k - 1 if up == 2 else k // 2)
                (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
                return torch.autograd.grad(gx.square().sum(), (x, w, s))
        return launch

    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    cases = [  # (N, C_in, C_out, H), k, up, demodulate, dtype, tf32
        ((4, 512, 512, 32), 3, 1, True, bf16, True),
        ((4, 512, 512, 16), 3, 2, True, bf16, True),
        ((4, 512, 3, 32), 1, 1, False, bf16, True),
        ((4, 512, 512, 32), 3, 1, True, f32, True),
        ((4, 512, 512, 16), 3, 2, True, f32, True),
        ((4, 512, 512, 32), 3, 1, True, f32, False),
        ((4, 512, 512, 16), 3, 2, True, f32, False),
        ((4, 512, 3, 32), 1, 1, False, f32, False),
        ((2, 37, 29, 13), 3, 1, True, f16, True),
        ((2, 37, 29, 13), 3, 2, True, f16, True),
        ((32, 128, 128, 1024), 3, 1, True, bf16, True),   # 2^32 elements: INT64
        ((16, 128, 128, 512), 3, 2, True, bf16, True),    # 2^31+ output elements, up=2
    ]
    return [layer(*case) for case in cases]
