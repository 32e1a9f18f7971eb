"""DualGAN translator (Yi et al. 2017), architecture only.

``UNetGenerator`` is the pix2pix U-Net the paper configures its translators with: ``depth``
stride-2 4x4 convolutions down (to 1x1 for ``depth = log2(resolution)``, as published) and as many
stride-2 4x4 transposed convolutions up, each decoder layer's output joined (channel concat) to
the mirrored encoder layer's output. Widths ``ngf * min(2^i, 8)``: C64-C128-C256-C512-C512-... at
ngf=64. Encoder: LeakyReLU(0.2) before every convolution but the first, a norm after every
convolution but the first and the innermost; decoder: ReLU before every transposed convolution, a
norm after all but the last, which ends in tanh.

The paper's noise z enters as in pix2pix, through dropout (p = 0.5 there) on the outputs of the
first ``dropout_layers`` (3) decoder layers, before their skip concat. Here the dropout is not a
module: ``forward(x, noise)`` multiplies those outputs by the given masks (``dropout_shapes``
says their shapes), so whoever calls the network decides where the randomness comes from; with
``noise=None`` the network is deterministic (no dropout, which with inverted-dropout masks is the
expectation of the dropped network).

Normalisation: InstanceNorm without affine parameters, per sample. pix2pix and DualGAN use
BatchNorm at batch size 1 in training and test alike, i.e. statistics of one sample; instance
norm keeps that at any batch size, so a batch sharded across ranks gives the same outputs as one
process. The innermost (1x1) layer has no norm: the statistics of a single value would zero it
(pix2pix's reference network leaves it out too). Every convolution has a bias; weights are
initialised N(0, 0.02), biases 0, as in pix2pix and DualGAN.

The critics are ``scalegan.models.cyclegan.PatchDiscriminator`` (the pix2pix PatchGAN, 70x70 with
3 stride-2 layers), re-exported here: no sigmoid (its logit is the Wasserstein critic's value) and
instance norm, as above.
"""

from __future__ import annotations

import torch
from torch import nn

from scalegan.models.cyclegan import PatchDiscriminator

__all__ = ["UNetGenerator", "PatchDiscriminator", "dropout_shapes", "unet_depth_for",
           "unet_widths"]

LRELU_SLOPE = 0.2


def unet_depth_for(resolution: int) -> int:
    """Down-sampling layers of the published U-Net at ``resolution``: down to 1x1."""
    if resolution < 2 or resolution & (resolution - 1):
        raise ValueError(f"unet_depth_for: resolution must be a power of two >= 2, "
                         f"got {resolution}")
    return resolution.bit_length() - 1


def unet_widths(ngf: int, depth: int) -> list[int]:
    """Output channels of each encoder layer: ngf * min(2^i, 8)."""
    return [ngf * min(2 ** i, 8) for i in range(depth)]


def dropout_shapes(ngf: int, depth: int, dropout_layers: int, height: int,
                   width: int) -> list[tuple[int, int, int]]:
    """``(C, h, w)`` of each noise mask ``UNetGenerator.forward`` takes for an input of
    ``height`` x ``width``: the outputs of the first ``dropout_layers`` decoder layers (never the
    output layer)."""
    widths = unet_widths(ngf, depth)
    out = []
    for k in range(min(dropout_layers, depth - 1)):
        level = depth - 1 - k  # the encoder level decoder layer k reads (its output: level - 1)
        out.append((widths[level - 1], height >> level, width >> level))
    return out


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _init_pix2pix(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNetGenerator(nn.Module):
    """Image ``(N, C, H, W)`` in [-1, 1] -> image ``(N, C, H, W)`` in [-1, 1].

    H and W must be multiples of 2^depth. ``self.down[i]`` is encoder layer i, ``self.up[k]``
    decoder layer k (k = 0 reads the innermost features; the last one writes the image).
    """

    def __init__(self, img_channels: int = 3, ngf: int = 64, depth: int = 8,
                 dropout_layers: int = 3) -> None:
        super().__init__()
        for name, value in (("img_channels", img_channels), ("ngf", ngf), ("depth", depth)):
            if value < 1:
                raise ValueError(f"UNetGenerator: {name} must be >= 1, got {value}")
        if dropout_layers < 0:
            raise ValueError(f"UNetGenerator: dropout_layers must be >= 0, got {dropout_layers}")
        self.img_channels, self.ngf, self.depth = img_channels, ngf, depth
        self.dropout_layers = min(dropout_layers, depth - 1)
        widths = unet_widths(ngf, depth)
        self.down = nn.ModuleList()
        for i, c_out in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.LeakyReLU(LRELU_SLOPE))
            layers.append(nn.Conv2d(img_channels if i == 0 else widths[i - 1], c_out, 4,
                                    stride=2, padding=1))
            if 0 < i < depth - 1:
                layers.append(_norm(c_out))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            c_in = widths[level] * (1 if level == depth - 1 else 2)  # + the skip below it
            c_out = widths[level - 1] if level > 0 else img_channels
            self.up.append(nn.Sequential(
                nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                _norm(c_out) if level > 0 else nn.Tanh()))
        _init_pix2pix(self)

    def dropout_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Shapes (C, h, w) of the noise masks ``forward`` takes for H x W inputs."""
        return dropout_shapes(self.ngf, self.depth, self.dropout_layers, height, width)

    def forward(self, x: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``noise``: one mask (N, C, h, w) per ``dropout_shapes`` entry, multiplied into the
        first decoder layers' outputs (dropout with masks drawn by the caller); None: none."""
        size = 2 ** self.depth
        if (x.ndim != 4 or x.shape[1] != self.img_channels or x.shape[2] % size
                or x.shape[3] % size):
            raise ValueError(f"UNetGenerator: x must have shape (N, {self.img_channels}, H, W) "
                             f"with H and W multiples of {size}, got {tuple(x.shape)}")
        if noise is not None:
            want = [(x.shape[0], *s) for s in self.dropout_shapes(x.shape[2], x.shape[3])]
            got = [tuple(m.shape) for m in noise]
            if got != want:
                raise ValueError(f"UNetGenerator: noise masks must have shapes {want}, got {got}")
        skips = []
        h = x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        h = skips.pop()  # the innermost features
        for k, layer in enumerate(self.up):
            h = layer(h)
            if noise is not None and k < len(noise):
                h = h * noise[k].to(h.dtype)
            if skips:
                h = torch.cat([h, skips.pop()], dim=1)
        return h  # (N, C, H, W)
