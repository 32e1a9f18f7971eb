"""VGG19's convolutional features (Simonyan & Zisserman 2015), for SRGAN's content loss.

The layer order, and so the state-dict keys (``features.<i>.weight``), are those of the ImageNet
VGG19 weights files PyTorch users have (torchvision's ``vgg19-dcbb9e9d.pth``); the file is read
from a local path only, with ``torch.load(weights_only=True)``: it is never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from scalegan.metrics.features import MissingWeightsError, WeightsLoadError

VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
VGG19_ENV_VAR = "SCALEGAN_VGG19_WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_index(layer: str) -> int:
    """Index in ``features`` of the ReLU after convolution j before max-pool i, for
    ``layer="convi_j"`` (SRGAN's phi_{5,4} is "conv5_4")."""
    try:
        if not layer.startswith("conv"):
            raise ValueError
        block, conv = (int(v) for v in layer[4:].split("_"))
    except ValueError:
        raise ValueError(f"VGG layer {layer!r}: expected convi_j, e.g. conv5_4") from None
    index, seen_block, seen_conv = 0, 1, 0
    for item in VGG19_LAYERS:
        if item == "M":
            seen_block, seen_conv = seen_block + 1, 0
            index += 1
            continue
        seen_conv += 1
        if (seen_block, seen_conv) == (block, conv):
            return index + 1  # the ReLU after this convolution
        index += 2
    raise ValueError(f"VGG layer {layer!r}: VGG19 has no convolution {conv} in block {block}")


class VGG19Features(nn.Module):
    """``features`` of VGG19 up to layer ``convi_j``; takes images in [-1, 1] (grayscale repeated to
    RGB) and normalises them as the ImageNet weights expect."""

    def __init__(self, layer: str = "conv5_4"):
        super().__init__()
        modules: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYERS:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*modules[:feature_index(layer) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features(((x + 1) / 2 - self.mean) / self.std)


def vgg19_weights_path(path: str = "") -> Path:
    """The VGG19 weights file: ``path``, else $SCALEGAN_VGG19_WEIGHTS; MissingWeightsError
    naming where it looked otherwise."""
    chosen = path or os.environ.get(VGG19_ENV_VAR, "")
    if not chosen:
        raise MissingWeightsError(
            f"the VGG19 content loss needs a local VGG19 weights file (torchvision's "
            f"vgg19-dcbb9e9d.pth layout): set model.vgg_weights or ${VGG19_ENV_VAR}; it is "
            f"never downloaded")
    p = Path(chosen)
    if not p.is_file():
        raise MissingWeightsError(f"VGG19 weights file {p} does not exist (model.vgg_weights or "
                                  f"${VGG19_ENV_VAR})")
    return p


def load_vgg19(path: str = "", layer: str = "conv5_4") -> VGG19Features:
    """VGG19 features up to ``layer`` with the weights of the local file (frozen, eval mode)."""
    p = vgg19_weights_path(path)
    net = VGG19Features(layer)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        wanted = {k: v for k, v in state.items() if k.startswith("features.")
                  and int(k.split(".")[1]) < len(net.features)}
        net.load_state_dict({**wanted, "mean": net.mean, "std": net.std}, strict=True)
    except Exception as e:  # not a state dict, or not VGG19's
        raise WeightsLoadError(f"VGG19 weights file {p} cannot be loaded as VGG19's "
                               f"features: {e}") from None
    return net.eval().requires_grad_(False)
