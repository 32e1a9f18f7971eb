"""Spreading G and D over ranks, applied from outside the models.

``build_strategy(cfg.parallel, env)`` returns an object the trainer asks for the module to run in
each phase and through which it steps the optimizers, so the training loop is the same for one
process and for every strategy.
"""

from __future__ import annotations

from torch import nn

from scalegan.config import ParallelConfig
from scalegan.parallel.env import DistEnv


class Strategy:
    """A single process: the plain modules, plain backward and optimizer steps."""

    name = "single"

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        """Prepare G and D (in place where the strategy allows); call before making optimizers."""
        self.G_train, self.D_train = G, D

    def trainable(self, which: str) -> nn.Module:
        """The module to call in the phase that trains ``which`` ('G' or 'D')."""
        return self.G_train if which == "G" else self.D_train


class DDPStrategy(Strategy):
    """Replicated G and D; gradients averaged by DistributedDataParallel.

    Each wrapper is called only in the phase that trains its model: the frozen model of a phase is
    called unwrapped, so DDP never sees a forward whose parameters do not require grad. Blocks of
    resolutions not reached yet get no gradient, hence ``find_unused_parameters``.
    """

    name = "ddp"

    def __init__(self, env: DistEnv):
        self.env = env

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        self.G_train = DDP(G, device_ids=ids, find_unused_parameters=True)
        self.D_train = DDP(D, device_ids=ids, find_unused_parameters=True)


def build_strategy(cfg: ParallelConfig, env: DistEnv) -> Strategy:
    if not env.distributed:
        return Strategy()
    if cfg.strategy == "ddp":
        return DDPStrategy(env)
    raise NotImplementedError(f"parallel.strategy={cfg.strategy!r} is not available yet; use ddp")
