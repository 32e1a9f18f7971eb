"""CycleGAN generator and discriminator (Zhu et al. 2017), architecture only.

``ResnetGenerator`` is the paper's image-to-image network (c7s1-ngf, d2ngf, d4ngf, ``n_blocks``
residual blocks R4ngf, u2ngf, ungf, c7s1-C): reflection padding around the 7x7 and the residual
3x3 convolutions, InstanceNorm without affine parameters, tanh output. ``PatchDiscriminator`` is
the 70x70 PatchGAN: a fully convolutional D whose every output logit judges one 70x70 patch of the
input. Both use instance normalisation (statistics of one sample, never of the batch), so a
sample's output does not depend on the rest of its batch and a batch sharded across ranks gives
the same outputs as one process.

Every convolution has a bias, as in the authors' reference implementation (redundant in front of
InstanceNorm, but it sets the published parameter counts: 11,378,179 for the 9-block RGB
generator with ngf=64, 2,764,737 for the RGB PatchGAN with ndf=64). Weights are initialised as in
the paper: conv weights ~ N(0, 0.02), biases 0. No departure from the paper's architecture; the
training-time choices (LSGAN loss, image buffer, cycle weight) belong to the trainer.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResnetGenerator", "PatchDiscriminator", "resnet_blocks_for"]

LRELU_SLOPE = 0.2


def resnet_blocks_for(resolution: int) -> int:
    """Number of residual blocks the paper uses: 6 for <= 128x128 images, 9 above."""
    if resolution < 1:
        raise ValueError(f"resnet_blocks_for: resolution must be >= 1, got {resolution}")
    return 6 if resolution <= 128 else 9


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _init_cyclegan(module: nn.Module) -> None:
    """Zhu et al.: conv weights ~ N(0, 0.02), biases 0 (InstanceNorm has no parameters)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + F(x)`` with F = pad 1, conv3x3, IN, ReLU, pad 1, conv3x3, IN (reflection padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # (N, C, H, W)


class ResnetGenerator(nn.Module):
    """Image ``(N, C, H, W)`` in [-1, 1] -> image ``(N, C, H, W)`` in [-1, 1].

    H and W must be multiples of 4 (two stride-2 downsamplings, two 2x upsamplings) and large
    enough for the reflection padding of the 7x7 convs (> 3). ``self.net`` holds the layers in
    order; the residual blocks are ``ResnetBlock`` modules at 4 * ``ngf`` channels.
    """

    def __init__(self, img_channels: int = 3, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        _check_sizes("ResnetGenerator", img_channels=img_channels, ngf=ngf)
        if n_blocks < 0:
            raise ValueError(f"ResnetGenerator: n_blocks must be >= 0, got {n_blocks}")
        self.img_channels = img_channels
        self.ngf = ngf
        self.n_blocks = n_blocks
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(img_channels, ngf, 7),
            _norm(ngf),
            nn.ReLU(),
        ]
        for mult in (1, 2):  # ngf -> 2 ngf -> 4 ngf, halving H and W each time
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       _norm(ngf * mult * 2), nn.ReLU()]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):  # 4 ngf -> 2 ngf -> ngf, doubling H and W each time
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1),
                       _norm(ngf * mult // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, img_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_cyclegan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.img_channels:
            raise ValueError(f"ResnetGenerator: x must have shape (N, {self.img_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        return self.net(x)  # (N, C, H, W)


class PatchDiscriminator(nn.Module):
    """PatchGAN: image ``(N, C, H, W)`` -> patch logits ``(N, 1, h, w)`` (no sigmoid).

    Conv4x4 s2 (no norm) + LeakyReLU(0.2); ``n_layers - 1`` Conv4x4 s2 + IN + LeakyReLU widening
    to ``ndf * min(2^n, 8)``; Conv4x4 s1 + IN + LeakyReLU to ``ndf * min(2^n_layers, 8)``;
    Conv4x4 s1 to one channel. All paddings are 1. With ``n_layers=3`` the convolutions give each
    logit a 70x70 receptive field, and H = W = 256 gives a 30x30 logit map. (The InstanceNorm
    statistics are taken over a sample's whole feature map, so they still carry some information
    from outside the patch, as in the original.)
    """

    def __init__(self, img_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        _check_sizes("PatchDiscriminator", img_channels=img_channels, ndf=ndf, n_layers=n_layers)
        self.img_channels = img_channels
        self.ndf = ndf
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(img_channels, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(LRELU_SLOPE)]
        c_in = ndf
        for n in range(1, n_layers):
            c_out = ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _norm(c_out),
                       nn.LeakyReLU(LRELU_SLOPE)]
            c_in = c_out
        c_out = ndf * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(c_in, c_out, 4, stride=1, padding=1), _norm(c_out),
                   nn.LeakyReLU(LRELU_SLOPE),
                   nn.Conv2d(c_out, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)
        _init_cyclegan(self)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != self.img_channels:
            raise ValueError(f"PatchDiscriminator: img must have shape "
                             f"(N, {self.img_channels}, H, W), got {tuple(img.shape)}")
        return self.net(img)  # (N, 1, h, w)
