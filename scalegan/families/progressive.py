"""``model.arch=progressive``: progressive growing of GANs (Karras et al. 2018): G and D grow
from ``train.schedule.start_resolution`` to ``model.resolution``, each new block faded in."""

from __future__ import annotations

from scalegan.config import ConfigError
from scalegan.families._image import ImageGAN
from scalegan.models.progressive import (
    MIN_RESOLUTION,
    ProgressiveDiscriminator,
    ProgressiveGenerator,
)
from scalegan.train.schedule import Phase, phase_at


class Progressive(ImageGAN):
    arch = "progressive"
    augments = True

    @classmethod
    def check(cls, cfg) -> None:
        start = cfg.train.schedule.start_resolution
        if start > cfg.model.resolution:
            raise ConfigError(f"train.schedule.start_resolution={start!r} is not allowed: "
                              f"expected <= model.resolution={cfg.model.resolution}")

    @classmethod
    def networks(cls, mc):
        return {"G": ProgressiveGenerator(mc), "D": ProgressiveDiscriminator(mc)}

    @classmethod
    def d_blocks(cls, mc) -> list[tuple[str, ...]]:
        """From the final resolution down: its fromRGB with the block of the final resolution,
        then each lower block (Freeze-D counts from the resolution the model grows to)."""
        out, r = [], mc.resolution
        while r >= MIN_RESOLUTION:
            out.append((f"from_rgb.{r}", f"blocks.{r}") if r == mc.resolution
                       else (f"blocks.{r}",))
            r //= 2
        return out

    def transfers_resolution(self, resolution: int) -> bool:
        return isinstance(resolution, int) and resolution > 0
        # blocks added (a run grown past the old model) or dropped (a smaller one)

    def transfer_new_keys(self, name: str, keys: list[str]) -> set[str]:
        """The blocks, toRGB and fromRGB layers of the resolutions only one of the two models
        has: added ones start from scratch (set train.schedule.start_resolution to the old
        resolution to skip the stages already learnt), dropped ones are not read."""
        shared = min(self._old_resolution, self.mc.resolution)
        return {k for k in keys
                if k.split(".")[0] in ("blocks", "to_rgb", "from_rgb")
                and k.split(".")[1].isdigit() and int(k.split(".")[1]) > shared}

    def check_transfer(self, saved_model: dict, where: str) -> None:
        super().check_transfer(saved_model, where)
        self._old_resolution = saved_model.get("resolution", self.mc.resolution)

    def stage(self, images_seen: int) -> Phase:
        s = self.cfg.train.schedule
        return phase_at(images_seen, s.start_resolution, self.mc.resolution, s.fade_kimg,
                        s.stable_kimg)


FAMILY = Progressive
