"""`scalegan train` under torchrun with 2 CPU ranks, and resuming its checkpoint at 1 rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import write_shards
from parallel.spawn import free_port


def _train(tmp_path, nproc: int, steps: int, strategy: str):
    shards = tmp_path / "shards"
    if not shards.exists():
        write_shards(shards, num_shards=4, per_shard=8, resolution=16)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "-m", "scalegan.cli"] if nproc > 1 else [
           sys.executable, "-m", "scalegan.cli"]
    cmd += ["train", "configs/demo_faces32_pggan.yaml", f"data.shards={shards}",
            f"runs_dir={tmp_path / 'runs'}", "name=tr", f"parallel.strategy={strategy}",
            "model.resolution=16", "model.channel_base=128", "model.channel_max=16",
            "model.latent_dim=16", "train.batch_size=8", "train.total_kimg=10",
            "train.schedule.stable_kimg=0.016", "train.schedule.fade_kimg=0.016",
            "log.every_steps=1", "log.wandb=disabled", "log.progress=false",
            "--max-steps", str(steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("strategy", ["ddp"])
def test_torchrun_two_ranks_then_resume_on_one(tmp_path, strategy):
    first = _train(tmp_path, 2, steps=3, strategy=strategy)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 rank(s), strategy " + strategy in first.stderr
    run = tmp_path / "runs" / "tr"
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["images_seen"] == 24
    assert sorted(p.name for p in (run / "checkpoints" / "latest").glob("rank_*.json")) == [
        "rank_00000.json", "rank_00001.json"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone logs

    second = _train(tmp_path, 1, steps=2, strategy=strategy)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at 0.0 kimg (step 3)" in second.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in rows] == [8, 16, 24, 32, 40]
