"""2-D mixtures of Gaussians for mode-collapse benchmarks, and an endless stream of them.

The two mixtures of the Unrolled-GAN / VEEGAN / PacGAN experiments, equal weights, isotropic:

* ``ring8``: 8 modes at ``2 * (cos(2 pi k / 8), sin(2 pi k / 8))``, k = 0..7, std 0.02, the
  Unrolled-GAN / VEEGAN scale. PacGAN's release uses the same ring scaled by 1/2 (radius 1,
  std 0.01): distances counted in standard deviations, as
  :func:`scalegan.metrics.modes.mode_stats` counts them, are the same.
* ``grid25``: 25 modes at ``(i, j)`` for i, j in {-4, -2, 0, 2, 4}, std 0.05 (as in PacGAN's
  release: means ``range(-4, 5, 2)`` squared, variance ``0.05 ** 2``).

:class:`PointStream` stands in for the image stream of :mod:`scalegan.data.pipeline`: same
methods (``next_batch``, ``state_dict`` / ``load_state_dict``, ``set_resolution``, ``close``,
``skipped``), batches of points instead of images.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from scalegan.data.pipeline import Batch

__all__ = ["MIXTURES", "Mixture", "PointStream", "mixture", "sample_mixture"]


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic 2-D Gaussians: ``centers`` (K of them), ``std``."""

    centers: tuple[tuple[float, float], ...]
    std: float


def _ring(num_modes: int, radius: float) -> tuple[tuple[float, float], ...]:
    return tuple((radius * math.cos(2 * math.pi * k / num_modes),
                  radius * math.sin(2 * math.pi * k / num_modes)) for k in range(num_modes))


def _grid(values: range) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in itertools.product(values, values))


MIXTURES: dict[str, Mixture] = {
    "ring8": Mixture(_ring(8, radius=2.0), std=0.02),
    "grid25": Mixture(_grid(range(-4, 5, 2)), std=0.05),
}


def mixture(name: str) -> tuple[torch.Tensor, float]:
    """``(centers, std)`` of mixture ``name``: centers ``(K, 2)`` float32 (a fresh tensor),
    std a float (the same for every mode and coordinate)."""
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}: expected one of {' | '.join(MIXTURES)}")
    m = MIXTURES[name]
    return torch.tensor(m.centers, dtype=torch.float32), m.std


def sample_mixture(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` float32 from mixture ``name``: a mode drawn uniformly, then
    ``center + std * N(0, I)``. Deterministic given ``generator``'s state."""
    centers, std = mixture(name)
    mode = torch.randint(len(centers), (n,), generator=generator)  # (n,)
    noise = torch.randn(n, 2, generator=generator)  # (n, 2)
    return centers[mode] + std * noise


def _batch_generator(seed: int, batch: int) -> torch.Generator:
    """A generator seeded from ``(seed, batch)`` alone: any batch can be drawn without the ones
    before it (a statistically sound mix of the two numbers, not ``seed + batch``)."""
    state = np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class PointStream:
    """Endless, deterministic batches of mixture points ``(batch_size, 2)`` float32 for one rank.

    Batch ``b`` of the run is a global batch of ``batch_size * world`` points drawn from
    ``(seed, b)``; rank ``r`` gets rows ``[r * batch_size, (r + 1) * batch_size)``. So one process
    and ``world`` ranks see the same data, and the position is just the batch counter.
    """

    skipped = 0  # nothing is ever corrupt; the trainer logs it like the image stream's

    def __init__(self, name: str, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        mixture(name)  # validates the name
        if batch_size < 1:
            raise ValueError(f"PointStream: batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"PointStream: need 0 <= rank < world, got rank={rank}, "
                             f"world={world}")
        self.name, self.batch_size, self.seed = name, batch_size, seed
        self.rank, self.world = rank, world
        self.batches = 0

    def next_batch(self) -> Batch:
        """This rank's ``(batch_size, 2)`` float32 slice of the next global batch, and its keys
        ``"{name}-{batch}-{index in the global batch}"``."""
        total = self.batch_size * self.world
        points = sample_mixture(self.name, total, _batch_generator(self.seed, self.batches))
        start = self.rank * self.batch_size
        keys = [f"{self.name}-{self.batches}-{i}" for i in range(start, start + self.batch_size)]
        self.batches += 1
        return Batch(points[start:start + self.batch_size], keys)

    def set_resolution(self, resolution: int) -> None:
        """No-op: points have no resolution."""

    def close(self, now: bool = False) -> None:
        """No-op: nothing to release."""

    def state_dict(self) -> dict:
        """The position, JSON-serialisable: global batches drawn so far, and what they were."""
        return {"batches": self.batches, "name": self.name, "seed": self.seed,
                "world": self.world, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state["batches"]`` global batches. The world size may differ (the
        counter counts global batches); the mixture may not. Every rank's state (``{"ranks":
        [...]}``, what a checkpoint holds) gives the same counter: the first is read."""
        if "ranks" in state:
            state = state["ranks"][0]
        if state.get("name", self.name) != self.name:
            raise ValueError(f"PointStream: state is for mixture {state['name']!r}, this stream "
                             f"draws {self.name!r}")
        self.batches = int(state["batches"])
