"""The run's augmentation of every image D sees, and ADA's control of its probability p.

Karras et al. 2020 ("Training GANs with limited data"): D's over-fitting shows in
r_t = E[sign(D(real))], which rises toward 1 as D memorises its training set. Every
``augment.interval`` D updates, r_t over those updates (every rank's real images) moves p one
step toward ``augment.target``: p += sign(r_t - target) * images / (speed_kimg * 1000), where
``images`` is the number of real images the interval showed D; p stays in [0, 1].

The transforms draw their random numbers from the augmenter's own generator, for the global
batch (each rank keeps its rows), as the trainer draws latents: the augmentations do not depend
on the world size, and turning augmentation on leaves the latents as they were. p, r_t's running
sums and the generator's state are part of the checkpoint.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from scalegan.augment import AdaSettings, augment
from scalegan.config import AugmentConfig


def encode_rng(state: torch.Tensor) -> str:
    """A torch.Generator's state as text (for meta.json)."""
    return base64.b64encode(state.numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


class Augmenter:
    """``augmenter(images)``: D's view of ``images`` under ``augment.*``; ``observe`` the real
    logits of each D update, ``after_step`` once per training step."""

    def __init__(self, ac: AugmentConfig, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | None = None, distributed: bool = False,
                 measures: bool = True):
        self.ac = ac
        # False for families whose D never reports real logits: no r_t, so no per-step all-reduce
        self.measures = measures
        self.rank, self.world, self.device = rank, world, device
        self.distributed = distributed
        self.settings = AdaSettings.preset(ac.pipe)
        self.rng = torch.Generator(device="cpu").manual_seed(seed * 7919 + 2)
        self.p = float(ac.p)
        self.signs = 0  # sum of sign(D(real)) over the interval's updates, every rank's images
        self.count = 0  # real images in those sums
        self.d_updates = 0  # D updates since the run started (adjustments every interval)
        self.rt: float | None = None  # r_t of the last full interval
        self._step_signs = torch.zeros((), dtype=torch.float64)
        self._step_count = 0

    @property
    def active(self) -> bool:
        return self.ac.kind != "none"

    def draw(self, fn: Callable, n: int, *shape: int) -> torch.Tensor:
        """The global batch (n per rank) drawn with ``fn`` from the augmentation generator;
        this rank's rows."""
        full = fn(n * self.world, *shape, generator=self.rng)
        return full[self.rank * n:(self.rank + 1) * n].to(self.device)

    def __call__(self, images: torch.Tensor, draw: Callable | None = None) -> torch.Tensor:
        """``images`` as D is to see them (unchanged with augment.kind=none). ``draw``: another
        source of the random numbers (a fixed one for measurements that must not move the
        training run's)."""
        if not self.active:
            return images
        return augment(images, self.ac.kind, self.p, draw or self.draw, ada=self.settings,
                       policy=self.ac.policy)

    def fixed_draw(self, seed: int) -> Callable:
        """A ``draw`` from a fresh generator seeded with ``seed`` (same rows on every rank)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def draw(fn: Callable, n: int, *shape: int) -> torch.Tensor:
            return fn(n, *shape, generator=gen).to(self.device)
        return draw

    def observe(self, real_logits: torch.Tensor) -> None:
        """Count the signs of D's logits on this rank's real images of one D update."""
        logits = real_logits.detach().flatten()
        self._step_signs += torch.sign(logits.float()).sum().to(torch.float64).cpu()
        self._step_count += logits.numel()

    def after_step(self) -> None:
        """After each training step: add what ``observe`` counted (every rank's) to r_t's sums;
        every ``interval`` D updates, adjust p (ada) and start the next interval."""
        if not self.measures:
            return
        sums = torch.tensor([self._step_signs.item(), float(self._step_count)],
                            dtype=torch.float64)
        self._step_signs.zero_()
        self._step_count = 0
        if self.distributed:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        signs, count = (int(round(v)) for v in sums.tolist())
        if count == 0:  # no D update this step
            return
        self.signs += signs
        self.count += count
        self.d_updates += 1
        if self.d_updates % self.ac.interval:
            return
        self.rt = self.signs / self.count
        if self.ac.kind == "ada":
            adjust = math.copysign(1.0, self.rt - self.ac.target) if self.rt != self.ac.target \
                else 0.0
            self.p = min(max(self.p + adjust * self.count / (self.ac.speed_kimg * 1000), 0.0),
                         1.0)
        self.signs = self.count = 0

    # ------------------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict:
        """JSON-able state (p as a float: JSON keeps every bit of it)."""
        return {"p": self.p, "signs": self.signs, "count": self.count,
                "d_updates": self.d_updates, "rt": self.rt,
                "rng": encode_rng(self.rng.get_state())}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.signs, self.count = int(state["signs"]), int(state["count"])
        self.d_updates, self.rt = int(state["d_updates"]), state.get("rt")
        self.rng.set_state(decode_rng(state["rng"]))
