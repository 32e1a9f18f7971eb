"""``model.arch=stackgan``: StackGAN-v2 (Zhang et al. 2018): one image and one D per stage
(base_resolution, twice that, ... up to resolution), trained jointly; optionally conditioned on a
class label or an attribute vector (conditioning augmentation with its KL term)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from scalegan import losses
from scalegan.config import ConfigError
from scalegan.families._base import PhaseSpec, Scalars, Services, Stream
from scalegan.families._image import MicroBatch, NoiseToImage, r1_term
from scalegan.models.stackgan import StackDiscriminator, StackGenerator
from scalegan.train.schedule import Phase

LABEL_KEYS = {"none": None, "label": "label", "embedding": "attributes"}
"""The JSON field of each sample a condition is read from."""


class StackGAN(NoiseToImage):
    """G(z, cond, eps) -> (images per stage, mu, logvar), D(images, cond) -> logits per stage."""

    arch = "stackgan"
    multi_stage = True

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.conditional = self.mc.condition != "none"
        self.sample_cond = self._sample_conditions(None)

    @classmethod
    def check(cls, cfg) -> None:
        # StackGAN's joint loss is the logistic (non-saturating) one of every stage
        if cfg.loss.kind != "nonsaturating":
            raise ConfigError(f"loss.kind={cfg.loss.kind!r} is not allowed: expected "
                              f"nonsaturating with model.arch=stackgan")

    @classmethod
    def networks(cls, mc):
        cond = dict(condition=mc.condition, cond_dim=mc.cond_dim, num_classes=mc.num_classes,
                    embedding_dim=mc.embedding_dim, base_resolution=mc.base_resolution)
        G = StackGenerator(num_stages=mc.stages, latent_dim=mc.latent_dim, gf_dim=mc.gf_dim,
                           img_channels=mc.img_channels, ops_impl=mc.ops_impl, **cond)
        D = StackDiscriminator(num_stages=mc.stages, img_channels=mc.img_channels,
                               df_dim=mc.df_dim, **cond)
        return {"G": G, "D": D}

    def phases(self) -> list[PhaseSpec]:
        lc = self.cfg.loss
        out = [PhaseSpec("D", ("D",), self.d_loss, frozen=("G",))]
        if lc.r1_gamma > 0:
            out.append(PhaseSpec("R1", ("D",), self.r1_loss, interval=lc.r1_interval,
                                 input_gradient="D", lazy=True))
        out.append(PhaseSpec("G", ("G",), self.g_loss, frozen=("D",)))
        return out

    def streams(self) -> dict[str, Stream]:
        mc, dc = self.mc, self.cfg.data
        return {"data": Stream(dc.shards, label_key=LABEL_KEYS[mc.condition], pyramid=mc.stages,
                               check=dict(condition=mc.condition, embedding_dim=mc.embedding_dim,
                                          num_classes=mc.num_classes))}

    # ------------------------------------------------------------------------------ micro-batch

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> MicroBatch:
        batch, mc = batches["data"], self.mc
        real = self.real_images(batch)  # one image per stage, even with a single stage
        n = real[0].shape[0]
        mb = MicroBatch(real, self.latents(n), self.latents(n))
        if self.conditional:
            mb.cond = batch.labels.to(svc.device)
            mb.wrong_cond = self.mismatched_conditions(mb.cond)
            if self.sample_cond is None:
                self.sample_cond = self._sample_conditions(mb.cond)
        if mc.condition == "embedding":
            mb.eps_d = svc.draw(torch.randn, n, mc.cond_dim)
            mb.eps_g = svc.draw(torch.randn, n, mc.cond_dim)
        return mb

    def mismatched_conditions(self, cond: torch.Tensor) -> torch.Tensor:
        """Per sample another condition, for the (real image, wrong condition) pairs: a random
        other class, or the next sample's vector in the global micro-batch. Both are the same
        whatever the number of ranks."""
        n, svc = cond.shape[0], self.svc
        if not cond.is_floating_point():  # class ids: shift by 1 .. num_classes - 1
            k = self.mc.num_classes
            shift = svc.draw(lambda *s, generator: torch.randint(1, k, s, generator=generator), n)
            return (cond + shift) % k
        full = svc.gather(cond)
        index = (torch.arange(n, device=cond.device) + svc.rank * n + 1) % full.shape[0]
        return full[index]

    def _sample_conditions(self, seen: torch.Tensor | None) -> torch.Tensor | None:
        """Conditions of the sample grids: classes in turn (a row per class for grids as wide
        as the class count), or the attribute vectors of the first batch, repeated."""
        mc, n = self.mc, self.cfg.log.sample_grid ** 2
        if mc.condition == "label":
            return torch.arange(n) % mc.num_classes
        if mc.condition == "embedding" and seen is not None:
            return seen.detach().cpu()[torch.arange(n) % seen.shape[0]]
        return None

    # ----------------------------------------------------------------------------------- losses

    def d_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Every stage D's logistic loss on (real, fake) and, when conditional, on the
        (real image, wrong condition) pairs."""
        G, D = nets["G"], nets["D"]
        with torch.no_grad(), self.svc.autocast():
            fake, _, _ = G(mb.z_d, mb.cond, mb.eps_d)
        with self.svc.autocast():
            real_u, real_c = D(mb.real, mb.cond)
            fake_u, fake_c = D(fake, mb.cond)
            wrong_u, wrong_c = (D(mb.real, mb.wrong_cond) if self.conditional
                                else (None, None))
        loss = losses.stack_d_loss(real_u, fake_u, real_c, fake_c, wrong_u, wrong_c,
                                   uncond_weight=self.cfg.loss.uncond_weight)
        return loss, {"loss/D": loss}

    def r1_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """R1 of the sum of every stage's logits w.r.t. every stage's real image."""
        real = [x.detach().requires_grad_(True) for x in mb.real]
        with self.svc.autocast():
            uncond, cond = nets["D"](real, mb.cond)
        logits = uncond + (cond or [])
        penalty = losses.r1_penalty(logits, real).mean()
        lc = self.cfg.loss
        return r1_term(penalty, logits, lc.r1_gamma, lc.r1_interval), {"loss/r1": penalty}

    def g_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Every stage's non-saturating loss, colour consistency between adjacent stages, and
        the KL term of conditioning augmentation."""
        lc = self.cfg.loss
        with self.svc.autocast():
            images, mu, logvar = nets["G"](mb.z_g, mb.cond, mb.eps_g)
            uncond, cond = nets["D"](images, mb.cond)
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

    # --------------------------------------------------------------------------------- sampling

    def sample_inputs(self):
        if self.conditional and self.sample_cond is None:
            return None  # no data seen yet: nothing to condition on
        return self.sample_z, self.sample_cond

    def images(self, nets, z, cond, stage: Phase, stages: str = "final") -> torch.Tensor:
        """Every stage side by side, each enlarged (nearest) to the last stage's size,
        (N, C, R, S * R); or ``stages="final"``: the last stage only. The conditioning
        augmentation shows its mean (eps = 0)."""
        G = nets["G"]
        eps = None
        if cond is not None and cond.is_floating_point():
            eps = torch.zeros(z.shape[0], G.cond_dim, device=z.device)
        images, _, _ = G(z, cond, eps)
        if stages == "final":
            return images[-1]
        size = images[-1].shape[-1]
        return torch.cat([F.interpolate(x, size=size, mode="nearest") for x in images], dim=3)

    def conditions(self, num: int, options: dict) -> torch.Tensor | None:
        mc = self.mc
        label, embedding = options.get("label"), options.get("embedding")
        if mc.condition != "embedding":
            return super().conditions(num, options)
        if label is not None:
            raise ValueError("--label: this model is conditioned on vectors; use --embedding")
        if embedding is None or len(embedding) != mc.embedding_dim:
            got = "none" if embedding is None else f"{len(embedding)} values"
            raise ValueError(f"--embedding needs model.embedding_dim={mc.embedding_dim} "
                             f"comma-separated values, got {got}")
        return torch.tensor(embedding, dtype=torch.float32).expand(num, -1)

FAMILY = StackGAN
