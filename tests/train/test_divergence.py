"""Non-finite losses and gradients: the update is never applied, the run stops as diverged
(exit 4) after train.max_nonfinite in a row, metrics.jsonl stays strict JSON, and no checkpoint
with non-finite weights (or written during the non-finite steps) exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.pipeline import Batch
from scalegan.monitor.loggers import JsonlLogger
from scalegan.train.trainer import DivergenceError, Trainer

ROOT = Path(__file__).resolve().parents[2]


def strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl parsed with a strict JSON parser: NaN, Infinity are errors."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def mlp_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["configs/grid25_mlp.yaml", f"runs_dir={tmp_path}", "name=div", "log.wandb=disabled",
            "log.progress=false", "log.every_steps=1", "checkpoint.every_kimg=0.256",
            "checkpoint.keep=1", "train.total_kimg=100", *extra]


@pytest.fixture(autouse=True)
def _root(monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    caplog.set_level("INFO")


@pytest.mark.parametrize("policy,streak", [("skip", 10), ("stop", 1)])
def test_diverging_run_stops_with_exit_4_and_keeps_a_finite_checkpoint(tmp_path, capsys,
                                                                       policy, streak):
    # Adam moves every weight by up to lr per step: at lr 1000 for both players the MLP pair's
    # outputs overflow float32 within a few steps (measured: D's loss is inf from step 6 on)
    code = main(["train", *mlp_args(tmp_path, "optim.g_lr=1000", "optim.d_lr=1000",
                                    f"train.on_nonfinite={policy}")])
    err = capsys.readouterr().err
    assert code == 4, err
    rows = strict_rows(tmp_path / "div" / "metrics.jsonl")
    first_bad = next(r["step"] for r in rows if r["nonfinite_steps"])
    last = rows[-1]
    assert last["step"] == first_bad + streak - 1 and last["step"] <= 20
    assert f"training diverged at step {last['step']}" in err and "loss/D=inf" in err
    assert f"{streak} step(s) in a row" in err
    assert last["loss/D"] is None and last["nonfinite_values"] >= 1  # null, and counted

    checkpoints = sorted((tmp_path / "div" / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1  # keep=1: the one written before the first non-finite step
    saved_step = int(checkpoints[0].name.split("_")[1])
    assert saved_step < first_bad and str(checkpoints[0]) in err
    trainer = Trainer(load_config("configs/grid25_mlp.yaml", mlp_args(tmp_path)[1:]))
    assert trainer.resume() and trainer.step == saved_step
    assert trainer.weights_finite()  # G, D and G_ema of the kept checkpoint


def test_metrics_lines_are_strict_json(tmp_path):
    logger = JsonlLogger(tmp_path / "m.jsonl")
    logger.log_scalars(3, {"loss/D": float("nan"), "loss/G": float("inf"), "kimg": 0.1})
    logger.close()
    row = strict_rows(tmp_path / "m.jsonl")[0]
    assert row == {"step": 3, "loss/D": None, "loss/G": None, "kimg": 0.1,
                   "nonfinite_values": 2}


# ----------------------------------------------------------------------------- step by step


class Batches:
    """Seeded global batches of 16x16 images; batch ``poison`` (0-based) is all NaN."""

    def __init__(self, micro: int, poison: int | None = None):
        self.micro, self.poison, self.n = micro, poison, 0
        self.gen = torch.Generator().manual_seed(3)
        self.skipped = 0

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def next_batch(self) -> Batch:
        x = torch.rand(self.micro, 3, self.resolution, self.resolution, generator=self.gen) * 2 - 1
        if self.n == self.poison:
            x = torch.full_like(x, float("nan"))
        self.n += 1
        return Batch(x, [])

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]

    def close(self, now: bool = False) -> None: ...


def image_trainer(tmp_path: Path, *extra: str) -> Trainer:
    cfg = load_config(None, [
        f"runs_dir={tmp_path}", "name=t", "model.resolution=16", "model.latent_dim=16",
        "model.channel_base=128", "model.channel_max=16", "train.batch_size=8",
        "train.total_kimg=10", "train.schedule.start_resolution=16", "loss.r1_gamma=0",
        "log.wandb=disabled", "log.progress=false", "data.shards=unused", *extra])
    return Trainer(cfg)


def state(trainer: Trainer, which: str) -> dict[str, torch.Tensor]:
    model = {"G": trainer.G, "D": trainer.D, "G_ema": trainer.G_ema}[which]
    out = {k: v.clone() for k, v in model.state_dict().items()}
    if which in ("G", "D"):
        opt = {"G": trainer.opt_G, "D": trainer.opt_D}[which]
        for i, s in enumerate(opt.state.values()):
            out.update({f"opt{i}.{k}": v.clone() for k, v in s.items()})
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_batch_leaves_d_and_its_adam_state_untouched(tmp_path):
    trainer = image_trainer(tmp_path)
    trainer.data = Batches(trainer.micro_batch, poison=2)
    for _ in range(2):
        assert trainer.train_step()["nonfinite"] == 0
    d_before, g_before = state(trainer, "D"), state(trainer, "G")
    row = trainer.train_step()  # the NaN batch: D's loss is NaN, G's does not see the reals
    assert row["nonfinite"] == 1 and trainer.skipped_updates == ["D"]
    assert same(state(trainer, "D"), d_before)  # weights, moments and Adam's step count
    assert not same(state(trainer, "G"), g_before)
    assert trainer.train_step()["nonfinite"] == 0  # and training goes on
    assert trainer.images_seen == 4 * 8


def test_a_nan_gradient_with_a_finite_loss_is_skipped_too(tmp_path):
    trainer = image_trainer(tmp_path)
    trainer.data = Batches(trainer.micro_batch)
    weight = list(trainer.D.parameters())[-1]  # the output layer's: used at every resolution
    handle = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    d_before = state(trainer, "D")
    row = trainer.train_step()
    handle.remove()
    assert all(v == v for k, v in row.items() if k.startswith("loss/"))  # finite losses
    assert trainer.skipped_updates == ["D"] and same(state(trainer, "D"), d_before)


def test_rollback_restores_the_newest_checkpoint_and_the_data_goes_on(tmp_path):
    trainer = image_trainer(tmp_path, "train.on_nonfinite=rollback")
    trainer.data = Batches(trainer.micro_batch, poison=3)
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    saved = {w: state(trainer, w) for w in ("G", "D", "G_ema")}
    trainer._check_finite(trainer.train_step())  # a finite step moves everything
    assert not same(state(trainer, "G"), saved["G"])
    row = trainer.train_step()  # the NaN batch
    trainer._check_finite(row)  # policy rollback: back to the checkpoint of step 2
    assert all(same(state(trainer, w), saved[w]) for w in ("G", "D", "G_ema"))
    assert trainer.step == 4 and trainer.images_seen == 32 and trainer.nonfinite_streak == 1
    trainer._check_finite(trainer.train_step())
    assert trainer.nonfinite_streak == 0


def test_skip_stops_after_max_nonfinite_in_a_row(tmp_path):
    trainer = image_trainer(tmp_path, "train.max_nonfinite=3")
    trainer.data = Batches(trainer.micro_batch, poison=0)
    trainer.data.poison = None
    trainer.data.next_batch = lambda: Batch(torch.full((4, 3, 16, 16), float("nan")), [])
    for _ in range(2):
        trainer._check_finite(trainer.train_step())
    with pytest.raises(DivergenceError, match=r"at step 3 .*3 step\(s\) in a row"):
        trainer._check_finite(trainer.train_step())
    assert trainer.save() is not None  # the weights are finite: nothing non-finite was applied
    assert os.path.isdir(tmp_path / "t" / "checkpoints" / "step_000000003")
