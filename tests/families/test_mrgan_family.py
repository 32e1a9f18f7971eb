"""MRGAN as a family spec: its regularised G loss by hand (the mode term's sign and loss kind),
the loss menu's phases with E trained beside G, sharded runs against one process on images and
on 2-D points, exact resume, configuration checks, its configs, and training on the built-in
digits and on the 25-mode grid."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.families._image import MicroBatch
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import (
    StubServices,
    assert_configs_train_a_step,
    assert_matches,
    assert_resume_is_exact,
    tiny_overrides,
    train_fixed,
)
from families.test_ebgan_family import (
    Stub,
    digit_scores,
    digits,  # noqa: F401 (the packed digits, a module fixture)
    grid_overrides,
    modes_by_step,
    train_points,
)
from parallel.spawn import run_ranks

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IMAGES = ["model.arch=mrgan", "model.resolution=8", "model.img_channels=1", "model.latent_dim=4",
          "model.channel_base=32", "model.channel_max=8"]
POINTS = ["model.arch=mrgan", "data.source=points", "model.latent_dim=2", "model.mlp_hidden=8",
          "model.mlp_layers=2"]
SHAPES = {"data": (1, 8)}
STAGE = Phase(8, 1.0)


def _family(tmp_path, family: list[str], *extra: str):
    from scalegan.families import build_family

    return build_family(load_config(None, tiny_overrides(tmp_path, family) + list(extra)),
                        StubServices())


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------- the losses

# G is the identity, E halves its input, D's logit is the sum of a point's coordinates
NETS = {"G": Stub(lambda z: z), "E": Stub(lambda x: 0.5 * x), "D": Stub(lambda x: x.sum(1))}
REAL = [[1.0, 2.0], [-1.0, 0.5]]
Z_G = [[0.5, -1.0], [2.0, 1.0]]
Z_D = [[0.0, 1.0], [-2.0, 0.0]]


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path, POINTS, "model.geometric_weight=0.5", "model.mode_weight=0.25")
    mb = MicroBatch(_t(REAL), _t(Z_D), _t(Z_G))
    loss, scalars = family.d_loss(NETS, mb, STAGE)  # the loss menu's D: logits 3, -0.5 / 1, -2
    want = (softplus(1) + softplus(-3) + softplus(-2) + softplus(0.5)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-12)
    loss, scalars = family.g_loss(NETS, mb, STAGE)
    adv = (softplus(0.5) + softplus(-3)) / 2  # -log D(G(z)): logits -0.5, 3
    # G(E(x)) = x / 2: squared distances 5 / 4 and 1.25 / 4; reconstructions' logits 1.5, -0.25
    geometric = (1.25 + 0.3125) / 2
    mode = (softplus(-1.5) + softplus(0.25)) / 2  # -log D(G(E(x))): judged real is rewarded
    assert scalars["loss/adv"].item() == pytest.approx(adv, abs=1e-12)
    assert scalars["loss/geometric"].item() == pytest.approx(geometric, abs=1e-12)
    assert scalars["loss/mode"].item() == pytest.approx(mode, abs=1e-12)
    assert loss.item() == pytest.approx(adv + 0.5 * geometric + 0.25 * mode, abs=1e-12)
    assert scalars["loss/G"] is loss


def test_the_mode_term_is_the_loss_kinds_g_loss(tmp_path):
    family = _family(tmp_path, POINTS, "loss.kind=lsgan")
    _, scalars = family.g_loss(NETS, MicroBatch(_t(REAL), _t(Z_D), _t(Z_G)), STAGE)
    assert scalars["loss/mode"].item() == pytest.approx(((1.5 - 1) ** 2 + 1.25 ** 2) / 4)
    assert scalars["loss/adv"].item() == pytest.approx(((-0.5 - 1) ** 2 + 2 ** 2) / 4)
    # relativistic: fakes and reconstructions each paired with a real sample's logit (3, -0.5)
    family = _family(tmp_path, POINTS, "loss.kind=rpgan")
    _, scalars = family.g_loss(NETS, MicroBatch(_t(REAL), _t(Z_D), _t(Z_G)), STAGE)
    assert scalars["loss/adv"].item() == pytest.approx((softplus(3.5) + softplus(-3.5)) / 2)
    assert scalars["loss/mode"].item() == pytest.approx((softplus(1.5) + softplus(-0.25)) / 2)


def test_the_encoder_learns_to_make_reconstructions_pass_for_real(tmp_path):
    # the regularisers' gradient moves E so that D(G(E(x))) rises, where it pulls x's
    # reconstruction; the geometric term alone would too here, so it is weighted out
    family = _family(tmp_path, POINTS, "model.geometric_weight=0")
    scale = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    nets = dict(NETS, E=Stub(lambda x: scale * x))
    loss, _ = family.g_loss(nets, MicroBatch(_t([[1.0, 2.0]]), _t(Z_D[:1]), _t(Z_G[:1])), STAGE)
    loss.backward()
    assert scale.grad.item() < 0  # a larger scale: logit 3 * scale, more "real"


def test_phases_follow_the_loss_menu_and_train_the_encoder_with_g(tmp_path):
    phases = _family(tmp_path, IMAGES).phases()
    assert [(s.name, s.trains) for s in phases] == [("D", ("D",)), ("G", ("G", "E"))]
    phases = _family(tmp_path, IMAGES, "train.d_steps=2", "loss.r1_gamma=1",
                     "loss.r2_gamma=1").phases()
    assert [s.name for s in phases] == ["D", "R1+R2", "G"]
    assert (phases[-1].interval, phases[-1].offset, phases[-1].trains) == (2, 1, ("G", "E"))


# ----------------------------------------------------------------------- sharded runs, resume


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-3"])
def test_two_ranks_match_one_process_on_images(strategy, tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16", "loss.r1_gamma=1", "loss.r1_interval=2"]
    single = train_fixed(DistEnv(), IMAGES, SHAPES, strategy, tmp_path / "single", extra, 3)
    assert single["phases"][0] == ["loss/D", "loss/G", "loss/adv", "loss/geometric",
                                   "loss/mode", "loss/r1"]
    ranks = run_ranks(2, train_fixed, IMAGES, SHAPES, strategy, tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)


@pytest.mark.slow
def test_two_ranks_match_one_process_on_points(tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_points(DistEnv(), POINTS, "ddp", tmp_path / "single", extra, 3)
    ranks = run_ranks(2, train_points, POINTS, "ddp", tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, "ddp")


def _real(tmp_path, digits, family: list[str], *extra: str) -> list[str]:  # noqa: F811
    return tiny_overrides(tmp_path, family) + [
        f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}",
        "data.num_workers=0", "data.shuffle_buffer=100", "data.xflip=false", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, digits):  # noqa: F811
    assert_resume_is_exact(_real(tmp_path, digits, IMAGES, "train.total_kimg=0.048"),
                           parts=(3, 3))


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("extra", "message"), [
    (["model.geometric_weight=-1"], "model.geometric_weight=-1.0 is not allowed: expected >= 0"),
    (["model.channel_max=4"], "model.channel_max=4 is not allowed: it is read only with "
                              "data.source=shards"),
    (["eval.every_kimg=1"], "eval.every_kimg=1.0 is not allowed"),
])
def test_settings_that_do_not_fit_are_refused(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, tiny_overrides(tmp_path, POINTS) + extra)


def test_configs_load_and_train_a_step(tmp_path, digits):  # noqa: F811
    assert_configs_train_a_step(tmp_path, "mrgan", [
        (CONFIGS / "grid25_mrgan.yaml", []),
        (CONFIGS / "demo_digits8_mrgan.yaml",
         [f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}"])])


# ----------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_trains_on_the_built_in_digits(tmp_path, digits):  # noqa: F811
    config = CONFIGS / "demo_digits8_mrgan.yaml"
    cfg = load_config(config, [f"runs_dir={tmp_path}", "log.progress=false",
                               "log.wandb=disabled", f"data.shards={digits / 'train'}",
                               f"eval.real={digits / 'holdout'}", "train.total_kimg=20",
                               "checkpoint.every_kimg=1000"])
    trainer = Trainer(cfg)
    before = digit_scores(trainer.G_ema)
    trainer.train()
    trainer.close()
    after = digit_scores(trainer.G_ema)
    assert before["precision"] < 0.05, before
    assert after["precision"] > 0.15 and after["classes"] >= 8, (before, after)
    out = tmp_path / "g.png"
    assert main(["generate", str(trainer.run_dir), "--num", "16", "--out", str(out)]) == 0


@pytest.mark.slow
def test_covers_the_modes_of_the_grid(tmp_path):
    cfg = load_config(CONFIGS / "grid25_mrgan.yaml", grid_overrides(tmp_path, 3000))
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    modes = modes_by_step(cfg.run_dir)
    assert modes[-1][0] == 3000 and modes[-1][1] >= 20, modes
    out = tmp_path / "g.png"
    assert main(["generate", str(cfg.run_dir), "--num", "500", "--out", str(out)]) == 0
