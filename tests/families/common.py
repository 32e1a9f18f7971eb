"""Shared set-up of the family tests: tiny configs, seeded stand-in streams, a stub of the
trainer's services for loss checks, and the packed built-in data."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import torch
from PIL import Image
from torch import nn

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.pipeline import Batch, read_images
from scalegan.parallel.env import DistEnv
from scalegan.train.trainer import Trainer


def tiny_overrides(tmp_path, family: list[str], strategy: str = "ddp",
                   name: str = "run") -> list[str]:
    """A run in ``tmp_path`` of the family settings ``family`` (a tiny model), batch 8."""
    shards = tmp_path / "unused"
    return [f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"parallel.strategy={strategy}",
            f"data.shards={shards}", f"data.shards_b={shards}", "train.batch_size=8",
            "train.total_kimg=10", "log.wandb=disabled", "log.progress=false", *family]


class FixedStream:
    """Stands in for ImageStream: seeded global micro-batches, this rank's contiguous slice."""

    def __init__(self, micro: int, rank: int, world: int, shape: tuple[int, int], seed: int):
        self.micro, self.rank, self.world = micro, rank, world
        self.channels, self.side = shape
        self.gen = torch.Generator().manual_seed(seed)
        self.skipped = 0

    def set_resolution(self, resolution: int) -> None: ...

    def next_batch(self) -> Batch:
        n = self.micro * self.world
        full = torch.rand(n, self.channels, self.side, self.side, generator=self.gen,
                          dtype=torch.get_default_dtype()) * 2 - 1
        return Batch(full[self.rank * self.micro:(self.rank + 1) * self.micro], [])

    def close(self) -> None: ...


def fixed_trainer(env: DistEnv, family: list[str], shapes: dict, strategy: str, tmp_path,
                  extra: list[str]) -> Trainer:
    """A trainer of the tiny ``family`` whose streams (``shapes``: name -> (channels, side)) are
    seeded stand-ins: every rank takes its slice of the same global batches."""
    cfg = load_config(None, tiny_overrides(tmp_path, family, strategy) + extra)
    trainer = Trainer(cfg, env)
    trainer.streams = {name: FixedStream(trainer.micro_batch, env.rank, env.world_size, shape,
                                         seed=11 + i)
                       for i, (name, shape) in enumerate(shapes.items())}
    return trainer


ATOL = {"ddp": 1e-9, "fsdp": 1e-9, "deepspeed": 1e-5}
"""As tests/parallel/test_strategies.py: float64 for ddp and fsdp; ZeRO-3 runs float32 (fp32
master weights)."""


def train_fixed(env: DistEnv, family: list[str], shapes: dict, strategy: str, tmp_path,
                extra: list[str], steps: int) -> dict:
    """``steps`` steps of the stand-in data; the final state of every network."""
    name, _, stage = strategy.partition("-")
    # ZeRO-3 runs float32 (it refuses float64 modules), and the float32 rounding of a sharded
    # run grows through the GAN's steps in proportion to Adam's step size: at lr 2e-4 CycleGAN's
    # weights drift ~1e-5 from the reference after 3 steps, at 2e-5 ~1e-8 (networks) and 4e-7
    # (the pools' images). Its runs (and their reference) use lr 2e-5: a gradient a rank does not
    # reduce still moves its weights by ~lr per step, above the 1e-5 tolerance.
    if stage == "3":
        extra = extra + ["optim.g_lr=2e-5", "optim.d_lr=2e-5"]
    extra = extra + ([f"parallel.zero_stage={stage}"] if stage else [])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if stage == "3" else torch.float64)
    try:
        trainer = fixed_trainer(env, family, shapes, name, tmp_path, extra)
        rows = [trainer.train_step() for _ in range(steps)]
        assert not any(r["nonfinite"] for r in rows)
        return {"phases": [sorted(k for k in r if k.startswith("loss/")) for r in rows],
                **full_state(trainer)}
    finally:
        torch.set_default_dtype(previous)


def assert_matches(single: dict, ranks: list[dict], strategy: str) -> None:
    atol = ATOL[strategy.partition("-")[0]]
    for key, want in single.items():
        for r, got in enumerate(ranks):
            if key == "phases":
                assert got[key] == want
                continue
            torch.testing.assert_close(got[key], want, rtol=0, atol=atol,
                                       msg=lambda m, key=key, r=r: f"rank {r} {key}: {m}")


def full_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every network, averaged copy and family state tensor, unsharded."""
    out = {}
    for name, model in trainer._all_networks():
        out.update({f"{name}.{k}": v
                    for k, v in trainer.strategy.full_state_dict(model).items()})
    out.update({f"family.{k}": v.clone() for k, v in trainer.family.state_dict().items()})
    return out


class Fn(nn.Module):
    """A stand-in network computing ``fn`` (for losses checked by hand)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def train_and_evaluate(overrides: list[str]) -> tuple[Trainer, dict, dict]:
    """Train a run to its end; the family's held-out metrics before and after."""
    trainer = Trainer(load_config(None, overrides))
    stage = trainer.phase()
    before = trainer.family.evaluate(trainer.ema, DistEnv(), trainer.cfg.eval, stage)
    trainer.train()
    trainer.close()
    after = trainer.family.evaluate(trainer.ema, DistEnv(), trainer.cfg.eval, stage)
    return trainer, before, after


class StubServices:
    """The trainer's services for one process: a seeded shared RNG, no autocast."""

    rank, world = 0, 1
    device = torch.device("cpu")

    def __init__(self, seed: int = 0):
        self.rng = torch.Generator().manual_seed(seed)

    def draw(self, fn, n: int, *shape: int) -> torch.Tensor:
        return fn(n, *shape, generator=self.rng)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def augment(self, images: torch.Tensor, draw=None) -> torch.Tensor:
        return images  # augment.kind=none

    def observe_real(self, logits: torch.Tensor) -> None:
        pass

    def autocast(self):
        return contextlib.nullcontext()


def losses_by_step(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss/") or k == "step"}
            for r in rows if any(k.startswith("loss/") for k in r)]


def run_in_parts(overrides: list[str], name: str, parts: list[int]) -> Trainer:
    """Train ``sum(parts)`` steps of run ``name``, a new process-like Trainer per part (each
    resumes from the checkpoint the previous one wrote at its end)."""
    trainer = None
    for steps in parts:
        trainer = Trainer(load_config(None, overrides + [f"name={name}", "log.every_steps=1",
                                                         "checkpoint.every_kimg=1000"]))
        trainer.train(max_steps=steps)
        trainer.close()
    return trainer


def assert_resume_is_exact(overrides: list[str], parts: tuple[int, int] = (3, 3)) -> None:
    """A run stopped and resumed repeats the straight run's losses bit for bit and ends with the
    same weights, averaged copies and family state."""
    straight = run_in_parts(overrides, "straight", [sum(parts)])
    split = run_in_parts(overrides, "split", list(parts))
    a, b = losses_by_step(straight.run_dir), losses_by_step(split.run_dir)
    assert len(a) == sum(parts) and a == b
    want, got = full_state(straight), full_state(split)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def write_png(path, array) -> None:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def shards_to_folder(shards, folder, resolution: int, channels: int) -> list:
    """The images of a shard set as PNG files in ``folder`` (what `generate --input` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = read_images(str(shards), resolution, channels=channels)
    arrays = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    paths = []
    for i, arr in enumerate(arrays.permute(0, 2, 3, 1).numpy()):
        paths.append(folder / f"{i:03d}.png")
        write_png(paths[-1], arr[..., 0] if channels == 1 else arr)
    return paths


def assert_bad_inputs_are_named(run_dir, tmp_path, side: int, channels: int) -> None:
    """`scalegan generate RUN --input DIR`: a file of the wrong size, of the wrong channel
    count, and a non-image each end with exit 2 and a message naming the file."""
    good = np.zeros((side, side) if channels == 1 else (side, side, 3))
    wrong_channels = np.zeros((side, side, 3) if channels == 1 else (side, side))
    cases = {"small.png": (np.zeros((side // 2, side // 2) if channels == 1 else
                                    (side // 2, side // 2, 3)), f"is {side // 2}x{side // 2}"),
             "colour.png": (wrong_channels, "channel"),
             "notes.png": (None, "is not an image")}
    for name, (array, message) in cases.items():
        folder = tmp_path / f"input_{name}"
        folder.mkdir()
        write_png(folder / "ok.png", good)
        if array is None:
            (folder / name).write_text("not an image")
        else:
            write_png(folder / name, array)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["generate", str(run_dir), "--input", str(folder),
                         "--out", str(tmp_path / f"out_{name}")])
        assert code == 2, err.getvalue()
        assert name in err.getvalue() and message in err.getvalue(), err.getvalue()


def assert_configs_train_a_step(tmp_path, arch: str, configs: list[tuple]) -> None:
    """Each (config file, overrides) loads as ``model.arch=arch`` and trains one step."""
    for path, extra in configs:
        cfg = load_config(path, [f"runs_dir={tmp_path}", "log.progress=false",
                                 "log.wandb=disabled", *extra])
        assert cfg.model.arch == arch
        trainer = Trainer(cfg)
        assert trainer.train(max_steps=1) == "max_steps"
        trainer.close()
