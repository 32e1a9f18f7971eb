"""Careless input at the command line: each case is one `scalegan: error:` line naming the file,
key or value, exit status 2 (5 for a full disk), and nothing already written is lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scalegan.cli import main
from scalegan.metrics.evaluate import _shard_counts
from scalegan.train.rundir import RunDirectory

from conftest import write_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _root(monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    caplog.set_level("INFO")


def train_args(tmp_path: Path, name: str = "run", shards: Path | None = None,
               resolution: int = 16) -> list[str]:
    if shards is None:
        shards = tmp_path / "shards"
        if not shards.exists():
            write_shards(shards, num_shards=2, per_shard=8, resolution=resolution)
    return [
        "train", "configs/demo_faces32_pggan.yaml", f"data.shards={shards}",
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "model.resolution=16",
        "model.channel_base=128", "model.channel_max=16", "model.latent_dim=16",
        "model.img_channels=3", "train.batch_size=8", "train.total_kimg=10",
        "checkpoint.every_kimg=0.016", "log.wandb=disabled", "log.progress=false",
        "log.every_steps=1", "data.num_workers=0",
    ]


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("scalegan: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    os.chdir(ROOT)
    assert main([*train_args(base), "--max-steps", "2"]) == 0
    return base / "runs" / "run"


# ------------------------------------------------------------------------------- the run directory


def test_resume_false_in_a_used_run_directory_is_refused_unless_overwrite(tmp_path, capsys):
    assert main([*train_args(tmp_path), "--max-steps", "3"]) == 0
    run = tmp_path / "runs" / "run"
    before = snapshot(run / "checkpoints")
    assert main([*train_args(tmp_path), "checkpoint.resume=false", "--max-steps", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    n = len(list((run / "checkpoints").glob("step_*")))
    assert f"{run / 'checkpoints'} already holds {n} checkpoint(s)" in line
    assert "checkpoint.overwrite=true" in line
    assert snapshot(run / "checkpoints") == before  # nothing pruned, nothing new

    assert main([*train_args(tmp_path), "checkpoint.resume=false", "checkpoint.overwrite=true",
                 "--max-steps", "1"]) == 0
    aside = next(run.glob("previous-*"))
    assert snapshot(aside / "checkpoints") == before  # the old run, moved whole
    assert (aside / "metrics.jsonl").is_file() and (aside / "samples").is_dir()
    assert os.readlink(run / "checkpoints" / "latest") == "step_000000001"  # the new run's
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_name_may_not_leave_runs_dir(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("precious: true\n")
    assert main([*train_args(tmp_path), "name=.."]) == 2
    assert "name='..' is not allowed" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "config.yaml").read_text() == "precious: true\n"


def test_a_second_trainer_on_one_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "runs" / "run"
    holder = RunDirectory(run)
    holder.open(resume=True, overwrite=False)  # another trainer, alive, holds the run
    try:
        assert main([*train_args(tmp_path), "--max-steps", "1"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{run} is in use by another trainer" in line and f"pid {os.getpid()}" in line
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    finally:
        holder.close()


def test_the_lock_of_a_dead_trainer_is_taken_over(tmp_path):
    run = tmp_path / "runs" / "run"
    dead = subprocess.Popen(["true"])
    dead.wait()
    run.mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": dead.pid}))
    assert main([*train_args(tmp_path), "--max-steps", "1"]) == 0
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


# --------------------------------------------------------------------------------- data checks


def test_resolution_mismatch_is_found_before_the_first_step(tmp_path, capsys):
    small = tmp_path / "small"
    write_shards(small, num_shards=2, per_shard=4, resolution=8)
    assert main(train_args(tmp_path, shards=small)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{small / 'index.json'}: the images are packed at 8x8" in line
    assert "model.resolution=16" in line
    assert not (tmp_path / "runs").exists()  # stopped before anything was written


def test_labels_the_model_needs_are_checked_before_the_first_step(tmp_path, capsys):
    write_shards(tmp_path / "shards", num_shards=2, per_shard=4, resolution=16)
    code = main([*train_args(tmp_path), "model.arch=stackgan", "model.base_resolution=8",
                 "model.condition=label", "model.num_classes=3", "loss.r1_gamma=0"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "the pack holds no labels, but model.condition=label reads 'label'" in line


def test_a_folder_of_tars_without_index_is_refused_unless_allowed(tmp_path, capsys):
    loose = tmp_path / "loose"
    write_shards(loose, num_shards=2, per_shard=4, resolution=16, index=False)
    assert main([*train_args(tmp_path, shards=loose), "--max-steps", "1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{loose} holds 2 tar file(s) but no index.json" in line
    assert "data.allow_unindexed=true" in line
    assert main([*train_args(tmp_path, shards=loose), "data.allow_unindexed=true",
                 "--max-steps", "1"]) == 0


@pytest.mark.parametrize("text", ["{not json", '{"resolution": 16}', '{"shards": [1, 2]}'])
def test_a_malformed_index_names_the_file(tmp_path, capsys, text):
    shards = tmp_path / "shards"
    write_shards(shards, num_shards=2, per_shard=4, resolution=16)
    (shards / "index.json").write_text(text)
    assert main(train_args(tmp_path, shards=shards)) == 2
    assert f"{shards / 'index.json'}" in one_error_line(capsys.readouterr().err)


def test_eval_reads_shard_counts_from_the_index(tmp_path):
    shards = tmp_path / "shards"
    urls = write_shards(shards, num_shards=3, per_shard=5, resolution=16)
    assert _shard_counts(str(shards), urls) == [5, 5, 5]  # so --num-real 5 reads one shard


# --------------------------------------------------------------------------------- odd values


@pytest.mark.parametrize("override,named", [
    ("train.seed=99999999999999999999", "train.seed=99999999999999999999 is not allowed"),
    ("train.seed=-1", "train.seed=-1 is not allowed"),
    ("optim.g_lr=.inf", "optim.g_lr=inf is not allowed: expected a finite number"),
    ("optim.d_lr=nan", "optim.d_lr=nan is not allowed: expected a finite number"),
    ("train.total_kimg=.inf", "train.total_kimg=inf is not allowed"),
    ("checkpoint.every_kimg=.inf", "checkpoint.every_kimg=inf is not allowed"),
    ("loss.gp_weight=1e999", "loss.gp_weight=inf is not allowed"),
])
def test_non_finite_and_out_of_range_values_are_refused(tmp_path, capsys, override, named):
    assert main([*train_args(tmp_path), override]) == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra,named", [
    (["--num", "0"], "--num 0: the number of images must be at least 1"),
    (["--num", "-1"], "--num -1: the number of images must be at least 1"),
    (["--out", "{tmp}"], "is a directory; give the grid's file name"),
    (["--individual", "--out", "{tmp}/file.png"], "is an existing file; --individual writes"),
    (["--out", "{tmp}/grid.tiff"], "cannot tell the image format from the name"),
])
def test_generate_edge_cases(trained, tmp_path, capsys, extra, named):
    (tmp_path / "file.png").write_bytes(b"keep me")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["generate", str(trained), *extra]) == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "file.png").read_bytes() == b"keep me"


def test_generate_writes_the_format_its_name_asks_for(trained, tmp_path):
    for name, magic in (("g.jpg", b"\xff\xd8\xff"), ("g.png", b"\x89PNG"), ("g.webp", b"RIFF")):
        assert main(["generate", str(trained), "--num", "4", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic


def test_pack_shard_size_zero_is_an_error(tmp_path, capsys):
    assert main(["pack", "demo", str(tmp_path / "out"), "--shard-size", "0"]) == 2
    assert "shard_size must be an integer >= 1, got 0" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs: room for one checkpoint of the tiny model (~0.55 MB), not for three."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {proc.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_with_exit_5_and_the_previous_checkpoint_intact(
        tmp_path, small_disk, capsys):
    shards = tmp_path / "shards"
    write_shards(shards, num_shards=2, per_shard=8, resolution=16)
    args = [*train_args(tmp_path, shards=shards), f"runs_dir={small_disk}", "checkpoint.keep=1",
            "log.every_steps=100"]
    code = main([*args, "--max-steps", "10"])
    err = capsys.readouterr().err
    assert code == 5, err[-2000:]
    line = one_error_line(err)
    ckpts = small_disk / "run" / "checkpoints"
    kept = sorted(p.name for p in ckpts.glob("step_*"))
    assert len(kept) == 1 and f"{ckpts / kept[0]}, is intact" in line
    assert "no space left on the device while writing" in line and "MiB free there" in line
    assert not list(ckpts.glob(".tmp-step_*"))  # the partial checkpoint is gone
    shutil.copytree(small_disk / "run", tmp_path / "runs" / "run", symlinks=True)
    assert main([*train_args(tmp_path, shards=shards), "--max-steps", "1"]) == 0  # resumes
