"""LAPGAN (Denton et al. 2015): a Laplacian pyramid of conditional generator / discriminator
pairs, one per scale.

Levels are numbered from the coarsest: level 0 works at ``base_resolution``, level ``j`` at
``base_resolution * 2^j``. With ``I_j`` the image at level j (the box-filtered halvings of the
real image, the filter the data stream shrinks images with), the pyramid is

* ``l_j = expand(I_{j-1})``: the coarser image enlarged to level j (the low-pass image);
* ``h_j = I_j - l_j``: the band-pass residual the level generates;
* ``h_0 = I_0``: the coarsest level is the image itself.

``expand`` is bilinear x2 (half-pixel centres, edges clamped), a stand-in for the paper's
smoothing expand operation; ``shrink`` is the 2x2 box average. Sampling chains the levels:
``I~_0 = G_0(z_0)``, ``I~_j = expand(I~_{j-1}) + G_j(expand(I~_{j-1}), z_j)``.

Networks (the paper's CIFAR-10 models):

* level 0, a plain GAN of fully connected nets with two hidden ReLU layers: G_0 1200 units per
  layer, D_0 600 units with dropout on its hidden units (masks given by the caller, so a sharded
  run can draw them for the global batch);
* every finer level, conditional convnets with 5x5 kernels and ReLU: G_j has three convolutions
  (128, 128, then the image's channels) on the low-pass image with the noise joined as extra
  planes; D_j has two convolutions (128, 128) and a linear layer to one logit, on the residual
  and the low-pass image joined as channels (or, ``d_input="sum"``, added: the paper's wording).
  Convolutions keep the size (stride 1, "same" padding).

Output layers: G_0 ends in tanh (images are in [-1, 1]); the level generators end linear
(residuals are signed differences). D's return logits. Weights are initialised as PyTorch's
(and Torch7's) default, uniform in +-1/sqrt(fan_in). Architecture only: no device logic.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CoarseGenerator", "CoarseDiscriminator", "LevelGenerator", "LevelDiscriminator",
           "expand", "shrink", "gaussian_pyramid", "laplacian_pyramid", "reconstruct"]

DInput = Literal["concat", "sum"]


# --------------------------------------------------------------------------------- the pyramid


def expand(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, R, R) enlarged to (N, C, 2R, 2R): bilinear, half-pixel centres."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def shrink(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, 2R, 2R) reduced to (N, C, R, R): the mean of each 2x2 block."""
    return F.avg_pool2d(x, 2)


def gaussian_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``image`` and its halvings, ``levels`` tensors, coarsest first; each the mean of
    2^k x 2^k blocks of ``image`` (as the data stream's pyramid)."""
    return [F.avg_pool2d(image, 2 ** k) if k else image for k in reversed(range(levels))]


def laplacian_pyramid(images: list[torch.Tensor]
                      ) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """The low-pass images and residuals of a Gaussian pyramid (coarsest first):
    ``lows[j] = expand(images[j - 1])``, ``highs[j] = images[j] - lows[j]``; level 0 has no
    low-pass image (``lows[0] is None``) and its "residual" is the coarsest image itself."""
    lows: list[torch.Tensor | None] = [None]
    highs = [images[0]]
    for j in range(1, len(images)):
        lows.append(expand(images[j - 1]))
        highs.append(images[j] - lows[j])
    return lows, highs


def reconstruct(highs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every level's image from the coarsest image and the residuals (``laplacian_pyramid``'s
    inverse): ``I_0 = highs[0]``, ``I_j = expand(I_{j-1}) + highs[j]``."""
    out = [highs[0]]
    for h in highs[1:]:
        out.append(expand(out[-1]) + h)
    return out


# ---------------------------------------------------------------------------------- networks


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _check_shape(who: str, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        want = ", ".join(str(s) for s in shape)
        raise ValueError(f"{who}: {name} must have shape (N, {want}), got {tuple(x.shape)}")


class CoarseGenerator(nn.Module):
    """G_0: noise ``(N, z_dim)`` -> image ``(N, C, R, R)`` in [-1, 1]: two hidden ReLU layers of
    ``hidden`` units (1200 as published), a linear layer to the pixels, tanh."""

    def __init__(self, z_dim: int, img_channels: int, resolution: int, hidden: int = 1200):
        super().__init__()
        _check_sizes("CoarseGenerator", z_dim=z_dim, img_channels=img_channels,
                     resolution=resolution, hidden=hidden)
        self.z_dim, self.img_channels, self.resolution = z_dim, img_channels, resolution
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, img_channels * resolution * resolution), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_shape("CoarseGenerator", "z", z, (self.z_dim,))
        r = self.resolution
        return self.net(z).view(-1, self.img_channels, r, r)


class CoarseDiscriminator(nn.Module):
    """D_0: image ``(N, C, R, R)`` -> logits ``(N,)``: two hidden ReLU layers of ``hidden``
    units (600 as published), a linear layer to one logit.

    Dropout on each hidden layer's units is given as ``keep`` ``(N, 2, hidden)``: the factor of
    each unit (0, or 1 / (1 - p) for a kept unit), drawn by the caller; None: no dropout (as at
    inference)."""

    def __init__(self, img_channels: int, resolution: int, hidden: int = 600):
        super().__init__()
        _check_sizes("CoarseDiscriminator", img_channels=img_channels, resolution=resolution,
                     hidden=hidden)
        self.img_channels, self.resolution, self.hidden = img_channels, resolution, hidden
        self.fc1 = nn.Linear(img_channels * resolution * resolution, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        c, r = self.img_channels, self.resolution
        _check_shape("CoarseDiscriminator", "x", x, (c, r, r))
        if keep is not None:
            _check_shape("CoarseDiscriminator", "keep", keep, (2, self.hidden))
        h = F.relu(self.fc1(x.flatten(1)))
        if keep is not None:
            h = h * keep[:, 0]
        h = F.relu(self.fc2(h))
        if keep is not None:
            h = h * keep[:, 1]
        return self.out(h).squeeze(1)


class LevelGenerator(nn.Module):
    """G_j: the low-pass image ``(N, C, R, R)`` and noise ``(N, noise_channels, R, R)`` (joined
    as extra input planes) -> the residual ``(N, C, R, R)``: three ``kernel`` x ``kernel``
    convolutions, ``channels``, ``channels``, then C, ReLU between them, linear output."""

    def __init__(self, img_channels: int, noise_channels: int = 1, channels: int = 128,
                 kernel: int = 5):
        super().__init__()
        _check_sizes("LevelGenerator", img_channels=img_channels, noise_channels=noise_channels,
                     channels=channels, kernel=kernel)
        if kernel % 2 == 0:
            raise ValueError(f"LevelGenerator: kernel must be odd, got {kernel}")
        self.img_channels, self.noise_channels = img_channels, noise_channels
        pad = kernel // 2
        self.net = nn.Sequential(
            nn.Conv2d(img_channels + noise_channels, channels, kernel, padding=pad), nn.ReLU(),
            nn.Conv2d(channels, channels, kernel, padding=pad), nn.ReLU(),
            nn.Conv2d(channels, img_channels, kernel, padding=pad))

    def forward(self, low: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if low.ndim != 4 or low.shape[1] != self.img_channels:
            raise ValueError(f"LevelGenerator: low must have shape (N, {self.img_channels}, R, "
                             f"R), got {tuple(low.shape)}")
        _check_shape("LevelGenerator", "noise", noise,
                     (self.noise_channels, *low.shape[2:]))
        return self.net(torch.cat([low, noise], dim=1))


class LevelDiscriminator(nn.Module):
    """D_j: a residual ``(N, C, R, R)`` given the low-pass image ``(N, C, R, R)`` -> logits
    ``(N,)``: two ``kernel`` x ``kernel`` convolutions of ``channels`` with ReLU, then a linear
    layer from the ``channels`` x R x R features to one logit. ``d_input``: concat joins the
    residual and the low-pass image as 2C channels; sum feeds their sum (the level's image)."""

    def __init__(self, img_channels: int, resolution: int, channels: int = 128, kernel: int = 5,
                 d_input: DInput = "concat"):
        super().__init__()
        _check_sizes("LevelDiscriminator", img_channels=img_channels, resolution=resolution,
                     channels=channels, kernel=kernel)
        if kernel % 2 == 0:
            raise ValueError(f"LevelDiscriminator: kernel must be odd, got {kernel}")
        if d_input not in ("concat", "sum"):
            raise ValueError(f"LevelDiscriminator: d_input must be concat or sum, "
                             f"got {d_input!r}")
        self.img_channels, self.resolution, self.d_input = img_channels, resolution, d_input
        pad = kernel // 2
        inputs = 2 * img_channels if d_input == "concat" else img_channels
        self.features = nn.Sequential(
            nn.Conv2d(inputs, channels, kernel, padding=pad), nn.ReLU(),
            nn.Conv2d(channels, channels, kernel, padding=pad), nn.ReLU())
        self.out = nn.Linear(channels * resolution * resolution, 1)

    def forward(self, residual: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        c, r = self.img_channels, self.resolution
        _check_shape("LevelDiscriminator", "residual", residual, (c, r, r))
        _check_shape("LevelDiscriminator", "low", low, (c, r, r))
        x = torch.cat([residual, low], dim=1) if self.d_input == "concat" else residual + low
        return self.out(self.features(x).flatten(1)).squeeze(1)
