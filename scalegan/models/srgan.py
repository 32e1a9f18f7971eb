"""SRGAN generator (SRResNet) and discriminator (Ledig et al. 2017), architecture only.

``SRResNet`` maps a low-resolution image ``(N, C, h, w)`` to ``(N, C, h * scale, w * scale)``:
a 9x9 conv + PReLU, ``num_blocks`` residual blocks, a 3x3 conv closing a long skip connection,
log2(``scale``) sub-pixel upsampling stages (conv to 4x the channels, PixelShuffle(2), PReLU) and
a 9x9 output conv with a linear output. ``SRDiscriminator`` is the paper's VGG-style classifier:
eight 3x3 convs (64 to 512 channels, stride 2 in every other one) with LeakyReLU(0.2), then
Dense(1024) + LeakyReLU(0.2) + Dense(1), giving one logit per image (no sigmoid).

Departure from the paper: BatchNorm is off by default (``norm="none"``), as in EDSR and ESRGAN.
Batch statistics make one sample's output depend on the other samples of its batch, so with the
batch sharded across ranks a distributed run would not compute what a one-process run computes
(and input-gradient penalties on D would pick up cross-sample terms). ``norm="batch"`` restores
the paper's BatchNorm2d after the convs it normalises. PReLU has one shared slope per layer and
all weights keep PyTorch's default initialisation (deterministic under ``torch.manual_seed``).
"""

from __future__ import annotations

import operator

import torch
from torch import nn

__all__ = ["SRResNet", "SRDiscriminator"]

LRELU_SLOPE = 0.2
NORMS = ("none", "batch")


def _check_norm(norm: str, who: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"{who}: norm must be one of {NORMS}, got {norm!r}")


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _conv_norm(c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> list[nn.Module]:
    """Conv (padding keeps the size at stride 1) and, with ``norm="batch"``, BatchNorm2d."""
    use_bn = norm == "batch"
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=not use_bn)]
    if use_bn:
        layers.append(nn.BatchNorm2d(c_out))
    return layers


class ResidualBlock(nn.Module):
    """``x + F(x)``, F = conv3x3, [norm], PReLU, conv3x3, [norm] (the paper's k3n64s1 block)."""

    def __init__(self, channels: int, norm: str = "none") -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm(channels, channels, 3, 1, norm),
            nn.PReLU(),
            *_conv_norm(channels, channels, 3, 1, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # (N, C, H, W)


class SRResNet(nn.Module):
    """Super-resolution generator: ``lr`` ``(N, C, h, w)`` -> ``(N, C, h * scale, w * scale)``.

    ``head``: conv9x9 + PReLU; ``blocks``: ``num_blocks`` ``ResidualBlock``; ``fuse``: conv3x3
    [+ norm], whose output is added to ``head``'s; ``upsample``: log2(``scale``) stages of conv3x3
    to 4 * ``channels``, PixelShuffle(2), PReLU; ``tail``: conv9x9 to ``img_channels``. The output
    is linear (no tanh), in the value range of the training targets.
    """

    def __init__(self, img_channels: int = 3, channels: int = 64, num_blocks: int = 16,
                 scale: int = 4, norm: str = "none") -> None:
        super().__init__()
        s = _as_int(scale)
        if s is None or s < 2 or s & (s - 1):
            raise ValueError(f"SRResNet: scale must be a power of two >= 2, got {scale!r}")
        _check_norm(norm, "SRResNet")
        _check_sizes("SRResNet", img_channels=img_channels, channels=channels)
        if num_blocks < 0:
            raise ValueError(f"SRResNet: num_blocks must be >= 0, got {num_blocks}")
        self.img_channels = img_channels
        self.scale = s
        self.norm = norm
        self.head = nn.Sequential(nn.Conv2d(img_channels, channels, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(channels, norm) for _ in range(num_blocks)))
        self.fuse = nn.Sequential(*_conv_norm(channels, channels, 3, 1, norm))
        stages: list[nn.Module] = []
        for _ in range(s.bit_length() - 1):  # log2(scale) stages of 2x
            stages += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2),
                       nn.PReLU()]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(channels, img_channels, 9, padding=4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[1] != self.img_channels:
            raise ValueError(f"SRResNet: lr must have shape (N, {self.img_channels}, h, w), "
                             f"got {tuple(lr.shape)}")
        x = self.head(lr)  # (N, channels, h, w)
        x = x + self.fuse(self.blocks(x))  # long skip
        x = self.upsample(x)  # (N, channels, h * scale, w * scale)
        return self.tail(x)  # (N, img_channels, h * scale, w * scale)


class SRDiscriminator(nn.Module):
    """VGG-style discriminator: image ``(N, C, R, R)`` -> logits ``(N,)``.

    ``features``: conv3x3 (k3n64s1) + LeakyReLU(0.2), then k3n64s2, k3n128s1, k3n128s2, k3n256s1,
    k3n256s2, k3n512s1, k3n512s2, each [+ norm] + LeakyReLU(0.2) (widths scale with
    ``channels`` / 64); ``classifier``: Linear(8 * ``channels`` * (R/16)^2 -> 1024) +
    LeakyReLU(0.2) + Linear(1024 -> 1). ``resolution`` R must be a multiple of 16.
    """

    def __init__(self, img_channels: int = 3, resolution: int = 96, channels: int = 64,
                 norm: str = "none") -> None:
        super().__init__()
        r = _as_int(resolution)
        if r is None or r < 16 or r % 16:
            raise ValueError(f"SRDiscriminator: resolution must be a positive multiple of 16, "
                             f"got {resolution!r}")
        _check_norm(norm, "SRDiscriminator")
        _check_sizes("SRDiscriminator", img_channels=img_channels, channels=channels)
        self.img_channels = img_channels
        self.resolution = r
        self.norm = norm
        layers: list[nn.Module] = [nn.Conv2d(img_channels, channels, 3, padding=1),
                                   nn.LeakyReLU(LRELU_SLOPE)]
        c_in = channels
        for mult, stride in ((1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)):
            layers += [*_conv_norm(c_in, channels * mult, 3, stride, norm),
                       nn.LeakyReLU(LRELU_SLOPE)]
            c_in = channels * mult
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * (r // 16) ** 2, 1024),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(1024, 1),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, r, r):
            raise ValueError(f"SRDiscriminator: img must have shape "
                             f"(N, {self.img_channels}, {r}, {r}), got {tuple(img.shape)}")
        x = self.features(img)  # (N, 8 * channels, R/16, R/16)
        return self.classifier(x).flatten()  # (N,)
