"""``model.arch=progressive``: progressive growing of GANs (Karras et al. 2018): G and D grow
from ``train.schedule.start_resolution`` to ``model.resolution``, each new block faded in."""

from __future__ import annotations

from scalegan.config import ConfigError
from scalegan.families._image import ImageGAN
from scalegan.models.progressive import ProgressiveDiscriminator, ProgressiveGenerator
from scalegan.train.schedule import Phase, phase_at


class Progressive(ImageGAN):
    arch = "progressive"

    @classmethod
    def check(cls, cfg) -> None:
        start = cfg.train.schedule.start_resolution
        if start > cfg.model.resolution:
            raise ConfigError(f"train.schedule.start_resolution={start!r} is not allowed: "
                              f"expected <= model.resolution={cfg.model.resolution}")

    @classmethod
    def networks(cls, mc):
        return {"G": ProgressiveGenerator(mc), "D": ProgressiveDiscriminator(mc)}

    def stage(self, images_seen: int) -> Phase:
        s = self.cfg.train.schedule
        return phase_at(images_seen, s.start_resolution, self.mc.resolution, s.fade_kimg,
                        s.stable_kimg)


FAMILY = Progressive
