"""MRGAN's encoder E: x -> z (Che et al. 2016), and its convolutional D.

* :class:`MLPEncoder` (2-D points): ``layers`` hidden layers of ``hidden`` units (Linear +
  LeakyReLU(0.2)) and a linear layer to ``latent_dim``; PyTorch's default initialisation (as
  the MLP pair's).
* On images E is a :class:`~scalegan.models.ebgan.ConvEncoder` to ``latent_dim`` (DCGAN's
  discriminator body, then a linear layer), and D, :class:`ConvDiscriminator`, the same body
  with a linear layer to one logit.

E's output is linear: the codes it learns to give are G's inputs, drawn from N(0, I) when G
samples, so no squashing.
"""

from __future__ import annotations

import torch
from torch import nn

from scalegan.models.ebgan import ConvEncoder, leaky_mlp

__all__ = ["ConvDiscriminator", "MLPEncoder"]


class MLPEncoder(nn.Module):
    """Points ``(N, in_dim)`` -> codes ``(N, latent_dim)`` (linear output)."""

    def __init__(self, in_dim: int = 2, latent_dim: int = 2, hidden: int = 128,
                 layers: int = 3) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("latent_dim", latent_dim), ("hidden", hidden),
                            ("layers", layers)):
            if value < 1:
                raise ValueError(f"MLPEncoder: {name} must be >= 1, got {value}")
        self.in_dim, self.latent_dim = in_dim, latent_dim
        self.net = leaky_mlp(in_dim, latent_dim, hidden, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPEncoder: x must have shape (N, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        return self.net(x)  # (N, latent_dim)


class ConvDiscriminator(ConvEncoder):
    """Image ``(N, C, R, R)`` -> logits ``(N,)``: a :class:`ConvEncoder` with one output,
    called as ``D(x, resolution, alpha)`` (``resolution`` must be the model's, ``alpha`` is
    ignored)."""

    def __init__(self, img_channels: int, resolution: int, widths: dict[int, int]) -> None:
        super().__init__(img_channels, resolution, 1, widths)

    def forward(self, x: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        if resolution is not None and resolution != self.resolution:
            raise ValueError(f"ConvDiscriminator: resolution={resolution!r} must equal the "
                             f"model resolution {self.resolution}")
        return super().forward(x).flatten()  # (N,)
