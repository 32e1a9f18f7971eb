"""StyleGAN2 training runs on the built-in faces: a run stopped right after a path-length step
and resumed from its checkpoint repeats the straight run bit for bit (losses, G / D / G_ema and
``pl_mean``); bf16 runs its highest-resolution blocks in bf16 with clamped activations."""

from __future__ import annotations

import math

import pytest
import torch

from scalegan.config import load_config
from scalegan.data.demo import pack_demo
from scalegan.models.stylegan2 import _Conv2d, _SynthesisLayer
from scalegan.train.trainer import Trainer

from families.common import full_state, losses_by_step

TINY = ["model.arch=stylegan2", "model.resolution=32", "model.img_channels=1",
        "model.latent_dim=8", "model.w_dim=8", "model.channel_base=256", "model.channel_max=16",
        "model.mapping_layers=2", "loss.r1_gamma=1.0", "loss.r1_interval=2",
        "model.pl_interval=2", "optim.g_lr=0.002", "optim.d_lr=0.002"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The 100 demo faces packed at 32x32 (4 shards of 25)."""
    out = tmp_path_factory.mktemp("faces32")
    pack_demo(out / "faces", resolution=32)
    return out / "faces"


def overrides(tmp_path, faces, name: str, *extra: str) -> list[str]:
    return [f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"data.shards={faces}",
            "data.num_workers=0", "data.shuffle_buffer=16", "data.xflip=true",
            "train.batch_size=8", "train.total_kimg=10", "log.every_steps=1",
            "log.wandb=disabled", "log.progress=false", "checkpoint.every_kimg=1000",
            *TINY, *extra]


def test_resume_after_a_path_length_step_is_exact(tmp_path, faces):
    k = 3  # steps 0, 1, 2: R1 and PL run at steps 0 and 2, so the stop follows a PL step
    straight = Trainer(load_config(None, overrides(tmp_path, faces, "straight")))
    straight.train(max_steps=2 * k)
    straight.close()

    first = Trainer(load_config(None, overrides(tmp_path, faces, "split")))
    first.train(max_steps=k)
    first.close()
    pl_mean_at_stop = first.family.pl_mean.item()
    assert pl_mean_at_stop != 0.0  # the resumed run must restore it (the test can fail)
    second = Trainer(load_config(None, overrides(tmp_path, faces, "split")))
    assert second.family.pl_mean.item() == 0.0  # fresh, before it resumes
    second.train(max_steps=k)  # resumes from the checkpoint written at step k
    second.close()

    want, got = losses_by_step(straight.run_dir), losses_by_step(second.run_dir)
    assert len(want) == 2 * k and [r["step"] for r in got] == list(range(1, 2 * k + 1))
    assert ["loss/pl" in r for r in want] == [True, False] * k
    assert ["loss/r1" in r for r in want] == [True, False] * k
    assert got == want  # bit-identical floats, step by step
    assert all(math.isfinite(v) for r in want for v in r.values())
    state_straight, state_split = full_state(straight), full_state(second)
    assert state_straight.keys() == state_split.keys()
    assert {"family.pl_mean", "G.mapping.w_avg", "G_ema.mapping.w_avg"} <= set(state_split)
    for key in state_straight:
        assert torch.equal(state_straight[key], state_split[key]), key
    assert state_split["family.pl_mean"].item() != pl_mean_at_stop  # PL ran again (step 4)


def _train_watching_dtypes(trainer: Trainer, steps: int) -> dict[str, set]:
    """Train ``steps`` steps with forward hooks on layers of G's and D's blocks: the dtypes of
    their outputs."""
    seen: dict[str, set] = {}

    def record(name):
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            seen.setdefault(name, set()).add(x.dtype)
        return hook

    G, D = trainer.nets["G"], trainer.nets["D"]
    handles = [G.synthesis.blocks["32"].conv1.register_forward_hook(record("G32.conv1")),
               G.synthesis.blocks["16"].conv0.register_forward_hook(record("G16.conv0")),
               G.synthesis.blocks["8"].conv1.register_forward_hook(record("G8.conv1")),
               G.synthesis.blocks["4"].conv1.register_forward_hook(record("G4.conv1")),
               D.blocks["32"].conv0.register_forward_hook(record("D32.conv0")),
               D.blocks["8"].conv0.register_forward_hook(record("D8.conv0")),
               D.epilogue.conv.register_forward_hook(record("D4.conv"))]
    try:
        trainer.train(max_steps=steps)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_bf16_blocks_compute_in_bf16_with_clamped_activations(tmp_path, faces):
    trainer = Trainer(load_config(None, overrides(
        tmp_path, faces, "bf16", "train.precision=bf16", "model.bf16_resolutions=2")))
    layers = [m for net in trainer.nets.values() for m in net.modules()
              if isinstance(m, (_SynthesisLayer, _Conv2d)) and getattr(m, "bias", None)
              is not None]
    assert layers and all(m.conv_clamp == 256.0 for m in layers)
    before = {k: v.clone() for k, v in trainer.nets["G"].state_dict().items()}
    seen = _train_watching_dtypes(trainer, 4)  # every phase, R1 and PL included
    trainer.close()
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    # the 2 highest resolutions (32, 16) in bf16, the rest in fp32
    assert seen == {"G32.conv1": bf16, "G16.conv0": bf16, "G8.conv1": fp32, "G4.conv1": fp32,
                    "D32.conv0": bf16, "D8.conv0": fp32, "D4.conv": fp32}
    rows = losses_by_step(trainer.run_dir)
    assert len(rows) == 4 and all(math.isfinite(v) for r in rows for v in r.values())
    assert sum("loss/pl" in r for r in rows) == 2 and sum("loss/r1" in r for r in rows) == 2
    after = trainer.nets["G"].state_dict()
    assert all(after[k].dtype == torch.float32 for k in after)  # fp32 weights, bf16 compute
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > 0.5 * len(before)
    # the clamp bites: with a small bound the top block's activations end exactly at it
    small = Trainer(load_config(None, overrides(
        tmp_path, faces, "clamp", "train.precision=bf16", "model.bf16_resolutions=2",
        "model.conv_clamp=0.25")))
    G = small.nets["G"]
    out = {}
    handle = G.synthesis.blocks["32"].conv1.register_forward_hook(
        lambda m, a, o: out.setdefault("x", o))
    with torch.no_grad():
        G(torch.randn(4, 8), noise_mode="const")
    handle.remove()
    small.close()
    assert out["x"].dtype == torch.bfloat16 and out["x"].abs().max().item() == 0.25
