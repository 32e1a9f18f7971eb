"""Shared by the family benchmarks: pack a built-in set, train a demo config in one process,
evaluate the averaged networks on the held-out images before and after."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from scalegan.config import load_config
from scalegan.parallel.env import DistEnv
from scalegan.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def parse_args(doc: str, kimg: float, **extra: float) -> argparse.Namespace:
    """--kimg, --threads, --keep (and ``extra`` float options, e.g. pretrain_kimg); sets the
    thread count."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=kimg)
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=default)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", default=None, help="keep the run in this directory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


@contextlib.contextmanager
def workspace(keep: str | None):
    """(data directory, runs directory): temporary, the runs kept in ``keep`` if given."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "data", Path(keep or Path(tmp) / "runs")


def train_and_evaluate(config: str, overrides: list[str], runs: Path) -> tuple[Trainer, dict,
                                                                              dict, float]:
    """Train ``config`` (with ``overrides``) in ``runs``; its family's held-out metrics at
    step 0 and at the end, and the training time in seconds."""
    cfg = load_config(ROOT / config, [f"runs_dir={runs}", "log.wandb=disabled",
                                      "log.progress=false", "checkpoint.every_kimg=1000",
                                      *overrides])
    trainer = Trainer(cfg)
    stage = trainer.phase()
    before = trainer.family.evaluate(trainer.ema, DistEnv(), cfg.eval, stage)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.close()
    after = trainer.family.evaluate(trainer.ema, DistEnv(), cfg.eval, trainer.phase())
    return trainer, before, after, seconds
