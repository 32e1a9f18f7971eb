"""The training loop: exact resume, gradient accumulation, bf16, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scalegan.config import load_config
from scalegan.families._image import MicroBatch
from scalegan.train.trainer import Trainer

from conftest import write_shards


def tiny_overrides(tmp_path: Path, name: str = "t") -> list[str]:
    shards = tmp_path / "shards"
    if not shards.exists():
        write_shards(shards, num_shards=4, per_shard=6, resolution=16)
    return [
        f"runs_dir={tmp_path / 'runs'}", f"name={name}", f"data.shards={shards}",
        "model.resolution=16", "model.latent_dim=16", "model.channel_base=128",
        "model.channel_max=16", "train.batch_size=8", "train.total_kimg=10",
        # 4 steps at 8x8, 4 steps fading in 16x16, then 16x16
        "train.schedule.start_resolution=8", "train.schedule.fade_kimg=0.032",
        "train.schedule.stable_kimg=0.032", "loss.r1_gamma=1.0", "loss.r1_interval=3",
        "log.every_steps=1", "log.wandb=disabled", "log.progress=false",
        "checkpoint.every_kimg=100", "data.num_workers=0", "data.shuffle_buffer=8",
    ]


def losses_per_step(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/D"], r["loss/G"], r.get("loss/r1"), r["resolution"], r["alpha"])
            for r in rows]


def _multi_resolution_pack(tmp_path: Path) -> Path:
    """24 random images at 16x16 stored at 16, 8 and 4 (`scalegan pack`'s levels)."""
    import numpy as np

    from scalegan.data.pack import pack_arrays

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(24)]
    pack_arrays(images, tmp_path / "levels", 16, shard_size=6, min_resolution=4)
    return tmp_path / "levels"


@pytest.mark.parametrize("num_workers,pack", [(0, "single"), (2, "single"), (2, "levels")])
def test_resume_gives_identical_losses(tmp_path, num_workers, pack):
    k = 6  # the stop falls inside the 8 -> 16 fade-in, between two R1 steps
    extra = [f"data.num_workers={num_workers}"]
    if pack == "levels":  # the 8x8 phase reads the 8x8 level, the fade-in the 16x16 one
        extra.append(f"data.shards={_multi_resolution_pack(tmp_path)}")
    straight = Trainer(load_config(None, tiny_overrides(tmp_path, "straight") + extra))
    straight.train(max_steps=2 * k)
    straight.close()

    first = Trainer(load_config(None, tiny_overrides(tmp_path, "split") + extra))
    first.train(max_steps=k)
    first.close()
    second = Trainer(load_config(None, tiny_overrides(tmp_path, "split") + extra))
    second.train(max_steps=k)  # resumes from the checkpoint written at step k
    second.close()

    want = losses_per_step(straight.run_dir)
    got = losses_per_step(second.run_dir)
    assert len(want) == 2 * k and [r[0] for r in got] == list(range(1, 2 * k + 1))
    assert {r[4] for r in want} == {8, 16} and any(0 < r[5] < 1 for r in want)
    assert got == want  # bit-identical floats, step by step
    assert second.images_seen == straight.images_seen == 2 * k * 8
    for a, b in zip(straight.G_ema.parameters(), second.G_ema.parameters(), strict=True):
        assert torch.equal(a, b)


def _copy_trainer(tmp_path, overrides):
    torch.set_default_dtype(torch.float64)
    try:
        return Trainer(load_config(None, tiny_overrides(tmp_path) + overrides))
    finally:
        torch.set_default_dtype(torch.float32)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    # float64 so the comparison is not limited by fp32 summation order: tolerance 1e-9.
    one = _copy_trainer(tmp_path, ["train.batch_size=16", "train.grad_accum=1"])
    two = _copy_trainer(tmp_path, ["train.batch_size=16", "train.grad_accum=2"])
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(16, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    z_d = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    z_g = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    phase = one.phase().__class__(16, 0.5)
    whole = [MicroBatch(real, z_d, z_g)]
    halves = [MicroBatch(real[:8], z_d[:8], z_g[:8]), MicroBatch(real[8:], z_d[8:], z_g[8:])]
    for t, batches in ((one, whole), (two, halves)):
        for name in ("D", "R1", "G"):
            t.run_phase(name, batches, phase)
    for name, a, b in (("G", one.G, two.G), ("D", one.D, two.D)):
        for (pn, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            if pa.grad is not None:
                torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12,
                                           msg=f"{name}.{pn} gradient")
            torch.testing.assert_close(pa, pb, rtol=0, atol=1e-9, msg=f"{name}.{pn}")
    moved = sum(int(not torch.equal(p, q)) for p, q in zip(
        one.D.parameters(), _copy_trainer(tmp_path, []).D.parameters(), strict=True))
    assert moved > 0  # the step did change D


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    fp32 = Trainer(load_config(None, tiny_overrides(tmp_path, "fp32")))
    bf16 = Trainer(load_config(None, tiny_overrides(tmp_path, "bf16") + ["train.precision=bf16"]))
    for t in (fp32, bf16):
        t.train(max_steps=3)
        t.close()
    a, b = losses_per_step(fp32.run_dir), losses_per_step(bf16.run_dir)
    assert all(math.isfinite(v) for row in b for v in row[1:3])
    assert a[0][1] != b[0][1]  # autocast really changed the arithmetic
    assert abs(a[0][1] - b[0][1]) < 0.05 * abs(a[0][1]) + 0.05


def test_outputs_checkpoints_and_keep_newest(tmp_path):
    over = tiny_overrides(tmp_path, "out") + ["checkpoint.every_kimg=0.016", "checkpoint.keep=2",
                                              "log.sample_every_kimg=0.024"]
    t = Trainer(load_config(None, over))
    t.train(max_steps=7)
    t.close()
    run = t.run_dir
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000000006", "step_000000007"]
    assert (run / "checkpoints" / "latest").resolve().name == "step_000000007"
    samples = sorted(p.name for p in (run / "samples").glob("step_*.png"))
    assert samples == ["step_000000003.png", "step_000000006.png", "step_000000007.png"]
    assert (run / "config.yaml").is_file()
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["images_seen"] == 56 and meta["config"]["name"] == "out"


def test_interrupted_checkpoint_write_is_ignored(tmp_path):
    t = Trainer(load_config(None, tiny_overrides(tmp_path, "crash")))
    t.train(max_steps=2)
    t.close()
    ckpt_dir = t.run_dir / "checkpoints"
    # a write that died before its rename: DCP files present, no meta.json, temp name
    (ckpt_dir / ".tmp-step_000000009").mkdir()
    (ckpt_dir / ".tmp-step_000000009" / ".metadata").write_bytes(b"garbage")
    resumed = Trainer(load_config(None, tiny_overrides(tmp_path, "crash")))
    assert resumed.resume() and resumed.step == 2


OPTIMIZERS = {"adam": lambda params: torch.optim.Adam(params, lr=1e-2, betas=(0.0, 0.99)),
              "rmsprop": lambda params: torch.optim.RMSprop(params, lr=1e-2)}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_optimizer_state_created_up_front_changes_no_update(kind):
    # init_optimizer_state must create exactly what the optimizer's own first step creates (the
    # same keys, dtypes and values), and a parameter that gets no gradient (a block not faded in
    # yet) must keep step 0 until it does.
    from scalegan.train.trainer import init_optimizer_state

    torch.manual_seed(0)
    lazy_model, eager_model = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    eager_model.load_state_dict(lazy_model.state_dict())
    idle = torch.nn.Parameter(torch.ones(2))
    lazy = OPTIMIZERS[kind](list(lazy_model.parameters()))
    eager = OPTIMIZERS[kind]([*eager_model.parameters(), idle])
    init_optimizer_state(eager)
    for step in range(5):
        x = torch.randn(8, 4)
        for model, opt in ((lazy_model, lazy), (eager_model, eager)):
            opt.zero_grad(set_to_none=True)
            model(x).square().sum().backward()
            opt.step()
        if step == 0:
            for p_lazy, p_eager in zip(lazy_model.parameters(), eager_model.parameters(),
                                       strict=True):
                want, got = lazy.state[p_lazy], eager.state[p_eager]
                assert want.keys() == got.keys()
                for key in want:
                    assert want[key].dtype == got[key].dtype and torch.equal(want[key],
                                                                             got[key]), key
    for a, b in zip(lazy_model.parameters(), eager_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert eager.state[idle]["step"].item() == 0 and torch.equal(idle, torch.ones(2))


@pytest.mark.parametrize("mbdisc", [0, 3])
def test_ops_impl_ref_and_cpu_train_alike_and_share_checkpoints(tmp_path, mbdisc):
    # The fused ops (upsample+conv in G; minibatch stddev and discrimination in D, through the
    # R1 double backward) in their reference and fast forms: same losses step by step, same
    # parameter names and shapes. fp32, 8 steps through a fade-in: the two differ in summation
    # order only (measured <= 2.2e-7 relative); tolerance 1e-5.
    rows, states = {}, {}
    for impl in ("ref", "cpu"):
        trainer = Trainer(load_config(None, tiny_overrides(tmp_path, impl) + [
            f"model.ops_impl={impl}", f"model.mbdisc_kernels={mbdisc}", "model.mbdisc_dim=4",
            "loss.r1_interval=2"]))
        trainer.train(max_steps=8)
        trainer.close()
        rows[impl] = losses_per_step(trainer.run_dir)
        states[impl] = {k: v.shape for k, v in trainer.D.state_dict().items()} | {
            k: v.shape for k, v in trainer.G.state_dict().items()}
    assert states["ref"] == states["cpu"]
    assert any("mbdisc" in k for k in states["cpu"]) == bool(mbdisc)
    assert {r[4] for r in rows["ref"]} == {8, 16}
    for want, got in zip(rows["ref"], rows["cpu"], strict=True):
        assert got[0] == want[0] and got[4:] == want[4:]
        for g, w in zip(got[1:4], want[1:4], strict=True):
            assert (g is None) == (w is None)
            if w is not None:
                assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-7), (got, want)
