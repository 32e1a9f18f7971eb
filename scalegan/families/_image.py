"""The noise-to-image pair shared by progressive, dcgan and mlp: G(z, res, alpha) -> images,
D(images, res, alpha) -> logits, the configured adversarial loss with WGAN-GP in the D phase, lazy
R1 and EMA of G."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalegan import losses
from scalegan.config import Config, ModelConfig
from scalegan.families._base import Family, PhaseSpec, Scalars, Services
from scalegan.train.schedule import Phase

SAMPLE_CHUNK = 16
"""Images per generator call when drawing sample grids."""


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
        not fit the model)."""
        if options.get("label") is not None or options.get("embedding") is not None:
            raise ValueError("--label / --embedding: this model is unconditional "
                             "(model.condition=none)")
        return None

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
    """G(z, res, alpha) -> images, D(images, res, alpha) -> logits (progressive, dcgan, mlp)."""

    def phases(self) -> list[PhaseSpec]:
        lc = self.cfg.loss
        gp = lc.kind == "wgan_gp" and lc.gp_weight > 0
        out = [PhaseSpec("D", ("D",), self.d_loss, frozen=("G",),
                         input_gradient="D" if gp else None)]
        if lc.r1_gamma > 0:
            out.append(PhaseSpec("R1", ("D",), self.r1_loss, interval=lc.r1_interval,
                                 input_gradient="D", lazy=True))
        out.append(PhaseSpec("G", ("G",), self.g_loss, frozen=("D",)))
        return out

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> MicroBatch:
        real = self.real_images(batches["data"])[0]
        n = real.shape[0]
        return MicroBatch(real, self.latents(n), self.latents(n))

    def d_loss(self, nets: Mapping[str, Callable], mb: MicroBatch,
               stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Adversarial D loss on real images and G's fakes of ``mb.z_d`` (+ WGAN-GP on
        interpolates mixed by weights drawn for the global batch)."""
        G, D, lc = nets["G"], nets["D"], self.cfg.loss
        res, alpha = stage.resolution, stage.alpha
        with torch.no_grad(), self.svc.autocast():
            fake = G(mb.z_d, res, alpha)
        with self.svc.autocast():
            real_logits = D(mb.real, res, alpha)
            fake_logits = D(fake, res, alpha)
        loss = losses.d_loss(lc.kind, real_logits, fake_logits, drift=lc.drift)
        scalars = {"loss/D": loss}
        if lc.kind == "wgan_gp" and lc.gp_weight > 0:
            mix = self.svc.draw(torch.rand, mb.z_d.shape[0])
            with self.svc.autocast():
                gp = losses.gradient_penalty(lambda x: D(x, res, alpha), mb.real, fake,
                                             mix).mean()
            loss = loss + lc.gp_weight * gp
            scalars["loss/gp"] = gp
        return loss, scalars

    def r1_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Lazy R1: gamma/2 * ||grad D(real)||^2, scaled by the interval it stands for."""
        real = mb.real.detach().requires_grad_(True)
        with self.svc.autocast():
            real_logits = nets["D"](real, stage.resolution, stage.alpha)
        penalty = losses.r1_penalty(real_logits, real).mean()
        lc = self.cfg.loss
        return r1_term(penalty, [real_logits], lc.r1_gamma, lc.r1_interval), {"loss/r1": penalty}

    def g_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """G's adversarial loss through a frozen D."""
        res, alpha = stage.resolution, stage.alpha
        with self.svc.autocast():
            fake_logits = nets["D"](nets["G"](mb.z_g, res, alpha), res, alpha)
        loss = losses.g_loss(self.cfg.loss.kind, fake_logits)
        return loss, {"loss/G": loss}

    def images(self, nets, z, cond, stage: Phase, stages: str = "final") -> torch.Tensor:
        return nets["G"](z, stage.resolution, stage.alpha)
