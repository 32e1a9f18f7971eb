"""Unpaired two-domain translation (CycleGAN, DualGAN): two shard sets, a translator each way,
sample grids of (image, translation, translation back), `generate --input --direction`, and the
held-out round-trip error per domain."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scalegan.config import ConfigError
from scalegan.data.pipeline import read_images
from scalegan.families._base import Family, Services, Stream, full
from scalegan.train.schedule import Phase

DIRECTIONS = ("a2b", "b2a")


@dataclass
class Pair:
    """One micro-batch: a batch of each domain, and the translations the G phase made of them
    (for the D phase)."""
    a: torch.Tensor
    b: torch.Tensor
    fake_a: torch.Tensor | None = None
    fake_b: torch.Tensor | None = None


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference, in float32 under bf16 (the translators' image losses)."""
    return (full(x) - full(y)).abs().mean()


class Translation(Family):
    """Base of the unpaired translation families: ``data.shards`` is domain A,
    ``data.shards_b`` domain B."""

    translators: tuple[str, str] = ("G_AB", "G_BA")
    """The networks translating A -> B and B -> A."""
    round_trip: str = "cycle"
    """Name of the held-out round-trip error metrics (``<name>_a``, ``<name>_b``)."""

    def __init__(self, cfg, svc: Services | None = None):
        super().__init__(cfg, svc)
        self.sample_pair: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def check(cls, cfg) -> None:
        if not cfg.data.shards_b and cfg.data.source == "shards":
            raise ConfigError(f"data.shards_b='' is not allowed: expected domain B's shards "
                              f"with model.arch={cls.arch} (data.shards is domain A)")

    def streams(self) -> dict[str, Stream]:
        dc = self.cfg.data
        return {"a": Stream(dc.shards), "b": Stream(dc.shards_b, key="data.shards_b")}

    def _images(self, batch) -> torch.Tensor:
        x = batch.images
        if self.mc.img_channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        return x.to(self.svc.device)

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> Pair:
        pair = Pair(self._images(batches["a"]), self._images(batches["b"]))
        if self.sample_pair is None:
            k = self.cfg.log.sample_grid
            self.sample_pair = (pair.a[:k].detach().clone(), pair.b[:k].detach().clone())
        return pair

    # --------------------------------------------------------------------------------- sampling

    def sample_inputs(self):
        return self.sample_pair

    def samples(self, nets, inputs, stage: Phase) -> torch.Tensor:
        """Per row: an image, its translation, and the translation back, for domain A's
        samples then domain B's: (2k, C, R, 3R)."""
        a, b = inputs
        to_b, to_a = (nets[n] for n in self.translators)
        device = next(to_b.parameters()).device
        a, b = a.to(device), b.to(device)
        fake_b, fake_a = to_b(a), to_a(b)
        rows_a = torch.cat([a, fake_b, to_a(fake_b)], dim=3)
        rows_b = torch.cat([b, fake_a, to_b(fake_a)], dim=3)
        return torch.cat([rows_a, rows_b])

    def grid_columns(self, num: int) -> int:
        return max(1, math.isqrt(num // 2))  # each image is a triple, 3 times as wide

    def from_images(self, nets, images: torch.Tensor, options: dict) -> torch.Tensor:
        direction = options.get("direction") or "a2b"
        if direction not in DIRECTIONS:
            raise ValueError(f"--direction {direction!r}: expected a2b or b2a")
        net = nets[self.translators[DIRECTIONS.index(direction)]]
        return net(images.to(next(net.parameters()).device)).cpu()

    # ------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, nets, env, ec, stage: Phase) -> dict[str, float]:
        """Mean absolute round-trip error per pixel (in [-1, 1] units) on the held-out images
        of each domain: |to_a(to_b(a)) - a| on eval.real (A), |to_b(to_a(b)) - b| on
        eval.real_b (B), by default the training shards."""
        mc, dc = self.mc, self.cfg.data
        to_b, to_a = self.translators
        out = {}
        for domain, spec, key, there, back in (
                ("a", ec.real or dc.shards, "eval.real", to_b, to_a),
                ("b", ec.real_b or dc.shards_b, "eval.real_b", to_a, to_b)):
            x = read_images(spec, mc.resolution, channels=mc.img_channels, num=ec.num_real,
                            key=key, allow_unindexed=dc.allow_unindexed)
            device = next(nets[there].parameters()).device
            errors = [(nets[back](nets[there](xb.to(device))).float().cpu() - xb).abs().mean(
                dim=(1, 2, 3)) for xb in x.split(ec.batch_size)]
            out[f"{self.round_trip}_{domain}"] = float(torch.cat(errors).mean())
            out[f"num_{domain}"] = float(len(x))
        return out
