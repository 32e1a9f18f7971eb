"""``model.arch=lapgan``: the Laplacian pyramid of adversarial networks (Denton et al. 2015).

One conditional G/D pair per level of a Laplacian pyramid (``scalegan.models.lapgan``; level 0
the coarsest, at ``base_resolution``, level j at ``base_resolution * 2^j``, the last at
``resolution``). Level 0 is a plain GAN of fully connected nets on the coarsest image; level
j > 0 generates the band-pass residual ``h_j = I_j - expand(I_{j-1})`` from noise planes and the
low-pass image ``l_j = expand(I_{j-1})``, and D_j judges residuals given ``l_j``.

The levels train independently, on real coarse images (the data stream serves every level's
box-filtered image, ``Stream(pyramid=levels)``), in one run of two phases per step:

* D: every D_j jointly, on the sum of the levels' GAN losses (BCE, softplus(-D(real)) +
  softplus(D(fake))); each D_j only appears in its own level's term;
* G: every G_j jointly, on the sum of the levels' generator losses through the frozen D's:
  the non-saturating -log D(G(z)) (``loss.kind=nonsaturating``, what the paper's code trained:
  BCE against the "real" label), or ``loss.kind=minimax``, log(1 - D(G(z))) as the paper's
  objective is written.

Noise: the paper draws it uniform in [-1, 1] (z_0 a 100-d vector, then one noise plane per conv
level). Here the whole model's latent is one standard-normal vector per sample of ``latent_dim``
= ``z_dim`` + the noise planes' sizes, as for every noise-to-image family (sample grids,
``generate --seed``, FID draw it so), mapped to uniform [-1, 1] by the normal CDF
(u = erf(z / sqrt 2)), exactly uniform. Noise and D_0's dropout masks come from the run's shared
RNG, drawn for the global batch: a sharded run equals one process.

Sampling chains the levels: ``I~_0 = G_0(z_0)``, ``I~_j = l~_j + G_j(l~_j, z_j)`` with
``l~_j = expand(I~_{j-1})``. ``generate --stages all`` and the sample grids show every level's
image side by side (each enlarged, nearest, to the final size); next to each grid
``<name>_residuals.png`` shows the generated residuals of levels 1.., each level divided by 3
times its std over the grid (0 is mid-grey, +-3 std black and white).

Optimiser: Adam (``optim``; the demo uses lr 1e-3, betas (0, 0.99)) rather than the paper's
SGD (lr 0.02 decayed by 1 + 4e-5 per epoch, momentum 0.5 rising by 0.0008 per epoch to 0.8):
scalegan's optimisers are Adam and RMSProp (their state is what checkpoints hold), the
paper's schedule is set in epochs of CIFAR-10's 200k training crops, and on the hundred demo
faces the fully connected level 0 collapsed to one image under SGD at lr 0.02 / momentum 0.8
(400 steps) as under Adam at 2e-4 / (0.5, 0.999) (600 steps), while Adam at 1e-3 / (0, 0.99)
spread its samples within 400 steps.

Departures, and why: the pyramid's reduce is the 2x2 box average (the data stream's filter, so
every level's real image is what the stream serves) and its expand bilinear, for the paper's
smoothing kernels; levels double in size (8, 16, 32) where the paper's CIFAR-10 model went 8, 14,
28; D_j sees each sample both real and generated (the paper shows it one of the two by a fair
coin per sample: the same expected loss, less variance); D_j takes the residual and the low-pass
image as channels by default (``d_input=concat``; the paper adds them, ``d_input=sum``: a first
convolution can learn the sum from the channels). Unconditional only (the paper also has a
class-conditional CIFAR-10 model). The averaged copies of the G_j follow them exactly (the paper
averages nothing); they are what ``generate`` and ``eval`` read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from scalegan import losses
from scalegan.config import ConfigError, _check, _is_pow2
from scalegan.families._base import PhaseSpec, Scalars, Services, Stream
from scalegan.families._image import SAMPLE_CHUNK, NoiseToImage
from scalegan.models.lapgan import (
    CoarseDiscriminator,
    CoarseGenerator,
    LevelDiscriminator,
    LevelGenerator,
    expand,
    gaussian_pyramid,
    laplacian_pyramid,
)
from scalegan.monitor.grid import save_grid
from scalegan.train.schedule import Phase

GRID_MARGIN = 2
"""White pixels between the samples of the sample grids."""
LOSS_KINDS = ("nonsaturating", "minimax")
"""loss.kind values LAPGAN reads: the BCE game with G's non-saturating or minimax loss."""


@dataclass
class LAPGANConfig:
    arch: Literal["lapgan"] = "lapgan"
    """LAPGAN: a Laplacian pyramid of conditional G/D pairs, one per level (base_resolution,
    twice that, ... up to resolution), trained jointly on real coarse images."""
    resolution: int = 32
    """Final image side; a power of two from 8 to 1024."""
    img_channels: int = 3
    """Image channels (1 or 3)."""
    base_resolution: int = 8
    """Side of the coarsest level, a plain GAN of fully connected nets (8 as published); a
    power of two from 4 to resolution. The model has log2(resolution / base_resolution) + 1
    levels."""
    z_dim: int = 100
    """Size of the coarsest generator's noise vector z_0 (100 as published)."""
    noise_channels: int = 1
    """Noise planes each finer level's generator takes beside the low-pass image (1 as
    published: a 4th colour plane)."""
    g0_hidden: int = 1200
    """Units of each of the coarsest generator's two hidden layers (1200 as published)."""
    d0_hidden: int = 600
    """Units of each of the coarsest discriminator's two hidden layers (600 as published)."""
    d0_dropout: float = 0.5
    """Dropout probability on the coarsest discriminator's hidden units (the paper's D_0 uses
    dropout); 0 disables it."""
    g_channels: int = 128
    """Feature maps of the finer levels' generators' hidden convolutions (128 for CIFAR-10)."""
    d_channels: int = 128
    """Feature maps of the finer levels' discriminators' convolutions (128 for CIFAR-10)."""
    kernel: int = 5
    """Side of the finer levels' convolution kernels (5 as published); odd."""
    d_input: Literal["concat", "sum"] = "concat"
    """How a finer level's D takes the residual and the low-pass image: concat (as channels)
    or sum (the level's image, as the paper describes)."""

    def __post_init__(self) -> None:
        _check(_is_pow2(self.resolution) and 8 <= self.resolution <= 1024, "model.resolution",
               self.resolution, "a power of two from 8 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        _check(_is_pow2(self.base_resolution) and 4 <= self.base_resolution <= self.resolution,
               "model.base_resolution", self.base_resolution,
               f"a power of two from 4 to model.resolution={self.resolution}")
        for name in ("z_dim", "noise_channels", "g0_hidden", "d0_hidden", "g_channels",
                     "d_channels"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(0 <= self.d0_dropout < 1, "model.d0_dropout", self.d0_dropout, "0 <= p < 1")
        _check(self.kernel >= 1 and self.kernel % 2 == 1, "model.kernel", self.kernel,
               "an odd number >= 1")
        _check(self.d_input in ("concat", "sum"), "model.d_input", self.d_input, "concat | sum")

    @property
    def levels(self) -> int:
        """Pyramid levels: base_resolution, 2x, ... up to resolution."""
        return (self.resolution // self.base_resolution).bit_length()

    @property
    def level_resolutions(self) -> list[int]:
        """The image side of each level, coarsest first."""
        return [self.base_resolution << j for j in range(self.levels)]

    @property
    def latent_dim(self) -> int:
        """Noise numbers per sample: z_0 and every finer level's noise planes."""
        return self.z_dim + sum(self.noise_channels * r * r for r in self.level_resolutions[1:])


@dataclass
class Levels:
    """One micro-batch: every level's real images and the noise of both phases."""

    real: list[torch.Tensor]
    """I_j (B, C, R_j, R_j) in [-1, 1], coarsest first."""
    lows: list[torch.Tensor | None]
    """l_j = expand(I_{j-1}) (None at level 0)."""
    highs: list[torch.Tensor]
    """h_j = I_j - l_j; h_0 = I_0."""
    z_d: torch.Tensor
    """(B, latent_dim) standard-normal latents of the fakes D sees."""
    z_g: torch.Tensor
    """(B, latent_dim) latents of the fakes G is trained on."""
    keep_real: torch.Tensor | None = None
    """D_0's dropout factors (B, 2, d0_hidden) on real images in the D phase (None: none)."""
    keep_fake: torch.Tensor | None = None
    """D_0's dropout factors on G_0's images in the D phase."""
    keep_g: torch.Tensor | None = None
    """D_0's dropout factors on G_0's images in the G phase."""


def to_uniform(z: torch.Tensor) -> torch.Tensor:
    """Standard-normal ``z`` mapped to uniform [-1, 1] by the normal CDF: 2 Phi(z) - 1."""
    return torch.erf(z * (1 / math.sqrt(2)))


class LAPGAN(NoiseToImage):
    """G0 .. G{L-1}, D0 .. D{L-1} by level, 0 the coarsest."""

    arch = "lapgan"
    config_class = LAPGANConfig
    multi_stage = True
    averaged = False

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.g_names = generator_names(self.mc)
        self.d_names = tuple(f"D{j}" for j in range(self.mc.levels))
        self.ema = self.g_names
        self.lr_role = {**dict.fromkeys(self.g_names, "g"), **dict.fromkeys(self.d_names, "d")}

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.loss.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind={cfg.loss.kind!r} is not allowed: expected "
                              f"{' | '.join(LOSS_KINDS)} with model.arch=lapgan (the GAN "
                              f"objective, BCE)")
        if cfg.loss.r1_gamma != 0:
            raise ConfigError(f"loss.r1_gamma={cfg.loss.r1_gamma!r} is not allowed: expected 0 "
                              f"with model.arch=lapgan (it trains no R1)")

    @classmethod
    def networks(cls, mc):
        res = mc.level_resolutions
        nets: dict = {"G0": CoarseGenerator(mc.z_dim, mc.img_channels, res[0], mc.g0_hidden)}
        for j in range(1, mc.levels):
            nets[f"G{j}"] = LevelGenerator(mc.img_channels, mc.noise_channels, mc.g_channels,
                                           mc.kernel)
        nets["D0"] = CoarseDiscriminator(mc.img_channels, res[0], mc.d0_hidden)
        for j in range(1, mc.levels):
            nets[f"D{j}"] = LevelDiscriminator(mc.img_channels, res[j], mc.d_channels,
                                               mc.kernel, mc.d_input)
        return nets

    def phases(self) -> list[PhaseSpec]:
        return [PhaseSpec("D", self.d_names, self.d_loss, frozen=self.g_names),
                PhaseSpec("G", self.g_names, self.g_loss, frozen=self.d_names)]

    def streams(self) -> dict[str, Stream]:
        return {"data": Stream(self.cfg.data.shards, pyramid=self.mc.levels)}

    # ------------------------------------------------------------------------------ micro-batch

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> Levels:
        """Every level's real image (the stream's pyramid; a stream serving one scale is
        box-filtered here the same way), their Laplacian pyramid, both phases' latents and
        D_0's dropout masks, all drawn for the global batch."""
        real = self.real_images(batches["data"])
        if len(real) != self.mc.levels:
            real = gaussian_pyramid(real[-1], self.mc.levels)
        n = real[0].shape[0]
        lows, highs = laplacian_pyramid(real)
        z_d, z_g = (svc.draw(torch.randn, n, self.mc.latent_dim) for _ in range(2))
        mb = Levels(real, lows, highs, z_d, z_g)
        mb.keep_real, mb.keep_fake, mb.keep_g = (self.dropout_factors(n, real[0].dtype, svc)
                                                 for _ in range(3))
        return mb

    def dropout_factors(self, n: int, dtype: torch.dtype,
                        svc: Services) -> torch.Tensor | None:
        """D_0's dropout factors for ``n`` samples drawn from ``svc``: 0 for a dropped unit,
        1 / (1 - p) for a kept one; None without dropout."""
        p, hidden = self.mc.d0_dropout, self.mc.d0_hidden
        if p == 0:
            return None
        u = svc.draw(torch.rand, n, 2, hidden)
        return (u >= p).to(dtype) / (1 - p)

    def noise(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Each level's noise from latents ``z`` (B, latent_dim), uniform in [-1, 1]: z_0
        (B, z_dim), then (B, noise_channels, R_j, R_j) per finer level."""
        mc = self.mc
        u = to_uniform(z)
        out = [u[:, :mc.z_dim]]
        start = mc.z_dim
        for r in mc.level_resolutions[1:]:
            size = mc.noise_channels * r * r
            out.append(u[:, start:start + size].reshape(-1, mc.noise_channels, r, r))
            start += size
        return out

    # ----------------------------------------------------------------------------------- losses

    @staticmethod
    def _generate(nets, j: int, low: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        return nets["G0"](noise) if j == 0 else nets[f"G{j}"](low, noise)

    @staticmethod
    def _judge(nets, j: int, x: torch.Tensor, low: torch.Tensor | None,
               keep: torch.Tensor | None) -> torch.Tensor:
        return nets["D0"](x, keep) if j == 0 else nets[f"D{j}"](x, low)

    def d_loss(self, nets, mb: Levels, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Sum over levels of D_j's BCE on the real residual h_j (label 1) and G_j's residual
        (label 0), both given the real low-pass image l_j; level 0 on whole coarse images."""
        noise = self.noise(mb.z_d)
        total, scalars = 0, {}
        for j in range(self.mc.levels):
            low = mb.lows[j]
            with torch.no_grad(), self.svc.autocast():
                fake = self._generate(nets, j, low, noise[j])
            with self.svc.autocast():
                real_logits = self._judge(nets, j, mb.highs[j], low, mb.keep_real)
                fake_logits = self._judge(nets, j, fake, low, mb.keep_fake)
            loss = losses.d_loss("nonsaturating", real_logits, fake_logits)
            total = total + loss
            scalars[f"loss/D{j}"] = loss
        scalars["loss/D"] = total
        return total, scalars

    def g_loss(self, nets, mb: Levels, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """Sum over levels of G_j's loss through the frozen D_j, given the real l_j."""
        noise = self.noise(mb.z_g)
        total, scalars = 0, {}
        for j in range(self.mc.levels):
            low = mb.lows[j]
            with self.svc.autocast():
                logits = self._judge(nets, j, self._generate(nets, j, low, noise[j]), low,
                                     mb.keep_g)
            loss = losses.g_loss(self.cfg.loss.kind, logits)
            total = total + loss
            scalars[f"loss/G{j}"] = loss
        scalars["loss/G"] = total
        return total, scalars

    # --------------------------------------------------------------------------------- sampling

    def chain(self, nets, z: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sampling through the pyramid from latents ``z``: every level's image I~_j (coarsest
        first) and every finer level's generated residual h~_j (levels 1..)."""
        noise = self.noise(z)
        images = [nets["G0"](noise[0])]
        residuals = []
        for j in range(1, self.mc.levels):
            low = expand(images[-1])
            residuals.append(nets[f"G{j}"](low, noise[j]))
            images.append(low + residuals[-1])
        return images, residuals

    @torch.no_grad()
    def level_figures(self, nets, real: torch.Tensor, num: int = 200,
                      seed: int = 7) -> dict[str, float]:
        """How each level matches the data ``real`` (N, C, R, R): ``spread_0``, the coarsest
        level's per-pixel std across ``num`` chained samples over the real coarse images' (1
        for a model as varied as the data, small for one that draws the same image); for each
        finer level j, ``residual_j``, the std of G_j's residuals given real coarser images (as
        G_j is trained) over the real residuals' std."""
        levels = self.mc.levels
        lows, highs = laplacian_pyramid(gaussian_pyramid(real[torch.arange(num) % len(real)],
                                                         levels))
        z = torch.randn(num, self.mc.latent_dim, generator=torch.Generator().manual_seed(seed))
        noise = self.noise(z)
        coarse = self.chain(nets, z)[0][0]
        real_coarse = gaussian_pyramid(real, levels)[0]
        out = {"spread_0": (coarse.std(0).mean() / real_coarse.std(0).mean()).item()}
        for j in range(1, levels):
            out[f"residual_{j}"] = (nets[f"G{j}"](lows[j], noise[j]).std()
                                    / highs[j].std()).item()
        return out

    def images(self, nets, z, cond, stage: Phase, stages: str = "final") -> torch.Tensor:
        """The final level's images (N, C, R, R), or ``stages="all"``: every level's side by
        side, each enlarged (nearest) to R: (N, C, R, levels * R). Clamped to [-1, 1]."""
        levels, _ = self.chain(nets, z)
        if stages == "final":
            return levels[-1].clamp(-1, 1)
        return _side_by_side(levels, self.mc.resolution).clamp(-1, 1)

    def samples(self, nets, inputs, stage: Phase) -> torch.Tensor:
        """Per sample, every level's image then every finer level's generated residual (not
        rescaled), side by side at the final size: (N, C, R, (2 levels - 1) * R);
        ``write_samples`` splits them into two grids."""
        z, _ = inputs
        device = next(nets["G0"].parameters()).device
        rows = []
        for zb in z.split(SAMPLE_CHUNK):
            levels, residuals = self.chain(nets, zb.to(device))
            rows.append(_side_by_side(levels + residuals, self.mc.resolution))
        return torch.cat(rows)

    def write_samples(self, images: torch.Tensor, paths: list[Path]) -> dict[str, float]:
        """The chained samples' grid at each of ``paths`` and, for two levels or more, the
        residuals' grid at ``<stem>_residuals.png`` beside it: each level's residuals divided
        by 3 times their std over the grid, so 0 is mid-grey and +-3 std black and white
        (clipped beyond). Samples are set apart by a white margin of ``GRID_MARGIN`` pixels.
        Logs each finer level's generated residual std."""
        r, n_levels = self.mc.resolution, self.mc.levels
        levels = images[..., :n_levels * r].clamp(-1, 1)
        residuals = images[..., n_levels * r:].split(r, dim=3) if n_levels > 1 else ()
        scalars, shown = {}, []
        for j, h in enumerate(residuals, start=1):
            std = h.float().std()
            scalars[f"samples/residual_std{j}"] = float(std)
            shown.append((h / (3 * std).clamp_min(1e-12)).clamp(-1, 1))
        ncols = self.grid_columns(images.shape[0])
        for p in paths:
            p = Path(p)
            save_grid(_margin(levels), p, ncols=ncols)
            if shown:
                save_grid(_margin(torch.cat(shown, dim=3)), residuals_path(p), ncols=ncols)
        return scalars


def generator_names(mc) -> tuple[str, ...]:
    """G0 .. G{levels - 1}: the networks ``generate`` and ``eval`` read."""
    return tuple(f"G{j}" for j in range(mc.levels))


def residuals_path(grid: Path) -> Path:
    """Where the residuals' grid of the sample grid ``grid`` goes: ``<stem>_residuals<suffix>``."""
    return grid.with_name(f"{grid.stem}_residuals{grid.suffix}")


def _margin(tiles: torch.Tensor) -> torch.Tensor:
    """``tiles`` with a white margin on their right and bottom, to set them apart in a grid."""
    return F.pad(tiles, (0, GRID_MARGIN, 0, GRID_MARGIN), value=1.0)


def _side_by_side(images: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.cat([F.interpolate(x, size=size, mode="nearest") if x.shape[-1] != size else x
                      for x in images], dim=3)


FAMILY = LAPGAN
