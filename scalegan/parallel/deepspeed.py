"""G and D as two DeepSpeed engines at ZeRO stage 1, 2 or 3.

The DeepSpeed config is derived from scalegan's (micro-batch, gradient accumulation, stage, bf16,
no gradient clipping) with ``parallel.deepspeed`` merged over it. What a GAN needs beyond a
single-model DeepSpeed run, each item checked against plain Adam on one process
(tests/parallel/test_strategies.py):

- The network being trained runs through its engine; the frozen one through ``engine.module``
  (its ZeRO-3 hooks still gather its parameters), with ``requires_grad`` off.
- DeepSpeed counts micro-steps in ``engine.step()`` and updates the weights only at the
  accumulation boundary, so ``backward`` here is ``engine.backward`` plus ``engine.step``, and each
  phase (D, R1, G) runs exactly ``grad_accum`` micro-batches.
- R1 / WGAN-GP: the engine's output hook would divide the input gradient by the accumulation
  steps, and at stage 3 autograd would accumulate into released parameters. D is instead
  evaluated with ``torch.func.functional_call`` of a parameter-free (meta) copy on the engine's
  parameters, gathered for the whole block at stage 3.
- Progressive growing: ZeRO keeps one flat Adam state per parameter group. With one group per
  unit (``unit_param_groups``), a unit's state is reset when it first runs, as Adam starts a
  parameter's state at its first gradient, and its moments are cleared when it stops running (a
  toRGB after its fade-out), so the zero gradients ZeRO gives it do not move it on momentum. At
  stage 3 units not running are also ``requires_grad_(False)``: ZeRO-3 would otherwise hand them
  a stale gradient.
- G_ema is a full copy of G on every rank (one copy of G's weights; ZeRO shards G's and D's
  parameters, gradients and Adam state). At stage 3 each parameter of G is gathered in turn to
  update it.
- Checkpoints: each engine's own files (``save_checkpoint``), inside scalegan's atomic checkpoint
  directory beside G_ema in DCP; they resume at the world size that wrote them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from scalegan.config import Config, _deep_merge
from scalegan.parallel.base import Strategy
from scalegan.parallel.env import DistEnv
from scalegan.train.ema import update_ema
from scalegan.train.safe_load import safe_torch_load


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed JSON of one engine for ``cfg`` at ``world_size`` ranks."""
    tc = cfg.train
    derived = {
        "train_batch_size": tc.batch_size,
        "train_micro_batch_size_per_gpu": tc.batch_size // (tc.grad_accum * world_size),
        "gradient_accumulation_steps": tc.grad_accum,
        "gradient_clipping": 0.0,  # DeepSpeed's default is 1.0; scalegan clips nothing
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": tc.precision == "bf16"},
        "steps_per_print": 2 ** 31 - 1,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(derived, cfg.parallel.deepspeed)


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"
    checkpoint_format = "deepspeed"

    def __init__(self, cfg: Config, env: DistEnv):
        if env.device.type == "cpu":  # otherwise DeepSpeed probes for accelerators and warns
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        # DeepSpeed's ZeRO still calls these collectives by their deprecated names
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")
        self.cfg, self.env = cfg, env
        self.stage = cfg.parallel.zero_stage
        self.name = f"deepspeed (ZeRO stage {self.stage})"
        self.current: dict[str, set[str] | None] = {"G": None, "D": None}

    def wrap(self, G: nn.Module, D: nn.Module) -> None:
        super().wrap(G, D)
        # a parameter-free copy of D's structure, called on the engine's parameters (R1, GP)
        self.D_meta = copy.deepcopy(D).to("meta")

    def setup_optimizers(self, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer) -> None:
        import deepspeed

        self.units = {w: [g.get("unit", "") for g in opt.param_groups]
                      for w, opt in (("G", opt_G), ("D", opt_D))}
        self.group_params = {w: [list(g["params"]) for g in opt.param_groups]
                             for w, opt in (("G", opt_G), ("D", opt_D))}
        ds_config = deepspeed_config(self.cfg, self.env.world_size)
        self.engines = {}
        for which, opt in (("G", opt_G), ("D", opt_D)):
            engine, *_ = deepspeed.initialize(model=self.models[which], optimizer=opt,
                                              config=copy.deepcopy(ds_config),
                                              dist_init_required=False)
            # ZeRO skips a step whose gradients hold NaN or inf (agreed across ranks) only when
            # asked to outside fp16; stage 3 always does
            engine.optimizer.check_grad_overflow = True
            # DeepSpeed's own loader would torch.load its files with weights_only=False
            engine.checkpoint_engine.load = safe_torch_load
            self.engines[which] = engine
        self.optimizers = {"G": opt_G, "D": opt_D}

    # --------------------------------------------------------------- units of progressive growing

    def _group_states(self, which: str, index: int) -> list[dict]:
        """The inner Adam's state of this rank's flat partition(s) of parameter group ``index``."""
        zopt = self.engines[which].optimizer
        if self.stage == 3:
            flats = [zopt.fp32_partitioned_groups_flat[sg]
                     for sg, g in zopt.sub_group_to_group_id.items() if g == index]
        else:
            flats = [zopt.single_partition_of_fp32_groups[index]]
        return [zopt.optimizer.state[f] for f in flats if f in zopt.optimizer.state]

    def begin_step(self, previous: dict[str, set[str] | None],
                   current: dict[str, set[str] | None]) -> None:
        for which, units in self.units.items():
            now, before = current[which], previous[which] or set()
            self.current[which] = now
            if now is None:
                continue  # a model without units: every parameter runs every step
            for i, unit in enumerate(units):
                if not unit:
                    continue
                started = unit in now and unit not in before
                stopped = unit not in now and unit in before
                for state in self._group_states(which, i) if started or stopped else ():
                    for key in ("exp_avg", "exp_avg_sq") + (("step",) if started else ()):
                        if key in state:
                            state[key].zero_()

    def _freeze_idle_units(self, which: str) -> None:
        now = self.current[which]
        if self.stage != 3 or now is None:
            return
        for unit, params in zip(self.units[which], self.group_params[which], strict=True):
            if unit and unit not in now:
                for p in params:
                    p.requires_grad_(False)

    # ------------------------------------------------------------------------------ the phases

    def trainable(self, which: str) -> nn.Module:
        self._freeze_idle_units(which)
        return self.engines[which]

    def zero_grad(self, which: str) -> None:
        """The engines clear gradients themselves after each optimizer step."""

    def backward(self, which: str, loss: torch.Tensor) -> None:
        engine = self.engines[which]
        engine.backward(loss, scale_wrt_gas=False)  # the trainer already divided by grad_accum
        if not engine.is_gradient_accumulation_boundary():
            engine.step()  # counts the micro-step; the boundary's step is ``step``'s

    def step(self, which: str, finite: bool = True) -> bool:
        """The boundary's ``engine.step()``: ZeRO applies it unless a gradient is NaN or inf
        (checked over every rank's partition); returns whether it did."""
        engine = self.engines[which]
        if not engine.is_gradient_accumulation_boundary():
            raise RuntimeError(f"DeepSpeed engine of {which} is at micro-step "
                               f"{engine.micro_steps}, not at an accumulation boundary")
        engine.step()
        return engine.was_step_applied()

    @contextlib.contextmanager
    def input_gradient(self):
        import deepspeed

        self._freeze_idle_units("D")
        engine = self.engines["D"]
        engine.optimizer.clear_backward_seen_flag()  # what engine.forward does for a micro-batch
        module = engine.module
        tensors = dict(module.named_parameters()) | dict(module.named_buffers())
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                               enabled=self.stage == 3):
            yield lambda *args: torch.func.functional_call(self.D_meta, tensors, args)

    @torch.no_grad()
    def update_ema(self, G_ema: nn.Module, beta: float) -> None:
        import deepspeed

        G = self.models["G"]
        if self.stage != 3:
            update_ema(G_ema, G, beta)
            return
        for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
        for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b)

    # ------------------------------------------------------------------------------ checkpoints

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                               enabled=self.stage == 3):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def training_state(self) -> dict:
        return {}  # G, D and both optimizers are in the engines' own files

    def save_extra(self, directory: Path) -> None:
        for which, engine in self.engines.items():
            engine.save_checkpoint(str(directory), tag=f"deepspeed_{which}", save_latest=False)

    def load_extra(self, directory: Path) -> None:
        for which, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(directory), tag=f"deepspeed_{which}",
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint of {which} "
                                        f"(deepspeed_{which}/)")
