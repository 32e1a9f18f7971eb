"""`scalegan train` under torchrun on CPU ranks: checkpoints saved at one world size resume at
another, and at the same world size they continue with identical losses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_shards
from hostile import poison_torch_file, resign
from parallel.spawn import free_port

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, name: str, nproc: int, steps: int, strategy: str, check=True):
    strategy, _, stage = strategy.partition("-")  # "deepspeed-3": ZeRO stage 3
    shards = tmp_path / "shards"
    if not shards.exists():
        write_shards(shards, num_shards=4, per_shard=8, resolution=16)
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}", "-m", "scalegan.cli"]
    cmd = (launcher if nproc > 1 else [sys.executable, "-m", "scalegan.cli"]) + [
        "train", "configs/demo_faces32_pggan.yaml", f"data.shards={shards}",
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"parallel.strategy={strategy}",
        "model.resolution=16", "model.channel_base=128", "model.channel_max=16",
        "model.latent_dim=16", "model.img_channels=3", "train.batch_size=8",
        "train.total_kimg=10", "train.schedule.stable_kimg=0.016",
        "train.schedule.fade_kimg=0.016", "log.every_steps=1", "log.wandb=disabled",
        "log.progress=false"] + ([f"parallel.zero_stage={stage}"] if stage else []) + [
        "--max-steps", str(steps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 or not check, proc.stderr[-4000:]
    return proc


def _rows(tmp_path: Path, name: str) -> list[dict]:
    text = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_save_at_two_ranks_resume_at_one(tmp_path, strategy):
    first = _train(tmp_path, "tr", 2, steps=3, strategy=strategy)
    assert f"2 rank(s), strategy {strategy}" in first.stderr
    latest = tmp_path / "runs" / "tr" / "checkpoints" / "latest"
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["images_seen"] == 24
    assert sorted(p.name for p in latest.glob("rank_*.json")) == [
        "rank_00000.json", "rank_00001.json"]
    assert [r["step"] for r in _rows(tmp_path, "tr")] == [1, 2, 3]  # rank 0 alone logs

    second = _train(tmp_path, "tr", 1, steps=2, strategy=strategy)
    assert "resumed from" in second.stderr and "(step 3)" in second.stderr
    assert [r["images_seen"] for r in _rows(tmp_path, "tr")] == [8, 16, 24, 32, 40]


@pytest.mark.slow
def test_fsdp_save_at_two_resume_at_four(tmp_path):
    _train(tmp_path, "tr", 2, steps=3, strategy="fsdp")
    resumed = _train(tmp_path, "tr", 4, steps=1, strategy="fsdp")
    assert "4 rank(s), strategy fsdp" in resumed.stderr and "(step 3)" in resumed.stderr
    assert [r["images_seen"] for r in _rows(tmp_path, "tr")] == [8, 16, 24, 32]


@pytest.mark.slow
def test_deepspeed_checkpoint_resumes_at_its_own_world_size_only(tmp_path):
    first = _train(tmp_path, "tr", 2, steps=2, strategy="deepspeed-3")
    assert "2 rank(s), strategy deepspeed (ZeRO stage 3)" in first.stderr
    latest = tmp_path / "runs" / "tr" / "checkpoints" / "latest"
    assert (latest / "deepspeed_G").is_dir() and (latest / "deepspeed_D").is_dir()
    other = _train(tmp_path, "tr", 1, steps=1, strategy="deepspeed-3", check=False)
    assert other.returncode == 2
    assert "written by DeepSpeed at world size 2; it resumes at that world size only" in (
        other.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-2", "deepspeed-3"])
def test_same_world_size_resume_gives_identical_losses(tmp_path, strategy):
    _train(tmp_path, "straight", 2, steps=4, strategy=strategy)
    _train(tmp_path, "split", 2, steps=2, strategy=strategy)
    _train(tmp_path, "split", 2, steps=2, strategy=strategy)
    keys = ("step", "images_seen", "loss/D", "loss/G", "resolution", "alpha")
    straight = [tuple(r.get(k) for k in keys) for r in _rows(tmp_path, "straight")]
    split = [tuple(r.get(k) for k in keys) for r in _rows(tmp_path, "split")]
    assert len(straight) == 4 and split == straight


@pytest.mark.slow
@pytest.mark.parametrize("files", ["model_states", "optim_states"])
def test_deepspeed_files_with_a_payload_are_refused(tmp_path, files):
    # DeepSpeed's own loader would torch.load its files with weights_only=False
    _train(tmp_path, "ds", 2, steps=2, strategy="deepspeed-2")
    latest = (tmp_path / "runs" / "ds" / "checkpoints" / "latest").resolve()
    marker = tmp_path / "PWNED"
    poisoned = sorted((latest / "deepspeed_G").glob(f"*{files}.pt"))
    assert poisoned
    for f in poisoned:
        poison_torch_file(f, marker)
    resign(latest)  # an attacker who recomputes the checksums

    resumed = _train(tmp_path, "ds", 2, steps=1, strategy="deepspeed-2", check=False)
    # every rank exits 2 (torchrun itself then reports the failure with exit status 1)
    assert resumed.returncode != 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("scalegan: error: no checkpoint in") == 2
    assert f"{poisoned[0]} asks to load posix.system" in resumed.stderr
    assert "refusing to load it" in resumed.stderr and "moved aside" in resumed.stderr
    assert latest.with_name(latest.name + ".corrupt").is_dir()  # kept, not deleted
    assert not marker.exists()

    # generate and eval read only G_ema's DCP tensors: they never open DeepSpeed's files
    aside = latest.with_name(latest.name + ".corrupt")
    shutil.move(aside, latest)
    for cmd in (["generate", str(latest), "--num", "4", "--out", str(tmp_path / "g.png")],
                ["eval", str(latest), "--extractor", "random", "--num-fake", "8"]):
        proc = subprocess.run([sys.executable, "-m", "scalegan.cli", *cmd], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
