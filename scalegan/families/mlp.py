"""``model.arch=mlp``: a plain MLP pair. On 2-D points (data.source=points) it is the model of
the mode-coverage benchmarks, its samples scatter plots with the modes covered; on images
(data.source=shards) it is the GAN of Goodfellow et al. 2014: G maps noise to flattened
images through ReLU layers and a tanh, D (optionally maxout units and dropout, as the paper's)
judges flattened images; ``loss.kind=minimax`` is the paper's saturating objective,
``nonsaturating`` the variant it recommends for G in practice."""

from __future__ import annotations

import torch

from scalegan.config import ConfigError
from scalegan.families._image import POINT_SAMPLES, PointsOrImages
from scalegan.models.mlp import MLPDiscriminator, MLPGenerator

__all__ = ["MLP", "POINT_SAMPLES"]


class MLP(PointsOrImages):
    arch = "mlp"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.data.source == "points" and cfg.model.condition != "none":
            raise ConfigError(f"model.condition={cfg.model.condition!r} is not allowed: "
                              f"expected none with data.source=points (2-D points have no "
                              f"labels)")

    @classmethod
    def networks(cls, mc, points: bool = True):
        shape = None if points else (mc.img_channels, mc.resolution, mc.resolution)
        cond = dict(num_classes=mc.num_classes if mc.condition == "label" else 0,
                    cond_dim=mc.cond_dim)
        G = MLPGenerator(mc.latent_dim, out_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers,
                         out_shape=shape, **cond)
        D = MLPDiscriminator(in_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers,
                             mbdisc_kernels=mc.mbdisc_kernels, mbdisc_dim=mc.mbdisc_dim,
                             mbdisc_across_ranks=mc.mbdisc_across_ranks, ops_impl=mc.ops_impl,
                             in_shape=shape, maxout=mc.mlp_maxout,
                             dropout=mc.mlp_dropout, cond_d=mc.cond_d, **cond)
        return {"G": G, "D": D}

    def d_noise(self, n: int) -> torch.Tensor | None:
        """D's dropout draws: one per unit it may drop (its inputs and each hidden layer's),
        per sample, for the global batch."""
        mc = self.mc
        if mc.mlp_dropout == 0:
            return None
        inputs = 2 if self.on_points else mc.img_channels * mc.resolution ** 2
        return self.svc.draw(torch.rand, n, inputs + mc.mlp_hidden * mc.mlp_layers)


FAMILY = MLP
