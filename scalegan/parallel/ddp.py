"""DistributedDataParallel: G and D replicated on every rank."""

from __future__ import annotations

from torch import nn

from scalegan.parallel.base import Strategy
from scalegan.parallel.env import DistEnv


class DDPStrategy(Strategy):
    """Replicated networks; gradients averaged by DistributedDataParallel.

    Each wrapper is called only in a phase that trains its network: a frozen network is called
    unwrapped, so DDP never sees a forward whose parameters do not require grad. Blocks of
    resolutions not reached yet get no gradient, hence ``find_unused_parameters``.
    """

    name = "ddp"

    def __init__(self, env: DistEnv):
        self.env = env

    def wrap(self, nets: dict[str, nn.Module]) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        super().wrap(nets)
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        self.train_modules = {name: DDP(net, device_ids=ids, find_unused_parameters=True)
                              for name, net in nets.items()}
