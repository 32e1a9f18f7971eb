"""Feature extractors: the Inception file's lookup and errors (never a download), loading a
TorchScript stand-in with the same call convention, the random conv net, resizing, batching."""

from __future__ import annotations

import socket
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalegan.metrics import (
    FeatureExtractor,
    InceptionFeatures,
    MissingWeightsError,
    RandomConvFeatures,
    WeightsLoadError,
    build_extractor,
    extract_features,
    resize_for_extractor,
)
from scalegan.metrics.features import INCEPTION_ENV_VAR, INCEPTION_FILENAME, INCEPTION_URL


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL or a socket connection fails the test."""
    def refuse(*args, **kwargs):
        pytest.fail(f"network access attempted: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No weights variable, and a home directory without a cached file."""
    monkeypatch.delenv(INCEPTION_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


class _StandIn(torch.nn.Module):
    """Same call convention as the Inception file: per-channel means of the input, padded to 2048;
    a wrong shape if ``return_features`` is not passed."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features:
            return torch.zeros(x.shape[0], 1008)
        return F.pad(x.mean(dim=(2, 3)), (0, 2048 - x.shape[1]))


def _save_stand_in(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch
        torch.jit.save(torch.jit.script(_StandIn()), str(path))
    return path


# --- missing / broken weights -----------------------------------------------------------------


def test_missing_explicit_path(tmp_path, no_network, clean_env):
    missing = tmp_path / "nope.pt"
    with pytest.raises(MissingWeightsError) as info:
        InceptionFeatures(missing)
    message = str(info.value)
    for part in (INCEPTION_FILENAME, str(missing), INCEPTION_ENV_VAR, INCEPTION_URL):
        assert part in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_env_path(tmp_path, monkeypatch, no_network, clean_env):
    missing = tmp_path / "elsewhere" / INCEPTION_FILENAME
    monkeypatch.setenv(INCEPTION_ENV_VAR, str(missing))
    with pytest.raises(MissingWeightsError, match=INCEPTION_ENV_VAR) as info:
        build_extractor("inception", None)
    assert str(missing) in str(info.value)


def test_missing_default_path(tmp_path, no_network, clean_env):
    with pytest.raises(MissingWeightsError) as info:
        InceptionFeatures()
    assert str(tmp_path / "home" / ".cache" / "scalegan" / INCEPTION_FILENAME) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a zip archive" * 10], ids=["empty", "garbage"])
def test_unloadable_file_names_it(tmp_path, content, no_network):
    path = tmp_path / INCEPTION_FILENAME
    path.write_bytes(content)
    with pytest.raises(WeightsLoadError, match="not a loadable TorchScript archive") as info:
        InceptionFeatures(path)
    assert str(path) in str(info.value)


def test_state_dict_is_not_torchscript(tmp_path, no_network):
    # a torch.save'd state dict is a valid zip, but not a TorchScript archive
    path = tmp_path / "pt_inception.pth"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(WeightsLoadError, match="pt_inception.pth"):
        InceptionFeatures(path)


# --- a TorchScript file with the Inception call convention --------------------------------------


def test_loads_torchscript_and_feeds_0_255(tmp_path, no_network, clean_env):
    extractor = InceptionFeatures(_save_stand_in(tmp_path / "stand_in.pt"))
    assert isinstance(extractor, FeatureExtractor) and extractor.feature_dim == 2048
    pixels = torch.randint(0, 256, (4, 3, 5, 6), generator=torch.Generator().manual_seed(0))
    images = pixels.float() / 127.5 - 1.0  # how uint8 images become [-1, 1]
    features = extractor(images)
    assert features.shape == (4, 2048)
    # the round trip back to 0..255 is exact after quantisation; means of integers in float32
    torch.testing.assert_close(features[:, :3], pixels.float().mean(dim=(2, 3)),
                               rtol=1e-6, atol=1e-5)
    assert (features[:, 3:] == 0).all()


def test_quantize_clamp_and_grayscale(tmp_path, clean_env):
    path = _save_stand_in(tmp_path / "stand_in.pt")
    images = torch.tensor([-1.5, -1.0, 0.0, 0.3, 1.0, 2.0]).view(1, 1, 1, 6)
    # hand-computed 0..255 values: clamped at both ends, 0.3 -> 165.75
    exact = torch.tensor([0.0, 0.0, 127.5, 165.75, 255.0, 255.0]).mean()
    rounded = torch.tensor([0.0, 0.0, 128.0, 166.0, 255.0, 255.0]).mean()  # half rounds up
    got_exact = InceptionFeatures(path, quantize=False)(images)[0, :3]
    got_rounded = InceptionFeatures(path)(images)[0, :3]
    torch.testing.assert_close(got_exact, exact.expand(3), rtol=1e-6, atol=0)
    torch.testing.assert_close(got_rounded, rounded.expand(3), rtol=1e-6, atol=0)


def test_wrong_output_width_is_reported(tmp_path, clean_env):
    class Logits(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.zeros(x.shape[0], 1008)

    path = tmp_path / "logits.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Logits()), str(path))
    with pytest.raises(RuntimeError, match="expected \\(2, 2048\\)"):
        InceptionFeatures(path)(torch.zeros(2, 3, 4, 4))


# --- random conv features -------------------------------------------------------------------


def test_random_features_deterministic():
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = RandomConvFeatures(feature_dim=24, seed=3)(images)
    b = RandomConvFeatures(feature_dim=24, seed=3)(images)
    c = RandomConvFeatures(feature_dim=24, seed=4)(images)
    assert a.shape == (5, 24)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.std(dim=0).min() > 0  # every feature varies across images


def test_random_features_grayscale_and_odd_sizes():
    extractor = RandomConvFeatures(seed=1)
    gray = torch.rand(2, 1, 7, 9) * 2 - 1
    torch.testing.assert_close(extractor(gray), extractor(gray.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="expected 3 channels"):
        extractor(torch.zeros(2, 2, 8, 8))


def test_build_extractor():
    extractor = build_extractor("random", None)
    assert isinstance(extractor, RandomConvFeatures) and isinstance(extractor, FeatureExtractor)
    with pytest.raises(ValueError, match="'inception', 'random'"):
        build_extractor("vgg", None)


# --- resizing and batching ------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3])
def test_box_downscale_is_block_mean(factor):
    # factor 3 too: a bilinear 2x downscale with half-pixel centres happens to equal the box mean
    images = torch.randn(2, 3, 4 * factor, 3 * factor)
    blocks = images.reshape(2, 3, 4, factor, 3, factor).mean(dim=(3, 5))  # blocks, by hand
    torch.testing.assert_close(resize_for_extractor(images, (4, 3)), blocks)
    torch.testing.assert_close(resize_for_extractor(images[:, :, :3 * factor], 3), blocks[:, :, :3])


def test_non_integer_downscale_and_upscale_by_hand():
    row = torch.tensor([0.0, 3.0, 6.0]).view(1, 1, 1, 3)
    # 3 -> 2 area: windows [0, 2) and [1, 3) -> means 1.5 and 4.5
    torch.testing.assert_close(resize_for_extractor(row, (1, 2)), torch.tensor([[[[1.5, 4.5]]]]))
    # 2 -> 4 bilinear (half-pixel centres): samples at -0.25, 0.25, 0.75, 1.25, clamped at edges
    pair = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(resize_for_extractor(pair, (1, 4)),
                               torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))
    assert resize_for_extractor(pair, (1, 2)) is pair


def test_extract_features_batches_and_stops():
    extractor = RandomConvFeatures(feature_dim=16)
    images = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    pulled = []

    def batches():
        for start in range(0, 12, 4):
            pulled.append(start)
            yield images[start:start + 4]

    features = extract_features(extractor, batches(), max_samples=6)
    assert features.shape == (6, 16) and features.dtype == np.float32
    assert pulled == [0, 4]  # the third batch is never generated
    # batching does not change the features (fp32 convs may reorder sums)
    np.testing.assert_allclose(features, extractor(images[:6]).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    resized = extract_features(extractor, [images], resize_to=4)
    np.testing.assert_allclose(resized, extractor(resize_for_extractor(images, 4)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
