"""Adversarial autoencoder (Makhzani et al. 2015): MLP encoder, decoder, code discriminator, priors.

The deterministic variant of the paper: the encoder q(z|x) is a plain function of x, the decoder
reconstructs x from z, and the discriminator tells codes z = q(x) from samples of the prior p(z),
which shapes the aggregated posterior into p(z). All three networks are MLPs of ``layers`` hidden
ReLU layers of ``hidden`` units (the paper's MNIST setting is two layers of 1000 units) with
PyTorch's default initialisation.

Departures from the paper: the decoder ends in tanh, as images are in [-1, 1] throughout
scalegan (the paper's MNIST decoder ends in a sigmoid for [0, 1] pixels); the discriminator
returns logits (no sigmoid), for use with a logits loss. The mixture prior is the paper's
"mixture of 10 2-D Gaussians" idea, made isotropic and normalised to zero mean and identity
covariance (see :func:`mixture_layout`), so it can replace N(0, I) without rescaling anything.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "Encoder",
    "Decoder",
    "CodeDiscriminator",
    "PRIORS",
    "mixture_layout",
    "mixture_means",
    "sample_mixture",
    "sample_prior",
    "prior_moments",
]

PRIORS = ("gaussian", "mixture")
# Component std as a fraction of the distance from a mean to the edge of its region (the nearest
# point equidistant from two neighbouring means): 1/8 puts that edge 8 std away.
MIXTURE_SEPARATION = 8.0


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` x (Linear + ReLU) of width ``hidden``, then Linear to ``out_dim``."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class Encoder(nn.Module):
    """Deterministic q(z|x): image ``(N, C, R, R)`` -> code ``(N, code_dim)`` (linear output)."""

    def __init__(self, img_channels: int, resolution: int, code_dim: int, hidden: int = 1000,
                 layers: int = 2) -> None:
        super().__init__()
        _check_sizes("Encoder", img_channels=img_channels, resolution=resolution,
                     code_dim=code_dim, hidden=hidden, layers=layers)
        self.img_channels = img_channels
        self.resolution = resolution
        self.code_dim = code_dim
        self.net = _mlp(img_channels * resolution * resolution, code_dim, hidden, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.img_channels, self.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r):
            raise ValueError(f"Encoder: x must have shape (N, {c}, {r}, {r}), "
                             f"got {tuple(x.shape)}")
        return self.net(x.flatten(1))  # (N, code_dim)


class Decoder(nn.Module):
    """p(x|z): code ``(N, code_dim)`` -> image ``(N, C, R, R)`` in [-1, 1] (tanh output)."""

    def __init__(self, code_dim: int, img_channels: int, resolution: int, hidden: int = 1000,
                 layers: int = 2) -> None:
        super().__init__()
        _check_sizes("Decoder", code_dim=code_dim, img_channels=img_channels,
                     resolution=resolution, hidden=hidden, layers=layers)
        self.code_dim = code_dim
        self.img_channels = img_channels
        self.resolution = resolution
        self.net = _mlp(code_dim, img_channels * resolution * resolution, hidden, layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"Decoder: z must have shape (N, {self.code_dim}), "
                             f"got {tuple(z.shape)}")
        x = torch.tanh(self.net(z))  # (N, C * R * R)
        return x.reshape(-1, self.img_channels, self.resolution, self.resolution)


class CodeDiscriminator(nn.Module):
    """Prior sample vs encoder code: ``(N, code_dim)`` -> logits ``(N,)`` (no sigmoid)."""

    def __init__(self, code_dim: int, hidden: int = 1000, layers: int = 2) -> None:
        super().__init__()
        _check_sizes("CodeDiscriminator", code_dim=code_dim, hidden=hidden, layers=layers)
        self.code_dim = code_dim
        self.net = _mlp(code_dim, 1, hidden, layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"CodeDiscriminator: z must have shape (N, {self.code_dim}), "
                             f"got {tuple(z.shape)}")
        return self.net(z).flatten()  # (N,)


def _check_kind(kind: str, dim: int, components: int) -> None:
    if kind not in PRIORS:
        raise ValueError(f"unknown prior kind {kind!r}; expected one of {PRIORS}")
    if dim < 1:
        raise ValueError(f"prior {kind!r}: dim must be >= 1, got {dim}")
    if kind == "mixture":
        if dim < 2:
            raise ValueError(f"prior 'mixture' needs dim >= 2 (its means lie on a circle in the "
                             f"first two coordinates), got dim={dim}")
        if components < 3:
            raise ValueError(f"prior 'mixture' needs components >= 3 for an isotropic covariance, "
                             f"got components={components}")


def mixture_layout(components: int = 10) -> tuple[float, float]:
    """Radius r of the circle of means and per-component std s of the mixture prior.

    K = ``components`` >= 3 equal-weight components with means
    mu_k = r (cos 2 pi k / K, sin 2 pi k / K) in the first two coordinates (0 in the others) and
    isotropic covariance s^2 there (the same std along the circle's radial and tangential
    directions; std 1 in the other coordinates). The means average to 0, and for K >= 3
    sum_k cos^2 = sum_k sin^2 = K / 2 and sum_k cos sin = 0, so the mixture has covariance
    (r^2 / 2 + s^2) I in the first two coordinates. Identity covariance needs r^2 / 2 + s^2 = 1.

    Choice of s: a mean lies r sin(pi / K) from the boundary of its nearest-mean region, and s is
    1/8 of that, s = a r with a = sin(pi / K) / 8. Then r = 1 / sqrt(1/2 + a^2): for K = 10,
    r = 1.4121 and s = 0.0545, and a sample falls closer to another component's mean with
    probability below 1e-14.
    """
    if components < 3:
        raise ValueError(f"mixture_layout: components must be >= 3, got {components}")
    a = math.sin(math.pi / components) / MIXTURE_SEPARATION
    radius = 1.0 / math.sqrt(0.5 + a * a)
    return radius, a * radius


def mixture_means(dim: int, components: int = 10) -> torch.Tensor:
    """The mixture prior's component means ``(components, dim)``, float64 (see mixture_layout)."""
    _check_kind("mixture", dim, components)
    radius, _ = mixture_layout(components)
    angles = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = torch.zeros(components, dim, dtype=torch.float64)
    means[:, 0] = radius * torch.cos(angles)
    means[:, 1] = radius * torch.sin(angles)
    return means


def sample_mixture(n: int, dim: int, generator: torch.Generator,
                   components: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the mixture prior and their components: ``(z (n, dim), labels (n,))``.

    ``z`` has the default float dtype and ``labels`` is int64, both on ``generator``'s device;
    components are equally likely. The result depends only on ``generator``'s state.
    """
    _check_kind("mixture", dim, components)
    _, std = mixture_layout(components)
    device = generator.device
    labels = torch.randint(components, (n,), generator=generator, device=device)
    z = torch.randn(n, dim, generator=generator, device=device)
    means = mixture_means(dim, components).to(device=device, dtype=z.dtype)
    z[:, :2] *= std  # unit std beyond the first two coordinates
    return z + means[labels], labels


def sample_prior(kind: str, n: int, dim: int, generator: torch.Generator,
                 components: int = 10) -> torch.Tensor:
    """``n`` samples ``(n, dim)`` of the prior ``kind`` ("gaussian": N(0, I); "mixture").

    Both priors have zero mean and identity covariance (:func:`prior_moments`). ``components``
    is used by "mixture" only. Default float dtype, on ``generator``'s device.
    """
    _check_kind(kind, dim, components)
    if kind == "gaussian":
        return torch.randn(n, dim, generator=generator, device=generator.device)
    return sample_mixture(n, dim, generator, components)[0]


def prior_moments(kind: str, dim: int, components: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean ``(dim,)`` and covariance ``(dim, dim)`` of the prior ``kind``, float64.

    For "mixture" they are computed from the components (mean of the means; covariance of the
    means plus the within-component covariance), not assumed: both come out as 0 and I, up to
    float64 rounding.
    """
    _check_kind(kind, dim, components)
    if kind == "gaussian":
        return torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)
    means = mixture_means(dim, components)  # (K, dim)
    mean = means.mean(dim=0)
    centred = means - mean
    within = torch.ones(dim, dtype=torch.float64)
    within[:2] = mixture_layout(components)[1] ** 2
    cov = centred.T @ centred / components + torch.diag(within)
    return mean, cov
