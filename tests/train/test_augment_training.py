"""Augmentation in training: ADA's control of p from r_t, the over-fitting signals of a log row
(``d/real``, ``d/holdout``, ``aug/rt``, ``aug/p``, the warning), evaluation on the held-out set
by default, the same augmentations on 2 gloo ranks as in one process, and an exact resume with
p and the augmentation RNG."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scalegan.config import AugmentConfig, load_config
from scalegan.data.demo import pack_demo
from scalegan.metrics.evaluate import real_spec
from scalegan.monitor.loggers import JsonlLogger, Logger, MultiLogger
from scalegan.parallel.env import DistEnv
from scalegan.train.augmenter import Augmenter
from scalegan.train.trainer import Trainer

from families.common import assert_matches, full_state, losses_by_step, train_fixed
from parallel.spawn import run_ranks

TINY = ["model.arch=stylegan2", "model.resolution=32", "model.img_channels=1",
        "model.latent_dim=8", "model.w_dim=8", "model.channel_base=256", "model.channel_max=16",
        "model.mapping_layers=2", "loss.r1_gamma=1.0", "loss.r1_interval=2",
        "model.pl_interval=2", "optim.g_lr=0.002", "optim.d_lr=0.002"]
ADA = ["augment.kind=ada", "augment.p=0.3", "augment.interval=2", "augment.speed_kimg=0.1"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The demo faces at 32x32 with 20 of them held out (80 + 20)."""
    out = tmp_path_factory.mktemp("faces32h") / "faces"
    pack_demo(out, resolution=32, holdout=20)
    return out


def overrides(tmp_path, faces, name, *extra) -> list[str]:
    return [f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"data.shards={faces}",
            "data.num_workers=0", "train.batch_size=8", "train.total_kimg=10",
            "log.every_steps=2", "log.wandb=disabled", "log.progress=false",
            "checkpoint.every_kimg=1000", *TINY, *extra]


# ------------------------------------------------------------------------------- ADA's control


def _augmenter(**kw) -> Augmenter:
    return Augmenter(AugmentConfig(kind="ada", **kw), seed=0)


def test_p_follows_the_sign_of_rt_minus_the_target():
    aug = _augmenter(p=0.5, target=0.6, interval=2, speed_kimg=0.1)
    # interval 1: 8 + 8 real logits, 14 positive -> r_t = (14 - 2) / 16 = 0.75 > 0.6
    aug.observe(torch.tensor([1.0] * 7 + [-1.0]))
    aug.after_step()
    assert aug.p == 0.5 and aug.rt is None  # not adjusted within the interval
    aug.observe(torch.tensor([2.0] * 7 + [-0.5]))
    aug.after_step()
    assert aug.rt == pytest.approx(0.75)
    assert aug.p == pytest.approx(0.5 + 16 / 100)  # images / (speed_kimg * 1000)
    # a step without a D update counts nothing
    aug.after_step()
    assert aug.d_updates == 2
    # interval 2: r_t = 0 < 0.6 -> p falls by the same step; never below 0
    for _ in range(2):
        aug.observe(torch.tensor([1.0] * 4 + [-1.0] * 4))
        aug.after_step()
    assert aug.rt == 0.0 and aug.p == pytest.approx(0.5)
    low = _augmenter(p=0.01, interval=1, speed_kimg=0.1)
    low.observe(-torch.ones(8))
    low.after_step()
    assert low.p == 0.0


def test_fixed_and_none_keep_p_but_measure_rt():
    fixed = Augmenter(AugmentConfig(kind="fixed", p=0.4, interval=1), seed=0)
    fixed.observe(torch.ones(8))
    fixed.after_step()
    assert fixed.p == 0.4 and fixed.rt == 1.0
    none = Augmenter(AugmentConfig(kind="none"), seed=0)
    x = torch.randn(2, 3, 8, 8)
    assert none(x) is x


# ------------------------------------------------------------------------------- in training


class Alerts(Logger):
    def __init__(self):
        self.sent = []

    def alert(self, title: str, text: str) -> None:
        self.sent.append((title, text))


def test_a_log_row_has_the_overfitting_signals(tmp_path, faces, caplog):
    """...and periodic evaluation compares with the 20 held-out faces by default."""
    cfg = load_config(None, overrides(tmp_path, faces, "signals", *ADA,
                                      "log.overfit_threshold=1e-6", "eval.every_kimg=0.032",
                                      "eval.extractor=random", "eval.num_fake=16"))
    assert real_spec(cfg, cfg.eval) == (str(faces / "holdout"), "data.holdout")
    trainer = Trainer(cfg)
    alerts = Alerts()
    trainer.logger = MultiLogger([JsonlLogger(trainer.run_dir / "metrics.jsonl"), alerts])
    with caplog.at_level("WARNING"):
        trainer.train(max_steps=4)
    trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text()
            .splitlines()]
    evals = [r for r in rows if "eval/fid" in r]
    assert len(evals) == 1 and evals[0]["eval/num_real"] == 20  # the held-out faces
    rows = [r for r in rows if "d/real" in r]
    assert len(rows) == 2
    for row in rows:
        for key in ("d/real", "d/fake", "d/holdout", "d/overfit_gap", "aug/rt", "aug/p"):
            assert math.isfinite(row[key]), key
        assert row["d/overfit_gap"] == pytest.approx(row["d/real"] - row["d/holdout"])
        assert -1 <= row["aug/rt"] <= 1 and 0 <= row["aug/p"] <= 1
    assert trainer.holdout_images.shape == (20, 1, 32, 32)
    # p moved from 0.3 by two steps of 16 / 100 (an adjustment every 2 steps), floored at 0
    assert min(abs(trainer.augmenter.p - p) for p in (0.0, 0.3, 0.62)) < 1e-12
    warned = [r for r in rows if r.get("d/overfit_warning") == 1.0]
    assert len(warned) == sum(r["d/overfit_gap"] > 1e-6 for r in rows)
    assert warned and len(alerts.sent) == len(warned)  # seeded: the gap exceeds 1e-6 at least once
    assert caplog.text.count("D over-fits its training images") == len(warned)
    assert all("d/holdout" in text and "log.overfit_threshold=1e-06" in text
               for _, text in alerts.sent)


def test_d_holdout_does_not_move_the_run(tmp_path, faces):
    """The held-out measurement draws its own augmentations: logging every step or every
    other gives the same run."""
    a = Trainer(load_config(None, overrides(tmp_path, faces, "every1", *ADA,
                                            "log.every_steps=1")))
    a.train(max_steps=4)
    a.close()
    b = Trainer(load_config(None, overrides(tmp_path, faces, "every4", *ADA,
                                            "log.every_steps=4")))
    b.train(max_steps=4)
    b.close()
    sa, sb = full_state(a), full_state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.augmenter.p == b.augmenter.p


def test_without_a_holdout_nothing_is_measured_on_it(tmp_path):
    plain = tmp_path / "plain"
    pack_demo(plain, resolution=32)
    cfg = load_config(None, overrides(tmp_path, plain, "plain"))
    assert real_spec(cfg, cfg.eval) == (str(plain), "data.shards")
    trainer = Trainer(cfg)
    trainer.train(max_steps=2)
    trainer.close()
    row = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "d/real" in row and "aug/rt" in row
    assert "d/holdout" not in row and "aug/p" not in row  # augment.kind=none


@pytest.mark.parametrize("kind", ["ada", "diffaugment"])
def test_resume_is_exact_with_augmentation(tmp_path, faces, kind):
    extra = [*(ADA if kind == "ada" else ["augment.kind=diffaugment"]), "log.every_steps=1"]
    k = 3
    straight = Trainer(load_config(None, overrides(tmp_path, faces, "straight", *extra)))
    straight.train(max_steps=2 * k)
    straight.close()
    first = Trainer(load_config(None, overrides(tmp_path, faces, "split", *extra)))
    first.train(max_steps=k)
    first.close()
    rng_at_stop = first.augmenter.rng.get_state()
    second = Trainer(load_config(None, overrides(tmp_path, faces, "split", *extra)))
    assert not torch.equal(second.augmenter.rng.get_state(), rng_at_stop)  # fresh
    second.train(max_steps=k)
    second.close()
    assert losses_by_step(second.run_dir) == losses_by_step(straight.run_dir)
    s1, s2 = full_state(straight), full_state(second)
    assert all(torch.equal(s1[key], s2[key]) for key in s1)
    assert second.augmenter.state_dict() == straight.augmenter.state_dict()
    if kind == "ada":
        assert first.augmenter.p != 0.3  # p had moved before the stop (the test can fail)


# --------------------------------------------------------------------------- 2 ranks, 1 process

FAMILY = TINY + ["model.mbstd_group_size=4", "augment.kind=ada", "augment.p=0.6",
                 "augment.interval=1", "augment.speed_kimg=0.05"]


def _train_augmented(env: DistEnv, tmp_path) -> dict:
    out = train_fixed(env, FAMILY, {"data": (1, 32)}, "ddp", tmp_path, [], 4)
    return out


@pytest.mark.slow
def test_two_ranks_augment_as_one_process(tmp_path):
    """ddp on 2 gloo ranks (float64) ends where one process ends after 4 steps of ADA with p
    moving every step: every rank drew the same augmentations for its rows."""
    single = _train_augmented(DistEnv(), tmp_path / "single")
    ranks = run_ranks(2, _train_augmented, tmp_path / "multi", tmp_path=tmp_path)
    assert_matches(single, ranks, "ddp")
