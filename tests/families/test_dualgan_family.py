"""DualGAN as a family spec: its Wasserstein and reconstruction losses by hand, the dropout masks
from the shared RNG, clipped critics and n_critic, sharded runs against one process, exact
resume, training on the built-in domains, and `generate --input`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.data.demo import pack_demo_domains
from scalegan.families.dualgan import DualGAN, Pair
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from families.common import (
    Fn,
    StubServices,
    assert_bad_inputs_are_named,
    assert_matches,
    assert_resume_is_exact,
    fixed_trainer,
    full_state,
    losses_by_step,
    shards_to_folder,
    tiny_overrides,
    train_fixed,
)
from parallel.spawn import run_ranks

FAMILY = ["model.arch=dualgan", "model.resolution=32", "model.img_channels=1", "model.ngf=4",
          "model.ndf=4", "model.d_layers=2", "optim.kind=rmsprop", "optim.alpha=0.9",
          "optim.g_lr=0.00005", "optim.d_lr=0.00005"]
SHAPES = {"a": (1, 32), "b": (1, 32)}
STAGE = Phase(32, 1.0)
CLIP = 0.01
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_faces32_dualgan.yaml"


def _family(tmp_path, *extra: str) -> DualGAN:
    cfg = load_config(None, tiny_overrides(tmp_path, FAMILY) + list(extra))
    return DualGAN(cfg, StubServices())


def _pair() -> Pair:
    a = torch.tensor([[[[0.2, -0.4], [0.6, 1.0]]]], dtype=torch.float64)
    b = torch.tensor([[[[-0.2, 0.4], [0.0, -1.0]]]], dtype=torch.float64)
    return Pair(a, b)


STUB_NETS = {"G_A": Fn(lambda x: 0.5 * x), "G_B": Fn(lambda x: x - 0.25),
             "D_A": Fn(lambda x: x.mean(dim=(1, 2, 3), keepdim=True)),
             "D_B": Fn(lambda x: 2 * x)}


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path, "model.dropout=0", "model.recon_weight_a=100",
                     "model.recon_weight_b=10")
    mb = _pair()
    loss, scalars = family.d_loss(STUB_NETS, mb, STAGE)
    # D_A judges B: D_A(G_A(a)) = mean(a) / 2 = 0.175, D_A(b) = mean(b) = -0.2 -> 0.375
    # D_B judges A: D_B(G_B(b)) = 2 (b - 1/4) -> mean -0.9, D_B(a) = 2a -> mean 0.7 -> -1.6
    assert scalars["loss/D_A"].item() == pytest.approx(0.375, abs=1e-12)
    assert scalars["loss/D_B"].item() == pytest.approx(-1.6, abs=1e-12)
    assert loss.item() == pytest.approx(-1.225, abs=1e-12)
    loss, scalars = family.g_loss(STUB_NETS, mb, STAGE)
    # adversarial: -D_A(G_A(a)) - D_B(G_B(b)) = -0.175 + 0.9
    assert scalars["loss/G"].item() == pytest.approx(0.725, abs=1e-12)
    # |G_B(G_A(a)) - a| = |a/2 + 1/4| -> 1.7 / 4; |G_A(G_B(b)) - b| = |b/2 + 1/8| -> 0.85 / 4
    assert scalars["loss/recon_a"].item() == pytest.approx(0.425, abs=1e-12)
    assert scalars["loss/recon_b"].item() == pytest.approx(0.2125, abs=1e-12)
    assert loss.item() == pytest.approx(0.725 + 100 * 0.425 + 10 * 0.2125, abs=1e-12)


def test_dropout_masks_come_from_the_shared_rng(tmp_path):
    family = _family(tmp_path, "model.dropout=0.5", "model.dropout_layers=3")
    x = torch.zeros(3, 1, 32, 32, dtype=torch.float64)
    state = family.svc.rng.get_state()
    masks = family.noise(x)
    family.svc.rng.set_state(state)
    # the U-Net of depth 5 at ngf 4: outputs of its first three decoder layers
    want = [torch.rand(3, *s, generator=family.svc.rng) for s in ((32, 2, 2), (16, 4, 4),
                                                                    (8, 8, 8))]
    assert len(masks) == 3
    for m, u in zip(masks, want, strict=True):
        assert m.dtype == torch.float64
        torch.testing.assert_close(m, (u >= 0.5).double() * 2, rtol=0, atol=0)
    assert 0.4 < torch.cat([m.flatten() for m in masks]).eq(0).double().mean() < 0.6
    assert _family(tmp_path, "model.dropout=0").noise(x) is None
    # the losses call the translators with masks: a new mask per call, 2 in D, 4 in G
    calls = []

    class Record(nn.Module):
        def forward(self, x, noise=None):
            calls.append(noise)
            return x

    nets = {**STUB_NETS, "G_A": Record(), "G_B": Record()}
    pair = Pair(torch.zeros(2, 1, 32, 32, dtype=torch.float64),
                torch.zeros(2, 1, 32, 32, dtype=torch.float64))
    family.d_loss(nets, pair, STAGE)
    family.g_loss(nets, pair, STAGE)
    assert len(calls) == 6 and all(len(n) == 3 for n in calls)
    assert not torch.equal(calls[2][2], calls[3][2])


def test_config_checks(tmp_path):
    base = tiny_overrides(tmp_path, FAMILY)
    with pytest.raises(ConfigError, match="data.shards_b"):
        load_config(None, base + ["data.shards_b="])
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(None, base + ["model.dropout=1"])
    with pytest.raises(ConfigError, match="model.depth"):
        load_config(None, base + ["model.depth=6"])
    with pytest.raises(ConfigError, match="loss.r2_gamma"):
        load_config(None, base + ["loss.r2_gamma=1"])
    cfg = load_config(None, base + ["train.d_steps=4"])
    assert DualGAN(cfg).d_steps() == 4
    assert DualGAN(load_config(None, base)).d_steps() == 2  # the paper's n_critic (2 .. 4)
    assert cfg.model.unet_depth == 5
    assert DualGAN(cfg).clipped() == {"D_A": CLIP, "D_B": CLIP}


def _critic_weights(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("D_A.", "D_B."))}


def test_critics_clipped_and_translators_update_every_n_critic_steps(tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        trainer = fixed_trainer(DistEnv(), FAMILY, SHAPES, "ddp", tmp_path,
                                ["train.d_steps=3"])
        g_before = {k: v.clone() for k, v in trainer.G_A.state_dict().items()}
        # clamped from the start: the N(0, 0.02) initialisation puts many weights beyond c
        for key, w in _critic_weights(full_state(trainer)).items():
            assert w.abs().max() <= CLIP, key
        phases, changed = [], []
        for _ in range(6):
            row = trainer.train_step()
            phases.append(sorted(k for k in row if k.startswith("loss/")))
            changed.append(any(not torch.equal(v, g_before[k])
                               for k, v in trainer.G_A.state_dict().items()))
            g_before = {k: v.clone() for k, v in trainer.G_A.state_dict().items()}
        d_only, d_and_g = ["loss/D_A", "loss/D_B"], ["loss/D_A", "loss/D_B", "loss/G",
                                                       "loss/recon_a", "loss/recon_b"]
        assert phases == [d_only, d_only, d_and_g] * 2
        assert changed == [False, False, True] * 2
        state = full_state(trainer)
        critics = _critic_weights(state)
        assert len(critics) == 2 * 8  # 4 convolutions with biases each
        at_bound = 0
        for key, w in critics.items():
            assert w.abs().max() <= CLIP, key
            at_bound += int((w.abs() == CLIP).sum())
        assert at_bound > 0
        # the translators are not clipped
        assert max(v.abs().max() for k, v in state.items() if k.startswith("G_A.")) > CLIP
    finally:
        torch.set_default_dtype(torch.float32)


def cancelled_biases(net: nn.Module, prefix: str) -> set[str]:
    """Biases of the convolutions an instance norm follows: the norm subtracts them again, so
    their gradient is zero in exact arithmetic and only rounding in practice."""
    names = set()
    for name, module in net.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (_, nxt) in zip(children, children[1:], strict=False):
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(
                    nxt, nn.InstanceNorm2d):
                names.add(".".join(p for p in (prefix, name, conv_name, "bias") if p))
    return names


@pytest.mark.parametrize("strategy", ["ddp", "fsdp",
                                      pytest.param("deepspeed-3", marks=pytest.mark.slow)])
def test_two_ranks_match_one_process(strategy, tmp_path):
    # 4 steps of 2 micro-batches, n_critic 2: D, D + G, D, D + G, dropout masks in every
    # translator call
    extra = ["train.grad_accum=2", "train.batch_size=16", "train.d_steps=2"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, 4)
    assert single["phases"][:2] == [["loss/D_A", "loss/D_B"],
                                    ["loss/D_A", "loss/D_B", "loss/G", "loss/recon_a",
                                     "loss/recon_b"]]
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, 4,
                      tmp_path=tmp_path)
    if strategy.startswith("deepspeed"):
        # ZeRO-3 runs float32: RMSProp, like Adam, scales the float32 rounding of the cancelled
        # biases' zero gradients up to steps of the learning rate's size. They change no
        # output; every other tensor is held to the usual tolerance.
        nets = DualGAN.networks(load_config(None, tiny_overrides(tmp_path, FAMILY)).model)
        cancelled = {k for name, net in nets.items() for k in cancelled_biases(net, name)}
        cancelled |= {k.replace(".", "_ema.", 1) for k in cancelled if k.startswith("G_")}
        assert len(cancelled) > 10 and cancelled <= single.keys()
        single = {k: v for k, v in single.items() if k not in cancelled}
        ranks = [{k: v for k, v in r.items() if k not in cancelled} for r in ranks]
    assert_matches(single, ranks, strategy)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    out = tmp_path_factory.mktemp("domains")
    pack_demo_domains(out, resolution=32)
    return out


def _real(tmp_path, domains, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, FAMILY) + [
        f"data.shards={domains / 'a'}", f"data.shards_b={domains / 'b'}",
        f"eval.real={domains / 'a_holdout'}", f"eval.real_b={domains / 'b_holdout'}",
        "data.num_workers=0", "data.shuffle_buffer=10", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, domains):
    # 7 steps of 8 with n_critic 2, stopped after 3 (mid-cycle: D, D + G, D) and resumed: the
    # phase schedule, the dropout draws and both domains' streams (40 images each, into their
    # second epoch) go on as in the straight run. Every step's losses are compared (the D-only
    # steps too), then every network and copy.
    overrides = _real(tmp_path, domains, "train.total_kimg=0.056", "train.d_steps=2")
    assert_resume_is_exact(overrides, parts=(3, 4))
    rows = losses_by_step(tmp_path / "runs" / "straight")
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert sum("loss/G" in r for r in rows) == 3


@pytest.mark.slow
def test_trains_on_the_built_in_domains_and_translates_a_folder(tmp_path, domains):
    # benchmarks/dualgan_recon_error.py's measurement (its seed 0): the demo config for 4 kimg
    # at 4x the paper's learning rate, about a minute on a CPU
    cfg = load_config(CONFIG, [
        f"runs_dir={tmp_path / 'runs'}", "log.wandb=disabled", "log.progress=false",
        "checkpoint.every_kimg=1000", f"data.shards={domains / 'a'}",
        f"data.shards_b={domains / 'b'}", f"eval.real={domains / 'a_holdout'}",
        f"eval.real_b={domains / 'b_holdout'}", "train.total_kimg=4", "optim.g_lr=0.0002",
        "optim.d_lr=0.0002", "train.seed=0"])
    trainer = Trainer(cfg)
    before = trainer.family.evaluate(trainer.ema, DistEnv(), cfg.eval, trainer.phase())
    trainer.train()
    trainer.close()
    after = trainer.family.evaluate(trainer.ema, DistEnv(), cfg.eval, trainer.phase())
    for domain in ("a", "b"):  # held-out reconstruction error: 0.36 -> about 0.12 here
        assert after[f"recon_{domain}"] < 0.5 * before[f"recon_{domain}"], (before, after)
    run = trainer.run_dir
    for domain, direction in (("a", "a2b"), ("b", "b2a")):
        folder, out = tmp_path / f"{domain}_holdout", tmp_path / f"translated_{direction}"
        shards_to_folder(domains / f"{domain}_holdout", folder, 32, 1)
        assert main(["generate", str(run), "--input", str(folder), "--out", str(out),
                     "--direction", direction]) == 0
        assert sorted(p.name for p in out.glob("*.png")) == [f"{i:03d}.png" for i in range(10)]
    assert main(["generate", str(run), "--input", str(folder), "--out",
                 str(tmp_path / "x"), "--direction", "sideways"]) == 2
    assert_bad_inputs_are_named(run, tmp_path, side=32, channels=1)
