"""Resolution/fade schedule and EMA decay against their formulas."""

from __future__ import annotations

import pytest
import torch

from scalegan.train.ema import ema_beta, update_ema
from scalegan.train.schedule import Phase, phase_at


@pytest.mark.parametrize("seen,want", [
    (0, Phase(8, 1.0)),
    (599_999, Phase(8, 1.0)),          # stable at the start resolution for 600 kimg
    (600_000, Phase(16, 0.0)),         # fade-in of 16^2 starts
    (900_000, Phase(16, 0.5)),
    (1_200_000, Phase(16, 1.0)),       # fade done, stable 16^2
    (1_799_999, Phase(16, 1.0)),
    (1_800_000, Phase(32, 0.0)),
    (2_100_000, Phase(32, 0.5)),
    (10**9, Phase(64, 1.0)),           # the final resolution is kept
])
def test_pggan_schedule(seen, want):
    got = phase_at(seen, 8, 64, fade_kimg=600, stable_kimg=600)
    assert got.resolution == want.resolution and got.alpha == pytest.approx(want.alpha, abs=1e-9)


def test_schedule_degenerate_cases():
    assert phase_at(0, 64, 64, 600, 600) == Phase(64, 1.0)
    assert phase_at(123, 8, 64, 0, 0) == Phase(64, 1.0)
    assert phase_at(1000, 8, 64, fade_kimg=0, stable_kimg=1) == Phase(16, 1.0)


def test_ema_beta_half_life():
    # after halflife / batch steps the old average keeps exactly half its weight
    beta = ema_beta(batch_size=32, images_seen=10**7, halflife_kimg=10, rampup=0.05)
    assert beta ** (10_000 / 32) == pytest.approx(0.5, rel=1e-12)
    # ramp-up: early in the run the half-life is rampup * images seen
    early = ema_beta(batch_size=32, images_seen=3200, halflife_kimg=10, rampup=0.05)
    assert early == pytest.approx(0.5 ** (32 / 160), rel=1e-12)
    assert ema_beta(32, 0, 10, 0.05) == 0.0  # the first step copies G


def test_update_ema_is_a_lerp():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.9)
    for p_ema, p0, p in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p.detach(), rtol=1e-6, atol=1e-7)
