"""MRGAN's encoders and conv D: shapes and bad inputs named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalegan.models.ebgan import ConvEncoder, conv_widths
from scalegan.models.mrgan import ConvDiscriminator, MLPEncoder


def test_mlp_encoder():
    torch.manual_seed(0)
    E = MLPEncoder(2, latent_dim=3, hidden=16, layers=2)
    assert E(torch.randn(5, 2)).shape == (5, 3)
    assert [m.out_features for m in E.modules() if isinstance(m, nn.Linear)] == [16, 16, 3]
    with pytest.raises(ValueError, match=r"MLPEncoder: x must have shape \(N, 2\)"):
        E(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        MLPEncoder(2, 0)


def test_conv_discriminator_is_a_one_output_encoder():
    torch.manual_seed(0)
    widths = conv_widths(16, 64, 16)
    D = ConvDiscriminator(3, 16, widths)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    logits = D(x, 16, 1.0)
    assert logits.shape == (4,)
    torch.manual_seed(0)
    torch.testing.assert_close(logits, ConvEncoder(3, 16, 1, widths)(x).flatten())
    with pytest.raises(ValueError, match="must equal the model resolution 16"):
        D(x, 8)
