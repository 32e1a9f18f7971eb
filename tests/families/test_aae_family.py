"""The adversarial autoencoder as a family spec: its losses by hand, prior draws, sharded runs
against one process (a phase training two networks jointly, and one training the encoder alone),
exact resume, training on the built-in digits, and `generate` / `generate --input`."""

from __future__ import annotations

import math

import pytest
import torch

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.demo import pack_demo_digits
from scalegan.families.aae import AAE, Batch
from scalegan.models.aae import sample_prior
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase

from families.common import (
    FixedStream,
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

FAMILY = ["model.arch=aae", "model.resolution=8", "model.img_channels=1", "model.code_dim=4",
          "model.hidden=16", "model.d_hidden=16", "model.prior=mixture"]
SHAPES = {"data": (1, 8)}
STAGE = Phase(8, 1.0)



STUB_NETS = {"encoder": Fn(lambda x: x.flatten(1)[:, :2]),
             "decoder": Fn(lambda z: z.mean(1).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)),
             "D": Fn(lambda z: z.sum(1))}


def _family(tmp_path, *extra: str, svc=None) -> AAE:
    cfg = load_config(None, tiny_overrides(tmp_path, FAMILY) + list(extra))
    return AAE(cfg, svc or StubServices())


def test_losses_match_hand_computed_values(tmp_path):
    family = _family(tmp_path)
    x = torch.tensor([[[[0.2, -0.4], [0.6, 1.0]]]], dtype=torch.float64)
    mb = Batch(x, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    # code = (0.2, -0.4), decoded to its mean -0.1 everywhere: ((.3^2 + .3^2 + .7^2 + 1.1^2) / 4
    loss, scalars = family.recon_loss(STUB_NETS, mb, STAGE)
    assert loss.item() == pytest.approx(0.47, abs=1e-12)
    loss, _ = family.d_loss(STUB_NETS, mb, STAGE)  # D(prior) = 1.5 (real), D(code) = -0.2
    assert loss.item() == pytest.approx(softplus(-0.2) + softplus(-1.5), abs=1e-6)
    loss, _ = family.g_loss(STUB_NETS, mb, STAGE)  # the encoder as G: softplus(-D(code))
    assert loss.item() == pytest.approx(softplus(0.2), abs=1e-6)


def test_prior_samples_are_drawn_for_the_global_batch(tmp_path):
    # each rank keeps its rows of one draw of the global batch: what one process draws
    class Rank(StubServices):
        def __init__(self, rank: int):
            super().__init__(seed=5)
            self.rank, self.world = rank, 2

        def draw(self, fn, n, *shape):
            return fn(n * 2, *shape, generator=self.rng)[self.rank * n:(self.rank + 1) * n]

    batch = FixedStream(8, 0, 1, (1, 8), seed=0).next_batch()  # one process: all 8 rows
    whole = _family(tmp_path).micro_batch({"data": batch}, StubServices(seed=5)).prior
    want = sample_prior("mixture", 8, 4, torch.Generator().manual_seed(5)).to(whole.dtype)
    torch.testing.assert_close(whole, want, rtol=0, atol=0)
    parts = []
    for rank in (0, 1):  # two ranks: 4 rows each
        svc = Rank(rank)
        half = FixedStream(4, rank, 2, (1, 8), seed=0).next_batch()
        parts.append(_family(tmp_path, svc=svc).micro_batch({"data": half}, svc).prior)
    torch.testing.assert_close(torch.cat(parts), want, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-3"])
def test_two_ranks_match_one_process(strategy, tmp_path):
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, 3)
    assert single["phases"][0] == ["loss/D", "loss/G", "loss/recon"]
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    pack_demo_digits(out)
    return out


def _real(tmp_path, digits, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, FAMILY) + [
        f"data.shards={digits / 'train'}", f"eval.real={digits / 'holdout'}",
        "data.num_workers=0", "data.shuffle_buffer=100", "data.xflip=false", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, digits):
    assert_resume_is_exact(_real(tmp_path, digits, "train.total_kimg=0.048"), parts=(3, 3))


@pytest.mark.slow
def test_trains_on_the_built_in_digits_then_decodes_and_reconstructs(tmp_path, digits):
    over = _real(tmp_path, digits, "model.hidden=128", "model.d_hidden=64", "model.code_dim=8",
                 "model.prior=gaussian", "train.total_kimg=6", "train.batch_size=64",
                 "optim.g_lr=0.001", "optim.d_lr=0.001", "optim.beta1=0.5",
                 "checkpoint.every_kimg=1000")
    trainer, before, after = train_and_evaluate(over)
    assert after["recon_mse"] < 0.5 * before["recon_mse"], (before, after)
    run = trainer.run_dir
    assert main(["generate", str(run), "--num", "16", "--out", str(tmp_path / "g.png")]) == 0
    folder, out = tmp_path / "holdout", tmp_path / "reconstructed"
    shards_to_folder(digits / "holdout", folder, 8, 1)
    assert main(["generate", str(run), "--input", str(folder), "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 450
    assert_bad_inputs_are_named(run, tmp_path, side=8, channels=1)
