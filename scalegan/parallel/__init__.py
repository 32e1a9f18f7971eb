"""Spreading G and D over ranks, applied from outside the models.

``build_strategy(cfg.parallel, env)`` returns an object the trainer asks for the module to run in
each phase and through which it runs backward, steps the optimizers, updates G_ema and checkpoints
the training state, so the training loop is the same for one process and for every strategy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalegan.config import Config, ParallelConfig
from scalegan.parallel.env import DistEnv
from scalegan.train.checkpoint import ModelState, OptimizerState
from scalegan.train.ema import update_ema


class Strategy:
    """A single process: the plain modules, plain backward and optimizer steps."""

    name = "single"
    checkpoint_format = "dcp"
    """How G, D and the optimizers are stored: "dcp" (torch.distributed.checkpoint) or
    "deepspeed" (the engines' own files); G_ema and the counters are in DCP / JSON always."""

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        """Prepare G and D (in place where the strategy allows); call before making optimizers."""
        self.G_train, self.D_train = G, D
        self.models = {"G": G, "D": D}

    def wrap_ema(self, G_ema: nn.Module) -> None:
        """Lay G_ema out like G (sharded strategies keep it as shards beside G's)."""

    def setup_optimizers(self, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer) -> None:
        """Hand over the optimizers built on the wrapped models' parameters."""
        self.optimizers = {"G": opt_G, "D": opt_D}

    def begin_step(self, units_seen: dict[str, set[str]], units: dict[str, set[str]]) -> None:
        """Called before each step with, per model, the submodules this step runs (``units``)
        and those any earlier step ran (``units_seen``); see ``unit_param_groups``."""

    def trainable(self, which: str) -> nn.Module:
        """The module to call in the phase that trains ``which`` ('G' or 'D')."""
        return self.G_train if which == "G" else self.D_train

    def zero_grad(self, which: str) -> None:
        self.optimizers[which].zero_grad(set_to_none=True)

    def backward(self, which: str, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's ``loss`` (already divided by the micro-batch count)."""
        loss.backward()

    def step(self, which: str) -> None:
        """The optimizer step of ``which`` after all micro-batches' backward."""
        self.optimizers[which].step()

    @contextlib.contextmanager
    def input_gradient(self):
        """Yields the D to call when a loss needs the gradient of D w.r.t. its input (R1,
        WGAN-GP). The block holds D's forward, ``autograd.grad(..., create_graph=True)`` and the
        micro-batch's ``backward``."""
        yield self.trainable("D")

    def update_ema(self, G_ema: nn.Module, beta: float) -> None:
        update_ema(G_ema, self.models["G"], beta)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s state as full (unsharded) tensors on every rank: G, D or G_ema."""
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                for k, v in module.state_dict().items()}

    def training_state(self) -> dict[str, Any]:
        """DCP entries for G, D and their optimizers (constant keys for every strategy)."""
        G, D = self.models["G"], self.models["D"]
        return {"G": ModelState(G), "D": ModelState(D),
                "opt_G": OptimizerState(G, self.optimizers["G"]),
                "opt_D": OptimizerState(D, self.optimizers["D"])}

    def save_extra(self, directory: Path) -> None:
        """Write state that is not in ``training_state`` into the checkpoint ``directory``."""

    def load_extra(self, directory: Path) -> None:
        """Read what ``save_extra`` wrote."""


def unit_param_groups(model: nn.Module) -> list[dict]:
    """Adam parameter groups, one per unit: each entry of the model's ModuleDicts (a resolution's
    block, its toRGB/fromRGB), named ``"blocks.8"`` etc. under the key ``unit``, then one group of
    the remaining parameters (``unit`` ``""``).

    Plain Adam treats every parameter alike whatever the grouping; a strategy that keeps one flat
    state per group (DeepSpeed ZeRO) uses the groups to start a unit's Adam state afresh when it
    first runs, as Adam does for a parameter's first gradient.
    """
    groups, grouped = [], set()
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleDict):
            for key, unit in child.items():
                params = [p for p in unit.parameters() if id(p) not in grouped]
                grouped.update(id(p) for p in params)
                if params:
                    groups.append({"params": params, "unit": f"{name}.{key}"})
    rest = [p for p in model.parameters() if id(p) not in grouped]
    if rest:
        groups.append({"params": rest, "unit": ""})
    return groups


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


class FSDPStrategy(Strategy):
    """G, D and G_ema sharded with FSDP2 (``fully_shard``), one unit per resolution.

    Order: each entry of the models' ModuleDicts (a resolution's block, its toRGB/fromRGB) is
    wrapped first, then the root, so a block's parameters are gathered only while it runs and a
    block not faded in yet is never gathered at all. G_ema is sharded the same way, so its update
    is a local lerp of matching shards.
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
        for child in model.children():
            if isinstance(child, nn.ModuleDict):
                for unit in child.values():
                    fully_shard(unit, **kw)
        fully_shard(model, **kw)
        # FSDP settles each unit's mixed-precision dtypes at its first forward, from the
        # parameters that require grad at that moment. G's first forward is in the D phase, with
        # G frozen: its gradients would later be reduced in param_dtype and not cast back. Settle
        # them now, while every parameter is trainable.
        model._get_fsdp_state()._lazy_init()

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        self._shard(G, self.mp_policy)
        self._shard(D, self.mp_policy)
        super().wrap(G, D)

    def wrap_ema(self, G_ema: nn.Module) -> None:
        self._shard(G_ema)  # full precision: it is only ever averaged into and sampled from

    @contextlib.contextmanager
    def input_gradient(self):
        # autograd.grad w.r.t. D's input runs FSDP's post-backward, which would free the gathered
        # weights that the double-backward graph of a plain nn.Conv2d still points to. Keep them
        # gathered through the penalty's own backward, then free them.
        from torch.distributed.fsdp import FSDPModule

        self.D_train.set_reshard_after_backward(False)
        try:
            yield self.D_train
        finally:
            self.D_train.set_reshard_after_backward(True)
            for module in self.D_train.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()


def build_strategy(cfg: Config, env: DistEnv) -> Strategy:
    """The strategy of ``cfg.parallel``; the plain single-process one when not distributed."""
    if not env.distributed:
        return Strategy()
    if cfg.parallel.strategy == "ddp":
        return DDPStrategy(env)
    if cfg.parallel.strategy == "fsdp":
        return FSDPStrategy(cfg.parallel, env)
    from scalegan.parallel.deepspeed import DeepSpeedStrategy

    return DeepSpeedStrategy(cfg, env)
