"""The stage of a run (resolution, fade alpha) and the growing schedule that maps images seen to
it (Karras et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    resolution: int
    """Side of the images G produces and D sees now."""
    alpha: float
    """Fade-in weight of the newest block: 0 = all skip path, 1 = all new block."""


def phase_at(images_seen: int, start_resolution: int, final_resolution: int, fade_kimg: float,
             stable_kimg: float) -> Phase:
    """Phase after ``images_seen`` real images (Karras et al. 2018).

    The run trains ``stable_kimg`` at ``start_resolution``; each later resolution first fades in
    over ``fade_kimg`` then trains ``stable_kimg``; the final resolution is kept to the end.
    """
    if start_resolution >= final_resolution:
        return Phase(final_resolution, 1.0)
    kimg = images_seen / 1000.0
    if kimg < stable_kimg:
        return Phase(start_resolution, 1.0)
    period = fade_kimg + stable_kimg
    if period <= 0:
        return Phase(final_resolution, 1.0)
    kimg -= stable_kimg
    level = int(kimg // period) + 1
    resolution = start_resolution * 2 ** level
    if resolution > final_resolution:
        return Phase(final_resolution, 1.0)
    into = kimg - (level - 1) * period
    alpha = 1.0 if fade_kimg <= 0 else min(1.0, into / fade_kimg)
    return Phase(resolution, alpha)

