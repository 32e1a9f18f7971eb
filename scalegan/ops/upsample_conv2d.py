"""Nearest-neighbour 2x upsampling fused into the following 3x3 convolution.

``upsample_conv2d(x, w, b, activation, negative_slope, gain)`` is, by definition,
``act(conv2d(interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)) * gain``.

Output pixel ``(2i + a, 2j + b)`` (phase ``(a, b)``) only ever reads input rows ``i - 1 + a``,
``i + a`` and columns ``j - 1 + b``, ``j + b``: the 3x3 taps that land on the same input pixel can
be summed beforehand. Phase 0 of an axis folds the kernel's taps (0 | 1, 2), phase 1 folds
(0, 1 | 2). So the op is four 2x2 convolutions of the low-resolution input, one per phase, which
is 16 instead of 36 multiply-adds per low-resolution pixel and channel pair (4/9), and the 4x
upsampled input never exists. The four phase kernels are stacked into one convolution with
``4 * C_out`` outputs over the ``(H + 1) x (W + 1)`` window positions (``padding=1``); phase
``(a, b)`` of output ``(i, j)`` is window ``(i + a, j + b)``.

Implementations (``impl``, see ``scalegan.ops._impl``): ``ref`` the definition above; ``cpu`` the
phase decomposition in torch ops with its own backward (same 4/9 saving, no zero-filled
gradient copies); ``triton`` a fused kernel (phases, bias, activation, gain in one pass) whose
backward is the ``cpu`` backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from scalegan.ops._impl import resolve_impl

ACTIVATIONS = (None, "lrelu")

# _FOLD[a] (2 x 3): phase a of one axis reads padded-input taps {a, a + 1}; row t of _FOLD[a]
# says which of the 3x3 kernel's taps along that axis are summed into tap t.
_FOLD = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _fold(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_FOLD, dtype=like.dtype, device=like.device)  # (2 phases, 2 taps, 3)


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (C_out * 4, C_in, 2, 2), output channels ordered (o, a, b)."""
    c_out, c_in = weight.shape[:2]
    fold = _fold(weight)
    w4 = torch.einsum("apk,oikl,bql->oabipq", fold, weight, fold)  # (o, a, b, i, 2, 2)
    return w4.reshape(c_out * 4, c_in, 2, 2)


def phase_weights_grad(grad_w4: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`phase_weights`: (C_out * 4, C_in, 2, 2) -> (C_out, C_in, 3, 3)."""
    c_out4, c_in = grad_w4.shape[:2]
    fold = _fold(grad_w4)
    g = grad_w4.reshape(c_out4 // 4, 2, 2, c_in, 2, 2)
    return torch.einsum("apk,oabipq,bql->oikl", fold, g, fold)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: str | None) -> None:
    if x.ndim != 4:
        raise ValueError(f"upsample_conv2d: x must be (N, C_in, H, W), got {tuple(x.shape)}")
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"upsample_conv2d: weight must be (C_out, {x.shape[1]}, 3, 3) for x of "
                         f"shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"upsample_conv2d: bias must be ({weight.shape[0]},), got "
                         f"{tuple(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"upsample_conv2d: activation={activation!r} is not one of "
                         f"{ACTIVATIONS}")


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    activation: str | None = None, negative_slope: float = 0.2,
                    gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """``act(conv2d(upsample_nearest2x(x), weight, bias, padding=1)) * gain``.

    ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, 3, 3)``, ``bias`` ``(C_out,)`` or None
    -> ``(N, C_out, 2H, 2W)``. ``activation`` None or ``"lrelu"`` (leaky ReLU with
    ``negative_slope``).
    """
    _check(x, weight, bias, activation)
    impl = resolve_impl(impl, x, "upsample_conv2d")
    if impl == "ref":
        return upsample_conv2d_ref(x, weight, bias, activation, negative_slope, gain)
    return _UpsampleConv2d.apply(x, weight, bias, activation, negative_slope, gain, impl)


def upsample_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | None = None, negative_slope: float = 0.2,
                        gain: float = 1.0) -> torch.Tensor:
    """The definition, in plain torch ops (autograd differentiates it)."""
    y = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    if activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    return y * gain if gain != 1.0 else y


def _phases_forward(x: torch.Tensor, w4: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The four phase convolutions, interleaved: (N, C_in, H, W) -> (N, C_out, 2H, 2W)."""
    n, _, h, w = x.shape
    c_out = w4.shape[0] // 4
    out = F.conv2d(x, w4, None if bias is None else bias.repeat_interleave(4), padding=1)
    out = out.view(n, c_out, 2, 2, h + 1, w + 1)  # (N, C_out, a, b, H + 1, W + 1)
    y = out.new_empty(n, c_out, h, 2, w, 2)  # (N, C_out, i, a, j, b) = pixel (2i + a, 2j + b)
    for a in (0, 1):
        for b in (0, 1):
            y[:, :, :, a, :, b] = out[:, :, a, b, a:a + h, b:b + w]
    return y.view(n, c_out, 2 * h, 2 * w)


class _UpsampleConv2d(torch.autograd.Function):
    """Forward by the phase decomposition (torch, ``cpu``) or the fused Triton kernel; one
    backward for both: the phase convolutions' input and weight gradients, folded back."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, negative_slope, gain, impl):
        # Under autocast the op computes in the autocast dtype, like F.conv2d would; the gradients
        # go back in each input's own dtype.
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else torch.promote_types(x.dtype, weight.dtype))
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        x = x.to(dtype)
        # fold the taps in at least fp32
        w4 = phase_weights(weight.to(torch.promote_types(weight.dtype, torch.float32))).to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _UpsampleConv2d._forward(ctx, x, w4, bias, activation, negative_slope, gain,
                                            impl)

    @staticmethod
    def _forward(ctx, x, w4, bias, activation, negative_slope, gain, impl):
        if impl == "triton":
            from scalegan.kernels import upsample_conv2d as kernels

            y = kernels.upsample_conv2d_forward(x, w4, bias, activation == "lrelu",
                                                negative_slope, gain)
        else:
            y = _phases_forward(x, w4, bias)  # a fresh tensor: the epilogue works in place
            if activation == "lrelu":
                F.leaky_relu_(y, negative_slope)
            if gain != 1.0:
                y.mul_(gain)
        positive = None
        if activation == "lrelu":  # the pre-activation's sign: the output's, times the gain's
            positive = (y > 0) if gain > 0 else (y < 0)
        ctx.save_for_backward(x, w4, positive)
        ctx.has_bias, ctx.negative_slope, ctx.gain = bias is not None, negative_slope, gain
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, w4, positive = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_y = grad_y.to(x.dtype)
        g = grad_y * ctx.gain if ctx.gain != 1.0 else grad_y
        if positive is not None:
            g = torch.where(positive, g, g * ctx.negative_slope)
        n, _, h, w = x.shape
        c_out = w4.shape[0] // 4
        # scatter each phase of dL/dy to its window positions; the one row and column a phase
        # never reaches stay zero
        g6 = g.reshape(n, c_out, h, 2, w, 2)
        g4 = g.new_empty(n, c_out, 2, 2, h + 1, w + 1)
        for a in (0, 1):
            for b in (0, 1):
                g4[:, :, a, b, a:a + h, b:b + w] = g6[:, :, :, a, :, b]
                g4[:, :, a, b, h if a == 0 else 0, :] = 0
                g4[:, :, a, b, :, w if b == 0 else 0] = 0
        g4 = g4.view(n, c_out * 4, h + 1, w + 1)
        grad_x, grad_w4, _ = torch.ops.aten.convolution_backward(
            g4, x, w4, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False))
        grad_x = grad_x.to(x_dtype) if grad_x is not None else None
        grad_w = (phase_weights_grad(grad_w4.to(torch.promote_types(grad_w4.dtype, torch.float32)))
                  .to(w_dtype) if grad_w4 is not None else None)
        grad_b = (g.sum(dim=(0, 2, 3), dtype=torch.promote_types(g.dtype, torch.float32))
                  .to(b_dtype)
                  if ctx.has_bias and ctx.needs_input_grad[2] else None)
        return grad_x, grad_w, grad_b, None, None, None, None
