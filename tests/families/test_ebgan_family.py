"""EBGAN as a family spec: its energy-margin and pulling-away losses by hand, PT over the global
batch (two ranks' PT and gradients equal one process's), sharded runs against one process on
images and on 2-D points, exact resume, configuration checks, its configs, and training on the
built-in digits and on the 25-mode grid."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.data.demo import pack_demo_digits
from scalegan.data.digits import DigitClassifier, digit_precision
from scalegan.data.pipeline import Batch
from scalegan.families._image import MicroBatch
from scalegan.families.ebgan import EBGAN, pulling_away
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import (
    StubServices,
    assert_configs_train_a_step,
    assert_matches,
    assert_resume_is_exact,
    full_state,
    tiny_overrides,
    train_fixed,
)
from parallel.spawn import run_ranks

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IMAGES = ["model.arch=ebgan", "model.resolution=8", "model.img_channels=1", "model.latent_dim=4",
          "model.channel_base=32", "model.channel_max=8", "model.code_dim=4"]
POINTS = ["model.arch=ebgan", "data.source=points", "model.latent_dim=2", "model.mlp_hidden=8",
          "model.mlp_layers=2", "model.code_dim=3", "loss.margin=1"]
SHAPES = {"data": (1, 8)}
STAGE = Phase(8, 1.0)


class Stub(nn.Module):
    """A stand-in network computing ``fn`` of its first argument (the others, resolution and
    alpha, ignored)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args, **kwargs):
        return self.fn(x)


def _family(tmp_path, family: list[str], *extra: str, svc=None):
    from scalegan.families import build_family

    cfg = load_config(None, tiny_overrides(tmp_path, family) + list(extra))
    return build_family(cfg, svc or StubServices())


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------- the losses


def test_pulling_away_of_three_codes_by_hand():
    # cos^2: (a, b) = 0 (orthogonal), (a, c) = (b, c) = 1/2; six ordered pairs: 2 / 6
    codes = _t([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert pulling_away(codes).item() == pytest.approx(1 / 3, abs=1e-15)
    assert pulling_away(_t([[1.0, 1.0], [-2.0, -2.0]])).item() == pytest.approx(1.0)  # parallel
    assert pulling_away(_t([[1.0, 0.0], [0.0, 1.0]])).item() == 0.0
    assert pulling_away(_t([[1.0, 0.0]])).item() == 0.0  # no pairs


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path, POINTS, "loss.margin=2", "loss.pt_weight=0.3")
    # G is the identity; D's energy is a sample's first coordinate and its code the sample
    nets = {"G": Stub(lambda z: z), "D": Stub(lambda x: (x[:, 0], x))}
    real = _t([[0.5, 1.0], [1.5, 0.0], [0.25, 7.0]])
    z_d = _t([[1.0, 0.0], [3.0, 1.0], [2.0, 5.0]])  # fakes' energies 1, 3, 2 against margin 2
    z_g = _t([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # the three codes of the PT check
    mb = MicroBatch(real, z_d, z_g)
    loss, scalars = family.d_loss(nets, mb, STAGE)
    # D(x) + [m - D(G(z))]^+ per sample: 0.5 + 1, 1.5 + 0 (3 is past the margin), 0.25 + 0
    assert loss.item() == pytest.approx((1.5 + 1.5 + 0.25) / 3, abs=1e-15)
    assert scalars["loss/energy_real"].item() == pytest.approx(0.75)
    assert scalars["loss/energy_fake"].item() == pytest.approx(2.0)
    loss, scalars = family.g_loss(nets, mb, STAGE)
    # mean energy (1 + 0 + 3) / 3, plus 0.3 * PT = 0.3 / 3
    assert loss.item() == pytest.approx(4 / 3 + 0.1, abs=1e-15)
    assert scalars["loss/pt"].item() == pytest.approx(1 / 3, abs=1e-15)
    assert scalars["loss/G"] is loss
    loss, scalars = _family(tmp_path, POINTS, "loss.pt_weight=0").g_loss(nets, mb, STAGE)
    assert loss.item() == pytest.approx(4 / 3) and "loss/pt" not in scalars


def test_the_hinge_gives_no_gradient_past_the_margin(tmp_path):
    family = _family(tmp_path, POINTS, "loss.margin=2")
    scale = nn.Parameter(torch.ones((), dtype=torch.float64))
    nets = {"G": Stub(lambda z: z), "D": Stub(lambda x: (scale * x[:, 0], x))}
    real = _t([[0.0, 0.0], [0.0, 0.0]])  # energy 0
    loss, _ = family.d_loss(nets, MicroBatch(real, _t([[1.0, 0.0], [3.0, 1.0]]), real), STAGE)
    loss.backward()
    assert loss.item() == pytest.approx(0.5)  # ([2 - 1]^+ + [2 - 3]^+) / 2
    assert scale.grad.item() == pytest.approx(-0.5)  # only the fake inside the margin: -1 / 2


def _pt_on_ranks(env: DistEnv, codes: torch.Tensor, tmp_path) -> dict:
    """This rank's slice of ``codes``: PT over the global batch, and its gradient."""
    cfg = load_config(None, tiny_overrides(tmp_path, POINTS))
    family = EBGAN(cfg, SimpleNamespace(world=env.world_size, rank=env.rank))
    n = len(codes) // env.world_size
    mine = codes[env.rank * n:(env.rank + 1) * n].clone().requires_grad_(True)
    pt = pulling_away(family.global_rows(mine))
    pt.backward()
    return {"pt": pt.detach(), "grad": mine.grad}


def test_pulling_away_is_over_the_global_batch(tmp_path):
    codes = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    single = _pt_on_ranks(DistEnv(), codes, tmp_path)
    ranks = run_ranks(2, _pt_on_ranks, codes, tmp_path, tmp_path=tmp_path)
    for r in ranks:
        torch.testing.assert_close(r["pt"], single["pt"], rtol=0, atol=1e-14)
    # each rank's codes get the gradient of every rank's (equal) PT, 2x; the data-parallel
    # average over the 2 ranks halves it: one process's gradient
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, single["grad"],
                               rtol=0, atol=1e-14)
    halves = [pulling_away(codes[:3]), pulling_away(codes[3:])]  # a per-rank PT would differ
    assert all(abs(h.item() - single["pt"].item()) > 1e-3 for h in halves)


# ----------------------------------------------------------------------- sharded runs, resume


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-3"])
def test_two_ranks_match_one_process_on_images(strategy, tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_fixed(DistEnv(), IMAGES, SHAPES, strategy, tmp_path / "single", extra, 3)
    assert single["phases"][0] == ["loss/D", "loss/G", "loss/energy_G", "loss/energy_fake",
                                   "loss/energy_real", "loss/pt"]
    ranks = run_ranks(2, train_fixed, IMAGES, SHAPES, strategy, tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)


class FixedPoints:
    """Stands in for PointStream: seeded global micro-batches of 2-D points in the default
    dtype, this rank's contiguous slice."""

    skipped = 0

    def __init__(self, micro: int, rank: int, world: int, seed: int = 11):
        self.micro, self.rank, self.world = micro, rank, world
        self.gen = torch.Generator().manual_seed(seed)

    def set_resolution(self, resolution: int) -> None: ...

    def next_batch(self) -> Batch:
        full = torch.randn(self.micro * self.world, 2, generator=self.gen,
                           dtype=torch.get_default_dtype()) * 2
        return Batch(full[self.rank * self.micro:(self.rank + 1) * self.micro], [])

    def close(self) -> None: ...


def train_points(env: DistEnv, family: list[str], strategy: str, tmp_path, extra: list[str],
                 steps: int) -> dict:
    """``steps`` float64 steps of ``family`` on seeded 2-D points; every network's final
    state."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = load_config(None, tiny_overrides(tmp_path, family, strategy) + extra)
        trainer = Trainer(cfg, env)
        trainer.streams = {"data": FixedPoints(trainer.micro_batch, env.rank, env.world_size)}
        rows = [trainer.train_step() for _ in range(steps)]
        assert not any(r["nonfinite"] for r in rows)
        return {"phases": [sorted(k for k in r if k.startswith("loss/")) for r in rows],
                **full_state(trainer)}
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.slow
def test_two_ranks_match_one_process_on_points(tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_points(DistEnv(), POINTS, "ddp", tmp_path / "single", extra, 3)
    ranks = run_ranks(2, train_points, POINTS, "ddp", tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, "ddp")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    pack_demo_digits(out)
    return out


def _real(tmp_path, digits, family: list[str], *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, family) + [
        f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}",
        "data.num_workers=0", "data.shuffle_buffer=100", "data.xflip=false", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, digits):
    assert_resume_is_exact(_real(tmp_path, digits, IMAGES, "train.total_kimg=0.048"),
                           parts=(3, 3))


# ------------------------------------------------------------------------------ configuration


def test_both_sources_and_the_nets_they_choose(tmp_path):
    on_points = _family(tmp_path, POINTS)
    nets = on_points.make_networks()
    assert on_points.on_points and type(nets["D"]).__name__ == "MLPAutoencoderD"
    assert "2-D points" in on_points.describe(nets)
    assert on_points.streams()["data"].points == "grid25"
    on_images = _family(tmp_path, IMAGES)
    nets = on_images.make_networks()
    assert not on_images.on_points and type(nets["D"]).__name__ == "ConvAutoencoderD"
    assert [s.name for s in on_images.phases()] == ["D", "G"]


@pytest.mark.parametrize(("extra", "message"), [
    (["loss.kind=hinge"], "loss.kind='hinge' is not allowed: expected nonsaturating"),
    (["loss.r1_gamma=1"], "loss.r1_gamma=1.0 is not allowed: expected 0"),
    (["loss.r2_gamma=1"], "loss.r2_gamma=1.0 is not allowed"),
    (["train.d_steps=2"], "train.d_steps=2 is not allowed"),
    (["train.batch_size=2", "train.grad_accum=2"], "train.batch_size=2 is not allowed"),
    (["model.resolution=16"], "model.resolution=16 is not allowed: it is read only with "
                              "data.source=shards"),
    (["eval.every_kimg=1"], "eval.every_kimg=1.0 is not allowed"),
    (["model.code_dim=0"], "model.code_dim=0 is not allowed"),
])
def test_settings_that_do_not_fit_are_refused(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, tiny_overrides(tmp_path, POINTS) + extra)


def test_mlp_settings_are_refused_on_images(tmp_path):
    with pytest.raises(ConfigError, match="model.mlp_hidden=8 is not allowed: it is read only "
                                          "with data.source=points"):
        load_config(None, tiny_overrides(tmp_path, IMAGES) + ["model.mlp_hidden=8"])


def test_configs_load_and_train_a_step(tmp_path, digits):
    assert_configs_train_a_step(tmp_path, "ebgan", [
        (CONFIGS / "grid25_ebgan.yaml", []),
        (CONFIGS / "demo_digits8_ebgan.yaml",
         [f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}"])])


# ----------------------------------------------------------------------------------- training


def digit_scores(G, n: int = 500, seed: int = 0) -> dict:
    """Pixel-space precision of ``n`` samples of G (share that look like some real digit) and
    how many of the 10 classes the classifier reads in them."""
    z = torch.randn(n, G.in_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = G(z, 8)[:, 0]
    classes = np.bincount(DigitClassifier().fit().predict(images), minlength=10)
    return {"precision": digit_precision(images), "classes": int((classes >= 10).sum())}


@pytest.mark.slow
def test_trains_on_the_built_in_digits(tmp_path, digits):
    # 30 kimg: over train.seed 0..7 every run reached >= 9 classes and precision >= 0.49; at
    # 20 kimg the class count still depended on the seed and the data order (6 to 10).
    cfg = load_config(CONFIGS / "demo_digits8_ebgan.yaml", [
        f"runs_dir={tmp_path}", "log.progress=false", "log.wandb=disabled",
        f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}",
        "train.total_kimg=30", "checkpoint.every_kimg=1000"])
    trainer = Trainer(cfg)
    before = digit_scores(trainer.G_ema)
    trainer.train()
    trainer.close()
    after = digit_scores(trainer.G_ema)
    assert before["precision"] < 0.05, before
    assert after["precision"] > 0.4 and after["classes"] >= 8, (before, after)
    out = tmp_path / "g.png"
    assert main(["generate", str(trainer.run_dir), "--num", "16", "--out", str(out)]) == 0


def grid_overrides(tmp_path, steps: int) -> list[str]:
    return [f"runs_dir={tmp_path}", "log.progress=false", f"train.total_kimg={steps * 0.128}",
            f"log.sample_every_kimg={steps * 0.128 / 2}", "checkpoint.every_kimg=1000"]


def modes_by_step(run_dir) -> list[tuple[int, int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["modes/covered"], r["modes/high_quality"]) for r in rows
            if "modes/covered" in r]


@pytest.mark.slow
def test_covers_the_modes_of_the_grid(tmp_path):
    cfg = load_config(CONFIGS / "grid25_ebgan.yaml", grid_overrides(tmp_path, 3000))
    trainer = Trainer(cfg)
    before = trainer.family.write_samples(trainer.family.samples(
        trainer.ema, trainer.family.sample_inputs(), trainer.phase()), [tmp_path / "0.png"])
    trainer.train()
    trainer.close()
    modes = modes_by_step(cfg.run_dir)
    assert before["modes/covered"] <= 3 and modes[-1][0] == 3000
    assert modes[-1][1] >= 15, modes
    out = tmp_path / "g.png"
    assert main(["generate", str(cfg.run_dir), "--num", "500", "--out", str(out)]) == 0
