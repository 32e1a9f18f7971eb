"""Spreading G and D over ranks, applied from outside the models.

``build_strategy(cfg.parallel, env)`` returns an object the trainer asks for the module to run in
each phase and through which it steps the optimizers, so the training loop is the same for one
process and for every strategy.
"""

from __future__ import annotations

import contextlib

from torch import nn

from scalegan.config import ParallelConfig
from scalegan.parallel.env import DistEnv


class Strategy:
    """A single process: the plain modules, plain backward and optimizer steps."""

    name = "single"

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        """Prepare G and D (in place where the strategy allows); call before making optimizers."""
        self.G_train, self.D_train = G, D

    def wrap_ema(self, G_ema: nn.Module) -> None:
        """Lay G_ema out like G (sharded strategies keep it as shards beside G's)."""

    def trainable(self, which: str) -> nn.Module:
        """The module to call in the phase that trains ``which`` ('G' or 'D')."""
        return self.G_train if which == "G" else self.D_train

    def input_gradient(self) -> contextlib.AbstractContextManager:
        """Wraps D's forward and ``autograd.grad(..., create_graph=True)`` of R1 / WGAN-GP; the
        penalty's backward comes after the block."""
        return contextlib.nullcontext()


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


class FSDPStrategy(Strategy):
    """G, D and G_ema sharded with FSDP2 (``fully_shard``), one unit per resolution.

    Order: each entry of the models' ModuleDicts (a resolution's block, its toRGB/fromRGB) is
    wrapped first, then the root, so a block's parameters are gathered only while it runs and a
    block not faded in yet is never gathered at all. G_ema is sharded the same way, so its update
    is a local lerp of matching shards.
    """

    name = "fsdp"

    def __init__(self, cfg: ParallelConfig, env: DistEnv):
        import torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # "fp32" keeps the parameters' own dtype (no cast at all); "bf16" computes in bfloat16
        dtypes = {"fp32": None, "bf16": torch.bfloat16}
        self.mesh = init_device_mesh(env.device.type, (env.world_size,))
        self.mp_policy = MixedPrecisionPolicy(param_dtype=dtypes[cfg.param_dtype],
                                              reduce_dtype=dtypes[cfg.reduce_dtype])
        self.reshard_after_forward = cfg.reshard_after_forward

    def _shard(self, model: nn.Module, mp_policy=None) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw = dict(mesh=self.mesh, mp_policy=mp_policy or MixedPrecisionPolicy(),
                  reshard_after_forward=self.reshard_after_forward)
        for child in model.children():
            if isinstance(child, nn.ModuleDict):
                for unit in child.values():
                    fully_shard(unit, **kw)
        fully_shard(model, **kw)

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        self._shard(G, self.mp_policy)
        self._shard(D, self.mp_policy)
        self.G_train, self.D_train = G, D

    def wrap_ema(self, G_ema: nn.Module) -> None:
        self._shard(G_ema)  # full precision: it is only ever averaged into and sampled from

    @contextlib.contextmanager
    def input_gradient(self):
        # autograd.grad w.r.t. D's input runs FSDP's post-backward, which would free the gathered
        # weights that the double-backward graph of a plain nn.Conv2d still points to. Keep them
        # gathered until the penalty's own backward.
        self.D_train.set_reshard_after_backward(False)
        try:
            yield
        finally:
            self.D_train.set_reshard_after_backward(True)


def build_strategy(cfg: ParallelConfig, env: DistEnv) -> Strategy:
    if not env.distributed:
        return Strategy()
    if cfg.strategy == "ddp":
        return DDPStrategy(env)
    return FSDPStrategy(cfg, env)
