"""``model.arch=cyclegan``: unpaired image-to-image translation (Zhu et al. 2017).

Four networks: the translators G_AB (domain A -> B) and G_BA (ResNet generators with instance
norm, 6 residual blocks up to 128^2 and 9 above, as published) and the critics D_A, D_B (70x70
PatchGANs). Two phases per step, in the published order:

* G: G_AB and G_BA jointly, through the frozen critics: least-squares adversarial loss
  (D(G(x)) - 1)^2, cycle loss lambda * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|) with
  lambda = ``cycle_weight`` (10) and the identity loss ``identity_weight`` * lambda *
  (|G_AB(b) - b| + |G_BA(a) - a|) (0.5 lambda);
* D: D_A and D_B jointly: 0.5 * [(D(real) - 1)^2 + D(fake)^2] per critic, where the fakes come
  through a pool of the last ``pool_size`` (50) translations per domain (Shrivastava et al.
  2017): each new fake replaces a random stored one, which is shown instead, with probability
  1/2 once the pool is full.

Data: ``data.shards`` is domain A and ``data.shards_b`` domain B, each an unpaired stream with
its own exact, resumable position. Optimiser as published: Adam 2e-4, betas (0.5, 0.999)
(``configs/*_cyclegan.yaml``), the learning rate constant for the first half of the run
(``decay_from``) and decayed linearly to 0 over the rest.

Departures, and why: the pool is one pool for the global batch (every rank holds the same pool
and keeps its slice of what the pool returns, all draws from the run's shared RNG), so a sharded
run equals one process; the learning rate decays per step, not per epoch; the published
random 286 -> 256 crop is not applied (the stream's x-flip is). The averaged copies of the
translators follow them exactly (the paper averages nothing); they are what ``generate`` and
``eval`` read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from scalegan.config import _check, _is_pow2
from scalegan.families._base import PhaseSpec, Scalars, Services, full
from scalegan.families._translation import Pair, Translation, l1
from scalegan.models.cyclegan import PatchDiscriminator, ResnetGenerator, resnet_blocks_for
from scalegan.train.schedule import Phase


@dataclass
class CycleGANConfig:
    arch: Literal["cyclegan"] = "cyclegan"
    """CycleGAN: G_AB, G_BA, D_A, D_B on two unpaired shard sets (data.shards, data.shards_b)."""
    resolution: int = 256
    """Image side; a power of two from 32 to 1024."""
    img_channels: int = 3
    """Image channels of both domains (1 or 3)."""
    ngf: int = 64
    """Feature maps of the translators' first convolution (64 as published)."""
    ndf: int = 64
    """Feature maps of the PatchGANs' first convolution (64 as published)."""
    res_blocks: int = 0
    """Residual blocks of each translator; 0: as published, 6 up to 128^2 and 9 above."""
    d_layers: int = 3
    """Stride-2 layers of each PatchGAN: 3 is the 70x70 PatchGAN."""
    cycle_weight: float = 10.0
    """lambda, the weight of the cycle-consistency L1 loss."""
    identity_weight: float = 0.5
    """The identity loss's weight, as a multiple of cycle_weight (0 disables it)."""
    pool_size: int = 50
    """Past translations kept per domain for the critics (0: show the newest only)."""
    decay_from: float = 0.5
    """Fraction of train.total_kimg after which the learning rates decay linearly to 0."""

    def __post_init__(self) -> None:
        _check(_is_pow2(self.resolution) and 32 <= self.resolution <= 1024, "model.resolution",
               self.resolution, "a power of two from 32 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        for name in ("ngf", "ndf", "d_layers"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.resolution >> self.d_layers >= 4, "model.d_layers", self.d_layers,
               f"at most log2(model.resolution / 4) = {self.resolution.bit_length() - 3}")
        _check(self.res_blocks >= 0, "model.res_blocks", self.res_blocks, ">= 0")
        for name in ("cycle_weight", "identity_weight"):
            _check(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), ">= 0")
        _check(self.pool_size >= 0, "model.pool_size", self.pool_size, ">= 0")
        _check(0 <= self.decay_from <= 1, "model.decay_from", self.decay_from, "0 .. 1")


def _lsgan(logits: torch.Tensor, target: float) -> torch.Tensor:
    return (full(logits) - target).square().mean()


class CycleGAN(Translation):
    arch = "cyclegan"
    config_class = CycleGANConfig
    ema = ("G_AB", "G_BA")
    averaged = False
    lr_role = {"G_AB": "g", "G_BA": "g", "D_A": "d", "D_B": "d"}
    metrics = {"cycle_a": True, "cycle_b": True}

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        mc = self.mc
        device = svc.device if svc is not None else torch.device("cpu")
        shape = (mc.pool_size, mc.img_channels, mc.resolution, mc.resolution)
        self.pools = {d: torch.zeros(shape, device=device) for d in ("a", "b")}
        self.pool_counts = {d: torch.zeros((), dtype=torch.int64, device=device)
                            for d in ("a", "b")}

    @classmethod
    def networks(cls, mc):
        blocks = mc.res_blocks or resnet_blocks_for(mc.resolution)
        return {"G_AB": ResnetGenerator(mc.img_channels, mc.ngf, blocks),
                "G_BA": ResnetGenerator(mc.img_channels, mc.ngf, blocks),
                "D_A": PatchDiscriminator(mc.img_channels, mc.ndf, mc.d_layers),
                "D_B": PatchDiscriminator(mc.img_channels, mc.ndf, mc.d_layers)}

    def phases(self) -> list[PhaseSpec]:
        return [PhaseSpec("G", ("G_AB", "G_BA"), self.g_loss, frozen=("D_A", "D_B")),
                PhaseSpec("D", ("D_A", "D_B"), self.d_loss)]

    def learning_rates(self, images_seen: int) -> dict[str, float]:
        total = self.cfg.train.total_kimg * 1000
        start = self.mc.decay_from * total
        factor = 1.0 if images_seen <= start else max(0.0, (total - images_seen) /
                                                      max(total - start, 1.0))
        return dict.fromkeys(self.lr_role, factor)

    # ----------------------------------------------------------------------------------- losses

    def g_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        mc = self.mc
        G_AB, G_BA, D_A, D_B = nets["G_AB"], nets["G_BA"], nets["D_A"], nets["D_B"]
        with self.svc.autocast():
            fake_b, fake_a = G_AB(mb.a), G_BA(mb.b)
            rec_a, rec_b = G_BA(fake_b), G_AB(fake_a)
            adv = _lsgan(D_B(fake_b), 1.0) + _lsgan(D_A(fake_a), 1.0)
            cycle = l1(rec_a, mb.a) + l1(rec_b, mb.b)
            loss = adv + mc.cycle_weight * cycle
            scalars = {"loss/G": adv, "loss/cycle": cycle}
            if mc.identity_weight > 0:
                identity = l1(G_AB(mb.b), mb.b) + l1(G_BA(mb.a), mb.a)
                loss = loss + mc.identity_weight * mc.cycle_weight * identity
                scalars["loss/identity"] = identity
        mb.fake_a, mb.fake_b = fake_a.detach(), fake_b.detach()
        return loss, scalars

    def d_loss(self, nets, mb: Pair, stage: Phase) -> tuple[torch.Tensor, Scalars]:
        fake_a, fake_b = self.query_pool("a", mb.fake_a), self.query_pool("b", mb.fake_b)
        with self.svc.autocast():
            loss_a = 0.5 * (_lsgan(nets["D_A"](mb.a), 1.0) + _lsgan(nets["D_A"](fake_a), 0.0))
            loss_b = 0.5 * (_lsgan(nets["D_B"](mb.b), 1.0) + _lsgan(nets["D_B"](fake_b), 0.0))
        return loss_a + loss_b, {"loss/D_A": loss_a, "loss/D_B": loss_b}

    @torch.no_grad()
    def query_pool(self, domain: str, fakes: torch.Tensor) -> torch.Tensor:
        """The images the critic of ``domain`` sees for this rank's ``fakes``: the pool works
        on the global batch (gathered in rank order) with draws from the shared RNG, so every
        rank updates the same pool and the result does not depend on the world size."""
        size, svc = self.mc.pool_size, self.svc
        n = fakes.shape[0]
        if size == 0 or fakes.is_meta:  # no pool, or shapes only (a memory count)
            return fakes
        pool, count = self.pools[domain], self.pool_counts[domain]
        full = svc.gather(fakes.to(pool.dtype))
        swap = svc.gather(svc.draw(torch.rand, n)) > 0.5
        slot = svc.gather(svc.draw(lambda *s, generator: torch.randint(0, size, s,
                                                                       generator=generator), n))
        out = full.clone()
        for i in range(full.shape[0]):
            if int(count) < size:
                pool[int(count)] = full[i]
                count += 1
            elif swap[i]:
                j = int(slot[i])
                out[i] = pool[j]
                pool[j] = full[i]
        return out[svc.rank * n:(svc.rank + 1) * n].to(fakes.dtype)

    # ------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pool_a": self.pools["a"], "pool_b": self.pools["b"],
                "pool_count_a": self.pool_counts["a"], "pool_count_b": self.pool_counts["b"]}



FAMILY = CycleGAN
