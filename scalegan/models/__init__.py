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
    """Return ``(G, D)`` for ``cfg.arch``, freshly initialised on the CPU in float32.

    progressive, dcgan: both take ``(x, resolution, alpha=1.0)``: G maps ``(N, latent_dim)``
    latents to ``(N, img_channels, resolution, resolution)`` images, D maps such images to
    ``(N,)`` logits. stackgan: ``G(z, cond, eps)`` -> (one image per stage, mu, logvar) and
    ``D(images, cond)`` -> (unconditional logits, conditional logits) per stage. mlp: as
    progressive, on 2-D points ``(N, 2)`` instead of images.
    """
    if cfg.arch == "progressive":
        return ProgressiveGenerator(cfg), ProgressiveDiscriminator(cfg)
    if cfg.arch == "dcgan":
        return DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    if cfg.arch == "stackgan":
        cond = dict(condition=cfg.condition, cond_dim=cfg.cond_dim, num_classes=cfg.num_classes,
                    embedding_dim=cfg.embedding_dim, base_resolution=cfg.base_resolution)
        G = StackGenerator(num_stages=cfg.stages, latent_dim=cfg.latent_dim, gf_dim=cfg.gf_dim,
                           img_channels=cfg.img_channels, ops_impl=cfg.ops_impl, **cond)
        D = StackDiscriminator(num_stages=cfg.stages, img_channels=cfg.img_channels,
                               df_dim=cfg.df_dim, **cond)
        return G, D
    if cfg.arch == "mlp":
        G = MLPGenerator(cfg.latent_dim, out_dim=2, hidden=cfg.mlp_hidden, layers=cfg.mlp_layers)
        D = MLPDiscriminator(in_dim=2, hidden=cfg.mlp_hidden, layers=cfg.mlp_layers,
                             mbdisc_kernels=cfg.mbdisc_kernels, mbdisc_dim=cfg.mbdisc_dim,
                             ops_impl=cfg.ops_impl)
        return G, D
    raise ValueError(f"unknown model.arch {cfg.arch!r}: expected progressive | dcgan | stackgan "
                     f"| mlp")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (shared parameters counted once; buffers such as
    BatchNorm running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
