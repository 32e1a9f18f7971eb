"""DCGAN generator and discriminator (Radford et al. 2015), at one fixed resolution.

Widths follow ``cfg.channels(r)``: the feature maps at resolution r have ``channels(r)`` channels
in both networks (G's last layer and D's first layer touch the image directly, so
``channels(cfg.resolution)`` is not used). Weights are initialised as in the paper:
conv / linear ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), biases 0.

Same call signature as the progressive pair (``G(z, resolution, alpha, cond)``,
``D(img, resolution, alpha, cond)``) so the trainer can treat both alike; ``resolution`` must
equal ``cfg.resolution`` and ``alpha`` is ignored.

Conditioning on class labels (``cfg.condition == "label"``; ``cond`` a LongTensor ``(N,)`` of
class ids, ``None`` for an unconditional model):

* G (Mirza & Osindero 2014): ``embed``, an ``nn.Embedding(num_classes, cond_dim)``; the
  project-and-reshape layer reads ``concat(z, embed(cond))``.
* D, ``cfg.cond_d == "concat"``: ``embed`` (``cond_dim`` values) replicated over the 4x4 map the
  output conv reads and joined to it as ``cond_dim`` extra channels, then ``joint``, a 3x3 conv
  (C4 + cond_dim -> C4, [BatchNorm,] LeakyReLU(0.2)) as in StackGAN's conditional D, then the
  unchanged 4x4 output conv. The joint conv is needed: fed straight to the output conv (a linear
  map) the label would only add a per-class constant to the logit, which cannot judge whether
  the image fits the label.
* D, ``cfg.cond_d == "projection"`` (Miyato & Koyama 2018): ``logit = psi(phi) + <embed(cond),
  phi>`` with ``phi`` the flattened ``(N, C4 * 16)`` features the output conv (``psi``) reads
  and ``embed`` an ``nn.Embedding(num_classes, C4 * 16)`` (``cfg.cond_dim`` is not used).

The new layers are initialised like the rest (N(0, 0.02)). An unconditional model has exactly
the parameters (and state-dict keys) it had before conditioning existed.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from scalegan.config import ModelConfig
from scalegan.models.layers import check_labels

__all__ = ["DCGANGenerator", "DCGANDiscriminator"]

LRELU_SLOPE = 0.2


def _check_resolution(resolution: int, expected: int, who: str) -> int:
    try:
        r = operator.index(resolution) if not isinstance(resolution, bool) else None
    except TypeError:
        r = None
    if r != expected:
        raise ValueError(f"{who}: resolution={resolution!r} must equal the model resolution "
                         f"{expected} (DCGAN does not grow)")
    return r


def _num_classes(cfg: ModelConfig) -> int:
    """Classes the networks are conditioned on: 0 unless ``cfg.condition == "label"``."""
    return cfg.num_classes if cfg.condition == "label" else 0


def _init_dcgan(module: nn.Module) -> None:
    """Radford et al.: all weights (label embeddings too) from N(0, 0.02); BatchNorm scale from
    N(1, 0.02); biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _resolutions(max_res: int) -> list[int]:
    return [2 ** i for i in range(2, int(math.log2(max_res)) + 1)]


class _Project(nn.Module):
    """``z`` ``(N, latent)`` -> linear -> reshape ``(N, C, 4, 4)`` -> BatchNorm -> ReLU.

    ``latent`` counts the label embedding joined to ``z`` in a conditional G."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(latent_dim, channels * 16, bias=False)  # BN supplies the shift
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).reshape(-1, self.channels, 4, 4)  # (N, C, 4, 4)
        return self.act(self.norm(x))


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z`` ``(N, latent_dim)`` -> image ``(N, img_channels, R, R)`` in [-1, 1].

    ``blocks["4"]``: linear "project and reshape" to 4x4 + BatchNorm + ReLU;
    ``blocks[str(r)]`` for 8 <= r < R: ConvTranspose2d(4, stride 2, pad 1) + BatchNorm + ReLU;
    ``blocks[str(R)]``: ConvTranspose2d to ``img_channels`` + Tanh (no BatchNorm on the output,
    as in the paper). R = ``cfg.resolution``.

    Conditional (``cfg.condition == "label"``): ``embed`` ``(num_classes, cond_dim)``, and
    ``blocks["4"]`` reads ``concat(z, embed(cond))`` ``(N, latent_dim + cond_dim)``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.img_channels = cfg.img_channels
        self.resolution = cfg.resolution
        self.min_resolution = cfg.resolution
        self.num_classes = _num_classes(cfg)
        cond_dim = cfg.cond_dim if self.num_classes else 0
        self.embed = nn.Embedding(self.num_classes, cond_dim) if self.num_classes else None
        self.blocks = nn.ModuleDict()
        for r in _resolutions(cfg.resolution):
            if r == 4:
                self.blocks[str(r)] = _Project(cfg.latent_dim + cond_dim, cfg.channels(4))
            elif r < cfg.resolution:
                self.blocks[str(r)] = nn.Sequential(
                    nn.ConvTranspose2d(cfg.channels(r // 2), cfg.channels(r), 4, 2, 1, bias=False),
                    nn.BatchNorm2d(cfg.channels(r)),
                    nn.ReLU(),
                )
            else:
                self.blocks[str(r)] = nn.Sequential(
                    nn.ConvTranspose2d(cfg.channels(r // 2), cfg.img_channels, 4, 2, 1),
                    nn.Tanh(),
                )
        _init_dcgan(self)

    def forward(self, z: torch.Tensor, resolution: int, alpha: float = 1.0,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        _check_resolution(resolution, self.resolution, "DCGANGenerator")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"DCGANGenerator: z must have shape (N, {self.latent_dim}), "
                             f"got {tuple(z.shape)}")
        check_labels(cond, self.num_classes, z.shape[0], "DCGANGenerator")
        x = z
        if self.embed is not None:
            x = torch.cat([z, self.embed(cond).to(z.dtype)], dim=1)  # (N, latent + cond_dim)
        for block in self.blocks.values():  # ModuleDict keeps insertion order: 4, 8, ..., R
            x = block(x)  # (N, C_r, r, r); last: (N, img_channels, R, R)
        return x


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: image ``(N, img_channels, R, R)`` -> logits ``(N,)``.

    ``blocks[str(r)]`` for R >= r >= 8: Conv2d(4, stride 2, pad 1) from r to r/2 + LeakyReLU(0.2)
    (optional BatchNorm on all but the first); ``blocks["4"]``: Conv2d(4x4, valid) to one logit.

    ``batchnorm`` defaults to False, unlike the paper: BatchNorm mixes the samples of a batch, so
    D(x_i) depends on the other x_j. That breaks the per-sample input gradients used by R1 and
    WGAN-GP (the penalty would include cross-sample terms), makes real and fake batches see
    different statistics, and gives results that depend on the per-rank batch size under data
    parallelism.

    Conditional (``cfg.condition == "label"``), see the module docstring: ``cfg.cond_d ==
    "concat"`` adds ``embed`` ``(num_classes, cond_dim)`` and ``joint`` (before ``blocks["4"]``);
    ``"projection"`` adds ``embed`` ``(num_classes, C4 * 16)``.
    """

    def __init__(self, cfg: ModelConfig, batchnorm: bool = False) -> None:
        super().__init__()
        self.img_channels = cfg.img_channels
        self.resolution = cfg.resolution
        self.min_resolution = cfg.resolution
        self.batchnorm = batchnorm
        self.num_classes = _num_classes(cfg)
        self.cond_d = cfg.cond_d if self.num_classes else None
        self.embed: nn.Embedding | None = None
        self.joint: nn.Sequential | None = None
        c4 = cfg.channels(4)
        if self.cond_d == "concat":
            self.embed = nn.Embedding(self.num_classes, cfg.cond_dim)
            layers: list[nn.Module] = [
                nn.Conv2d(c4 + cfg.cond_dim, c4, 3, 1, 1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c4))
            layers.append(nn.LeakyReLU(LRELU_SLOPE))
            self.joint = nn.Sequential(*layers)
        elif self.cond_d == "projection":
            self.embed = nn.Embedding(self.num_classes, c4 * 16)
        self.blocks = nn.ModuleDict()
        for r in reversed(_resolutions(cfg.resolution)):
            if r == 4:
                self.blocks[str(r)] = nn.Conv2d(cfg.channels(4), 1, 4, 1, 0)  # (N, 1, 1, 1)
                continue
            first = r == cfg.resolution
            c_in = cfg.img_channels if first else cfg.channels(r)
            c_out = cfg.channels(r // 2)
            use_bn = batchnorm and not first  # the paper has no BatchNorm on D's input layer
            layers = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not use_bn)]
            if use_bn:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(LRELU_SLOPE))
            self.blocks[str(r)] = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, img: torch.Tensor, resolution: int, alpha: float = 1.0,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        res = _check_resolution(resolution, self.resolution, "DCGANDiscriminator")
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, res, res):
            raise ValueError(f"DCGANDiscriminator: img must have shape "
                             f"(N, {self.img_channels}, {res}, {res}), got {tuple(img.shape)}")
        check_labels(cond, self.num_classes, img.shape[0], "DCGANDiscriminator")
        *body, out = self.blocks.values()  # R, R/2, ..., 8; then the 4x4 output conv
        x = img
        for block in body:
            x = block(x)  # (N, C_{r/2}, r/2, r/2); last: (N, C4, 4, 4)
        if self.cond_d == "concat":
            e = self.embed(cond).to(x.dtype)[:, :, None, None].expand(-1, -1, 4, 4)
            x = self.joint(torch.cat([x, e], dim=1))  # (N, C4 + cond_dim, 4, 4) -> (N, C4, 4, 4)
        logits = out(x).flatten()  # (N,)
        if self.cond_d == "projection":
            logits = logits + (self.embed(cond) * x.flatten(1)).sum(1)  # + <embed(y), phi(x)>
        return logits
