"""The command line: config errors, shard errors, dry run, and pack -> train -> generate."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from scalegan.cli import main

from monitor.wandb_records import history_keys

CONFIG = "configs/demo_faces32_pggan.yaml"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("override,named,allowed", [
    ("train.batchsize=32", "unknown key train.batchsize", "batch_size"),   # unknown key
    ("train.batch_size=many", "train.batch_size='many' has the wrong type", "int"),  # type
    ("model.resolution=48", "model.resolution=48 is not allowed", "power of two from 8 to 1024"),
    ("loss.kind=wasserstein", "loss.kind='wasserstein'",
     "nonsaturating | minimax | lsgan | hinge | wgan | wgan_gp | rpgan"),
    ("train.grad_accum=3", "train.grad_accum=3", "a divisor of train.batch_size=16"),
])
def test_config_errors_exit_2_naming_the_key(override, named, allowed, capsys, tmp_path):
    code = main(["train", CONFIG, override, f"runs_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert named in err and allowed in err
    assert not (tmp_path / "demo_faces32").exists()  # nothing was started


def test_unknown_key_in_yaml_file_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  resolutoin: 64\n")
    assert main(["train", str(cfg)]) == 2
    assert "unknown key model.resolutoin" in capsys.readouterr().err


def test_empty_or_missing_shards_exit_2(tmp_path, capsys):
    assert main(["train", CONFIG, "data.shards=", f"runs_dir={tmp_path}"]) == 2
    assert "data.shards is empty" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "{000000..000001}.tar"
    assert main(["train", CONFIG, f"data.shards={missing}", f"runs_dir={tmp_path}"]) == 2
    assert "nowhere/000000.tar" in capsys.readouterr().err


def test_dry_run_prints_1024_parameter_counts(capsys):
    assert main(["train", "configs/ffhq1024_pggan.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "progressive 1024x1024: G 23,079,115 parameters (23.1M), D 23,087,249" in out


def test_pack_train_generate_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    shards = tmp_path / "faces"
    assert main(["pack", "demo", str(shards), "--resolution", "16", "--shard-size", "25"]) == 0
    assert "100 samples in 4 shards at 16x16" in capsys.readouterr().out
    overrides = [
        f"data.shards={shards}", f"runs_dir={tmp_path / 'runs'}", "name=e2e",
        "model.resolution=16", "model.channel_base=128", "model.channel_max=16",
        "model.latent_dim=16", "train.batch_size=8", "train.total_kimg=0.048",
        "train.schedule.stable_kimg=0.016", "train.schedule.fade_kimg=0.016",
        "log.every_steps=2", "log.sample_every_kimg=0.024", "log.wandb=auto",
        "data.num_workers=2",
    ]
    assert main(["train", CONFIG, *overrides]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "e2e"
    for line in ("sample grid", "metrics", "checkpoint", "W&B run"):
        assert line in out
    assert (run / "samples" / "latest.png").is_file() and (run / "config.yaml").is_file()

    # the W&B offline run, read back from its own file
    run_files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_files) == 1
    keys = history_keys(run_files[0])
    assert {"loss/D", "loss/G", "resolution", "alpha", "images_per_s"} <= keys
    assert any(k.startswith("samples/") for k in keys)
    media = run / "wandb" / "offline-run-*" / "files" / "media" / "images"
    images = glob.glob(str(media / "*.png"))
    assert images

    # generate: reproducible by seed, different for another seed
    ckpt = run / "checkpoints" / "latest"
    digests = []
    for seed, name in ((7, "a.png"), (7, "b.png"), (8, "c.png")):
        assert main(["generate", str(ckpt), "--num", "9", "--out", str(tmp_path / name),
                     "--seed", str(seed)]) == 0
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]
    assert Image.open(tmp_path / "a.png").size == (3 * 64, 3 * 64)  # 16^2 tiles shown at 64^2
    assert main(["generate", str(run), "--num", "3", "--out", str(tmp_path / "ind"),
                 "--individual"]) == 0
    assert sorted(p.name for p in (tmp_path / "ind").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "ind" / "000000.png").size == (16, 16)

    # running again resumes from the checkpoint: the run is complete, so no step is repeated
    steps_before = (run / "metrics.jsonl").read_text().count("\n")
    assert main(["train", CONFIG, *overrides]) == 0
    assert (run / "metrics.jsonl").read_text().count("\n") == steps_before


def test_overrides_may_follow_the_options(capsys):
    assert main(["train", CONFIG, "--dry-run", "model.resolution=64"]) == 0
    assert "64x64" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", CONFIG, "--dry-run", "--bogus"])
