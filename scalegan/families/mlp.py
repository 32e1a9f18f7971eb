"""``model.arch=mlp``: a plain MLP pair. On 2-D points (data.source=points) it is the model of
the mode-coverage benchmarks, its samples scatter plots with the modes covered; on images
(data.source=shards) it is the GAN of Goodfellow et al. 2014: G maps noise to flattened
images through ReLU layers and a tanh, D (optionally maxout units and dropout, as the paper's)
judges flattened images; ``loss.kind=minimax`` is the paper's saturating objective,
``nonsaturating`` the variant it recommends for G in practice."""

from __future__ import annotations

from pathlib import Path

import torch

from scalegan.config import ConfigError
from scalegan.data.points import mixture
from scalegan.families._base import Stream
from scalegan.families._image import ImageGAN
from scalegan.metrics.modes import mode_stats
from scalegan.models.mlp import MLPDiscriminator, MLPGenerator
from scalegan.monitor.scatter import save_scatter

POINT_SAMPLES = 2500
"""Samples drawn for each scatter plot and mode count of a 2-D run (VEEGAN / PacGAN: 2500)."""


class MLP(ImageGAN):
    arch = "mlp"
    point_data = None

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.data.source == "points" and cfg.eval.every_kimg != 0:
            raise ConfigError(f"eval.every_kimg={cfg.eval.every_kimg!r} is not allowed: expected "
                              f"0 with model.arch=mlp on data.source=points (2-D runs log "
                              f"modes/covered and modes/high_quality with each sample instead)")
        if cfg.data.source == "points" and cfg.model.condition != "none":
            raise ConfigError(f"model.condition={cfg.model.condition!r} is not allowed: "
                              f"expected none with data.source=points (2-D points have no "
                              f"labels)")

    def num_samples(self) -> int:
        return POINT_SAMPLES if self.on_points else super().num_samples()

    @classmethod
    def networks(cls, mc, points: bool = True):
        shape = None if points else (mc.img_channels, mc.resolution, mc.resolution)
        cond = dict(num_classes=mc.num_classes if mc.condition == "label" else 0,
                    cond_dim=mc.cond_dim)
        G = MLPGenerator(mc.latent_dim, out_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers,
                         out_shape=shape, **cond)
        D = MLPDiscriminator(in_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers,
                             mbdisc_kernels=mc.mbdisc_kernels, mbdisc_dim=mc.mbdisc_dim,
                             ops_impl=mc.ops_impl, in_shape=shape, maxout=mc.mlp_maxout,
                             dropout=mc.mlp_dropout, cond_d=mc.cond_d, **cond)
        return {"G": G, "D": D}

    def make_networks(self):
        return self.networks(self.mc, points=self.on_points)

    def d_noise(self, n: int) -> torch.Tensor | None:
        """D's dropout draws: one per unit it may drop (its inputs and each hidden layer's),
        per sample, for the global batch."""
        mc = self.mc
        if mc.mlp_dropout == 0:
            return None
        inputs = 2 if self.on_points else mc.img_channels * mc.resolution ** 2
        return self.svc.draw(torch.rand, n, inputs + mc.mlp_hidden * mc.mlp_layers)

    def describe(self, nets) -> str:
        if not self.on_points:
            return super().describe(nets)
        return super().describe(nets).replace(f"{self.mc.resolution}x{self.mc.resolution}",
                                              "2-D points")

    def streams(self) -> dict[str, Stream]:
        if not self.on_points:
            return super().streams()
        return {"data": Stream("", key="data.points", points=self.cfg.data.points)}

    def write_samples(self, images, paths: list[Path]) -> dict[str, float]:
        if not self.on_points:
            return super().write_samples(images, paths)
        centers, std = mixture(self.cfg.data.points)
        stats = mode_stats(images, centers, std)
        for p in paths:
            save_scatter(images, p, centers=centers, radius=3 * std)
        return {"modes/covered": stats["modes"], "modes/high_quality": stats["high_quality"]}


FAMILY = MLP
