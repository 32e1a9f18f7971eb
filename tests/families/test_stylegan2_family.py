"""StyleGAN2 as a family spec, against hand-computed references: the path-length penalty (from
G's full Jacobian), its running mean and its gradient; style mixing (the styles G reads, the
images, the draw frequencies); w_avg tracking; per-sample noise; the lazy phases' intervals and
Adam rescaling; the ``auto`` preset (StyleGAN2-ADA's formulas); configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from scalegan.config import ConfigError, load_config
from scalegan.families import build_family
from scalegan.families.stylegan2 import Draws, StyleMicroBatch
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import StubServices, tiny_overrides

TINY = ["model.arch=stylegan2", "model.resolution=32", "model.img_channels=1",
        "model.latent_dim=8", "model.w_dim=8", "model.channel_base=256", "model.channel_max=16",
        "model.mapping_layers=2"]
STAGE = Phase(32, 1.0)
NUM_WS = 8  # 2 * log2(32) - 2


class Services(StubServices):
    """The stub services plus ``nets`` (where the family finds G's ``w_avg``)."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.nets: dict = {}


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make(tmp_path, *extra: str, seed: int = 0):
    """(family, nets) of the tiny float64 StyleGAN2 with fixed services; the noise strengths
    (zero at initialisation) set to distinct non-zero values so the noise shows in the images."""
    cfg = load_config(None, tiny_overrides(tmp_path, TINY) + list(extra))
    svc = Services(seed)
    family = build_family(cfg, svc)
    torch.manual_seed(1)
    nets = family.networks(cfg.model)
    with torch.no_grad():
        for i, (name, p) in enumerate(nets["G"].named_parameters()):
            if name.endswith("noise_strength"):
                p.fill_(0.1 + (0.05 * i) % 0.4)
    svc.nets = nets
    return family, nets


def hand_rows(seeds: torch.Tensor, numel: int, offset: int = 0) -> torch.Tensor:
    """(B, numel) N(0, 1): row i from a CPU generator seeded ``seeds[i] + offset``."""
    return torch.stack([torch.randn(numel, generator=torch.Generator().manual_seed(int(s) + offset))
                        for s in seeds])


def noise_numel(resolution: int = 32) -> int:
    """Per-pixel noise values of one sample: one 4x4 map, then two r x r maps per resolution."""
    return 16 + sum(2 * r * r for r in (8, 16, 32)[: int(math.log2(resolution)) - 2])


def mixed_ws(G, dr: Draws, together: bool) -> torch.Tensor:
    """The styles of draws ``dr`` built by hand: sample i reads mapping(z_i) for styles below
    ``cutoff_i`` and mapping(mix_z_i) from it on. ``together``: both latents through one mapping
    call (as G batches them), else one call each."""
    if together:
        w1, w2 = G.mapping(torch.cat([dr.z, dr.mix_z]), update_w_avg=False).chunk(2)
    else:
        w1, w2 = G.mapping(dr.z, update_w_avg=False), G.mapping(dr.mix_z, update_w_avg=False)
    return torch.stack([torch.cat([w1[i, :c], w2[i, c:]]) for i, c in
                        enumerate(dr.cutoff.tolist())])


def draws_with(family, n: int, cutoff: list[int]) -> Draws:
    dr = family.draws(n)
    return Draws(dr.z, dr.mix_z, torch.tensor(cutoff), dr.seeds)


# ------------------------------------------------------------------------- path length by hand


def jacobian_lengths(G, dr: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """Path lengths of draws ``dr`` from G's full Jacobian, and the directions y.

    Per sample: ``J = d image / d ws`` ``(C, H, W, num_ws, w_dim)`` at the hand-built styles
    with the sample's noise; ``y`` N(0, I) / sqrt(H W) from seed + 1; ``g = J^T y``
    ``(num_ws, w_dim)``; ``a = sqrt(mean_ws(sum_w(g^2)))``."""
    ws = mixed_ws(G, dr, together=False).detach()
    noise = hand_rows(dr.seeds, noise_numel())
    ys, lengths = [], []
    for i in range(len(ws)):
        def image(w, i=i):
            return G.synthesis(w[None], noise=noise[i:i + 1])[0]  # (C, H, W)

        J = torch.autograd.functional.jacobian(image, ws[i], vectorize=True,
                                               strategy="forward-mode")
        c, h, w = J.shape[:3]
        y = hand_rows(dr.seeds[i:i + 1], c * h * w, offset=1).reshape(c, h, w) / math.sqrt(h * w)
        g = torch.einsum("chw,chwsk->sk", y, J)
        ys.append(y)
        lengths.append(g.square().sum(1).mean().sqrt())
    return torch.stack(lengths), torch.stack(ys)


def hand_pl_loss(G, dr: Draws, pl_mean: float, weight: float) -> torch.Tensor:
    """``weight * mean((a - pl_mean)^2)`` with ``a`` by plain autograd of the formula (its
    graph reaches every parameter of G: mapping through ws, synthesis directly)."""
    ws = mixed_ws(G, dr, together=False)
    img = G.synthesis(ws, noise=hand_rows(dr.seeds, noise_numel()))
    n, c, h, w = img.shape
    y = hand_rows(dr.seeds, c * h * w, offset=1).reshape(n, c, h, w) / math.sqrt(h * w)
    (g,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
    a = g.square().sum(2).mean(1).sqrt()
    return weight * (a - pl_mean).square().mean()


def test_path_length_penalty_matches_the_jacobian_by_hand(tmp_path):
    decay, weight, interval = 0.3, 2.0, 4
    family, nets = make(tmp_path, f"model.pl_decay={decay}", f"model.pl_weight={weight}",
                        f"model.pl_interval={interval}")
    G = nets["G"]
    mean = 0.0
    for _ in range(2):  # the running mean after one and after two updates
        pl = draws_with(family, 2, [3, NUM_WS])  # one mixed sample, one not
        lengths, _ = jacobian_lengths(G, pl)
        mean = mean + decay * (lengths.mean().item() - mean)  # lerp(m, mean(a), d), from 0
        loss, scalars = family.pl_loss(nets, StyleMicroBatch(None, None, None, pl), STAGE)
        penalty = (lengths - mean).square().mean().item()
        assert scalars["pl/mean"].item() == pytest.approx(mean, rel=0, abs=1e-12)
        assert family.pl_mean.item() == pytest.approx(mean, rel=0, abs=1e-12)
        assert scalars["loss/pl"].item() == pytest.approx(penalty, rel=0, abs=1e-10)
        assert loss.item() == pytest.approx(weight * interval * penalty, rel=0, abs=1e-10)
        assert penalty > 1e-4 and mean > 1e-3  # the values are not trivially zero
    assert family.state_dict()["pl_mean"] is family.pl_mean


def test_path_length_gradient_matches_the_hand_formula_and_finite_differences(tmp_path):
    family, nets = make(tmp_path, "model.pl_decay=0.5", "model.pl_interval=2")
    G = nets["G"]
    pl = draws_with(family, 3, [2, NUM_WS, 5])
    loss, _ = family.pl_loss(nets, StyleMicroBatch(None, None, None, pl), STAGE)
    params = dict(G.named_parameters())
    got = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True),
                   strict=True))
    mean = family.pl_mean.item()
    weight = 2.0 * 2  # pl_weight * pl_interval
    want = dict(zip(params, torch.autograd.grad(hand_pl_loss(G, pl, mean, weight),
                                                list(params.values()), allow_unused=True),
                    strict=True))
    moved = 0
    for name, p in params.items():  # a bias after the last modulation does not change J: None
        g = torch.zeros_like(p) if got[name] is None else got[name]
        w = torch.zeros_like(p) if want[name] is None else want[name]
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=name)
        moved += int(w.abs().max() > 0)
    assert moved > 0.8 * len(params)  # mapping and synthesis alike
    # central differences of the hand formula on one weight of the mapping network and one of
    # a synthesis convolution (float64, step 1e-5: truncation error ~1e-10)
    for name, index in (("mapping.layers.0.weight", (1, 2)),
                        ("synthesis.blocks.8.conv1.weight", (0, 1, 1, 1))):
        p, eps = params[name], 1e-5
        with torch.no_grad():
            p[index] += eps
        up = hand_pl_loss(G, pl, mean, weight).item()
        with torch.no_grad():
            p[index] -= 2 * eps
        down = hand_pl_loss(G, pl, mean, weight).item()
        with torch.no_grad():
            p[index] += eps
        fd = (up - down) / (2 * eps)
        assert abs(got[name][index].item()) > 1e-6, name
        assert got[name][index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name


# ---------------------------------------------------------------------------------- style mixing


def test_style_mixing_reads_the_hand_built_styles(tmp_path):
    family, nets = make(tmp_path)
    G = nets["G"]
    w_avg = G.mapping.w_avg.clone()
    dr = draws_with(family, 5, [1, 3, NUM_WS - 1, NUM_WS, 6])
    img, ws = family.run_G(G, dr)
    assert torch.equal(ws, mixed_ws(G, dr, together=True))  # the same ops: bit for bit
    torch.testing.assert_close(ws, mixed_ws(G, dr, together=False), rtol=0, atol=1e-13)
    w1 = G.mapping(dr.z, update_w_avg=False)
    w2 = G.mapping(dr.mix_z, update_w_avg=False)
    assert not torch.allclose(ws[0, 1:], w1[0, 1:])  # mixed from style 1 on
    torch.testing.assert_close(ws[3], w1[3], rtol=0, atol=1e-13)  # cutoff num_ws: unmixed
    torch.testing.assert_close(ws[1, 3:], w2[1, 3:], rtol=0, atol=1e-13)
    want = G.synthesis(mixed_ws(G, dr, together=True), noise=hand_rows(dr.seeds, noise_numel()))
    assert torch.equal(img, want)
    assert torch.equal(G.mapping.w_avg, w_avg)  # G calls never move w_avg themselves


def test_mixing_frequency_and_cutoffs_are_as_drawn(tmp_path):
    family, _ = make(tmp_path, seed=7)
    n, p = 4000, 0.9
    cutoff = family.draws(n).cutoff
    mixed = cutoff < NUM_WS
    assert abs(mixed.sum().item() - n * p) <= 3 * math.sqrt(n * p * (1 - p))
    values = cutoff[mixed]
    counts = torch.bincount(values, minlength=NUM_WS)[1:].double()  # cutoffs 1 .. num_ws - 1
    assert values.min() >= 1 and counts.numel() == NUM_WS - 1 and (counts > 0).all()
    expected = len(values) / (NUM_WS - 1)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.46  # chi-square, 6 degrees of freedom: P(X > 22.46) = 0.001
    # no mixing asked: every cutoff is num_ws, and G reads mapping(z) in every style
    family, nets = make(tmp_path, "model.style_mixing=0")
    dr = family.draws(64)
    assert (dr.cutoff == NUM_WS).all()
    _, ws = family.run_G(nets["G"], Draws(dr.z[:4], dr.mix_z[:4], dr.cutoff[:4], dr.seeds[:4]))
    torch.testing.assert_close(ws, nets["G"].mapping(dr.z[:4], update_w_avg=False), rtol=0,
                               atol=1e-13)


def test_w_avg_follows_the_unmixed_w_after_a_g_phase(tmp_path):
    beta = 0.8
    family, nets = make(tmp_path, f"model.w_avg_beta={beta}")
    G = nets["G"]
    w0 = torch.randn(8, generator=torch.Generator().manual_seed(3))
    G.mapping.w_avg.copy_(w0)
    g = draws_with(family, 4, [1, 2, NUM_WS, 5])  # every sample but one mixed
    family.g_loss(nets, StyleMicroBatch(None, None, g, None), STAGE)
    w = G.mapping(g.z, update_w_avg=False)[:, 0]  # (4, w_dim): z's w, whatever the mixing
    want = w.mean(0) + beta * (w0 - w.mean(0))
    torch.testing.assert_close(G.mapping.w_avg, want.detach(), rtol=0, atol=1e-13)
    w_mix = G.mapping(g.mix_z, update_w_avg=False)[:, 0]
    assert not torch.allclose(G.mapping.w_avg, (w + w_mix).mean(0) / 2 * (1 - beta) + beta * w0)


# ---------------------------------------------------------------------------------------- noise


def test_noise_comes_from_the_per_sample_seeds(tmp_path):
    family, nets = make(tmp_path)
    numel = noise_numel()
    assert family.noise_numel == nets["G"].synthesis.noise_numel == numel
    seeds = torch.tensor([5, 5, 9])
    a, b = family.per_sample(seeds, numel), family.per_sample(seeds, numel)
    assert torch.equal(a, b) and torch.equal(a[0], a[1]) and not torch.allclose(a[0], a[2])
    assert torch.equal(a, hand_rows(seeds, numel))
    assert not torch.allclose(family.per_sample(seeds, numel, offset=1), a)  # y is not noise
    dr = draws_with(family, 3, [NUM_WS, 2, NUM_WS])
    assert len(set(dr.seeds.tolist())) == 3  # every sample its own seed
    img, _ = family.run_G(nets["G"], dr)
    seeds2 = dr.seeds.clone()
    seeds2[1] += 1
    img2, _ = family.run_G(nets["G"], Draws(dr.z, dr.mix_z, dr.cutoff, seeds2))
    assert torch.equal(img[0], img2[0]) and torch.equal(img[2], img2[2])
    assert (img[1] - img2[1]).abs().max() > 1e-3  # that sample's noise changed its image
    img3, _ = family.run_G(nets["G"], dr)
    assert torch.equal(img, img3)  # the same seeds, the same images


def test_metric_images_draw_each_image_noise_from_its_seed(tmp_path):
    """The metrics' images: G with noise row i = N(0, 1) from seeds[i] (StyleGAN2 measures with
    random noise), not the fixed maps of ``images``; a row depends on its seed alone, so the
    images are the same whatever batch (or rank) an image falls in."""
    family, nets = make(tmp_path)
    G = nets["G"].eval()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    seeds = torch.tensor([11, 12, 13])
    with torch.no_grad():
        got = family.metric_images(nets, z, None, STAGE, seeds)
        want = G(z, noise=hand_rows(seeds, noise_numel()))
        fixed = family.images(nets, z, None, STAGE)
        split = torch.cat([family.metric_images(nets, z[i:i + 1], None, STAGE, seeds[i:i + 1])
                           for i in range(3)])
        again = family.metric_images(nets, z, None, STAGE, torch.tensor([11, 99, 13]))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(split, got, rtol=0, atol=1e-12)
    assert (got - fixed).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # not the fixed maps
    assert torch.equal(again[0], got[0]) and torch.equal(again[2], got[2])
    assert (again[1] - got[1]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------- lazy phases


def test_lazy_phases_intervals_and_adam_rescaling(tmp_path):
    lr_g, lr_d, b1, b2 = 0.002, 0.003, 0.1, 0.99
    cfg = load_config(None, tiny_overrides(tmp_path, TINY) + [
        "loss.r1_gamma=1", f"optim.g_lr={lr_g}", f"optim.d_lr={lr_d}", f"optim.beta1={b1}",
        f"optim.beta2={b2}"])
    assert (cfg.loss.r1_interval, cfg.model.pl_interval) == (16, 4)  # config F's defaults
    trainer = Trainer(cfg)
    specs = {s.name: s for s in trainer.phase_specs}
    assert list(specs) == ["D", "R1", "G", "PL"]
    steps = range(33)
    assert [s for s in steps if specs["R1"].due(s)] == [0, 16, 32]
    assert [s for s in steps if specs["PL"].due(s)] == list(range(0, 33, 4))
    assert all(specs["D"].due(s) and specs["G"].due(s) for s in steps)
    assert specs["R1"].lazy and specs["PL"].lazy
    assert specs["R1"].input_gradient == "D" and specs["PL"].input_gradient == "G"
    for name, lr, c in (("G", lr_g, 4 / 5), ("D", lr_d, 16 / 17)):
        groups = trainer.optimizers[name].param_groups
        assert groups
        for group in groups:
            assert group["lr"] == pytest.approx(lr * c, rel=1e-12)
            assert group["betas"][0] == pytest.approx(b1 ** c, rel=1e-12)
            assert group["betas"][1] == pytest.approx(b2 ** c, rel=1e-12)
    trainer.close()
    # an interval of 1 is not lazy: no rescaling
    cfg = load_config(None, tiny_overrides(tmp_path, TINY) + [
        "loss.r1_gamma=1", "loss.r1_interval=1", "model.pl_interval=1", f"optim.g_lr={lr_g}",
        "name=plain"])
    trainer = Trainer(cfg)
    assert all(g["lr"] == lr_g for g in trainer.optimizers["G"].param_groups)
    trainer.close()


# -------------------------------------------------------------------------------- auto preset


def auto_expected(resolution: int, gpus: int) -> dict:
    """StyleGAN2-ADA's ``--cfg=auto`` (train.py, cfg_specs['auto']) written out."""
    mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return {"batch": mb, "mbstd": min(mb // gpus, 4),
            "channel_base": int((1 if resolution >= 512 else 0.5) * 32768),
            "lr": 0.002 if resolution >= 1024 else 0.0025,
            "gamma": 0.0002 * resolution ** 2 / mb, "ema": mb * 10 / 32}


def check_auto(cfg, want: dict, batch: int | None = None) -> None:
    assert cfg.train.batch_size == (want["batch"] if batch is None else batch)
    assert cfg.model.mbstd_group_size == want["mbstd"]
    assert cfg.model.channel_base == want["channel_base"]
    assert cfg.model.mapping_layers == 2
    assert cfg.optim.g_lr == cfg.optim.d_lr == want["lr"]
    assert cfg.loss.r1_gamma == pytest.approx(want["gamma"], rel=1e-12)
    assert cfg.train.ema_halflife_kimg == pytest.approx(want["ema"], rel=1e-12)
    assert cfg.train.ema_rampup == 0.05


def test_auto_preset_follows_stylegan2_ada(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "8")
    auto = ["model.arch=stylegan2", "model.preset=auto", f"runs_dir={tmp_path}"]
    want = auto_expected(256, 8)
    assert (want["batch"], want["mbstd"], want["lr"], want["channel_base"], want["ema"]) == \
        (64, 4, 0.0025, 16384, 20)
    assert want["gamma"] == pytest.approx(0.0002 * 256 ** 2 / 64)
    check_auto(load_config(None, auto + ["model.resolution=256"]), want)
    # a value set explicitly wins; the others stay as ADA derives them (gamma from its batch)
    cfg = load_config(None, auto + ["model.resolution=256", "train.batch_size=32",
                                    "loss.r1_gamma=1.5"])
    assert cfg.loss.r1_gamma == 1.5
    check_auto(cfg, {**want, "gamma": 1.5}, batch=32)
    monkeypatch.setenv("WORLD_SIZE", "1")
    want = auto_expected(1024, 1)
    assert (want["batch"], want["lr"], want["channel_base"]) == (4, 0.002, 32768)
    assert want["gamma"] == pytest.approx(0.0002 * 1024 ** 2 / 4)
    check_auto(load_config(None, auto + ["model.resolution=1024"]), want)
    # preset none: the config as written
    cfg = load_config(None, ["model.arch=stylegan2", "model.resolution=256"])
    assert cfg.model.mapping_layers == 8 and cfg.model.channel_base == 32768


# ------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("override,key", [("loss.kind=wgan", "loss.kind"),
                                          ("model.resolution=16", "model.resolution"),
                                          ("model.style_mixing=1.5", "model.style_mixing")])
def test_config_errors_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, tiny_overrides(tmp_path, TINY) + [override])
