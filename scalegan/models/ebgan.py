"""EBGAN's auto-encoder discriminators (Zhao et al. 2016), and the convolutional encoder and
generator the EBGAN and MRGAN families are built from.

D is an auto-encoder whose output is an energy, the reconstruction error of each sample::

    energy(x) = || Dec(Enc(x)) - x ||_2        (Euclidean norm over all of a sample's values)

the paper's D(x) as written (its Sec. 2.3), not the mean squared error: the margin m of D's
hinge is then in the units of a distance between samples. ``forward`` returns the energies
``(N,)`` and the codes ``Enc(x)`` ``(N, code_dim)``, which the pulling-away term of G's loss
compares. Both are computed in float32 when autocast runs the layers in bf16.

* :class:`MLPAutoencoderD` (2-D points): Enc is ``layers`` hidden layers of ``hidden`` units
  (Linear + LeakyReLU(0.2)) and a linear layer to ``code_dim``; Dec mirrors it back to the
  input's size, linear output.
* :class:`ConvAutoencoderD` (images): Enc is a :class:`ConvEncoder` to ``code_dim``; Dec a
  :class:`ConvGenerator` from the code without the tanh (a linear output).
* :class:`ConvEncoder`: DCGAN's discriminator body, Conv2d(4, stride 2, pad 1) + LeakyReLU(0.2)
  from the image side R down to 4x4, then a linear layer from the flattened 4x4 features to
  ``out_dim``. MRGAN's encoder and its D (``out_dim`` 1) are such encoders.
* :class:`ConvGenerator`: DCGAN's generator layout, a linear "project and reshape" to 4x4, then
  ConvTranspose2d(4, stride 2, pad 1) + ReLU per doubling, tanh at R.

Widths follow ``widths[r]``, the feature maps of the layers working at side r (as
``ModelConfig.channels``: see :func:`conv_widths`). Conv and linear weights are drawn from
N(0, 0.02), biases 0 (Radford et al.).

Departure from DCGAN: no BatchNorm. G normalises each pixel's feature vector instead (pixel
norm, as the progressive G): BatchNorm makes a sample's output depend on the other samples on
its rank, so a sharded run would not equal one process. D's encoder and decoder have no
normalisation at all.

Same call signature as the other image models, ``G(z, resolution, alpha)`` and
``D(x, resolution, alpha)``; ``resolution`` must be the model's and ``alpha`` is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from scalegan.models.layers import pixel_norm

__all__ = ["ConvAutoencoderD", "ConvEncoder", "ConvGenerator", "MLPAutoencoderD",
           "conv_widths", "energy"]

LRELU_SLOPE = 0.2


def conv_widths(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps of the layers working at each side r = 4, 8, ..., ``resolution``:
    ``max(1, min(channel_base // r, channel_max))``."""
    _check_resolution_value(resolution, "conv_widths")
    return {r: max(1, min(channel_base // r, channel_max)) for r in _sides(resolution)}


def energy(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per sample, the Euclidean norm of ``recon - x`` over all its values: ``(N,)`` float32 (or
    float64 for float64 inputs)."""
    if recon.dtype in (torch.bfloat16, torch.float16) or x.dtype in (torch.bfloat16,
                                                                       torch.float16):
        recon, x = recon.float(), x.float()
    return (recon - x).flatten(1).norm(dim=1)


def _sides(resolution: int) -> list[int]:
    return [2 ** i for i in range(2, resolution.bit_length())]


def _check_resolution_value(resolution: int, who: str) -> None:
    if not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"{who}: resolution must be a power of two >= 8, got {resolution!r}")


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _check_widths(widths: dict[int, int], resolution: int, who: str) -> None:
    missing = [r for r in _sides(resolution)[:-1] if r not in widths]
    if missing:
        raise ValueError(f"{who}: widths has no entry for side(s) {missing} (need 4 .. "
                         f"{resolution // 2})")


def _check_call_resolution(resolution, expected: int, who: str) -> None:
    if resolution is not None and resolution != expected:
        raise ValueError(f"{who}: resolution={resolution!r} must equal the model resolution "
                         f"{expected}")


def _init_normal(module: nn.Module) -> None:
    """Conv, transposed conv and linear weights from N(0, 0.02), biases 0 (Radford et al.)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """Image ``(N, C, R, R)`` -> ``(N, out_dim)`` (linear output).

    ``blocks[str(r)]`` for r = R, R/2, ..., 8: Conv2d(4, stride 2, pad 1) from side r to r/2
    (``img_channels`` -> ``widths[R/2]`` first, then ``widths[r]`` -> ``widths[r/2]``) +
    LeakyReLU(0.2); ``out``: Linear(``widths[4]`` * 16 -> ``out_dim``) on the flattened 4x4
    features.
    """

    def __init__(self, img_channels: int, resolution: int, out_dim: int,
                 widths: dict[int, int]) -> None:
        super().__init__()
        who = "ConvEncoder"
        _check_resolution_value(resolution, who)
        _check_sizes(who, img_channels=img_channels, out_dim=out_dim)
        _check_widths(widths, resolution, who)
        self.img_channels, self.resolution, self.out_dim = img_channels, resolution, out_dim
        self.blocks = nn.ModuleDict()
        c_in = img_channels
        for r in reversed(_sides(resolution)[1:]):  # R, R/2, ..., 8
            self.blocks[str(r)] = nn.Sequential(nn.Conv2d(c_in, widths[r // 2], 4, 2, 1),
                                                nn.LeakyReLU(LRELU_SLOPE))
            c_in = widths[r // 2]
        self.out = nn.Linear(c_in * 16, out_dim)
        _init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.img_channels, self.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r):
            raise ValueError(f"ConvEncoder: x must have shape (N, {c}, {r}, {r}), "
                             f"got {tuple(x.shape)}")
        for block in self.blocks.values():
            x = block(x)  # (N, widths[r/2], r/2, r/2)
        return self.out(x.flatten(1))  # (N, out_dim)


class ConvGenerator(nn.Module):
    """``(N, in_dim)`` -> image ``(N, img_channels, R, R)``: tanh output in [-1, 1], or linear
    with ``tanh=False`` (an auto-encoder's decoder).

    ``project``: Linear(``in_dim`` -> ``widths[4]`` * 16), reshaped to 4x4; ``blocks[str(r)]``
    for r = 8, ..., R/2: ConvTranspose2d(4, stride 2, pad 1) from ``widths[r/2]`` to
    ``widths[r]``; each hidden layer is followed by ReLU and (``normalise``) pixel norm;
    ``blocks[str(R)]``: ConvTranspose2d to ``img_channels`` (then tanh).
    """

    def __init__(self, in_dim: int, img_channels: int, resolution: int, widths: dict[int, int],
                 tanh: bool = True, normalise: bool = True) -> None:
        super().__init__()
        who = "ConvGenerator"
        _check_resolution_value(resolution, who)
        _check_sizes(who, in_dim=in_dim, img_channels=img_channels)
        _check_widths(widths, resolution, who)
        self.in_dim, self.img_channels, self.resolution = in_dim, img_channels, resolution
        self.tanh, self.normalise = tanh, normalise
        self.width4 = widths[4]
        self.project = nn.Linear(in_dim, widths[4] * 16)
        self.blocks = nn.ModuleDict()
        for r in _sides(resolution)[1:]:  # 8, ..., R
            c_out = img_channels if r == resolution else widths[r]
            self.blocks[str(r)] = nn.ConvTranspose2d(widths[r // 2], c_out, 4, 2, 1)
        _init_normal(self)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        return pixel_norm(x) if self.normalise else x

    def forward(self, z: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        who = "ConvGenerator"
        _check_call_resolution(resolution, self.resolution, who)
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"{who}: input must have shape (N, {self.in_dim}), "
                             f"got {tuple(z.shape)}")
        x = self._hidden(self.project(z).unflatten(1, (self.width4, 4, 4)))  # (N, C4, 4, 4)
        for r, block in self.blocks.items():
            x = block(x)  # (N, widths[r] or img_channels, r, r)
            if int(r) < self.resolution:
                x = self._hidden(x)
        return torch.tanh(x) if self.tanh else x


class ConvAutoencoderD(nn.Module):
    """EBGAN's D on images: ``x`` ``(N, C, R, R)`` -> (energies ``(N,)``, codes
    ``(N, code_dim)``), with ``encoder`` a :class:`ConvEncoder` and ``decoder`` a linear-output
    :class:`ConvGenerator` without normalisation."""

    def __init__(self, img_channels: int, resolution: int, code_dim: int,
                 widths: dict[int, int]) -> None:
        super().__init__()
        self.resolution = resolution
        self.encoder = ConvEncoder(img_channels, resolution, code_dim, widths)
        self.decoder = ConvGenerator(code_dim, img_channels, resolution, widths, tanh=False,
                                     normalise=False)

    def forward(self, x: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        _check_call_resolution(resolution, self.resolution, "ConvAutoencoderD")
        code = self.encoder(x)  # (N, code_dim)
        return energy(self.decoder(code), x), code


def leaky_mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` units (Linear + LeakyReLU(0.2)), then a linear
    output layer of ``out_dim``."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.LeakyReLU(LRELU_SLOPE)]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class MLPAutoencoderD(nn.Module):
    """EBGAN's D on points: ``x`` ``(N, in_dim)`` -> (energies ``(N,)``, codes
    ``(N, code_dim)``). ``encoder`` and ``decoder``: ``layers`` hidden layers of ``hidden``
    units (Linear + LeakyReLU(0.2)) and a linear output layer each. PyTorch's default
    initialisation (as the MLP pair's)."""

    def __init__(self, in_dim: int = 2, code_dim: int = 8, hidden: int = 128,
                 layers: int = 3) -> None:
        super().__init__()
        _check_sizes("MLPAutoencoderD", in_dim=in_dim, code_dim=code_dim, hidden=hidden,
                     layers=layers)
        self.in_dim, self.code_dim = in_dim, code_dim
        self.encoder = leaky_mlp(in_dim, code_dim, hidden, layers)
        self.decoder = leaky_mlp(code_dim, in_dim, hidden, layers)

    def forward(self, x: torch.Tensor, resolution: int | None = None,
                alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPAutoencoderD: x must have shape (N, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        code = self.encoder(x)  # (N, code_dim)
        return energy(self.decoder(code), x), code
