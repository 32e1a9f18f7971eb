"""The GAN training loop: a generic runner of the phases a family declares.

``Trainer.train()`` reads as the algorithm: for each step, pick the stage of the schedule
(resolution, fade alpha) from images seen, make the step's micro-batches, run each phase of the
family that is due (D, the lazy R1, G, ... : each trains some networks through the others, frozen),
update the averaged copies, then log, sample and checkpoint. What the networks are, what each phase
computes and how the inputs are made is the family's (``scalegan.families``); the trainer knows
networks only by name. Everything a step depends on (weights, optimizer moments, averaged copies,
the family's own state, counters, RNG, data positions) is in the checkpoint, so a resumed run
continues bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import resource
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from scalegan.config import Config, config_to_dict, model_config_class, save_config
from scalegan.data.pipeline import DataError, ImageStream, check_pack, open_shards, read_images
from scalegan.data.points import PointStream
from scalegan.families import PhaseSpec, build_family
from scalegan.families._base import full
from scalegan.metrics.evaluate import (
    RealSet,
    evaluate,
    extractor_for,
    headline,
    holdout_spec,
    lower_is_better,
)
from scalegan.monitor.loggers import JsonlLogger, Logger, MultiLogger, WandbLogger
from scalegan.monitor.progress import Progress
from scalegan.parallel import build_strategy, unit_param_groups
from scalegan.parallel.env import DistEnv
from scalegan.train.augmenter import Augmenter, decode_rng, encode_rng
from scalegan.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    ModelState,
    ResumeError,
    all_gather_json,
    any_rank,
    damaged_dirs,
    step_dirs,
    verify,
)
from scalegan.train.ema import ema_beta
from scalegan.train.preemption import Interrupted, StopSignal
from scalegan.train.rundir import RunDirectory
from scalegan.train.schedule import Phase
from scalegan.train.transfer import init_from

log = logging.getLogger(__name__)

RESUME_IGNORES = ("ops_impl", "mbstd_across_ranks", "mbdisc_across_ranks")
"""model.* keys a run may change when it resumes: they change no tensor and no result."""


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for too many steps in a row (or once,
    with ``train.on_nonfinite=stop``); says at which step and which value."""


def model_differences(saved: dict, cfg: Config) -> list[str]:
    """``model.key: checkpoint X, this run Y`` for every model setting a checkpoint (its
    config as a dict) and ``cfg`` disagree on; keys the checkpoint predates take their default."""
    section = saved.get("model") or {}
    try:
        defaults = dataclasses.asdict(model_config_class(section)())
    except ValueError:  # a family this version does not know: compare as written
        defaults = {}
    old = {**defaults, **section}
    new = config_to_dict(cfg)["model"]
    return [f"model.{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if k not in RESUME_IGNORES and old.get(k) != new.get(k)]


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's or RMSProp's per-parameter state now, exactly as its first step would
    (step 0, zero moments).

    Blocks of resolutions not reached yet get no gradient, and the optimizer leaves a parameter
    without a gradient untouched, so this changes no update. It makes the set of state keys
    constant over the run, which a checkpoint needs: without it, a resume before a block
    activates would restore state for fewer parameters than the saved run had, or invent some.
    """
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    if isinstance(optimizer, torch.optim.Adam):
        moments = ("exp_avg", "exp_avg_sq")
    elif isinstance(optimizer, torch.optim.RMSprop):
        group = optimizer.param_groups[0] if optimizer.param_groups else {}
        moments = ("square_avg",) + (("momentum_buffer",) if group.get("momentum") else ()) + (
            ("grad_avg",) if group.get("centered") else ())
    else:
        raise TypeError(f"no state layout known for {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=scalar)
                for key in moments:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)


@dataclass
class StepStats:
    values: dict[str, float] = field(default_factory=dict)
    applied: bool = True
    """Whether the phase's optimizer steps were applied (not: a loss or gradient was NaN or
    inf)."""

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.values.values())

    def add(self, key: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        if torch.is_tensor(value):
            value = value.detach().item()
        self.values[key] = self.values.get(key, 0.0) + value * weight

    def add_all(self, values: dict[str, torch.Tensor | float], weight: float = 1.0) -> None:
        for key, value in values.items():
            self.add(key, value, weight)


class FamilyState:
    """Stateful view of a family's own state (an image pool, a running mean) for DCP."""

    def __init__(self, family):
        self.family = family

    def state_dict(self) -> dict:
        return self.family.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.family.load_state_dict(state)


class Trainer:
    """Trains the networks of ``cfg``'s family in ``cfg.run_dir``; ``train()`` resumes
    automatically. ``trainer.<name>``, ``trainer.<name>_ema`` and ``trainer.opt_<name>`` are the
    family's networks, their averaged copies and their optimizers."""

    def __init__(self, cfg: Config, env: DistEnv | None = None):
        self.cfg = cfg
        self.env = env or DistEnv()
        self.device = self.env.device
        self.run_dir = cfg.run_dir
        self.rank, self.world = self.env.rank, self.env.world_size
        self.is_main = self.rank == 0
        tc = cfg.train
        if tc.batch_size % (tc.grad_accum * self.world):
            raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by "
                             f"train.grad_accum x world size = {tc.grad_accum} x {self.world}")
        self.micro_batch = tc.batch_size // (tc.grad_accum * self.world)

        # Latents, penalty mixing weights, pool draws... come from one generator, identical on
        # every rank: each rank draws the global batch and keeps its slice, so a run's randomness
        # does not depend on the world size. Its state is checkpointed.
        self.rng = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + 1)
        self.family = build_family(cfg, self)
        self.augmenter = Augmenter(cfg.augment, tc.seed, self.rank, self.world, self.device,
                                   self.env.distributed, measures=self.family.augments)
        torch.manual_seed(tc.seed)  # weight initialisation: the same on every rank
        self.nets = self.family.build_networks()
        self.ema = {name: copy.deepcopy(self.nets[name]).eval().requires_grad_(False)
                    for name in self.family.ema}
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        if tc.init_from and not (cfg.checkpoint.resume and step_dirs(self.ckpt.directory)):
            init_from(tc.init_from, self.family, self.nets, self.ema, self.is_main)
        # Freeze-D: these parameters never take a gradient (requires_grad stays off), so no
        # strategy's optimizer moves them
        self.frozen: dict[str, set[str]] = self.family.frozen_parameters(self.nets, tc.freeze_d)
        for name in self.nets:
            self.set_trainable(name, True)
        for net in [*self.nets.values(), *self.ema.values()]:
            net.to(self.device)
        self.strategy = build_strategy(cfg, self.env)
        self.strategy.wrap(self.nets)
        self.strategy.wrap_ema(self.ema)
        self.optimizers = self.family.optimizers(self.nets, unit_param_groups)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
            if self.strategy.checkpoint_format == "dcp":  # DeepSpeed keeps its own flat state
                init_optimizer_state(opt)
        self.strategy.setup_optimizers(self.optimizers)
        self.phase_specs: list[PhaseSpec] = self.family.phases()
        self.images_seen = 0
        self.step = 0
        self.streams: dict[str, ImageStream | PointStream] = {}  # by the family's names
        self.logger: Logger | None = None
        self.last_sample_step = -1
        self.last_saved_step = -1
        self.extractor = None  # built first, so a missing Inception file stops the run at once
        if cfg.eval.every_kimg > 0 and not self.family.metrics:
            self.extractor = extractor_for(cfg.eval, self.device)
        self.real_set: RealSet | None = None
        self.nonfinite_streak = 0  # consecutive steps with an update not applied
        self.nonfinite_total = 0
        self.skipped_updates: list[str] = []  # phases of the last step not applied: "D", ...
        self.stopped_by: int | None = None  # the signal that ended the run, agreed by all ranks
        self.run_directory: RunDirectory | None = None
        self.holdout_images: torch.Tensor | None = None  # read when the data is opened

    # ----------------------------------------------------------------------------------- set-up

    def __getattr__(self, name: str):
        """``trainer.G``, ``trainer.G_ema``, ``trainer.opt_D``: a network, an averaged copy or an
        optimizer by the family's network name."""
        d = self.__dict__
        if "nets" in d and name in d["nets"]:
            return d["nets"][name]
        if "ema" in d and name.endswith("_ema") and name[:-4] in d["ema"]:
            return d["ema"][name[:-4]]
        if "optimizers" in d and name.startswith("opt_") and name[4:] in d["optimizers"]:
            return d["optimizers"][name[4:]]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def data(self) -> ImageStream | PointStream | None:
        """The first (primary) data stream; None before the data is opened."""
        return next(iter(self.streams.values()), None)

    @data.setter
    def data(self, stream) -> None:
        self.streams[next(iter(self.family.streams()))] = stream

    def _open_data(self) -> ImageStream | PointStream:
        """Open every stream of the family (``self.streams``); returns the first."""
        dc, mc, tc = self.cfg.data, self.cfg.model, self.cfg.train
        for i, (name, spec) in enumerate(self.family.streams().items()):
            if spec.points is not None:
                stream = PointStream(spec.points, self.micro_batch, seed=tc.seed + i,
                                     rank=self.rank, world=self.world)
            else:
                shards = open_shards(spec.shards, key=spec.key,
                                     allow_unindexed=dc.allow_unindexed, retries=dc.retries,
                                     backoff=dc.retry_backoff)
                check_pack(spec.shards, mc.resolution, img_channels=mc.img_channels,
                           key=spec.key, **spec.check)
                stream = ImageStream(shards, self.micro_batch, self.phase().resolution,
                                     seed=tc.seed + i, num_workers=dc.num_workers,
                                     shuffle_buffer=dc.shuffle_buffer, xflip=dc.xflip,
                                     label_key=spec.label_key, pyramid=spec.pyramid,
                                     max_skip=dc.max_skip, retries=dc.retries,
                                     backoff=dc.retry_backoff, device=self.device)
            self.streams[name] = stream
        spec = holdout_spec(self.cfg)
        if spec and self.family.augments:
            self.holdout_images = read_images(spec, mc.resolution, channels=mc.img_channels,
                                              num=self.cfg.log.holdout_images,
                                              key="data.holdout",
                                              allow_unindexed=dc.allow_unindexed)
        return next(iter(self.streams.values()))

    def _data_state(self) -> dict:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def _load_data_state(self, state: dict) -> None:
        if set(state) != set(self.streams):  # written before streams had names: the first's
            state = {next(iter(self.streams)): state}
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])

    def _open_loggers(self) -> Logger:
        cfg = self.cfg
        loggers: list[Logger] = [JsonlLogger(self.run_dir / "metrics.jsonl")]
        if cfg.log.wandb != "disabled":
            # the parts of a requeued Slurm job share its id: one group (and one resumed run)
            job = os.environ.get("SLURM_JOB_ID")
            loggers.append(WandbLogger(self.run_dir, cfg.log.wandb_project, cfg.name,
                                       config_to_dict(cfg), cfg.log.wandb,
                                       group=f"slurm-{job}" if job else cfg.name))
        return MultiLogger(loggers)

    def app_state(self) -> dict:
        """DCP state: the averaged copies (``<name>_ema``), the family's own state, and the
        networks and their optimizers unless the strategy stores those."""
        state = {f"{name}_ema": ModelState(net) for name, net in self.ema.items()}
        if self.family.state_dict():
            state["family"] = FamilyState(self.family)
        return {**state, **self.strategy.training_state()}

    # ---------------------------------------------------------------------------------- algorithm

    def phase(self, images_seen: int | None = None) -> Phase:
        """Resolution and fade alpha after ``images_seen`` images (default: now)."""
        return self.family.stage(self.images_seen if images_seen is None else images_seen)

    def units_in_use(self, phase: Phase | None) -> dict[str, set[str] | None]:
        """Per network, the submodules that run in ``phase`` (None: a network without units)."""
        return self.family.units_in_use(self.nets, phase)

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def draw(self, fn, n: int, *shape: int) -> torch.Tensor:
        """Draw the global batch (n per rank) with ``fn`` from the shared RNG; keep this rank's."""
        full = fn(n * self.world, *shape, generator=self.rng)
        return full[self.rank * n:(self.rank + 1) * n].to(self.device)

    def augment(self, images: torch.Tensor, draw=None) -> torch.Tensor:
        """``images`` as D is to see them (``augment.*``; unchanged when off)."""
        return self.augmenter(images, draw)

    def observe_real(self, logits: torch.Tensor) -> None:
        """D's logits on this rank's real images of a D update, for ADA's r_t."""
        self.augmenter.observe(logits)

    def set_trainable(self, name: str, trainable: bool) -> None:
        """``requires_grad`` of network ``name``'s parameters: ``trainable``, except the frozen
        ones (``train.freeze_d``), which stay off."""
        frozen = self.frozen.get(name, ())
        for fqn, p in self.nets[name].named_parameters():
            p.requires_grad_(trainable and fqn not in frozen)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t``, in rank order."""
        if not self.env.distributed:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def next_micro_batches(self) -> list:
        """``grad_accum`` micro-batches of the family's inputs for one optimizer step: one batch
        of each stream per micro-batch."""
        return [self.family.micro_batch({name: stream.next_batch()
                                         for name, stream in self.streams.items()}, self)
                for _ in range(self.cfg.train.grad_accum)]

    @contextlib.contextmanager
    def _phase_networks(self, spec: PhaseSpec):
        """The networks a phase's loss calls: trainable ones through the strategy (the one it
        differentiates w.r.t. its input through the strategy's input-gradient path), the others
        as plain frozen modules."""
        nets: dict = dict(self.nets)
        for name in spec.trains:
            if name != spec.input_gradient:
                nets[name] = self.strategy.trainable(name, spec.trains)
        if spec.input_gradient is None:
            yield nets
            return
        with self.strategy.input_gradient(spec.input_gradient) as net:
            nets[spec.input_gradient] = net
            yield nets

    def run_phase(self, spec: PhaseSpec | str, batches: list, phase: Phase) -> StepStats:
        """One update of the networks ``spec`` trains: its loss averaged over the
        micro-batches, every other network frozen."""
        if isinstance(spec, str):
            spec = next(s for s in self.phase_specs if s.name == spec)
        stats = StepStats()
        for name in self.nets:
            self.set_trainable(name, name in spec.trains)
        for name in spec.trains:
            self.strategy.zero_grad(name)
        for mb in batches:
            with self._phase_networks(spec) as nets:
                loss, scalars = spec.loss(nets, mb, phase)
                stats.add_all(scalars, 1 / len(batches))
                self.strategy.backward(spec.trains, loss / len(batches))
        stats.applied = self.strategy.step(spec.trains, stats.finite)
        return stats

    def ema_phase(self) -> None:
        tc = self.cfg.train
        beta = self.family.ema_beta(ema_beta(tc.batch_size, self.images_seen,
                                             tc.ema_halflife_kimg, tc.ema_rampup))
        for name, ema in self.ema.items():
            self.strategy.update_ema(name, ema, beta)

    def _set_learning_rates(self) -> None:
        factors = self.family.learning_rates(self.images_seen)
        for name, factor in (factors or {}).items():
            for group in self.optimizers[name].param_groups:
                group["lr"] = group["initial_lr"] * factor

    def train_step(self, batches: list | None = None) -> dict[str, float]:
        """One update of each phase that is due, then the averaged copies; returns scalars.

        An update whose loss or gradients are not finite is not applied (``skipped_updates``
        names its phase; the row's ``nonfinite`` is 1); images seen and the schedule go on.
        """
        phase = self.phase()
        before = self.phase(self.images_seen - self.cfg.train.batch_size) if self.step else None
        if batches is None:
            for stream in self.streams.values():
                stream.set_resolution(phase.resolution)
            batches = self.next_micro_batches()
        self.strategy.begin_step(self.units_in_use(before), self.units_in_use(phase))
        self._set_learning_rates()
        done = [(spec.name, self.run_phase(spec, batches, phase))
                for spec in self.phase_specs if spec.due(self.step, self.images_seen)]
        for name in self.nets:
            self.set_trainable(name, True)
        self.augmenter.after_step()
        self.images_seen += self.cfg.train.batch_size
        self.step += 1
        self.ema_phase()
        self.skipped_updates = [name for name, st in done if not st.applied]
        stats = {k: v for _, st in done for k, v in st.values.items()}
        return {**stats, "resolution": phase.resolution, "alpha": phase.alpha,
                "nonfinite": float(bool(self.skipped_updates))}

    def fetch(self, stop: StopSignal) -> list | None:
        """This step's micro-batches, or None when the run stops before the step: a stop signal
        reached any rank (waiting for data is cut short), or any rank's data failed (DataError on
        every rank). All ranks agree in one tiny all-reduce. A step given up leaves the data
        position and the RNG as if nothing had been fetched, so the resumed run takes the same
        batches."""
        snapshot = (self._data_state(), self.rng.get_state())
        batches, error = None, None
        try:
            with stop.interruptible():
                for stream in self.streams.values():
                    stream.set_resolution(self.phase().resolution)
                batches = self.next_micro_batches()
        except Interrupted:
            pass
        except DataError as e:
            error = str(e)
        signum, missing, failed = float(stop.received or 0), float(batches is None), float(
            error is not None)
        if self.env.distributed:
            flags = torch.tensor([signum, missing, failed], dtype=torch.float64,
                                 device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            signum, missing, failed = flags.tolist()
        if failed:
            raise DataError(error or "another rank stopped on a data error (its log says which)")
        if signum or missing:
            self._load_data_state(snapshot[0])
            self.rng.set_state(snapshot[1])
            self.stopped_by = int(signum) or int(stop.received or 0)
            return None
        return batches

    def train(self, max_steps: int | None = None, stop: StopSignal | None = None) -> str:
        """Train until ``train.total_kimg`` (or ``max_steps`` more steps), resuming if possible.

        Returns ``"done"``, ``"max_steps"``, ``"preempted"`` (SIGUSR1 / SIGTERM) or
        ``"interrupted"`` (SIGINT): the signal stopped the run between two steps and every rank
        wrote a checkpoint. Raises DivergenceError when the losses stay non-finite (see
        ``train.on_nonfinite``): no checkpoint is written then. ``stop``: a StopSignal already
        installed (by the caller, around set-up); by default one is installed for the loop.
        """
        cfg = self.cfg
        if self.run_directory is None:
            self.run_directory = RunDirectory(self.run_dir)
            self.run_directory.open(cfg.checkpoint.resume, cfg.checkpoint.overwrite)
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        if cfg.checkpoint.resume:
            self.resume()
        if not self.streams:
            self._open_data()
        self.logger = self.logger or (self._open_loggers() if self.is_main else Logger())
        total = int(cfg.train.total_kimg * 1000)
        progress = Progress(total, self.images_seen, enabled=cfg.log.progress and self.is_main)
        window: list[dict[str, float]] = []
        t0, seen0 = time.perf_counter(), self.images_seen
        steps = 0
        save_due = False  # a checkpoint fell due during non-finite steps: write it after them
        self.stopped_by = None
        with contextlib.nullcontext(stop) if stop is not None else StopSignal() as stop:
            try:
                while self.images_seen < total and (max_steps is None or steps < max_steps):
                    batches = self.fetch(stop)
                    if batches is None:
                        break
                    prev_seen = self.images_seen
                    row = self.train_step(batches)
                    window.append(row)
                    steps += 1
                    if self.step % cfg.log.every_steps == 0 or row["nonfinite"]:
                        dt = time.perf_counter() - t0
                        scalars = self._summarise(window,
                                                  (self.images_seen - seen0) / max(dt, 1e-9))
                        scalars.update(self.overfitting(scalars))
                        self.logger.log_scalars(self.step, scalars)
                        progress.update(self.images_seen, scalars)
                        window, t0, seen0 = [], time.perf_counter(), self.images_seen
                    else:
                        progress.update(self.images_seen)
                    self._check_finite(row)
                    if self._crossed(prev_seen, cfg.log.sample_every_kimg):
                        self.sample()
                    save_due = save_due or self._crossed(prev_seen, cfg.checkpoint.every_kimg)
                    if save_due and not self.nonfinite_streak:  # never in a non-finite run
                        self.save()
                        save_due = False
                    if cfg.eval.every_kimg > 0 and self._crossed(prev_seen, cfg.eval.every_kimg):
                        self.evaluate()
                stopped = self.stopped_by is not None
                if steps and self.last_sample_step != self.step and not stopped:
                    self.sample()
                if steps and self.last_saved_step != self.step:
                    if self.nonfinite_streak:
                        log.warning("the last %d step(s) were not finite: no checkpoint written "
                                    "after them", self.nonfinite_streak)
                    else:
                        self.save()
            finally:
                progress.close()
        if self.stopped_by is not None:
            if self.is_main:
                latest = self.ckpt.latest()
                log.info("stopped by signal %d after step %d (%.3f kimg); %s", self.stopped_by,
                         self.step, self.images_seen / 1000,
                         f"newest checkpoint {latest}" if latest else "no checkpoint yet")
            return "interrupted" if self.stopped_by == signal.SIGINT else "preempted"
        return "done" if self.images_seen >= total else "max_steps"

    def _check_finite(self, row: dict[str, float]) -> None:
        """After each step: count a step whose update was not applied; apply
        ``train.on_nonfinite``; DivergenceError when the run must stop."""
        if not self.skipped_updates:
            self.nonfinite_streak = 0
            return
        tc = self.cfg.train
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        bad = ", ".join(f"{k}={v}" for k, v in sorted(row.items())
                        if k.startswith("loss/") and isinstance(v, float) and not math.isfinite(v))
        what = f"non-finite {bad or 'gradients'}"
        if tc.on_nonfinite == "stop" or self.nonfinite_streak >= tc.max_nonfinite:
            newest = self.ckpt.newest_finite()
            raise DivergenceError(
                f"training diverged at step {self.step} ({self.images_seen / 1000:.3f} kimg): "
                f"{what}, {self.nonfinite_streak} step(s) in a row (train.on_nonfinite="
                f"{tc.on_nonfinite}, train.max_nonfinite={tc.max_nonfinite}); those updates were "
                f"not applied and no checkpoint was written since the first of them; the newest "
                f"checkpoint is {newest if newest else 'none (no checkpoint yet)'}")
        if self.is_main:
            log.warning("step %d: %s: the update(s) of %s not applied (%d in a row, %d in all; "
                        "train.max_nonfinite=%d)", self.step, what,
                        "+".join(self.skipped_updates), self.nonfinite_streak,
                        self.nonfinite_total, tc.max_nonfinite)
        if tc.on_nonfinite == "rollback":
            self.rollback()

    def rollback(self) -> bool:
        """Restore the networks, their averaged copies and optimizers from the newest checkpoint
        with finite weights (counters, data position and RNG go on); False if there is none."""
        path = self.ckpt.newest_finite()
        if path is None:
            if self.is_main:
                log.warning("no checkpoint to roll back to: going on from the current weights")
            return False
        verify(path)
        self.ckpt.load(path, self.app_state(), self.strategy.load_extra)
        if self.is_main:
            log.warning("rolled the networks, their averaged copies and the optimizers back to "
                        "%s; the data and the counters go on", path)
        return True

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        for stream in self.streams.values():
            stream.close()
        if self.run_directory is not None:
            self.run_directory.close()
            self.run_directory = None

    def _crossed(self, prev_seen: int, every_kimg: float) -> bool:
        every = max(1, int(every_kimg * 1000))
        return prev_seen // every != self.images_seen // every

    def _summarise(self, window: list[dict[str, float]], images_per_s: float) -> dict[str, float]:
        """Scalars of the last ``window`` steps, averaged over steps and over ranks."""
        keys = sorted({k for row in window for k in row if k.startswith(("loss/", "d/", "aug/"))})
        out = {k: sum(r[k] for r in window if k in r) / sum(1 for r in window if k in r)
               for k in keys}
        skipped = float(sum(stream.skipped for stream in self.streams.values()))
        failed = float(sum(getattr(s, "failed_shards", 0) for s in self.streams.values()))
        memory = [0.0] * self.world  # peak memory per rank, each rank fills its own slot
        memory[self.rank] = self._peak_memory_gib()
        if self.env.distributed:
            values = torch.tensor([*out.values(), skipped, failed, *memory], dtype=torch.float64)
            dist.all_reduce(values)  # gloo and nccl both sum; the losses are then divided
            out = {k: v / self.world for k, v in zip(out, values[:len(out)].tolist(),
                                                       strict=True)}
            skipped, failed = values[len(out)].item(), values[len(out) + 1].item()
            memory = values[len(out) + 2:].tolist()
        out.update({f"memory/rank{r}_gib": m for r, m in enumerate(memory)})
        out.update(kimg=self.images_seen / 1000, images_seen=self.images_seen,
                   images_per_s=images_per_s, resolution=window[-1]["resolution"],
                   alpha=window[-1]["alpha"], data_skipped=int(skipped),
                   data_failed_shards=int(failed),
                   nonfinite_steps=int(sum(r.get("nonfinite", 0.0) for r in window)))
        return out

    def overfitting(self, scalars: dict[str, float]) -> dict[str, float]:
        """What a log row adds to the window's scalars on over-fitting: ADA's p (``aug/p``),
        D's mean output on the held-out reals now (``d/holdout``), its gap to ``d/real``
        (``d/overfit_gap``) and, past ``log.overfit_threshold``, a warning
        (``d/overfit_warning`` = 1, the log, W&B)."""
        out = {}
        if self.augmenter.active:
            out["aug/p"] = self.augmenter.p
        if self.holdout_images is None:
            return out
        value = self.holdout_logit()
        if value is None:
            return out
        out["d/holdout"] = value
        if "d/real" in scalars:
            gap = scalars["d/real"] - value
            out["d/overfit_gap"] = gap
            threshold = self.cfg.log.overfit_threshold
            if threshold > 0 and gap > threshold:
                out["d/overfit_warning"] = 1.0
                if self.is_main:
                    text = (f"step {self.step} ({self.images_seen / 1000:.1f} kimg): D over-fits "
                            f"its training images: its mean output on them (d/real "
                            f"{scalars['d/real']:.3f}) exceeds that on the held-out ones "
                            f"(d/holdout {value:.3f}) by {gap:.3f} > log.overfit_threshold="
                            f"{threshold:g}; more data, augmentation (augment.kind=ada) or an "
                            f"earlier checkpoint are the remedies")
                    log.warning(text)
                    if self.logger is not None:
                        self.logger.alert("D over-fits", text)
        return out

    @torch.no_grad()
    def holdout_logit(self) -> float | None:
        """D's mean output on the held-out reals at the current stage, augmented as its
        training reals are (at the current p, with draws of a fixed seed: the training run's
        random numbers are not touched); every rank computes it on all of them, in
        micro-batches (a set smaller than one is repeated to fill it, a remainder dropped).
        None for a family without a plain D on images."""
        phase = self.phase()
        x = self.holdout_images
        if x.shape[-1] != phase.resolution:
            x = F.avg_pool2d(x, x.shape[-1] // phase.resolution)
        n = self.micro_batch
        x = x.repeat(-(-n // len(x)), 1, 1, 1)[:n] if len(x) < n else x[:len(x) // n * n]
        draw = self.augmenter.fixed_draw(self.cfg.train.seed + 4242)
        total, count = 0.0, 0
        for chunk in x.split(n):
            with self.autocast():
                logits = self.family.real_logits(self.nets, self.augment(chunk.to(self.device),
                                                                         draw), phase)
            if logits is None:
                return None
            total += full(logits).double().sum().item()
            count += logits.numel()
        return total / count

    def _weights_crc32(self) -> dict[str, int]:
        """CRC32 of the weights this rank holds (replicas: equal on every rank; shards: this
        rank's), per model: a cheap check that data-parallel replicas agree."""
        out = {}
        for name, model in self._all_networks():
            crc = 0
            for p in model.parameters():
                t = getattr(p, "ds_tensor", None)
                t = p.to_local() if hasattr(p, "to_local") else p if t is None else t
                crc = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy(), crc)
            out[name] = crc
        return out

    def _all_networks(self) -> list[tuple[str, torch.nn.Module]]:
        return [*self.nets.items(), *((f"{n}_ema", e) for n, e in self.ema.items())]

    def _peak_memory_gib(self) -> float:
        """Peak memory of this rank: CUDA memory allocated, or the process's peak RSS on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux

    # ------------------------------------------------------------------------- samples, checkpoints

    @torch.no_grad()
    def sample(self) -> Path:
        """The averaged networks on the family's fixed sample inputs at the current stage ->
        samples/step_XXXXXXXXX.png (and latest.png)."""
        inputs = self.family.sample_inputs()
        if inputs is None:
            return self.run_dir / "samples"  # no data seen yet: nothing to sample from
        images = self.family.samples(self.ema, inputs, self.phase())
        self.last_sample_step = self.step
        path = self.run_dir / "samples" / f"step_{self.step:09d}.png"
        if not self.is_main:
            return path
        scalars = self.family.write_samples(images, [path,
                                                     self.run_dir / "samples" / "latest.png"])
        if self.logger is not None:
            if scalars:
                self.logger.log_scalars(self.step, {**scalars,
                                                    "kimg": self.images_seen / 1000})
            self.logger.log_image(self.step, "samples", path)
        return path

    def evaluate(self) -> dict[str, float]:
        """The averaged networks' metrics (``eval``) now: logged as ``eval/*``; a checkpoint
        that scores best so far is written (if this step has none yet) and kept as
        ``checkpoints/best``."""
        ec = self.cfg.eval
        results, self.real_set = evaluate(self.ema, self.cfg, self.phase(), self.env,
                                          self.extractor, self.real_set, family=self.family)
        scalars = {f"eval/{k}": v for k, v in results.items()}
        self.logger.log_scalars(self.step, {**scalars, "kimg": self.images_seen / 1000})
        key = headline(ec, self.family)
        value, best = results[key], self.ckpt.best()
        better = best is None or best.get("metric") != key or (
            value < best["value"] if lower_is_better(key, self.family) else value > best["value"])
        if better:
            path = self.save() if self.last_saved_step != self.step else self.ckpt.latest()
            if path is not None:
                self.ckpt.mark_best(path, {"metric": key, "value": value, "step": self.step,
                                           "kimg": self.images_seen / 1000, **results})
        if self.is_main:
            log.info("eval at %.1f kimg: %s%s", self.images_seen / 1000,
                     ", ".join(f"{k} {v:.4g}" for k, v in results.items()
                               if not k.startswith(("num_", "real_"))),
                     " (best so far)" if better else "")
        return results

    def weights_finite(self) -> bool:
        """Whether every weight of every network and averaged copy (this rank's shards) is
        finite, on every rank."""
        tensors = []
        for _, model in self._all_networks():
            for p in model.parameters():
                t = getattr(p, "ds_tensor", None)
                t = p.to_local() if hasattr(p, "to_local") else p if t is None else t
                if t.numel():
                    tensors.append(t.detach())
        local = not tensors or bool(torch.stack(
            [n.float() for n in torch._foreach_norm(tensors, float("inf"))]).isfinite().all())
        return not any_rank(not local)

    def save(self) -> Path | None:
        """Checkpoint the run now, on every rank; None (nothing written) when a weight is NaN or
        inf: a checkpoint never holds non-finite weights."""
        if not self.weights_finite():
            if self.is_main:
                log.error("step %d: a network holds NaN or inf: no checkpoint written (the "
                          "newest with finite weights is %s)", self.step,
                          self.ckpt.newest_finite())
            return None
        meta = {"step": self.step, "images_seen": self.images_seen,
                "phase": vars(self.phase()), "world_size": self.world,
                "format": self.strategy.checkpoint_format, "finite": True,
                "rng": encode_rng(self.rng.get_state()), "config": config_to_dict(self.cfg),
                "augment": self.augmenter.state_dict()}
        # every rank's data position, in every rank's file: the run can continue at any world size
        data = ({name: {"ranks": all_gather_json(state)} for name, state in
                 self._data_state().items()} if self.streams else None)
        rank_state = {"data": data,
                      "weights_crc32": self._weights_crc32()}
        path = self.ckpt.save(self.step, self.app_state(), meta, rank_state,
                              self.strategy.save_extra)
        self.last_saved_step = self.step
        if self.is_main:
            log.info("checkpoint %s", path)
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint that verifies; False if the run has none.

        Each candidate, newest first, is verified (meta.json's checksum, every file's size and
        CRC32), checked against this run's config (ResumeError naming every differing key), loaded
        through the safe loaders, and its weights compared with the per-rank CRC32 saved with it
        (same world size and strategy). A damaged or unsafe one is reported and moved aside as
        ``step_X.corrupt``; the next older one is tried.
        """
        directory = self.ckpt.directory
        damaged = [p.name for p in damaged_dirs(directory)]
        for path in reversed(step_dirs(directory)):
            try:
                meta = verify(path)
                self._check_compatible(path, meta)
                meta, rank_state = self.ckpt.load(path, self.app_state(),
                                                  self.strategy.load_extra)
                self._check_weights(path, meta, rank_state)
            except CheckpointError as e:
                moved = self.ckpt.move_aside(path, str(e))
                damaged.append(moved.name)
                if self.is_main:
                    log.error("checkpoint %s cannot be used: %s; moved aside to %s, trying the "
                              "next older one", path, e, moved.name)
                continue
            self.step, self.images_seen = int(meta["step"]), int(meta["images_seen"])
            self.rng.set_state(decode_rng(meta["rng"]))
            if "augment" in meta:
                self.augmenter.load_state_dict(meta["augment"])
            data = (rank_state or {}).get("data")
            if data is None and (path / "rank_00000.json").is_file():
                # a rank the saved run did not have: every rank's file holds every position
                data = json.loads((path / "rank_00000.json").read_text()).get("data")
            if data is not None:
                if not self.streams:
                    self._open_data()
                self._load_data_state(data)
            if self.is_main:
                log.info("resumed from %s at %.1f kimg (step %d)", path,
                         self.images_seen / 1000, self.step)
            return True
        if damaged:
            raise ResumeError(f"no checkpoint in {directory} can be used: {', '.join(damaged)} "
                              f"failed verification (each *.reason.txt beside it says why); "
                              f"nothing was deleted. To start this run over, set "
                              f"checkpoint.resume=false checkpoint.overwrite=true")
        return False

    def _check_compatible(self, path: Path, meta: dict) -> None:
        """ResumeError unless this run can continue ``path``: same model settings, a checkpoint
        format this strategy reads, DeepSpeed's own world size."""
        saved = meta["config"]
        diffs = model_differences(saved, self.cfg)
        if diffs:
            raise ResumeError(f"{path} was written with other model settings than this run's: "
                              f"{'; '.join(diffs)}. Resume with the checkpoint's values, or "
                              f"start a new run (another name, or checkpoint.resume=false "
                              f"checkpoint.overwrite=true)")
        fmt, world = meta.get("format", "dcp"), meta["world_size"]
        if fmt == "deepspeed" and world != self.world:
            raise ResumeError(f"{path} was written by DeepSpeed at world size {world}; it resumes "
                              f"at that world size only, not at {self.world}")
        if fmt != self.strategy.checkpoint_format:
            strategy = (saved.get("parallel") or {}).get("strategy", "?")
            raise ResumeError(f"{path} holds the networks in {fmt} format (parallel.strategy="
                              f"{strategy} at {world} ranks); this run ({self.strategy.name}, "
                              f"{self.world} rank(s)) reads {self.strategy.checkpoint_format}")

    def _check_weights(self, path: Path, meta: dict, rank_state: dict | None) -> None:
        """After loading at the layout that saved ``path`` (same world size and strategy): the
        weights each rank holds must have the CRC32 saved with them; CheckpointError otherwise."""
        saved_parallel = meta["config"].get("parallel") or {}
        same_layout = meta["world_size"] == self.world and (
            self.world == 1 or (saved_parallel.get("strategy") == self.cfg.parallel.strategy
                                and saved_parallel.get("zero_stage") ==
                                self.cfg.parallel.zero_stage))
        problem = None
        saved = (rank_state or {}).get("weights_crc32")
        if same_layout and isinstance(saved, dict):
            now = self._weights_crc32()
            bad = [k for k in now if k in saved and saved[k] != now[k]]
            if bad:
                problem = (f"{path / f'rank_{self.rank:05d}.json'}: the weights of "
                           f"{', '.join(bad)} loaded on rank {self.rank} differ from those "
                           f"saved (CRC32)")
        problems = [p for p in all_gather_json(problem) if p]
        if problems:
            raise CheckpointError("; ".join(problems))
