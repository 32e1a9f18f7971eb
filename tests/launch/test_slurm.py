"""scalegan under a real Slurm (one machine, 2 CPUs): the project's sbatch script, a warning
signal that checkpoints and requeues, a kill in the middle of a checkpoint write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_shards
from launch.slurm import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def train_args(tmp_path: Path, name: str, total_steps: int, workers: int = 0) -> list[str]:
    shards = tmp_path / "shards"
    if not shards.exists():
        write_shards(shards, num_shards=4, per_shard=8, resolution=16)
    return [
        "configs/demo_faces32_pggan.yaml", f"data.shards={shards}", f"runs_dir={tmp_path / 'runs'}",
        f"name={name}", "parallel.strategy=ddp", "model.resolution=16", "model.channel_base=128",
        "model.channel_max=16", "model.latent_dim=16", "model.img_channels=3",
        "train.batch_size=8", f"train.total_kimg={total_steps * 8 / 1000}",
        "train.schedule.stable_kimg=0.4", "train.schedule.fade_kimg=0.4", "log.every_steps=1",
        "log.wandb=offline", "log.progress=false", "checkpoint.every_kimg=0.4",
        f"data.num_workers={workers}",
    ]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def submit(slurm: SlurmCluster, tmp_path: Path, args: list[str]) -> tuple[str, Path]:
    log = tmp_path / "job.out"
    env = f"ALL,SCALEGAN_PYTHON={sys.executable},OMP_NUM_THREADS=1,WANDB_MODE=offline"
    proc = slurm.run("sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2",
                     "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
                     f"--output={log}", f"--chdir={ROOT}", f"--export={env}",
                     str(ROOT / "launch" / "scalegan.sbatch"), *args)
    return proc.stdout.strip().split(";")[0], log


def rows(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / "runs" / name / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sbatch_script_trains_on_two_tasks(slurm, tmp_path):
    job, log = submit(slurm, tmp_path, train_args(tmp_path, "two", total_steps=6))
    state = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=300)
    text = log.read_text()
    assert state == "COMPLETED", text[-4000:]
    assert "2 rank(s), strategy ddp" in text and "2 task(s) on 1 node(s)" in text
    latest = tmp_path / "runs" / "two" / "checkpoints" / "latest"
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["images_seen"] == 48
    assert [r["images_seen"] for r in rows(tmp_path, "two")] == [8 * k for k in range(1, 7)]


def test_warning_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    total = 150
    job, log = submit(slurm, tmp_path, train_args(tmp_path, "pre", total_steps=total))
    deadline = time.time() + 300
    while len(rows(tmp_path, "pre")) < 5:  # let it train a few steps first
        assert time.time() < deadline, log.read_text()[-4000:] if log.exists() else "no log"
        time.sleep(0.5)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    # the job writes a checkpoint, exits 3, requeues itself and runs to the end. Slurm holds a
    # requeued job back for cred_expire (5 s in this cluster's slurm.conf; forcing an earlier
    # start races the old job's cleanup: "Job credential revoked").
    slurm.wait(job, ("PENDING", "REQUEUED"), timeout=120)
    state = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=600)
    text = log.read_text()
    assert state == "COMPLETED", text[-4000:]
    assert "got SIGUSR1" in text and "requeueing" in text and "start 1:" in text
    seen = [r["images_seen"] for r in rows(tmp_path, "pre")]
    assert seen == [8 * k for k in range(1, total + 1)]  # no gap, no repeat across both parts
    stopped_at = next(int(line.split("(step ")[1].split(")")[0])
                      for line in text.splitlines() if "resumed from" in line)
    assert 5 <= stopped_at < total
    runs = sorted((tmp_path / "runs" / "pre" / "wandb").glob("offline-run-*"))
    ids = {p.name.rsplit("-", 1)[1] for p in runs}
    assert len(runs) == 2 and len(ids) == 1  # both parts logged to the same W&B run


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_to_every_process_of_the_step_requeues_and_resumes(slurm, tmp_path, workers):
    # what preemption and the time limit do, and `scancel --signal=TERM JOB.0`: every process of
    # the step (trainers, their DataLoader workers, W&B's service) gets SIGTERM at once
    # steps of ~0.1 s: the signal, sent once 5 rows are logged, lands some 10 steps later
    total = 60
    args = train_args(tmp_path, "step", total_steps=total, workers=workers) + [
        "model.channel_base=2048", "model.channel_max=128"]
    job, log = submit(slurm, tmp_path, args)
    deadline = time.time() + 300
    while len(rows(tmp_path, "step")) < 5:
        assert time.time() < deadline, log.read_text()[-4000:] if log.exists() else "no log"
        time.sleep(0.3)
    slurm.run("scancel", "--signal=TERM", f"{job}.0")
    slurm.wait(job, ("PENDING", "REQUEUED"), timeout=120)
    state = slurm.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=600)
    text = log.read_text()
    assert state == "COMPLETED", text[-4000:]
    assert "tasks 0-1: Exited with exit code 3" in text and "requeueing" in text
    assert "start 1:" in text and "DataLoader worker" not in text
    seen = [r["images_seen"] for r in rows(tmp_path, "step")]
    assert seen == [8 * k for k in range(1, total + 1)]  # no gap, no repeat across both parts
    stopped_at = next(int(line.split("(step ")[1].split(")")[0])
                      for line in text.splitlines() if "resumed from" in line)
    assert 5 <= stopped_at < total


def test_kill_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    # checkpoints every 2 steps; the one of step 4 is held half written and the process killed
    args = train_args(tmp_path, "kill", total_steps=10) + [
        "checkpoint.every_kimg=0.016", "log.wandb=disabled", "parallel.strategy=ddp"]
    env = dict(os.environ, SCALEGAN_TEST_CHECKPOINT_PAUSE="4:60", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scalegan.cli", "train", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "runs" / "kill" / "checkpoints"
    half = ckpts / ".tmp-step_000000004"
    deadline = time.time() + 120
    while not (half / "rank_00000.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (half / ".metadata").exists()  # the tensors of step 4 were on disk...
    assert os.readlink(ckpts / "latest") == "step_000000002"  # ...but never became a checkpoint

    resumed = subprocess.run([sys.executable, "-m", "scalegan.cli", "train", *args,
                              "--max-steps", "3"], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_000000002 at 0.0 kimg (step 2)" in resumed.stderr
    assert not half.exists()  # the half-written directory is cleaned up at the next save
    assert os.readlink(ckpts / "latest") == "step_000000005"
