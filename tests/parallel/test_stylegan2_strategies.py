"""StyleGAN2 under each parallel strategy against one process on the same global batches.

Four steps with R1 and the path-length penalty every second step (steps 0 and 2), so each lazy
phase runs twice: per-sample latents, mixing cutoffs, noise and PL directions are drawn for the
global batch, ``w_avg`` and ``pl_mean`` follow the global batch, so 2 gloo ranks must end where
one process ends: G (w_avg included), D, G_ema and the family's ``pl_mean``. Tolerances are
those of tests/parallel/test_strategies.py (float64: 1e-9; DeepSpeed's fp32 master weights:
1e-5, its ZeRO-3 runs float32 at a lower learning rate as tests/families/common.py explains),
plus, for DeepSpeed, a relative 1e-6: the mapping network stores its weights at 1 / lr_mul =
100 times their effective scale (values up to ~300), where one fp32 rounding is already ~2e-5
(measured: 2.2e-5 absolute, 1.4e-7 relative after 4 ZeRO-2 steps).
"""

from __future__ import annotations

import pytest
import torch

from scalegan.parallel.env import DistEnv

from families.common import ATOL, assert_matches, train_fixed
from parallel.spawn import run_ranks

FAMILY = ["model.arch=stylegan2", "model.resolution=32", "model.img_channels=1",
          "model.latent_dim=8", "model.w_dim=8", "model.channel_base=256",
          "model.channel_max=16", "model.mapping_layers=2", "model.mbstd_group_size=4",
          "loss.r1_gamma=1.0", "loss.r1_interval=2", "model.pl_interval=2",
          "model.pl_decay=0.3", "optim.g_lr=0.002", "optim.d_lr=0.002", "optim.beta1=0",
          "optim.beta2=0.99"]
SHAPES = {"data": (1, 32)}
STEPS = 4
LAZY = ["loss/D", "loss/G", "loss/pl", "loss/r1"]
PLAIN = ["loss/D", "loss/G"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,grad_accum", [
    ("ddp", 1), ("fsdp", 2), ("deepspeed-2", 1), ("deepspeed-3", 2)])
def test_two_ranks_match_one_process(strategy, grad_accum, tmp_path):
    # per-rank micro-batch 4 (one minibatch-stddev group); PL on 2 samples per rank
    extra = [f"train.grad_accum={grad_accum}", f"train.batch_size={8 * grad_accum}"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, STEPS)
    assert single["phases"] == [LAZY, PLAIN, LAZY, PLAIN]
    assert single["family.pl_mean"].item() > 0  # two PL updates from 0
    assert single["G.mapping.w_avg"].abs().min() > 0 and "G_ema.mapping.w_avg" in single
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, STEPS,
                      tmp_path=tmp_path)
    if not strategy.startswith("deepspeed"):
        assert_matches(single, ranks, strategy)
        return
    for key, want in single.items():
        for r, got in enumerate(ranks):
            if key == "phases":
                assert got[key] == want
                continue
            torch.testing.assert_close(got[key], want, rtol=1e-6, atol=ATOL["deepspeed"],
                                       msg=lambda m, key=key, r=r: f"rank {r} {key}: {m}")
