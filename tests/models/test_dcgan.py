"""DCGAN pair: shapes, fixed resolution, no cross-sample coupling in D by default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalegan.config import ModelConfig
from scalegan.models import DCGANDiscriminator, DCGANGenerator, build_models, count_parameters


def _cfg(res: int, img_channels: int = 3) -> ModelConfig:
    return ModelConfig(arch="dcgan", resolution=res, img_channels=img_channels, latent_dim=32,
                       channel_base=1024, channel_max=64)


@pytest.mark.parametrize("res", [32, 64])
def test_shapes(res):
    torch.manual_seed(0)
    G, D = build_models(_cfg(res))
    assert isinstance(G, DCGANGenerator) and isinstance(D, DCGANDiscriminator)
    assert G.resolution == G.min_resolution == res and D.min_resolution == res
    img = G(torch.randn(5, 32), res)
    assert img.shape == (5, 3, res, res)
    assert img.abs().max() <= 1.0  # tanh output
    logits = D(img, res, alpha=0.3)  # alpha is ignored
    assert logits.shape == (5,)
    assert torch.equal(D(img, res), logits)


def test_widths_follow_channel_schedule():
    cfg = _cfg(64)
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    assert list(G.blocks.keys()) == ["4", "8", "16", "32", "64"]
    assert list(D.blocks.keys()) == ["64", "32", "16", "8", "4"]
    assert G.blocks["4"].linear.out_features == cfg.channels(4) * 16
    assert G.blocks["16"][0].out_channels == cfg.channels(16)
    assert G.blocks["64"][0].out_channels == 3
    assert D.blocks["64"][0].in_channels == 3 and D.blocks["64"][0].out_channels == cfg.channels(32)
    assert D.blocks["16"][0].out_channels == cfg.channels(8)


def test_grayscale_and_smallest_resolution():
    G, D = build_models(_cfg(8, img_channels=1))
    img = G(torch.randn(2, 32), 8)
    assert img.shape == (2, 1, 8, 8) and D(img, 8).shape == (2,)


@pytest.mark.parametrize("bad", [16, 64, 32.0, "32"])
def test_wrong_resolution_raises(bad):
    G, D = build_models(_cfg(32))
    with pytest.raises(ValueError, match="must equal the model resolution 32"):
        G(torch.randn(2, 32), bad)
    with pytest.raises(ValueError, match="must equal the model resolution 32"):
        D(torch.randn(2, 3, 32, 32), bad)


def test_wrong_input_shape_raises():
    G, D = build_models(_cfg(32))
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        G(torch.randn(2, 31), 32)
    with pytest.raises(ValueError, match="img must have shape"):
        D(torch.randn(2, 3, 64, 64), 32)


def test_discriminator_default_has_no_batchnorm_and_is_per_sample():
    torch.manual_seed(0)
    D = DCGANDiscriminator(_cfg(32))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    D(x, 32)[0].backward()
    # D(x_0) depends on x_0 only, so input-gradient penalties (R1, WGAN-GP) are per sample.
    assert x.grad[0].abs().sum() > 0 and torch.count_nonzero(x.grad[1:]) == 0


def test_discriminator_batchnorm_option():
    cfg = _cfg(32)
    D = DCGANDiscriminator(cfg, batchnorm=True)
    bns = [m for m in D.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2  # 16->8 and 8->4; none on the input layer
    assert D(torch.randn(4, 3, 32, 32), 32).shape == (4,)
    assert count_parameters(D) != count_parameters(DCGANDiscriminator(cfg))


def test_dcgan_init():
    torch.manual_seed(0)
    G = DCGANGenerator(ModelConfig(arch="dcgan", resolution=64))
    w = G.blocks["8"][0].weight
    assert abs(w.std().item() - 0.02) < 0.002
