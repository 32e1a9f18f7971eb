"""Generator / discriminator architectures of scalegan (architecture only: no device logic)."""

from __future__ import annotations

from torch import nn

from scalegan.config import ModelConfig
from scalegan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from scalegan.models.progressive import ProgressiveDiscriminator, ProgressiveGenerator

__all__ = [
    "build_models",
    "count_parameters",
    "ProgressiveGenerator",
    "ProgressiveDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
]


def build_models(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Return ``(G, D)`` for ``cfg.arch``, freshly initialised on the CPU in float32.

    Both take ``(x, resolution, alpha=1.0)``: G maps ``(N, latent_dim)`` latents to
    ``(N, img_channels, resolution, resolution)`` images, D maps such images to ``(N,)`` logits.
    """
    if cfg.arch == "progressive":
        return ProgressiveGenerator(cfg), ProgressiveDiscriminator(cfg)
    if cfg.arch == "dcgan":
        return DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    raise ValueError(f"unknown model.arch {cfg.arch!r}: expected progressive | dcgan")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (shared parameters counted once; buffers such as
    BatchNorm running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
