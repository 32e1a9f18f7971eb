"""StyleGAN2 networks (config F): parameter counts, shapes and gradients, the mapping network's
learning rate multiplier, w_avg and truncation, noise modes, D's residual block.

The modulated convolutions run ``impl="ref"`` (the fast path has its own tests in tests/ops).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scalegan.models.stylegan2 import (
    Discriminator,
    FullyConnected,
    Generator,
    MappingNetwork,
    SynthesisNetwork,
    _DBlock,
)
from scalegan.ops.minibatch_stddev import minibatch_stddev

# Counts printed by the official StyleGAN2 code at 1024^2, config F.
PUBLISHED_G = 30_370_060
PUBLISHED_D = 29_011_905

SMALL = dict(channel_base=1024, channel_max=32)  # 32 channels up to 32^2, 16 at 64^2


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ch(r: int, base: int = 32768, cmax: int = 512) -> int:
    return min(base // r, cmax)


def _formula_g(res: int, img: int = 3, z: int = 512, w: int = 512, layers: int = 8) -> int:
    """Parameters of G by hand: mapping FCs; per modulated conv an affine (w -> in, + bias), the
    weight, a noise strength and a bias; per toRGB an affine, the 1x1 weight and a bias."""
    n = z * w + w + (layers - 1) * (w * w + w)
    conv = lambda i, o, k: (w * i + i) + o * i * k * k + o  # noqa: E731
    n += _ch(4) * 16 + conv(_ch(4), _ch(4), 3) + 1 + conv(_ch(4), img, 1)
    r = 8
    while r <= res:
        n += conv(_ch(r // 2), _ch(r), 3) + 1 + conv(_ch(r), _ch(r), 3) + 1
        n += conv(_ch(r), img, 1)
        r *= 2
    return n


def _formula_d(res: int, img: int = 3) -> int:
    """Parameters of D by hand: fromRGB, per block conv3x3 + conv3x3 (bias) + 1x1 skip (no
    bias), epilogue conv3x3 over C + 1 maps, FC 16C -> C, FC C -> 1."""
    n = img * _ch(res) + _ch(res)
    r = res
    while r > 4:
        a, b = _ch(r), _ch(r // 2)
        n += a * a * 9 + a + a * b * 9 + b + a * b
        r //= 2
    c = _ch(4)
    return n + (c + 1) * c * 9 + c + 16 * c * c + c + c + 1


def test_parameter_counts_config_f_1024():
    with torch.device("meta"):
        G = Generator()  # config F defaults: 1024^2, RGB, 512-d z and w
        D = Discriminator()
    g, d = _count(G), _count(D)
    # parameters only: w_avg, noise_const and the FIR filters are buffers
    assert g == _formula_g(1024) and d == _formula_d(1024)
    assert abs(g - PUBLISHED_G) / PUBLISHED_G < 0.02
    assert abs(d - PUBLISHED_D) / PUBLISHED_D < 0.02
    assert _count(G.mapping) == 8 * (512 * 512 + 512)
    assert G.num_ws == G.synthesis.num_ws == 18
    widths = {r: G.synthesis.blocks[str(r)].conv1.weight.shape[0] for r in (4, 64, 128, 256, 512,
                                                                          1024)}
    assert widths == {4: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert {n for n, _ in G.named_buffers() if "noise_const" not in n} >= {"mapping.w_avg"}


# 1024: the published depth (18 styles, 9 synthesis and 8 D blocks) at reduced widths, batch 1
@pytest.mark.parametrize("res,img_channels", [(32, 1), (32, 3), (64, 1), (64, 3), (1024, 3)])
def test_forward_backward_every_parameter_gets_a_gradient(res, img_channels):
    torch.manual_seed(0)
    G = Generator(z_dim=32, w_dim=32, resolution=res, img_channels=img_channels, impl="ref",
                  **SMALL)
    D = Discriminator(res, img_channels, **SMALL)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    z = torch.randn(1, 32)
    img, ws = G(z, return_ws=True)
    ws.retain_grad()
    assert img.shape == (1, img_channels, res, res) and ws.shape == (1, G.num_ws, 32)
    logits = D(img)
    assert logits.shape == (1, 1)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    logits.sum().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # every style input is read by some layer
    assert (ws.grad.abs().sum(dim=2) > 0).all()


def test_fc_lr_multiplier_scales_the_gradient():
    torch.manual_seed(0)
    lr_mul, fan_in = 0.01, 7
    slow = FullyConnected(fan_in, 5, lr_multiplier=lr_mul)
    plain = FullyConnected(fan_in, 5, lr_multiplier=1.0)
    with torch.no_grad():  # the same effective weight and bias
        plain.weight.copy_(slow.weight * lr_mul)
        plain.bias.uniform_(-1, 1)
        slow.bias.copy_(plain.bias / lr_mul)
    x, c = torch.randn(3, fan_in), torch.randn(3, 5)
    y_slow, y_plain = slow(x), plain(x)
    torch.testing.assert_close(y_slow, y_plain, rtol=1e-5, atol=1e-6)
    (y_slow * c).sum().backward()
    (y_plain * c).sum().backward()
    # by hand: y = x W^T g + b m, g = m / sqrt(fan_in); dL/dW = g c^T x, dL/db = m sum_n c
    torch.testing.assert_close(plain.weight.grad, c.T @ x / math.sqrt(fan_in))
    torch.testing.assert_close(slow.weight.grad, lr_mul * c.T @ x / math.sqrt(fan_in))
    torch.testing.assert_close(slow.weight.grad, lr_mul * plain.weight.grad)
    torch.testing.assert_close(slow.bias.grad, lr_mul * c.sum(0))
    # initialisation: stored weight N(0, 1/m^2), so the effective weight is N(0, 1/fan_in)
    big = FullyConnected(512, 512, lr_multiplier=lr_mul, bias_init=1.0)
    assert abs(big.weight.std().item() * lr_mul - 1.0) < 0.02
    torch.testing.assert_close(big.bias * lr_mul, torch.ones(512))


def test_mapping_network_matches_hand_formula():
    torch.manual_seed(0)
    M = MappingNetwork(z_dim=12, w_dim=10, num_layers=3).double().eval()
    z = torch.randn(4, 12, dtype=torch.float64)
    x = z / z.square().mean(1, keepdim=True).add(1e-8).sqrt()
    for layer in M.layers:
        h = x @ layer.weight.T * (0.01 / math.sqrt(x.shape[1])) + layer.bias * 0.01
        x = torch.where(h >= 0, h, 0.2 * h) * math.sqrt(2)
    torch.testing.assert_close(M(z), x, rtol=1e-12, atol=1e-12)
    assert all(layer.lr_multiplier == 0.01 for layer in M.layers)


def test_w_avg_update_and_truncation():
    torch.manual_seed(0)
    beta = 0.9
    M = MappingNetwork(z_dim=8, w_dim=6, num_layers=2, w_avg_beta=beta, num_ws=5).double()
    z1, z2 = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    M.eval()
    w1, w2 = M(z1)[:, 0], M(z2)[:, 0]
    assert torch.equal(M.w_avg, torch.zeros(6, dtype=torch.float64))  # eval: no update
    M.train()
    M(z1)
    expected = w1.mean(0) + beta * (0 - w1.mean(0))
    torch.testing.assert_close(M.w_avg, expected, rtol=1e-12, atol=1e-12)
    M(z2)
    expected = w2.mean(0) + beta * (expected - w2.mean(0))
    torch.testing.assert_close(M.w_avg, expected, rtol=1e-12, atol=1e-12)
    before = M.w_avg.clone()
    M(z1, update_w_avg=False)
    assert torch.equal(M.w_avg, before)

    M.eval()
    ws = M(z1)  # (4, 5, 6), w broadcast to every style
    assert ws.shape == (4, 5, 6) and torch.equal(ws, w1[:, None].expand(4, 5, 6))
    avg = M.w_avg
    torch.testing.assert_close(M.truncate(ws, 0.0), avg.expand(4, 5, 6), rtol=0, atol=1e-15)
    torch.testing.assert_close(M.truncate(ws, 1.0), ws, rtol=0, atol=1e-15)
    torch.testing.assert_close(M.truncate(ws, 0.7), avg + 0.7 * (ws - avg))
    cut = M.truncate(ws, 0.5, cutoff=2)
    torch.testing.assert_close(cut[:, :2], avg + 0.5 * (ws[:, :2] - avg))
    assert torch.equal(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(M(z1, truncation_psi=0.7), avg + 0.7 * (ws - avg))


def test_generator_psi_zero_gives_the_same_image_for_every_z():
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, resolution=32, impl="ref", **SMALL).double().eval()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        a = G(torch.randn(2, 16, dtype=torch.float64), truncation_psi=0.0, noise_mode="const")
        b = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, 16), noise_mode="const")
    torch.testing.assert_close(a, b.expand(2, -1, -1, -1), rtol=1e-10, atol=1e-10)


def test_noise_modes():
    torch.manual_seed(0)
    S = SynthesisNetwork(w_dim=16, resolution=32, img_channels=3, impl="ref", **SMALL).double()
    ws = torch.randn(2, S.num_ws, 16, dtype=torch.float64)
    with torch.no_grad():
        strengths = [m for n, m in S.named_parameters() if n.endswith("noise_strength")]
        assert len(strengths) == 2 * 3 + 1  # two convs at each of 8, 16, 32; one at 4
        for s in strengths:
            s.fill_(0.5)
        const_a = S(ws, noise_mode="const")
        torch.manual_seed(123)
        const_b = S(ws, noise_mode="const")
        rand_a, rand_b = S(ws, noise_mode="random"), S(ws, noise_mode="random")
        none = S(ws, noise_mode="none")
        for s in strengths:
            s.zero_()
        no_strength = S(ws, noise_mode="random")
    assert torch.equal(const_a, const_b)
    assert (rand_a - rand_b).abs().max() > 1e-3
    assert (const_a - none).abs().max() > 1e-3
    torch.testing.assert_close(none, no_strength, rtol=0, atol=0)
    assert {n for n, _ in S.named_buffers() if n.endswith("noise_const")} >= {
        "blocks.4.conv1.noise_const", "blocks.32.conv0.noise_const", "blocks.32.conv1.noise_const"}
    with pytest.raises(ValueError, match="noise_mode"):
        S(ws, noise_mode="fixed")


@pytest.mark.parametrize("batch", [2, 4])
def test_discriminator_output_shape(batch):
    torch.manual_seed(0)
    D = Discriminator(32, 3, **SMALL)
    out = D(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, 1) and torch.isfinite(out).all()
    assert list(D.blocks.keys()) == ["32", "16", "8"]


def _blur_twin(x: torch.Tensor, pad: int | tuple[int, int], stride: int = 1,
               gain: float = 1.0) -> torch.Tensor:
    """Depthwise [1,3,3,1] x [1,3,3,1] / 64 * gain (symmetric, so correlation = convolution)
    after zero padding ``pad`` (before, after) on both axes."""
    p0, p1 = (pad, pad) if isinstance(pad, int) else pad
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype)
    k = torch.outer(k, k) / 64 * gain
    c = x.shape[1]
    return F.conv2d(F.pad(x, (p0, p1, p0, p1)), k.expand(c, 1, 4, 4), stride=stride, groups=c)


def _modconv_twin(x, weight, styles, demodulate, up):
    """StyleGAN2 eq. 1-3 one sample at a time; up=2: the stride-2 transposed conv of the
    paper's code as zero insertion (2H - 1 rows), k - 1 = 2 pixels of zero padding and a
    correlation with w'' (2H + 1 rows), then the blur with 1 pixel of padding per side and gain
    4 ((2H + 1) + 2 - 3 = 2H)."""
    out = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if up == 1:
            out.append(F.conv2d(x[n:n + 1], w, padding=w.shape[-1] // 2))
        else:
            h, wd = x.shape[2:]
            u = x.new_zeros(1, x.shape[1], 2 * h - 1, 2 * wd - 1)
            u[:, :, ::2, ::2] = x[n:n + 1]
            y = F.conv2d(F.pad(u, (2, 2, 2, 2)), w)
            out.append(_blur_twin(y, 1, gain=4.0))
    return torch.cat(out)


def _upsample_twin(img):
    """Zero insertion (samples at even positions), pad (2, 1), blur with gain 4."""
    n, c, h, w = img.shape
    up = img.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = img
    return _blur_twin(up, (2, 1), gain=4.0)


def _synthesis_twin(S, ws):
    """The synthesis network with noise_mode="const", from its parameters and the formulas."""
    lrelu = lambda v: F.leaky_relu(v, 0.2) * math.sqrt(2)  # noqa: E731
    x = img = None
    i = 0  # style index
    for r, block in S.blocks.items():
        if r == "4":
            x = block.const.expand(ws.shape[0], -1, -1, -1)
            layers = [block.conv1]
        else:
            layers = [block.conv0, block.conv1]
        for layer in layers:
            styles = ws[:, i] @ layer.affine.weight.T / math.sqrt(S.w_dim) + layer.affine.bias
            fan_in = layer.weight[0].numel()
            x = _modconv_twin(x, layer.weight / math.sqrt(fan_in), styles, True, layer.up)
            x = x + layer.noise_const * layer.noise_strength
            x = lrelu(x + layer.bias.reshape(1, -1, 1, 1))
            i += 1
        t = block.torgb
        styles = ws[:, i] @ t.affine.weight.T / math.sqrt(S.w_dim) + t.affine.bias
        y = _modconv_twin(x, t.weight / math.sqrt(t.weight.shape[1]), styles, False, 1)
        y = y + t.bias.reshape(1, -1, 1, 1)
        img = y if img is None else _upsample_twin(img) + y
    assert i == S.num_ws - 1
    return img


def test_synthesis_matches_twin():
    torch.manual_seed(0)
    S = SynthesisNetwork(w_dim=8, resolution=32, img_channels=3, channel_base=64, channel_max=4,
                         impl="ref").double()
    with torch.no_grad():
        for name, p in S.named_parameters():
            if name.endswith(("noise_strength", "bias")):
                p.normal_()
    ws = torch.randn(2, S.num_ws, 8, dtype=torch.float64)
    torch.testing.assert_close(S(ws, noise_mode="const"), _synthesis_twin(S, ws),
                               rtol=1e-9, atol=1e-9)


def test_conv_clamp():
    torch.manual_seed(0)
    kw = dict(w_dim=8, resolution=32, img_channels=3, channel_base=64, channel_max=4, impl="ref")
    S, Sc = SynthesisNetwork(**kw).double(), SynthesisNetwork(conv_clamp=0.05, **kw).double()
    Sc.load_state_dict(S.state_dict())
    layer, layer_c = S.blocks["8"].conv0, Sc.blocks["8"].conv0
    x, w = torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    out = layer_c(x, w, "const")
    assert out.abs().max() <= 0.05 and (out.abs() == 0.05).any()
    torch.testing.assert_close(out, layer(x, w, "const").clamp(-0.05, 0.05), rtol=0, atol=0)
    block = _DBlock(3, 4, conv_clamp=0.05).double()
    h = block.conv1(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert h.abs().max() <= 0.05 * math.sqrt(0.5) + 1e-15  # scaled with the path gain


def test_minibatch_stddev_is_stylegan2s_statistic_over_consecutive_groups():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # strided groups made consecutive
    ours = minibatch_stddev(x[perm], 4, 2, impl="ref")[torch.argsort(perm)]
    torch.testing.assert_close(ours, _stylegan2_mbstd(x, 4, 2), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(minibatch_stddev(x, 4, 2, impl="ref"), _stylegan2_mbstd(x, 4, 2))


def _act(v, b):
    return F.leaky_relu(v + b.reshape(1, -1, *([1] * (v.ndim - 2))), 0.2) * math.sqrt(2)


def _d_block_twin(block, x):
    """(lrelu conv3x3 -> blur (pad 2) -> stride-2 conv3x3 -> lrelu) and (blur (pad 1) with
    stride 2 -> 1x1 conv, no bias), summed and divided by sqrt(2)."""
    c = x.shape[1]
    h = _act(F.conv2d(x, block.conv0.weight / math.sqrt(c * 9), padding=1), block.conv0.bias)
    main = _act(F.conv2d(_blur_twin(h, 2, 1), block.conv1.weight / math.sqrt(c * 9), stride=2),
                block.conv1.bias)
    skip = F.conv2d(_blur_twin(x, 1, 2), block.skip.weight / math.sqrt(c))
    return (main + skip) / math.sqrt(2)


def _stylegan2_mbstd(x, g, f):
    """StyleGAN2's layer: groups of strided samples (sample i in group i mod (N / G))."""
    n, c, h, w = x.shape
    y = x.reshape(g, n // g, f, c // f, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=(2, 3, 4))  # (N/G, F)
    return torch.cat([x, y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)], dim=1)


def _discriminator_twin(D, img):
    fr = D.from_rgb
    x = _act(F.conv2d(img, fr.weight / math.sqrt(img.shape[1])), fr.bias)
    for block in D.blocks.values():
        x = _d_block_twin(block, x)
    ep = D.epilogue
    x = _stylegan2_mbstd(x, min(ep.mbstd_group_size, x.shape[0]), ep.mbstd_num_channels)
    x = _act(F.conv2d(x, ep.conv.weight / math.sqrt(x.shape[1] * 9), padding=1), ep.conv.bias)
    x = x.flatten(1)
    x = _act(x @ ep.fc.weight.T / math.sqrt(x.shape[1]), ep.fc.bias)
    return x @ ep.out.weight.T / math.sqrt(x.shape[1]) + ep.out.bias


def test_d_block_matches_plain_torch_twin():
    torch.manual_seed(0)
    block = _DBlock(5, 7, conv_clamp=None).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    expected = _d_block_twin(block, x)
    assert expected.shape == (2, 7, 4, 4)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_d_block_residual_scaling_on_hand_built_input():
    # main path reduced to its bias b (conv1 weight 0): conv1 gives lrelu(b) * sqrt(2) / sqrt(2)
    # = b; skip path of a constant image c: the blur of the border pixels sees one zero of the
    # padding (weight 1/8 per axis: 7/8), the interior stays c; times w / sqrt(C_in) / sqrt(2).
    block = _DBlock(1, 1, conv_clamp=None).double()
    b, w, c = 0.25, 3.0, 2.0
    with torch.no_grad():
        block.conv0.weight.normal_()
        block.conv1.weight.zero_()
        block.conv1.bias.fill_(b)
        block.skip.weight.fill_(w)
    out = block(torch.full((1, 1, 8, 8), c, dtype=torch.float64))
    edge = torch.tensor([7 / 8, 1.0, 1.0, 7 / 8], dtype=torch.float64)
    expected = b + w * c * torch.outer(edge, edge) / math.sqrt(2)
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_architecture_checks():
    with pytest.raises(ValueError, match="resolution"):
        Generator(resolution=48)
    with pytest.raises(ValueError, match="img_channels"):
        Discriminator(32, img_channels=2, **SMALL)
    G = Generator(z_dim=8, w_dim=8, resolution=32, impl="ref", **SMALL)
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(torch.randn(1, 3, 8))


@pytest.mark.parametrize("net", ["D_r1", "G_path_length"])
def test_regularisers_double_backward_match_twin(net):
    """R1 differentiates D's input gradient, path length G's ws gradient, w.r.t. the
    parameters: both second derivatives against autograd of the plain-torch twins."""
    torch.manual_seed(0)
    kw = dict(channel_base=64, channel_max=4)
    if net == "D_r1":
        model = Discriminator(32, 3, mbstd_group_size=2, **kw).double()
        inp = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
        run, twin = (lambda: model(inp).sum()), (lambda: _discriminator_twin(model, inp).sum())
    else:
        model = SynthesisNetwork(w_dim=8, resolution=32, impl="ref", **kw).double()
        inp = torch.randn(2, model.num_ws, 8, dtype=torch.float64, requires_grad=True)
        y = torch.randn(2, 3, 32, 32, dtype=torch.float64)

        def run():
            return (model(inp, noise_mode="const") * y).sum()

        def twin():
            return (_synthesis_twin(model, inp) * y).sum()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # nonzero biases and noise strengths
    params = list(model.parameters())
    results = []
    for fn in (run, twin):
        (g,) = torch.autograd.grad(fn(), inp, create_graph=True)
        penalty = g.square().sum()
        results.append((penalty, torch.autograd.grad(penalty, params, allow_unused=True)))
    (pen, grads), (pen_twin, grads_twin) = results
    torch.testing.assert_close(pen, pen_twin, rtol=1e-9, atol=0)
    for name, a, b in zip([n for n, _ in model.named_parameters()], grads, grads_twin,
                          strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
    # only the output biases do not move the input gradient
    unused = {n for (n, _), a in zip(model.named_parameters(), grads, strict=True) if a is None}
    assert unused == ({"epilogue.out.bias"} if net == "D_r1" else
                      {f"blocks.{r}.torgb.bias" for r in (4, 8, 16, 32)})


def test_generator_impls_agree():
    torch.manual_seed(0)
    kw = dict(z_dim=8, w_dim=8, resolution=32, channel_base=64, channel_max=4)
    G_ref = Generator(impl="ref", **kw).double().eval()
    G_cpu = Generator(impl="cpu", **kw).double().eval()
    G_cpu.load_state_dict(G_ref.state_dict())
    z = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(G_cpu(z, noise_mode="const"), G_ref(z, noise_mode="const"),
                               rtol=1e-10, atol=1e-10)
