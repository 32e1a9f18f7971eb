"""LAPGAN's networks and pyramid: exact Laplacian decomposition, the expand filter, shapes per
level, parameter counts against the layer formulas, D_0's dropout factors, D_j's inputs."""

from __future__ import annotations

import pytest
import torch

from scalegan.models import count_parameters
from scalegan.models.lapgan import (
    CoarseDiscriminator,
    CoarseGenerator,
    LevelDiscriminator,
    LevelGenerator,
    expand,
    gaussian_pyramid,
    laplacian_pyramid,
    reconstruct,
    shrink,
)


def _dyadic(n: int, c: int, r: int, seed: int = 0) -> torch.Tensor:
    """Images of multiples of 1/128 in [-1, 1]: box means and bilinear weights (1/4, 3/4) of
    them are exact in floating point, so the pyramid's identities hold bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 129, (n, c, r, r), generator=g).float() / 128


def test_expand_is_bilinear_with_half_pixel_centres():
    # 1-D [0, 4] -> [0, 1, 3, 4] (edges clamped), separably in both directions
    x = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    row = torch.tensor([0.0, 1.0, 3.0, 4.0])
    want = row[None, :] + 2 * torch.tensor([0.0, 1.0, 3.0, 4.0])[:, None]
    assert torch.equal(expand(x)[0, 0], want)
    assert torch.equal(shrink(torch.arange(16.0).view(1, 1, 4, 4))[0, 0],
                       torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


@pytest.mark.parametrize(("levels", "channels"), [(3, 1), (4, 3)])
def test_laplacian_pyramid_is_exact(levels, channels):
    image = _dyadic(2, channels, 32)
    real = gaussian_pyramid(image, levels)
    assert [x.shape[-1] for x in real] == [32 >> k for k in reversed(range(levels))]
    for k, x in enumerate(real):  # each level is the box mean of the full image
        assert torch.equal(x, torch.nn.functional.avg_pool2d(image, 2 ** (levels - 1 - k)))
    lows, highs = laplacian_pyramid(real)
    assert lows[0] is None and torch.equal(highs[0], real[0])  # h at the top is the image
    for j in range(1, levels):
        assert lows[j].shape == highs[j].shape == real[j].shape
        assert torch.equal(highs[j] + expand(real[j - 1]), real[j])  # h_k + u(I_{k+1}) == I_k
    assert all(torch.equal(a, b) for a, b in zip(reconstruct(highs), real, strict=True))


def test_laplacian_pyramid_of_8_bit_images_to_rounding():
    # pixels k / 127.5 - 1 are not dyadic: the identity then holds to float32 rounding
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (4, 1, 32, 32), generator=g).float() / 127.5 - 1
    real = gaussian_pyramid(image, 3)
    lows, highs = laplacian_pyramid(real)
    for j in (1, 2):
        torch.testing.assert_close(highs[j] + lows[j], real[j], rtol=0, atol=1e-6)


def test_shapes_per_level():
    torch.manual_seed(0)
    G0, D0 = CoarseGenerator(7, 3, 8, hidden=16), CoarseDiscriminator(3, 8, hidden=12)
    z = torch.rand(5, 7) * 2 - 1
    coarse = G0(z)
    assert coarse.shape == (5, 3, 8, 8) and coarse.abs().max() <= 1
    assert D0(coarse).shape == (5,)
    for r in (16, 32):
        G = LevelGenerator(3, noise_channels=2, channels=6, kernel=3)
        D = LevelDiscriminator(3, r, channels=4, kernel=3)
        low = torch.rand(5, 3, r, r) * 2 - 1
        h = G(low, torch.rand(5, 2, r, r) * 2 - 1)
        assert h.shape == (5, 3, r, r)
        assert D(h, low).shape == (5,)
    images = reconstruct([coarse, torch.zeros(5, 3, 16, 16), torch.zeros(5, 3, 32, 32)])
    assert [tuple(x.shape) for x in images] == [(5, 3, 8, 8), (5, 3, 16, 16), (5, 3, 32, 32)]


def _linear(i: int, o: int) -> int:
    return i * o + o


def _conv(i: int, o: int, k: int) -> int:
    return i * o * k * k + o


@pytest.mark.parametrize("d_input", ["concat", "sum"])
def test_parameter_counts_match_the_layer_formulas(d_input):
    c, z, r0, k = 3, 7, 4, 3
    assert count_parameters(CoarseGenerator(z, c, r0, hidden=11)) == \
        _linear(z, 11) + _linear(11, 11) + _linear(11, c * r0 * r0)
    assert count_parameters(CoarseDiscriminator(c, r0, hidden=5)) == \
        _linear(c * r0 * r0, 5) + _linear(5, 5) + _linear(5, 1)
    assert count_parameters(LevelGenerator(c, 2, channels=6, kernel=k)) == \
        _conv(c + 2, 6, k) + _conv(6, 6, k) + _conv(6, c, k)
    inputs = 2 * c if d_input == "concat" else c
    assert count_parameters(LevelDiscriminator(c, 16, channels=4, kernel=k,
                                               d_input=d_input)) == \
        _conv(inputs, 4, k) + _conv(4, 4, k) + _linear(4 * 16 * 16, 1)


def test_paper_sizes():
    # CIFAR-10: G_0 100 -> 1200 -> 1200 -> 8x8x3, D_0 600 units; 128 maps, 5x5 kernels
    assert count_parameters(CoarseGenerator(100, 3, 8)) == \
        100 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 192 + 192 == 1_792_992
    assert count_parameters(CoarseDiscriminator(3, 8)) == \
        192 * 600 + 600 + 600 * 600 + 600 + 601 == 477_001
    assert count_parameters(LevelGenerator(3)) == \
        4 * 128 * 25 + 128 + 128 * 128 * 25 + 128 + 128 * 3 * 25 + 3 == 432_259
    assert count_parameters(LevelDiscriminator(3, 16)) == \
        6 * 128 * 25 + 128 + 128 * 128 * 25 + 128 + 128 * 256 + 1 == 461_825


def test_dropout_factors_scale_the_hidden_units():
    torch.manual_seed(0)
    D0 = CoarseDiscriminator(1, 4, hidden=6)
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(D0(x, torch.ones(3, 2, 6)), D0(x))
    keep = torch.ones(3, 2, 6)
    keep[:, 1] = 0  # every unit of the second hidden layer dropped: the output layer's bias
    torch.testing.assert_close(D0(x, keep), D0.out.bias.expand(3), rtol=0, atol=0)
    keep = torch.ones(3, 2, 6)
    keep[1, 0] = 0  # one sample's first layer dropped: only its logit changes
    out, plain = D0(x, keep), D0(x)
    assert out[0] == plain[0] and out[2] == plain[2] and out[1] != plain[1]


def test_level_discriminator_inputs():
    torch.manual_seed(0)
    h, low = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    summed = LevelDiscriminator(1, 8, channels=3, kernel=3, d_input="sum")
    assert torch.equal(summed(h, low), summed(h + low, torch.zeros_like(low)))
    joined = LevelDiscriminator(1, 8, channels=3, kernel=3)
    assert joined.features[0].in_channels == 2
    assert not torch.equal(joined(h, low), joined(h + low, torch.zeros_like(low)))


def test_wrong_inputs_raise():
    with pytest.raises(ValueError, match=r"z must have shape \(N, 4\)"):
        CoarseGenerator(4, 1, 8, hidden=4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"keep must have shape \(N, 2, 4\)"):
        CoarseDiscriminator(1, 8, hidden=4)(torch.zeros(2, 1, 8, 8), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"noise must have shape \(N, 1, 8, 8\)"):
        LevelGenerator(1, channels=2, kernel=3)(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"low must have shape \(N, 1, 8, 8\)"):
        LevelDiscriminator(1, 8, channels=2, kernel=3)(torch.zeros(2, 1, 8, 8),
                                                       torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="kernel must be odd"):
        LevelGenerator(1, kernel=4)
