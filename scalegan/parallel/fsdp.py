"""FSDP2: every network and its averaged copy sharded per unit."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from scalegan.config import ParallelConfig
from scalegan.parallel.base import Strategy, named_units
from scalegan.parallel.env import DistEnv


class FSDPStrategy(Strategy):
    """Every network and its averaged copy sharded with FSDP2 (``fully_shard``), one unit per
    unit of the network (``named_units``: the entries of its ModuleDicts, or its own list).

    Order: each entry of the networks' ModuleDicts (a resolution's block, its toRGB/fromRGB) is
    wrapped first, then the root, so a block's parameters are gathered only while it runs and a
    block not faded in yet is never gathered at all. An averaged copy is sharded the same way, so
    its update is a local lerp of matching shards.
    """

    name = "fsdp"

    def __init__(self, cfg: ParallelConfig, env: DistEnv):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # param_dtype "fp32" keeps the parameters' own dtype (no cast at all). Under bf16 compute,
        # reduce_dtype must be named explicitly: FSDP's default (None) reduces in param_dtype.
        param_dtype = {"fp32": None, "bf16": torch.bfloat16}[cfg.param_dtype]
        reduce_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.reduce_dtype]
        self.mesh = init_device_mesh(env.device.type, (env.world_size,))
        self.mp_policy = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=reduce_dtype if param_dtype else None)
        self.reshard_after_forward = cfg.reshard_after_forward

    def _shard(self, model: nn.Module, mp_policy=None) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw = dict(mesh=self.mesh, mp_policy=mp_policy or MixedPrecisionPolicy(),
                  reshard_after_forward=self.reshard_after_forward)
        for _, unit in named_units(model):
            fully_shard(unit, **kw)
        fully_shard(model, **kw)
        # FSDP settles each unit's mixed-precision dtypes at its first forward, from the
        # parameters that require grad at that moment. A network's first forward may be frozen
        # (G in the D phase): its gradients would later be reduced in param_dtype and not cast
        # back. Settle them now, while every parameter is trainable.
        model._get_fsdp_state()._lazy_init()

    def wrap(self, nets: dict[str, nn.Module]) -> None:
        for net in nets.values():
            self._shard(net, self.mp_policy)
        super().wrap(nets)

    def wrap_ema(self, ema: dict[str, nn.Module]) -> None:
        for net in ema.values():
            self._shard(net)  # full precision: it is only ever averaged into and sampled from

    @contextlib.contextmanager
    def input_gradient(self, name: str):
        # autograd.grad w.r.t. the network's input runs FSDP's post-backward, which would free the
        # weights that the double-backward graph of a plain nn.Conv2d still points to. Keep them
        # gathered through the penalty's own backward, then free them.
        from torch.distributed.fsdp import FSDPModule

        net = self.train_modules[name]
        net.set_reshard_after_backward(False)
        try:
            yield net
        finally:
            net.set_reshard_after_backward(True)
            for module in net.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
