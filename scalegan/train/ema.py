"""Exponential moving average of the generator's weights."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, images_seen: int, halflife_kimg: float, rampup: float) -> float:
    """Per-step decay so the average halves its weight every ``halflife_kimg`` thousand images.

    With ramp-up, the half-life is at most ``rampup * images_seen`` so early, fast-changing weights
    are not averaged over a long, stale history (Karras et al. 2020, StyleGAN2-ADA).
    """
    halflife = halflife_kimg * 1000.0
    if rampup > 0:
        halflife = min(halflife, images_seen * rampup)
    if halflife <= 0:
        return 0.0
    return 0.5 ** (batch_size / halflife)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
