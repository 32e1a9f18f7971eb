"""Building blocks of the progressive GAN (Karras et al. 2018, "Progressive Growing of GANs").

* Equalized learning rate: weights are stored as N(0, 1) and multiplied at run time by
  ``gain / sqrt(fan_in)`` (He's constant). Adam's per-parameter step size is then the same for
  every layer relative to its effective weight, whatever the fan-in.
* Pixel norm: per-pixel feature-vector normalisation in G, keeps G's signal magnitudes from
  escalating (replaces batch norm, so every sample is computed independently).
* Minibatch stddev: D sees a statistic of the variation inside a group of samples, which
  discourages mode collapse.

Also :func:`check_labels`, the check of the class ids a label-conditional network (progressive,
DCGAN, MLP) is given.

Architecture only: no device or distributed logic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scalegan.ops import MinibatchDiscrimination, minibatch_stddev, upsample_conv2d

__all__ = [
    "EqualizedLinear",
    "EqualizedConv2d",
    "UpConv2d",
    "PixelNorm",
    "MinibatchStddev",
    "MinibatchDiscrimination",
    "minibatch_stddev",
    "pixel_norm",
    "upsample_nearest2x",
    "downsample_avg2x",
    "check_labels",
]

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2


class EqualizedLinear(nn.Module):
    """Linear layer with equalized learning rate: ``y = x @ (w * gain/sqrt(in))^T + b``.

    Input ``(N, in_features)`` -> output ``(N, out_features)``. ``weight`` ~ N(0, 1), bias 0.
    ``gain`` defaults to sqrt(2) (He init for a following leaky ReLU); use 1 for a linear output.
    """

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2,
                 bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.gain = gain
        # A plain float, not a buffer: it is a constant of the architecture, not state.
        self.scale = gain / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def scaled_weight(self) -> torch.Tensor:
        """The weight actually applied, ``weight * gain / sqrt(fan_in)``."""
        return self.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.scaled_weight(), self.bias)  # (N, out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"gain={self.gain:.4g}, bias={self.bias is not None}")


class EqualizedConv2d(nn.Module):
    """2-D convolution (stride 1) with equalized learning rate.

    Input ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``; with the default
    ``padding = kernel_size // 2`` an odd kernel keeps ``H' = H, W' = W``. ``weight`` ~ N(0, 1) of
    shape ``(out, in, k, k)``, scaled at run time by ``gain / sqrt(in * k * k)``; bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 gain: float = SQRT2, bias: bool = True, padding: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2 if padding is None else padding
        self.gain = gain
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def scaled_weight(self) -> torch.Tensor:
        """The weight actually applied, ``weight * gain / sqrt(fan_in)``."""
        return self.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.scaled_weight(), self.bias, padding=self.padding)  # (N, out, H, W)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, gain={self.gain:.4g}, bias={self.bias is not None}")


class UpConv2d(EqualizedConv2d):
    """Nearest-neighbour 2x upsample, equalized 3x3 convolution (padding 1) and an optional
    leaky ReLU, computed by the fused :func:`scalegan.ops.upsample_conv2d` (the upsampled input
    never exists).

    Input ``(N, in_channels, H, W)`` -> ``(N, out_channels, 2H, 2W)``. Parameters and state-dict
    keys are those of :class:`EqualizedConv2d`, whatever ``impl``.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2,
                 bias: bool = True, activation: str | None = None, impl: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, gain=gain, bias=bias, padding=1)
        self.activation = activation
        self.impl = impl  # an implementation choice, not state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv2d(x, self.scaled_weight(), self.bias, self.activation,
                               negative_slope=LRELU_SLOPE, impl=self.impl)  # (N, out, 2H, 2W)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x**2 over channels) + eps)`` for ``x`` of shape ``(N, C, ...)``."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit mean square: ``(N, C, ...)`` -> same shape."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, self.eps)


class MinibatchStddev(nn.Module):
    """Module form of :func:`scalegan.ops.minibatch_stddev` (groups of consecutive samples;
    ``across_ranks`` forms them over the batch of every data-parallel rank).

    ``(N, C, H, W)`` -> ``(N, C + num_channels, H, W)``.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1, impl: str = "auto",
                 across_ranks: bool = False) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels
        self.impl = impl  # an implementation choice, not state: the same checkpoint for all
        self.across_ranks = across_ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels, impl=self.impl,
                                across_ranks=self.across_ranks)

    def extra_repr(self) -> str:
        return (f"group_size={self.group_size}, num_channels={self.num_channels}, "
                f"impl={self.impl}, across_ranks={self.across_ranks}")


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsample, each pixel copied exactly.

    ``(N, C, H, W)`` -> ``(N, C, 2H, 2W)``.
    """
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample_avg2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool, the inverse of :func:`upsample_nearest2x`.

    ``(N, C, H, W)`` -> ``(N, C, H/2, W/2)``.
    """
    return F.avg_pool2d(x, kernel_size=2)


def check_labels(cond: torch.Tensor | None, num_classes: int, batch: int, who: str) -> None:
    """Check the ``cond`` argument of a network conditioned on class labels.

    ``num_classes`` is 0 for an unconditional network, which must get ``cond=None``; a
    conditional one needs ``cond``, an integer tensor ``(batch,)`` of class ids in
    ``[0, num_classes)``. ValueError naming ``cond`` otherwise.

    The range check reads the ids (one device synchronisation); it is skipped for tensors without
    values (the meta device) and while tracing for ``torch.compile``.
    """
    if num_classes == 0:
        if cond is not None:
            raise ValueError(f"{who}: cond was given, but the model is unconditional (no class "
                             f"labels); pass cond=None")
        return
    if cond is None:
        raise ValueError(f"{who}: cond is required: the model is conditioned on class labels "
                         f"(num_classes={num_classes}); pass cond, a LongTensor (N,) of class ids")
    if not isinstance(cond, torch.Tensor) or cond.dtype.is_floating_point or cond.is_complex() \
            or cond.dtype == torch.bool or cond.ndim != 1 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        dtype = f" {cond.dtype}" if isinstance(cond, torch.Tensor) else ""
        raise ValueError(f"{who}: cond must be an integer tensor of shape ({batch},) (class ids, "
                         f"one per sample), got{dtype} {shape}")
    if cond.is_meta or torch.compiler.is_compiling() or cond.numel() == 0:
        return
    if bool(((cond < 0) | (cond >= num_classes)).any()):
        raise ValueError(f"{who}: cond holds class ids outside [0, {num_classes}): min "
                         f"{int(cond.min())}, max {int(cond.max())}")
