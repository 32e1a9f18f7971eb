"""Generator / discriminator architectures of scalegan (architecture only: no device logic)."""

from __future__ import annotations

from torch import nn

from scalegan.config import ModelConfig
from scalegan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from scalegan.models.mlp import MLPDiscriminator, MLPGenerator
from scalegan.models.progressive import ProgressiveDiscriminator, ProgressiveGenerator
from scalegan.models.stackgan import StackDiscriminator, StackGenerator

__all__ = [
    "build_models",
    "count_parameters",
    "ProgressiveGenerator",
    "ProgressiveDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "StackGenerator",
    "StackDiscriminator",
    "MLPGenerator",
    "MLPDiscriminator",
]


def build_models(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """``(G, D)`` of a noise-to-image family's model section ``cfg`` (progressive, dcgan,
    stackgan, mlp), freshly initialised on the CPU: its family's networks (see
    ``scalegan.families``).

    progressive, dcgan: both take ``(x, resolution, alpha=1.0)``: G maps ``(N, latent_dim)``
    latents to ``(N, img_channels, resolution, resolution)`` images, D maps such images to
    ``(N,)`` logits. stackgan: ``G(z, cond, eps)`` -> (one image per stage, mu, logvar) and
    ``D(images, cond)`` -> (unconditional logits, conditional logits) per stage. mlp: as
    progressive, on 2-D points ``(N, 2)`` instead of images.
    """
    from scalegan.families import family_class

    nets = family_class(cfg.arch).networks(cfg)
    return nets["G"], nets["D"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (shared parameters counted once; buffers such as
    BatchNorm running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
