"""Fully connected generator and discriminator for 2-D toy data (mode-collapse benchmarks).

The mixture-of-Gaussians benchmarks (2-D ring and 2-D grid, see :mod:`scalegan.data.points`) are
run with small MLPs. The PacGAN release, for example, uses a generator of four 400-unit ReLU
layers with BatchNorm and a discriminator of three 200-unit maxout layers (5 pieces). Here both
networks are plain ``nn.Linear`` stacks: ReLU in G, LeakyReLU(0.2) in D, and no BatchNorm
anywhere, since BatchNorm couples the samples of a batch (and the batches of data-parallel
ranks). The only cross-sample coupling is the optional minibatch-discrimination layer
(Salimans et al. 2016) before D's output layer, which is there to make D see mode collapse.

Same call signature as the image models (``G(z, resolution, alpha)``,
``D(x, resolution, alpha)``) so the trainer can treat them alike; ``resolution`` and ``alpha``
are ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from scalegan.ops import MinibatchDiscrimination

__all__ = ["MLPGenerator", "MLPDiscriminator"]

LRELU_SLOPE = 0.2


def _check_input(x: torch.Tensor, dim: int, name: str, who: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{who}: {name} must have shape (N, {dim}), got {tuple(x.shape)}")


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


class MLPGenerator(nn.Module):
    """Generator ``z`` ``(N, latent_dim)`` -> points ``(N, out_dim)``, unbounded.

    ``layers`` hidden layers of ``hidden`` units (Linear + ReLU), then a linear output layer:
    ``layers + 1`` ``nn.Linear`` modules in all, in ``self.net``. PyTorch's default
    initialisation. The output has no squashing: the mixtures' modes lie up to 4 away from
    the origin.
    """

    def __init__(self, latent_dim: int, out_dim: int = 2, hidden: int = 128,
                 layers: int = 3) -> None:
        super().__init__()
        _check_sizes("MLPGenerator", latent_dim=latent_dim, out_dim=out_dim, hidden=hidden,
                     layers=layers)
        self.latent_dim = latent_dim
        self.out_dim = out_dim
        modules: list[nn.Module] = []
        width = latent_dim
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        modules.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*modules)

    def forward(self, z: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        _check_input(z, self.latent_dim, "z", "MLPGenerator")
        return self.net(z)  # (N, out_dim)


class MLPDiscriminator(nn.Module):
    """Discriminator points ``(N, in_dim)`` -> logits ``(N,)``.

    ``self.features``: ``layers`` hidden layers of ``hidden`` units (Linear + LeakyReLU(0.2)),
    ``(N, in_dim)`` -> ``(N, hidden)``. With ``mbdisc_kernels > 0``, ``self.mbdisc`` (a
    :class:`~scalegan.ops.MinibatchDiscrimination` layer with ``mbdisc_kernels`` kernels of
    ``mbdisc_dim`` values, run by ``ops_impl``) appends, for every sample, its similarity to the
    other samples of the batch: ``(N, hidden)`` -> ``(N, hidden + mbdisc_kernels)``. Then
    ``self.out``, a linear layer to one logit. PyTorch's default initialisation.

    The appended similarities are divided by ``N - 1``: the mean of ``exp(-||M_i - M_j||_1)``
    over the other samples, in [0, 1], instead of the layer's sum, in [0, N - 1]. The sum's scale
    grows with the per-rank batch (and so changes with the number of data-parallel ranks), and
    next to hidden features of order 1 it stalled training on the 25-mode grid: measured with
    G_ema at batch 128, 8 kernels of 4, seed 0, the sum gave 21 / 25 modes and 40% high-quality
    samples after 8000 steps where the mean gave 25 / 25 and 93% (after 4000 steps: sum 22 and
    26%, mean 25 and 79%, ``log1p`` of the sum 23 and 73%).

    Without minibatch discrimination ``D(x)[i]`` depends on ``x[i]`` only; with it, on the whole
    batch given to one call (so real and fake batches, passed separately, are judged as batches).
    """

    def __init__(self, in_dim: int = 2, hidden: int = 128, layers: int = 3,
                 mbdisc_kernels: int = 0, mbdisc_dim: int = 16, ops_impl: str = "auto") -> None:
        super().__init__()
        _check_sizes("MLPDiscriminator", in_dim=in_dim, hidden=hidden, layers=layers,
                     mbdisc_dim=mbdisc_dim)
        if mbdisc_kernels < 0:
            raise ValueError(f"MLPDiscriminator: mbdisc_kernels must be >= 0 (0 disables), "
                             f"got {mbdisc_kernels}")
        self.in_dim = in_dim
        self.hidden = hidden
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.LeakyReLU(LRELU_SLOPE)]
            width = hidden
        self.features = nn.Sequential(*modules)
        self.mbdisc = (MinibatchDiscrimination(hidden, mbdisc_kernels, mbdisc_dim, impl=ops_impl)
                       if mbdisc_kernels > 0 else None)
        self.out = nn.Linear(hidden + mbdisc_kernels, 1)

    def forward(self, x: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        _check_input(x, self.in_dim, "x", "MLPDiscriminator")
        h = self.features(x)  # (N, hidden)
        if self.mbdisc is not None:
            h = self.mbdisc(h)  # (N, hidden + mbdisc_kernels)
            # The layer's similarities are sums over the N - 1 other samples: make them means.
            n_other = max(1, x.shape[0] - 1)
            h = torch.cat([h[:, :self.hidden], h[:, self.hidden:] / n_other], dim=1)
        return self.out(h).squeeze(1)  # (N,)
