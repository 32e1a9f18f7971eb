"""``model.arch=mlp``: a plain MLP pair on 2-D points (data.source=points), the model of the
mode-coverage benchmarks; its samples are scatter plots with the modes covered."""

from __future__ import annotations

from pathlib import Path

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
    point_data = True

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.eval.every_kimg != 0:
            raise ConfigError(f"eval.every_kimg={cfg.eval.every_kimg!r} is not allowed: expected "
                              f"0 with model.arch=mlp (2-D runs log modes/covered and "
                              f"modes/high_quality with each sample instead)")

    def num_samples(self) -> int:
        return POINT_SAMPLES

    @classmethod
    def networks(cls, mc):
        G = MLPGenerator(mc.latent_dim, out_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers)
        D = MLPDiscriminator(in_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers,
                             mbdisc_kernels=mc.mbdisc_kernels, mbdisc_dim=mc.mbdisc_dim,
                             ops_impl=mc.ops_impl)
        return {"G": G, "D": D}

    def describe(self, nets) -> str:
        return super().describe(nets).replace(f"{self.mc.resolution}x{self.mc.resolution}",
                                              "2-D points")

    def streams(self) -> dict[str, Stream]:
        return {"data": Stream("", key="data.points", points=self.cfg.data.points)}

    def write_samples(self, images, paths: list[Path]) -> dict[str, float]:
        centers, std = mixture(self.cfg.data.points)
        stats = mode_stats(images, centers, std)
        for p in paths:
            save_scatter(images, p, centers=centers, radius=3 * std)
        return {"modes/covered": stats["modes"], "modes/high_quality": stats["high_quality"]}


FAMILY = MLP
