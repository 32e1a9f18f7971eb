"""Each parallel strategy against one process on the same global batch and seed.

Every rank takes its contiguous slice of the same global batches (reals and latents), so a correct
strategy reproduces the single-process run up to summation order. The runs are in float64 so the
tolerance can be tight (1e-9) even through Adam, whose first steps amplify tiny differences of
small gradients. DeepSpeed keeps fp32 master weights whatever the module's dtype, so its runs
match to fp32 rounding: measured <= 1.3e-6 over these 6 steps, tolerance 1e-5. Its integration
errors are far larger (4.6e-3 in G when a block's Adam state is not restarted as it fades in).
"""

from __future__ import annotations

import pytest
import torch

from scalegan.config import load_config
from scalegan.data.pipeline import Batch, box_pyramid
from scalegan.parallel.env import DistEnv
from scalegan.train.trainer import Trainer

from parallel.spawn import run_ranks

STEPS = 6  # 2 steps at 8x8, 2 fading in 16x16, 2 at 16x16; R1 on steps 0, 2, 4


def overrides(strategy: str, tmp_path) -> list[str]:
    return [
        f"runs_dir={tmp_path / 'runs'}", f"parallel.strategy={strategy}",
        "model.resolution=16", "model.latent_dim=16", "model.channel_base=128",
        "model.channel_max=16", "train.batch_size=8", "train.total_kimg=10",
        "train.schedule.start_resolution=8", "train.schedule.fade_kimg=0.016",
        "train.schedule.stable_kimg=0.016", "loss.r1_gamma=1.0", "loss.r1_interval=2",
        "log.wandb=disabled", "log.progress=false",
    ]


class FixedBatches:
    """Stands in for ImageStream: seeded global micro-batches, this rank's contiguous slice.
    With ``poison``, global batch number ``poison`` has NaN images in its second half (what the
    second of two ranks reads)."""

    def __init__(self, micro: int, rank: int, world: int, seed: int = 5,
                 poison: int | None = None):
        self.micro, self.rank, self.world = micro, rank, world
        self.gen = torch.Generator().manual_seed(seed)
        self.resolution, self.skipped = 8, 0
        self.poison, self.count = poison, 0

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def next_batch(self):
        full = torch.rand(self.micro * self.world, 3, self.resolution, self.resolution,
                          generator=self.gen, dtype=torch.get_default_dtype()) * 2 - 1
        if self.count == self.poison:
            full[len(full) // 2:] = float("nan")
        self.count += 1
        return Batch(full[self.rank * self.micro:(self.rank + 1) * self.micro], [])

    def close(self) -> None: ...


def dtype_for(strategy: str, extra: list[str]) -> torch.dtype:
    """float64, but for ZeRO-3: DeepSpeed 0.19.8 refuses to partition float64 modules
    ("Invalid data type torch.float64"), so its runs and their reference are float32."""
    return torch.float32 if strategy == "deepspeed" and "parallel.zero_stage=3" in extra \
        else torch.float64


def train_fixed(env: DistEnv, strategy: str, tmp_path, extra: list[str]) -> dict:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype_for(strategy, extra))
    try:
        return _train_fixed(env, strategy, tmp_path, extra)
    finally:
        torch.set_default_dtype(previous)  # the single-process run shares pytest's process


def _train_fixed(env: DistEnv, strategy: str, tmp_path, extra: list[str],
                 poison: int | None = None) -> dict:
    cfg = load_config(None, overrides(strategy, tmp_path) + extra)
    trainer = Trainer(cfg, env)
    trainer.data = FixedBatches(trainer.micro_batch, env.rank, env.world_size, poison=poison)
    losses, skipped = [], []
    for _ in range(STEPS):
        losses.append(trainer.train_step())
        skipped.append(trainer.skipped_updates)
    assert {row["resolution"] for row in losses} == {8, 16}
    return {
        "skipped": skipped,
        "losses": torch.tensor([[row["loss/D"], row["loss/G"]] for row in losses]),
        **{f"{name}.{k}": v for name, model in
           (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema))
           for k, v in trainer.strategy.full_state_dict(model).items()},
    }


def assert_matches(single: dict, ranks: list[dict], atol: float) -> None:
    for key, want in single.items():
        if key in ("losses", "skipped"):
            continue  # per-rank losses are over different halves of the batch
        for r, got in enumerate(ranks):
            torch.testing.assert_close(got[key], want, rtol=0, atol=atol,
                                       msg=lambda m, key=key, r=r: f"rank {r} {key}: {m}")


ATOL = {"ddp": 1e-9, "fsdp": 1e-9, "deepspeed": 1e-5}


def _strategy_overrides(strategy: str) -> tuple[str, list[str]]:
    """"deepspeed-3" -> ("deepspeed", ["parallel.zero_stage=3"])."""
    name, _, stage = strategy.partition("-")
    return name, [f"parallel.zero_stage={stage}"] if stage else []


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-1", "deepspeed-2", "deepspeed-3"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_ranks_match_one_process(strategy, grad_accum, tmp_path):
    strategy, extra = _strategy_overrides(strategy)
    extra.append(f"train.grad_accum={grad_accum}")
    if grad_accum == 2:
        extra.append("train.batch_size=16")  # per-rank micro-batch stays 4 (mbstd group)
    single = train_fixed(DistEnv(), strategy, tmp_path / "single", extra)
    ranks = run_ranks(2, train_fixed, strategy, tmp_path / "multi", extra, tmp_path=tmp_path)
    assert_matches(single, ranks, atol=ATOL[strategy])


def train_poisoned(env: DistEnv, strategy: str, tmp_path, extra: list[str]) -> dict:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype_for(strategy, extra))
    try:
        return _train_fixed(env, strategy, tmp_path, extra, poison=2)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-2", "deepspeed-3"])
def test_nan_on_one_rank_skips_the_update_on_every_rank(strategy, tmp_path):
    # Step 2's images are NaN on rank 1 only: its D and R1 updates must be dropped on both ranks
    # (DeepSpeed: ZeRO's own overflow check over every partition), as one process drops them for
    # the whole batch; before and after, the runs match as in the test above.
    strategy, extra = _strategy_overrides(strategy)
    single = train_poisoned(DistEnv(), strategy, tmp_path / "single", extra)
    assert single["skipped"] == [[], [], ["D", "R1"], [], [], []]
    ranks = run_ranks(2, train_poisoned, strategy, tmp_path / "multi", extra, tmp_path=tmp_path)
    for result in ranks:
        assert result["skipped"] == single["skipped"]
    assert_matches(single, ranks, atol=ATOL[strategy])


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed-3"])
def test_wgan_gp_two_ranks_match_one_process(strategy, tmp_path):
    # the gradient penalty's double backward inside the D phase, with accumulation
    strategy, extra = _strategy_overrides(strategy)
    extra += ["loss.kind=wgan_gp", "loss.r1_gamma=0", "train.grad_accum=2",
              "train.batch_size=16"]
    single = train_fixed(DistEnv(), strategy, tmp_path / "single", extra)
    ranks = run_ranks(2, train_fixed, strategy, tmp_path / "multi", extra, tmp_path=tmp_path)
    assert_matches(single, ranks, atol=ATOL[strategy])


def train_plain_layer_d(env: DistEnv, strategy: str, tmp_path) -> dict:
    # DCGAN's D is made of plain nn.Conv2d, whose double backward reads the gathered weights that
    # FSDP and ZeRO-3 free after a backward: R1 and WGAN-GP must still run.
    strategy, extra = _strategy_overrides(strategy)
    cfg = load_config(None, overrides(strategy, tmp_path) + extra + [
        "model.arch=dcgan", "model.resolution=8", "loss.kind=wgan_gp", "loss.r1_gamma=1.0",
        "loss.r1_interval=1"])
    trainer = Trainer(cfg, env)
    trainer.data = FixedBatches(trainer.micro_batch, env.rank, env.world_size)
    rows = [trainer.train_step() for _ in range(2)]
    return {"values": torch.tensor([[r["loss/D"], r["loss/G"], r["loss/gp"], r["loss/r1"]]
                                    for r in rows])}


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed-3"])
def test_double_backward_through_plain_layers(strategy, tmp_path):
    for result in run_ranks(2, train_plain_layer_d, strategy, tmp_path / "dc", tmp_path=tmp_path):
        assert torch.isfinite(result["values"]).all()


def train_bf16(env: DistEnv, strategy: str, tmp_path) -> dict:
    strategy, extra = _strategy_overrides(strategy)
    cfg = load_config(None, overrides(strategy, tmp_path) + extra + [
        "train.precision=bf16", "parallel.param_dtype=bf16"])
    trainer = Trainer(cfg, env)
    trainer.data = FixedBatches(trainer.micro_batch, env.rank, env.world_size)
    before = trainer.strategy.full_state_dict(trainer.G)
    rows = [trainer.train_step() for _ in range(STEPS)]
    after = trainer.strategy.full_state_dict(trainer.G)
    return {
        "losses": torch.tensor([[r["loss/D"], r["loss/G"]] for r in rows]),
        "moved": torch.tensor([not torch.equal(before[k], after[k]) for k in before]),
        "dtypes": [str(v.dtype) for v in after.values()],
        "resolutions": [r["resolution"] for r in rows],
    }


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed-2", "deepspeed-3"])
def test_bf16_trains_across_a_resolution_boundary(strategy, tmp_path):
    for result in run_ranks(2, train_bf16, strategy, tmp_path, tmp_path=tmp_path):
        assert torch.isfinite(result["losses"]).all()
        assert result["resolutions"] == [8, 8, 16, 16, 16, 16]
        assert result["moved"].sum() > 0.5 * len(result["moved"])  # the blocks in use learned
        if strategy.startswith("deepspeed"):
            # DeepSpeed's bf16 mode holds the module's weights in bf16 (fp32 master copies)
            assert set(result["dtypes"]) == {"torch.bfloat16"}


# ----------------------------------------------------------------------------------- StackGAN-v2

STACK_STEPS = 4  # R1 on steps 0 and 2


class FixedStackBatches(FixedBatches):
    """Seeded global micro-batches of 3-scale images (box pyramid of one image) and conditions,
    this rank's contiguous slice."""

    def __init__(self, micro: int, rank: int, world: int, condition: str):
        super().__init__(micro, rank, world)
        self.condition = condition

    def next_batch(self):
        n = self.micro * self.world
        mine = slice(self.rank * self.micro, (self.rank + 1) * self.micro)
        full = torch.rand(n, 3, 32, 32, generator=self.gen, dtype=torch.get_default_dtype())
        full = full * 2 - 1
        images = [x[mine] for x in box_pyramid(full, 3)]
        labels = None
        if self.condition == "label":
            labels = torch.randint(0, 3, (n,), generator=self.gen)[mine]
        elif self.condition == "embedding":
            labels = torch.rand(n, 5, generator=self.gen, dtype=torch.get_default_dtype())[mine]
        return Batch(images, [], labels)


def train_stack(env: DistEnv, strategy: str, condition: str, tmp_path, extra: list[str]) -> dict:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype_for(strategy, extra))
    try:
        cfg = load_config(None, overrides(strategy, tmp_path) + extra + [
            "model.arch=stackgan", "model.resolution=32", "model.base_resolution=8",
            "model.gf_dim=4", "model.df_dim=4", "model.cond_dim=6", f"model.condition={condition}",
            "model.num_classes=3", "model.embedding_dim=5"])
        trainer = Trainer(cfg, env)
        trainer.data = FixedStackBatches(trainer.micro_batch, env.rank, env.world_size, condition)
        rows = [trainer.train_step() for _ in range(STACK_STEPS)]
        assert all("loss/color" in r for r in rows) and "loss/r1" in rows[0]
        assert ("loss/kl" in rows[0]) == (condition == "embedding")
        return {f"{name}.{k}": v for name, model in
                (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema))
                for k, v in trainer.strategy.full_state_dict(model).items()}
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("strategy,condition", [
    ("ddp", "none"), ("fsdp", "embedding"), ("deepspeed-3", "label")])
def test_stackgan_two_ranks_match_one_process(strategy, condition, tmp_path):
    # Three stages (8, 16, 32), R1, colour consistency, wrong pairs and the conditioning
    # augmentation's noise, with 2 micro-batches per step: the same tolerances as above.
    strategy, extra = _strategy_overrides(strategy)
    extra += ["train.grad_accum=2", "train.batch_size=16"]
    single = train_stack(DistEnv(), strategy, condition, tmp_path / "single", extra)
    ranks = run_ranks(2, train_stack, strategy, condition, tmp_path / "multi", extra,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, atol=ATOL[strategy])
