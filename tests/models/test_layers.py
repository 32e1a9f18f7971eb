"""Equalized-LR layers, pixel norm and minibatch stddev against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scalegan.models.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStddev,
    PixelNorm,
    UpConv2d,
    minibatch_stddev,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("gain", [math.sqrt(2), 1.0, 0.5])
def test_equalized_linear_matches_scaled_f_linear(gain):
    layer = EqualizedLinear(24, 10, gain=gain).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, 24, dtype=torch.float64)
    expected = F.linear(x, layer.weight * (gain / math.sqrt(24)), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k,gain", [(3, math.sqrt(2)), (1, 1.0)])
def test_equalized_conv_matches_scaled_f_conv2d(k, gain):
    layer = EqualizedConv2d(6, 5, k, gain=gain).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    expected = F.conv2d(x, layer.weight * (gain / math.sqrt(6 * k * k)), layer.bias, padding=k // 2)
    out = layer(x)
    assert out.shape == (2, 5, 7, 7)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_equalized_init_is_unit_normal_weights_and_zero_bias():
    conv = EqualizedConv2d(64, 64, 3)
    lin = EqualizedLinear(256, 256, bias=False)
    for w in (conv.weight, lin.weight):
        assert abs(w.mean().item()) < 0.02 and abs(w.std().item() - 1.0) < 0.02
    assert torch.count_nonzero(conv.bias) == 0
    assert lin.bias is None


def test_upconv_is_nearest_upsample_then_conv():
    layer = UpConv2d(4, 3).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x, independently
    expected = F.conv2d(up, layer.weight * (math.sqrt(2) / math.sqrt(4 * 9)), layer.bias, padding=1)
    out = layer(x)
    assert out.shape == (2, 3, 10, 10)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_pixel_norm_unit_mean_square_per_pixel():
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64) * 7.0 + 2.0
    y = PixelNorm()(x)
    ms = y.square().mean(dim=1)  # (N, H, W)
    torch.testing.assert_close(ms, torch.ones_like(ms), rtol=0, atol=1e-7)
    # Direction of every pixel's feature vector is unchanged.
    torch.testing.assert_close(y * x.square().mean(1, keepdim=True).sqrt(), x, rtol=1e-7, atol=1e-7)


def _reference_mbstd(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    """Loop version: groups are consecutive samples {jG, ..., jG + G - 1}."""
    n_batch, c, h, w = x.shape
    g = min(group_size, n_batch)
    n_groups = n_batch // g
    extra = torch.empty(n_batch, num_channels, h, w, dtype=x.dtype)
    cpg = c // num_channels
    for j in range(n_groups):
        members = x[j * g:(j + 1) * g]  # (G, C, H, W)
        assert members.shape[0] == g
        std = torch.std(members, dim=0, unbiased=False)  # (C, H, W)
        for f in range(num_channels):
            extra[j * g:(j + 1) * g, f] = std[f * cpg:(f + 1) * cpg].mean()
    return torch.cat([x, extra], dim=1)


@pytest.mark.parametrize("n,group", [(8, 4), (6, 3), (3, 4), (4, 1)])
@pytest.mark.parametrize("num_channels", [1, 2])
def test_minibatch_stddev_matches_direct_formula(n, group, num_channels):
    x = torch.randn(n, 6, 4, 4, dtype=torch.float64) * torch.linspace(0.5, 2, 6).reshape(1, 6, 1, 1)
    out = minibatch_stddev(x, group, num_channels)
    assert out.shape == (n, 6 + num_channels, 4, 4)
    # The layer uses sqrt(var + 1e-8): differs from the plain std by < 1e-8 / (2 std) here, and
    # exactly 1e-4 when the group has one member (std 0).
    atol = 2e-4 if min(group, n) == 1 else 1e-7
    torch.testing.assert_close(out, _reference_mbstd(x, group, num_channels), rtol=0, atol=atol)
    torch.testing.assert_close(MinibatchStddev(group, num_channels)(x), out, rtol=0, atol=0)


def test_minibatch_stddev_groups_are_independent():
    # Changing a sample of group 0 must not change the statistic of group 1 (N=8, G=4: 2 groups).
    x = torch.randn(8, 4, 4, 4, dtype=torch.float64)
    y = x.clone()
    y[0] += 5.0  # sample 0 is in group 0 = {0, 1, 2, 3}
    a, b = minibatch_stddev(x, 4, 1), minibatch_stddev(y, 4, 1)
    torch.testing.assert_close(a[4:, 4], b[4:, 4], rtol=0, atol=0)
    assert not torch.allclose(a[:4, 4], b[:4, 4])


def test_minibatch_stddev_indivisible_batch_names_n_and_group_size():
    with pytest.raises(ValueError, match=r"N=6.*group_size=4"):
        minibatch_stddev(torch.randn(6, 4, 4, 4), 4, 1)


def test_minibatch_stddev_indivisible_channels():
    with pytest.raises(ValueError, match="num_channels=2"):
        minibatch_stddev(torch.randn(4, 3, 4, 4), 4, 2)


def test_minibatch_stddev_gradient_finite_for_single_sample():
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    minibatch_stddev(x, 4, 1).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_minibatch_stddev_bf16_keeps_dtype():
    x = torch.randn(4, 8, 4, 4).bfloat16()
    out = minibatch_stddev(x, 4, 1)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 9, 4, 4)


def test_minibatch_stddev_is_invariant_to_splitting_the_batch_in_multiples_of_the_group():
    # Gradient accumulation and data parallelism cut the batch; consecutive groups make that exact.
    x = torch.randn(16, 4, 4, 4, dtype=torch.float64)
    whole = minibatch_stddev(x, 4, 1)
    parts = torch.cat([minibatch_stddev(x[:8], 4, 1), minibatch_stddev(x[8:], 4, 1)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)
