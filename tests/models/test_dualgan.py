"""DualGAN's U-Net translator: shapes down to 1x1, the skip connections, the parameter count by
hand, dropout through caller-given masks, per-sample outputs; the critics are CycleGAN's
PatchGAN (tested in test_cyclegan.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scalegan.models.dualgan import (
    PatchDiscriminator,
    UNetGenerator,
    dropout_shapes,
    unet_depth_for,
    unet_widths,
)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in: int, c_out: int) -> int:
    """Parameters of a 4x4 convolution (or transposed convolution) with a bias."""
    return c_in * c_out * 16 + c_out


def unet_parameters(channels: int, ngf: int, depth: int) -> int:
    """By hand: the encoder's convolutions, then the decoder's, each of which (but the first)
    reads its input joined to the mirrored encoder output (twice the channels)."""
    w = [ngf * min(2 ** i, 8) for i in range(depth)]
    encoder = conv(channels, w[0]) + sum(conv(w[i - 1], w[i]) for i in range(1, depth))
    decoder = (conv(w[-1], w[-2]) + sum(conv(2 * w[i], w[i - 1]) for i in range(1, depth - 1))
               + conv(2 * w[0], channels))
    return encoder + decoder


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_down_to_one_pixel(res, channels):
    torch.manual_seed(0)
    depth = unet_depth_for(res)
    G = UNetGenerator(channels, ngf=4, depth=depth)
    x = torch.rand(2, channels, res, res) * 2 - 1
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
             for m in G.down]
    y = G(x)
    for h in hooks:
        h.remove()
    assert y.shape == x.shape and y.abs().max() <= 1.0  # tanh output
    widths = unet_widths(4, depth)
    assert seen == [(2, widths[i], res >> (i + 1), res >> (i + 1)) for i in range(depth)]
    assert seen[-1][2:] == (1, 1)
    assert widths == [4, 8, 16, 32, 32] + [32] * (depth - 5)
    logits = PatchDiscriminator(channels, ndf=4, n_layers=2)(y)
    assert logits.shape == (2, 1, res // 4 - 2, res // 4 - 2)


def test_depth_for_resolution():
    assert [unet_depth_for(r) for r in (32, 128, 256, 1024)] == [5, 7, 8, 10]
    with pytest.raises(ValueError, match="power of two"):
        unet_depth_for(48)


def test_parameter_count_by_hand():
    # The published 256x256 U-Net (8 levels, ngf 64), and small ones of other depths
    assert unet_parameters(3, 64, 8) == 54_409_603
    assert _num_params(UNetGenerator(3, 64, 8)) == 54_409_603
    for channels, ngf, depth in ((1, 4, 5), (3, 8, 6), (1, 2, 2)):
        assert _num_params(UNetGenerator(channels, ngf, depth)) == unet_parameters(
            channels, ngf, depth)


def _cut(G: UNetGenerator, keep: set[int]) -> UNetGenerator:
    """A copy of ``G`` without the path through the 1x1 bottleneck (the innermost transposed
    convolution writes zeros) and without the skips into decoder layers not in ``keep`` (the
    second half of a later decoder layer's input channels is its skip)."""
    cut = UNetGenerator(G.img_channels, G.ngf, G.depth).double()
    cut.load_state_dict(G.state_dict())
    with torch.no_grad():
        cut.up[0][1].weight.zero_()
        cut.up[0][1].bias.zero_()
        for k in range(1, G.depth):
            if k not in keep:
                weight = cut.up[k][1].weight  # (in, out, 4, 4)
                weight[weight.shape[0] // 2:].zero_()
    return cut


def test_output_reaches_the_input_through_the_skips():
    # Without the bottleneck's path the output depends on the input through the skips only:
    # through each of them alone, and not at all with none.
    torch.manual_seed(0)
    G = UNetGenerator(1, ngf=4, depth=5).double()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64) * 2 - 1
    other = torch.rand(1, 1, 32, 32, dtype=torch.float64) * 2 - 1
    for k in range(1, 5):
        cut = _cut(G, {k})
        assert (cut(x) - cut(other)).abs().max() > 1e-4, k
    cut = _cut(G, set())
    torch.testing.assert_close(cut(x), cut(other), rtol=0, atol=0)
    assert not torch.allclose(_cut(G, {1, 2, 3, 4})(x), G(x))  # the bottleneck counts too


def test_skip_connection_widths():
    G = UNetGenerator(3, ngf=8, depth=6)
    widths = unet_widths(8, 6)
    ins = [m[1].in_channels for m in G.up]
    outs = [m[1].out_channels for m in G.up]
    assert ins == [widths[5]] + [2 * widths[i] for i in range(4, -1, -1)]
    assert outs == [widths[i] for i in range(4, -1, -1)] + [3]


def test_norms_and_activations():
    G = UNetGenerator(1, ngf=4, depth=5)
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in G.modules())
    # no norm after the first and the innermost encoder convolutions, nor after the output one
    assert [any(isinstance(m, nn.InstanceNorm2d) for m in layer) for layer in G.down] == [
        False, True, True, True, False]
    assert isinstance(G.up[-1][-1], nn.Tanh)
    assert all(isinstance(layer[0], nn.LeakyReLU) for layer in G.down[1:])
    assert all(isinstance(layer[0], nn.ReLU) for layer in G.up)
    convs = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is not None and m.kernel_size == (4, 4) and m.stride == (2, 2)
               for m in convs)


def test_dropout_through_given_masks():
    torch.manual_seed(0)
    G = UNetGenerator(1, ngf=4, depth=5, dropout_layers=3).double()
    shapes = G.dropout_shapes(32, 32)
    assert shapes == [(32, 2, 2), (16, 4, 4), (8, 8, 8)]
    assert dropout_shapes(64, 8, 3, 256, 256) == [(512, 2, 2), (512, 4, 4), (512, 8, 8)]
    assert dropout_shapes(4, 5, 9, 32, 32)[-1] == (4, 16, 16)  # never the output layer
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64) * 2 - 1
    ones = [torch.ones(3, *s, dtype=torch.float64) for s in shapes]
    torch.testing.assert_close(G(x, ones), G(x), rtol=0, atol=0)
    for k in range(3):  # dropping everything of one layer changes the output
        masks = [m.clone() for m in ones]
        masks[k].zero_()
        assert not torch.allclose(G(x, masks), G(x))
    # a mask of a sample acts on that sample only
    masks = [m.clone() for m in ones]
    masks[0][1].zero_()
    y = G(x, masks)
    torch.testing.assert_close(y[[0, 2]], G(x)[[0, 2]], rtol=0, atol=1e-12)
    assert not torch.allclose(y[1], G(x)[1])
    with pytest.raises(ValueError, match="noise masks must have shapes"):
        G(x, ones[:2])
    assert UNetGenerator(1, ngf=4, depth=5, dropout_layers=0).dropout_shapes(32, 32) == []


def test_outputs_are_per_sample():
    torch.manual_seed(0)
    G = UNetGenerator(3, ngf=4, depth=5).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(G(x)[:2], G(x[:2]), rtol=0, atol=1e-12)


def test_bad_inputs_raise():
    G = UNetGenerator(3, ngf=4, depth=5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) with H and W multiples of 32"):
        G(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of 32"):
        G(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        UNetGenerator(3, ngf=4, depth=0)


def test_initialisation():
    torch.manual_seed(0)
    G = UNetGenerator(3, ngf=64, depth=8)
    weights = torch.cat([m.weight.flatten() for m in G.modules()
                         if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(weights.std().item() - 0.02) < 1e-3 and abs(weights.mean().item()) < 1e-4
    assert all(m.bias.abs().max() == 0 for m in G.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
