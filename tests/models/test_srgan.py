"""SRGAN pair: shapes, the paper's generator size, per-sample outputs, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalegan.models.srgan import SRDiscriminator, SRResNet


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("scale", "size"), [(4, 8), (2, 8), (8, 4)])
def test_generator_shapes(scale, size):
    torch.manual_seed(0)
    G = SRResNet(img_channels=3, channels=16, num_blocks=2, scale=scale)
    lr = torch.randn(2, 3, size, size + 2)
    assert G(lr).shape == (2, 3, size * scale, (size + 2) * scale)


def test_generator_grayscale_and_batchnorm():
    G = SRResNet(img_channels=1, channels=8, num_blocks=2, scale=2, norm="batch")
    assert G(torch.randn(3, 1, 8, 8)).shape == (3, 1, 16, 16)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == 2 * 2 + 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in SRResNet(channels=8).modules())


def test_paper_generator_parameter_count():
    c, k, blocks = 64, 3, 16

    def conv(c_in: int, c_out: int, size: int) -> int:
        return c_in * c_out * size * size + c_out

    prelu = 1  # one shared slope per PReLU layer
    expected = (
        conv(k, c, 9) + prelu  # head
        + blocks * (2 * conv(c, c, 3) + prelu)  # residual blocks
        + conv(c, c, 3)  # conv closing the long skip
        + 2 * (conv(c, 4 * c, 3) + prelu)  # two x2 sub-pixel stages for scale 4
        + conv(c, k, 9)  # tail
    )
    G = SRResNet(img_channels=3, channels=64, num_blocks=16, scale=4, norm="none")
    assert _num_params(G) == expected == 1_545_238
    prelus = [m for m in G.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 1 + 16 + 2 and all(m.weight.numel() == 1 for m in prelus)


@pytest.mark.parametrize("res", [32, 96])
def test_discriminator_shape(res):
    torch.manual_seed(0)
    D = SRDiscriminator(img_channels=3, resolution=res, channels=8)
    assert D(torch.randn(3, 3, res, res)).shape == (3,)
    assert D.classifier[1].in_features == 8 * 8 * (res // 16) ** 2
    convs = [m for m in D.features if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert [m.stride[0] for m in convs] == [1, 2, 1, 2, 1, 2, 1, 2]


def test_paper_discriminator_widths():
    D = SRDiscriminator(resolution=96)
    assert D.classifier[1].in_features == 512 * 6 * 6 and D.classifier[1].out_features == 1024
    Db = SRDiscriminator(resolution=32, channels=8, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in Db.modules()) == 7  # none on the first conv
    assert Db(torch.randn(2, 3, 32, 32)).shape == (2,)


def test_discriminator_wrong_input_raises():
    D = SRDiscriminator(resolution=32, channels=4)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        D(torch.randn(2, 3, 48, 48))


def test_outputs_are_per_sample():
    torch.manual_seed(0)
    G = SRResNet(channels=16, num_blocks=2, scale=2)
    D = SRDiscriminator(resolution=32, channels=8)
    lr = torch.randn(3, 3, 16, 16)
    lr2 = lr.clone()
    lr2[1] = torch.randn(3, 16, 16)
    g, g2 = G(lr), G(lr2)
    d, d2 = D(g), D(g2)
    # the trainer shards the batch across ranks: sample 0 must not see sample 1
    torch.testing.assert_close(g2[0], g[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(d2[0], d[0], rtol=0, atol=1e-6)
    assert not torch.allclose(g2[1], g[1]) and not torch.allclose(d2[1], d[1])
    # whereas the paper's BatchNorm (in training mode) couples the samples
    torch.manual_seed(0)
    Gb = SRResNet(channels=16, num_blocks=2, scale=2, norm="batch")
    assert not torch.allclose(Gb(lr2)[0], Gb(lr)[0])


def test_init_is_deterministic():
    torch.manual_seed(3)
    G, D = SRResNet(channels=8, num_blocks=2), SRDiscriminator(resolution=32, channels=8)
    torch.manual_seed(3)
    G2, D2 = SRResNet(channels=8, num_blocks=2), SRDiscriminator(resolution=32, channels=8)
    for p, q in zip([*G.parameters(), *D.parameters()], [*G2.parameters(), *D2.parameters()],
                    strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("scale", [1, 3, 6, 0, -2, 2.0, True])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        SRResNet(channels=4, num_blocks=1, scale=scale)


@pytest.mark.parametrize("res", [0, 8, 24, 100, 32.0])
def test_bad_resolution_raises(res):
    with pytest.raises(ValueError, match="resolution"):
        SRDiscriminator(resolution=res, channels=4)


def test_bad_norm_raises():
    with pytest.raises(ValueError, match="norm"):
        SRResNet(norm="instance")
    with pytest.raises(ValueError, match="norm"):
        SRDiscriminator(norm="layer")
