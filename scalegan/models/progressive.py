"""Progressive GAN generator and discriminator (Karras et al. 2018, "Progressive Growing of GANs").

Both networks hold the blocks of every resolution from 4 to ``cfg.resolution`` from construction,
each its own submodule in a ``ModuleDict`` keyed by the resolution as a string (``blocks["64"]``),
so a sharding / checkpointing wrapper can wrap blocks one by one. ``forward(x, resolution, alpha)``
runs only the blocks up to ``resolution``; while a new resolution fades in (``alpha < 1``) the
output is a linear blend with the path of the previous resolution, which is exactly the previous
network at ``alpha = 0``.

Blocks and layers that ``forward`` does not use for a given (resolution, alpha) get no gradient
(``.grad`` stays None): the toRGB / fromRGB of ``resolution / 2`` is used only while ``alpha < 1``.

Conditioning on class labels (``cfg.condition == "label"``; ``cond`` a LongTensor ``(N,)`` of
class ids, ``None`` for an unconditional model). The label layers live in the 4x4 blocks, which
run at every resolution, as ``blocks["4"].embed``:

* G (Mirza & Osindero 2014): ``embed`` an ``nn.Embedding(num_classes, cond_dim)``. The dense
  layer reads ``concat(pixel_norm(z), pixel_norm(embed(cond)))``: z is normalised alone exactly
  as in PGGAN (its normalisation does not depend on the label), and the embedding is normalised
  on its own to the same unit mean square, so neither part can outgrow the other however the
  embedding's scale drifts in training.
* D, ``cfg.cond_d == "concat"``: ``embed`` an ``nn.Embedding(num_classes, cond_dim)``, replicated
  over the 4x4 map and joined (after the minibatch-stddev channels) to the input of the final
  block's 3x3 conv, which then reads C + F + cond_dim channels. Joining at the 4x4 map rather than
  at the image keeps one fromRGB per resolution.
* D, ``cfg.cond_d == "projection"`` (Miyato & Koyama 2018): ``logit = dense1(phi) + <e_y, phi>``
  with ``phi`` ``(N, C)`` the output of ``dense0`` (after its leaky ReLU) and ``e_y`` row ``y``
  of ``embed``, an equalized-LR :class:`EqualizedLinear` ``(C -> num_classes, gain 1, no bias)``
  used as a table: its stored ``weight`` ``(num_classes, C)`` ~ N(0, 1) is scaled by
  ``1 / sqrt(C)`` like ``dense1``'s, so the two terms start at the same scale.

The ``nn.Embedding`` tables are N(0, 1) (torch's default): unit-scale stored values, as equalized
LR keeps every weight, with no fan-in to scale by. An unconditional model has exactly the
parameters (and state-dict keys) it had before conditioning existed.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from scalegan.config import ModelConfig
from scalegan.models.layers import (
    LRELU_SLOPE,
    SQRT2,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchDiscrimination,
    MinibatchStddev,
    PixelNorm,
    UpConv2d,
    check_labels,
    downsample_avg2x,
    upsample_nearest2x,
)

__all__ = ["ProgressiveGenerator", "ProgressiveDiscriminator"]

MIN_RESOLUTION = 4


def _resolutions(max_res: int) -> list[int]:
    """[4, 8, ..., max_res]."""
    return [2 ** i for i in range(2, int(math.log2(max_res)) + 1)]


def _check_resolution(resolution: int, max_res: int, who: str) -> int:
    """``resolution`` as an int; ValueError unless it is a power of two in [4, max_res].

    numpy / 0-d integer tensors are accepted, bools, floats and strings are not.
    """
    try:
        r = operator.index(resolution) if not isinstance(resolution, bool) else None
    except TypeError:
        r = None
    if r is None or not (MIN_RESOLUTION <= r <= max_res and r & (r - 1) == 0):
        raise ValueError(f"{who}: resolution={resolution!r} must be a power of two from "
                         f"{MIN_RESOLUTION} to {max_res}")
    return r


def _check_alpha(alpha: float, who: str) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{who}: alpha={alpha!r} must be in [0, 1]")
    return alpha


def _num_classes(cfg: ModelConfig) -> int:
    """Classes the networks are conditioned on: 0 unless ``cfg.condition == "label"``."""
    return cfg.num_classes if cfg.condition == "label" else 0


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """``a + t * (b - a)``: exactly ``a`` at t = 0; unlike torch.lerp it promotes mixed dtypes."""
    return a + t * (b - a)


# --------------------------------------------------------------------------------------- generator


class _GInitialBlock(nn.Module):
    """4x4 block: ``z`` ``(N, latent)`` [and class ids ``cond`` ``(N,)``] -> ``(N, C, 4, 4)``.

    PixelNorm(z) [joined to PixelNorm(embed(cond))] -> dense to C*16 -> reshape -> +bias -> lrelu
    -> PixelNorm -> conv3x3 -> lrelu -> PixelNorm.
    """

    def __init__(self, latent_dim: int, channels: int, num_classes: int = 0,
                 cond_dim: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.norm_z = PixelNorm()
        if num_classes:
            self.embed = nn.Embedding(num_classes, cond_dim)
            self.norm_c = PixelNorm()
        else:
            self.embed, cond_dim = None, 0
        # gain sqrt(2)/4 and one bias per channel (not per output unit) follow the official PGGAN
        # code: the dense layer is a "4x4 transposed conv" of the 1x1 latent, so its bias is
        # per feature map like every conv bias. The gain only sets the effective step size of
        # this layer (a PixelNorm follows, so forward values are scale-free).
        self.dense = EqualizedLinear(latent_dim + cond_dim, channels * 16, gain=SQRT2 / 4,
                                     bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.norm0 = PixelNorm()
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.norm1 = PixelNorm()

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm_z(z)  # (N, latent), unit mean square
        if self.embed is not None:
            c = self.norm_c(self.embed(cond).to(x.dtype))  # (N, cond_dim), unit mean square
            x = torch.cat([x, c], dim=1)  # (N, latent + cond_dim)
        x = self.dense(x)  # (N, C*16)
        x = x.reshape(-1, self.channels, 4, 4) + self.bias.reshape(1, -1, 1, 1)  # (N, C, 4, 4)
        x = self.norm0(self.act(x))
        return self.norm1(self.act(self.conv(x)))  # (N, C, 4, 4)


def _units_in_use(res: int, alpha: float, rgb: str) -> set[str]:
    """Blocks up to ``res``, the RGB layer of ``res``, and that of ``res / 2`` while fading in."""
    units = {f"blocks.{r}" for r in _resolutions(res)} | {f"{rgb}.{res}"}
    if res > MIN_RESOLUTION and alpha < 1.0:
        units.add(f"{rgb}.{res // 2}")
    return units


class _GBlock(nn.Module):
    """Block at resolution r: ``(N, C_in, r/2, r/2)`` -> ``(N, C_out, r, r)``.

    UpConv2d (nearest 2x + conv3x3 + lrelu, one fused op) -> PixelNorm -> conv3x3 -> lrelu ->
    PixelNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, ops_impl: str = "auto") -> None:
        super().__init__()
        self.conv0 = UpConv2d(in_channels, out_channels, activation="lrelu", impl=ops_impl)
        self.norm0 = PixelNorm()
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.norm1 = PixelNorm()
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm0(self.conv0(x))  # (N, C_out, r, r)
        return self.norm1(self.act(self.conv1(x)))  # (N, C_out, r, r)


class ProgressiveGenerator(nn.Module):
    """PGGAN generator: ``G(z, resolution, alpha=1.0, cond=None)``.

    ``z`` ``(N, latent_dim)`` -> image ``(N, img_channels, resolution, resolution)`` (linear output,
    no tanh, as in PGGAN). ``resolution`` is a power of two from 4 to ``cfg.resolution``; ``alpha``
    in [0, 1] fades in the block of ``resolution``: the output is
    ``lerp(upsample_nearest2x(toRGB_{r/2}(h_{r/2})), toRGB_r(h_r), alpha)``.

    Submodules: ``blocks[str(r)]`` (the 4x4 block maps z -> features) and ``to_rgb[str(r)]``
    (1x1 conv, gain 1) for every r in 4..cfg.resolution; when conditional
    (``cfg.condition == "label"``), ``blocks["4"].embed`` (see the module docstring) and ``cond``,
    the class ids ``(N,)``, is required.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_classes = _num_classes(cfg)
        self.latent_dim = cfg.latent_dim
        self.img_channels = cfg.img_channels
        self.resolution = cfg.resolution
        self.min_resolution = MIN_RESOLUTION
        self.resolutions = _resolutions(cfg.resolution)
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        for r in self.resolutions:
            c = cfg.channels(r)
            if r == MIN_RESOLUTION:
                self.blocks[str(r)] = _GInitialBlock(cfg.latent_dim, c, self.num_classes,
                                                     cfg.cond_dim)
            else:
                self.blocks[str(r)] = _GBlock(cfg.channels(r // 2), c, cfg.ops_impl)
            self.to_rgb[str(r)] = EqualizedConv2d(c, cfg.img_channels, 1, gain=1.0)

    def units_in_use(self, resolution: int, alpha: float) -> set[str]:
        """Names (``"blocks.8"``, ``"to_rgb.16"``) of the submodules ``forward`` runs."""
        return _units_in_use(resolution, alpha, "to_rgb")

    def forward(self, z: torch.Tensor, resolution: int, alpha: float = 1.0,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        res = _check_resolution(resolution, self.resolution, "ProgressiveGenerator")
        alpha = _check_alpha(alpha, "ProgressiveGenerator")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"ProgressiveGenerator: z must have shape (N, {self.latent_dim}), "
                             f"got {tuple(z.shape)}")
        check_labels(cond, self.num_classes, z.shape[0], "ProgressiveGenerator")
        first = self.blocks[str(MIN_RESOLUTION)]
        x = first(z) if cond is None else first(z, cond)  # (N, C_4, 4, 4)
        if res == MIN_RESOLUTION:
            return self.to_rgb[str(res)](x)  # (N, img_channels, 4, 4)
        r = 2 * MIN_RESOLUTION
        while r < res:
            x = self.blocks[str(r)](x)  # (N, C_r, r, r)
            r *= 2
        prev = x  # (N, C_{res/2}, res/2, res/2)
        out = self.to_rgb[str(res)](self.blocks[str(res)](prev))  # (N, img_channels, res, res)
        if alpha < 1.0:
            # toRGB before the upsample: a 1x1 conv commutes with nearest upsampling, and this way
            # it runs on 4x fewer pixels.
            skip = upsample_nearest2x(self.to_rgb[str(res // 2)](prev))  # (N, img_ch, res, res)
            out = _lerp(skip, out, alpha)
        return out


# ----------------------------------------------------------------------------------- discriminator


class _FromRGB(nn.Module):
    """1x1 conv + lrelu: ``(N, img_channels, r, r)`` -> ``(N, C_r, r, r)``."""

    def __init__(self, img_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = EqualizedConv2d(img_channels, channels, 1)
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(img))


class _DBlock(nn.Module):
    """Block at resolution r: ``(N, C_r, r, r)`` -> ``(N, C_{r/2}, r/2, r/2)``.

    conv3x3 (C_r -> C_r) -> lrelu -> conv3x3 (C_r -> C_{r/2}) -> lrelu -> avgpool 2x2.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv0(x))  # (N, C_r, r, r)
        x = self.act(self.conv1(x))  # (N, C_{r/2}, r, r)
        return downsample_avg2x(x)  # (N, C_{r/2}, r/2, r/2)


class _DFinalBlock(nn.Module):
    """4x4 block: ``(N, C, 4, 4)`` [and class ids ``cond`` ``(N,)``] -> logits ``(N,)``.

    [MinibatchStddev] [+ embed(cond) maps (concat)] -> conv3x3 (C + F [+ cond_dim] -> C) -> lrelu
    -> dense (C*16 -> C) -> lrelu = phi -> [MinibatchDiscrimination, C -> C + B] -> dense (-> 1,
    gain 1) [+ <embed_y, phi> (projection)].
    """

    def __init__(self, channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        extra = cfg.mbstd_num_channels if cfg.mbstd_group_size > 0 else 0
        self.mbstd = MinibatchStddev(cfg.mbstd_group_size, cfg.mbstd_num_channels,
                                     impl=cfg.ops_impl,
                                     across_ranks=cfg.mbstd_across_ranks) if extra else None
        num_classes = _num_classes(cfg)
        self.cond_d = cfg.cond_d if num_classes else None
        self.embed: nn.Module | None = None
        if self.cond_d == "concat":
            self.embed = nn.Embedding(num_classes, cfg.cond_dim)
            extra += cfg.cond_dim
        elif self.cond_d == "projection":
            self.embed = EqualizedLinear(channels, num_classes, gain=1.0, bias=False)
        self.conv = EqualizedConv2d(channels + extra, channels, 3)
        self.dense0 = EqualizedLinear(channels * 16, channels)
        self.mbdisc = (MinibatchDiscrimination(channels, cfg.mbdisc_kernels, cfg.mbdisc_dim,
                                               impl=cfg.ops_impl,
                                               across_ranks=cfg.mbdisc_across_ranks)
                       if cfg.mbdisc_kernels else None)
        self.dense1 = EqualizedLinear(channels + cfg.mbdisc_kernels, 1, gain=1.0)
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)  # (N, C + F, 4, 4)
        if self.cond_d == "concat":
            e = self.embed(cond).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, e], dim=1)  # (N, C + F + cond_dim, 4, 4)
        x = self.act(self.conv(x))  # (N, C, 4, 4)
        phi = self.act(self.dense0(x.flatten(1)))  # (N, C)
        x = self.mbdisc(phi) if self.mbdisc is not None else phi  # (N, C [+ B])
        logits = self.dense1(x).squeeze(1)  # (N,)
        if self.cond_d == "projection":
            e = self.embed.weight[cond] * self.embed.scale  # (N, C): rows of the scaled weight
            logits = logits + (e * phi).sum(1)
        return logits


class ProgressiveDiscriminator(nn.Module):
    """PGGAN discriminator: ``D(img, resolution, alpha=1.0, cond=None)``.

    ``img`` ``(N, img_channels, resolution, resolution)`` -> logits ``(N,)``. While fading in
    (``alpha < 1``) the features entering the block of ``resolution / 2`` are
    ``lerp(fromRGB_{r/2}(avgpool2x2(img)), block_r(fromRGB_r(img)), alpha)``.

    Submodules: ``from_rgb[str(r)]`` and ``blocks[str(r)]`` for every r in 4..cfg.resolution;
    ``blocks[str(r)]`` maps r -> r/2 for r >= 8, ``blocks["4"]`` is the final block (minibatch
    stddev when ``cfg.mbstd_group_size > 0``, conv, two dense layers). With minibatch stddev the
    batch size N must be divisible by ``min(cfg.mbstd_group_size, N)``. When conditional
    (``cfg.condition == "label"``), ``blocks["4"].embed`` joins the label as ``cfg.cond_d`` says
    (see the module docstring) and ``cond``, the class ids ``(N,)``, is required.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_classes = _num_classes(cfg)
        self.cond_d = cfg.cond_d if self.num_classes else None
        self.img_channels = cfg.img_channels
        self.resolution = cfg.resolution
        self.min_resolution = MIN_RESOLUTION
        self.resolutions = _resolutions(cfg.resolution)
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for r in self.resolutions:
            c = cfg.channels(r)
            self.from_rgb[str(r)] = _FromRGB(cfg.img_channels, c)
            if r == MIN_RESOLUTION:
                self.blocks[str(r)] = _DFinalBlock(c, cfg)
            else:
                self.blocks[str(r)] = _DBlock(c, cfg.channels(r // 2))

    def units_in_use(self, resolution: int, alpha: float) -> set[str]:
        """Names (``"blocks.8"``, ``"from_rgb.16"``) of the submodules ``forward`` runs."""
        return _units_in_use(resolution, alpha, "from_rgb")

    def forward(self, img: torch.Tensor, resolution: int, alpha: float = 1.0,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        res = _check_resolution(resolution, self.resolution, "ProgressiveDiscriminator")
        alpha = _check_alpha(alpha, "ProgressiveDiscriminator")
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, res, res):
            raise ValueError(f"ProgressiveDiscriminator: img must have shape "
                             f"(N, {self.img_channels}, {res}, {res}) at resolution {res}, "
                             f"got {tuple(img.shape)}")
        check_labels(cond, self.num_classes, img.shape[0], "ProgressiveDiscriminator")
        x = self.from_rgb[str(res)](img)  # (N, C_res, res, res)
        if res > MIN_RESOLUTION:
            x = self.blocks[str(res)](x)  # (N, C_{res/2}, res/2, res/2)
            if alpha < 1.0:
                skip = self.from_rgb[str(res // 2)](downsample_avg2x(img))  # same shape as x
                x = _lerp(skip, x, alpha)
            r = res // 2
            while r > MIN_RESOLUTION:
                x = self.blocks[str(r)](x)  # (N, C_{r/2}, r/2, r/2)
                r //= 2
        last = self.blocks[str(MIN_RESOLUTION)]
        return last(x) if cond is None else last(x, cond)  # (N,)
