"""The 2-D benchmarks' model through the trainer: MLP G and D on mixture points."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.families.mlp import POINT_SAMPLES
from scalegan.train.trainer import Trainer


def mlp_overrides(tmp_path, name="m", mixture="grid25", extra=()) -> list[str]:
    return [f"runs_dir={tmp_path}", f"name={name}", "model.arch=mlp", "data.source=points",
            f"data.points={mixture}", "model.latent_dim=2", "model.mlp_hidden=32",
            "model.mlp_layers=2", "train.batch_size=64", "train.total_kimg=100",
            "log.every_steps=5", "log.sample_every_kimg=0.64", "log.wandb=disabled",
            "log.progress=false", "checkpoint.every_kimg=100", *extra]


@pytest.mark.parametrize("mbdisc", [0, 8])
def test_mlp_on_points_trains_logs_modes_and_draws_scatter_plots(tmp_path, mbdisc):
    cfg = load_config(None, mlp_overrides(tmp_path, extra=[f"model.mbdisc_kernels={mbdisc}",
                                                           "loss.kind=wgan_gp"]))
    trainer = Trainer(cfg)
    assert trainer.train(max_steps=20) == "max_steps"
    trainer.close()
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss/D" in r]
    assert len(losses) == 4 and all(np.isfinite(r["loss/gp"]) for r in losses)
    modes = [r for r in rows if "modes/covered" in r]
    assert [r["step"] for r in modes] == [10, 20]  # every 640 points, and at the end
    assert all(0 <= r["modes/covered"] <= 25 and 0 <= r["modes/high_quality"] <= 1 for r in modes)
    scatter = Image.open(cfg.run_dir / "samples" / "latest.png")
    assert scatter.size == (512, 512)
    pixels = np.asarray(scatter)
    assert (pixels == (220, 40, 40)).all(-1).any() and (pixels == (20, 20, 90)).all(-1).any()
    assert trainer.family.sample_z.shape == (POINT_SAMPLES, 2)

    out = tmp_path / "g.png"
    assert main(["generate", str(cfg.run_dir), "--num", "500", "--out", str(out)]) == 0
    assert Image.open(out).size == (512, 512)


def test_mlp_resume_is_exact(tmp_path):
    def run(name: str, steps: int) -> list[dict]:
        trainer = Trainer(load_config(None, mlp_overrides(tmp_path, name, "ring8",
                                                          ["log.every_steps=1"])))
        trainer.train(max_steps=steps)
        trainer.close()
        return [{k: v for k, v in json.loads(line).items() if k.startswith("loss/")}
                for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
                if "loss/D" in line]

    straight = run("straight", 8)
    run("split", 4)
    assert run("split", 4) == straight  # the point stream's position is in the checkpoint


def test_mlp_takes_points_or_images_and_image_models_refuse_points():
    assert load_config(None, ["model.arch=mlp"]).data.source == "shards"  # the vanilla GAN
    assert load_config(None, ["model.arch=mlp", "data.source=points"]).data.source == "points"
    with pytest.raises(ConfigError, match="data.source='points' is not allowed: expected shards "
                                          "with model.arch=progressive"):
        load_config(None, ["data.source=points"])
