"""CycleGAN as a family spec: its losses by hand, the image pool, sharded runs against one
process, exact resume (pool and both domains' positions included), training on the built-in
domains, and `generate --input`."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.demo import pack_demo_domains
from scalegan.families.cyclegan import CycleGAN, Pair
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase

from families.common import (
    Fn,
    StubServices,
    assert_bad_inputs_are_named,
    assert_matches,
    assert_resume_is_exact,
    shards_to_folder,
    tiny_overrides,
    train_and_evaluate,
    train_fixed,
)
from parallel.spawn import run_ranks

FAMILY = ["model.arch=cyclegan", "model.resolution=32", "model.img_channels=1", "model.ngf=4",
          "model.ndf=4", "model.res_blocks=1", "model.d_layers=2", "model.pool_size=3",
          "optim.beta1=0.5", "optim.beta2=0.999", "optim.g_lr=0.0002", "optim.d_lr=0.0002"]
SHAPES = {"a": (1, 32), "b": (1, 32)}
STAGE = Phase(32, 1.0)
STEPS = 3



def _family(tmp_path, *extra: str) -> CycleGAN:
    cfg = load_config(None, tiny_overrides(tmp_path, FAMILY) + list(extra))
    return CycleGAN(cfg, StubServices())


def _pair() -> Pair:
    a = torch.tensor([[[[0.2, -0.4], [0.6, 1.0]]]], dtype=torch.float64)
    b = torch.tensor([[[[-0.2, 0.4], [0.0, -1.0]]]], dtype=torch.float64)
    return Pair(a, b)


STUB_NETS = {"G_AB": Fn(lambda x: 0.5 * x), "G_BA": Fn(lambda x: x - 0.25),
             "D_A": Fn(lambda x: x.mean(dim=(1, 2, 3), keepdim=True)),
             "D_B": Fn(lambda x: 2 * x)}


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path, "model.pool_size=0")
    mb = _pair()
    loss, scalars = family.g_loss(STUB_NETS, mb, STAGE)
    # fake_b = a/2, fake_a = b - 1/4; D_B(fake_b) = a -> mean((a - 1)^2) = 2.76/4 = 0.69;
    # D_A(fake_a) = mean(b) - 1/4 = -0.45 -> (-1.45)^2 = 2.1025
    assert scalars["loss/G"].item() == pytest.approx(0.69 + 2.1025, abs=1e-12)
    # |G_BA(G_AB(a)) - a| = |-a/2 - 1/4| -> 1.7/4; |G_AB(G_BA(b)) - b| = |-b/2 - 1/8| -> 0.85/4
    assert scalars["loss/cycle"].item() == pytest.approx(0.425 + 0.2125, abs=1e-12)
    # |G_AB(b) - b| = |b|/2 -> 0.2; |G_BA(a) - a| = 0.25
    assert scalars["loss/identity"].item() == pytest.approx(0.45, abs=1e-12)
    assert loss.item() == pytest.approx(2.7925 + 10 * 0.6375 + 0.5 * 10 * 0.45, abs=1e-12)
    loss, scalars = family.d_loss(STUB_NETS, mb, STAGE)
    # D_A: real mean 0.35 -> (0.35 - 1)^2 = 0.4225, fake -0.45 -> 0.2025: 0.5 * 0.625
    # D_B: 2b -> mean((2b - 1)^2) = 12/4 = 3, fake 2 * a/2 = a -> mean(a^2) = 1.56/4: 0.5 * 3.39
    assert scalars["loss/D_A"].item() == pytest.approx(0.3125, abs=1e-12)
    assert scalars["loss/D_B"].item() == pytest.approx(1.695, abs=1e-12)
    assert loss.item() == pytest.approx(2.0075, abs=1e-12)


def test_pool_follows_the_published_algorithm(tmp_path):
    # An independent re-statement of the pool (Shrivastava et al.; CycleGAN's ImagePool) over
    # the same uniform and slot draws: fill first; then, with probability 1/2, return a stored
    # image and store the new one in its place.
    family = _family(tmp_path, "model.pool_size=3")
    svc = family.svc
    reference, shown = [], []
    for step in range(5):
        fakes = torch.full((2, 1, 32, 32), float(step)).double()
        fakes[1] += 0.5
        state = svc.rng.get_state()
        got = family.query_pool("b", fakes)
        svc.rng.set_state(state)
        u, slot = torch.rand(2, generator=svc.rng), torch.randint(0, 3, (2,), generator=svc.rng)
        for i in range(2):
            value = fakes[i, 0, 0, 0].item()
            if len(reference) < 3:
                reference.append(value)
                shown.append(value)
            elif u[i] > 0.5:
                shown.append(reference[slot[i]])
                reference[slot[i]] = value
            else:
                shown.append(value)
        assert got[:, 0, 0, 0].tolist() == shown[-2:]
    assert family.pools["b"][:, 0, 0, 0].tolist() == reference
    assert int(family.pool_counts["b"]) == 3 and int(family.pool_counts["a"]) == 0
    assert random.random() is not None  # the pool never uses Python's global RNG state


def cancelled_biases(net: nn.Module, prefix: str) -> set[str]:
    """Biases of the convolutions an instance norm follows: the norm subtracts them again, so
    their gradient is zero in exact arithmetic and only rounding in practice."""
    names = set()
    for name, module in net.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (_, nxt) in zip(children, children[1:], strict=False):
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(
                    nxt, nn.InstanceNorm2d):
                names.add(f"{prefix}.{name}.{conv_name}.bias".replace("..", "."))
    return names


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-3"])
def test_two_ranks_match_one_process(strategy, tmp_path):
    # 3 steps, 2 micro-batches each: the 3-image pools fill in step 0 and swap from then on.
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, STEPS)
    assert single["phases"][0] == ["loss/D_A", "loss/D_B", "loss/G", "loss/cycle",
                                   "loss/identity"]
    assert int(single["family.pool_count_a"]) == 3
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, STEPS,
                      tmp_path=tmp_path)
    if strategy.startswith("deepspeed"):
        # ZeRO-3 runs float32: Adam scales the float32 rounding of the cancelled biases' zero
        # gradients up to steps of the learning rate's size. They change no output; every other
        # tensor is held to the usual tolerance.
        nets = CycleGAN.networks(load_config(None, tiny_overrides(tmp_path, FAMILY)).model)
        cancelled = {f"{k}" for name, net in nets.items()
                     for k in cancelled_biases(net, name)}
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
    # 6 steps of 8: the pools (3) swap, the learning rate decays over the last half, and both
    # domains' streams (40 images each) wrap into their second epoch
    assert_resume_is_exact(_real(tmp_path, domains, "train.total_kimg=0.048"))


@pytest.mark.slow
def test_trains_on_the_built_in_domains_and_translates_a_folder(tmp_path, domains):
    over = _real(tmp_path, domains, "model.ngf=8", "model.ndf=8", "model.res_blocks=2",
                 "train.total_kimg=0.8", "train.batch_size=4", "optim.g_lr=0.001",
                 "optim.d_lr=0.001", "checkpoint.every_kimg=1000")
    trainer, before, after = train_and_evaluate(over)
    for domain in ("a", "b"):  # held-out cycle error: 0.62 / 0.61 -> about 0.2 here
        assert after[f"cycle_{domain}"] < 0.6 * before[f"cycle_{domain}"], (before, after)
    run = trainer.run_dir
    out, folder = tmp_path / "translated", tmp_path / "a_holdout"
    shards_to_folder(domains / "a_holdout", folder, 32, 1)
    assert main(["generate", str(run), "--input", str(folder), "--out", str(out),
                 "--direction", "a2b"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:03d}.png" for i in range(10)]
    assert main(["generate", str(run), "--input", str(folder), "--out",
                 str(tmp_path / "x"), "--direction", "sideways"]) == 2
    assert_bad_inputs_are_named(run, tmp_path, side=32, channels=1)
