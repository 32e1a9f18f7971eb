"""The noise-to-image pair shared by progressive, dcgan and mlp: G(z, res, alpha) -> images,
D(images, res, alpha) -> logits, the configured adversarial loss with WGAN-GP in the D phase, lazy
R1 and EMA of G."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalegan import losses
from scalegan.config import Config, ConfigError, ModelConfig
from scalegan.data.points import mixture
from scalegan.families._base import Family, PhaseSpec, Scalars, Services, Stream, full
from scalegan.metrics.modes import mode_stats
from scalegan.monitor.scatter import save_scatter
from scalegan.train.schedule import Phase

SAMPLE_CHUNK = 16
"""Images per generator call when drawing sample grids."""
POINT_SAMPLES = 2500
"""Samples drawn for each scatter plot and mode count of a 2-D run (VEEGAN / PacGAN: 2500)."""


@dataclass
class MicroBatch:
    real: torch.Tensor | list[torch.Tensor]
    """(B, C, R, R) real images in [-1, 1]; StackGAN: one per stage, smallest first."""
    z_d: torch.Tensor
    """(B, latent_dim) latents for the fakes D sees."""
    z_g: torch.Tensor
    """(B, latent_dim) latents for the fakes G is trained on."""
    cond: torch.Tensor | None = None
    """Conditional models: the samples' class ids (B,) or attribute vectors (B, E)."""
    wrong_cond: torch.Tensor | None = None
    """Conditional models: another condition per sample, for the mismatched (real, condition)
    pairs D learns to reject."""
    eps_d: torch.Tensor | None = None
    """condition=embedding: conditioning-augmentation noise (B, cond_dim) of the D phase's fakes."""
    eps_g: torch.Tensor | None = None
    """condition=embedding: conditioning-augmentation noise of the G phase's fakes."""
    noise: dict[str, torch.Tensor] | None = None
    """A D with dropout: its per-sample uniform draws for each of its calls ("real", "fake",
    "mix", "g"), drawn for the global batch."""


def r1_term(penalty: torch.Tensor, logits: list[torch.Tensor], gamma: float,
            interval: int) -> torch.Tensor:
    """Lazy R1's loss: gamma/2 * penalty scaled by the interval it stands for; "+ 0 * logits"
    keeps every D output in the graph, as data-parallel wrappers expect."""
    return penalty * (gamma / 2 * interval) + sum(x.float().mean() for x in logits) * 0


class NoiseToImage(Family):
    """Base of the families whose G maps latents (and maybe a condition) to images."""

    config_class = ModelConfig
    multi_stage = False
    """Whether G draws several stages (``generate --stages all``)."""

    def __init__(self, cfg: Config, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.sample_z = torch.randn(self.num_samples(), self.mc.latent_dim,
                                    generator=torch.Generator().manual_seed(
                                        cfg.train.seed + 31337))

    def num_samples(self) -> int:
        return self.cfg.log.sample_grid ** 2

    def latents(self, n: int) -> torch.Tensor:
        return self.svc.draw(torch.randn, n, self.mc.latent_dim)

    def real_images(self, batch) -> list[torch.Tensor]:
        """The batch's images on the device, one tensor per scale (grayscale models average
        RGB shards' channels)."""
        scales = batch.images if isinstance(batch.images, list) else [batch.images]
        if self.mc.img_channels == 1 and scales[0].ndim == 4 and scales[0].shape[1] == 3:
            scales = [x.mean(1, keepdim=True) for x in scales]
        return [x.to(self.svc.device) for x in scales]

    def images(self, nets: Mapping[str, nn.Module], z: torch.Tensor, cond: torch.Tensor | None,
               stage: Phase, stages: str = "final") -> torch.Tensor:
        """G's images for latents ``z`` (and conditions ``cond``) at ``stage``."""
        raise NotImplementedError

    def metric_images(self, nets: Mapping[str, nn.Module], z: torch.Tensor,
                      cond: torch.Tensor | None, stage: Phase,
                      seeds: torch.Tensor) -> torch.Tensor:
        """The images FID, KID and precision/recall measure: the final stage's for latents
        ``z``. ``seeds`` ``(N,)``: a per-image seed for whatever else a family draws per image
        (StyleGAN2's per-pixel noise), so that a metric repeats and is the same on any number
        of ranks."""
        return self.images(nets, z, cond, stage, stages="final")

    def sample_inputs(self) -> Any:
        return self.sample_z, None

    def samples(self, nets, inputs, stage: Phase) -> torch.Tensor:
        z, cond = inputs
        device = next(next(iter(nets.values())).parameters()).device
        return torch.cat([
            self.images(nets, zb.to(device),
                        None if cond is None else cond[i:i + SAMPLE_CHUNK].to(device), stage,
                        stages="all")
            for i, zb in zip(range(0, len(z), SAMPLE_CHUNK), z.split(SAMPLE_CHUNK),
                             strict=True)])

    def conditions(self, num: int, options: dict) -> torch.Tensor | None:
        """The condition of each generated image (ValueError naming the option when it does
        not fit the model): ``--label k`` for every image of a label-conditioned model, every
        class in turn without it."""
        mc = self.mc
        label, embedding = options.get("label"), options.get("embedding")
        condition = getattr(mc, "condition", "none")
        if condition == "none":
            if label is not None or embedding is not None:
                raise ValueError("--label / --embedding: this model is unconditional "
                                 "(model.condition=none)")
            return None
        if condition != "label":
            raise NotImplementedError(condition)
        if embedding is not None:
            raise ValueError("--embedding: this model is conditioned on class labels; use "
                             "--label")
        if label is None:
            return torch.arange(num) % mc.num_classes  # every class in turn
        if not 0 <= label < mc.num_classes:
            raise ValueError(f"--label {label} is out of range: the model has "
                             f"model.num_classes={mc.num_classes} (0 .. {mc.num_classes - 1})")
        return torch.full((num,), label, dtype=torch.int64)

    def generate(self, nets, num: int, seed: int, stage: Phase, options: dict) -> torch.Tensor:
        stages = options.get("stages") or "final"
        if stages == "all" and not self.multi_stage:
            raise ValueError(f"--stages all: model.arch={self.arch} has a single stage")
        batch = options.get("batch", 32)
        cond = self.conditions(num, options)
        z = torch.randn(num, self.mc.latent_dim, generator=torch.Generator().manual_seed(seed))
        return torch.cat([
            self.images(nets, zb, None if cond is None else cond[i:i + batch], stage,
                        stages=stages)
            for i, zb in zip(range(0, num, batch), z.split(batch), strict=True)])


class ImageGAN(NoiseToImage):
    """G(z, res, alpha[, cond]) -> images, D(images, res, alpha[, cond]) -> logits (progressive,
    dcgan, mlp): the loss menu of ``loss.kind``, WGAN-GP in the D phase, the original WGAN's
    weight clipping, lazy R1 and R2 in one regularisation phase, ``train.d_steps`` D updates per
    G update, and class conditions (``model.condition=label``)."""

    loss_menu = ("loss.r2_gamma", "train.d_steps")

    def phases(self) -> list[PhaseSpec]:
        lc = self.cfg.loss
        gp = lc.kind == "wgan_gp" and lc.gp_weight > 0
        out = [PhaseSpec("D", ("D",), self.d_loss, frozen=("G",),
                         input_gradient="D" if gp else None)]
        terms = [name for name, gamma in (("R1", lc.r1_gamma), ("R2", lc.r2_gamma)) if gamma > 0]
        if terms:
            out.append(PhaseSpec("+".join(terms), ("D",), self.reg_loss,
                                 interval=lc.r1_interval, input_gradient="D", lazy=True))
        n = self.d_steps()
        out.append(PhaseSpec("G", ("G",), self.g_loss, frozen=("D",), interval=n, offset=n - 1))
        return out

    def clipped(self) -> dict[str, float]:
        return {"D": self.cfg.loss.clip} if self.cfg.loss.kind == "wgan" else {}

    # -------------------------------------------------------------------------------- inputs

    @property
    def labelled(self) -> bool:
        return self.mc.condition == "label"

    def streams(self) -> dict[str, Stream]:
        dc, mc = self.cfg.data, self.mc
        if not self.labelled:
            return super().streams()
        return {"data": Stream(dc.shards, label_key="label",
                               check=dict(condition="label", num_classes=mc.num_classes))}

    def d_noise(self, n: int) -> torch.Tensor | None:
        """Per-sample noise D draws on (dropout masks) for one D call on ``n`` images; None
        for a deterministic D."""
        return None

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> MicroBatch:
        batch = batches["data"]
        real = self.real_images(batch)[0]
        n = real.shape[0]
        mb = MicroBatch(real, self.latents(n), self.latents(n))
        if self.labelled:  # fakes take the batch's labels: the data's class frequencies
            mb.cond = batch.labels.to(svc.device)
        first = self.d_noise(n)
        if first is not None:
            mb.noise = {"real": first, **{k: self.d_noise(n) for k in ("fake", "mix", "g")}}
        return mb

    def D(self, nets: Mapping[str, Callable], x: torch.Tensor, mb: MicroBatch, stage: Phase,
          which: str) -> torch.Tensor:
        """D's logits of ``x`` as D sees it (augmented, ``augment.*``; the micro-batch's
        condition; the noise of call ``which``)."""
        if self.augments:
            x = self.svc.augment(x)
        kwargs = {}
        if mb.cond is not None:
            kwargs["cond"] = mb.cond
        if mb.noise is not None:
            kwargs["noise"] = mb.noise[which]
        return nets["D"](x, stage.resolution, stage.alpha, **kwargs)

    def G(self, nets: Mapping[str, Callable], z: torch.Tensor, cond: torch.Tensor | None,
          stage: Phase) -> torch.Tensor:
        if cond is None:
            return nets["G"](z, stage.resolution, stage.alpha)
        return nets["G"](z, stage.resolution, stage.alpha, cond=cond)

    # -------------------------------------------------------------------------------- losses

    def d_loss(self, nets: Mapping[str, Callable], mb: MicroBatch,
               stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """``loss.kind``'s D loss on real images and G's fakes of ``mb.z_d`` (+ WGAN-GP on
        interpolates mixed by weights drawn for the global batch)."""
        lc = self.cfg.loss
        with torch.no_grad(), self.svc.autocast():
            fake = self.G(nets, mb.z_d, mb.cond, stage)
        with self.svc.autocast():
            real_logits = self.D(nets, mb.real, mb, stage, "real")
            fake_logits = self.D(nets, fake, mb, stage, "fake")
        loss = losses.d_loss(lc.kind, real_logits, fake_logits, drift=lc.drift)
        scalars = {"loss/D": loss, **self.d_outputs(real_logits, fake_logits)}
        if lc.kind == "wgan_gp" and lc.gp_weight > 0:
            mix = self.svc.draw(torch.rand, mb.z_d.shape[0])
            with self.svc.autocast():
                gp = losses.gradient_penalty(lambda x: self.D(nets, x, mb, stage, "mix"),
                                             mb.real, fake, mix).mean()
            loss = loss + lc.gp_weight * gp
            scalars["loss/gp"] = gp
        return loss, scalars

    def d_outputs(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> Scalars:
        """A D update's over-fitting signals: D's mean output on the reals (``d/real``) and
        the fakes (``d/fake``), and r_t = mean sign of the real logits (``aug/rt``), whose
        counts also go to ADA's control of p."""
        if not self.augments:
            return {}
        self.svc.observe_real(real_logits)
        real = full(real_logits.detach()).flatten()
        return {"d/real": real.mean(), "d/fake": full(fake_logits.detach()).mean(),
                "aug/rt": torch.sign(real).mean()}

    def real_logits(self, nets, images: torch.Tensor, stage: Phase) -> torch.Tensor | None:
        if not self.augments or self.labelled:
            return None  # no label per held-out image
        return nets["D"](images, stage.resolution, stage.alpha)

    def reg_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Lazy R1 (gamma/2 ||grad D(real)||^2) and R2 (the same on G's fakes of ``mb.z_d``),
        scaled by the interval they stand for."""
        lc = self.cfg.loss
        total, logits, scalars = 0.0, [], {}
        for key, gamma in (("r1", lc.r1_gamma), ("r2", lc.r2_gamma)):
            if gamma <= 0:
                continue
            if key == "r1":
                x = mb.real.detach()
            else:
                with torch.no_grad(), self.svc.autocast():
                    x = self.G(nets, mb.z_d, mb.cond, stage).detach()
            x = x.requires_grad_(True)
            with self.svc.autocast():
                out = self.D(nets, x, mb, stage, "real" if key == "r1" else "fake")
            penalty = losses.r1_penalty(out, x).mean()
            total = total + penalty * (gamma / 2 * lc.r1_interval)
            logits.append(out)
            scalars[f"loss/{key}"] = penalty
        # "+ 0 * logits": every D output stays in the graph, as data-parallel wrappers expect
        return total + sum(x.float().mean() for x in logits) * 0, scalars

    def g_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """G's adversarial loss through a frozen D (relativistic kinds pair each fake with a
        real image's logit)."""
        kind = self.cfg.loss.kind
        real_logits = None
        with self.svc.autocast():
            fake_logits = self.D(nets, self.G(nets, mb.z_g, mb.cond, stage), mb, stage, "g")
            if losses.needs_real_logits(kind):
                with torch.no_grad():
                    real_logits = self.D(nets, mb.real, mb, stage, "real")
        loss = losses.g_loss(kind, fake_logits, real_logits)
        return loss, {"loss/G": loss}

    # ------------------------------------------------------------------------------ sampling

    def sample_inputs(self) -> Any:
        if not self.labelled:
            return self.sample_z, None
        # one class per row of the grid, every class in turn
        n, cols = len(self.sample_z), self.grid_side()
        return self.sample_z, (torch.arange(n) // cols) % self.mc.num_classes

    def grid_side(self) -> int:
        return self.cfg.log.sample_grid

    def images(self, nets, z, cond, stage: Phase, stages: str = "final") -> torch.Tensor:
        return self.G(nets, z, cond, stage)


class PointsOrImages(ImageGAN):
    """A single-D family on 2-D points (data.source=points) or on images (shards): its
    ``networks(mc, points)`` build either kind; its 2-D runs draw scatter plots over the
    mixture's modes and log modes/covered and modes/high_quality with each of them."""

    point_data = None

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.data.source == "points" and cfg.eval.every_kimg != 0:
            raise ConfigError(f"eval.every_kimg={cfg.eval.every_kimg!r} is not allowed: expected "
                              f"0 with model.arch={cfg.model.arch} on data.source=points (2-D "
                              f"runs log modes/covered and modes/high_quality with each sample "
                              f"instead)")

    def make_networks(self):
        return self.networks(self.mc, points=self.on_points)

    def num_samples(self) -> int:
        return POINT_SAMPLES if self.on_points else super().num_samples()

    def describe(self, nets) -> str:
        text = super().describe(nets)
        if not self.on_points:
            return text
        return text.replace(f"{self.mc.resolution}x{self.mc.resolution}", "2-D points")

    def streams(self) -> dict[str, Stream]:
        if not self.on_points:
            return super().streams()
        return {"data": Stream("", key="data.points", points=self.cfg.data.points)}

    def write_samples(self, images, paths: list[Path]) -> dict[str, float]:
        if not self.on_points:
            return super().write_samples(images, paths)
        centers, std = mixture(self.cfg.data.points)
        stats = mode_stats(images, centers, std)
        for p in paths:
            save_scatter(images, p, centers=centers, radius=3 * std)
        return {"modes/covered": stats["modes"], "modes/high_quality": stats["high_quality"]}
