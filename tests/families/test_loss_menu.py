"""The loss menu of the single-D families (loss.kind minimax, lsgan, wgan, rpgan; R1 + R2;
train.d_steps; weight clipping and RMSProp; spectral normalisation), class conditions and the
vanilla GAN on images: losses by hand, the step schedule, two ranks against one process, exact
resume on the built-in digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scalegan import losses
from scalegan.config import ConfigError, load_config
from scalegan.data.demo import pack_demo_digits
from scalegan.families._image import MicroBatch
from scalegan.families.dcgan import DCGAN
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase

from families.common import (
    FixedStream,
    StubServices,
    assert_matches,
    assert_resume_is_exact,
    tiny_overrides,
    train_fixed,
)
from parallel.spawn import run_ranks

STAGE = Phase(8, 1.0)
REAL = torch.tensor([1.0, -0.5], dtype=torch.float64)
FAKE = torch.tensor([0.3, -2.0], dtype=torch.float64)


def sp(v: float) -> float:
    return math.log1p(math.exp(v))


# (D loss, G loss) of real logits (1, -0.5) and fake logits (0.3, -2), worked out by hand
BY_HAND = {
    "nonsaturating": ((sp(0.3) + sp(-1.0) + sp(-2.0) + sp(0.5)) / 2, (sp(-0.3) + sp(2.0)) / 2),
    "minimax": ((sp(0.3) + sp(-1.0) + sp(-2.0) + sp(0.5)) / 2, -(sp(0.3) + sp(-2.0)) / 2),
    # ((1 - 1)^2 + 0.3^2) / 2 = 0.045 and ((-0.5 - 1)^2 + (-2)^2) / 2 = 3.125; G: (0.7^2 / 2 +
    # 3^2 / 2) / 2
    "lsgan": ((0.045 + 3.125) / 2, (0.245 + 4.5) / 2),
    "hinge": ((1.3 + 1.5) / 2, (-0.3 + 2.0) / 2),
    "wgan": ((-0.7 - 1.5) / 2, 0.85),
    "wgan_gp": (-1.1 + 1e-3 * (1 + 0.25) / 2, 0.85),  # drift 1e-3 * mean(D(real)^2)
    "rpgan": ((sp(0.3 - 1.0) + sp(-2.0 + 0.5)) / 2, (sp(1.0 - 0.3) + sp(-0.5 + 2.0)) / 2),
}


@pytest.mark.parametrize("kind", sorted(BY_HAND))
def test_losses_match_hand_computed_values(kind):
    d_want, g_want = BY_HAND[kind]
    assert losses.d_loss(kind, REAL, FAKE, drift=1e-3).item() == pytest.approx(d_want, abs=1e-12)
    assert losses.g_loss(kind, FAKE, REAL).item() == pytest.approx(g_want, abs=1e-12)


def test_minimax_saturates_where_the_non_saturating_loss_does_not():
    # d/dl of log(1 - sigmoid(l)) is -sigmoid(l) -> 0 for a confidently rejected fake (l = -10);
    # d/dl of -log sigmoid(l) is sigmoid(l) - 1 -> -1 (Goodfellow et al. 2014, section 3)
    grads = {}
    for kind in ("minimax", "nonsaturating"):
        fake = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
        losses.g_loss(kind, fake).backward()
        grads[kind] = fake.grad.item()
    assert grads["minimax"] == pytest.approx(-1 / (1 + math.exp(10)), rel=1e-12)
    assert grads["nonsaturating"] == pytest.approx(1 / (1 + math.exp(10)) - 1, rel=1e-12)


def test_rpgan_generator_loss_needs_the_real_logits():
    with pytest.raises(ValueError, match="real_logits"):
        losses.g_loss("rpgan", FAKE)


class Net(nn.Module):
    """A stand-in G or D with the image models' call signature."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, resolution, alpha=1.0, cond=None):
        out = self.fn(x)
        if cond is None:
            return out
        return out + cond.to(x.dtype).view(-1, *[1] * (out.ndim - 1))  # per sample


def _family(tmp_path, *extra: str) -> DCGAN:
    cfg = load_config(None, tiny_overrides(tmp_path, ["model.arch=dcgan", "model.resolution=8",
                                                      "model.img_channels=1"]) + list(extra))
    return DCGAN(cfg, StubServices())


def _batch() -> MicroBatch:
    real = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    z = torch.tensor([[0.1, 0.2], [-0.3, 0.4]], dtype=torch.float64)
    return MicroBatch(real, z_d=z, z_g=2 * z)


def test_r1_and_r2_in_one_lazy_phase_by_hand(tmp_path):
    family = _family(tmp_path, "loss.r1_gamma=2", "loss.r2_gamma=4", "loss.r1_interval=4")
    assert [(s.name, s.interval, s.lazy) for s in family.phases()] == [
        ("D", 1, False), ("R1+R2", 4, True), ("G", 1, False)]
    # D(x) = sum x^2: its input gradient is 2x, the penalty per sample 4 |x|^2; G(z) = 3z
    nets = {"G": Net(lambda z: 3 * z), "D": Net(lambda x: x.square().sum(1))}
    loss, scalars = family.reg_loss(nets, _batch(), STAGE)
    r1 = (4 * 5 + 4 * 1.25) / 2  # reals (1, 2) and (0.5, -1)
    r2 = (4 * 9 * 0.05 + 4 * 9 * 0.25) / 2  # fakes 3 * (0.1, 0.2) and 3 * (-0.3, 0.4)
    assert scalars["loss/r1"].item() == pytest.approx(r1, abs=1e-12)
    assert scalars["loss/r2"].item() == pytest.approx(r2, abs=1e-12)
    assert loss.item() == pytest.approx(4 * (2 / 2 * r1 + 4 / 2 * r2), abs=1e-12)


def test_rpgan_pairs_each_fake_with_a_real_image(tmp_path):
    family = _family(tmp_path, "loss.kind=rpgan")
    nets = {"G": Net(lambda z: z), "D": Net(lambda x: x.sum(1))}
    mb = _batch()  # D(real) = (3, -0.5); D(G(z_g)) = (0.6, 0.2); D(G(z_d)) = (0.3, 0.1)
    g, _ = family.g_loss(nets, mb, STAGE)
    assert g.item() == pytest.approx((sp(3 - 0.6) + sp(-0.5 - 0.2)) / 2, abs=1e-12)
    d, _ = family.d_loss(nets, mb, STAGE)
    assert d.item() == pytest.approx((sp(0.3 - 3) + sp(0.1 + 0.5)) / 2, abs=1e-12)


def test_a_labelled_batch_conditions_real_and_fake_images_alike(tmp_path):
    family = _family(tmp_path, "model.condition=label", "model.num_classes=3")
    nets = {"G": Net(lambda z: z), "D": Net(lambda x: x.sum(1))}
    mb = _batch()
    mb.cond = torch.tensor([2, 0])  # Net adds the label to D's logit and to G's images
    # D(real) = (3 + 2, -0.5 + 0); fakes G(z_d) + label = (2.1, 2.2), (-0.3, 0.4), judged
    # (4.3 + 2, 0.1 + 0)
    d, _ = family.d_loss(nets, mb, STAGE)
    want = (sp(6.3) + sp(-5.0) + sp(0.1) + sp(0.5)) / 2
    assert d.item() == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------ the step, by strategy

IMAGES = ["model.resolution=8", "model.img_channels=1", "model.latent_dim=8"]
VARIANTS = {
    # the original WGAN: clipped critic, RMSProp, 2 critic steps per G step (to keep tests short)
    "wgan": ["model.arch=mlp", *IMAGES, "model.mlp_hidden=16", "model.mlp_layers=2",
             "loss.kind=wgan", "loss.clip=0.05", "optim.kind=rmsprop", "train.d_steps=2"],
    "rpgan_r1_r2": ["model.arch=progressive", *IMAGES, "model.channel_base=64",
                    "model.channel_max=16", "train.schedule.start_resolution=8",
                    "loss.kind=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1",
                    "loss.r1_interval=2"],
    "lsgan_spectral": ["model.arch=mlp", *IMAGES, "model.mlp_hidden=16", "model.mlp_layers=2",
                       "loss.kind=lsgan", "model.spectral_norm=both"],
    # the vanilla GAN of Goodfellow et al.: maxout D with dropout, the saturating loss
    "minimax_maxout_dropout": ["model.arch=mlp", *IMAGES, "model.mlp_hidden=16",
                               "model.mlp_layers=2", "model.mlp_maxout=3",
                               "model.mlp_dropout=0.5", "loss.kind=minimax"],
    "label_projection": ["model.arch=progressive", *IMAGES, "model.channel_base=64",
                         "model.channel_max=16", "train.schedule.start_resolution=8",
                         "model.condition=label", "model.num_classes=10", "model.cond_dim=4",
                         "model.cond_d=projection"],
    "label_concat": ["model.arch=mlp", *IMAGES, "model.mlp_hidden=16", "model.mlp_layers=2",
                     "model.condition=label", "model.num_classes=10", "model.cond_dim=4",
                     "model.cond_d=concat"],
}
SHAPES = {"data": (1, 8)}


class LabelledStream(FixedStream):
    """FixedStream with seeded class ids 0..9."""

    def next_batch(self):
        batch = super().next_batch()
        labels = torch.randint(0, 10, (self.micro * self.world,), generator=self.gen)
        return batch._replace(labels=labels[self.rank * self.micro:(self.rank + 1) * self.micro])


def _train(env, variant: str, strategy: str, tmp_path, steps: int):
    import families.common as common

    if "label" in variant:
        common.FixedStream, original = LabelledStream, common.FixedStream
    try:
        return train_fixed(env, VARIANTS[variant], SHAPES, strategy, tmp_path,
                           ["train.grad_accum=2", "train.batch_size=16"], steps)
    finally:
        if "label" in variant:
            common.FixedStream = original


STRATEGY_CASES = [(v, s) for v in VARIANTS for s in ("ddp", "fsdp")] + [
    pytest.param(v, "deepspeed-3", marks=pytest.mark.slow)  # clipping on ZeRO's flat partitions,
    for v in ("wgan", "lsgan_spectral", "label_projection")]  # spectral norm's buffers, labels


@pytest.mark.parametrize(("variant", "strategy"), STRATEGY_CASES)
def test_two_ranks_match_one_process(variant, strategy, tmp_path):
    steps = 4
    single = _train(DistEnv(), variant, strategy, tmp_path / "single", steps)
    ranks = run_ranks(2, _train, variant, strategy, tmp_path / "multi", steps,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)
    if variant == "wgan":  # G after every second critic step
        assert [("loss/G" in p) for p in single["phases"]] == [False, True, False, True]
        for key, value in single.items():
            if key.startswith("D."):
                assert value.abs().max() <= 0.05, key
        assert any(v.abs().max() == 0.05 for k, v in single.items() if k.startswith("D."))
    if variant == "lsgan_spectral":  # the power-iteration vectors are state, equal everywhere
        assert any(k.endswith("_u") for k in single)


def test_wgan_defaults_to_five_critic_steps_and_its_optimizers_are_rmsprop(tmp_path):
    from scalegan.train.trainer import Trainer

    cfg = load_config(None, tiny_overrides(tmp_path, VARIANTS["wgan"]) + ["train.d_steps=0"])
    trainer = Trainer(cfg)
    g = next(s for s in trainer.phase_specs if s.name == "G")
    assert [g.due(step) for step in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert isinstance(trainer.opt_D, torch.optim.RMSprop)
    assert all(p.abs().max() <= 0.05 for p in trainer.D.parameters())  # clipped from the start
    assert not all(p.abs().max() <= 0.05 for p in trainer.G.parameters())


def test_spectral_norm_bounds_the_largest_singular_value(tmp_path):
    from scalegan.train.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_overrides(tmp_path, VARIANTS["lsgan_spectral"])))
    layer = trainer.D.features[0]
    for _ in range(30):  # training-mode forwards run the power iteration
        trainer.D(torch.zeros(2, 1, 8, 8, dtype=layer.weight.dtype))
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    assert hasattr(trainer.G.net[0], "parametrizations")  # "both": G too


def test_wrong_combinations_are_named_before_the_first_step(tmp_path):
    # WGAN's loss with Adam is a valid choice (WGAN-GP's own setting)
    load_config(None, tiny_overrides(tmp_path, VARIANTS["wgan"]) + ["optim.kind=adam"])
    with pytest.raises(ConfigError, match=r"loss.r2_gamma=1.0 is not allowed: expected 0.0 with "
                                          r"model.arch=aae"):
        load_config(None, tiny_overrides(tmp_path, ["model.arch=aae", "model.resolution=8",
                                                     "loss.r2_gamma=1"]))
    from scalegan.data.demo import pack_demo
    from scalegan.train.trainer import Trainer

    faces = tmp_path / "faces"
    pack_demo(faces, resolution=8)  # no labels
    trainer = Trainer(load_config(None, tiny_overrides(tmp_path, VARIANTS["label_concat"]) + [
        f"data.shards={faces}", "data.num_workers=0"]))
    with pytest.raises(Exception, match="model.condition=label") as e:
        trainer.train(max_steps=1)
    assert str(faces) in str(e.value)
    assert trainer.step == 0


# --------------------------------------------------------------------- the built-in digits

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    pack_demo_digits(out)
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stop_and_resume_repeats_the_straight_run(variant, tmp_path, digits):
    assert_resume_is_exact(tiny_overrides(tmp_path, VARIANTS[variant]) + [
        f"data.shards={digits / 'train'}", "data.num_workers=0", "data.shuffle_buffer=100",
        "data.xflip=false", "train.total_kimg=0.048"], parts=(3, 3))


def _nearest_digit_distance(images: torch.Tensor) -> float:
    """Mean over ``images`` (N, 1, 8, 8) in [-1, 1] of the Euclidean distance to the nearest of
    scikit-learn's 1797 digits on the same scale."""
    from scalegan.data.digits import digit_images, to_signed

    real = torch.from_numpy(to_signed(digit_images()[0]).reshape(-1, 64)).double()
    return torch.cdist(images.reshape(-1, 64).double(), real).min(1).values.mean().item()


CONFIGS = {"lsgan": 5, "wgan": 10, "rpgan": 5, "mlp": 5, "cdcgan": 5}
"""configs/demo_digits8_<name>.yaml trained for this many kimg (WGAN: 10, G updates every fifth
step). Measured (seed 0, 5 kimg): untrained G's samples lie 6.1 from the nearest real digit;
after training lsgan 3.4, rpgan 3.1, the vanilla GAN (mlp, minimax) 3.9."""


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_config_learns_digits(name, tmp_path, digits):
    from pathlib import Path

    from scalegan.train.trainer import Trainer

    config = Path(__file__).resolve().parents[2] / "configs" / f"demo_digits8_{name}.yaml"
    cfg = load_config(config, [f"runs_dir={tmp_path}", f"data.shards={digits / 'train'}",
                               f"train.total_kimg={CONFIGS[name]}", "log.progress=false",
                               "log.wandb=disabled"])
    trainer = Trainer(cfg)

    def samples():
        with torch.no_grad():
            return trainer.family.generate(trainer.ema, 500, 5, trainer.phase(), {"batch": 500})

    before = _nearest_digit_distance(samples())
    trainer.train()
    trainer.close()
    after = _nearest_digit_distance(samples())
    assert after < 0.7 * before, (before, after)
    if name != "cdcgan":
        return
    from PIL import Image

    from scalegan.cli import main

    out = tmp_path / "threes.png"
    assert main(["generate", str(trainer.run_dir), "--label", "3", "--num", "16", "--out",
                 str(out)]) == 0
    width, height = Image.open(out).size
    assert width == height > 4 * 8  # a square grid of 16 digits
    assert main(["generate", str(trainer.run_dir), "--label", "10", "--out",
                 str(tmp_path / "x.png")]) == 2


def test_label_grids_hold_one_class_per_row_and_generate_asks_for_labels(tmp_path):
    family = _family(tmp_path, "model.condition=label", "model.num_classes=3",
                     "log.sample_grid=4")
    z, labels = family.sample_inputs()
    assert z.shape[0] == 16 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [0] * 4
    assert family.conditions(4, {"label": 2}).tolist() == [2, 2, 2, 2]
    assert family.conditions(4, {}).tolist() == [0, 1, 2, 0]  # every class in turn
    with pytest.raises(ValueError, match=r"--label 3 is out of range: the model has "
                                         r"model.num_classes=3"):
        family.conditions(4, {"label": 3})
    with pytest.raises(ValueError, match="unconditional"):
        _family(tmp_path).conditions(4, {"label": 1})
