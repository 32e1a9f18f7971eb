"""StackGAN-v2 (Zhang et al. 2018, "StackGAN++"): a tree of generator stages, one image per
stage (64^2, 128^2, 256^2, ... with ``num_stages``), one discriminator per stage, trained jointly.

Generator: z (and the condition) -> a 4x4 map -> upsampling blocks -> the features of stage 0 at
``base_resolution`` (64^2 as published; smaller bases make quick CPU models); every further stage
joins the previous features with the condition, refines them with two residual blocks and doubles
the resolution. Each stage turns its features into an image (3x3 conv + tanh). Channels:
``gf_dim * 16`` at 4x4 down to ``gf_dim`` at 64^2 (halved per upsampling), then halved per stage
(at least ``min_channels``).

Departures from the published code, and why:

* Normalisation is per sample (pixel norm, as in the progressive G) instead of BatchNorm:
  BatchNorm couples the samples of a batch, which the ranks of a sharded run do not share, so a
  data-parallel run could not reproduce a single-process run.
* Upsampling blocks use :func:`scalegan.ops.upsample_conv2d` (nearest 2x fused into the 3x3
  convolution) with equalized-learning-rate weights, like the progressive models.

Conditioning (``condition``): ``"none"``; ``"label"``, a class id embedded to ``cond_dim``;
``"embedding"``, a vector (attributes, text embedding) of ``embedding_dim`` passed through
conditioning augmentation: ``c = mu + sigma * eps`` with ``(mu, log sigma^2)`` from a linear
layer and ``eps`` passed in by the caller (so a data-parallel run can draw it for the global
batch), and the KL term ``scalegan.losses.kl_divergence(mu, logvar)`` added to G's loss.

Architecture only: no device or distributed logic.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scalegan.models.layers import EqualizedConv2d, EqualizedLinear, PixelNorm, UpConv2d

__all__ = ["ConditioningAugmentation", "StackGenerator", "StackDiscriminator", "stage_resolutions"]

BASE_RESOLUTION = 64
Condition = Literal["none", "label", "embedding"]


def stage_resolutions(num_stages: int, base_resolution: int = BASE_RESOLUTION) -> list[int]:
    """[64, 128, ...]: the image side of each stage."""
    return [base_resolution * 2 ** i for i in range(num_stages)]


class ConditioningAugmentation(nn.Module):
    """``e`` ``(N, embedding_dim)`` -> ``(c, mu, logvar)``, each ``(N, cond_dim)``;
    ``c = mu + exp(logvar / 2) * eps`` with the standard-normal ``eps`` ``(N, cond_dim)`` given
    (drawn here when None). ``eps = 0`` gives the mean: what sampling for display uses."""

    def __init__(self, embedding_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.fc = EqualizedLinear(embedding_dim, 2 * cond_dim)
        self.cond_dim = cond_dim

    def forward(self, e: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = F.leaky_relu(self.fc(e), 0.2).chunk(2, dim=1)
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype), mu, logvar


class _Condition(nn.Module):
    """Maps the raw condition to the vector ``c`` G and D join: an embedded label or the
    conditioning-augmented embedding. ``forward`` -> ``(c, mu, logvar)`` (mu/logvar None for
    labels)."""

    def __init__(self, condition: Condition, cond_dim: int, num_classes: int,
                 embedding_dim: int) -> None:
        super().__init__()
        self.condition = condition
        if condition == "label":
            self.embed = nn.Embedding(num_classes, cond_dim)
        elif condition == "embedding":
            self.ca = ConditioningAugmentation(embedding_dim, cond_dim)

    def forward(self, cond: torch.Tensor, eps: torch.Tensor | None = None):
        if self.condition == "label":
            return self.embed(cond), None, None
        return self.ca(cond, eps)


class _UpBlock(nn.Module):
    """``(N, C_in, R, R)`` -> ``(N, C_out, 2R, 2R)``: fused nearest-2x + conv3x3 + lrelu, pixel
    norm."""

    def __init__(self, c_in: int, c_out: int, ops_impl: str) -> None:
        super().__init__()
        self.conv = UpConv2d(c_in, c_out, activation="lrelu", impl=ops_impl)
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _ResBlock(nn.Module):
    """``x + conv(lrelu(conv(x)))``, shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(channels, channels, 3)
        self.conv1 = EqualizedConv2d(channels, channels, 3, gain=1.0)
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.conv1(F.leaky_relu(self.conv0(x), 0.2)))


class _InitStage(nn.Module):
    """``(N, latent_dim + cond)`` -> features ``(N, gf_dim, base, base)``."""

    def __init__(self, in_dim: int, gf_dim: int, base_resolution: int, ops_impl: str) -> None:
        super().__init__()
        ups = base_resolution.bit_length() - 3  # 4x4 -> base: log2(base / 4) upsamplings
        chans = [gf_dim * 2 ** (ups - i) for i in range(ups + 1)]  # 16g, 8g, ..., g at 64^2
        self.c0 = chans[0]
        self.fc = EqualizedLinear(in_dim, self.c0 * 16)
        self.norm = PixelNorm()
        self.up = nn.Sequential(*[_UpBlock(a, b, ops_impl)
                                  for a, b in zip(chans[:-1], chans[1:], strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.leaky_relu(self.fc(x), 0.2).reshape(-1, self.c0, 4, 4))  # (N, 16g, 4, 4)
        return self.up(h)  # (N, gf_dim, base, base)


class _NextStage(nn.Module):
    """``(N, C, R, R)`` features (+ condition maps) -> ``(N, C_out, 2R, 2R)``."""

    def __init__(self, channels: int, out_channels: int, cond_dim: int, ops_impl: str) -> None:
        super().__init__()
        self.joint = EqualizedConv2d(channels + cond_dim, channels, 3)
        self.norm = PixelNorm()
        self.res = nn.Sequential(_ResBlock(channels), _ResBlock(channels))
        self.up = _UpBlock(channels, out_channels, ops_impl)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is not None:  # the condition, replicated over every pixel
            h = torch.cat([h, c[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        h = self.norm(F.leaky_relu(self.joint(h), 0.2))
        return self.up(self.res(h))


class StackGenerator(nn.Module):
    """``G(z, cond=None, eps=None)`` -> ``(images, mu, logvar)``: ``images`` a list of
    ``num_stages`` tensors ``(N, img_channels, base * 2^i, base * 2^i)`` in [-1, 1];
    ``mu``/``logvar`` of the conditioning augmentation (None unless ``condition == "embedding"``).

    ``cond``: class ids ``(N,)`` (``"label"``) or vectors ``(N, embedding_dim)``
    (``"embedding"``); ``eps`` ``(N, cond_dim)``: the conditioning augmentation's noise.
    Submodules: ``stages[str(i)]`` and ``to_rgb[str(i)]`` per stage.
    """

    def __init__(self, num_stages: int = 3, latent_dim: int = 100, gf_dim: int = 32,
                 img_channels: int = 3, condition: Condition = "none", cond_dim: int = 128,
                 num_classes: int = 0, embedding_dim: int = 0, min_channels: int = 8,
                 base_resolution: int = BASE_RESOLUTION, ops_impl: str = "auto") -> None:
        super().__init__()
        if base_resolution < 8 or base_resolution & (base_resolution - 1):
            raise ValueError(f"StackGenerator: base_resolution must be a power of two >= 8, got "
                             f"{base_resolution}")
        if num_stages < 1:
            raise ValueError(f"StackGenerator: num_stages must be >= 1, got {num_stages}")
        if condition == "label" and num_classes < 1:
            raise ValueError("StackGenerator: condition='label' needs num_classes >= 1")
        if condition == "embedding" and embedding_dim < 1:
            raise ValueError("StackGenerator: condition='embedding' needs embedding_dim >= 1")
        self.num_stages, self.latent_dim, self.condition = num_stages, latent_dim, condition
        self.resolutions = stage_resolutions(num_stages, base_resolution)
        self.cond_dim = cond_dim
        c_dim = 0 if condition == "none" else cond_dim
        self.cond = _Condition(condition, cond_dim, num_classes, embedding_dim) if c_dim else None
        self.stages = nn.ModuleDict({
            "0": _InitStage(latent_dim + c_dim, gf_dim, base_resolution, ops_impl)})
        chans = [gf_dim]
        for i in range(1, num_stages):
            chans.append(max(min_channels, chans[-1] // 2))
            self.stages[str(i)] = _NextStage(chans[-2], chans[-1], c_dim, ops_impl)
        self.to_rgb = nn.ModuleDict({
            str(i): EqualizedConv2d(c, img_channels, 3, gain=1.0) for i, c in enumerate(chans)})

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None,
                eps: torch.Tensor | None = None):
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"StackGenerator: z must be (N, {self.latent_dim}), got "
                             f"{tuple(z.shape)}")
        if (cond is None) != (self.cond is None):
            raise ValueError(f"StackGenerator: condition={self.condition!r} "
                             f"{'needs' if self.cond is not None else 'takes no'} cond")
        c = mu = logvar = None
        if self.cond is not None:
            c, mu, logvar = self.cond(cond, eps)
        h = self.stages["0"](z if c is None else torch.cat([z, c], dim=1))  # (N, gf, base, base)
        images = [torch.tanh(self.to_rgb["0"](h))]
        for i in range(1, self.num_stages):
            h = self.stages[str(i)](h, c)  # (N, C_i, 64 * 2^i, 64 * 2^i)
            images.append(torch.tanh(self.to_rgb[str(i)](h)))
        return images, mu, logvar


class _StageD(nn.Module):
    """One stage's D: ``(N, C, R, R)`` -> unconditional logits ``(N,)`` and, when conditional,
    logits of (image, condition) ``(N,)``. Stride-2 4x4 convs down to 4x4 (channels ``df_dim``
    doubling up to ``df_dim * 8``), then a 4x4 conv to one logit."""

    def __init__(self, resolution: int, img_channels: int, df_dim: int, cond_dim: int) -> None:
        super().__init__()
        layers, c_in, c, r = [], img_channels, df_dim, resolution
        while r > 4:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, c, r = c, min(c * 2, df_dim * 8), r // 2
        self.down = nn.Sequential(*layers)
        self.logit = nn.Conv2d(c_in, 1, 4)
        self.cond_dim = cond_dim
        if cond_dim:
            self.joint = nn.Sequential(nn.Conv2d(c_in + cond_dim, c_in, 3, 1, 1),
                                       nn.LeakyReLU(0.2))
            self.cond_logit = nn.Conv2d(c_in, 1, 4)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None):
        h = self.down(img)  # (N, C, 4, 4)
        # (N, 1, 1, 1) -> (N,) as a new tensor, not a view: FSDP warns about views it returns
        uncond = self.logit(h).sum((1, 2, 3))
        if c is None:
            return uncond, None
        h = self.joint(torch.cat([h, c[:, :, None, None].expand(-1, -1, 4, 4)], dim=1))
        return uncond, self.cond_logit(h).sum((1, 2, 3))


class StackDiscriminator(nn.Module):
    """One discriminator per stage: ``D(images, cond=None)`` -> ``(uncond, cond_logits)``, lists
    of ``(N,)`` logits per stage (``cond_logits`` None when unconditional).

    Conditional D's see the condition as a label embedding or, for vectors, the conditioning
    augmentation's mean ``mu`` (as in StackGAN-v2, D uses the mean, not a sample).
    """

    def __init__(self, num_stages: int = 3, img_channels: int = 3, df_dim: int = 32,
                 condition: Condition = "none", cond_dim: int = 128, num_classes: int = 0,
                 embedding_dim: int = 0, base_resolution: int = BASE_RESOLUTION) -> None:
        super().__init__()
        self.num_stages, self.condition = num_stages, condition
        c_dim = 0 if condition == "none" else cond_dim
        self.cond = _Condition(condition, cond_dim, num_classes, embedding_dim) if c_dim else None
        self.stages = nn.ModuleDict({
            str(i): _StageD(r, img_channels, df_dim, c_dim)
            for i, r in enumerate(stage_resolutions(num_stages, base_resolution))})

    def forward(self, images: list[torch.Tensor], cond: torch.Tensor | None = None):
        if len(images) != self.num_stages:
            raise ValueError(f"StackDiscriminator: expected {self.num_stages} images (one per "
                             f"stage), got {len(images)}")
        c = None
        if self.cond is not None:
            c, mu, _ = self.cond(cond)
            c = c if mu is None else mu
        outs = [self.stages[str(i)](img, c) for i, img in enumerate(images)]
        uncond = [u for u, _ in outs]
        return uncond, (None if c is None else [k for _, k in outs])
