"""The GAN training loop.

``Trainer.train()`` reads as the algorithm: for each step, pick the phase (resolution, fade alpha)
from images seen, run the D phase on real and generated micro-batches, the lazy R1 phase when it
is due, the G phase, update G_ema, then log, sample and checkpoint. The forward passes and losses
of each model family are its objective's (``scalegan.train.objectives``). Everything a step
depends on (weights, optimizer moments, G_ema, counters, RNG, data position) is in the checkpoint,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
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

from scalegan.config import Config, ModelConfig, config_to_dict, save_config
from scalegan.data.pipeline import DataError, ImageStream, check_pack, expand_shards
from scalegan.data.points import PointStream, mixture
from scalegan.metrics.evaluate import LOWER_IS_BETTER, RealSet, evaluate, extractor_for, headline
from scalegan.metrics.modes import mode_stats
from scalegan.models import build_models
from scalegan.monitor.grid import save_grid
from scalegan.monitor.loggers import JsonlLogger, Logger, MultiLogger, WandbLogger
from scalegan.monitor.progress import Progress
from scalegan.monitor.scatter import save_scatter
from scalegan.parallel import build_strategy, unit_param_groups
from scalegan.parallel.env import DistEnv
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
from scalegan.train.objectives import MicroBatch, build_objective
from scalegan.train.preemption import Interrupted, StopSignal
from scalegan.train.rundir import RunDirectory
from scalegan.train.schedule import Phase, phase_at

log = logging.getLogger(__name__)

POINT_SAMPLES = 2500
"""Samples drawn for each scatter plot and mode count of a 2-D run (VEEGAN / PacGAN: 2500)."""

RESUME_IGNORES = ("ops_impl", "mbstd_across_ranks")
"""model.* keys a run may change when it resumes: they change no tensor and no result."""


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for too many steps in a row (or once,
    with ``train.on_nonfinite=stop``); says at which step and which value."""


def model_differences(saved: dict, cfg: Config) -> list[str]:
    """``model.key: checkpoint X, this run Y`` for every model setting a checkpoint (its
    config as a dict) and ``cfg`` disagree on; keys the checkpoint predates take their default."""
    old = {**dataclasses.asdict(ModelConfig()), **(saved.get("model") or {})}
    new = config_to_dict(cfg)["model"]
    return [f"model.{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if k not in RESUME_IGNORES and old.get(k) != new.get(k)]


def init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's per-parameter state now, exactly as its first step would (step 0, zero
    moments).

    Blocks of resolutions not reached yet get no gradient, and Adam leaves a parameter without a
    gradient untouched, so this changes no update. It makes the set of state keys constant over
    the run, which a checkpoint needs: without it, a resume before a block activates would restore
    state for fewer parameters than the saved run had, or invent some.
    """
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=scalar)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


@dataclass
class StepStats:
    values: dict[str, float] = field(default_factory=dict)
    applied: bool = True
    """Whether the phase's optimizer step was applied (not: a loss or gradient was NaN or inf)."""

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


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


class Trainer:
    """Trains G and D of ``cfg`` in ``cfg.run_dir``; ``train()`` resumes automatically."""

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

        torch.manual_seed(tc.seed)  # weight initialisation: the same on every rank
        self.G, self.D = build_models(cfg.model)
        self.G.to(self.device)
        self.D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.strategy = build_strategy(cfg, self.env)
        self.strategy.wrap(self.G, self.D)
        self.strategy.wrap_ema(self.G_ema)
        self.opt_G, self.opt_D = self._make_optimizers()
        self.strategy.setup_optimizers(self.opt_G, self.opt_D)
        self.objective = build_objective(cfg, self.autocast)

        # Latents and penalty mixing weights come from one generator, identical on every rank: each
        # rank draws the global batch and keeps its slice, so a run's randomness does not depend on
        # the world size. Its state is checkpointed.
        self.rng = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + 1)
        self.images_seen = 0
        self.step = 0
        # the 2-D benchmarks' protocol judges 2500 samples; image grids show sample_grid^2
        num_samples = POINT_SAMPLES if cfg.model.arch == "mlp" else cfg.log.sample_grid ** 2
        self.sample_z = torch.randn(num_samples, cfg.model.latent_dim,
                                    generator=torch.Generator().manual_seed(tc.seed + 31337))
        self.sample_cond = self._sample_conditions(None)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.data: ImageStream | None = None
        self.logger: Logger | None = None
        self.last_sample_step = -1
        self.last_saved_step = -1
        self.extractor = None  # built first, so a missing Inception file stops the run at once
        if cfg.eval.every_kimg > 0:
            self.extractor = extractor_for(cfg.eval, self.device)
        self.real_set: RealSet | None = None
        self.nonfinite_streak = 0  # consecutive steps with an update not applied
        self.nonfinite_total = 0
        self.skipped_updates: list[str] = []  # of the last step: "D", "R1", "G"
        self.stopped_by: int | None = None  # the signal that ended the run, agreed by all ranks
        self.run_directory: RunDirectory | None = None

    # ----------------------------------------------------------------------------------- set-up

    def _make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        oc, lc = self.cfg.optim, self.cfg.loss
        # Lazy R1 runs every r1_interval steps; StyleGAN2 rescales D's Adam by c = k / (k + 1) so
        # the effective per-step statistics match an every-step regulariser.
        c = lc.r1_interval / (lc.r1_interval + 1) if lc.r1_gamma > 0 else 1.0
        opt_G = torch.optim.Adam(unit_param_groups(self.G), lr=oc.g_lr,
                                 betas=(oc.beta1, oc.beta2), eps=oc.eps)
        opt_D = torch.optim.Adam(unit_param_groups(self.D), lr=oc.d_lr * c,
                                 betas=(oc.beta1 ** c, oc.beta2 ** c), eps=oc.eps)
        if self.strategy.checkpoint_format == "dcp":  # DeepSpeed keeps its own flat state
            for opt in (opt_G, opt_D):
                init_adam_state(opt)
        return opt_G, opt_D

    def _open_data(self) -> ImageStream | PointStream:
        dc, mc = self.cfg.data, self.cfg.model
        if dc.source == "points":
            return PointStream(dc.points, self.micro_batch, seed=self.cfg.train.seed,
                               rank=self.rank, world=self.world)
        urls = expand_shards(dc.shards, allow_unindexed=dc.allow_unindexed)
        check_pack(dc.shards, mc.resolution, img_channels=mc.img_channels,
                   condition=mc.condition, embedding_dim=mc.embedding_dim,
                   num_classes=mc.num_classes)
        return ImageStream(urls, self.micro_batch, self.phase().resolution,
                           seed=self.cfg.train.seed, num_workers=dc.num_workers,
                           shuffle_buffer=dc.shuffle_buffer, xflip=dc.xflip,
                           label_key={"none": None, "label": "label",
                                      "embedding": "attributes"}[mc.condition],
                           pyramid=mc.stages if mc.arch == "stackgan" else 1,
                           max_skip=dc.max_skip)

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
        """DCP state: G_ema, and G, D and their optimizers unless the strategy stores those."""
        return {"G_ema": ModelState(self.G_ema), **self.strategy.training_state()}

    # ---------------------------------------------------------------------------------- algorithm

    def phase(self, images_seen: int | None = None) -> Phase:
        """Resolution and fade alpha after ``images_seen`` images (default: now)."""
        s, m = self.cfg.train.schedule, self.cfg.model
        if m.arch != "progressive":
            return Phase(m.resolution, 1.0)
        images_seen = self.images_seen if images_seen is None else images_seen
        return phase_at(images_seen, s.start_resolution, m.resolution, s.fade_kimg,
                        s.stable_kimg)

    def units_in_use(self, phase: Phase | None) -> dict[str, set[str] | None]:
        """Submodules of G and D that run in ``phase`` (None: a model without units)."""
        if phase is None:
            return {"G": set(), "D": set()}
        return {w: m.units_in_use(phase.resolution, phase.alpha)
                if hasattr(m, "units_in_use") else None for w, m in (("G", self.G), ("D", self.D))}

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _global_draw(self, fn, n: int, *shape: int) -> torch.Tensor:
        """Draw the global batch (n per rank) with ``fn`` from the shared RNG; keep this rank's."""
        full = fn(n * self.world, *shape, generator=self.rng)
        return full[self.rank * n:(self.rank + 1) * n].to(self.device)

    def latents(self, n: int) -> torch.Tensor:
        """(n, latent_dim) latents for this rank's share of the global batch."""
        return self._global_draw(torch.randn, n, self.cfg.model.latent_dim)

    def next_micro_batches(self) -> list[MicroBatch]:
        """``grad_accum`` micro-batches of real images and latents for one optimizer step (and,
        for conditional models, conditions)."""
        mc, batches = self.cfg.model, []
        for _ in range(self.cfg.train.grad_accum):
            batch = self.data.next_batch()
            scales = batch.images if isinstance(batch.images, list) else [batch.images]
            if mc.img_channels == 1 and scales[0].ndim == 4:  # a grayscale model on RGB shards
                scales = [x.mean(1, keepdim=True) for x in scales]
            scales = [x.to(self.device) for x in scales]
            n = scales[0].shape[0]
            # StackGAN takes one image per stage, even with a single stage
            real = scales if isinstance(batch.images, list) or mc.arch == "stackgan" else scales[0]
            mb = MicroBatch(real, self.latents(n), self.latents(n))
            if mc.condition != "none":
                mb.cond = batch.labels.to(self.device)
                mb.wrong_cond = self.mismatched_conditions(mb.cond)
                if self.sample_cond is None:
                    self.sample_cond = self._sample_conditions(mb.cond)
            if mc.condition == "embedding":
                mb.eps_d = self._global_draw(torch.randn, n, mc.cond_dim)
                mb.eps_g = self._global_draw(torch.randn, n, mc.cond_dim)
            batches.append(mb)
        return batches

    def mismatched_conditions(self, cond: torch.Tensor) -> torch.Tensor:
        """Per sample another condition, for the (real image, wrong condition) pairs: a random
        other class, or the next sample's vector in the global micro-batch. Both are the same
        whatever the number of ranks."""
        n = cond.shape[0]
        if not cond.is_floating_point():  # class ids: shift by 1 .. num_classes - 1
            k = self.cfg.model.num_classes
            shift = self._global_draw(lambda *s, generator: torch.randint(1, k, s,
                                                                          generator=generator), n)
            return (cond + shift) % k
        full = cond
        if self.env.distributed:
            parts = [torch.empty_like(cond) for _ in range(self.world)]
            dist.all_gather(parts, cond.contiguous())
            full = torch.cat(parts)
        index = (torch.arange(n, device=cond.device) + self.rank * n + 1) % full.shape[0]
        return full[index]

    def _sample_conditions(self, seen: torch.Tensor | None) -> torch.Tensor | None:
        """Conditions of the sample grids: classes in turn (a row per class for grids as wide
        as the class count), or the attribute vectors of the first batch, repeated."""
        mc, n = self.cfg.model, self.cfg.log.sample_grid ** 2
        if mc.condition == "label":
            return torch.arange(n) % mc.num_classes
        if mc.condition == "embedding" and seen is not None:
            return seen.detach().cpu()[torch.arange(n) % seen.shape[0]]
        return None

    def d_phase(self, batches: list[MicroBatch], phase: Phase) -> StepStats:
        """One D update: adversarial loss (+ WGAN-GP) averaged over micro-batches."""
        stats = StepStats()
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.strategy.zero_grad("D")
        for mb in batches:
            with torch.no_grad():
                fake = self.objective.fake(self.G, mb, phase)
            with (self.strategy.input_gradient() if self.objective.d_needs_input_gradient
                  else contextlib.nullcontext(self.strategy.trainable("D"))) as D:
                loss, scalars = self.objective.d_loss(
                    D, mb, fake, phase, mix=lambda mb=mb: self._global_draw(
                        torch.rand, mb.z_d.shape[0]))
                stats.add_all(scalars, 1 / len(batches))
                self.strategy.backward("D", loss / len(batches))
        stats.applied = self.strategy.step("D", stats.finite)
        return stats

    def r1_phase(self, batches: list[MicroBatch], phase: Phase) -> StepStats:
        """Lazy R1 on real images, every ``loss.r1_interval`` steps."""
        stats = StepStats()
        self.strategy.zero_grad("D")
        for mb in batches:
            with self.strategy.input_gradient() as D:
                loss, scalars = self.objective.r1_loss(D, mb, phase)
                stats.add_all(scalars, 1 / len(batches))
                self.strategy.backward("D", loss / len(batches))
        stats.applied = self.strategy.step("D", stats.finite)
        return stats

    def g_phase(self, batches: list[MicroBatch], phase: Phase) -> StepStats:
        """One G update through a frozen D."""
        stats = StepStats()
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.strategy.zero_grad("G")
        G = self.strategy.trainable("G")
        for mb in batches:
            loss, scalars = self.objective.g_loss(G, self.D, mb, phase)
            stats.add_all(scalars, 1 / len(batches))
            self.strategy.backward("G", loss / len(batches))
        stats.applied = self.strategy.step("G", stats.finite)
        self.D.requires_grad_(True)
        return stats

    def ema_phase(self) -> None:
        tc = self.cfg.train
        beta = ema_beta(tc.batch_size, self.images_seen, tc.ema_halflife_kimg, tc.ema_rampup)
        self.strategy.update_ema(self.G_ema, beta)

    def train_step(self, batches: list[MicroBatch] | None = None) -> dict[str, float]:
        """One optimizer step of D (and R1 when due) and G, then the EMA; returns scalars.

        An update whose loss or gradients are not finite is not applied (``skipped_updates``
        names it; the row's ``nonfinite`` is 1); images seen and the schedule go on.
        """
        phase = self.phase()
        before = self.phase(self.images_seen - self.cfg.train.batch_size) if self.step else None
        if batches is None:
            self.data.set_resolution(phase.resolution)
            batches = self.next_micro_batches()
        self.strategy.begin_step(self.units_in_use(before), self.units_in_use(phase))
        phases = [("D", self.d_phase(batches, phase))]
        lc = self.cfg.loss
        if lc.r1_gamma > 0 and self.step % lc.r1_interval == 0:
            phases.append(("R1", self.r1_phase(batches, phase)))
        phases.append(("G", self.g_phase(batches, phase)))
        self.images_seen += self.cfg.train.batch_size
        self.step += 1
        self.ema_phase()
        self.skipped_updates = [name for name, st in phases if not st.applied]
        stats = {k: v for _, st in phases for k, v in st.values.items()}
        return {**stats, "resolution": phase.resolution, "alpha": phase.alpha,
                "nonfinite": float(bool(self.skipped_updates))}

    def fetch(self, stop: StopSignal) -> list[MicroBatch] | None:
        """This step's micro-batches, or None when the run stops before the step: a stop signal
        reached any rank (waiting for data is cut short), or any rank's data failed (DataError on
        every rank). All ranks agree in one tiny all-reduce. A step given up leaves the data
        position and the RNG as if nothing had been fetched, so the resumed run takes the same
        batches."""
        snapshot = (self.data.state_dict(), self.rng.get_state())
        batches, error = None, None
        try:
            with stop.interruptible():
                self.data.set_resolution(self.phase().resolution)
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
            self.data.load_state_dict(snapshot[0])
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
        self.data = self.data or self._open_data()
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
        """Restore G, D, G_ema and both optimizers from the newest checkpoint with finite
        weights (counters, data position and RNG go on); False if there is none."""
        path = self.ckpt.newest_finite()
        if path is None:
            if self.is_main:
                log.warning("no checkpoint to roll back to: going on from the current weights")
            return False
        verify(path)
        self.ckpt.load(path, self.app_state(), self.strategy.load_extra)
        if self.is_main:
            log.warning("rolled G, D, G_ema and the optimizers back to %s; the data and the "
                        "counters go on", path)
        return True

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.data is not None:
            self.data.close()
        if self.run_directory is not None:
            self.run_directory.close()
            self.run_directory = None

    def _crossed(self, prev_seen: int, every_kimg: float) -> bool:
        every = max(1, int(every_kimg * 1000))
        return prev_seen // every != self.images_seen // every

    def _summarise(self, window: list[dict[str, float]], images_per_s: float) -> dict[str, float]:
        """Scalars of the last ``window`` steps, averaged over steps and over ranks."""
        keys = sorted({k for row in window for k in row if k.startswith("loss/")})
        out = {k: sum(r[k] for r in window if k in r) / sum(1 for r in window if k in r)
               for k in keys}
        skipped = float(self.data.skipped)
        memory = [0.0] * self.world  # peak memory per rank, each rank fills its own slot
        memory[self.rank] = self._peak_memory_gib()
        if self.env.distributed:
            values = torch.tensor([*out.values(), skipped, *memory], dtype=torch.float64)
            dist.all_reduce(values)  # gloo and nccl both sum; the losses are then divided
            out = {k: v / self.world for k, v in zip(out, values[:len(out)].tolist(),
                                                       strict=True)}
            skipped = values[len(out)].item()
            memory = values[len(out) + 1:].tolist()
        out.update({f"memory/rank{r}_gib": m for r, m in enumerate(memory)})
        out.update(kimg=self.images_seen / 1000, images_seen=self.images_seen,
                   images_per_s=images_per_s, resolution=window[-1]["resolution"],
                   alpha=window[-1]["alpha"], data_skipped=int(skipped),
                   nonfinite_steps=int(sum(r.get("nonfinite", 0.0) for r in window)))
        return out

    def _weights_crc32(self) -> dict[str, int]:
        """CRC32 of the weights this rank holds (replicas: equal on every rank; shards: this
        rank's), per model: a cheap check that data-parallel replicas agree."""
        out = {}
        for name, model in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            crc = 0
            for p in model.parameters():
                t = getattr(p, "ds_tensor", None)
                t = p.to_local() if hasattr(p, "to_local") else p if t is None else t
                crc = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy(), crc)
            out[name] = crc
        return out

    def _peak_memory_gib(self) -> float:
        """Peak memory of this rank: CUDA memory allocated, or the process's peak RSS on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux

    # ------------------------------------------------------------------------- samples, checkpoints

    @torch.no_grad()
    def sample(self) -> Path:
        """G_ema on the fixed latents at the current phase -> samples/step_XXXXXXXXX.png."""
        phase = self.phase()
        cond = self.sample_cond
        if cond is None and self.cfg.model.condition != "none":
            return self.run_dir / "samples"  # no data seen yet: nothing to condition on
        images = torch.cat([
            self.objective.display(self.G_ema, z.to(self.device),
                                   None if cond is None else cond[i:i + 16].to(self.device), phase)
            for i, z in zip(range(0, len(self.sample_z), 16), self.sample_z.split(16),
                            strict=True)])
        self.last_sample_step = self.step
        path = self.run_dir / "samples" / f"step_{self.step:09d}.png"
        if not self.is_main:
            return path
        if self.cfg.data.source == "points":
            centers, std = mixture(self.cfg.data.points)
            stats = mode_stats(images, centers, std)
            if self.logger is not None:
                self.logger.log_scalars(self.step, {"modes/covered": stats["modes"],
                                                    "modes/high_quality": stats["high_quality"],
                                                    "kimg": self.images_seen / 1000})
            for p in (path, self.run_dir / "samples" / "latest.png"):
                save_scatter(images, p, centers=centers, radius=3 * std)
        else:
            save_grid(images, path)
            save_grid(images, self.run_dir / "samples" / "latest.png")
        if self.logger is not None:
            self.logger.log_image(self.step, "samples", path)
        return path

    def evaluate(self) -> dict[str, float]:
        """G_ema's metrics (``eval``) now: logged as ``eval/*``; a checkpoint that scores best so
        far is written (if this step has none yet) and kept as ``checkpoints/best``."""
        ec = self.cfg.eval
        results, self.real_set = evaluate(self.G_ema, self.cfg, self.phase(), self.env,
                                          self.extractor, self.real_set)
        scalars = {f"eval/{k}": v for k, v in results.items()}
        self.logger.log_scalars(self.step, {**scalars, "kimg": self.images_seen / 1000})
        key = headline(ec)
        value, best = results[key], self.ckpt.best()
        better = best is None or best.get("metric") != key or (
            value < best["value"] if LOWER_IS_BETTER[key] else value > best["value"])
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
        """Whether every weight of G, D and G_ema (this rank's shards) is finite, on every
        rank."""
        tensors = []
        for model in (self.G, self.D, self.G_ema):
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
                log.error("step %d: G, D or G_ema holds NaN or inf: no checkpoint written (the "
                          "newest with finite weights is %s)", self.step,
                          self.ckpt.newest_finite())
            return None
        meta = {"step": self.step, "images_seen": self.images_seen,
                "phase": vars(self.phase()), "world_size": self.world,
                "format": self.strategy.checkpoint_format, "finite": True,
                "rng": _encode_rng(self.rng.get_state()), "config": config_to_dict(self.cfg)}
        rank_state = {"data": self.data.state_dict() if self.data is not None else None,
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
            self.rng.set_state(_decode_rng(meta["rng"]))
            if rank_state is not None and rank_state.get("data") is not None:
                self.data = self.data or self._open_data()
                self.data.load_state_dict(rank_state["data"])
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
            raise ResumeError(f"{path} holds G and D in {fmt} format (parallel.strategy="
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
