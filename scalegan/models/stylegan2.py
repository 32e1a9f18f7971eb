"""StyleGAN2 generator and discriminator, config F (Karras et al. 2020, "Analyzing and Improving
the Image Quality of StyleGAN").

Generator ``G = synthesis o mapping``:

* :class:`MappingNetwork` ``z (N, z_dim) -> w (N, w_dim)``: pixel norm of ``z`` (unit mean
  square), then 8 fully connected layers with leaky ReLU, learning rate multiplier 0.01. It tracks
  ``w_avg``, the moving average of ``w`` used by the truncation trick
  ``w' = w_avg + psi * (w - w_avg)``, and broadcasts ``w`` to the ``num_ws`` style inputs.
* :class:`SynthesisNetwork` ``ws (N, num_ws, w_dim) -> image (N, C, R, R)``: a learned 4x4
  constant, then per resolution ``r`` two modulated 3x3 convolutions (the first upsamples 2x,
  except at 4x4), each followed by per-pixel noise ``x + strength * noise``, a bias and
  ``lrelu(., 0.2) * sqrt(2)``; "skip" output: a toRGB (modulated 1x1, no demodulation) at every
  resolution, the running image upsampled with the [1, 3, 3, 1] FIR and added.

Style ``i`` of ``ws`` feeds, in order: the 4x4 conv (0), the 4x4 toRGB (1); for every later
resolution its up-conv, its second conv and its toRGB, where a toRGB shares the style of the next
resolution's up-conv. So ``num_ws = 2 * log2(R) - 2`` (18 at 1024^2).

Discriminator (residual): fromRGB (1x1) at the image resolution, then per resolution ``r`` down to
8 a block ``(N, C_r, r, r) -> (N, C_{r/2}, r/2, r/2)``::

    main = conv3x3_down(conv3x3(x))      conv3x3_down: [1,3,3,1] blur, then a stride-2 3x3 conv
    skip = conv1x1(downsample2d(x))      no bias, no activation
    out  = (main + skip) / sqrt(2)

and at 4x4 the epilogue: minibatch stddev, conv3x3, fully connected to ``C_4``, fully connected
to 1 logit.

Every layer has an equalized learning rate: weights are stored as N(0, 1 / lr_mul^2) and scaled at
run time by ``lr_mul / sqrt(fan_in)``, biases by ``lr_mul`` (``lr_mul = 1`` except in the mapping
network). Activations are ``lrelu(x + b, 0.2) * sqrt(2)`` (He's gain applied after the activation)
and, when ``conv_clamp`` is set, clamped to ``[-conv_clamp, conv_clamp]`` (toRGB outputs too;
times the extra gain ``sqrt(1/2)`` on the paths of D's residual blocks), to keep reduced-precision
activations in range.

Channels at resolution ``r``: ``min(channel_base // r, channel_max)`` (config F: 512 up to 64^2,
256 at 128, 128 at 256, 64 at 512, 32 at 1024). At 1024^2 G has 30,370,060 parameters (mapping
2,101,248 + synthesis 28,268,812), the count of the paper's official code; buffers (``w_avg``, the
constant noise maps, the FIR filter) are not parameters.

Architecture only: no device or distributed logic. The modulated convolutions run
:func:`scalegan.ops.modulated_conv2d` with the ``impl`` given to the networks (``"auto"`` by
default; an implementation choice, not state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scalegan.models.layers import LRELU_SLOPE, SQRT2, pixel_norm
from scalegan.ops.minibatch_stddev import minibatch_stddev
from scalegan.ops.modulated_conv2d import modulated_conv2d
from scalegan.ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "MappingNetwork",
    "SynthesisNetwork",
    "Generator",
    "Discriminator",
    "FullyConnected",
    "channels_at",
    "num_ws_for",
]

NOISE_MODES = ("random", "const", "none")
BLUR_TAPS = (1, 3, 3, 1)
MIN_RESOLUTION, MAX_RESOLUTION, MIN_IMAGE_RESOLUTION = 4, 1024, 32


def channels_at(res: int, channel_base: int = 32768, channel_max: int = 512) -> int:
    """Feature maps at resolution ``res``: ``min(channel_base // res, channel_max)``."""
    return min(channel_base // res, channel_max)


def num_ws_for(resolution: int) -> int:
    """Style inputs of a synthesis network of ``resolution``: ``2 * log2(resolution) - 2``."""
    return 2 * int(math.log2(resolution)) - 2


def _in_bf16(r: int, resolution: int, bf16_resolutions: int) -> bool:
    """Whether the block at ``r`` computes in bf16: the ``bf16_resolutions`` highest ones (where
    StyleGAN2-ADA uses fp16, with ``conv_clamp``)."""
    return bf16_resolutions > 0 and r >= resolution >> (bf16_resolutions - 1)


def _compute_dtype(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast in a block that computes in bf16 (a no-op context elsewhere). On the meta
    device (shapes only, as benchmarks/model_memory.py runs), which autocast refuses, the CPU's."""
    device_type = "cpu" if device.type == "meta" else device.type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def _full(x: torch.Tensor) -> torch.Tensor:
    """``x`` back in fp32 when a bf16 block made it (fp32 / fp64 unchanged)."""
    return x.float() if x.dtype == torch.bfloat16 else x


def _resolutions(resolution: int) -> list[int]:
    """[4, 8, ..., resolution]."""
    return [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]


def _check_architecture(who: str, resolution: int, img_channels: int, channel_base: int,
                        channel_max: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) \
            or not (MIN_IMAGE_RESOLUTION <= resolution <= MAX_RESOLUTION) \
            or resolution & (resolution - 1):
        raise ValueError(f"{who}: resolution={resolution!r} must be a power of two from "
                         f"{MIN_IMAGE_RESOLUTION} to {MAX_RESOLUTION}")
    if img_channels not in (1, 3):
        raise ValueError(f"{who}: img_channels={img_channels!r} must be 1 or 3")
    if channels_at(resolution, channel_base, channel_max) < 1:
        raise ValueError(f"{who}: channel_base={channel_base} gives no channels at "
                         f"{resolution}^2 (channel_base // resolution must be >= 1)")


def _bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
              clamp: float | None) -> torch.Tensor:
    """``x + bias`` (broadcast over dim 1), then for ``"lrelu"`` ``lrelu(., 0.2) * sqrt(2)``,
    then clamped to ``[-clamp, clamp]`` when ``clamp`` is set."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * SQRT2
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ------------------------------------------------------------------------------ equalized layers


class FullyConnected(nn.Module):
    """Equalized-learning-rate fully connected layer with a learning rate multiplier.

    ``(N, in_features) -> (N, out_features)``: ``act(x @ (W * lr_mul / sqrt(in))^T + b * lr_mul)``
    with ``act`` ``lrelu(., 0.2) * sqrt(2)`` or the identity. ``W`` is initialised N(0, 1/lr_mul^2)
    and ``b`` to ``bias_init / lr_mul``, so the effective weight starts N(0, 1 / in) and the
    effective bias at ``bias_init`` whatever ``lr_mul``, while Adam's steps on the stored values
    are scaled by ``lr_mul`` in effective units (a slower-learning layer).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bias_init: float = 0.0, lr_multiplier: float = 1.0,
                 activation: str | None = None) -> None:
        super().__init__()
        if activation not in (None, "lrelu"):
            raise ValueError(f"FullyConnected: activation={activation!r} must be None or 'lrelu'")
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = (nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier))
                     if bias else None)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        return _bias_act(F.linear(x, w), b, self.activation, None)  # (N, out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"lr_multiplier={self.lr_multiplier:g}, activation={self.activation}")


class _Conv2d(nn.Module):
    """Equalized-learning-rate convolution of D: ``(N, in, H, W) -> (N, out, H / down, W / down)``.

    ``down=1``: a ``k x k`` conv with padding ``k // 2``. ``down=2``, ``k = 3``: the [1, 3, 3, 1]
    blur with 2 pixels of zero padding per side, then a stride-2 conv without padding
    (``H + 4 - 3`` blurred rows, ``(H + 1 - 3) // 2 + 1 = H / 2`` outputs); ``down=2``, ``k = 1``:
    :func:`downsample2d` (blur and keep every second pixel), then the 1x1 conv. Then
    ``_bias_act`` and a final ``gain`` (``sqrt(1/2)`` on both paths of a residual block).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str | None = "lrelu", down: int = 1, gain: float = 1.0,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        if down not in (1, 2) or (down == 2 and kernel_size not in (1, 3)):
            raise ValueError(f"_Conv2d: down={down} with kernel_size={kernel_size} is not "
                             f"supported (down 1, or down 2 with a 1x1 or 3x3 kernel)")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, \
            kernel_size
        self.activation, self.down, self.gain, self.conv_clamp = activation, down, gain, conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if down > 1:
            self.register_buffer("blur", setup_filter(BLUR_TAPS), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = F.conv2d(downsample2d(x, self.blur, down=2), w)
        else:
            x = F.conv2d(upfirdn2d(x, self.blur, pad=(2, 2, 2, 2)), w, stride=2)
        x = _bias_act(x, self.bias, self.activation, None)
        x = x * self.gain if self.gain != 1.0 else x
        if self.conv_clamp is not None:  # the clamp scales with the path's gain
            x = x.clamp(-self.conv_clamp * self.gain, self.conv_clamp * self.gain)
        return x

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"down={self.down}, activation={self.activation}, gain={self.gain:.4g}, "
                f"bias={self.bias is not None}")


# -------------------------------------------------------------------------------------- mapping


class MappingNetwork(nn.Module):
    """``z (N, z_dim) -> w``: ``(N, w_dim)``, or ``(N, num_ws, w_dim)`` (``w`` repeated) when
    ``num_ws`` is set.

    ``w = fc_{L-1}(... fc_0(pixel_norm(z)))``, every layer a :class:`FullyConnected` with leaky
    ReLU and learning rate multiplier ``lr_multiplier``. In training mode (and unless
    ``update_w_avg=False``) each call moves the buffer ``w_avg`` toward the batch mean:
    ``w_avg <- mean_n(w) + beta * (w_avg - mean_n(w))``, ``beta = w_avg_beta``. Truncation
    (:meth:`truncate`) uses ``w_avg``.
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
                 num_ws: int | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MappingNetwork: num_layers={num_layers} must be >= 1")
        self.z_dim, self.w_dim, self.num_layers, self.num_ws = z_dim, w_dim, num_layers, num_ws
        self.w_avg_beta = w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(dims[i], dims[i + 1], lr_multiplier=lr_multiplier,
                           activation="lrelu") for i in range(num_layers))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = True) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"MappingNetwork: z must be (N, {self.z_dim}), got "
                             f"{tuple(z.shape)}")
        x = pixel_norm(z)  # (N, z_dim), unit mean square
        for layer in self.layers:
            x = layer(x)  # (N, w_dim)
        if self.training and update_w_avg:
            self.track(x)
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (N, num_ws, w_dim)
        if truncation_psi != 1.0:
            x = self.truncate(x, truncation_psi, truncation_cutoff)
        return x

    @torch.no_grad()
    def track(self, w: torch.Tensor) -> None:
        """Move ``w_avg`` toward the mean of ``w`` ``(N, w_dim)``:
        ``w_avg <- mean(w) + beta * (w_avg - mean(w))``."""
        batch_mean = w.detach().to(self.w_avg.dtype).mean(dim=0)
        self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))

    def truncate(self, w: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        """Truncation trick: ``w_avg + psi * (w - w_avg)``.

        ``w`` ``(N, w_dim)`` or ``(N, num_ws, w_dim)``; with ``cutoff`` (3-D ``w`` only) only
        styles ``0 .. cutoff - 1`` (the coarse resolutions) are truncated. psi = 1 is the
        identity, psi = 0 gives ``w_avg``.
        """
        avg = self.w_avg.to(w.dtype)
        if cutoff is None:
            return avg.lerp(w, psi)
        if w.ndim != 3:
            raise ValueError(f"MappingNetwork.truncate: cutoff needs ws (N, num_ws, w_dim), got "
                             f"{tuple(w.shape)}")
        return torch.cat([avg.lerp(w[:, :cutoff], psi), w[:, cutoff:]], dim=1)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, " \
               f"w_avg_beta={self.w_avg_beta}"


# ------------------------------------------------------------------------------------ synthesis


class _SynthesisLayer(nn.Module):
    """Modulated 3x3 conv ``(N, in, H, W) -> (N, out, H * up, W * up)`` driven by one style.

    ``styles = affine(w)`` ``(N, in)`` (affine bias initialised to 1, so modulation starts at
    identity scale); ``modulated_conv2d`` with the weight scaled by ``1 / sqrt(in * 9)`` and
    demodulation; ``+ noise_strength * noise`` with ``noise`` ``(N, 1, H', W')`` N(0, 1) per call
    (``"random"``), the fixed buffer ``noise_const`` (``"const"``) or nothing (``"none"``);
    then bias, ``lrelu * sqrt(2)`` and the optional clamp.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, \
            out_channels, resolution, up
        self.conv_clamp, self.impl = conv_clamp, impl
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        # shape (1,), not a 0-dim scalar: FSDP2's fully_shard refuses scalar parameters
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)  # (N, in)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True,
                             up=self.up, impl=self.impl)  # (N, out, res, res)
        # in x's dtype: the (1,)-shaped fp32 strength would otherwise promote a bf16 block's
        # activations to fp32
        strength = self.noise_strength.to(x.dtype)
        if noise is not None:  # given (N, 1, res, res) draws stand in for "random"
            x = x + noise.to(x.dtype) * strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution,
                                device=x.device, dtype=x.dtype)
            x = x + noise * strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * strength
        return _bias_act(x, self.bias, "lrelu", self.conv_clamp)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, resolution={self.resolution}, " \
               f"up={self.up}, impl={self.impl}"


class _ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation ``(N, in, H, W) -> (N, img_channels, H, W)``:
    weight scaled by ``1 / sqrt(in)``, plus bias, linear, optionally clamped."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int,
                 conv_clamp: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.conv_clamp, self.impl = conv_clamp, impl
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (N, in)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=False,
                             impl=self.impl)
        return _bias_act(x, self.bias, None, self.conv_clamp)  # (N, img_channels, H, W)


class _SynthesisBlock(nn.Module):
    """Resolution ``r``: ``(x (N, C_{r/2}, r/2, r/2) | None, img (N, C_img, r/2, r/2) | None,
    ws (N, k, w_dim))`` -> ``(x (N, C_r, r, r), img (N, C_img, r, r))``.

    At 4x4 ``x`` starts as the learned ``const`` ``(C_4, 4, 4)`` and the block has one conv
    (``k = 2`` styles: conv, toRGB); above, an up-conv and a conv (``k = 3``: up-conv, conv,
    toRGB). ``img = upsample2d(img) + toRGB(x)`` (``img`` is ``toRGB(x)`` at 4x4).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, conv_clamp: float | None, impl: str,
                 bf16: bool = False) -> None:
        super().__init__()
        self.resolution, self.bf16 = resolution, bf16
        if resolution == MIN_RESOLUTION:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = _SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                         conv_clamp=conv_clamp, impl=impl)
            self.register_buffer("blur", setup_filter(BLUR_TAPS), persistent=False)
        self.conv1 = _SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                     conv_clamp=conv_clamp, impl=impl)
        self.torgb = _ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp, impl=impl)
        self.num_conv = 1 if self.conv0 is None else 2

    @property
    def noise_numel(self) -> int:
        """Noise values one sample's convolutions take (``num_conv`` maps of ``r x r``)."""
        return self.num_conv * self.resolution ** 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.resolution
        maps = [None, None] if noise is None else list(noise.reshape(-1, self.num_conv, 1, r, r)
                                                       .unbind(1)) + [None]
        with _compute_dtype(ws.device, self.bf16):
            if self.conv0 is None:
                x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
                x = self.conv1(x, ws[:, 0], noise_mode, maps[0])
            else:
                x = self.conv1(self.conv0(x, ws[:, 0], noise_mode, maps[0]), ws[:, 1],
                               noise_mode, maps[1])
            y = _full(self.torgb(x, ws[:, self.num_conv]))  # the image stays in fp32
        img = y if img is None else upsample2d(img, self.blur, up=2) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws (N, num_ws, w_dim) -> images (N, img_channels, resolution, resolution)``.

    Blocks ``blocks[str(r)]`` for r = 4 .. resolution (see :class:`_SynthesisBlock`); block ``r``
    reads styles ``2 log2(r) - 4 ..`` (its convs, then its toRGB, which shares the next block's
    first style). ``noise_mode``: ``"random"`` (fresh N(0, 1) per call), ``"const"`` (the
    registered ``noise_const`` buffers, deterministic) or ``"none"``. Linear output (no tanh).
    """

    def __init__(self, w_dim: int = 512, resolution: int = 1024, img_channels: int = 3,
                 channel_base: int = 32768, channel_max: int = 512,
                 conv_clamp: float | None = None, impl: str = "auto",
                 bf16_resolutions: int = 0) -> None:
        super().__init__()
        _check_architecture("SynthesisNetwork", resolution, img_channels, channel_base,
                            channel_max)
        self.w_dim, self.resolution, self.img_channels = w_dim, resolution, img_channels
        self.num_ws = num_ws_for(resolution)
        self.blocks = nn.ModuleDict()
        for r in _resolutions(resolution):
            c_in = channels_at(r // 2, channel_base, channel_max) if r > MIN_RESOLUTION else 0
            self.blocks[str(r)] = _SynthesisBlock(
                c_in, channels_at(r, channel_base, channel_max), w_dim, r, img_channels,
                conv_clamp, impl, bf16=_in_bf16(r, resolution, bf16_resolutions))
        self.noise_numel = sum(b.noise_numel for b in self.blocks.values())
        """Length of the ``noise`` rows :meth:`forward` takes."""

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` ``(N, noise_numel)``: every layer's per-pixel noise, block by block (4x4
        first), stands in for ``noise_mode="random"`` (so a caller decides where the draws come
        from)."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"SynthesisNetwork: ws must be (N, {self.num_ws}, {self.w_dim}), "
                             f"got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"SynthesisNetwork: noise_mode={noise_mode!r} must be one of "
                             f"{NOISE_MODES}")
        if noise is not None and tuple(noise.shape) != (ws.shape[0], self.noise_numel):
            raise ValueError(f"SynthesisNetwork: noise must be ({ws.shape[0]}, "
                             f"{self.noise_numel}), got {tuple(noise.shape)}")
        x = img = None
        first = at = 0
        for block in self.blocks.values():
            part = None if noise is None else noise[:, at:at + block.noise_numel]
            x, img = block(x, img, ws[:, first:first + block.num_conv + 1], noise_mode, part)
            first += block.num_conv
            at += block.noise_numel
        return img  # (N, img_channels, resolution, resolution)


class Generator(nn.Module):
    """StyleGAN2 generator ``G(z) = synthesis(mapping(z))``.

    ``forward(z (N, z_dim), truncation_psi=1.0, noise_mode="random", return_ws=False,
    truncation_cutoff=None)`` -> images ``(N, img_channels, resolution, resolution)`` (and
    ``ws (N, num_ws, w_dim)`` with ``return_ws``); see :meth:`MappingNetwork.truncate`.
    ``mapping`` and ``synthesis`` are submodules to be called separately for style mixing and
    path-length regularisation.
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, resolution: int = 1024,
                 img_channels: int = 3, channel_base: int = 32768, channel_max: int = 512,
                 mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995, conv_clamp: float | None = None,
                 impl: str = "auto", bf16_resolutions: int = 0) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.resolution, self.img_channels = z_dim, w_dim, resolution, \
            img_channels
        self.synthesis = SynthesisNetwork(w_dim, resolution, img_channels, channel_base,
                                          channel_max, conv_clamp=conv_clamp, impl=impl,
                                          bf16_resolutions=bf16_resolutions)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_multiplier,
                                      w_avg_beta, num_ws=self.num_ws)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random",
                return_ws: bool = False, truncation_cutoff: int | None = None, *,
                noise: torch.Tensor | None = None, mix_z: torch.Tensor | None = None,
                mix_cutoff: torch.Tensor | None = None, update_w_avg: bool = True,
                ws_probe: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Style mixing (training): ``mix_z`` ``(N, z_dim)`` second latents and ``mix_cutoff``
        ``(N,)`` integers in ``[1, num_ws]``: sample ``n`` takes the styles of ``mix_z[n]``
        from style ``mix_cutoff[n]`` on (``num_ws``: no mixing); both latents go through one
        mapping call, ``w_avg`` follows ``z``'s alone. ``noise``: see
        :meth:`SynthesisNetwork.forward`. The ``ws`` returned are the ones synthesis read
        (mixed). ``ws_probe`` ``(N, num_ws, w_dim)`` zeros added to those styles: a loss's
        gradient w.r.t. the probe is its gradient w.r.t. the styles (the path-length penalty),
        taken through an input of the call, since a data-parallel wrapper (DDP, ZeRO-3) hands
        back new output tensors that the graph of the image does not reach."""
        if mix_z is None:
            ws = self.mapping(z, truncation_psi=truncation_psi,
                              truncation_cutoff=truncation_cutoff,
                              update_w_avg=update_w_avg)  # (N, num_ws, w_dim)
        else:
            both = self.mapping(torch.cat([z, mix_z]), update_w_avg=False)  # (2N, num_ws, w)
            ws, ws2 = both.chunk(2)
            if self.training and update_w_avg:
                self.mapping.track(ws[:, 0])
            take = torch.arange(self.num_ws, device=ws.device)[None, :, None] \
                >= mix_cutoff.to(ws.device)[:, None, None]  # (N, num_ws, 1)
            ws = torch.where(take, ws2, ws)
        if ws_probe is not None:
            ws = ws + ws_probe.to(ws.dtype)  # adds exact zeros: the same styles
        img = self.synthesis(ws, noise_mode=noise_mode, noise=noise)  # (N, C, R, R)
        return (img, ws) if return_ws else img

    def named_units(self):
        """The sharding units: the mapping network and each synthesis block."""
        yield "mapping", self.mapping
        for r, block in self.synthesis.blocks.items():
            yield f"synthesis.blocks.{r}", block


# -------------------------------------------------------------------------------- discriminator


class _DBlock(nn.Module):
    """Residual block at resolution ``r``: ``(N, C_r, r, r) -> (N, C_{r/2}, r/2, r/2)``,
    ``(conv3x3_down(conv3x3(x)) + conv1x1(downsample2d(x))) / sqrt(2)`` (the ``1/sqrt(2)`` as
    the ``gain`` of both paths)."""

    def __init__(self, in_channels: int, out_channels: int, conv_clamp: float | None) -> None:
        super().__init__()
        half = math.sqrt(0.5)
        self.conv0 = _Conv2d(in_channels, in_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = _Conv2d(in_channels, out_channels, 3, down=2, gain=half,
                             conv_clamp=conv_clamp)
        self.skip = _Conv2d(in_channels, out_channels, 1, bias=False, activation=None, down=2,
                            gain=half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)  # (N, C_{r/2}, r/2, r/2)
        return self.conv1(self.conv0(x)) + y


class _DEpilogue(nn.Module):
    """4x4: ``(N, C, 4, 4) -> (N, 1)``: minibatch stddev (``+ num_channels`` maps), conv3x3
    lrelu, flatten, FC ``C*16 -> C`` lrelu, FC ``C -> 1`` linear."""

    def __init__(self, channels: int, mbstd_group_size: int, mbstd_num_channels: int,
                 conv_clamp: float | None) -> None:
        super().__init__()
        self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
        self.conv = _Conv2d(channels + mbstd_num_channels, channels, 3, conv_clamp=conv_clamp)
        self.fc = FullyConnected(channels * 16, channels, activation="lrelu")
        self.out = FullyConnected(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.conv(x)  # (N, C, 4, 4)
        return self.out(self.fc(x.flatten(1)))  # (N, 1)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: images ``(N, img_channels, R, R)`` -> logits ``(N, 1)``.

    ``from_rgb`` (1x1 conv, lrelu) to ``C_R`` channels, ``blocks[str(r)]`` for r = R .. 8
    (:class:`_DBlock`), ``epilogue`` at 4x4 (:class:`_DEpilogue`). The minibatch stddev is
    :func:`scalegan.ops.minibatch_stddev`: the same statistic as StyleGAN2's (per feature the
    biased std ``sqrt(var + 1e-8)`` over a group of ``min(group_size, N)`` samples, averaged over
    each channel group and all pixels), but the groups are consecutive samples where StyleGAN2
    takes strided ones (sample ``i`` in group ``i mod (N / G)``), so both agree up to which
    samples are grouped, exactly when the batch is one group.

    At 1024^2, config F: 29,012,513 parameters (fromRGB 128, blocks 22,452,640, epilogue
    6,559,745), 608 (0.002%) more than the 29,011,905 quoted for the official code.
    """

    def __init__(self, resolution: int = 1024, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 conv_clamp: float | None = None, bf16_resolutions: int = 0) -> None:
        super().__init__()
        _check_architecture("Discriminator", resolution, img_channels, channel_base, channel_max)
        self.resolution, self.img_channels = resolution, img_channels

        def ch(r: int) -> int:
            return channels_at(r, channel_base, channel_max)

        self.from_rgb = _Conv2d(img_channels, ch(resolution), 1, conv_clamp=conv_clamp)
        self.blocks = nn.ModuleDict(
            (str(r), _DBlock(ch(r), ch(r // 2), conv_clamp))
            for r in reversed(_resolutions(resolution)) if r > MIN_RESOLUTION)
        self.epilogue = _DEpilogue(ch(MIN_RESOLUTION), mbstd_group_size, mbstd_num_channels,
                                   conv_clamp)
        self.bf16 = {r: _in_bf16(r, resolution, bf16_resolutions)
                     for r in _resolutions(resolution)}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, r, r):
            raise ValueError(f"Discriminator: images must be (N, {self.img_channels}, {r}, {r}), "
                             f"got {tuple(img.shape)}")
        with _compute_dtype(img.device, self.bf16[r]):
            x = self.from_rgb(img)  # (N, C_R, R, R)
        for key, block in self.blocks.items():
            bf16 = self.bf16[int(key)]
            with _compute_dtype(img.device, bf16):
                x = block(x if bf16 else _full(x))  # halves the resolution
        return self.epilogue(_full(x))  # (N, 1), fp32
