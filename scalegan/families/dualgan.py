"""``model.arch=dualgan``: unsupervised dual learning for image-to-image translation (Yi et al.
2017).

Two GANs in a closed loop, named as in the paper: GAN A is the translator G_A (domain A -> B, the
paper's U -> V) with its critic D_A, which judges domain-B images; GAN B is G_B (B -> A) with D_B,
which judges domain-A images. The translators are pix2pix U-Nets, the critics PatchGANs without a
sigmoid (``scalegan.models.dualgan``). Two phases, the Wasserstein losses of the paper:

* D (every step): D_A and D_B jointly, [D_A(G_A(a)) - D_A(b)] + [D_B(G_B(b)) - D_B(a)] (means over
  the patch logits), the critics' weights clamped to [-c, c] (``loss.clip``) at build and after
  each of their updates;
* G (every ``train.d_steps``-th step, after that step's D update: n_critic): G_A and G_B jointly,
  lambda_U |G_B(G_A(a)) - a| + lambda_V |G_A(G_B(b)) - b| - D_A(G_A(a)) - D_B(G_B(b)), the
  reconstruction errors mean absolute differences (L1), lambda_U = ``recon_weight_a`` and
  lambda_V = ``recon_weight_b``.

The noise z, z' of the paper's translators is dropout in their first three decoder layers (p =
``dropout``, 0.5 as pix2pix and the official code have it); its masks are drawn from the run's
shared RNG for the global batch (each rank keeps its rows), a new mask per translator call, so a
sharded run equals one process. Sample grids, ``generate`` and ``eval`` run the translators
without dropout.

Data: ``data.shards`` is domain A and ``data.shards_b`` domain B, each an unpaired stream with its
own exact, resumable position.

Hyper-parameters. The paper (Sec. 3.2, Alg. 1) trains as WGAN does: RMSProp rather than Adam
(momentum made training unstable at times), n_critic typically 2 to 4 and batch size 1 to 4 (with
no noticeable difference between them), clipping c normally 0.01 to 0.1 depending on the domains,
lambda_U and lambda_V 100 to 1000. The authors' released code departs from that: a cross-entropy
GAN loss without clipping, one D update then two G updates per iteration, lambda = 20, batch 1,
RMSProp at lr 5e-5 (WGAN's) with decay 0.9. Where they disagree this family follows the paper:
its losses are the paper's Wasserstein ones, and the code's lambda and update ratio were set for
a different loss. n_critic = 2 when ``train.d_steps`` is 0 (the paper's lower end: the most
translator updates per image), c = 0.01 (``loss.clip``'s default: the paper's lower end and
WGAN's), lambda_U = lambda_V = 100 (the paper's lower end, the nearest to the code's 20). The
paper gives no learning rate or RMSProp decay: the code's 5e-5 and 0.9 (``optim.alpha``) are set
in ``configs/*_dualgan.yaml`` with ``optim.kind=rmsprop``.

Departures, and why: instance norm instead of the paper's batch norm at batch size 1 (the same
per-sample statistics at any batch size, so a sharded run equals one process); no norm at the
U-Net's 1x1 bottleneck (the statistics of a single value zero it); no dropout at test time (the
paper's pix2pix-style translators keep it: here ``generate`` and ``eval`` are deterministic, the
expectation under inverted dropout); the G update reuses the batch of the D update before it
rather than a fresh one. The averaged copies of the translators follow them exactly (the paper
averages nothing); they are what ``generate`` and ``eval`` read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from scalegan.config import _check, _is_pow2
from scalegan.families._base import PhaseSpec, Scalars, full
from scalegan.families._translation import Pair, Translation, l1
from scalegan.models.dualgan import (
    PatchDiscriminator,
    UNetGenerator,
    dropout_shapes,
    unet_depth_for,
)
from scalegan.train.schedule import Phase

N_CRITIC = 2
"""Critic updates per translator update when ``train.d_steps`` is 0 (the paper: 2-4)."""


@dataclass
class DualGANConfig:
    arch: Literal["dualgan"] = "dualgan"
    """DualGAN: G_A (A -> B), G_B (B -> A) and their critics D_A (judges B), D_B (judges A) on
    two unpaired shard sets (data.shards: A, data.shards_b: B)."""
    resolution: int = 256
    """Image side; a power of two from 32 to 1024."""
    img_channels: int = 3
    """Image channels of both domains (1 or 3)."""
    ngf: int = 64
    """Feature maps of the U-Nets' first convolution (64 as published)."""
    ndf: int = 64
    """Feature maps of the PatchGANs' first convolution (64 as published)."""
    depth: int = 0
    """Down-sampling layers of each U-Net; 0: as published, down to 1x1 (log2 resolution)."""
    d_layers: int = 3
    """Stride-2 layers of each PatchGAN: 3 is the 70x70 PatchGAN."""
    dropout: float = 0.5
    """Dropout probability in the U-Nets' first ``dropout_layers`` decoder layers while
    training (the paper's noise; 0.5 as published); 0 disables it."""
    dropout_layers: int = 3
    """Decoder layers with dropout, counted from the innermost (3 as published)."""
    recon_weight_a: float = 100.0
    """lambda_U: weight of domain A's reconstruction error |G_B(G_A(a)) - a|."""
    recon_weight_b: float = 100.0
    """lambda_V: weight of domain B's reconstruction error |G_A(G_B(b)) - b|."""

    @property
    def unet_depth(self) -> int:
        return self.depth or unet_depth_for(self.resolution)

    def __post_init__(self) -> None:
        _check(_is_pow2(self.resolution) and 32 <= self.resolution <= 1024, "model.resolution",
               self.resolution, "a power of two from 32 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        for name in ("ngf", "ndf", "d_layers"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.resolution >> self.d_layers >= 4, "model.d_layers", self.d_layers,
               f"at most log2(model.resolution / 4) = {self.resolution.bit_length() - 3}")
        _check(0 <= self.depth <= unet_depth_for(self.resolution), "model.depth", self.depth,
               f"0 (down to 1x1) .. log2(model.resolution) = {unet_depth_for(self.resolution)}")
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "0 <= p < 1")
        _check(self.dropout_layers >= 0, "model.dropout_layers", self.dropout_layers, ">= 0")
        for name in ("recon_weight_a", "recon_weight_b"):
            _check(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), ">= 0")


def _translate(net, x: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
    """``net(x)``, with dropout masks ``noise`` when there are any."""
    return net(x) if noise is None else net(x, noise)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return full(x).mean()


class DualGAN(Translation):
    arch = "dualgan"
    config_class = DualGANConfig
    ema = ("G_A", "G_B")
    averaged = False
    lr_role = {"G_A": "g", "G_B": "g", "D_A": "d", "D_B": "d"}
    loss_menu = ("train.d_steps",)
    metrics = {"recon_a": True, "recon_b": True}
    translators = ("G_A", "G_B")
    round_trip = "recon"

    @classmethod
    def networks(cls, mc):
        def translator() -> UNetGenerator:
            return UNetGenerator(mc.img_channels, mc.ngf, mc.unet_depth, mc.dropout_layers)

        return {"G_A": translator(), "G_B": translator(),
                "D_A": PatchDiscriminator(mc.img_channels, mc.ndf, mc.d_layers),
                "D_B": PatchDiscriminator(mc.img_channels, mc.ndf, mc.d_layers)}

    def clipped(self) -> dict[str, float]:
        c = self.cfg.loss.clip
        return {"D_A": c, "D_B": c}

    def d_steps(self) -> int:
        """n_critic: ``train.d_steps``, or the paper's 2."""
        n = self.cfg.train.d_steps
        return n if n > 0 else N_CRITIC

    def phases(self) -> list[PhaseSpec]:
        n = self.d_steps()
        return [PhaseSpec("D", ("D_A", "D_B"), self.d_loss, frozen=("G_A", "G_B")),
                PhaseSpec("G", ("G_A", "G_B"), self.g_loss, frozen=("D_A", "D_B"),
                          interval=n, offset=n - 1)]

    def noise(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Dropout masks for one translator call on ``x`` (this rank's rows of masks drawn for
        the global batch from the shared RNG), scaled by 1 / (1 - p); None without dropout."""
        mc = self.mc
        p = mc.dropout
        if p == 0:
            return None
        shapes = dropout_shapes(mc.ngf, mc.unet_depth, mc.dropout_layers, x.shape[2], x.shape[3])
        return [(self.svc.draw(torch.rand, x.shape[0], *s) >= p).to(x.dtype) / (1 - p)
                for s in shapes]

    # ----------------------------------------------------------------------------------- losses

    def d_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """The critics' Wasserstein losses: D_A(G_A(a)) - D_A(b) and D_B(G_B(b)) - D_B(a)."""
        noise_a, noise_b = self.noise(mb.a), self.noise(mb.b)
        with torch.no_grad(), self.svc.autocast():
            fake_b = _translate(nets["G_A"], mb.a, noise_a)
            fake_a = _translate(nets["G_B"], mb.b, noise_b)
        with self.svc.autocast():
            loss_a = _mean(nets["D_A"](fake_b)) - _mean(nets["D_A"](mb.b))
            loss_b = _mean(nets["D_B"](fake_a)) - _mean(nets["D_B"](mb.a))
        return loss_a + loss_b, {"loss/D_A": loss_a, "loss/D_B": loss_b}

    def g_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """The translators' joint loss: the weighted reconstruction errors of both domains and
        the critics' values of both translations, negated."""
        mc = self.mc
        G_A, G_B = nets["G_A"], nets["G_B"]
        noise = [self.noise(mb.a), self.noise(mb.a), self.noise(mb.b), self.noise(mb.b)]
        with self.svc.autocast():
            fake_b = _translate(G_A, mb.a, noise[0])
            rec_a = _translate(G_B, fake_b, noise[1])
            fake_a = _translate(G_B, mb.b, noise[2])
            rec_b = _translate(G_A, fake_a, noise[3])
            adv = -_mean(nets["D_A"](fake_b)) - _mean(nets["D_B"](fake_a))
            recon_a, recon_b = l1(rec_a, mb.a), l1(rec_b, mb.b)
            loss = adv + mc.recon_weight_a * recon_a + mc.recon_weight_b * recon_b
        return loss, {"loss/G": adv, "loss/recon_a": recon_a, "loss/recon_b": recon_b}



FAMILY = DualGAN
