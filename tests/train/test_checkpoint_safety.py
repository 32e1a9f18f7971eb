"""Checkpoints that are hostile, damaged or foreign: nothing in them runs, a damaged one is
reported and moved aside (never deleted) and the run resumes from the newest one that verifies;
`generate` and `eval` refuse them with exit status 2 naming the file and the reason."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from scalegan.cli import main
from scalegan.train.checkpoint import CheckpointManager, read_meta, verify

from conftest import write_shards
from hostile import poison_bytes_item, poison_metadata, resign

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4  # checkpoints at steps 2 and 4


def args(tmp_path: Path, name: str = "run") -> list[str]:
    shards = tmp_path / "shards"
    if not shards.exists():
        write_shards(shards, num_shards=2, per_shard=8, resolution=16)
    return [
        "configs/demo_faces32_pggan.yaml", f"data.shards={shards}",
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", "model.resolution=16",
        "model.channel_base=128", "model.channel_max=16", "model.latent_dim=16",
        "model.img_channels=3", "train.batch_size=8", "train.total_kimg=10",
        "checkpoint.every_kimg=0.016", "checkpoint.keep=3", "log.wandb=disabled",
        "log.progress=false", "log.every_steps=1", "data.num_workers=0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (copied by each test before it damages it)."""
    base = tmp_path_factory.mktemp("trained")
    os.chdir(ROOT)
    assert main(["train", *args(base), "--max-steps", str(STEPS)]) == 0
    return base


@pytest.fixture(autouse=True)
def _logs_at_info(caplog):
    caplog.set_level("INFO")  # the trainer reports through logging (pytest captures it)


def output(capsys, caplog) -> str:
    """What the command printed and logged since the last call."""
    text = capsys.readouterr().err + caplog.text
    caplog.clear()
    return text


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(ROOT)
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True, symlinks=True)
    return tmp_path


def ckpt(tmp_path: Path, step: int) -> Path:
    return tmp_path / "runs" / "run" / "checkpoints" / f"step_{step:09d}"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def resume(tmp_path: Path, capsys, caplog, steps: int = 1) -> tuple[int, str]:
    code = main(["train", *args(tmp_path), "--max-steps", str(steps)])
    return code, output(capsys, caplog)


# ------------------------------------------------------------------------------ hostile payloads


@pytest.mark.parametrize("where", ["metadata", "bytes_item"])
def test_payloads_never_run_in_train_generate_or_eval(run, capsys, caplog, where):
    marker = run / "PWNED"
    newest = ckpt(run, 4)
    if where == "metadata":
        poison_metadata(newest, marker)
        named = f"{newest / '.metadata'} asks to load posix.system"
    else:
        item = poison_bytes_item(newest, marker)
        named = f"(item {item}) asks to load posix.system"

    assert main(["generate", str(newest), "--num", "4", "--out", str(run / "g.png")]) == 2
    err = capsys.readouterr().err
    assert named in err and "refusing to load it" in err
    assert main(["eval", str(newest), "--extractor", "random", "--num-fake", "8"]) == 2
    assert named in capsys.readouterr().err
    assert not marker.exists() and not (run / "g.png").exists()

    before = snapshot(newest)
    code, err = resume(run, capsys, caplog)
    assert code == 0, err
    assert named in err and "moved aside to step_000000004.corrupt" in err
    assert "resumed from" in err and "(step 2)" in err
    assert not marker.exists()  # nothing ran, in any of the three commands
    assert snapshot(ckpt(run, 4).with_name("step_000000004.corrupt")) == before  # kept as is


# -------------------------------------------------------------------------- damaged checkpoints


def _corrupt_meta(c: Path) -> str:
    (c / "meta.json").write_text('{"step": 4, "images_')
    return f"{c / 'meta.json'} is not valid JSON"


def _random_metadata(c: Path) -> str:
    (c / ".metadata").write_bytes(os.urandom(4096))
    return f"{c / '.metadata'} is 4096 bytes, the manifest says"


def _random_metadata_resigned(c: Path) -> str:
    (c / ".metadata").write_bytes(b"\x80\x04" + os.urandom(4000))
    resign(c)
    return f"{c / '.metadata'} is not readable DCP metadata"


def _truncated_distcp(c: Path) -> str:
    f = next(c.glob("*.distcp"))
    f.write_bytes(f.read_bytes()[:5000])
    return f"{f} is 5000 bytes, the manifest says"


def _bit_flip(c: Path) -> str:
    f = next(c.glob("*.distcp"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    return f"{f} does not match its CRC32"


def _missing_key(c: Path) -> str:
    meta = json.loads((c / "meta.json").read_text())
    del meta["images_seen"]
    (c / "meta.json").write_text(json.dumps(meta))
    resign(c)
    return f"{c / 'meta.json'} has no 'images_seen' key"


def _altered_meta(c: Path) -> str:
    meta = json.loads((c / "meta.json").read_text())
    meta["images_seen"] = 1000
    (c / "meta.json").write_text(json.dumps(meta))
    return f"{c / 'meta.json'} does not match its checksum"


def _weights_crc(c: Path) -> str:
    rank = json.loads((c / "rank_00000.json").read_text())
    rank["weights_crc32"]["D"] ^= 1
    (c / "rank_00000.json").write_text(json.dumps(rank))
    resign(c)
    return f"{c / 'rank_00000.json'}: the weights of D loaded on rank 0 differ from those saved"


DAMAGE = {"corrupt_meta": _corrupt_meta, "random_metadata": _random_metadata,
          "random_metadata_resigned": _random_metadata_resigned,
          "truncated_distcp": _truncated_distcp, "bit_flip": _bit_flip,
          "missing_key": _missing_key, "altered_meta": _altered_meta}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_is_moved_aside_and_the_older_one_resumes(run, capsys, caplog, damage):
    newest = ckpt(run, 4)
    reason = DAMAGE[damage](newest)
    before = snapshot(newest)

    assert main(["generate", str(run / "runs" / "run"), "--out", str(run / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scalegan: error: ") and reason in err and "Traceback" not in err
    assert main(["eval", str(newest), "--extractor", "random"]) == 2
    assert reason in capsys.readouterr().err

    code, err = resume(run, capsys, caplog)
    assert code == 0, err
    assert reason in err and "moved aside to step_000000004.corrupt" in err
    assert "resumed from" in err and "(step 2)" in err
    aside = newest.with_name("step_000000004.corrupt")
    assert snapshot(aside) == before  # nothing deleted or changed
    assert reason in aside.with_name("step_000000004.corrupt.reason.txt").read_text()
    rows = [json.loads(line) for line in
            (run / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in rows][-1] == 24  # step 3 after step 2: the older one
    assert os.readlink(run / "runs" / "run" / "checkpoints" / "latest") == "step_000000003"


def test_weights_crc_checked_after_loading(run, capsys, caplog):
    # the files verify (manifest recomputed), but the weights loaded differ from those saved
    reason = _weights_crc(ckpt(run, 4))
    code, err = resume(run, capsys, caplog)
    assert code == 0 and reason in err and "(step 2)" in err


def test_no_usable_checkpoint_is_an_error_until_overwrite(run, capsys, caplog):
    for step in (2, 4):
        _bit_flip(ckpt(run, step))
    code, err = resume(run, capsys, caplog)
    assert code == 2 and "no checkpoint in" in err and "can be used" in err
    assert "step_000000002.corrupt" in err and "step_000000004.corrupt" in err
    code, err = resume(run, capsys, caplog)  # still refused: the damaged ones are kept aside
    assert code == 2 and "can be used" in err
    code = main(["train", *args(run), "checkpoint.resume=false", "checkpoint.overwrite=true",
                 "--max-steps", "1"])
    assert code == 0
    kept = list((run / "runs" / "run").glob("previous-*/checkpoints/step_000000004.corrupt"))
    assert len(kept) == 1


def test_changed_model_config_names_every_key_before_loading(run, capsys, caplog):
    newest = ckpt(run, 4)
    before = snapshot(newest)
    code = main(["train", *args(run), "model.channel_max=8", "model.latent_dim=8",
                 "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.channel_max: checkpoint 16, this run 8" in err
    assert "model.latent_dim: checkpoint 16, this run 8" in err
    assert str(newest) in err
    code = main(["train", *args(run), "model.arch=dcgan", "--max-steps", "1"])
    assert code == 2 and "model.arch: checkpoint 'progressive', this run 'dcgan'" in (
        capsys.readouterr().err)
    assert snapshot(newest) == before  # an intact checkpoint is never moved aside


def test_corrupt_best_json_is_set_aside_and_the_run_goes_on(run, capsys, caplog):
    directory = run / "runs" / "run" / "checkpoints"
    (directory / "best.json").write_text("{not json")
    code, err = resume(run, capsys, caplog, steps=2)
    assert code == 0, err
    assert "best.json is damaged" in err
    assert (directory / "best.json.corrupt").read_text() == "{not json"


# --------------------------------------------------------------------- the manager on its own


def test_checkpoint_records_every_file_and_its_own_checksum(run):
    newest = ckpt(run, 4)
    meta = read_meta(newest)
    files = {p.relative_to(newest).as_posix() for p in newest.rglob("*")
             if p.is_file() and p.name != "meta.json"}
    assert set(meta["files"]) == files and ".metadata" in files
    assert meta["finite"] is True
    assert verify(newest)["step"] == 4


def test_pruning_keeps_the_newest_checkpoint_with_finite_weights(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=1)
    state = {"w": torch.nn.Linear(2, 2)}
    from scalegan.train.checkpoint import ModelState

    def meta(step, finite):
        return {"step": step, "images_seen": step, "phase": {}, "world_size": 1, "rng": "",
                "config": {}, **({"finite": True} if finite else {})}

    manager.save(1, {"w": ModelState(state["w"])}, meta(1, True), {})
    manager.save(2, {"w": ModelState(state["w"])}, meta(2, False), {})
    manager.save(3, {"w": ModelState(state["w"])}, meta(3, False), {})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                   if p.is_dir() and not p.is_symlink())
    assert names == ["step_000000001", "step_000000003"]  # step 2 pruned, step 1 protected
