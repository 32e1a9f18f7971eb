"""The config tree: merge order, typing, validation messages, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scalegan.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  resolution: 64\n"
                    "train:\n  batch_size: 8\n  schedule:\n    fade_kimg: 5\n")
    cfg = load_config(path, ["train.batch_size=16", "train.schedule.stable_kimg=7", "name=2024"])
    assert cfg.model.resolution == 64                   # from YAML
    assert cfg.train.batch_size == 16                   # override beats YAML
    assert cfg.train.schedule.fade_kimg == 5.0          # int in YAML for a float field
    assert cfg.train.schedule.stable_kimg == 7.0
    assert cfg.model.latent_dim == 512                  # default
    assert cfg.name == "2024" and str(cfg.run_dir).endswith("runs/2024")


def test_brace_pattern_override_stays_a_string():
    tree = parse_overrides(["data.shards=./shards/{000000..000031}.tar"])
    assert tree == {"data": {"shards": "./shards/{000000..000031}.tar"}}


@pytest.mark.parametrize("overrides,message", [
    (["optim.lr=1"], "unknown key optim.lr: allowed keys under optim are kind, g_lr, d_lr"),
    (["model=3"], "model must be a mapping"),
    (["train.precision=fp16"], "train.precision='fp16' is not allowed: expected fp32 | bf16"),
    (["data.xflip=maybe"], "data.xflip='maybe' has the wrong type: expected bool"),
    (["train.batch_size=true"], "train.batch_size=True has the wrong type: expected int"),
    (["optim.beta2=1.0"], "optim.beta2=1.0 is not allowed: expected 0 <= value < 1"),
    (["model.resolution=16", "train.schedule.start_resolution=32"],
     "train.schedule.start_resolution=32 is not allowed: expected <= model.resolution=16"),
    (["batch_size"], "not of the form key.sub=value"),
    (["optim.g_lr=fast"], "optim.g_lr='fast' has the wrong type: expected float"),
    (["model.arch=stackgan", "model.resolution=32"],
     "model.base_resolution=64 is not allowed: expected a power of two from 8 to "
     "model.resolution=32"),
    (["model.arch=stackgan", "model.condition=label"],
     "model.num_classes=0 is not allowed: expected >= 2 with model.condition=label"),
    (["model.condition=label"],
     "model.num_classes=0 is not allowed: expected >= 2 with model.condition=label"),
    (["model.condition=embedding"], "model.condition='embedding' is not allowed: expected "
     "none | label with model.arch=progressive"),
    (["model.condition=label", "model.num_classes=3", "data.source=points", "model.arch=mlp"],
     "model.condition='label' is not allowed: expected none with data.source=points"),
    (["loss.r2_gamma=1", "model.arch=cyclegan", "model.resolution=32"],
     "loss.r2_gamma=1.0 is not allowed: expected 0.0 with model.arch=cyclegan: it has no single "
     "D trained by the loss menu"),
    (["train.d_steps=2", "model.arch=srgan", "model.resolution=32"],
     "train.d_steps=2 is not allowed: expected 0 with model.arch=srgan"),
    (["optim.kind=sgd"], "optim.kind='sgd' is not allowed: expected adam | rmsprop"),
    (["loss.kind=rpgan", "parallel.strategy=deepspeed", "parallel.zero_stage=3"],
     "loss.kind='rpgan' is not allowed with parallel.strategy=deepspeed parallel.zero_stage=3"),
    (["loss.kind=wgan", "loss.clip=0"], "loss.clip=0.0 is not allowed: expected > 0"),
    (["model.spectral_norm=g"], "model.spectral_norm='g' is not allowed: expected none | d | both"),
    (["model.arch=stackgan", "loss.kind=hinge"],
     "loss.kind='hinge' is not allowed: expected nonsaturating with model.arch=stackgan"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_float_in_exponent_notation_without_a_dot():
    # YAML 1.1 reads "2e-4" as a string; a float key takes it as the number it is
    assert load_config(None, ["optim.g_lr=2e-4"]).optim.g_lr == 2e-4


def test_stackgan_stage_count_follows_the_resolution():
    for res, base, stages in ((256, 64, 3), (1024, 64, 5), (64, 16, 3), (64, 64, 1)):
        cfg = load_config(None, ["model.arch=stackgan", f"model.resolution={res}",
                                 f"model.base_resolution={base}"])
        assert cfg.model.stages == stages


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.arch=dcgan", "loss.kind=hinge", "train.grad_accum=4"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path, [])
    assert cfg.model.resolution % cfg.train.schedule.start_resolution == 0


def test_deepspeed_config_is_derived_and_user_keys_merge():
    from scalegan.parallel.deepspeed import deepspeed_config

    cfg = load_config(None, [
        "parallel.strategy=deepspeed", "parallel.zero_stage=3", "train.batch_size=64",
        "train.grad_accum=2", "train.precision=bf16",
        "parallel.deepspeed.zero_optimization.reduce_bucket_size=1000",
        "parallel.deepspeed.flops_profiler.enabled=true"])
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_batch_size"] == 64
    assert ds["train_micro_batch_size_per_gpu"] == 8  # 64 / (2 x 4)
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 1000}
    assert ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 0.0
    assert ds["flops_profiler"] == {"enabled": True}


@pytest.mark.parametrize("override, key", [
    ("parallel.zero_stage=4", "parallel.zero_stage"),
    ("parallel.deepspeed.gradient_accumulation_steps=2",
     "parallel.deepspeed.gradient_accumulation_steps"),
    ("parallel.deepspeed.zero_optimization.stage=1", "parallel.deepspeed.zero_optimization.stage"),
    ("parallel.deepspeed=3", "parallel.deepspeed"),
])
def test_deepspeed_settings_that_conflict_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, ["parallel.strategy=deepspeed", override])
