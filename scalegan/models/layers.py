"""Building blocks of the progressive GAN (Karras et al. 2018, "Progressive Growing of GANs").

* Equalized learning rate: weights are stored as N(0, 1) and multiplied at run time by
  ``gain / sqrt(fan_in)`` (He's constant). Adam's per-parameter step size is then the same for
  every layer relative to its effective weight, whatever the fan-in.
* Pixel norm: per-pixel feature-vector normalisation in G, keeps G's signal magnitudes from
  escalating (replaces batch norm, so every sample is computed independently).
* Minibatch stddev: D sees a statistic of the variation inside a group of samples, which
  discourages mode collapse.

Architecture only: no device or distributed logic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EqualizedLinear",
    "EqualizedConv2d",
    "UpConv2d",
    "PixelNorm",
    "MinibatchStddev",
    "minibatch_stddev",
    "pixel_norm",
    "upsample_nearest2x",
    "downsample_avg2x",
]

SQRT2 = math.sqrt(2.0)


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
    """Nearest-neighbour 2x upsample followed by an equalized 3x3 convolution (padding 1).

    Input ``(N, in_channels, H, W)`` -> ``(N, out_channels, 2H, 2W)``.

    It subclasses :class:`EqualizedConv2d` (so ``weight``, ``bias`` and ``scale`` sit directly on
    this module) and does all its work in one ``forward``: a fused upsample+conv kernel can replace
    the module, or just its ``forward``, and reuse the same parameters and state-dict keys.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float = SQRT2,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, gain=gain, bias=bias, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (N, in, 2H, 2W)
        return F.conv2d(x, self.scaled_weight(), self.bias, padding=1)  # (N, out, 2H, 2W)


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


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1,
                     eps: float = 1e-8) -> torch.Tensor:
    """Append the minibatch-stddev statistic (PGGAN / StyleGAN2) as ``num_channels`` feature maps.

    ``x`` ``(N, C, H, W)`` -> ``(N, C + num_channels, H, W)``.

    The batch is split into ``N // G`` groups of ``G = min(group_size, N)`` samples; ``N`` must be
    divisible by ``G``. Groups are consecutive samples (sample ``i`` is in group ``i // G``), so a
    batch cut into micro-batches or per-rank shards whose sizes are multiples of ``G`` gets the same
    statistics as the whole batch (StyleGAN2 strides instead; that would tie the statistic to how
    the batch is split). For each group the std over the group of every feature
    (``sqrt(var + eps)``, biased variance; eps keeps the gradient finite when all samples of a group
    are equal, e.g. G = 1) is averaged over the ``C / num_channels`` channels of each channel group
    and over all pixels, giving ``num_channels`` scalars per group that are broadcast to
    ``(H, W)`` maps for every sample of the group.
    """
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev expects (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if group_size < 1:
        raise ValueError(f"minibatch_stddev group_size must be >= 1, got {group_size}")
    g = min(group_size, n)
    if n % g != 0:
        raise ValueError(f"minibatch_stddev: batch size N={n} is not divisible by the group size "
                         f"min(group_size={group_size}, N)={g}; use a per-device batch that is a "
                         f"multiple of {group_size} or smaller than it")
    f = num_channels
    if f < 1 or c % f != 0:
        raise ValueError(f"minibatch_stddev: C={c} channels cannot be split into "
                         f"num_channels={f} equal groups")
    # Low-precision inputs (bf16 autocast): the variance of small deviations needs fp32; the
    # statistic is tiny (N x F scalars) so this costs nothing.
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = y.reshape(n // g, g, f, c // f, h, w)  # (n, G, F, c, H, W); n = number of groups
    y = y - y.mean(dim=1, keepdim=True)  # deviation from the group mean
    y = y.square().mean(dim=1)  # (n, F, c, H, W) biased variance over the group
    y = (y + eps).sqrt()  # std
    y = y.mean(dim=(2, 3, 4))  # (n, F) average over channels of each channel group and pixels
    y = y.reshape(n // g, f, 1, 1).repeat_interleave(g, dim=0).expand(n, f, h, w)  # row i <- i // G
    return torch.cat([x, y.to(x.dtype)], dim=1)  # (N, C + F, H, W)


class MinibatchStddev(nn.Module):
    """Module form of :func:`minibatch_stddev`.

    ``(N, C, H, W)`` -> ``(N, C + num_channels, H, W)``.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


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
