"""``model.arch=aae``: the adversarial autoencoder (Makhzani et al. 2015).

Three networks: the encoder q(z|x) (deterministic), the decoder p(x|z) and D on codes. Each step
runs the paper's two phases:

* reconstruction: the encoder and the decoder jointly, on the pixel MSE of x and
  decoder(encoder(x)) (``recon_weight``);
* regularisation: first D learns to tell samples of the prior p(z) (label 1) from codes of the
  data (label 0) with the logistic loss, then the encoder, as D's generator, learns to make its
  codes pass for prior samples (the non-saturating loss), which shapes the aggregated posterior
  q(z) into p(z).

The prior (``prior``) is N(0, I) or an equal mixture of ``components`` Gaussians arranged on a
circle in the first two code coordinates, scaled to zero mean and identity covariance. Prior
samples come from the run's shared RNG, drawn for the global batch.

Departures, and why: Adam (``optim``) rather than the paper's SGD with momentum, and one
optimizer per network, so the encoder's Adam state is shared by the reconstruction and
regularisation phases (as StyleGAN2 shares G's between its main and regulariser phases); the
decoder ends in tanh (images in [-1, 1]). The averaged copies of the encoder and decoder follow
them exactly (the paper averages nothing); ``generate`` and ``eval`` read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from scalegan import losses
from scalegan.config import _check
from scalegan.data.pipeline import read_images
from scalegan.families._base import Family, PhaseSpec, Scalars, Services, full
from scalegan.models.aae import CodeDiscriminator, Decoder, Encoder, prior_moments, sample_prior
from scalegan.train.schedule import Phase


@dataclass
class AAEConfig:
    arch: Literal["aae"] = "aae"
    """The adversarial autoencoder: encoder, decoder and a D on codes."""
    resolution: int = 28
    """Image side (8 to 256)."""
    img_channels: int = 1
    """Image channels (1 or 3)."""
    code_dim: int = 8
    """Size of the code z."""
    hidden: int = 1000
    """Units of each hidden layer of the encoder and decoder (1000 as published for MNIST)."""
    layers: int = 2
    """Hidden layers of the encoder and of the decoder (2 as published)."""
    d_hidden: int = 1000
    """Units of each hidden layer of D (1000 as published)."""
    d_layers: int = 2
    """Hidden layers of D (2 as published)."""
    prior: Literal["gaussian", "mixture"] = "gaussian"
    """p(z): gaussian N(0, I), or mixture (components Gaussians on a circle, zero mean, identity
    covariance)."""
    components: int = 10
    """Components of the mixture prior (10 as published)."""
    recon_weight: float = 1.0
    """Weight of the reconstruction MSE."""

    def __post_init__(self) -> None:
        _check(8 <= self.resolution <= 256, "model.resolution", self.resolution, "8 .. 256")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        for name in ("code_dim", "hidden", "layers", "d_hidden", "d_layers"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.prior in ("gaussian", "mixture"), "model.prior", self.prior,
               "gaussian | mixture")
        if self.prior == "mixture":
            _check(self.code_dim >= 2, "model.code_dim", self.code_dim,
                   ">= 2 with model.prior=mixture")
            _check(self.components >= 3, "model.components", self.components, ">= 3")
        _check(self.recon_weight > 0, "model.recon_weight", self.recon_weight, "> 0")


@dataclass
class Batch:
    x: torch.Tensor
    """(B, C, R, R) images in [-1, 1]."""
    prior: torch.Tensor
    """(B, code_dim) samples of p(z) for D."""


class AAE(Family):
    arch = "aae"
    config_class = AAEConfig
    ema = ("encoder", "decoder")
    averaged = False
    lr_role = {"encoder": "g", "decoder": "g", "D": "d"}
    metrics = {"recon_mse": True, "posterior_mean_error": True, "posterior_cov_error": True}

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.sample_z = self.prior_samples(cfg.log.sample_grid ** 2,
                                           torch.Generator().manual_seed(cfg.train.seed + 31337))

    @classmethod
    def networks(cls, mc):
        return {"encoder": Encoder(mc.img_channels, mc.resolution, mc.code_dim, mc.hidden,
                                   mc.layers),
                "decoder": Decoder(mc.code_dim, mc.img_channels, mc.resolution, mc.hidden,
                                   mc.layers),
                "D": CodeDiscriminator(mc.code_dim, mc.d_hidden, mc.d_layers)}

    def phases(self) -> list[PhaseSpec]:
        return [PhaseSpec("recon", ("encoder", "decoder"), self.recon_loss),
                PhaseSpec("D", ("D",), self.d_loss, frozen=("encoder",)),
                PhaseSpec("G", ("encoder",), self.g_loss, frozen=("D",))]

    def prior_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        mc = self.mc
        return sample_prior(mc.prior, n, mc.code_dim, generator, mc.components).to(
            torch.get_default_dtype())

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> Batch:
        x = batches["data"].images
        if self.mc.img_channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        x = x.to(svc.device)
        prior = svc.draw(lambda total, dim, generator: self.prior_samples(total, generator),
                         x.shape[0], self.mc.code_dim)
        return Batch(x, prior)

    # ----------------------------------------------------------------------------------- losses

    def recon_loss(self, nets, mb: Batch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with self.svc.autocast():
            mse = F.mse_loss(full(nets["decoder"](nets["encoder"](mb.x))), full(mb.x))
        return self.mc.recon_weight * mse, {"loss/recon": mse}

    def d_loss(self, nets, mb: Batch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with torch.no_grad(), self.svc.autocast():
            codes = nets["encoder"](mb.x)
        with self.svc.autocast():
            loss = losses.d_loss("nonsaturating", nets["D"](mb.prior), nets["D"](codes))
        return loss, {"loss/D": loss}

    def g_loss(self, nets, mb: Batch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with self.svc.autocast():
            loss = losses.g_loss("nonsaturating", nets["D"](nets["encoder"](mb.x)))
        return loss, {"loss/G": loss}

    # --------------------------------------------------------------------------------- sampling

    def sample_inputs(self):
        return self.sample_z

    def samples(self, nets, inputs, stage: Phase) -> torch.Tensor:
        dec = nets["decoder"]
        return dec(inputs.to(next(dec.parameters()).device))

    def generate(self, nets, num: int, seed: int, stage: Phase, options: dict) -> torch.Tensor:
        """Decoded samples of the prior, drawn from ``seed``."""
        return self.samples(nets, self.prior_samples(num, torch.Generator().manual_seed(seed)),
                            stage)

    def from_images(self, nets, images: torch.Tensor, options: dict) -> torch.Tensor:
        """Reconstructions: decoder(encoder(x))."""
        enc = nets["encoder"]
        return nets["decoder"](enc(images.to(next(enc.parameters()).device))).cpu()

    # ------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, nets, env, ec, stage: Phase) -> dict[str, float]:
        """The reconstruction MSE per pixel (in [-1, 1] units) on the held-out images (eval.real;
        by default the training shards), and how far the aggregated posterior q(z) of the
        training images (data.shards) is from the prior: the largest absolute difference of its
        mean and of its covariance from the prior's (and the same of the held-out codes)."""
        mc, dc = self.mc, self.cfg.data
        held_out = read_images(ec.real or dc.shards, mc.resolution, channels=mc.img_channels,
                               num=ec.num_real, key="eval.real" if ec.real else "data.shards",
                               allow_unindexed=dc.allow_unindexed)
        training = read_images(dc.shards, mc.resolution, channels=mc.img_channels,
                               key="data.shards", allow_unindexed=dc.allow_unindexed)
        enc, dec = nets["encoder"], nets["decoder"]
        param = next(enc.parameters())
        mean, cov = prior_moments(mc.prior, mc.code_dim, mc.components)

        def codes(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([enc(xb.to(param.device, param.dtype)).double().cpu()
                              for xb in x.split(ec.batch_size)])

        def moments_error(z: torch.Tensor) -> tuple[float, float]:
            z_cov = torch.cov(z.T, correction=0).reshape(mc.code_dim, mc.code_dim)
            return float((z.mean(0) - mean).abs().max()), float((z_cov - cov).abs().max())

        z = codes(held_out)
        recon = torch.cat([dec(zb.to(param.device, param.dtype)).double().cpu()
                           for zb in z.split(ec.batch_size)])
        out = {"recon_mse": float((recon - held_out.double()).square().mean())}
        out["posterior_mean_error"], out["posterior_cov_error"] = moments_error(codes(training))
        out["heldout_mean_error"], out["heldout_cov_error"] = moments_error(z)
        out["num_real"], out["num_train"] = float(len(held_out)), float(len(training))
        return out


FAMILY = AAE
