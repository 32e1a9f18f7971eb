"""DistributedDataParallel: G and D replicated on every rank."""

from __future__ import annotations

from torch import nn

from scalegan.parallel.base import Strategy
from scalegan.parallel.env import DistEnv


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

        super().wrap(G, D)
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        self.G_train = DDP(G, device_ids=ids, find_unused_parameters=True)
        self.D_train = DDP(D, device_ids=ids, find_unused_parameters=True)
