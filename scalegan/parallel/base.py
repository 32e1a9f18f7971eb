"""The strategy interface and the single-process strategy; parameter groups per unit."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalegan.train.checkpoint import ModelState, OptimizerState, any_rank
from scalegan.train.ema import update_ema


class Strategy:
    """A single process: the plain modules, plain backward and optimizer steps.

    Every verb names its networks by the family's names ("G", "D", "G_AB", "encoder", ...)."""

    name = "single"
    checkpoint_format = "dcp"
    """How the networks and their optimizers are stored: "dcp" (torch.distributed.checkpoint) or
    "deepspeed" (the engines' own files); the averaged copies and the counters are in DCP / JSON
    always."""

    def wrap(self, nets: dict[str, nn.Module]) -> None:
        """Prepare the networks (in place where the strategy allows); call before making
        optimizers."""
        self.models = dict(nets)
        self.train_modules = dict(nets)

    def wrap_ema(self, ema: dict[str, nn.Module]) -> None:
        """Lay each averaged copy out like its network (sharded strategies keep it as shards
        beside the network's)."""

    def setup_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Hand over one optimizer per network, built on the wrapped networks' parameters."""
        self.optimizers = dict(optimizers)

    def begin_step(self, units_seen: dict[str, set[str] | None],
                   units: dict[str, set[str] | None]) -> None:
        """Called before each step with, per network, the submodules this step runs (``units``)
        and those any earlier step ran (``units_seen``); see ``unit_param_groups``."""

    def trainable(self, name: str, together: tuple[str, ...] = ()) -> nn.Module:
        """The module to call in a phase that trains network ``name`` (``together``: every
        network the phase trains)."""
        return self.train_modules[name]

    def zero_grad(self, name: str) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        """Backward of one micro-batch's ``loss`` (already divided by the micro-batch count)
        into the networks ``names`` a phase trains."""
        loss.backward()

    def step(self, names: tuple[str, ...], finite: bool = True) -> bool:
        """The optimizer steps of ``names`` after all micro-batches' backward, unless the loss
        was not finite (``finite`` False on any rank) or a gradient holds NaN or inf: then the
        gradients are dropped and nothing moves (not the weights, not Adam's moments or step).
        Returns whether the steps were applied; the same on every rank."""
        applied = not any_rank(not (finite and all(self.grads_finite(n) for n in names)))
        for name in names:
            if applied:
                self.optimizers[name].step()
            else:
                self.optimizers[name].zero_grad(set_to_none=True)
        return applied

    def grads_finite(self, name: str) -> bool:
        """Whether every gradient element of ``name`` this rank holds is finite (its shards
        under FSDP): one fused max-abs reduction per dtype, NaN propagating."""
        grads = [p.grad for p in self.models[name].parameters() if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        grads = [g for g in grads if g.numel()]
        if not grads:
            return True
        norms = torch._foreach_norm(grads, float("inf"))
        return bool(torch.stack([n.float() for n in norms]).isfinite().all())

    @contextlib.contextmanager
    def input_gradient(self, name: str):
        """Yields the module to call when a loss needs the gradient of network ``name`` w.r.t.
        its input (R1, WGAN-GP). The block holds the forward, ``autograd.grad(...,
        create_graph=True)`` and the micro-batch's ``backward``."""
        yield self.trainable(name)

    def update_ema(self, name: str, ema: nn.Module, beta: float) -> None:
        update_ema(ema, self.models[name], beta)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s state as full (unsharded) tensors on every rank."""
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                for k, v in module.state_dict().items()}

    def training_state(self) -> dict[str, Any]:
        """DCP entries of every network (its name) and its optimizer (``opt_<name>``)."""
        out: dict[str, Any] = {}
        for name, model in self.models.items():
            out[name] = ModelState(model)
            out[f"opt_{name}"] = OptimizerState(model, self.optimizers[name])
        return out

    def save_extra(self, directory: Path) -> None:
        """Write state that is not in ``training_state`` into the checkpoint ``directory``."""

    def load_extra(self, directory: Path) -> None:
        """Read what ``save_extra`` wrote."""


def named_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units of a network: its own ``named_units()`` when it has them (StyleGAN2's G: the
    mapping network and each synthesis block), else each entry of the ModuleDicts among its
    children (a resolution's block, its toRGB/fromRGB), named ``"blocks.8"`` etc."""
    if hasattr(model, "named_units"):
        return list(model.named_units())
    return [(f"{name}.{key}", unit) for name, child in model.named_children()
            if isinstance(child, nn.ModuleDict) for key, unit in child.items()]


def unit_param_groups(model: nn.Module) -> list[dict]:
    """Adam parameter groups, one per unit (:func:`named_units`), named ``"blocks.8"`` etc.
    under the key ``unit``, then one group of
    the remaining parameters (``unit`` ``""``).

    Plain Adam treats every parameter alike whatever the grouping; a strategy that keeps one flat
    state per group (DeepSpeed ZeRO) uses the groups to start a unit's Adam state afresh when it
    first runs, as Adam does for a parameter's first gradient.
    """
    groups, grouped = [], set()
    for name, unit in named_units(model):
        params = [p for p in unit.parameters() if id(p) not in grouped]
        grouped.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "unit": name})
    rest = [p for p in model.parameters() if id(p) not in grouped]
    if rest:
        groups.append({"params": rest, "unit": ""})
    return groups
