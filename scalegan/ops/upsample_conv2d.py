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
phase decomposition in torch ops with its own backward, in channels_last layout (same 4/9 saving,
no zero-filled gradient copies; its output is channels_last, see :class:`_UpsampleConv2d`);
``triton`` Triton kernels (``scalegan.kernels.upsample_conv2d``): the forward computes both column
phases of a row phase per program (bias, activation, gain in its epilogue) and stores interleaved,
contiguous output rows; the input gradient (the transposed phase convolution) and the weight and
bias gradients (a reduction over pixels) are Triton kernels too.
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


def _fold_matrix(like: torch.Tensor) -> torch.Tensor:
    """(9, 16): row ``(k, l)`` of the 3x3 taps, column ``(a, b, p, q)`` of phase ``(a, b)``'s
    2x2 taps; entry 1 where tap ``(k, l)`` is summed into ``(p, q)``."""
    fold = torch.tensor(_FOLD, dtype=like.dtype, device=like.device)  # (2 phases, 2 taps, 3)
    return torch.einsum("apk,bql->klabpq", fold, fold).reshape(9, 16)


def _folded(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (C_out, C_in, a, b, p, q): one small matmul."""
    c_out, c_in = weight.shape[:2]
    return (weight.reshape(c_out * c_in, 9) @ _fold_matrix(weight)).view(c_out, c_in, 2, 2, 2, 2)


def _unfolded(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_folded`: (C_out, C_in, a, b, p, q) -> (C_out, C_in, 3, 3)."""
    c_out, c_in = g.shape[:2]
    return (g.reshape(c_out * c_in, 16) @ _fold_matrix(g).t()).view(c_out, c_in, 3, 3)


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (C_out * 4, C_in, 2, 2), output channels ordered (o, a, b)."""
    c_out, c_in = weight.shape[:2]
    return _folded(weight).permute(0, 2, 3, 1, 4, 5).reshape(c_out * 4, c_in, 2, 2)


def phase_weights_grad(grad_w4: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`phase_weights`: (C_out * 4, C_in, 2, 2) -> (C_out, C_in, 3, 3)."""
    c_out4, c_in = grad_w4.shape[:2]
    return _unfolded(grad_w4.reshape(c_out4 // 4, 2, 2, c_in, 2, 2).permute(0, 3, 1, 2, 4, 5))


def phase_weights_cl(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (4 * C_out, C_in, 2, 2), output channels ordered (a, b, o), in
    channels_last strides: the ``cpu`` path's layout (see :class:`_UpsampleConv2d`)."""
    c_out, c_in = weight.shape[:2]
    w4 = _folded(weight).permute(2, 3, 0, 4, 5, 1)  # (a, b, o, p, q, i): channels_last order
    return w4.reshape(4 * c_out, 2, 2, c_in).permute(0, 3, 1, 2)


def phase_weights_cl_grad(grad_w4: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`phase_weights_cl`: (4 * C_out, C_in, 2, 2) -> (C_out, C_in, 3, 3)."""
    c_out4, c_in = grad_w4.shape[:2]
    g = grad_w4.permute(0, 2, 3, 1).reshape(2, 2, c_out4 // 4, 2, 2, c_in)  # (a, b, o, p, q, i)
    return _unfolded(g.permute(2, 5, 0, 1, 3, 4))


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


def size_class(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The call's size class for ``impl="auto"`` (:data:`scalegan.ops._impl.AUTO_TABLE`), as
    measured by ``benchmarks/ops_auto.py``: ``"small"`` where the phase path loses, else
    ``"large"``. It loses

    * on a 4x4 input at any width: 5x5 windows for 4x4 pixels, and oneDNN's 2x2 kernels run
      slowly on such maps;
    * on fewer than 512 input pixels in the batch (``N * H * W``): the phase weights are 16/9
      the size of the 3x3 ones and are folded and unfolded on every call, which wide layers with
      few pixels cannot amortise (2560 channels at 8x8, N=1: 2.5x the reference's time);
    * on an 8x8 input with ``C_in * C_out < 64 * 64``: its fixed costs (~0.5 ms) outweigh its
      4/9 of the multiply-adds.
    """
    n, c_in, h, w = x.shape
    small = (h * w <= 16 or n * h * w < 512
             or (h * w <= 64 and c_in * weight.shape[0] < 64 * 64))
    return "small" if small else "large"


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    activation: str | None = None, negative_slope: float = 0.2,
                    gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """``act(conv2d(upsample_nearest2x(x), weight, bias, padding=1)) * gain``.

    ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, 3, 3)``, ``bias`` ``(C_out,)`` or None
    -> ``(N, C_out, 2H, 2W)``. ``activation`` None or ``"lrelu"`` (leaky ReLU with
    ``negative_slope``).
    """
    _check(x, weight, bias, activation)
    impl = resolve_impl(impl, x, "upsample_conv2d", size_class(x, weight))
    if impl == "ref":
        return upsample_conv2d_ref(x, weight, bias, activation, negative_slope, gain)
    if impl == "triton":
        from scalegan.kernels import upsample_conv2d as kernels

        return kernels.UpsampleConv2dFunction.apply(x, weight, bias, activation == "lrelu",
                                                    negative_slope, gain, phase_weights,
                                                    phase_weights_grad)
    return _UpsampleConv2d.apply(x, weight, bias, activation, negative_slope, gain)


def upsample_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | None = None, negative_slope: float = 0.2,
                        gain: float = 1.0) -> torch.Tensor:
    """The definition, in plain torch ops (autograd differentiates it)."""
    y = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    if activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    return y * gain if gain != 1.0 else y


def _scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    return t if scale == 1.0 else t * scale


def _pixels_last(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A view ``(N, H, 2, W, 2, C)`` of ``(N, C, 2H, 2W)`` (any strides): pixel ``(2i + a,
    2j + b)`` of channel ``c`` is ``[n, i, a, j, b, c]``."""
    return t.permute(0, 2, 3, 1).unflatten(1, (h, 2)).unflatten(3, (w, 2))


class _UpsampleConv2d(torch.autograd.Function):
    """The ``cpu`` path: the phase decomposition in channels_last layout, with its own backward.

    Layout. ``x`` is taken in channels_last, the phase weights :func:`phase_weights_cl` in
    channels_last with output channels ordered (a, b, o), so the stacked convolution's output
    ``(N, 4 * C_out, H + 1, W + 1)`` is, in memory, ``(N, H + 1, W + 1, a, b, C_out)``: phase
    ``(a, b)`` of output pixel ``(i, j)`` is the ``C_out`` contiguous values at window
    ``(i + a, j + b)``. The interleave into ``y`` (channels_last, ``(N, 2H, 2W, C_out)`` in
    memory) then copies runs of ``C_out`` values, and oneDNN runs its channels_last convolution
    kernels without reordering. ``y`` is returned channels_last, as ``F.conv2d`` returns its
    output for a channels_last weight; its values are the definition's.

    Gain and activation. Leaky ReLU is positively homogeneous, so for ``gain >= 0`` (or no
    activation) ``gain * act(z) = act(gain * z)``: the gain is folded into the phase weights and
    bias, and the saved output ``y`` carries the pre-activation's sign (``negative_slope >= 0``),
    so no mask is kept (autograd then refuses a backward after ``y`` was changed in place). The
    backward writes ``act'(z) * dL/dy`` of each phase straight into its window positions of
    ``g4`` (one pass, ``leaky_relu_backward`` into a strided view), then
    ``aten.convolution_backward`` gives dL/dx and dL/dw4, and the fold's adjoint dL/dw. A
    negative gain or slope (not used by the models) keeps a boolean mask of the pre-activation's
    sign instead.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, activation, negative_slope, gain):
        # Under autocast the op computes in the autocast dtype, like F.conv2d would; the gradients
        # go back in each input's own dtype.
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else torch.promote_types(x.dtype, weight.dtype))
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        lrelu = activation == "lrelu"
        fold = not lrelu or (gain >= 0 and negative_slope >= 0)
        scale = gain if fold else 1.0  # folded into the weights and bias
        acc = torch.promote_types(weight.dtype, torch.float32)  # fold the taps in at least fp32
        w4 = _scaled(phase_weights_cl(weight.to(acc)), scale).to(dtype)
        b = None if bias is None else _scaled(bias.to(acc), scale).to(dtype)
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, enabled=False):
            y, positive = _phases_forward(x, w4, b, lrelu, negative_slope, fold, gain)
        ctx.save_for_backward(x, w4, y if lrelu and fold else None, positive)
        ctx.negative_slope, ctx.scale = negative_slope, scale
        ctx.gain = 1.0 if fold else gain  # what is left to apply in the backward
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, w4, y, positive = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        n, _, h, w = x.shape
        c_out = w4.shape[0] // 4
        g = grad_y.to(x.dtype)
        g = _scaled(g, ctx.gain)
        if positive is not None:  # negative gain or slope: the mask of the pre-activation
            g = torch.where(positive, g, g * ctx.negative_slope)
        # dL/dz of each phase to its window positions: g4 (N, H + 1, W + 1, a, b, C_out) in
        # memory; the one row and column a phase never reaches are zeroed, nothing else
        g4 = g.new_empty(n, h + 1, w + 1, 2, 2, c_out)
        gp = _pixels_last(g, h, w)
        yp = None if y is None else _pixels_last(y, h, w)
        for a in (0, 1):
            for b in (0, 1):
                window = g4[:, a:a + h, b:b + w, a, b]  # (N, H, W, C_out)
                if yp is not None:
                    torch.ops.aten.leaky_relu_backward(gp[:, :, a, :, b], yp[:, :, a, :, b],
                                                       ctx.negative_slope, True,
                                                       grad_input=window)
                else:
                    window.copy_(gp[:, :, a, :, b])
                g4[:, h if a == 0 else 0, :, a, b] = 0
                g4[:, :, w if b == 0 else 0, a, b] = 0
        g4 = g4.flatten(3).permute(0, 3, 1, 2)  # (N, 4 * C_out, H + 1, W + 1), channels_last
        grad_x, grad_w4, _ = torch.ops.aten.convolution_backward(
            g4, x, w4, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False))
        grad_x = grad_x.to(x_dtype) if grad_x is not None else None
        acc = torch.promote_types(w4.dtype, torch.float32)
        grad_w = (_scaled(phase_weights_cl_grad(grad_w4.to(acc)), ctx.scale).to(w_dtype)
                  if grad_w4 is not None else None)
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _scaled(g4.sum(dim=(0, 2, 3), dtype=acc).view(4, c_out).sum(0),
                             ctx.scale).to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def _phases_forward(x: torch.Tensor, w4: torch.Tensor, bias: torch.Tensor | None, lrelu: bool,
                    negative_slope: float, fold: bool,
                    gain: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` (N, C_in, H, W) channels_last, ``w4`` from :func:`phase_weights_cl` (gain folded
    in when ``fold``) -> ``y`` (N, C_out, 2H, 2W) channels_last, and the pre-activation's sign
    when it is not ``y``'s (``fold`` False), else None."""
    n, _, h, w = x.shape
    c_out = w4.shape[0] // 4
    out = F.conv2d(x, w4, None if bias is None else bias.repeat(4), padding=1)
    windows = out.permute(0, 2, 3, 1).unflatten(3, (2, 2, c_out))  # (N, H+1, W+1, a, b, C_out)
    y = torch.empty(n, c_out, 2 * h, 2 * w, dtype=out.dtype, device=out.device,
                    memory_format=torch.channels_last)
    yp = _pixels_last(y, h, w)
    for a in (0, 1):
        for b in (0, 1):
            yp[:, :, a, :, b] = windows[:, a:a + h, b:b + w, a, b]
    positive = None
    if lrelu:
        if not fold:
            positive = y > 0
        F.leaky_relu_(y, negative_slope)
    if not fold:
        y.mul_(gain)
    return y, positive
