"""Stop signals sent the way Slurm and a terminal send them, to the trainer's whole process group
(DataLoader workers included): the trainer checkpoints after the step and exits 3 (130 after
Ctrl-C), the resumed run continues with no image lost or repeated; a wait for data is cut short;
a data set with nothing decodable is an error within seconds, not a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalegan.cli import main
from scalegan.generate import load_generator

from conftest import png_bytes, write_shards

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def args(tmp_path: Path, name: str, workers: int, shards: str | None = None) -> list[str]:
    if shards is None:
        shards = str(tmp_path / "shards")
        if not Path(shards).exists():
            write_shards(Path(shards), num_shards=4, per_shard=8, resolution=16)
    return [
        "configs/demo_faces32_pggan.yaml", f"data.shards={shards}",
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "model.resolution=16",
        # steps long enough (~0.1 s) that a signal mostly finds the trainer computing, not
        # waiting for data
        "model.channel_base=2048", "model.channel_max=128", "model.latent_dim=16",
        "model.img_channels=3", "train.batch_size=8", "train.total_kimg=100",
        "train.schedule.fade_kimg=0.4", "train.schedule.stable_kimg=0.4",
        "checkpoint.every_kimg=100", "log.wandb=disabled", "log.progress=false",
        "log.every_steps=1", f"data.num_workers={workers}", "data.shuffle_buffer=8",
    ]


def start(cmd_args: list[str], max_steps: int | None = None) -> subprocess.Popen:
    """`scalegan train` in a session of its own: its process group is it and its workers."""
    extra = ["--max-steps", str(max_steps)] if max_steps else []
    return subprocess.Popen([sys.executable, "-m", "scalegan.cli", "train", *cmd_args, *extra],
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def rows(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / "runs" / name / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def signal_group_after(proc: subprocess.Popen, tmp_path: Path, name: str, sig: int,
                       after_rows: int = 5) -> tuple[int, str]:
    deadline = time.time() + 120
    while len(rows(tmp_path, name)) < after_rows:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # the trainer and its DataLoader workers, as Slurm and Ctrl-C do
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(tmp_path, workers):
    code, err = signal_group_after(start(args(tmp_path, "split", workers)), tmp_path, "split",
                                   signal.SIGTERM)
    assert code == 3, err[-3000:]
    assert "Traceback" not in err and "exit 3 asks the launcher to requeue" in err
    stopped = rows(tmp_path, "split")[-1]["step"]
    latest = tmp_path / "runs" / "split" / "checkpoints" / "latest"
    assert json.loads((latest / "meta.json").read_text())["step"] == stopped

    total = stopped + 10
    resumed = start(args(tmp_path, "split", workers), max_steps=10)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    straight = start(args(tmp_path, "straight", workers), max_steps=total)
    assert straight.wait(timeout=300) == 0, straight.communicate()[1][-3000:]

    seen = [r["images_seen"] for r in rows(tmp_path, "split")]
    assert seen == [8 * k for k in range(1, total + 1)]  # no gap, no repeat
    assert [r["loss/D"] for r in rows(tmp_path, "split")] == [
        r["loss/D"] for r in rows(tmp_path, "straight")]
    a, _ = load_generator(tmp_path / "runs" / "split")
    b, _ = load_generator(tmp_path / "runs" / "straight")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_ctrl_c_checkpoints_and_exits_130_without_a_traceback(tmp_path):
    code, err = signal_group_after(start(args(tmp_path, "int", 2)), tmp_path, "int",
                                   signal.SIGINT)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "exit 130 after Ctrl-C" in err
    latest = tmp_path / "runs" / "int" / "checkpoints" / "latest"
    assert json.loads((latest / "meta.json").read_text())["step"] == rows(tmp_path, "int")[-1][
        "step"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_signal_ends_a_wait_for_data_at_once(tmp_path, workers):
    # shards that never arrive: each is a command that sleeps
    proc = start(args(tmp_path, "wait", workers, shards="pipe:sleep 300,pipe:sleep 301"))
    time.sleep(6)  # well into the wait for the first batch
    assert proc.poll() is None
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and time.time() - t0 < 15, err[-3000:]
    assert "Traceback" not in err and "no checkpoint yet" in err


def corrupt_shards(directory: Path, num_shards: int, per_shard: int) -> None:
    write_shards(directory, num_shards, per_shard, 16)  # then replace every image by junk
    import webdataset as wds

    for s in range(num_shards):
        with wds.TarWriter(str(directory / f"{s:06d}.tar")) as sink:
            for i in range(per_shard):
                sink.write({"__key__": f"{s * per_shard + i:08d}",
                            "png": png_bytes(torch.zeros(4, 4, 3, dtype=torch.uint8).numpy())[:20]})


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("case", ["max_skip", "empty_epoch"])
def test_no_decodable_image_is_an_error_within_seconds(tmp_path, capsys, monkeypatch, workers,
                                                       case):
    monkeypatch.chdir(ROOT)
    shards = tmp_path / "junk"
    corrupt_shards(shards, num_shards=4, per_shard=6)
    extra = ["data.max_skip=5"] if case == "max_skip" else []
    t0 = time.time()
    code = main(["train", *args(tmp_path, "junk", workers, shards=str(shards)), *extra])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - t0 < 60, err[-3000:]
    want = "5 consecutive samples (data.max_skip=5)" if case == "max_skip" else "a whole epoch"
    assert "found no decodable image in" in err and want in err
    assert f"{shards}/00000" in err  # names the shards it read
    assert not (tmp_path / "runs" / "junk" / "checkpoints").exists()
