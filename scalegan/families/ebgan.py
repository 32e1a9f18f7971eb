"""``model.arch=ebgan``: the energy-based GAN (Zhao et al. 2016) with an auto-encoder D.

D is an auto-encoder and its energy is each sample's reconstruction error,
``D(x) = ||Dec(Enc(x)) - x||``: the Euclidean norm, the paper's formula, rather than the mean
squared error, so that the margin is a distance between samples (on the 5x5 grid, whose modes
are 2 apart, m = 1) whatever the number of values per sample, and the energy grows linearly,
not quadratically, away from the data (see :mod:`scalegan.models.ebgan`). Per step, as the
paper's objectives:

* D: ``L_D = D(x) + [m - D(G(z))]^+``, the batch mean per sample, with the margin m
  (``loss.margin``): real samples' energy is pulled down, fakes' pushed up until it reaches m;
* G: ``L_G = D(G(z)) + lambda_PT * PT(S)``, with the pulling-away term
  ``PT(S) = 1 / (N (N - 1)) * sum_{i != j} (S_i . S_j / (|S_i| |S_j|))^2`` on the codes
  ``S = Enc(G(z))`` of the batch's fakes (weight ``loss.pt_weight``; 0 leaves it out).

PT couples the samples of a batch, so it is taken over the global micro-batch (every rank's
part of it; with ``train.grad_accum`` > 1 each accumulated micro-batch has its own PT, as in one
process): each rank gathers every rank's codes with a differentiable all-gather. Every rank
then computes the same PT; the all-gather's backward sums the ranks' gradients of a rank's codes
(``world`` times dPT/dS_r) and the data-parallel reduction averages over ranks, so G's gradient
is dPT/dG of the global batch, as in one process (the energy term is a batch mean and needs
nothing).

On 2-D points (``data.source=points``) G is the MLP generator and D an MLP auto-encoder;
samples are scatter plots logged with ``modes/covered`` and ``modes/high_quality``, as the mlp
family's. On images (``data.source=shards``) G has DCGAN's layout (pixel norm in place of
BatchNorm) and D is a DCGAN-like convolutional encoder to ``code_dim`` and a transposed-conv
decoder back.

Departures, and why: no BatchNorm (the paper's nets have it): it makes a sample's output depend
on the other samples on its rank, so a sharded run would not equal one process. Adam with the
run's ``optim`` settings. G's weights are averaged for sampling (G_ema), as the other
noise-to-image families' (``train.ema_halflife_kimg``; 0 turns averaging off).

``modes/covered`` and the scatter plots of 2-D runs, the configuration checks of the sources
and the network choice are shared with ``model.arch=mrgan`` (:class:`EitherSource`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from scalegan.config import ConfigError, _check
from scalegan.families._base import PhaseSpec, Scalars, full
from scalegan.families._image import MicroBatch, PointsOrImages
from scalegan.models.ebgan import ConvAutoencoderD, ConvGenerator, MLPAutoencoderD, conv_widths
from scalegan.models.mlp import MLPGenerator
from scalegan.train.schedule import Phase

IMAGE_FIELDS = ("resolution", "img_channels", "channel_base", "channel_max")
"""Model settings of the convolutional nets (data.source=shards)."""
POINT_FIELDS = ("mlp_hidden", "mlp_layers")
"""Model settings of the MLP nets (data.source=points)."""


def check_model_fields(mc) -> None:
    """The checks of the settings EBGAN's and MRGAN's model sections share."""
    _check(isinstance(mc.resolution, int) and mc.resolution >= 8
           and mc.resolution & (mc.resolution - 1) == 0 and mc.resolution <= 1024,
           "model.resolution", mc.resolution, "a power of two from 8 to 1024")
    _check(mc.img_channels in (1, 3), "model.img_channels", mc.img_channels, "1 or 3")
    for name in ("latent_dim", "channel_base", "channel_max", "mlp_hidden", "mlp_layers"):
        _check(getattr(mc, name) >= 1, f"model.{name}", getattr(mc, name), ">= 1")


@dataclass
class EBGANConfig:
    arch: Literal["ebgan"] = "ebgan"
    """The energy-based GAN: G and an auto-encoder D whose energy is the reconstruction
    error."""
    resolution: int = 64
    """Images: side in pixels, a power of two from 8 to 1024."""
    img_channels: int = 3
    """Images: channels (1 or 3)."""
    latent_dim: int = 100
    """Size of G's input z, drawn from N(0, I)."""
    channel_base: int = 2048
    """Images: feature maps of the layers working at side r are
    min(channel_base // r, channel_max) in G and in D's encoder and decoder (2048 / 512: DCGAN's
    64, 128, 256, 512 from 32x32 down to 4x4)."""
    channel_max: int = 512
    """Images: upper bound on the feature maps of any layer."""
    code_dim: int = 128
    """Size of D's code Enc(x) (the auto-encoder's bottleneck; PT compares the fakes' codes)."""
    mlp_hidden: int = 128
    """Points: units of each hidden layer of G and of D's encoder and decoder."""
    mlp_layers: int = 3
    """Points: hidden layers of G, of D's encoder and of D's decoder."""

    def __post_init__(self) -> None:
        _check(self.arch == "ebgan", "model.arch", self.arch, "ebgan")
        check_model_fields(self)
        _check(self.code_dim >= 1, "model.code_dim", self.code_dim, ">= 1")


def pulling_away(codes: torch.Tensor) -> torch.Tensor:
    """EBGAN's pulling-away term of codes ``(N, K)``: the mean over ordered pairs i != j of the
    squared cosine similarity of codes i and j (float32 under bf16); 0 for a single code (no
    pairs: a global batch of one)."""
    n = codes.shape[0]
    if n < 2:
        return full(codes).sum() * 0  # in the graph, as the codes are
    unit = F.normalize(full(codes).flatten(1), dim=1)  # (N, K)
    cos2 = (unit @ unit.T).square()  # (N, N)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=codes.device)
    return cos2[off_diagonal].sum() / (n * (n - 1))


class EitherSource(PointsOrImages):
    """An unconditional family on 2-D points (MLP nets) or images (conv nets), whose model
    section has fields for one source only (refused, by name, with the other)."""

    labelled = False

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        mc, points = cfg.model, cfg.data.source == "points"
        unused, other = (IMAGE_FIELDS, "shards") if points else (POINT_FIELDS, "points")
        defaults = {f.name: f.default for f in dataclasses.fields(type(mc))}
        for name in unused:
            if getattr(mc, name) != defaults[name]:
                raise ConfigError(f"model.{name}={getattr(mc, name)!r} is not allowed: it is "
                                  f"read only with data.source={other}; leave it unset with "
                                  f"data.source={cfg.data.source} (model.arch={mc.arch})")

    def images(self, nets, z, cond, stage: Phase, stages: str = "final") -> torch.Tensor:
        return nets["G"](z, stage.resolution, stage.alpha)


class EBGAN(EitherSource):
    arch = "ebgan"
    config_class = EBGANConfig
    loss_menu = ()

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        lc, tc = cfg.loss, cfg.train
        if lc.kind != "nonsaturating":
            raise ConfigError(f"loss.kind={lc.kind!r} is not allowed: expected nonsaturating "
                              f"(the default, not read) with model.arch=ebgan: its D is trained "
                              f"on energies with the margin loss.margin, its G on the fakes' "
                              f"energy and the pulling-away term loss.pt_weight")
        if lc.r1_gamma != 0:
            raise ConfigError(f"loss.r1_gamma={lc.r1_gamma!r} is not allowed: expected 0 with "
                              f"model.arch=ebgan (its D outputs energies, not logits)")
        if lc.pt_weight > 0 and tc.batch_size // tc.grad_accum < 2:
            raise ConfigError(f"train.batch_size={tc.batch_size!r} is not allowed: expected at "
                              f"least 2 samples per micro-batch (train.batch_size / "
                              f"train.grad_accum) with loss.pt_weight > 0 (the pulling-away "
                              f"term compares pairs of samples)")

    @classmethod
    def networks(cls, mc, points: bool = True):
        if points:
            return {"G": MLPGenerator(mc.latent_dim, out_dim=2, hidden=mc.mlp_hidden,
                                      layers=mc.mlp_layers),
                    "D": MLPAutoencoderD(2, mc.code_dim, mc.mlp_hidden, mc.mlp_layers)}
        widths = conv_widths(mc.resolution, mc.channel_base, mc.channel_max)
        return {"G": ConvGenerator(mc.latent_dim, mc.img_channels, mc.resolution, widths),
                "D": ConvAutoencoderD(mc.img_channels, mc.resolution, mc.code_dim, widths)}

    def phases(self) -> list[PhaseSpec]:
        return [PhaseSpec("D", ("D",), self.d_loss, frozen=("G",)),
                PhaseSpec("G", ("G",), self.g_loss, frozen=("D",))]

    def energies(self, nets, x: torch.Tensor, stage: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """D's energies ``(N,)`` (float32 under bf16) and codes of ``x``."""
        with self.svc.autocast():
            e, code = nets["D"](x, stage.resolution, stage.alpha)
        return full(e), code

    def d_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Batch mean of D(x) + [m - D(G(z))]^+ on real samples and G's fakes of ``mb.z_d``."""
        with torch.no_grad(), self.svc.autocast():
            fake = self.images(nets, mb.z_d, None, stage)
        e_real, _ = self.energies(nets, mb.real, stage)
        e_fake, _ = self.energies(nets, fake, stage)
        loss = (e_real + F.relu(self.cfg.loss.margin - e_fake)).mean()
        return loss, {"loss/D": loss, "loss/energy_real": e_real.mean(),
                      "loss/energy_fake": e_fake.mean()}

    def g_loss(self, nets, mb: MicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Batch mean of D(G(z)) on G's fakes of ``mb.z_g``, plus lambda_PT * PT of their codes
        over the global micro-batch."""
        with self.svc.autocast():
            fake = self.images(nets, mb.z_g, None, stage)
        e_fake, codes = self.energies(nets, fake, stage)
        loss = e_fake.mean()
        scalars = {"loss/energy_G": loss}
        weight = self.cfg.loss.pt_weight
        if weight > 0:
            pt = pulling_away(self.global_rows(codes))
            loss = loss + weight * pt
            scalars["loss/pt"] = pt
        scalars["loss/G"] = loss
        return loss, scalars

    def global_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t`` in rank order, differentiably (the gradient of a rank's
        rows is summed over the ranks that used them)."""
        if self.svc.world == 1:
            return t
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t.contiguous()))


FAMILY = EBGAN
