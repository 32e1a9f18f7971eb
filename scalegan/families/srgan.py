"""``model.arch=srgan``: photo-realistic single-image super-resolution (Ledig et al. 2017).

G is the SRResNet (16 residual blocks, two x2 sub-pixel stages for x4), D the paper's VGG-style
discriminator. The low-resolution input of each sample is made on the fly from its
high-resolution image (bicubic, antialiased, x``scale``, as the paper's training pairs). Phases:

* pretrain (the first ``train.pretrain_kimg``): G alone on the pixel MSE (the paper's SRResNet,
  which initialises SRGAN);
* D: the logistic loss on high-resolution images against G's outputs;
* G: the content loss plus ``adversarial_weight`` (1e-3) times the non-saturating adversarial
  loss. Content: the pixel MSE (SRGAN-MSE), or with ``content=vgg`` the MSE of VGG19 features
  phi_{5,4} times ``content_weight`` (0.006, the paper's 1/12.75 rescaling), computed by a frozen
  VGG19 read from a local weights file (``vgg_weights`` or $SCALEGAN_VGG19_WEIGHTS; never
  downloaded).

Departures, and why: BatchNorm is off by default in G and D (``norm=none``, as EDSR and ESRGAN
later did): batch statistics make a sample's output depend on the other samples of its rank's
batch, so a sharded run would not equal one process; ``norm=batch`` restores the paper's layers.
The learning rate is constant (the paper drops it 10x halfway). Images are in [-1, 1] for both
the input and the output. The averaged copy of G follows G exactly (the paper averages nothing).
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
from scalegan.metrics.image_quality import psnr, ssim
from scalegan.models.srgan import SRDiscriminator, SRResNet
from scalegan.models.vgg import load_vgg19
from scalegan.train.schedule import Phase


@dataclass
class SRGANConfig:
    arch: Literal["srgan"] = "srgan"
    """SRGAN: an SRResNet G upscaling low-resolution images made from the shards, a VGG-style D."""
    resolution: int = 96
    """Side of the high-resolution images (96 as published); a multiple of 16 from 32 to
    1024. G's input is resolution / scale."""
    img_channels: int = 3
    """Image channels (1 or 3)."""
    scale: int = 4
    """Upscaling factor, a power of two (4 as published)."""
    channels: int = 64
    """G's feature maps (64 as published)."""
    res_blocks: int = 16
    """G's residual blocks (16 as published)."""
    d_channels: int = 64
    """D's feature maps at its first convolution (64 as published)."""
    norm: Literal["none", "batch"] = "none"
    """Normalisation in G's and D's blocks: none (per-sample: a sharded run equals one process)
    or batch (the paper's BatchNorm)."""
    content: Literal["mse", "vgg"] = "mse"
    """Content loss: the pixel MSE, or the MSE of VGG19 features (vgg_layer)."""
    vgg_weights: str = ""
    """Local VGG19 weights file for content=vgg (empty: $SCALEGAN_VGG19_WEIGHTS)."""
    vgg_layer: str = "conv5_4"
    """VGG19 features phi_{i,j}, after the ReLU of convolution j before max-pool i, as
    "convi_j" (the paper's VGG54: "conv5_4")."""
    content_weight: float = 1.0
    """Weight of the content loss (use 0.006 with content=vgg: the paper's rescaling)."""
    adversarial_weight: float = 1e-3
    """Weight of the adversarial loss in G's loss (1e-3 as published)."""

    def __post_init__(self) -> None:
        _check(self.resolution % 16 == 0 and 32 <= self.resolution <= 1024, "model.resolution",
               self.resolution, "a multiple of 16 from 32 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        _check(self.scale >= 2 and self.scale & (self.scale - 1) == 0
               and self.resolution % self.scale == 0, "model.scale", self.scale,
               f"a power of two >= 2 dividing model.resolution={self.resolution}")
        for name in ("channels", "res_blocks", "d_channels"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.norm in ("none", "batch"), "model.norm", self.norm, "none | batch")
        _check(self.content in ("mse", "vgg"), "model.content", self.content, "mse | vgg")
        for name in ("content_weight", "adversarial_weight"):
            _check(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), ">= 0")


@dataclass
class Pair:
    lr: torch.Tensor
    """(B, C, R / scale, R / scale) low-resolution inputs in [-1, 1]."""
    hr: torch.Tensor
    """(B, C, R, R) their high-resolution images."""


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution input of ``hr``: bicubic with antialiasing, x1/scale, in [-1, 1]."""
    size = hr.shape[-1] // scale
    return F.interpolate(hr, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def upscale_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: ``lr`` enlarged x``scale``."""
    size = lr.shape[-1] * scale
    return F.interpolate(lr, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


class SRGAN(Family):
    arch = "srgan"
    config_class = SRGANConfig
    ema = ("G",)
    averaged = False
    metrics = {"psnr": False, "ssim": False}

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.vgg = None
        if self.mc.content == "vgg" and svc is not None:
            self.vgg = load_vgg19(self.mc.vgg_weights, self.mc.vgg_layer).to(svc.device)
        self.sample_hr: torch.Tensor | None = None

    @classmethod
    def networks(cls, mc):
        return {"G": SRResNet(mc.img_channels, mc.channels, mc.res_blocks, mc.scale, mc.norm),
                "D": SRDiscriminator(mc.img_channels, mc.resolution, mc.d_channels, mc.norm)}

    def phases(self) -> list[PhaseSpec]:
        start = self.cfg.train.pretrain_kimg
        return [PhaseSpec("pretrain", ("G",), self.pretrain_loss, kimg=(0.0, start)),
                PhaseSpec("D", ("D",), self.d_loss, frozen=("G",), kimg=(start, float("inf"))),
                PhaseSpec("G", ("G",), self.g_loss, frozen=("D",), kimg=(start, float("inf")))]

    def input_resolution(self, options: dict) -> int:
        return self.mc.resolution // self.mc.scale

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> Pair:
        hr = batches["data"].images
        if self.mc.img_channels == 1 and hr.shape[1] == 3:
            hr = hr.mean(1, keepdim=True)
        hr = hr.to(svc.device)
        if self.sample_hr is None:
            self.sample_hr = hr[:self.cfg.log.sample_grid].detach().clone()
        return Pair(downscale(hr, self.mc.scale), hr)

    # ----------------------------------------------------------------------------------- losses

    def content_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if self.vgg is None:
            return F.mse_loss(full(sr), full(hr))
        return F.mse_loss(full(self.vgg(sr)), full(self.vgg(hr)))

    def pretrain_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with self.svc.autocast():
            mse = F.mse_loss(full(nets["G"](mb.lr)), full(mb.hr))
        return mse, {"loss/mse": mse}

    def d_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with torch.no_grad(), self.svc.autocast():
            sr = nets["G"](mb.lr)
        with self.svc.autocast():
            loss = losses.d_loss("nonsaturating", nets["D"](mb.hr), nets["D"](sr))
        return loss, {"loss/D": loss}

    def g_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        mc = self.mc
        with self.svc.autocast():
            sr = nets["G"](mb.lr)
            adversarial = losses.g_loss("nonsaturating", nets["D"](sr))
            content = self.content_loss(sr, mb.hr)
        loss = mc.content_weight * content + mc.adversarial_weight * adversarial
        return loss, {"loss/G": adversarial, "loss/content": content}

    # --------------------------------------------------------------------------------- sampling

    def sample_inputs(self):
        return self.sample_hr

    def samples(self, nets, inputs, stage: Phase) -> torch.Tensor:
        """Per row: the bicubic enlargement of the input, G's output, the original."""
        G = nets["G"]
        hr = inputs.to(next(G.parameters()).device)
        lr = downscale(hr, self.mc.scale)
        return torch.cat([upscale_bicubic(lr, self.mc.scale), G(lr).clamp(-1, 1), hr], dim=3)

    def grid_columns(self, num: int) -> int:
        return 1  # one row per sample: bicubic | G | original

    def from_images(self, nets, images: torch.Tensor, options: dict) -> torch.Tensor:
        G = nets["G"]
        return G(images.to(next(G.parameters()).device)).clamp(-1, 1).cpu()

    # ------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, nets, env, ec, stage: Phase) -> dict[str, float]:
        """PSNR and SSIM of G's outputs and of bicubic upsampling on the held-out images
        (eval.real; by default the training shards), each against the original."""
        mc, dc = self.mc, self.cfg.data
        hr = read_images(ec.real or dc.shards, mc.resolution, channels=mc.img_channels,
                         num=ec.num_real, key="eval.real" if ec.real else "data.shards",
                         allow_unindexed=dc.allow_unindexed)
        G = nets["G"]
        device = next(G.parameters()).device
        sr, bicubic = [], []
        for xb in hr.split(ec.batch_size):
            lr = downscale(xb, mc.scale)
            sr.append(G(lr.to(device)).clamp(-1, 1).float().cpu())
            bicubic.append(upscale_bicubic(lr, mc.scale))
        sr, bicubic = torch.cat(sr), torch.cat(bicubic)
        return {"psnr": float(psnr(sr, hr).mean()), "ssim": float(ssim(sr, hr).mean()),
                "psnr_bicubic": float(psnr(bicubic, hr).mean()),
                "ssim_bicubic": float(ssim(bicubic, hr).mean()), "num_real": float(len(hr))}


FAMILY = SRGAN
