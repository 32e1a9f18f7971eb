"""EBGAN's auto-encoder discriminators and the conv encoder / generator: shapes, the energy as
the norm of the reconstruction error, samples computed independently, and bad inputs named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalegan.models.ebgan import (
    ConvAutoencoderD,
    ConvEncoder,
    ConvGenerator,
    MLPAutoencoderD,
    conv_widths,
    energy,
)


def test_conv_widths_follow_the_dcgan_schedule():
    assert conv_widths(64, 2048, 512) == {4: 512, 8: 256, 16: 128, 32: 64, 64: 32}
    assert conv_widths(8, 32, 8) == {4: 8, 8: 4}
    with pytest.raises(ValueError, match="power of two >= 8"):
        conv_widths(12, 32, 8)


def test_energy_is_the_euclidean_norm_of_each_samples_error():
    x = torch.zeros(2, 1, 2, 2)
    recon = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[3.0, 0.0], [0.0, 4.0]]]])
    assert energy(recon, x).tolist() == [0.0, 5.0]
    assert energy(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])).tolist() == \
        [pytest.approx(2 ** 0.5)]
    assert energy(recon.bfloat16(), x.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize(("channels", "res"), [(1, 8), (3, 16)])
def test_conv_shapes(channels, res):
    torch.manual_seed(0)
    widths = conv_widths(res, 64, 16)
    x = torch.rand(5, channels, res, res) * 2 - 1
    assert ConvEncoder(channels, res, 7, widths)(x).shape == (5, 7)
    G = ConvGenerator(3, channels, res, widths)
    images = G(torch.randn(5, 3), res)
    assert images.shape == (5, channels, res, res) and images.abs().max() <= 1
    D = ConvAutoencoderD(channels, res, 6, widths)
    e, code = D(x, res)
    assert e.shape == (5,) and code.shape == (5, 6) and (e >= 0).all()
    torch.testing.assert_close(e, energy(D.decoder(code), x))
    assert not D.decoder.tanh and not D.decoder.normalise  # a linear output, no pixel norm
    assert not any(isinstance(m, nn.BatchNorm2d) for net in (G, D) for m in net.modules())


def test_conv_layer_counts():
    widths = conv_widths(32, 2048, 512)
    E = ConvEncoder(3, 32, 10, widths)
    convs = [m for m in E.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512]  # 16, 8, 4
    G = ConvGenerator(10, 3, 32, widths)
    ups = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [256, 128, 3]  # 8, 16, 32
    assert G.project.out_features == 512 * 16


def test_mlp_autoencoder_d():
    torch.manual_seed(0)
    D = MLPAutoencoderD(2, code_dim=5, hidden=16, layers=2)
    x = torch.randn(6, 2)
    e, code = D(x)
    assert e.shape == (6,) and code.shape == (6, 5)
    torch.testing.assert_close(e, (D.decoder(code) - x).norm(dim=1))
    assert sum(isinstance(m, nn.Linear) for m in D.modules()) == 6  # 2 hidden + out, each way


@pytest.mark.parametrize("which", ["mlp", "conv", "generator"])
def test_each_sample_is_computed_alone(which):
    # no batch statistics: a sample's output does not depend on the rest of its batch
    torch.manual_seed(1)
    if which == "mlp":
        net, x = MLPAutoencoderD(2, 3, 8, 2), torch.randn(4, 2)
    elif which == "conv":
        net, x = ConvAutoencoderD(1, 8, 3, conv_widths(8, 32, 8)), torch.randn(4, 1, 8, 8)
    else:
        net, x = ConvGenerator(3, 1, 8, conv_widths(8, 32, 8)), torch.randn(4, 3)
    whole = net(x)
    whole = whole[0] if isinstance(whole, tuple) else whole
    for i in range(4):
        part = net(x[i:i + 1])
        part = part[0] if isinstance(part, tuple) else part
        torch.testing.assert_close(part[0], whole[i])


def test_bad_inputs_are_named():
    widths = conv_widths(8, 32, 8)
    with pytest.raises(ValueError, match=r"ConvEncoder: x must have shape \(N, 1, 8, 8\)"):
        ConvEncoder(1, 8, 2, widths)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="must equal the model resolution 8"):
        ConvGenerator(2, 1, 8, widths)(torch.zeros(2, 2), 16)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 2\)"):
        ConvGenerator(2, 1, 8, widths)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="must equal the model resolution 8"):
        ConvAutoencoderD(1, 8, 2, widths)(torch.zeros(2, 1, 8, 8), 4)
    with pytest.raises(ValueError, match=r"MLPAutoencoderD: x must have shape \(N, 2\)"):
        MLPAutoencoderD(2, 2, 4, 1)(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"no entry for side\(s\) \[8\]"):
        ConvEncoder(1, 16, 2, {4: 8})
    with pytest.raises(ValueError, match="code_dim must be >= 1"):
        MLPAutoencoderD(2, 0)
