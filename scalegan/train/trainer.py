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
import json
import logging
import os
import resource
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from scalegan.config import Config, config_to_dict, save_config
from scalegan.data.pipeline import DataError, ImageStream, expand_shards
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
from scalegan.train.checkpoint import CheckpointManager, ModelState, ResumeError, read_meta
from scalegan.train.ema import ema_beta
from scalegan.train.objectives import MicroBatch, build_objective
from scalegan.train.preemption import StopSignal
from scalegan.train.schedule import Phase, phase_at

log = logging.getLogger(__name__)

POINT_SAMPLES = 2500
"""Samples drawn for each scatter plot and mode count of a 2-D run (VEEGAN / PacGAN: 2500)."""


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
        urls = expand_shards(dc.shards)
        if mc.condition == "label":
            self._check_classes(dc.shards)
        return ImageStream(urls, self.micro_batch, self.phase().resolution,
                           seed=self.cfg.train.seed, num_workers=dc.num_workers,
                           shuffle_buffer=dc.shuffle_buffer, xflip=dc.xflip,
                           label_key={"none": None, "label": "label",
                                      "embedding": "attributes"}[mc.condition],
                           pyramid=mc.stages if mc.arch == "stackgan" else 1)

    def _check_classes(self, shards: str) -> None:
        """A labelled pack lists its classes in index.json: they must fit model.num_classes."""
        index = Path(shards) / "index.json"
        if not index.is_file():
            return
        classes = json.loads(index.read_text()).get("classes")
        if classes is not None and len(classes) > self.cfg.model.num_classes:
            raise DataError(f"{index} lists {len(classes)} classes but model.num_classes="
                            f"{self.cfg.model.num_classes}: set model.num_classes={len(classes)}")

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
            real = scales if isinstance(batch.images, list) else scales[0]
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
        self.strategy.step("D")
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
        self.strategy.step("D")
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
        self.strategy.step("G")
        self.D.requires_grad_(True)
        return stats

    def ema_phase(self) -> None:
        tc = self.cfg.train
        beta = ema_beta(tc.batch_size, self.images_seen, tc.ema_halflife_kimg, tc.ema_rampup)
        self.strategy.update_ema(self.G_ema, beta)

    def train_step(self) -> dict[str, float]:
        """One optimizer step of D (and R1 when due) and G, then the EMA; returns scalars."""
        phase = self.phase()
        before = self.phase(self.images_seen - self.cfg.train.batch_size) if self.step else None
        self.strategy.begin_step(self.units_in_use(before), self.units_in_use(phase))
        self.data.set_resolution(phase.resolution)
        batches = self.next_micro_batches()
        stats = self.d_phase(batches, phase).values
        lc = self.cfg.loss
        if lc.r1_gamma > 0 and self.step % lc.r1_interval == 0:
            stats |= self.r1_phase(batches, phase).values
        stats |= self.g_phase(batches, phase).values
        self.images_seen += self.cfg.train.batch_size
        self.step += 1
        self.ema_phase()
        return {**stats, "resolution": phase.resolution, "alpha": phase.alpha}

    def train(self, max_steps: int | None = None) -> str:
        """Train until ``train.total_kimg`` (or ``max_steps`` more steps), resuming if possible.

        Returns ``"done"``, ``"max_steps"``, or ``"preempted"``: SIGUSR1 / SIGTERM arrived, the
        step in progress finished and every rank wrote a checkpoint.
        """
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
        with StopSignal() as stop:
            try:
                while self.images_seen < total and (max_steps is None or steps < max_steps):
                    prev_seen = self.images_seen
                    window.append(self.train_step())
                    steps += 1
                    if self.step % cfg.log.every_steps == 0:
                        dt = time.perf_counter() - t0
                        scalars = self._summarise(window,
                                                  (self.images_seen - seen0) / max(dt, 1e-9))
                        self.logger.log_scalars(self.step, scalars)
                        progress.update(self.images_seen, scalars)
                        window, t0, seen0 = [], time.perf_counter(), self.images_seen
                    else:
                        progress.update(self.images_seen)
                    if self._crossed(prev_seen, cfg.log.sample_every_kimg):
                        self.sample()
                    if self._crossed(prev_seen, cfg.checkpoint.every_kimg):
                        self.save()
                    if cfg.eval.every_kimg > 0 and self._crossed(prev_seen, cfg.eval.every_kimg):
                        self.evaluate()
                    if stop.agreed(self.device):  # a collective: every rank stops after this step
                        break
                preempted = stop.agreed(self.device)
                if steps and self.last_sample_step != self.step and not preempted:
                    self.sample()
                if steps and self.last_saved_step != self.step:
                    self.save()
            finally:
                progress.close()
        if preempted:
            if self.is_main:
                log.info("stopped by a signal after step %d (%.1f kimg); checkpoint written",
                         self.step, self.images_seen / 1000)
            return "preempted"
        return "done" if self.images_seen >= total else "max_steps"

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.data is not None:
            self.data.close()

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
                   alpha=window[-1]["alpha"], data_skipped=int(skipped))
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
            self.ckpt.mark_best(path, {"metric": key, "value": value, "step": self.step,
                                       "kimg": self.images_seen / 1000, **results})
        if self.is_main:
            log.info("eval at %.1f kimg: %s%s", self.images_seen / 1000,
                     ", ".join(f"{k} {v:.4g}" for k, v in results.items()
                               if not k.startswith(("num_", "real_"))),
                     " (best so far)" if better else "")
        return results

    def save(self) -> Path:
        meta = {"step": self.step, "images_seen": self.images_seen,
                "phase": vars(self.phase()), "world_size": self.world,
                "format": self.strategy.checkpoint_format,
                "rng": _encode_rng(self.rng.get_state()), "config": config_to_dict(self.cfg)}
        rank_state = {"data": self.data.state_dict() if self.data is not None else None,
                      "weights_crc32": self._weights_crc32()}
        path = self.ckpt.save(self.step, self.app_state(), meta, rank_state,
                              self.strategy.save_extra)
        self.last_saved_step = self.step
        if self.is_main:
            log.info("checkpoint %s", path)
        return path

    def resume(self, path: Path | None = None) -> bool:
        """Load ``path`` (default: the newest complete checkpoint); False if there is none."""
        path = path or self.ckpt.latest()
        if path is None:
            return False
        saved = read_meta(path)
        fmt, world = saved.get("format", "dcp"), saved["world_size"]
        if fmt == "deepspeed" and world != self.world:
            raise ResumeError(f"{path} was written by DeepSpeed at world size {world}; it resumes "
                              f"at that world size only, not at {self.world}")
        if fmt != self.strategy.checkpoint_format:
            raise ResumeError(f"{path} holds G and D in {fmt} format (parallel.strategy="
                              f"{saved['config']['parallel']['strategy']} at {world} ranks); this "
                              f"run ({self.strategy.name}, {self.world} rank(s)) reads "
                              f"{self.strategy.checkpoint_format}")
        meta, rank_state = self.ckpt.load(path, self.app_state(), self.strategy.load_extra)
        self.step, self.images_seen = int(meta["step"]), int(meta["images_seen"])
        self.rng.set_state(_decode_rng(meta["rng"]))
        if rank_state is not None and rank_state.get("data") is not None:
            self.data = self.data or self._open_data()
            self.data.load_state_dict(rank_state["data"])
        if self.is_main:
            log.info("resumed from %s at %.1f kimg (step %d)", path, self.images_seen / 1000,
                     self.step)
        return True

