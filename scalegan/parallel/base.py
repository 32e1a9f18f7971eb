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

    def step(self, which: str, finite: bool = True) -> bool:
        """The optimizer step of ``which`` after all micro-batches' backward, unless its loss was
        not finite (``finite`` False on any rank) or a gradient holds NaN or inf: then the
        gradients are dropped and nothing moves (not the weights, not Adam's moments or step).
        Returns whether the step was applied; the same on every rank."""
        applied = not any_rank(not (finite and self.grads_finite(which)))
        if applied:
            self.optimizers[which].step()
        else:
            self.optimizers[which].zero_grad(set_to_none=True)
        return applied

    def grads_finite(self, which: str) -> bool:
        """Whether every gradient element of ``which`` this rank holds is finite (its shards
        under FSDP): one fused max-abs reduction per dtype, NaN propagating."""
        grads = [p.grad for p in self.models[which].parameters() if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        grads = [g for g in grads if g.numel()]
        if not grads:
            return True
        norms = torch._foreach_norm(grads, float("inf"))
        return bool(torch.stack([n.float() for n in norms]).isfinite().all())

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
