"""Every network as its own DeepSpeed engine at ZeRO stage 1, 2 or 3.

The DeepSpeed config is derived from scalegan's (micro-batch, gradient accumulation, stage, bf16,
no gradient clipping) with ``parallel.deepspeed`` merged over it. What a GAN needs beyond a
single-model DeepSpeed run, each item checked against plain Adam on one process
(tests/parallel/test_strategies.py):

- A network being trained runs through its engine; a frozen one through ``engine.module``
  (its ZeRO-3 hooks still gather its parameters), with ``requires_grad`` off.
- DeepSpeed counts micro-steps in ``engine.step()`` and updates the weights only at the
  accumulation boundary, so ``backward`` here is ``engine.backward`` plus ``engine.step``, and each
  phase runs exactly ``grad_accum`` micro-batches. A phase that trains several networks with one
  loss (two translators, an encoder and its decoder) calls their ``engine.module`` and runs one
  plain backward between every engine's backward prologue and epilogue (the gradient reduction):
  DeepSpeed's own ``engine.backward`` handles one engine per graph only.
- R1 / WGAN-GP: the engine's output hook would divide the input gradient by the accumulation
  steps, and at stage 3 autograd would accumulate into released parameters. The network is
  instead evaluated with ``torch.func.functional_call`` of a parameter-free (meta) copy on the
  engine's parameters, gathered for the whole block at stage 3.
- Growing networks: ZeRO keeps one flat Adam state per parameter group. With one group per
  unit (``unit_param_groups``), a unit's state is reset when it first runs, as Adam starts a
  parameter's state at its first gradient, and its moments are cleared when it stops running (a
  toRGB after its fade-out), so the zero gradients ZeRO gives it do not move it on momentum. At
  stage 3 units not running are also ``requires_grad_(False)``: ZeRO-3 would otherwise hand them
  a stale gradient.
- An averaged copy (G_ema) is a full copy of its network on every rank (ZeRO shards the
  networks' parameters, gradients and Adam state). At stage 3 each parameter of the network is
  gathered in turn to update it.
- Checkpoints: each engine's own files (``save_checkpoint``, tag ``deepspeed_<name>``), inside
  scalegan's atomic checkpoint directory beside the averaged copies in DCP; they resume at the
  world size that wrote them.
- The ZeRO internals this needs (flat fp32 partitions, their Adam state, overflow checks) are
  read only through ``ZeroAdapter``, which checks at start-up that they exist.
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
    if cfg.optim.kind != "adam":  # ZeRO partitions any torch optimizer's state alike
        derived["zero_allow_untested_optimizer"] = True
    return _deep_merge(derived, cfg.parallel.deepspeed)


class ZeroAdapter:
    """Every access to ZeRO's private attributes, checked at start-up.

    scalegan resets the Adam state of a unit's flat partition when the unit starts or stops
    running (a growing network), and asks ZeRO to skip steps with non-finite gradients. Both
    need attributes of DeepSpeed's ZeRO optimizers that are not public API; a DeepSpeed version
    without them is refused with the version this was written against.
    """

    TESTED = "0.19"
    NEEDED = {1: ("single_partition_of_fp32_groups", "optimizer", "check_grad_overflow"),
              2: ("single_partition_of_fp32_groups", "optimizer", "check_grad_overflow"),
              3: ("fp32_partitioned_groups_flat", "sub_group_to_group_id", "optimizer")}
    ENGINE_NEEDED = ("_backward_prologue", "_backward_epilogue", "_running_engine_backward")

    def __init__(self, engine, stage: int, name: str):
        import deepspeed

        self.zopt, self.stage = engine.optimizer, stage
        missing = [a for a in self.NEEDED[stage] if not hasattr(self.zopt, a)]
        missing += [f"engine.{a}" for a in self.ENGINE_NEEDED if not hasattr(engine, a)]
        if missing:
            raise RuntimeError(
                f"DeepSpeed {deepspeed.__version__}: the ZeRO stage {stage} optimizer of "
                f"network {name} has no {', '.join(missing)}; scalegan's deepspeed strategy "
                f"needs DeepSpeed {self.TESTED}.x (pip install 'deepspeed=={self.TESTED}.*')")
        # ZeRO skips a step whose gradients hold NaN or inf (agreed across ranks) only when
        # asked to outside fp16; stage 3 always does
        self.zopt.check_grad_overflow = True

    def group_states(self, index: int) -> list[dict]:
        """The inner optimizer's state of this rank's flat partition(s) of parameter group
        ``index``."""
        zopt = self.zopt
        if self.stage == 3:
            flats = [zopt.fp32_partitioned_groups_flat[sg]
                     for sg, g in zopt.sub_group_to_group_id.items() if g == index]
        else:
            flats = [zopt.single_partition_of_fp32_groups[index]]
        return [zopt.optimizer.state[f] for f in flats if f in zopt.optimizer.state]

    def clear_backward_seen(self) -> None:
        """What ``engine.forward`` does for a micro-batch, for a forward outside the engine."""
        self.zopt.clear_backward_seen_flag()

    @staticmethod
    def joint_backward(engines: list, loss: torch.Tensor) -> None:
        """One backward of ``loss`` into several engines' modules: each engine's prologue, the
        plain backward (ZeRO's parameter hooks partition the gradients), each engine's
        epilogue (the reduction)."""
        for engine in engines:
            engine._running_engine_backward = True
            engine._backward_prologue()
        try:
            loss.backward()
            for engine in engines:
                engine._backward_epilogue()
        finally:
            for engine in engines:
                engine._running_engine_backward = False


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"
    checkpoint_format = "deepspeed"

    def __init__(self, cfg: Config, env: DistEnv):
        if env.device.type == "cpu":  # otherwise DeepSpeed probes for accelerators and warns
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        # DeepSpeed's communication backend builds its shared-memory all-reduce with ninja when
        # it starts (~26 s on 2 cores, then again whenever the venv's path changes), but only
        # its inference_all_reduce uses it: training collectives go through torch.distributed.
        # Marked unavailable, the backend skips the build.
        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
        # DeepSpeed's ZeRO still calls these collectives by their deprecated names
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r".*(all_gather_into_tensor|reduce_scatter_tensor)")
        self.cfg, self.env = cfg, env
        self.stage = cfg.parallel.zero_stage
        self.name = f"deepspeed (ZeRO stage {self.stage})"
        self.current: dict[str, set[str] | None] = {}

    def wrap(self, nets: dict[str, nn.Module]) -> None:
        super().wrap(nets)
        # parameter-free copies of the structures, called on the engines' parameters (R1, GP)
        self.meta = {name: copy.deepcopy(net).to("meta") for name, net in nets.items()}

    def setup_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        import deepspeed

        self.units = {n: [g.get("unit", "") for g in opt.param_groups]
                      for n, opt in optimizers.items()}
        self.group_params = {n: [list(g["params"]) for g in opt.param_groups]
                             for n, opt in optimizers.items()}
        ds_config = deepspeed_config(self.cfg, self.env.world_size)
        self.engines, self.zero = {}, {}
        for name, opt in optimizers.items():
            engine, *_ = deepspeed.initialize(model=self.models[name], optimizer=opt,
                                              config=copy.deepcopy(ds_config),
                                              dist_init_required=False)
            self.zero[name] = ZeroAdapter(engine, self.stage, name)
            # DeepSpeed's own loader would torch.load its files with weights_only=False
            engine.checkpoint_engine.load = safe_torch_load
            self.engines[name] = engine
            self.current[name] = None
        self.optimizers = dict(optimizers)

    # ------------------------------------------------------------------ units of growing networks

    def begin_step(self, previous: dict[str, set[str] | None],
                   current: dict[str, set[str] | None]) -> None:
        for name, units in self.units.items():
            now, before = current[name], previous[name] or set()
            self.current[name] = now
            if now is None:
                continue  # a network without units: every parameter runs every step
            for i, unit in enumerate(units):
                if not unit:
                    continue
                started = unit in now and unit not in before
                stopped = unit not in now and unit in before
                for state in self.zero[name].group_states(i) if started or stopped else ():
                    for key, value in state.items():  # moments (Adam's, RMSProp's); the step
                        if torch.is_tensor(value) and (key != "step" or started):
                            value.zero_()

    def _freeze_idle_units(self, name: str) -> None:
        now = self.current[name]
        if self.stage != 3 or now is None:
            return
        for unit, params in zip(self.units[name], self.group_params[name], strict=True):
            if unit and unit not in now:
                for p in params:
                    p.requires_grad_(False)

    # ------------------------------------------------------------------------------ the phases

    def trainable(self, name: str, together: tuple[str, ...] = ()) -> nn.Module:
        self._freeze_idle_units(name)
        if len(together) > 1:  # a joint phase: the plain module, see ``backward``
            self.zero[name].clear_backward_seen()
            return self.engines[name].module
        return self.engines[name]

    def zero_grad(self, name: str) -> None:
        """The engines clear gradients themselves after each optimizer step."""

    def backward(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        # the trainer already divided by grad_accum
        if len(names) > 1:
            ZeroAdapter.joint_backward([self.engines[n] for n in names], loss)
        else:
            self.engines[names[0]].backward(loss, scale_wrt_gas=False)
        for name in names:
            engine = self.engines[name]
            if not engine.is_gradient_accumulation_boundary():
                engine.step()  # counts the micro-step; the boundary's step is ``step``'s

    def step(self, names: tuple[str, ...], finite: bool = True) -> bool:
        """The boundary's ``engine.step()`` of each network: ZeRO applies it unless a gradient
        is NaN or inf (checked over every rank's partition); returns whether all were."""
        applied = True
        for name in names:
            engine = self.engines[name]
            if not engine.is_gradient_accumulation_boundary():
                raise RuntimeError(f"DeepSpeed engine of {name} is at micro-step "
                                   f"{engine.micro_steps}, not at an accumulation boundary")
            engine.step()
            applied = engine.was_step_applied() and applied
        return applied

    @contextlib.contextmanager
    def input_gradient(self, name: str):
        import deepspeed

        self._freeze_idle_units(name)
        self.zero[name].clear_backward_seen()
        module = self.engines[name].module
        tensors = dict(module.named_parameters()) | dict(module.named_buffers())
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                               enabled=self.stage == 3):
            yield lambda *args, **kwargs: torch.func.functional_call(self.meta[name], tensors,
                                                                     args, kwargs)

    @torch.no_grad()
    def update_ema(self, name: str, ema: nn.Module, beta: float) -> None:
        import deepspeed

        net = self.models[name]
        if self.stage != 3:
            update_ema(ema, net, beta)
            return
        for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
        for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)

    # ------------------------------------------------------------------------------ checkpoints

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                               enabled=self.stage == 3):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def training_state(self) -> dict:
        return {}  # the networks and their optimizers are in the engines' own files

    def save_extra(self, directory: Path) -> None:
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(directory), tag=f"deepspeed_{name}", save_latest=False)

    def load_extra(self, directory: Path) -> None:
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(directory), tag=f"deepspeed_{name}",
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint of {name} "
                                        f"(deepspeed_{name}/)")
