"""Feature extractors for FID / KID / precision-recall, and a helper that runs one over batches.

An extractor maps images ``(N, C, H, W)``, float in [-1, 1] (the generator's range), to features
``(N, D)``; see :class:`FeatureExtractor`.

* :class:`InceptionFeatures` - the Inception-v3 TorchScript file ``inception-2015-12-05.pt`` used
  by StyleGAN2-ADA and clean-fid; its features are the ones published FIDs are computed with.
  Never downloaded: the file is looked up locally (:func:`resolve_inception_path`).
* :class:`RandomConvFeatures` - a small fixed random conv net for tests and quick CPU runs.
  Its numbers are only comparable with each other, never with published FIDs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 + INCEPTION_FILENAME)
INCEPTION_ENV_VAR = "SCALEGAN_INCEPTION_WEIGHTS"
INCEPTION_FEATURE_DIM = 2048
EXTRACTOR_NAMES = ("inception", "random")


class MissingWeightsError(FileNotFoundError):
    """The Inception weights file is not where it was looked for (it is never downloaded)."""


class WeightsLoadError(RuntimeError):
    """The weights file exists but is not a loadable TorchScript archive."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images ``(N, C, H, W)`` float in [-1, 1] -> features ``(N, feature_dim)``."""

    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _match_channels(images: torch.Tensor, channels: int, who: str) -> torch.Tensor:
    """Check ``(N, C, H, W)``; grayscale (C = 1) is repeated to ``channels``."""
    if images.ndim != 4:
        raise ValueError(f"{who}: expected images (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    raise ValueError(f"{who}: expected {channels} channels (or 1, repeated), got "
                     f"{images.shape[1]}")


def to_pixel_range(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """[-1, 1] float -> [0, 255] float32, clamped; with ``quantize`` rounded to integers as an
    8-bit image would be (StyleGAN2-ADA's ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``)."""
    pixels = ((images.float() + 1.0) * 127.5).clamp(0.0, 255.0)
    return torch.floor(pixels + 0.5) if quantize else pixels


# --- Inception-v3 (TorchScript) -------------------------------------------------------------


def default_inception_path() -> Path:
    """``~/.cache/scalegan/inception-2015-12-05.pt``."""
    return Path.home() / ".cache" / "scalegan" / INCEPTION_FILENAME


def _missing_weights_message(path: Path, source: str) -> str:
    return (
        f"FID Inception weights '{INCEPTION_FILENAME}' not found.\n"
        f"Looked in: {path} ({source}).\n"
        f"The file is taken from, in this order: an explicit path argument; the environment "
        f"variable {INCEPTION_ENV_VAR}; {default_inception_path()}. The first one given is used, "
        f"with no fallback, so a mistyped path is never silently replaced by another file.\n"
        f"scalegan never downloads it: get it from {INCEPTION_URL} (the TorchScript Inception-v3 "
        f"of StyleGAN2-ADA and clean-fid), then put it at {default_inception_path()} or point "
        f"{INCEPTION_ENV_VAR} at it."
    )


def resolve_inception_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the Inception weights are: ``path`` if given, else ``$SCALEGAN_INCEPTION_WEIGHTS`` if
    set and non-empty, else :func:`default_inception_path`. Raises :class:`MissingWeightsError`
    if that file does not exist; never touches the network."""
    if path is not None:
        candidate, source = Path(path).expanduser(), "the path argument"
    elif os.environ.get(INCEPTION_ENV_VAR):
        candidate, source = Path(os.environ[INCEPTION_ENV_VAR]).expanduser(), INCEPTION_ENV_VAR
    else:
        candidate, source = default_inception_path(), "the default location"
    if not candidate.is_file():
        raise MissingWeightsError(_missing_weights_message(candidate, source))
    return candidate


def _load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript, but the reference network only exists in this format
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # torch raises RuntimeError for most, but any failure means the same
        raise WeightsLoadError(
            f"{path} is not a loadable TorchScript archive ({type(error).__name__}: {error}). "
            f"Expected {INCEPTION_FILENAME} from {INCEPTION_URL}; pytorch-fid's "
            f"pt_inception-*.pth state dict is a different file and does not work here."
        ) from error
    return model.eval()


class InceptionFeatures:
    """2048-d pool features of the FID Inception-v3 in ``inception-2015-12-05.pt``.

    Call convention (an assumption taken from how StyleGAN2-ADA and clean-fid use the file, not
    checked here against the file itself): ``model(x, return_features=True)`` with ``x``
    ``(N, 3, H, W)`` float holding 0..255 pixel values returns ``(N, 2048)``; the network resizes
    to 299 x 299 itself. Images are converted with :func:`to_pixel_range` (``quantize``: round
    like an 8-bit image, the default, so generated images are scored as they would be saved);
    grayscale is repeated to RGB. The output width is checked on every call.
    """

    feature_dim = INCEPTION_FEATURE_DIM

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu", quantize: bool = True) -> None:
        self.path = resolve_inception_path(path)
        self.device = torch.device(device)
        self.quantize = quantize
        self.model = _load_torchscript(self.path, self.device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3 or 1, H, W)`` in [-1, 1] -> ``(N, 2048)`` float32 on ``self.device``."""
        pixels = to_pixel_range(_match_channels(images, 3, "InceptionFeatures"), self.quantize)
        with torch.no_grad():
            features = self.model(pixels.to(self.device), return_features=True)
        expected = (images.shape[0], self.feature_dim)
        if tuple(features.shape) != expected:
            raise RuntimeError(f"InceptionFeatures: {self.path} returned features of shape "
                               f"{tuple(features.shape)}, expected {expected}; is it "
                               f"{INCEPTION_FILENAME}?")
        return features.float()


# --- random conv features -------------------------------------------------------------------


class RandomConvFeatures(nn.Module):
    """Fixed random conv net that keeps where things are in the image.

    The image is resized to ``SIZE`` x ``SIZE`` (``resize_for_extractor``), then a 3x3 conv and
    three 3x3 stride-2 convs (widths ``width``, 2, 4, 4 x ``width``, LeakyReLU 0.2) give an 8x8
    map, averaged down to 4x4, flattened and projected to ``feature_dim`` by a fixed Gaussian
    matrix. Pooling to a grid rather than to one vector keeps the layout: with a global average
    the features could not tell a face from its parts scattered (measured on the demo faces at
    32^2: real faces against blotchy noise-like samples scored 0.2, against real faces 0.1).

    He-initialised from ``torch.Generator().manual_seed(seed)``, never trained: the same seed
    gives the same features on every machine and run. For tests and quick CPU evaluation; its
    FIDs are not comparable with published FIDs (or across seeds / ``feature_dim``).
    """

    SIZE = 64
    GRID = 4

    def __init__(self, in_channels: int = 3, feature_dim: int = 64, seed: int = 0,
                 width: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.feature_dim = feature_dim
        generator = torch.Generator().manual_seed(seed)
        channels = [in_channels, width, 2 * width, 4 * width, 4 * width]
        self.strides = (1, 2, 2, 2)
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            weight = torch.randn(c_out, c_in, 3, 3, generator=generator) * (2 / (9 * c_in)) ** 0.5
            self.register_buffer(f"weight{i}", weight)  # buffers: moved by .to(), never trained
        flat = channels[-1] * self.GRID ** 2
        self.register_buffer("projection",
                             torch.randn(flat, feature_dim, generator=generator) / flat ** 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels or 1, H, W)`` in [-1, 1] -> ``(N, feature_dim)``."""
        x = _match_channels(images, self.in_channels, "RandomConvFeatures").float()
        x = resize_for_extractor(x, self.SIZE)
        for i, stride in enumerate(self.strides):
            x = F.leaky_relu(F.conv2d(x, getattr(self, f"weight{i}"), stride=stride, padding=1),
                             0.2)
        return F.adaptive_avg_pool2d(x, self.GRID).flatten(1) @ self.projection


def build_extractor(name: str, weights: str | os.PathLike[str] | None = None,
                    device: str | torch.device = "cpu") -> FeatureExtractor:
    """``"inception"`` (``weights``: path of the Inception file, see :func:`resolve_inception_path`)
    or ``"random"`` (:class:`RandomConvFeatures` with its defaults; ``weights`` must be None)."""
    if name == "inception":
        return InceptionFeatures(weights, device=device)
    if name == "random":
        if weights is not None:
            raise ValueError(f"build_extractor: the 'random' extractor has no weights file, got "
                             f"weights={weights!r}")
        return RandomConvFeatures().to(device)
    raise ValueError(f"build_extractor: unknown extractor {name!r}; expected one of "
                     f"{', '.join(repr(n) for n in EXTRACTOR_NAMES)}")


# --- running an extractor -------------------------------------------------------------------


def resize_for_extractor(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``size`` (``int``: square).

    Downscaling by integer factors averages boxes (``avg_pool2d``); other downscaling uses
    ``interpolate(mode="area")`` (adaptive average pooling: equal-weight, possibly overlapping
    windows); upscaling is bilinear (``align_corners=False``). Real and generated images must go
    through the same path (same input size, same ``size``), or the metric measures the resize.
    """
    if images.ndim != 4:
        raise ValueError(f"resize_for_extractor: expected (N, C, H, W), got "
                         f"{tuple(images.shape)}")
    height, width = (size, size) if isinstance(size, int) else size
    in_height, in_width = images.shape[-2:]
    if (in_height, in_width) == (height, width):
        return images
    if in_height >= height and in_width >= width:
        if in_height % height == 0 and in_width % width == 0:
            return F.avg_pool2d(images, (in_height // height, in_width // width))
        return F.interpolate(images, size=(height, width), mode="area")
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def extract_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor],
                     max_samples: int | None = None,
                     resize_to: int | tuple[int, int] | None = None) -> np.ndarray:
    """Run ``extractor`` over image batches ``(B, C, H, W)`` in [-1, 1] -> ``(N, D)`` float32.

    Stops pulling batches once ``max_samples`` rows are collected (the last batch is cut).
    ``resize_to`` applies :func:`resize_for_extractor` to every batch first; pass the same value
    for real and generated images.
    """
    chunks: list[np.ndarray] = []
    collected = 0
    for images in batches:
        if resize_to is not None:
            images = resize_for_extractor(images, resize_to)
        with torch.inference_mode():
            features = extractor(images)
        if tuple(features.shape) != (images.shape[0], extractor.feature_dim):
            raise RuntimeError(f"extract_features: extractor returned {tuple(features.shape)} "
                               f"for {images.shape[0]} images, expected (N, "
                               f"{extractor.feature_dim})")
        chunks.append(features.float().cpu().numpy())
        collected += features.shape[0]
        if max_samples is not None and collected >= max_samples:
            break  # checked after the batch, so no batch is generated only to be thrown away
    if not chunks:
        return np.zeros((0, extractor.feature_dim), dtype=np.float32)
    features = np.concatenate(chunks)
    return features if max_samples is None else features[:max_samples]
