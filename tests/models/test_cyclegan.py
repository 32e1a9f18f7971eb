"""CycleGAN pair: shapes, published parameter counts, 70x70 receptive field, per-sample outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scalegan.models.cyclegan import PatchDiscriminator, ResnetGenerator, resnet_blocks_for


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(res, channels):
    torch.manual_seed(0)
    G = ResnetGenerator(img_channels=channels, ngf=8, n_blocks=2)
    D = PatchDiscriminator(img_channels=channels, ndf=8)
    x = torch.rand(2, channels, res, res) * 2 - 1
    y = G(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0  # tanh output
    logits = D(y)
    # three stride-2 convs, then two 4x4 stride-1 convs with padding 1 (each loses one pixel)
    assert logits.shape == (2, 1, res // 8 - 2, res // 8 - 2)


def test_wrong_channels_raise():
    G, D = ResnetGenerator(img_channels=3, ngf=4, n_blocks=1), PatchDiscriminator(ndf=4)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        G(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        D(torch.zeros(1, 1, 32, 32))


def test_published_parameter_counts():
    # c7s1-64, d128, d256, 9 x R256 (two 3x3 convs each), u128, u64, c7s1-3, all with biases
    conv = lambda c_in, c_out, k: c_in * c_out * k * k + c_out  # noqa: E731
    g_expected = (conv(3, 64, 7) + conv(64, 128, 3) + conv(128, 256, 3)
                  + 9 * 2 * conv(256, 256, 3)
                  + conv(256, 128, 3) + conv(128, 64, 3) + conv(64, 3, 7))
    d_expected = (conv(3, 64, 4) + conv(64, 128, 4) + conv(128, 256, 4) + conv(256, 512, 4)
                  + conv(512, 1, 4))
    assert g_expected == 11_378_179 and d_expected == 2_764_737
    assert _num_params(ResnetGenerator(3, 64, 9)) == 11_378_179
    assert _num_params(PatchDiscriminator(3, 64, 3)) == 2_764_737
    assert _num_params(ResnetGenerator(3, 64, 6)) == 11_378_179 - 3 * 2 * conv(256, 256, 3)


def test_resnet_blocks_for():
    assert [resnet_blocks_for(r) for r in (32, 128, 129, 256, 512)] == [6, 6, 9, 9, 9]


def test_instance_norm_without_affine_everywhere():
    for model in (ResnetGenerator(ngf=4, n_blocks=2), PatchDiscriminator(ndf=4)):
        norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
        assert norms and all(not m.affine and not m.track_running_stats for m in norms)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert all(m.bias is not None for m in convs)
    D = PatchDiscriminator(ndf=4)
    assert not isinstance(D.net[1], nn.InstanceNorm2d)  # no norm on D's first layer


def _window(grad: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (row min, row max, col min, col max) of the non-zero pixels of (C, H, W)."""
    rows = torch.nonzero(grad.abs().sum(dim=0) > 0)
    return (int(rows[:, 0].min()), int(rows[:, 0].max()),
            int(rows[:, 1].min()), int(rows[:, 1].max()))


def test_patch_receptive_field_is_70():
    torch.manual_seed(0)
    D = PatchDiscriminator(img_channels=3, ndf=16, n_layers=3).double()
    # The 70x70 figure is the receptive field of the convolutions. InstanceNorm statistics pool
    # over the whole map, so they are taken out to read off the convolutional window alone.
    D_conv = copy.deepcopy(D)
    for i, m in enumerate(D_conv.net):
        if isinstance(m, nn.InstanceNorm2d):
            D_conv.net[i] = nn.Identity()
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    out = D_conv(x)
    assert out.shape == (1, 1, 14, 14)
    out[0, 0, 7, 7].backward()
    grad = x.grad[0]  # (3, 128, 128)
    # output (i, j) sees input rows 8i - 23 .. 8i + 46 (stride 8, total padding offset 23)
    assert _window(grad) == (33, 102, 33, 102)
    assert bool((grad[:, 33:103, 33:103].abs().sum(dim=0) > 0).all())  # the full 70x70 window
    assert int(torch.count_nonzero(grad.abs().sum(dim=0))) == 70 * 70
    # With the norms in, the patch statistics reach the rest of the image.
    x.grad = None
    D(x)[0, 0, 7, 7].backward()
    assert _window(x.grad[0]) == (0, 127, 0, 127)


def test_outputs_are_per_sample():
    torch.manual_seed(0)
    G = ResnetGenerator(img_channels=3, ngf=8, n_blocks=2)
    D = PatchDiscriminator(img_channels=3, ndf=8)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    x2 = x.clone()
    x2[1] = torch.rand(3, 32, 32) * 2 - 1
    g, g2 = G(x), G(x2)
    d, d2 = D(x), D(x2)
    # the trainer shards the batch across ranks: sample 0 must not see sample 1
    torch.testing.assert_close(g2[0], g[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(g2[2], g[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(d2[0], d[0], rtol=0, atol=1e-6)
    assert not torch.allclose(g2[1], g[1]) and not torch.allclose(d2[1], d[1])
    # and a sample alone gives what it gives inside a batch (up to the conv kernels' rounding,
    # which may change with the batch size)
    torch.testing.assert_close(G(x[:1]), g[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(D(x[:1]), d[:1], rtol=0, atol=1e-5)


def test_init_is_paper_and_deterministic():
    torch.manual_seed(1)
    G = ResnetGenerator(ngf=16, n_blocks=2)
    torch.manual_seed(1)
    G2 = ResnetGenerator(ngf=16, n_blocks=2)
    for p, q in zip(G.parameters(), G2.parameters(), strict=True):
        assert torch.equal(p, q)
    w = G.net[4].weight  # first downsampling conv, 16 -> 32
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    convs = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    torch.manual_seed(2)
    assert not torch.equal(ResnetGenerator(ngf=16, n_blocks=2).net[4].weight, w)
