"""Progressive G/D: shapes, seamless fade-in, input checks, 1024^2 run, parameter counts."""

from __future__ import annotations

import time

import pytest
import torch

from scalegan.config import ModelConfig
from scalegan.models import (
    ProgressiveDiscriminator,
    ProgressiveGenerator,
    build_models,
    count_parameters,
)

SMALL = ModelConfig(arch="progressive", resolution=32, img_channels=3, latent_dim=16,
                    channel_base=256, channel_max=16, mbstd_group_size=4, mbstd_num_channels=1)
RESOLUTIONS = [4, 8, 16, 32]


@pytest.fixture
def small_models():
    torch.manual_seed(0)
    G = ProgressiveGenerator(SMALL).double()
    D = ProgressiveDiscriminator(SMALL).double()
    return G, D


def _up(x: torch.Tensor) -> torch.Tensor:
    # Nearest 2x upsample written independently of the model code.
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def test_every_resolution_has_its_own_block(small_models):
    G, D = small_models
    keys = [str(r) for r in RESOLUTIONS]
    assert list(G.blocks.keys()) == keys and list(G.to_rgb.keys()) == keys
    assert list(D.blocks.keys()) == keys and list(D.from_rgb.keys()) == keys
    assert (G.latent_dim, G.resolution, G.min_resolution) == (16, 32, 4)
    assert (D.resolution, D.min_resolution) == (32, 4)


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_output_shapes(small_models, res, alpha):
    G, D = small_models
    z = torch.randn(4, 16, dtype=torch.float64)
    img = G(z, res, alpha)
    assert img.shape == (4, 3, res, res)
    logits = D(img, res, alpha)
    assert logits.shape == (4,)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("res", [8, 16])
def test_generator_fade_in_is_seamless(small_models, res):
    G, _ = small_models
    z = torch.randn(4, 16, dtype=torch.float64)
    with torch.no_grad():
        before = G(z, res, 1.0)  # end of the stable phase at res
        after = G(z, 2 * res, 0.0)  # start of the fade-in of 2*res
    torch.testing.assert_close(after, _up(before), rtol=0, atol=1e-6)


@pytest.mark.parametrize("res", [8, 16])
def test_discriminator_fade_in_is_seamless(small_models, res):
    _, D = small_models
    y = torch.randn(4, 3, res, res, dtype=torch.float64)
    with torch.no_grad():
        before = D(y, res, 1.0)
        after = D(_up(y), 2 * res, 0.0)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_generator_alpha_blends_linearly(small_models):
    G, _ = small_models
    z = torch.randn(4, 16, dtype=torch.float64)
    with torch.no_grad():
        old, new, mid = G(z, 16, 0.0), G(z, 16, 1.0), G(z, 16, 0.25)
    torch.testing.assert_close(mid, 0.75 * old + 0.25 * new, rtol=0, atol=1e-10)


@pytest.mark.parametrize("res", [8, 16, 32])
def test_alpha_one_ignores_skip_path(small_models, res):
    G, D = small_models
    z = torch.randn(4, 16, dtype=torch.float64)
    img = torch.randn(4, 3, res, res, dtype=torch.float64)
    with torch.no_grad():
        g0, d0 = G(z, res, 1.0), D(img, res, 1.0)
        g_half, d_half = G(z, res, 0.5), D(img, res, 0.5)
        for p in [*G.to_rgb[str(res // 2)].parameters(), *D.from_rgb[str(res // 2)].parameters()]:
            p.add_(torch.randn_like(p))
        g1, d1 = G(z, res, 1.0), D(img, res, 1.0)
        g_half1, d_half1 = G(z, res, 0.5), D(img, res, 0.5)
    torch.testing.assert_close(g1, g0, rtol=0, atol=0)
    torch.testing.assert_close(d1, d0, rtol=0, atol=0)
    # ... while at alpha < 1 the skip path does matter.
    assert not torch.allclose(g_half1, g_half) and not torch.allclose(d_half1, d_half)


def test_unused_blocks_get_no_gradient():
    torch.manual_seed(0)
    G, D = ProgressiveGenerator(SMALL), ProgressiveDiscriminator(SMALL)
    D(G(torch.randn(4, 16), 16, 1.0), 16, 1.0).sum().backward()
    assert all(p.grad is None for p in G.blocks["32"].parameters())
    assert all(p.grad is None for p in G.to_rgb["8"].parameters())
    assert all(p.grad is None for p in D.from_rgb["8"].parameters())
    assert all(p.grad is not None for p in G.blocks["16"].parameters())


@pytest.mark.parametrize("bad", [2, 3, 6, 64, 0, -4, 8.0, True, "8"])
def test_bad_resolution_raises(small_models, bad):
    G, D = small_models
    with pytest.raises(ValueError, match="resolution"):
        G(torch.randn(4, 16, dtype=torch.float64), bad)
    with pytest.raises(ValueError, match="resolution"):
        D(torch.randn(4, 3, 8, 8, dtype=torch.float64), bad)


def test_bad_inputs_raise(small_models):
    G, D = small_models
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        G(torch.randn(4, 15, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="img must have shape"):
        D(torch.randn(4, 3, 16, 16, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="img must have shape"):
        D(torch.randn(4, 1, 8, 8, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="alpha"):
        G(torch.randn(4, 16, dtype=torch.float64), 8, 1.5)
    with pytest.raises(ValueError, match="N=6"):
        D(torch.randn(6, 3, 8, 8, dtype=torch.float64), 8)


def test_mbstd_disabled_and_multichannel():
    cfg0 = ModelConfig(resolution=8, latent_dim=8, channel_base=64, channel_max=8,
                       mbstd_group_size=0)
    D0 = ProgressiveDiscriminator(cfg0)
    assert D0.blocks["4"].mbstd is None
    assert D0(torch.randn(6, 3, 8, 8), 8).shape == (6,)  # any batch size without mbstd
    cfg2 = ModelConfig(resolution=8, latent_dim=8, channel_base=64, channel_max=8,
                       mbstd_group_size=2, mbstd_num_channels=2)
    D2 = ProgressiveDiscriminator(cfg2)
    assert D2.blocks["4"].conv.in_channels == 8 + 2
    assert D2(torch.randn(6, 3, 8, 8), 8).shape == (6,)


def test_1024_forward_backward_batch_one():
    cfg = ModelConfig(resolution=1024, latent_dim=32, channel_base=1024, channel_max=32)
    torch.manual_seed(0)
    G, D = build_models(cfg)
    t0 = time.perf_counter()
    img = G(torch.randn(1, 32), 1024, 0.5)
    assert img.shape == (1, 3, 1024, 1024)
    logit = D(img, 1024, 0.5)
    assert logit.shape == (1,)
    logit.sum().backward()
    print(f"1024^2 forward+backward at batch 1: {time.perf_counter() - t0:.2f} s")
    # At 1024 with alpha < 1 everything is active except toRGB/fromRGB below 512.
    for net, skip_name in ((G, "to_rgb"), (D, "from_rgb")):
        for name, p in net.named_parameters():
            parts = name.split(".")
            if parts[0] == skip_name and int(parts[1]) < 512:
                assert p.grad is None, name
                continue
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_default_1024_parameter_counts_match_pggan():
    torch.manual_seed(0)
    G, D = build_models(ModelConfig(resolution=1024))
    n_g, n_d = count_parameters(G), count_parameters(D)
    print(f"PGGAN 1024^2 (default ModelConfig): G {n_g:,} parameters, D {n_d:,} parameters")
    # PGGAN paper, Table 2 (CelebA-HQ 1024^2): 23.1M trainable parameters in each network.
    for n in (n_g, n_d):
        assert abs(n - 23.1e6) / 23.1e6 < 0.10
    # Without the toRGB/fromRGB of lower resolutions (which the published final network no longer
    # has) both round to the published 23.1M.
    g_core = n_g - sum(count_parameters(G.to_rgb[str(r)]) for r in G.resolutions[:-1])
    d_core = n_d - sum(count_parameters(D.from_rgb[str(r)]) for r in D.resolutions[:-1])
    print(f"  final-network only: G {g_core:,}, D {d_core:,}")
    assert round(g_core / 1e5) == 231 and round(d_core / 1e5) == 231


def test_build_models_progressive():
    G, D = build_models(SMALL)
    assert isinstance(G, ProgressiveGenerator) and isinstance(D, ProgressiveDiscriminator)
    assert count_parameters(G) == sum(p.numel() for p in G.parameters())
    G.blocks["4"].dense.weight.requires_grad_(False)
    assert count_parameters(G, trainable_only=True) == (
        count_parameters(G) - G.blocks["4"].dense.weight.numel())


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    G, D = build_models(SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = D(G(torch.randn(4, 16), 16, 0.5), 16, 0.5)
    assert logits.shape == (4,) and torch.isfinite(logits.float()).all()


# ------------------------------------------------------------------------ conditioning by label

K = 5  # classes


def _cond_cfg(cond_d: str, **kw) -> ModelConfig:
    base = dict(arch="progressive", resolution=16, img_channels=3, latent_dim=8, channel_base=64,
                channel_max=8, mbstd_group_size=2, condition="label", num_classes=K, cond_dim=6,
                cond_d=cond_d)
    return ModelConfig(**{**base, **kw})


def test_unconditional_state_dict_keys_unchanged():
    cfg = ModelConfig(resolution=8, latent_dim=8, channel_base=64, channel_max=8,
                      mbdisc_kernels=3, mbdisc_dim=2)
    assert list(ProgressiveGenerator(cfg).state_dict()) == [
        "blocks.4.bias", "blocks.4.dense.weight", "blocks.4.conv.weight", "blocks.4.conv.bias",
        "blocks.8.conv0.weight", "blocks.8.conv0.bias", "blocks.8.conv1.weight",
        "blocks.8.conv1.bias", "to_rgb.4.weight", "to_rgb.4.bias", "to_rgb.8.weight",
        "to_rgb.8.bias"]
    assert list(ProgressiveDiscriminator(cfg).state_dict()) == [
        "from_rgb.4.conv.weight", "from_rgb.4.conv.bias", "from_rgb.8.conv.weight",
        "from_rgb.8.conv.bias", "blocks.4.conv.weight", "blocks.4.conv.bias",
        "blocks.4.dense0.weight", "blocks.4.dense0.bias", "blocks.4.mbdisc.T",
        "blocks.4.dense1.weight", "blocks.4.dense1.bias", "blocks.8.conv0.weight",
        "blocks.8.conv0.bias", "blocks.8.conv1.weight", "blocks.8.conv1.bias"]


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
@pytest.mark.parametrize("res,alpha", [(4, 1.0), (8, 0.3), (16, 1.0)])
def test_conditional_shapes(cond_d, res, alpha):
    torch.manual_seed(0)
    cfg = _cond_cfg(cond_d)
    G, D = build_models(cfg)
    y = torch.tensor([0, 4, 2, 1])
    img = G(torch.randn(4, 8), res, alpha, cond=y)
    assert img.shape == (4, 3, res, res)
    logits = D(img, res, alpha, cond=y)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    c = cfg.channels(4)
    assert G.blocks["4"].embed.weight.shape == (K, 6)
    assert G.blocks["4"].dense.in_features == 8 + 6
    if cond_d == "concat":
        assert D.blocks["4"].embed.weight.shape == (K, 6)
        assert D.blocks["4"].conv.in_channels == c + 1 + 6  # features, mbstd, label
    else:
        assert D.blocks["4"].embed.weight.shape == (K, c)
        assert D.blocks["4"].embed.scale == pytest.approx(1 / c ** 0.5)  # as dense1: gain 1
        assert D.blocks["4"].conv.in_channels == c + 1


def test_conditional_units_and_gradients():
    torch.manual_seed(0)
    G, D = build_models(_cond_cfg("projection"))
    assert G.units_in_use(8, 0.5) == {"blocks.4", "blocks.8", "to_rgb.8", "to_rgb.4"}
    y = torch.tensor([1, 1, 3, 3])
    D(G(torch.randn(4, 8), 8, 1.0, cond=y), 8, 1.0, cond=y).sum().backward()
    for net in (G, D):
        g = net.blocks["4"].embed.weight.grad
        assert g[[1, 3]].abs().sum(1).min() > 0 and torch.count_nonzero(g[[0, 2, 4]]) == 0
    assert all(p.grad is None for p in G.blocks["16"].parameters())


def test_generator_normalises_latent_and_embedding_separately():
    torch.manual_seed(1)
    G = ProgressiveGenerator(_cond_cfg("concat")).double()
    seen = []
    G.blocks["4"].dense.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    z, y = torch.randn(3, 8, dtype=torch.float64), torch.tensor([0, 3, 3])
    with torch.no_grad():
        out = G(z, 8, cond=y)
    e = G.blocks["4"].embed.weight[y]

    def unit_ms(v):  # the pixel norm written out
        return v / v.square().mean(1, keepdim=True).add(1e-8).sqrt()

    torch.testing.assert_close(seen[0], torch.cat([unit_ms(z), unit_ms(e)], 1), rtol=0,
                               atol=1e-12)
    # so the output does not move with the scale of z (as in PGGAN) nor of the embedding (up to
    # the pixel norm's epsilon, 1e-8 against mean squares of order 1)
    with torch.no_grad():
        scaled_z = G(3 * z, 8, cond=y)
        G.blocks["4"].embed.weight.mul_(5)
        scaled_e = G(z, 8, cond=y)
    torch.testing.assert_close(scaled_z, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(scaled_e, out, rtol=0, atol=1e-6)
    assert not torch.allclose(out[1], G(z[[1]], 8, cond=torch.tensor([0])).detach()[0])


@pytest.mark.parametrize("mbdisc", [0, 3])
def test_projection_is_head_plus_inner_product(mbdisc):
    torch.manual_seed(2)
    D = ProgressiveDiscriminator(_cond_cfg("projection", mbdisc_kernels=mbdisc,
                                           mbdisc_dim=2)).double()
    last = D.blocks["4"]
    dense0_out = []
    last.dense0.register_forward_hook(lambda m, i, o: dense0_out.append(o))
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([2, 0, 2, 4])
    with torch.no_grad():
        logits = D(x, 16, 0.6, cond=y)
        phi = torch.nn.functional.leaky_relu(dense0_out[0], 0.2)  # (N, C)
        head = last.dense1(last.mbdisc(phi) if mbdisc else phi).squeeze(1)
        inner = (last.embed.weight[y] / phi.shape[1] ** 0.5 * phi).sum(1)
    torch.testing.assert_close(logits, head + inner, rtol=0, atol=1e-12)
    assert inner.abs().min() > 1e-4


@pytest.mark.parametrize("cond_d", ["concat", "projection"])
def test_label_changes_output_and_interacts_with_image(cond_d):
    torch.manual_seed(3)
    G = ProgressiveGenerator(_cond_cfg(cond_d)).double()
    D = ProgressiveDiscriminator(_cond_cfg(cond_d, mbstd_group_size=0)).double()
    z = torch.randn(2, 8, dtype=torch.float64).repeat(2, 1)
    y = torch.tensor([0, 0, 3, 3])
    with torch.no_grad():
        img = G(z, 16, cond=y)
        assert not torch.allclose(img[:2], img[2:])
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64).repeat(2, 1, 1, 1)
        d = D(x, 16, cond=y)
    change = d[2:] - d[:2]
    assert change.abs().min() > 1e-6
    assert not torch.allclose(change[0], change[1])


def test_conditional_fade_in_is_seamless():
    torch.manual_seed(4)
    G = ProgressiveGenerator(_cond_cfg("concat")).double()
    D = ProgressiveDiscriminator(_cond_cfg("concat")).double()
    z, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([4, 0, 1, 1])
    img = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(G(z, 16, 0.0, cond=y), _up(G(z, 8, 1.0, cond=y)), rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(D(_up(img), 16, 0.0, cond=y), D(img, 8, 1.0, cond=y),
                                   rtol=0, atol=1e-6)


def test_conditional_bf16_autocast_forward():
    torch.manual_seed(0)
    G, D = build_models(_cond_cfg("projection"))
    y = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = D(G(torch.randn(4, 8), 16, 0.5, cond=y), 16, 0.5, cond=y)
    assert logits.shape == (4,) and torch.isfinite(logits.float()).all()


def test_cond_errors_name_the_argument(small_models):
    G, D = build_models(_cond_cfg("concat"))
    plain_g, plain_d = small_models
    z, x = torch.randn(2, 8), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="ProgressiveGenerator: cond is required"):
        G(z, 8)
    with pytest.raises(ValueError, match="ProgressiveDiscriminator: cond is required"):
        D(x, 8)
    with pytest.raises(ValueError, match="ProgressiveGenerator: cond was given"):
        plain_g(torch.randn(2, 16, dtype=torch.float64), 8, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ProgressiveDiscriminator: cond was given"):
        plain_d(x.double(), 8, cond=torch.tensor([0, 1]))
    for bad in (torch.tensor([0, K]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 5\)"):
            G(z, 8, cond=bad)
        with pytest.raises(ValueError, match=r"cond holds class ids outside \[0, 5\)"):
            D(x, 8, cond=bad)
    with pytest.raises(ValueError, match=r"cond must be an integer tensor of shape \(2,\)"):
        G(z, 8, cond=torch.tensor([True, False]))
