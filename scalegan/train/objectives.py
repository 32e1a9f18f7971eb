"""What G and D compute in each phase of a step, per model family.

The trainer owns the optimisation (which model is trainable, backward, optimizer steps, the
strategy); an objective owns the forward passes and the losses of one family:

* ``SingleScale``: one image per sample (progressive, dcgan): the configured adversarial loss,
  WGAN-GP in the D phase, R1.
* ``StackGAN``: one image per stage and one D per stage (StackGAN-v2): the joint logistic loss over
  stages with its conditional, unconditional and wrong-pair terms, colour consistency between
  adjacent stages and the conditioning augmentation's KL term in G's loss, R1 over every stage.

Each loss method returns ``(loss, scalars)``: the micro-batch's loss, to be divided by the number
of micro-batches, and detached values for the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scalegan import losses
from scalegan.config import Config
from scalegan.train.schedule import Phase

Scalars = dict[str, torch.Tensor]


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


class SingleScale:
    """G(z, res, alpha) -> images, D(images, res, alpha) -> logits: progressive and DCGAN."""

    def __init__(self, cfg: Config, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.loss, self.autocast = cfg.loss, autocast
        self.gp_weight = cfg.loss.gp_weight if cfg.loss.kind == "wgan_gp" else 0.0

    @property
    def d_needs_input_gradient(self) -> bool:
        """Whether the D phase differentiates D w.r.t. its input (WGAN-GP)."""
        return self.gp_weight > 0

    def fake(self, G: nn.Module, mb: MicroBatch, phase: Phase) -> torch.Tensor:
        """The fakes the D phase shows D (from ``mb.z_d``)."""
        with self.autocast():
            return G(mb.z_d, phase.resolution, phase.alpha)

    def d_loss(self, D: Callable, mb: MicroBatch, fake: torch.Tensor, phase: Phase,
               mix: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Scalars]:
        """Adversarial D loss (+ WGAN-GP on interpolates weighted by ``mix()``)."""
        res, alpha = phase.resolution, phase.alpha
        with self.autocast():
            real_logits = D(mb.real, res, alpha)
            fake_logits = D(fake, res, alpha)
        loss = losses.d_loss(self.loss.kind, real_logits, fake_logits, drift=self.loss.drift)
        scalars = {"loss/D": loss}
        if self.gp_weight > 0:
            with self.autocast():
                gp = losses.gradient_penalty(lambda x: D(x, res, alpha), mb.real, fake,
                                             mix()).mean()
            loss = loss + self.gp_weight * gp
            scalars["loss/gp"] = gp
        return loss, scalars

    def r1_loss(self, D: Callable, mb: MicroBatch, phase: Phase) -> tuple[torch.Tensor, Scalars]:
        """Lazy R1: gamma/2 * ||grad D(real)||^2, scaled by the interval it stands for."""
        real = mb.real.detach().requires_grad_(True)
        with self.autocast():
            real_logits = D(real, phase.resolution, phase.alpha)
        penalty = losses.r1_penalty(real_logits, real).mean()
        # "+ 0 * logits" keeps every D output in the graph, as data-parallel wrappers expect.
        loss = (penalty * (self.loss.r1_gamma / 2 * self.loss.r1_interval)
                + real_logits.float().mean() * 0)
        return loss, {"loss/r1": penalty}

    def g_loss(self, G: Callable, D: nn.Module, mb: MicroBatch,
               phase: Phase) -> tuple[torch.Tensor, Scalars]:
        """G's adversarial loss through a frozen D."""
        with self.autocast():
            fake_logits = D(G(mb.z_g, phase.resolution, phase.alpha), phase.resolution,
                            phase.alpha)
        loss = losses.g_loss(self.loss.kind, fake_logits)
        return loss, {"loss/G": loss}

    def display(self, G: nn.Module, z: torch.Tensor, cond: torch.Tensor | None,
                phase: Phase) -> torch.Tensor:
        """Images to show for latents ``z``: (N, C, R, R)."""
        return G(z, phase.resolution, phase.alpha)


class StackGAN:
    """G(z, cond, eps) -> (images per stage, mu, logvar), D(images, cond) -> logits per stage."""

    def __init__(self, cfg: Config, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.loss, self.autocast = cfg.loss, autocast
        self.conditional = cfg.model.condition != "none"

    d_needs_input_gradient = False

    def fake(self, G: nn.Module, mb: MicroBatch, phase: Phase) -> list[torch.Tensor]:
        """The fakes the D phase shows D: one image per stage."""
        with self.autocast():
            images, _, _ = G(mb.z_d, mb.cond, mb.eps_d)
        return images

    def d_loss(self, D: Callable, mb: MicroBatch, fake: list[torch.Tensor], phase: Phase,
               mix: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Scalars]:
        """Every stage D's logistic loss on (real, fake) and, when conditional, on the
        (real image, wrong condition) pairs."""
        with self.autocast():
            real_u, real_c = D(mb.real, mb.cond)
            fake_u, fake_c = D(fake, mb.cond)
            wrong_u, wrong_c = (D(mb.real, mb.wrong_cond) if self.conditional
                                else (None, None))
        loss = losses.stack_d_loss(real_u, fake_u, real_c, fake_c, wrong_u, wrong_c,
                                   uncond_weight=self.loss.uncond_weight)
        return loss, {"loss/D": loss}

    def r1_loss(self, D: Callable, mb: MicroBatch, phase: Phase) -> tuple[torch.Tensor, Scalars]:
        """R1 of the sum of every stage's logits w.r.t. every stage's real image."""
        real = [x.detach().requires_grad_(True) for x in mb.real]
        with self.autocast():
            uncond, cond = D(real, mb.cond)
        logits = uncond + (cond or [])
        penalty = losses.r1_penalty(logits, real).mean()
        loss = (penalty * (self.loss.r1_gamma / 2 * self.loss.r1_interval)
                + sum(x.float().mean() for x in logits) * 0)
        return loss, {"loss/r1": penalty}

    def g_loss(self, G: Callable, D: nn.Module, mb: MicroBatch,
               phase: Phase) -> tuple[torch.Tensor, Scalars]:
        """Every stage's non-saturating loss, colour consistency between adjacent stages, and
        the KL term of conditioning augmentation."""
        lc = self.loss
        with self.autocast():
            images, mu, logvar = G(mb.z_g, mb.cond, mb.eps_g)
            uncond, cond = D(images, mb.cond)
        adversarial = losses.stack_g_loss(uncond, cond, uncond_weight=lc.uncond_weight)
        loss, scalars = adversarial, {"loss/G": adversarial}
        if lc.color_weight > 0 and len(images) > 1:
            color = sum(losses.color_consistency(images[i - 1], images[i])
                        for i in range(1, len(images)))
            loss = loss + lc.color_weight * color
            scalars["loss/color"] = color
        if mu is not None:
            kl = losses.kl_divergence(mu.float(), logvar.float())
            loss = loss + lc.kl_weight * kl
            scalars["loss/kl"] = kl
        return loss, scalars

    def display(self, G: nn.Module, z: torch.Tensor, cond: torch.Tensor | None,
                phase: Phase, stages: str = "all") -> torch.Tensor:
        """Images to show: every stage side by side, each enlarged (nearest) to the last stage's
        size, (N, C, R, S * R); or ``stages="final"``: the last stage only. The conditioning
        augmentation shows its mean (eps = 0)."""
        eps = None
        if cond is not None and cond.is_floating_point():
            eps = torch.zeros(z.shape[0], G.cond_dim, device=z.device)
        images, _, _ = G(z, cond, eps)
        if stages == "final":
            return images[-1]
        size = images[-1].shape[-1]
        return torch.cat([F.interpolate(x, size=size, mode="nearest") for x in images], dim=3)


def build_objective(cfg: Config, autocast) -> SingleScale | StackGAN:
    return (StackGAN if cfg.model.arch == "stackgan" else SingleScale)(cfg, autocast)
