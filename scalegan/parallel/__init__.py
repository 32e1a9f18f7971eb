"""Spreading G and D over ranks, applied from outside the models.

``build_strategy(cfg, env)`` returns an object the trainer asks for the module to run in each
phase and through which it runs backward, steps the optimizers, updates G_ema and checkpoints the
training state, so the training loop is the same for one process and for every strategy:
``base.Strategy`` (one process), ``ddp``, ``fsdp`` and ``deepspeed``.
"""

from __future__ import annotations

from scalegan.config import Config
from scalegan.parallel.base import Strategy, unit_param_groups
from scalegan.parallel.env import DistEnv

__all__ = ["Strategy", "build_strategy", "unit_param_groups"]


def build_strategy(cfg: Config, env: DistEnv) -> Strategy:
    """The strategy of ``cfg.parallel``; the plain single-process one when not distributed."""
    if not env.distributed:
        return Strategy()
    if cfg.parallel.strategy == "ddp":
        from scalegan.parallel.ddp import DDPStrategy

        return DDPStrategy(env)
    if cfg.parallel.strategy == "fsdp":
        from scalegan.parallel.fsdp import FSDPStrategy

        return FSDPStrategy(cfg.parallel, env)
    from scalegan.parallel.deepspeed import DeepSpeedStrategy  # imports deepspeed: only when asked

    return DeepSpeedStrategy(cfg, env)
