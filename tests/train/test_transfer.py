"""Transfer learning: ``train.init_from`` starts a run from another run's weights (a progressive
32x32 run into a 64x64 one: the old blocks read, the new one from scratch), refuses a checkpoint
that does not fit with exit status 2 naming the keys, and ``train.freeze_d`` keeps D's first
blocks bit-identical through training under fsdp and DeepSpeed ZeRO-3 on 2 gloo ranks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scalegan.cli import main
from scalegan.config import ConfigError, load_config
from scalegan.data.demo import pack_demo
from scalegan.parallel.env import DistEnv
from scalegan.train.trainer import Trainer
from scalegan.train.transfer import TransferError

from families.common import fixed_trainer, full_state
from parallel.spawn import run_ranks

PGGAN = ["model.arch=progressive", "model.latent_dim=16", "model.channel_base=512",
         "model.channel_max=16", "train.batch_size=8", "loss.r1_gamma=1.0",
         "loss.r1_interval=2", "log.every_steps=1", "log.wandb=disabled", "log.progress=false",
         "checkpoint.every_kimg=100", "data.num_workers=0", "data.shuffle_buffer=8",
         "train.total_kimg=10"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The demo faces at 64x64, stored down to 8x8."""
    out = tmp_path_factory.mktemp("faces64") / "faces"
    pack_demo(out, resolution=64)
    return out


def run(tmp_path, faces, name, resolution, *extra) -> list[str]:
    return [f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"data.shards={faces}",
            f"model.resolution={resolution}", *PGGAN,
            f"train.schedule.start_resolution={resolution // 2}",
            "train.schedule.fade_kimg=0.016", "train.schedule.stable_kimg=0.016", *extra]


@pytest.fixture(scope="module")
def source(tmp_path_factory, faces):
    """A 32x32 progressive run (16 -> 32) of 6 steps, and its final state."""
    tmp = tmp_path_factory.mktemp("source")
    trainer = Trainer(load_config(None, run(tmp, faces, "src32", 32)))
    trainer.train(max_steps=6)
    trainer.close()
    return trainer.run_dir, full_state(trainer)


def test_a_32_run_starts_a_64_run_whose_new_block_is_fresh(tmp_path, faces, source):
    src_dir, src_state = source
    fresh = Trainer(load_config(None, run(tmp_path, faces, "fresh", 64)))
    fresh_state = full_state(fresh)
    fresh.close()
    trainer = Trainer(load_config(None, run(tmp_path, faces, "tuned", 64,
                                            f"train.init_from={src_dir}")))
    init = full_state(trainer)
    assert init.keys() == fresh_state.keys()
    loaded = new = trained = 0
    for key, value in init.items():
        name, _, fqn = key.partition(".")
        if f"{name}.{fqn}" in src_state:  # G, D, G_ema of the 32x32 run: read as saved
            assert torch.equal(value, src_state[key]), key
            loaded += 1
            trained += not torch.equal(value, fresh_state[key])  # the 4x4 toRGB never ran
        else:  # the 64x64 block, toRGB and fromRGB: this run's own initialisation
            assert fqn.split(".")[1] == "64", key
            assert torch.equal(value, fresh_state[key]), key
            new += 1
    assert new > 0 and loaded > trained > loaded // 2
    assert trainer.images_seen == 0 and trainer.step == 0  # counters are not read
    trainer.train(max_steps=6)  # 32x32 stable, then the 64x64 block fades in
    trainer.close()
    rows = [json.loads(line) for line in
            (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in rows] == [32, 32, 64, 64, 64, 64]
    assert all(math.isfinite(r["loss/D"]) and math.isfinite(r["loss/G"]) for r in rows)
    after = full_state(trainer)
    block64 = [k for k in init if k.startswith("G.blocks.64.")]
    assert block64 and any(not torch.equal(after[k], init[k]) for k in block64)  # it trains


def test_a_checkpoint_that_does_not_fit_exits_2_naming_the_keys(tmp_path, faces, source,
                                                                capsys):
    src_dir, _ = source
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    # other widths: every key of another shape is named
    code = main(["train", str(empty), *run(tmp_path, faces, "wide", 32, "model.channel_max=32",
                                   f"train.init_from={src_dir}")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not fit" in err and "of another shape" in err and "G keys" in err, err
    assert "blocks.32.conv" in err, err
    # another architecture
    code = main(["train", str(empty), f"runs_dir={tmp_path / 'runs'}", "name=dc",
                 f"data.shards={faces}", "model.arch=dcgan", "model.resolution=32",
                 "model.latent_dim=16",
                 "log.wandb=disabled", f"train.init_from={src_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.arch=progressive" in err and "model.arch=dcgan" in err, err
    # StyleGAN2 keeps the resolution of the model it starts from
    style = ["model.arch=stylegan2", "model.img_channels=1", "model.latent_dim=8",
             "model.w_dim=8", "model.channel_base=256", "model.channel_max=16",
             "model.mapping_layers=2", "log.wandb=disabled", "train.batch_size=8",
             f"runs_dir={tmp_path / 'runs'}", f"data.shards={faces}"]
    small = Trainer(load_config(None, [*style, "name=s32", "model.resolution=32"]))
    small.save()
    small.close()
    with pytest.raises(TransferError, match="model.resolution=32.*keeps the resolution"):
        Trainer(load_config(None, [*style, "name=s64", "model.resolution=64",
                                   f"train.init_from={small.run_dir}"]))
    with pytest.raises(TransferError, match="nowhere"):
        Trainer(load_config(None, run(tmp_path, faces, "none", 32,
                                      f"train.init_from={tmp_path / 'nowhere'}")))


def test_a_32_run_starts_a_16_run_without_its_32_blocks(tmp_path, faces, source):
    src_dir, src_state = source
    trainer = Trainer(load_config(None, run(tmp_path, faces, "down", 16,
                                            f"train.init_from={src_dir}")))
    state = full_state(trainer)
    trainer.close()
    assert all(torch.equal(v, src_state[k]) for k, v in state.items())  # every key read
    assert any(".32." in k for k in src_state) and not any(".32." in k for k in state)


def test_freeze_d_is_checked_against_the_blocks_d_has():
    with pytest.raises(ConfigError, match="train.freeze_d=5"):
        load_config(None, ["model.arch=progressive", "model.resolution=32", "train.freeze_d=5"])
    with pytest.raises(ConfigError, match="train.freeze_d=1.*no Freeze-D"):
        load_config(None, ["model.arch=dcgan", "model.resolution=32", "train.freeze_d=1"])
    load_config(None, ["model.arch=progressive", "model.resolution=32", "train.freeze_d=4"])


# ------------------------------------------------------------------------- Freeze-D, sharded

STYLE = ["model.arch=stylegan2", "model.resolution=32", "model.img_channels=1",
         "model.latent_dim=8", "model.w_dim=8", "model.channel_base=256",
         "model.channel_max=16", "model.mapping_layers=2", "loss.r1_gamma=1.0",
         "loss.r1_interval=2", "model.pl_interval=2", "train.freeze_d=2",
         "augment.kind=ada", "augment.p=0.5"]
FROZEN = ("D.from_rgb.", "D.blocks.32.", "D.blocks.16.")


def _train_frozen(env: DistEnv, strategy: str, tmp_path, steps: int) -> dict:
    name, _, stage = strategy.partition("-")
    extra = [f"parallel.zero_stage={stage}"] if stage else []
    trainer = fixed_trainer(env, STYLE, {"data": (1, 32)}, name, tmp_path, extra)
    before = full_state(trainer)
    rows = [trainer.train_step() for _ in range(steps)]
    assert not any(r["nonfinite"] for r in rows)
    return {"before": before, "after": full_state(trainer)}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed-3"])
def test_freeze_d_keeps_the_first_blocks_under_sharding(strategy, tmp_path):
    for result in run_ranks(2, _train_frozen, strategy, tmp_path, 3, tmp_path=tmp_path):
        before, after = result["before"], result["after"]
        frozen = [k for k in before if k.startswith(FROZEN)]
        trained = [k for k in before if k.startswith("D.") and not k.startswith(FROZEN)
                   and after[k].dtype.is_floating_point]
        assert len(frozen) >= 6 and trained
        for key in frozen:
            assert torch.equal(before[key], after[key]), key  # bit-identical
        assert any(not torch.equal(before[k], after[k]) for k in trained)
