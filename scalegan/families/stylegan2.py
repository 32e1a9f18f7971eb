"""``model.arch=stylegan2``: StyleGAN2, config F (Karras et al. 2020, "Analyzing and Improving the
Image Quality of StyleGAN"), as StyleGAN2-ADA's code trains it.

Per step (StyleGAN2-ADA's phases, in scalegan's order D, R1, G, PL):

* **D**: the non-saturating logistic loss ``softplus(D(G(z))) + softplus(-D(x))`` (``loss.kind``;
  hinge, least squares and minimax also run);
* **R1** (lazy, every ``loss.r1_interval`` = 16 steps): ``gamma / 2 * ||dD(x)/dx||^2`` on reals,
  times the interval;
* **G**: ``softplus(-D(G(z)))``;
* **PL** (lazy, every ``model.pl_interval`` = 4 steps): the path-length penalty on
  ``N / pl_batch_shrink`` new samples: with ``y ~ N(0, I) / sqrt(H W)`` an image-space direction,
  ``a = ||d(G(w) . y) / dw||_2`` (the squared gradient summed over ``w_dim``, averaged over the
  ``num_ws`` styles, square-rooted), the running mean ``pl_mean <- lerp(pl_mean, mean(a),
  pl_decay)`` (family state, checkpointed) and the loss ``pl_weight * mean((a - pl_mean)^2)``,
  times the interval.

Both lazy phases get the Adam rescale ``c = interval / (interval + 1)`` on lr and betas
(:meth:`Family.optimizers`). Every G call of D, G and PL uses **style mixing**: with probability
``model.style_mixing`` (0.9) a sample takes the styles of a second latent from a cutoff drawn
uniformly in ``[1, num_ws)``. G's weights are averaged into G_ema (``train.ema_*``); the
mapping network tracks ``w_avg`` for truncation.

Where this departs from the published code, and why:

* **Draws per sample, not per GPU batch.** Latents, mixing cutoffs, per-pixel noise and the PL
  direction ``y`` are drawn for the global batch from the run's shared RNG (noise and ``y`` from a
  per-sample seed, on the device), so a run is the same whatever the number of ranks. StyleGAN2
  draws one mixing cutoff per GPU batch; here each sample draws its own (the same distribution
  per sample).
* **``w_avg`` and ``pl_mean`` follow the global batch**: their means are taken over every rank's
  samples (StyleGAN2 keeps per-GPU values and copies rank 0's), and ``w_avg`` is updated once per
  G phase (StyleGAN2 updates it in each G call of every phase), so its half-life in steps is
  two to three times StyleGAN2's: still hundreds of steps, far below a run's length.
* **bf16 instead of fp16** in the ``model.bf16_resolutions`` (4) highest-resolution blocks of G
  and D when ``train.precision=bf16``, with the activations clamped to ``model.conv_clamp``
  (256) as StyleGAN2 does in its fp16 layers; no loss scaling (bf16 has fp32's range).

The ``auto`` preset (``model.preset=auto``) is StyleGAN2-ADA's ``--cfg=auto``: from the
resolution ``R`` and the GPU count ``g`` (the launch's WORLD_SIZE or SLURM_NTASKS) it sets
``train.batch_size = max(min(g * min(4096 // R, 32), 64), g)``, the minibatch-stddev group
``min(batch / g, 4)``, ``model.channel_base`` 32768 (R >= 512) or 16384, the learning rates 0.002
(R >= 1024) or 0.0025, ``loss.r1_gamma = 0.0002 R^2 / batch``, ``train.ema_halflife_kimg =
batch * 10 / 32``, ``train.ema_rampup`` 0.05 and 2 mapping layers; any of these set in the file or
on the command line wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from scalegan import losses
from scalegan.config import ConfigError, _check, _is_pow2
from scalegan.families._base import PhaseSpec, Scalars, Services, full
from scalegan.families._image import NoiseToImage, r1_term
from scalegan.models.stylegan2 import Discriminator, Generator, num_ws_for
from scalegan.train.schedule import Phase

LOSSES = ("nonsaturating", "minimax", "hinge", "lsgan")
"""``loss.kind`` values this family runs (single-logit losses of D(x) and D(G(z)))."""


@dataclass
class StyleGAN2Config:
    arch: Literal["stylegan2"] = "stylegan2"
    """StyleGAN2 (config F): mapping + modulated-convolution synthesis (skip), residual D."""
    resolution: int = 1024
    """Image side: a power of two from 32 to 1024."""
    img_channels: int = 3
    """Image channels: 1 or 3."""
    latent_dim: int = 512
    """Size of z."""
    w_dim: int = 512
    """Size of the intermediate latent w (and of every style's input)."""
    mapping_layers: int = 8
    """Fully connected layers of the mapping network (8 in config F; 2 in the auto preset)."""
    mapping_lr_multiplier: float = 0.01
    """Learning-rate multiplier of the mapping network's layers."""
    w_avg_beta: float = 0.995
    """Decay of the tracked w_avg (truncation's centre) per update."""
    channel_base: int = 32768
    """Feature maps at resolution r: min(channel_base // r, channel_max) (config F: 32768 / 512,
    so 512 up to 64^2, then 256, 128, 64, 32)."""
    channel_max: int = 512
    """Upper bound on the feature maps of any layer."""
    mbstd_group_size: int = 4
    """D's minibatch-stddev group size (consecutive samples of a rank's batch)."""
    mbstd_num_channels: int = 1
    """Feature maps minibatch stddev appends."""
    style_mixing: float = 0.9
    """Probability that a training sample mixes the styles of two latents."""
    pl_weight: float = 2.0
    """Weight of the path-length penalty (0 disables the PL phase)."""
    pl_interval: int = 4
    """Steps between path-length evaluations (lazy; the penalty is scaled by the interval)."""
    pl_decay: float = 0.01
    """Rate of the running mean of path lengths, pl_mean."""
    pl_batch_shrink: int = 2
    """The PL phase runs on batch / pl_batch_shrink samples (at least 1 per rank)."""
    bf16_resolutions: int = 4
    """With train.precision=bf16: the blocks of this many highest resolutions of G and D compute
    in bf16 (StyleGAN2's fp16 layers); the rest in fp32."""
    conv_clamp: float = 256.0
    """With bf16 blocks: every convolution's output is clamped to +-conv_clamp (0: never)."""
    ops_impl: Literal["auto", "ref", "cpu", "triton"] = "auto"
    """Implementation of the modulated convolution (see model.ops_impl of the other families)."""
    preset: Literal["none", "auto"] = "none"
    """auto: StyleGAN2-ADA's resolution- and GPU-count-based settings for what the config does
    not set (see the family's docstring); none: the config as written."""

    def __post_init__(self) -> None:
        _check(self.arch == "stylegan2", "model.arch", self.arch, "stylegan2")
        _check(isinstance(self.resolution, int) and _is_pow2(self.resolution)
               and 32 <= self.resolution <= 1024, "model.resolution", self.resolution,
               "a power of two from 32 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        for name in ("latent_dim", "w_dim", "mapping_layers", "channel_max", "pl_interval",
                     "pl_batch_shrink", "mbstd_num_channels"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.channel_base >= self.resolution, "model.channel_base", self.channel_base,
               f">= model.resolution={self.resolution} (at least one feature map everywhere)")
        _check(self.mbstd_group_size >= 1, "model.mbstd_group_size", self.mbstd_group_size,
               ">= 1")
        _check(self.mapping_lr_multiplier > 0, "model.mapping_lr_multiplier",
               self.mapping_lr_multiplier, "> 0")
        _check(0 <= self.w_avg_beta < 1, "model.w_avg_beta", self.w_avg_beta, "0 <= beta < 1")
        _check(0 <= self.style_mixing <= 1, "model.style_mixing", self.style_mixing,
               "a probability in [0, 1]")
        _check(self.pl_weight >= 0, "model.pl_weight", self.pl_weight, ">= 0")
        _check(0 < self.pl_decay <= 1, "model.pl_decay", self.pl_decay, "0 < decay <= 1")
        _check(self.bf16_resolutions >= 0, "model.bf16_resolutions", self.bf16_resolutions,
               ">= 0")
        _check(self.conv_clamp >= 0, "model.conv_clamp", self.conv_clamp, ">= 0 (0: never)")
        _check(self.ops_impl in ("auto", "ref", "cpu", "triton"), "model.ops_impl",
               self.ops_impl, "auto | ref | cpu | triton")
        _check(self.preset in ("none", "auto"), "model.preset", self.preset, "none | auto")

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.resolution)


def auto_settings(resolution: int, gpus: int) -> dict[str, dict[str, Any]]:
    """StyleGAN2-ADA's ``--cfg=auto`` for ``resolution`` and ``gpus``, as config sections."""
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    lr = 0.002 if resolution >= 1024 else 0.0025
    return {
        "model": {"channel_base": 32768 if resolution >= 512 else 16384,
                  "mapping_layers": 2, "mbstd_group_size": min(batch // gpus, 4)},
        "train": {"batch_size": batch, "ema_halflife_kimg": batch * 10 / 32, "ema_rampup": 0.05},
        "optim": {"g_lr": lr, "d_lr": lr},
        "loss": {"r1_gamma": 0.0002 * resolution ** 2 / batch},
    }


def launch_gpus(environ: Mapping[str, str] | None = None) -> int:
    """The number of training processes of this launch (WORLD_SIZE, else SLURM_NTASKS, else 1)."""
    env = os.environ if environ is None else environ
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if env.get(key, "").isdigit():
            return max(1, int(env[key]))
    return 1


def seeded_rows(seeds: torch.Tensor, numel: int, device: torch.device,
                offset: int = 0) -> torch.Tensor:
    """(B, numel) N(0, 1) values on ``device``, row i from seed ``seeds[i] + offset``."""
    if device.type == "meta":  # shapes only (no generator, no seed values)
        return torch.empty(len(seeds), numel, device=device)
    rows = []
    for s in seeds.tolist():
        gen = torch.Generator(device=device).manual_seed(s + offset)
        rows.append(torch.randn(numel, generator=gen, device=device))
    return torch.stack(rows)


@dataclass
class Draws:
    """What one G call of a phase draws: latents, mixing and noise."""

    z: torch.Tensor
    """(B, latent_dim) latents."""
    mix_z: torch.Tensor
    """(B, latent_dim) the second latents of style mixing."""
    cutoff: torch.Tensor
    """(B,) the first style taken from ``mix_z`` (num_ws: not mixed)."""
    seeds: torch.Tensor
    """(B,) per-sample seeds of the per-pixel noise (and of the PL direction)."""


@dataclass
class StyleMicroBatch:
    real: torch.Tensor
    """(B, C, R, R) real images in [-1, 1]."""
    d: Draws
    """The fakes D sees."""
    g: Draws
    """The fakes G is trained on."""
    pl: Draws
    """The path-length phase's samples (B / pl_batch_shrink of them)."""


class StyleGAN2(NoiseToImage):
    arch = "stylegan2"
    config_class = StyleGAN2Config
    augments = True

    @classmethod
    def d_blocks(cls, mc) -> list[tuple[str, ...]]:
        """D's residual blocks from the full resolution down (the first with its fromRGB),
        then its 4x4 epilogue, as StyleGAN2-ADA's ``--freezed`` counts them."""
        res = [2 ** i for i in range(mc.resolution.bit_length() - 1, 2, -1)]
        return [(("from_rgb", f"blocks.{r}") if r == mc.resolution else (f"blocks.{r}",))
                for r in res] + [("epilogue",)]

    @classmethod
    def fill_preset(cls, tree: dict) -> dict:
        """``model.preset=auto``: the auto settings for every key the config tree leaves
        unset (the launch's GPU count from the environment)."""
        model = tree.get("model") or {}
        if not isinstance(model, dict) or model.get("preset") != "auto":
            return tree
        resolution = model.get("resolution", StyleGAN2Config.resolution)
        if not (isinstance(resolution, int) and _is_pow2(resolution)):
            return tree  # the config's own check names it
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
        for section, values in auto_settings(resolution, launch_gpus()).items():
            node = out.setdefault(section, {})
            if isinstance(node, dict):
                for key, value in values.items():
                    node.setdefault(key, value)
        return out

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.loss.kind not in LOSSES:
            raise ConfigError(f"loss.kind={cfg.loss.kind!r} is not allowed: expected "
                              f"{' | '.join(LOSSES)} with model.arch=stylegan2")

    # -------------------------------------------------------------------------------- networks

    @classmethod
    def networks(cls, mc, bf16: bool = False) -> dict:
        clamp = mc.conv_clamp if bf16 and mc.conv_clamp > 0 else None
        bf16_res = mc.bf16_resolutions if bf16 else 0
        G = Generator(mc.latent_dim, mc.w_dim, mc.resolution, mc.img_channels, mc.channel_base,
                      mc.channel_max, mc.mapping_layers, mc.mapping_lr_multiplier,
                      mc.w_avg_beta, conv_clamp=clamp, impl=mc.ops_impl,
                      bf16_resolutions=bf16_res)
        D = Discriminator(mc.resolution, mc.img_channels, mc.channel_base, mc.channel_max,
                          mc.mbstd_group_size, mc.mbstd_num_channels, conv_clamp=clamp,
                          bf16_resolutions=bf16_res)
        return {"G": G, "D": D}

    def make_networks(self):
        return self.networks(self.mc, bf16=self.cfg.train.precision == "bf16")

    # ------------------------------------------------------------------------------ the step

    def phases(self) -> list[PhaseSpec]:
        lc, mc = self.cfg.loss, self.mc
        out = [PhaseSpec("D", ("D",), self.d_loss, frozen=("G",))]
        if lc.r1_gamma > 0:
            out.append(PhaseSpec("R1", ("D",), self.r1_loss, interval=lc.r1_interval,
                                 input_gradient="D", lazy=lc.r1_interval > 1))
        out.append(PhaseSpec("G", ("G",), self.g_loss, frozen=("D",)))
        if mc.pl_weight > 0:
            out.append(PhaseSpec("PL", ("G",), self.pl_loss, interval=mc.pl_interval,
                                 input_gradient="G", lazy=mc.pl_interval > 1))
        return out

    def draws(self, n: int) -> Draws:
        """One G call's draws for ``n`` samples per rank (the global batch, this rank's rows)."""
        svc, mc = self.svc, self.mc
        num_ws = mc.num_ws
        z, mix_z = self.latents(n), self.latents(n)
        mixed = svc.draw(torch.rand, n) < mc.style_mixing
        at = svc.draw(lambda m, generator: torch.randint(1, num_ws, (m,), generator=generator),
                      n)
        seeds = svc.draw(lambda m, generator: torch.randint(2 ** 62, (m,), generator=generator),
                         n)
        cutoff = torch.where(mixed, at, torch.full_like(at, num_ws))
        device = svc.device
        return Draws(z.to(device), mix_z.to(device), cutoff.to(device), seeds)

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> StyleMicroBatch:
        real = self.real_images(batches["data"])[0]
        n = real.shape[0]
        return StyleMicroBatch(real, self.draws(n), self.draws(n),
                               self.draws(max(1, n // self.mc.pl_batch_shrink)))

    def per_sample(self, seeds: torch.Tensor, numel: int, offset: int = 0) -> torch.Tensor:
        """(B, numel) N(0, 1) values, row i from seed ``seeds[i] + offset`` on the device."""
        return seeded_rows(seeds, numel, self.svc.device, offset)

    def run_G(self, G, dr: Draws, ws_probe: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """G's images and the (mixed) styles it read for draws ``dr`` (``ws_probe``: see
        :meth:`Generator.forward`)."""
        noise = self.per_sample(dr.seeds, self.noise_numel)
        return G(dr.z, return_ws=True, noise=noise, mix_z=dr.mix_z, mix_cutoff=dr.cutoff,
                 update_w_avg=False, ws_probe=ws_probe)

    @property
    def noise_numel(self) -> int:
        """Noise values per sample of G's synthesis network."""
        mc = self.mc
        return sum((1 if r == 4 else 2) * r * r
                   for r in (2 ** i for i in range(2, mc.resolution.bit_length())))

    def track_w_avg(self, ws: torch.Tensor) -> None:
        """Move G's ``w_avg`` toward the mean ``w`` of the global batch (the unmixed first
        style of every rank's samples)."""
        w = self.svc.gather(full(ws[:, 0].detach()))  # fp32 from bf16; fp64 stays
        self.svc.nets["G"].mapping.track(w)

    # -------------------------------------------------------------------------------- losses

    def d_loss(self, nets, mb: StyleMicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        with torch.no_grad():
            fake, _ = self.run_G(nets["G"], mb.d)
        real_logits, fake_logits = self.D(nets, mb.real), self.D(nets, fake)
        loss = losses.d_loss(self.cfg.loss.kind, real_logits.flatten(), fake_logits.flatten())
        self.svc.observe_real(real_logits)
        real = full(real_logits.detach()).flatten()
        return loss, {"loss/D": loss, "d/real": real.mean(),
                      "d/fake": full(fake_logits.detach()).mean(),
                      "aug/rt": torch.sign(real).mean()}

    def D(self, nets, images: torch.Tensor) -> torch.Tensor:
        """D's logits of ``images`` as D sees them (augmented, ``augment.*``)."""
        return nets["D"](self.svc.augment(images))

    def real_logits(self, nets, images: torch.Tensor, stage: Phase) -> torch.Tensor:
        return nets["D"](images)

    def r1_loss(self, nets, mb: StyleMicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        lc = self.cfg.loss
        x = mb.real.detach().requires_grad_(True)
        logits = self.D(nets, x)  # the gradient w.r.t. the image before augmentation
        penalty = losses.r1_penalty(logits.flatten(), x).mean()
        return r1_term(penalty, [logits], lc.r1_gamma, lc.r1_interval), {"loss/r1": penalty}

    def g_loss(self, nets, mb: StyleMicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        fake, ws = self.run_G(nets["G"], mb.g)
        self.track_w_avg(ws)
        loss = losses.g_loss(self.cfg.loss.kind, self.D(nets, fake).flatten())
        return loss, {"loss/G": loss}

    def pl_loss(self, nets, mb: StyleMicroBatch, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        """The path-length penalty (see the module docstring), scaled by its interval."""
        mc = self.mc
        # d/dws through a zero probe G adds to its styles: the ws G returns are, under DDP or
        # ZeRO-3, new tensors the image's graph does not reach
        probe = torch.zeros(mb.pl.z.shape[0], mc.num_ws, mc.w_dim, dtype=mb.pl.z.dtype,
                            device=mb.pl.z.device, requires_grad=True)
        img, _ = self.run_G(nets["G"], mb.pl, ws_probe=probe)
        n, c, h, w = img.shape
        y = self.per_sample(mb.pl.seeds, c * h * w, offset=1).reshape(n, c, h, w) / (h * w) ** 0.5
        (grad,) = torch.autograd.grad((full(img) * y).sum(), probe, create_graph=True)
        lengths = full(grad).square().sum(2).mean(1).sqrt()  # (n,)
        with torch.no_grad():
            mean = self.svc.gather(lengths.detach()).mean()
            self.pl_mean.copy_(self.pl_mean.lerp(mean.to(self.pl_mean), mc.pl_decay))
        penalty = (lengths - self.pl_mean).square().mean()
        loss = penalty * (mc.pl_weight * mc.pl_interval) + full(img[:, 0, 0, 0]).sum() * 0
        return loss, {"loss/pl": penalty, "pl/mean": self.pl_mean.clone()}

    # ---------------------------------------------------------------------------------- state

    @property
    def pl_mean(self) -> torch.Tensor:
        if not hasattr(self, "_pl_mean"):
            device = self.svc.device if self.svc is not None else "cpu"
            self._pl_mean = torch.zeros((), device=device)
        return self._pl_mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pl_mean": self.pl_mean}

    # ------------------------------------------------------------------------------ sampling

    latent_space = "w"
    """`scalegan generate --truncation / --mix / --interpolate` and `scalegan export` work in
    this family's intermediate latent space W (families without one lack the attribute)."""

    STYLE_GROUPS = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, None)}
    """Style indices ``[first, last)`` of the published style-mixing groups (Karras et al. 2019,
    section 3.1, two styles per resolution): coarse 4^2-8^2, middle 16^2-32^2, fine 64^2 up to
    the image resolution (``None``: the last style). By index, as the published code mixes; in
    StyleGAN2's layout the last style of a group also feeds the next resolution's up-conv."""

    def images(self, nets, z, cond, stage: Phase, stages: str = "final",
               truncation: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """G's images for latents ``z`` with the fixed noise maps (``noise_mode="const"``, as
        StyleGAN2's generate) and truncation ``truncation`` toward the tracked ``w_avg``."""
        return nets["G"](z, truncation_psi=truncation, truncation_cutoff=cutoff,
                         noise_mode="const")

    def metric_images(self, nets, z, cond, stage: Phase, seeds: torch.Tensor) -> torch.Tensor:
        """G's images for latents ``z`` with per-pixel noise drawn per image, row ``i`` from
        ``seeds[i]``: StyleGAN2 measures its metrics with random noise (and generates with the
        fixed maps). With one fixed map every image carries the same noise pattern, which
        measures as a loss of diversity (FID of a demo network, seed 0: 0.351 fixed, 0.319
        drawn)."""
        return nets["G"](z, noise=seeded_rows(seeds, self.noise_numel, z.device))

    def generate(self, nets, num: int, seed: int, stage: Phase, options: dict) -> torch.Tensor:
        """``num`` images from ``torch.randn(num, latent_dim)`` drawn with ``seed``; options
        ``truncation`` (psi, default 1) and ``truncation_cutoff`` (the styles truncated,
        default all)."""
        if options.get("stages") not in (None, "final"):
            raise ValueError("--stages all: model.arch=stylegan2 has a single stage")
        self.conditions(num, options)  # refuses --label / --embedding
        psi = options.get("truncation")
        psi = 1.0 if psi is None else float(psi)
        cutoff = self.truncation_cutoff(options.get("truncation_cutoff"))
        batch = options.get("batch", 32)
        z = torch.randn(num, self.mc.latent_dim, generator=torch.Generator().manual_seed(seed))
        device = next(nets["G"].parameters()).device
        return torch.cat([self.images(nets, zb.to(device), None, stage, truncation=psi,
                                      cutoff=cutoff)
                          for zb in z.split(batch)])

    def truncation_cutoff(self, cutoff: int | None) -> int | None:
        """``cutoff`` checked against the model's styles (ValueError naming the option)."""
        num_ws = self.mc.num_ws
        if cutoff is not None and not 1 <= cutoff <= num_ws:
            raise ValueError(f"--truncation-cutoff {cutoff}: expected 1 .. {num_ws} (the "
                             f"number of styles of a {self.mc.resolution}^2 model)")
        return cutoff

    def seed_latents(self, seeds: list[int]) -> torch.Tensor:
        """``(len(seeds), latent_dim)``: row ``i`` is ``torch.randn(1, latent_dim)`` drawn with
        seed ``seeds[i]``, the first latent ``generate --seed seeds[i]`` draws."""
        return torch.cat([torch.randn(1, self.mc.latent_dim,
                                      generator=torch.Generator().manual_seed(s))
                          for s in seeds])

    def seed_ws(self, nets, seeds: list[int], truncation: float = 1.0,
                cutoff: int | None = None) -> torch.Tensor:
        """``(len(seeds), num_ws, w_dim)``: the styles of each seed's latent, truncated by
        ``truncation`` toward ``w_avg`` (styles ``0 .. cutoff - 1`` only, with ``cutoff``).
        One mapping call per seed, so a seed's styles are the same bits whatever other seeds
        are listed with it (a matmul's sums may be ordered by its batch size)."""
        G = nets["G"]
        z = self.seed_latents(seeds).to(next(G.parameters()).device)
        cutoff = self.truncation_cutoff(cutoff)
        return torch.cat([G.mapping(zi, truncation_psi=truncation, truncation_cutoff=cutoff,
                                    update_w_avg=False) for zi in z.split(1)])

    def synthesize(self, nets, ws: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """Images ``(N, C, R, R)`` of styles ``ws`` ``(N, num_ws, w_dim)`` with the fixed noise
        maps, ``batch`` at a time."""
        synthesis = nets["G"].synthesis
        return torch.cat([synthesis(wb, noise_mode="const") for wb in ws.split(batch)])

    def style_range(self, styles: str = "coarse", cutoff: int | None = None
                    ) -> tuple[int, int]:
        """``[first, last)``: the styles a mix takes from its second source; ``cutoff`` (styles
        ``0 .. cutoff - 1``) overrides the group ``styles`` (:data:`STYLE_GROUPS`). ValueError
        naming the option for a range the model does not have."""
        num_ws = self.mc.num_ws
        if cutoff is not None:
            if not 1 <= cutoff <= num_ws:
                raise ValueError(f"--mix-cutoff {cutoff}: expected 1 .. {num_ws} (the number "
                                 f"of styles of a {self.mc.resolution}^2 model)")
            return 0, cutoff
        if styles not in self.STYLE_GROUPS:
            raise ValueError(f"--mix-styles {styles}: expected coarse | middle | fine")
        first, last = self.STYLE_GROUPS[styles]
        last = num_ws if last is None else min(last, num_ws)
        if first >= last:
            raise ValueError(f"--mix-styles {styles}: a {self.mc.resolution}^2 model has "
                             f"{num_ws} styles, none of them {styles} (styles {first} on, "
                             f"64^2 and above); use coarse, middle or --mix-cutoff")
        return first, last


FAMILY = StyleGAN2
