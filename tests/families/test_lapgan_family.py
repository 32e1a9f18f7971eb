"""LAPGAN as a family spec: its config, its losses by hand, per-level gradients, noise and
dropout drawn for the global batch, chained sampling and the two sample grids, sharded runs
against one process (all D's in one phase, all G's in the other), exact resume on the built-in
faces, training on them, and `generate --stages all`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.data.demo import pack_demo
from scalegan.data.pipeline import read_images
from scalegan.families.lapgan import GRID_MARGIN, LAPGAN, Levels, residuals_path, to_uniform
from scalegan.models.lapgan import expand, gaussian_pyramid, laplacian_pyramid
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import (
    FixedStream,
    StubServices,
    assert_matches,
    assert_resume_is_exact,
    tiny_overrides,
    train_fixed,
)
from parallel.spawn import run_ranks

TINY = ["model.z_dim=4", "model.g0_hidden=8", "model.d0_hidden=6", "model.g_channels=3",
        "model.d_channels=2", "model.kernel=3"]
FAMILY = ["model.arch=lapgan", "model.resolution=16", "model.base_resolution=4",
          "model.img_channels=1", *TINY]
SHAPES = {"data": (1, 16)}
STAGE = Phase(16, 1.0)


class Stub(nn.Module):
    """A stand-in network of any number of inputs, computing ``fn``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _family(tmp_path, *extra: str, svc=None) -> LAPGAN:
    cfg = load_config(None, tiny_overrides(tmp_path, FAMILY) + list(extra))
    return LAPGAN(cfg, svc or StubServices())


def _nets(family: LAPGAN, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    return family.build_networks()


# ------------------------------------------------------------------------------------ config


def test_config_levels_latents_and_network_names(tmp_path):
    family = _family(tmp_path)
    mc = family.mc
    assert mc.levels == 3 and mc.level_resolutions == [4, 8, 16]
    assert mc.latent_dim == 4 + 8 * 8 + 16 * 16  # z_0, then one noise plane per conv level
    assert list(family.build_networks()) == ["G0", "G1", "G2", "D0", "D1", "D2"]
    assert family.ema == ("G0", "G1", "G2") and not family.averaged
    assert family.lr_role == {"G0": "g", "G1": "g", "G2": "g", "D0": "d", "D1": "d",
                              "D2": "d"}
    assert [(s.name, s.trains, s.frozen) for s in family.phases()] == [
        ("D", ("D0", "D1", "D2"), ("G0", "G1", "G2")),
        ("G", ("G0", "G1", "G2"), ("D0", "D1", "D2"))]
    cfg = load_config("configs/demo_faces32_lapgan.yaml")
    assert cfg.model.levels == 3 and cfg.model.level_resolutions == [8, 16, 32]
    single = _family(tmp_path, "model.resolution=8", "model.base_resolution=8")
    assert single.mc.levels == 1 and single.mc.latent_dim == 4  # a plain GAN


@pytest.mark.parametrize(("override", "message"), [
    ("model.base_resolution=32", "model.base_resolution=32 is not allowed: expected a power of "
                                 "two from 4 to model.resolution=16"),
    ("model.base_resolution=6", "model.base_resolution=6"),
    ("model.resolution=24", "model.resolution=24"),
    ("model.kernel=4", "model.kernel=4 is not allowed: expected an odd number"),
    ("model.d0_dropout=1.0", "model.d0_dropout=1.0"),
    ("model.d_input=add", "model.d_input='add'"),
    ("model.g_channels=0", "model.g_channels=0"),
    ("loss.kind=hinge", "loss.kind='hinge' is not allowed: expected nonsaturating | minimax"),
    ("loss.r1_gamma=1", "loss.r1_gamma=1.0 is not allowed"),
    ("train.d_steps=2", "train.d_steps=2"),
])
def test_bad_settings_are_named(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, tiny_overrides(tmp_path, FAMILY) + [override])
    assert message in str(e.value)


# ------------------------------------------------------------------------------------ losses

def _stub_nets() -> dict[str, nn.Module]:
    mean = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731
    return {
        "G0": Stub(lambda z: (z.mean(1) + 0.5).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)),
        "G1": Stub(lambda low, noise: 0.5 * low + noise),
        # D_0 scales by the mean dropout factor it is given: shows which masks reach which call
        "D0": Stub(lambda x, keep: mean(x) * keep.mean(dim=(1, 2))),
        "D1": Stub(lambda h, low: mean(h) + mean(low)),
    }


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path, "model.resolution=8")  # two levels: 4x4, 8x8
    coarse = torch.tensor([[[[0.2, -0.4], [0.6, 0.4]]]], dtype=torch.float64)  # mean 0.2
    coarse = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3)
    low = torch.full((1, 1, 8, 8), 0.4, dtype=torch.float64)
    high = torch.full((1, 1, 8, 8), -0.1, dtype=torch.float64)
    z = torch.zeros(1, family.mc.latent_dim, dtype=torch.float64)  # uniform noise 0 everywhere
    ones = torch.ones(1, 2, 6, dtype=torch.float64)
    mb = Levels([coarse, low + high], [None, low], [coarse, high], z, z,
                keep_real=2 * ones, keep_fake=ones, keep_g=3 * ones)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    # level 0: D0(real) = 0.2 * 2, D0(G0(z)) = 0.5; level 1: D1(h) = -0.1 + 0.4, D1(0.5 l) = 0.6
    loss, scalars = family.d_loss(_stub_nets(), mb, STAGE)
    d0, d1 = softplus(-0.4) + softplus(0.5), softplus(-0.3) + softplus(0.6)
    assert scalars["loss/D0"].item() == pytest.approx(d0, abs=1e-6)
    assert scalars["loss/D1"].item() == pytest.approx(d1, abs=1e-6)
    assert loss.item() == pytest.approx(d0 + d1, abs=1e-6)
    # G, non-saturating: -log sigmoid D(G(z)); D0 sees the G phase's masks (x3)
    loss, scalars = family.g_loss(_stub_nets(), mb, STAGE)
    assert loss.item() == pytest.approx(softplus(-1.5) + softplus(-0.6), abs=1e-6)
    assert scalars["loss/G0"].item() == pytest.approx(softplus(-1.5), abs=1e-6)
    # minimax: log(1 - sigmoid D(G(z)))
    family = _family(tmp_path, "model.resolution=8", "loss.kind=minimax")
    loss, _ = family.g_loss(_stub_nets(), mb, STAGE)
    assert loss.item() == pytest.approx(-softplus(1.5) - softplus(0.6), abs=1e-6)


def test_each_network_gets_only_its_own_levels_gradient(tmp_path):
    family = _family(tmp_path)
    nets = _nets(family)
    batch = FixedStream(4, 0, 1, (1, 16), seed=3).next_batch()
    mb = family.micro_batch({"data": batch}, family.svc)
    for loss_fn, trained in ((family.d_loss, family.d_names), (family.g_loss, family.g_names)):
        loss, scalars = loss_fn(nets, mb, STAGE)
        for j, name in enumerate(trained):
            params = list(nets[name].parameters())
            total = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            own = torch.autograd.grad(scalars[f"loss/{name[0]}{j}"], params, retain_graph=True)
            for a, b in zip(total, own, strict=True):
                assert torch.equal(a, b), name
    # in the D phase the generators run without a graph
    loss, _ = family.d_loss(nets, mb, STAGE)
    assert all(g is None for g in torch.autograd.grad(
        loss, list(nets["G1"].parameters()), allow_unused=True))


# ---------------------------------------------------------------------- micro-batches and noise


def test_micro_batch_holds_the_laplacian_pyramid(tmp_path):
    family = _family(tmp_path)
    batch = FixedStream(4, 0, 1, (1, 16), seed=3).next_batch()  # one scale: box-filtered here
    mb = family.micro_batch({"data": batch}, family.svc)
    want = gaussian_pyramid(batch.images, 3)
    assert all(torch.equal(a, b) for a, b in zip(mb.real, want, strict=True))
    lows, highs = laplacian_pyramid(want)
    for j in (1, 2):
        assert torch.equal(mb.lows[j], expand(want[j - 1])) and torch.equal(mb.highs[j], highs[j])
    # a stream's pyramid (every level) is taken as it is
    served = type(batch)(want, batch.keys)
    mb2 = family.micro_batch({"data": served}, family.svc)
    assert all(torch.equal(a, b) for a, b in zip(mb2.real, want, strict=True))
    assert mb.z_d.shape == (4, family.mc.latent_dim) and not torch.equal(mb.z_d, mb.z_g)
    assert mb.keep_real.shape == (4, 2, 6)
    assert set(mb.keep_real.unique().tolist()) <= {0.0, 2.0}  # p = 0.5: dropped, or x 1/(1-p)
    nodrop = _family(tmp_path, "model.d0_dropout=0")
    assert nodrop.micro_batch({"data": batch}, nodrop.svc).keep_g is None


def test_noise_is_uniform_and_split_by_level(tmp_path):
    family = _family(tmp_path)
    z = torch.randn(4000, family.mc.latent_dim, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    noise = family.noise(z)
    assert [tuple(n.shape) for n in noise] == [(4000, 4), (4000, 1, 8, 8), (4000, 1, 16, 16)]
    assert torch.equal(noise[0], to_uniform(z[:, :4]))
    assert torch.equal(noise[1].flatten(1), to_uniform(z[:, 4:68]))  # in latent order
    u = torch.cat([n.flatten() for n in noise])
    assert u.abs().max() < 1
    assert u.mean().item() == pytest.approx(0, abs=0.002)
    assert u.var().item() == pytest.approx(1 / 3, abs=0.002)  # U(-1, 1)
    assert (u < 0.5).double().mean().item() == pytest.approx(0.75, abs=0.002)


def test_latents_and_dropout_are_drawn_for_the_global_batch(tmp_path):
    class Rank(StubServices):
        def __init__(self, rank: int):
            super().__init__(seed=5)
            self.rank, self.world = rank, 2

        def draw(self, fn, n, *shape):
            return fn(n * 2, *shape, generator=self.rng)[self.rank * n:(self.rank + 1) * n]

    def draws(mb: Levels) -> list[torch.Tensor]:
        return [mb.z_d, mb.z_g, mb.keep_real, mb.keep_fake, mb.keep_g]

    batch = FixedStream(8, 0, 1, (1, 16), seed=0).next_batch()
    whole = draws(_family(tmp_path).micro_batch({"data": batch}, StubServices(seed=5)))
    parts = []
    for rank in (0, 1):
        svc = Rank(rank)
        half = FixedStream(4, rank, 2, (1, 16), seed=0).next_batch()
        parts.append(draws(_family(tmp_path, svc=svc).micro_batch({"data": half}, svc)))
    for i, want in enumerate(whole):
        torch.testing.assert_close(torch.cat([p[i] for p in parts]), want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- sampling


def test_chained_sampling_and_the_two_grids(tmp_path):
    family = _family(tmp_path, "model.img_channels=3", "log.sample_grid=2")
    nets = _nets(family)
    z = torch.randn(5, family.mc.latent_dim)
    with torch.no_grad():
        levels, residuals = family.chain(nets, z)
        assert [tuple(x.shape) for x in levels] == [(5, 3, 4, 4), (5, 3, 8, 8), (5, 3, 16, 16)]
        assert [tuple(x.shape) for x in residuals] == [(5, 3, 8, 8), (5, 3, 16, 16)]
        noise = family.noise(z)
        assert torch.equal(levels[0], nets["G0"](noise[0]))
        for j in (1, 2):  # I~_j = u(I~_{j-1}) + G_j(u(I~_{j-1}), z_j)
            low = expand(levels[j - 1])
            assert torch.equal(residuals[j - 1], nets[f"G{j}"](low, noise[j]))
            assert torch.equal(levels[j], low + residuals[j - 1])
        final = family.images(nets, z, None, STAGE)
        assert torch.equal(final, levels[2].clamp(-1, 1))
        every = family.images(nets, z, None, STAGE, stages="all")
        assert every.shape == (5, 3, 16, 48)
        assert torch.equal(every[..., :16], levels[0].repeat_interleave(4, 2)
                           .repeat_interleave(4, 3).clamp(-1, 1))
        grid = family.samples(nets, family.sample_inputs(), STAGE)
    assert grid.shape == (4, 3, 16, 5 * 16)  # 3 levels, then 2 residuals
    path = tmp_path / "samples" / "step_000000001.png"
    scalars = family.write_samples(grid, [path])
    assert residuals_path(path) == tmp_path / "samples" / "step_000000001_residuals.png"
    # 2 x 2 tiles, enlarged x4 (save_grid: tiles at least 64 high)
    # 2 x 2 tiles with their margins, enlarged x4 (save_grid: tiles at least 64 high)
    m = GRID_MARGIN
    assert Image.open(path).size == (2 * (3 * 16 + m) * 4, 2 * (16 + m) * 4)
    assert Image.open(residuals_path(path)).size == (2 * (2 * 16 + m) * 4, 2 * (16 + m) * 4)
    # each level's residuals shown over 3 std of the grid's: sample 0's level-2 residual
    shown = np.asarray(Image.open(residuals_path(path)))[::4, ::4, 0].astype(int)
    h = grid[:, :, :, 64:]
    want = ((h[0, 0] / (3 * h.std())).clamp(-1, 1) + 1).mul(127.5).round()
    assert np.abs(shown[:16, 16:32] - want.numpy()).max() <= 1
    assert (shown[16:16 + m] == 255).all()  # the white margin below the first row
    assert scalars["samples/residual_std2"] == pytest.approx(grid[..., 64:].std().item())


def test_a_single_level_is_a_plain_gan_without_residuals(tmp_path):
    family = _family(tmp_path, "model.resolution=8", "model.base_resolution=8",
                     "log.sample_grid=2")
    nets = _nets(family)
    assert list(nets) == ["G0", "D0"]
    with torch.no_grad():
        grid = family.samples(nets, family.sample_inputs(), STAGE)
    assert grid.shape == (4, 1, 8, 8)
    path = tmp_path / "grid.png"
    assert family.write_samples(grid, [path]) == {}
    assert path.is_file() and not residuals_path(path).exists()


# ------------------------------------------------------------------------------ sharded runs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp",
                                      pytest.param("deepspeed-3", marks=pytest.mark.slow)])
def test_two_ranks_match_one_process(strategy, tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, 3)
    assert single["phases"][0] == ["loss/D", "loss/D0", "loss/D1", "loss/D2", "loss/G",
                                   "loss/G0", "loss/G1", "loss/G2"]
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)


# ------------------------------------------------------------------------ the built-in faces


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces32")
    pack_demo(out)
    return out


def _real(tmp_path, faces, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, ["model.arch=lapgan", "model.resolution=32",
                                     "model.base_resolution=8", "model.img_channels=1",
                                     *TINY]) + [
        f"data.shards={faces}", "data.num_workers=0", "data.shuffle_buffer=100", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, faces):
    assert_resume_is_exact(_real(tmp_path, faces, "train.total_kimg=0.048"), parts=(3, 3))


def test_generate_draws_every_level(tmp_path, faces, capsys):
    trainer = Trainer(load_config(None, _real(tmp_path, faces, "log.sample_grid=2")))
    trainer.train(max_steps=2)
    trainer.close()
    run = trainer.run_dir
    samples = run / "samples"
    assert (samples / "latest.png").is_file() and (samples / "latest_residuals.png").is_file()
    out = tmp_path / "all.png"
    assert main(["generate", str(run), "--num", "4", "--stages", "all", "--out", str(out)]) == 0
    # 2 x 2 samples, each the 3 levels side by side at 32x32, enlarged x2 (tiles >= 64 high)
    assert Image.open(out).size == (2 * 3 * 32 * 2, 2 * 32 * 2)
    assert main(["generate", str(run), "--num", "3", "--individual",
                 "--out", str(tmp_path / "each")]) == 0
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 3 and all(Image.open(f).size == (32, 32) for f in files)
    # FID / KID of the final level (random features: quick)
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--extractor", "random", "--num-fake", "16",
                 "--metrics", "fid,kid", "--json", str(out)]) == 0
    assert math.isfinite(json.loads(out.read_text())["fid"])


@pytest.mark.slow
def test_trains_on_the_built_in_faces(tmp_path, faces):
    # the demo config, 8 kimg (250 steps of 32)
    over = tiny_overrides(tmp_path, []) + [
        f"data.shards={faces}", "train.batch_size=32", "train.total_kimg=8",
        "log.every_steps=25", "checkpoint.every_kimg=1000"]
    trainer = Trainer(load_config("configs/demo_faces32_lapgan.yaml", over))
    real = read_images(str(faces), 32, channels=1)
    before = trainer.family.level_figures(trainer.ema, real)
    trainer.train()
    trainer.close()
    after = trainer.family.level_figures(trainer.ema, real)
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text()
            .splitlines() if '"loss/D"' in line]
    last = {k: v for k, v in rows[-1].items() if k.startswith("loss/")}
    print(f"\nbefore {before}\nafter {after}\nlast losses {last}")
    # untrained (measured over seeds 0-2): the coarse samples spread 0.13 of the data's, and the
    # residuals are 0.16-0.28 of the real ones' std
    assert before["spread_0"] < 0.2 and after["spread_0"] > 0.3, (before, after)
    for j in (1, 2):
        assert before[f"residual_{j}"] < 0.5, before
        assert 0.7 < after[f"residual_{j}"] < 1.3, after  # measured 0.77 (16²), 0.85 (32²)
        # D_j tells real residuals from G_j's better than chance (log 4 = 1.386)
        assert last[f"loss/D{j}"] < 1.1, last
