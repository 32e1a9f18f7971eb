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


# ------------------------------------------------------------------------ conditioning by label

K = 5  # classes


def _cond_cfg(cond_d: str, res: int = 8, **kw) -> ModelConfig:
    return ModelConfig(arch="dcgan", resolution=res, img_channels=3, latent_dim=8,
                       channel_base=64, channel_max=8, condition="label", num_classes=K,
                       cond_dim=6, cond_d=cond_d, **kw)


def test_unconditional_state_dict_keys_unchanged():
    cfg = ModelConfig(arch="dcgan", resolution=16, latent_dim=8, channel_base=64, channel_max=8)
    assert list(DCGANGenerator(cfg).state_dict()) == [
        "blocks.4.linear.weight", "blocks.4.norm.weight", "blocks.4.norm.bias",
        "blocks.4.norm.running_mean", "blocks.4.norm.running_var",
        "blocks.4.norm.num_batches_tracked", "blocks.8.0.weight", "blocks.8.1.weight",
        "blocks.8.1.bias", "blocks.8.1.running_mean", "blocks.8.1.running_var",
        "blocks.8.1.num_batches_tracked", "blocks.16.0.weight", "blocks.16.0.bias"]
    assert list(DCGANDiscriminator(cfg).state_dict()) == [
        "blocks.16.0.weight", "blocks.16.0.bias", "blocks.8.0.weight", "blocks.8.0.bias",
        "blocks.4.weight", "blocks.4.bias"]
    # condition=none ignores the label keys
    other = ModelConfig(arch="dcgan", resolution=16, latent_dim=8, channel_base=64, channel_max=8,
                        num_classes=7, cond_d="concat")
    assert list(DCGANDiscriminator(other).state_dict()) == list(
        DCGANDiscriminator(cfg).state_dict())


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
@pytest.mark.parametrize("res", [8, 16])
def test_conditional_shapes_and_parameters(cond_d, res):
    torch.manual_seed(0)
    cfg = _cond_cfg(cond_d, res)
    G, D = build_models(cfg)
    y = torch.tensor([0, 4, 2, 1])
    img = G(torch.randn(4, 8), res, cond=y)
    assert img.shape == (4, 3, res, res) and img.abs().max() <= 1.0
    assert D(img, res, cond=y).shape == (4,)
    c4 = cfg.channels(4)
    assert G.embed.weight.shape == (K, 6) and G.blocks["4"].linear.in_features == 8 + 6
    if cond_d == "concat":
        assert D.embed.weight.shape == (K, 6)
        assert D.joint[0].in_channels == c4 + 6 and D.joint[0].out_channels == c4
        assert D.blocks["4"].in_channels == c4
    else:
        assert D.embed.weight.shape == (K, c4 * 16) and D.joint is None
    extra = {"concat": ["embed.weight", "joint.0.weight", "joint.0.bias"],
             "projection": ["embed.weight"]}[cond_d]
    plain = DCGANDiscriminator(ModelConfig(arch="dcgan", resolution=res, latent_dim=8,
                                           channel_base=64, channel_max=8))
    assert sorted(D.state_dict()) == sorted([*plain.state_dict(), *extra])


def test_conditional_batchnorm_joint():
    D = DCGANDiscriminator(_cond_cfg("concat", 16), batchnorm=True)
    assert isinstance(D.joint[1], nn.BatchNorm2d) and D.joint[0].bias is None
    assert D(torch.randn(4, 3, 16, 16), 16, cond=torch.arange(4)).shape == (4,)


def test_new_layers_use_dcgan_init():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan", resolution=8, latent_dim=8, channel_base=64, channel_max=8,
                      condition="label", num_classes=20, cond_dim=128, cond_d="concat")
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    for w in (G.embed.weight, D.embed.weight, D.joint[0].weight):
        assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.count_nonzero(D.joint[0].bias) == 0


def test_projection_is_head_plus_inner_product():
    torch.manual_seed(1)
    D = DCGANDiscriminator(_cond_cfg("projection", 16)).double()
    with torch.no_grad():
        D.embed.weight.normal_()  # make the projection term of order 1
    feats = []
    D.blocks["8"].register_forward_hook(lambda m, i, o: feats.append(o))  # phi: the 4x4 map
    x, y = torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.tensor([2, 0, 2])
    logits = D(x, 16, cond=y)
    (h,) = feats
    head = D.blocks["4"](h).flatten()  # the unconditional head psi(phi)
    inner = (D.embed.weight[y] * h.flatten(1)).sum(1)
    torch.testing.assert_close(logits, head + inner, rtol=0, atol=1e-12)
    assert inner.abs().min() > 1e-3


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
def test_label_changes_output_and_interacts_with_image(cond_d):
    torch.manual_seed(2)
    cfg = _cond_cfg(cond_d)
    G, D = DCGANGenerator(cfg).double(), DCGANDiscriminator(cfg).double()
    with torch.no_grad():
        for m in (G.embed, D.embed):
            m.weight.normal_()
    z = torch.randn(2, 8, dtype=torch.float64).repeat(2, 1)  # the same two latents twice
    y = torch.tensor([0, 0, 3, 3])
    G.eval()  # BatchNorm statistics of the batch would couple the samples
    img = G(z, 8, cond=y)
    assert not torch.allclose(img[:2], img[2:])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64).repeat(2, 1, 1, 1)
    d = D(x, 8, cond=y)
    change = d[2:] - d[:2]  # label 3 against label 0, for each of the two images
    assert change.abs().min() > 1e-6
    # the label's effect depends on the image: D judges the pair, not the label alone
    assert not torch.allclose(change[0], change[1])


def test_conditional_discriminator_is_per_sample():
    torch.manual_seed(3)
    for cond_d in ("concat", "projection"):
        D = DCGANDiscriminator(_cond_cfg(cond_d))
        x = torch.randn(3, 3, 8, 8, requires_grad=True)
        D(x, 8, cond=torch.tensor([1, 2, 3]))[0].backward()
        assert x.grad[0].abs().sum() > 0 and torch.count_nonzero(x.grad[1:]) == 0
        assert D.embed.weight.grad[1].abs().sum() > 0
        assert torch.count_nonzero(D.embed.weight.grad[[0, 2, 3, 4]]) == 0


def test_cond_errors_name_the_argument():
    G, D = build_models(_cond_cfg("projection"))
    plain_g, plain_d = build_models(_cfg(8))
    z, x = torch.randn(2, 8), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="DCGANGenerator: cond is required"):
        G(z, 8)
    with pytest.raises(ValueError, match="DCGANDiscriminator: cond is required"):
        D(x, 8)
    with pytest.raises(ValueError, match="DCGANGenerator: cond was given"):
        plain_g(torch.randn(2, 32), 8, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="DCGANDiscriminator: cond was given"):
        plain_d(x, 8, cond=torch.tensor([0, 1]))
    for bad in (torch.tensor([0, K]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 5\)"):
            G(z, 8, cond=bad)
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 5\)"):
            D(x, 8, cond=bad)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2]), torch.tensor([[0], [1]])):
        with pytest.raises(ValueError, match=r"cond must be an integer tensor of shape \(2,\)"):
            D(x, 8, cond=bad)
