"""``model.arch=mrgan``: the mode-regularised GAN (Che et al. 2016, "Mode Regularized
Generative Adversarial Networks"), its regularised single-D model (not the two-D MDGAN).

Three networks: G, D and an encoder E: x -> z. D is the loss menu's one D on real samples
against G(z), trained by the dcgan and mlp families' phases (``loss.kind``, WGAN-GP, lazy R1 and
R2, ``train.d_steps``). G's loss adds two regularisers on the micro-batch's real samples x and
their reconstructions G(E(x)):

    L_G = adv(G(z)) + lambda_1 * ||x - G(E(x))||^2 + lambda_2 * adv(G(E(x)))

with adv the loss menu's G loss of ``loss.kind``:

* the geometric regulariser ``d(x, G(E(x)))``, the squared Euclidean distance summed over a
  sample's values (the paper's experiments' choice of d), weight lambda_1
  (``model.geometric_weight``);
* the mode regulariser, G's adversarial loss (``loss.kind``'s) on the reconstructions, weight
  lambda_2 (``model.mode_weight``): with the default non-saturating loss, -log D(G(E(x))).

E minimises the paper's T_E = lambda_1 d + lambda_2 mode. It is trained jointly with G in the G
phase, on L_G: the adversarial term of G(z) does not depend on E, so E's gradient of L_G is
exactly that of T_E, and one joint update equals the paper's G and E updates on the same
networks (the paper gives the two objectives, not an order between them).

The sign of the mode term. The paper's equations write it "+ lambda_2 log D(G(E(x)))" in both
T_G and T_E, which are minimised, next to G's adversarial term written "- log D(G(z))". With D
the probability of "real", minimising +log D(G(E(x))) would teach G and E to make the
reconstructions of real samples look fake, against the regulariser's stated purpose: to pull
G(E(x)) for x near a missed mode towards that mode, i.e. towards where D scores "real", so that
G is penalised for missing it. We follow the purpose, not the printed sign: the mode term is G's
own adversarial loss on the reconstructions (-log D, the non-saturating form, like G's main
term). The authors' code was not at hand to check it against; a public re-implementation
copies the literal "+". Measured on the 5x5 grid (``configs/grid25_mrgan.yaml``, seed 0, 8000
steps; modes covered and high-quality share of G_ema's samples): this sign 25/25 and 90%; the
literal "+ log D" 17/25 and 79%, below the plain GAN (``configs/grid25_mlp.yaml`` without
minibatch discrimination: 21/25 and 90%); without the mode term (lambda_2 = 0) 22/25 and 92%,
without the geometric term (lambda_1 = 0) 22/25 and 86%.

On 2-D points (``data.source=points``) G and D are the mlp family's MLPs (plain: no minibatch
discrimination) and E an MLP from 2 to ``latent_dim``; samples are scatter plots logged with
``modes/covered`` and ``modes/high_quality``. On images (``data.source=shards``) G has DCGAN's
layout (pixel norm in place of BatchNorm), D and E are DCGAN's discriminator body with a linear
layer to one logit and to ``latent_dim``.

Departures, and why: no BatchNorm (a sample's output would depend on the other samples of its
rank, so a sharded run would not equal one process); Adam with the run's ``optim`` settings;
G's weights are averaged for sampling (G_ema), as the other noise-to-image families'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from scalegan import losses
from scalegan.config import _check
from scalegan.families._base import PhaseSpec, Scalars, full
from scalegan.families._image import MicroBatch
from scalegan.families.ebgan import EitherSource, check_model_fields
from scalegan.models.ebgan import ConvEncoder, ConvGenerator, conv_widths
from scalegan.models.mlp import MLPDiscriminator, MLPGenerator
from scalegan.models.mrgan import ConvDiscriminator, MLPEncoder
from scalegan.train.schedule import Phase


@dataclass
class MRGANConfig:
    arch: Literal["mrgan"] = "mrgan"
    """The mode-regularised GAN: G, D and an encoder E: x -> z."""
    resolution: int = 64
    """Images: side in pixels, a power of two from 8 to 1024."""
    img_channels: int = 3
    """Images: channels (1 or 3)."""
    latent_dim: int = 100
    """Size of z: G's input, drawn from N(0, I), and E's output."""
    channel_base: int = 2048
    """Images: feature maps of the layers working at side r are
    min(channel_base // r, channel_max) in G, D and E (2048 / 512: DCGAN's 64, 128, 256, 512
    from 32x32 down to 4x4)."""
    channel_max: int = 512
    """Images: upper bound on the feature maps of any layer."""
    mlp_hidden: int = 128
    """Points: units of each hidden layer of G, D and E."""
    mlp_layers: int = 3
    """Points: hidden layers of G, of D and of E."""
    geometric_weight: float = 0.2
    """lambda_1: weight of the geometric regulariser ||x - G(E(x))||^2 in G's and E's loss."""
    mode_weight: float = 0.4
    """lambda_2: weight of the mode regulariser, G's adversarial loss on G(E(x)), in G's and
    E's loss."""

    def __post_init__(self) -> None:
        _check(self.arch == "mrgan", "model.arch", self.arch, "mrgan")
        check_model_fields(self)
        for name in ("geometric_weight", "mode_weight"):
            _check(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), ">= 0")


class MRGAN(EitherSource):
    arch = "mrgan"
    config_class = MRGANConfig
    loss_menu = ("loss.r2_gamma", "train.d_steps")
    lr_role = {"G": "g", "D": "d", "E": "g"}

    @classmethod
    def networks(cls, mc, points: bool = True):
        if points:
            return {"G": MLPGenerator(mc.latent_dim, out_dim=2, hidden=mc.mlp_hidden,
                                      layers=mc.mlp_layers),
                    "D": MLPDiscriminator(in_dim=2, hidden=mc.mlp_hidden, layers=mc.mlp_layers),
                    "E": MLPEncoder(2, mc.latent_dim, mc.mlp_hidden, mc.mlp_layers)}
        widths = conv_widths(mc.resolution, mc.channel_base, mc.channel_max)
        return {"G": ConvGenerator(mc.latent_dim, mc.img_channels, mc.resolution, widths),
                "D": ConvDiscriminator(mc.img_channels, mc.resolution, widths),
                "E": ConvEncoder(mc.img_channels, mc.resolution, mc.latent_dim, widths)}

    def phases(self) -> list[PhaseSpec]:
        """The loss menu's phases, G's training E with it."""
        return [dataclasses.replace(spec, trains=("G", "E")) if spec.name == "G" else spec
                for spec in super().phases()]

    def g_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """G's adversarial loss on G(``mb.z_g``), plus lambda_1 ||x - G(E(x))||^2 and lambda_2
        times the adversarial loss of G(E(x)) on the micro-batch's real samples x (batch
        means). Relativistic kinds pair each fake, and each reconstruction, with a real sample's
        logit (taken without gradient), as the loss menu's G loss does.

        G and D each run once, on the fakes and the reconstructions together (and the real
        samples, for a relativistic loss): a frozen network called twice in one phase is left
        with parameters ZeRO-3 cannot release."""
        mc, kind = self.mc, self.cfg.loss.kind
        res, alpha = stage.resolution, stage.alpha
        n = mb.z_g.shape[0]
        relativistic = losses.needs_real_logits(kind)
        with self.svc.autocast():
            images = nets["G"](torch.cat([mb.z_g, nets["E"](mb.real)]), res, alpha)
            judged = torch.cat([images, mb.real.to(images.dtype)]) if relativistic else images
            logits = nets["D"](judged, res, alpha)
        real_logits = logits[2 * n:].detach() if relativistic else None
        adv = losses.g_loss(kind, logits[:n], real_logits)
        mode = losses.g_loss(kind, logits[n:2 * n], real_logits)
        geometric = (full(images[n:]) - full(mb.real)).square().flatten(1).sum(1).mean()
        loss = adv + mc.geometric_weight * geometric + mc.mode_weight * mode
        return loss, {"loss/G": loss, "loss/adv": adv, "loss/geometric": geometric,
                      "loss/mode": mode}


FAMILY = MRGAN
