"""StyleGAN2's modulated convolution (Karras et al. 2020, section 2.2, eq. 1-3).

Each sample ``n`` of ``x`` ``(N, C_in, H, W)`` is convolved with its own weight, derived from the
shared ``weight`` ``(C_out, C_in, k, k)`` and its style ``styles[n]`` ``(C_in,)``:

* modulation (eq. 1): ``w'_nij = weight_ij * s_nj`` (output channel ``i``, input channel ``j``);
* demodulation (eq. 3, with ``demodulate``): ``w''_nij = w'_nij * d_ni`` with
  ``d_ni = 1 / sqrt(sum_{j, kh, kw} w'_nij^2 + eps)``, which restores unit output variance for
  unit-variance inputs.

``up=1``: ``y_n = conv2d(x_n, w''_n, padding)`` (``padding=None`` means ``k // 2``), output
``(N, C_out, H, W)`` for odd ``k``. ``up=2``: StyleGAN2's upsampling layer: the transposed
convolution of stride 2 (zero insertion, then correlation with ``w''_n`` padded by ``k - 1``;
it is ``conv_transpose2d`` with ``w''_n`` transposed and flipped), giving ``2H + k - 2`` rows,
then the FIR blur ``[1, 3, 3, 1]`` with gain 4 (:func:`scalegan.ops.upfirdn2d.upfirdn2d`), padded
so the output is exactly ``(N, C_out, 2H, 2W)``.

Implementations (``impl``): ``ref`` the definition as a grouped convolution (the batch folded
into the groups: ``N * C_out`` weights of ``C_in x k x k`` over a ``(1, N * C_in, H, W)`` input);
``cpu`` the same values with the shared weight: since ``w''_nij = weight_ij * s_nj * d_ni``,
``y_n = d_n * conv(s_n * x_n, weight)``, one ordinary ``conv2d`` / ``conv_transpose2d`` over the
whole batch between a per-input-channel and a per-output-channel scaling, and
``d_n = rsqrt((weight^2 summed over taps) @ s_n^2 + eps)`` one small matmul instead of the
``N x C_out x C_in x k x k`` modulated weights. Both are made of differentiable torch ops, so
autograd takes them to any order (R1 and the path-length penalty differentiate through them).
``triton`` the same identity as one Triton implicit-GEMM convolution with the shared weight, the
style applied to the input tile as it is loaded and ``d`` to the accumulator before the store
(``scalegan.kernels.modulated_conv2d``; ``up=2``: the kernel's stride-2 transposed convolution,
then the torch blur); its backward is the same kernel in the adjoint mode plus torch ops, so it
too is differentiable to any order. It runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (see ``scalegan.ops._impl``); ``padding`` must lie in ``[0, k - 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scalegan.ops._impl import resolve_impl
from scalegan.ops.upfirdn2d import setup_filter, upfirdn2d

AVAILABLE_IMPLS = ("auto", "ref", "cpu", "triton")


def _check(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, up: int,
           padding: int | None) -> None:
    if x.ndim != 4:
        raise ValueError(f"modulated_conv2d: x must be (N, C_in, H, W), got {tuple(x.shape)}")
    n, c_in = x.shape[:2]
    if weight.ndim != 4 or weight.shape[1] != c_in or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"modulated_conv2d: weight must be (C_out, {c_in}, k, k) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if tuple(styles.shape) != (n, c_in):
        raise ValueError(f"modulated_conv2d: styles must be ({n}, {c_in}), got "
                         f"{tuple(styles.shape)}")
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    if up == 2 and padding is not None:
        raise ValueError("modulated_conv2d: up=2 pads for an output of exactly 2H x 2W; "
                         "padding must be None")


def _blur_pad(k: int, f: torch.Tensor) -> tuple[int, int, int, int]:
    """upfirdn2d padding after the stride-2 transposed convolution (``2H + k - 2`` rows) that
    centres the blur and gives ``2H`` rows: ``p = (fw - 2) - (k - 1)``, ``(p + 1) // 2 + 1``
    before and ``p // 2 + 1`` after."""
    p = (f.shape[-1] - 2) - (k - 1)
    return ((p + 1) // 2 + 1, p // 2 + 1, (p + 1) // 2 + 1, p // 2 + 1)


def _blur(y: torch.Tensor, k: int) -> torch.Tensor:
    f = setup_filter((1, 3, 3, 1), device=y.device, dtype=y.dtype)
    return upfirdn2d(y, f, pad=_blur_pad(k, f), gain=4.0)


def demodulation(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``d`` ``(N, C_out)``: ``d_ni = rsqrt(sum_{j, kh, kw} (weight_ij * s_nj)^2 + eps)``
    computed as ``(s^2 @ (sum over taps of weight^2)^T + eps)^(-1/2)``."""
    w2 = weight.square().sum(dim=(2, 3))  # (C_out, C_in)
    return (styles.square() @ w2.t() + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool = True, up: int = 1, padding: int | None = None,
                     impl: str = "auto", eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution, see the module docstring.

    ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, k, k)``, ``styles`` ``(N, C_in)`` ->
    ``(N, C_out, H, W)`` (``up=1``, ``padding=None``) or ``(N, C_out, 2H, 2W)`` (``up=2``).
    """
    _check(x, weight, styles, up, padding)
    if impl not in AVAILABLE_IMPLS:
        raise ValueError(f"modulated_conv2d: impl={impl!r} is not available; the available "
                         f"impls are {' | '.join(AVAILABLE_IMPLS)}")
    impl = resolve_impl(impl, x, "modulated_conv2d")
    fn = {"ref": modulated_conv2d_ref, "cpu": modulated_conv2d_cpu,
          "triton": modulated_conv2d_triton}[impl]
    return fn(x, weight, styles, demodulate=demodulate, up=up, padding=padding, eps=eps)


def modulated_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                         demodulate: bool = True, up: int = 1, padding: int | None = None,
                         eps: float = 1e-8) -> torch.Tensor:
    """The ``ref`` path: per-sample weights ``w''`` ``(N, C_out, C_in, k, k)`` and one grouped
    convolution with the batch folded into the groups."""
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    wn = weight[None] * styles[:, None, :, None, None]  # (N, C_out, C_in, k, k)
    if demodulate:
        wn = wn * (wn.square().sum(dim=(2, 3, 4), keepdim=True) + eps).rsqrt()
    xg = x.reshape(1, n * c_in, h, w)
    if up == 1:
        pad = k // 2 if padding is None else padding
        y = F.conv2d(xg, wn.reshape(n * c_out, c_in, k, k), padding=pad, groups=n)
        return y.reshape(n, c_out, *y.shape[2:])
    # conv_transpose2d takes (groups * C_in, C_out, k, k); the flip makes it zero insertion
    # followed by correlation with w'' (as conv2d after upsampling would be)
    wt = wn.transpose(1, 2).reshape(n * c_in, c_out, k, k).flip(2, 3)
    y = F.conv_transpose2d(xg, wt, stride=2, groups=n)
    return _blur(y.reshape(n, c_out, *y.shape[2:]), k)


def modulated_conv2d_cpu(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                         demodulate: bool = True, up: int = 1, padding: int | None = None,
                         eps: float = 1e-8) -> torch.Tensor:
    """The ``cpu`` path: ``d_n * conv(s_n * x_n, weight)`` with the shared weight over the whole
    batch (the demodulation commutes with the blur, which filters each channel alone).

    With ``up=2`` the transposed convolution and the blur run channels-last: oneDNN then needs
    no layout reorders, and the depthwise blur (in NCHW a third of the layer's time on CPU at
    256 channels, 32^2) runs faster; the result is returned contiguous (NCHW)."""
    k = weight.shape[-1]
    xs = x * styles[:, :, None, None]
    if up == 1:
        y = F.conv2d(xs, weight, padding=k // 2 if padding is None else padding)
    else:
        # channels-last strides by permute + contiguous (vmap, as in forward-mode Jacobians,
        # has no rule for contiguous(memory_format=channels_last))
        xs = xs.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        y = F.conv_transpose2d(xs, weight.transpose(0, 1).flip(2, 3), stride=2)
    if demodulate:
        y = y * demodulation(weight, styles, eps)[:, :, None, None]
    return y if up == 1 else _blur(y, k).contiguous()


def modulated_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                            demodulate: bool = True, up: int = 1, padding: int | None = None,
                            eps: float = 1e-8) -> torch.Tensor:
    """The ``triton`` path: ``d_n * conv(s_n * x_n, weight)`` as one scaled convolution by the
    kernel (``s`` on the input tiles, ``d`` in the epilogue), ``d`` from :func:`demodulation` in
    at least fp32; ``up=2`` the kernel's transposed convolution, then the blur."""
    from scalegan.kernels import modulated_conv2d as kernels

    k = weight.shape[-1]
    pad = k // 2 if padding is None else padding
    if up == 1 and not 0 <= pad <= k - 1:
        raise ValueError(f"modulated_conv2d: impl='triton' takes padding in [0, {k - 1}] for "
                         f"k={k}, got {pad}")
    acc = torch.promote_types(weight.dtype, torch.float32)
    d = demodulation(weight.to(acc), styles.to(acc), eps) if demodulate else None
    if up == 1:
        return kernels.scaled_conv2d(x, weight, styles, d, padding=pad)
    return _blur(kernels.scaled_conv2d(x, weight, styles, d, up=2, padding=k - 1), k)
