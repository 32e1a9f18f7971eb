"""SRGAN as a family spec: its losses by hand, the VGG content loss from a local file, sharded runs
against one process, exact resume, training on the built-in faces, and `generate --input`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.demo import pack_demo_split
from scalegan.families.srgan import SRGAN, Pair, downscale
from scalegan.metrics.features import MissingWeightsError
from scalegan.models.vgg import VGG19Features
from scalegan.parallel.env import DistEnv
from scalegan.train.schedule import Phase

from families.common import (
    FixedStream,
    Fn,
    StubServices,
    assert_bad_inputs_are_named,
    assert_matches,
    assert_resume_is_exact,
    shards_to_folder,
    tiny_overrides,
    train_and_evaluate,
    train_fixed,
)
from parallel.spawn import run_ranks

FAMILY = ["model.arch=srgan", "model.resolution=32", "model.img_channels=1", "model.channels=4",
          "model.res_blocks=2", "model.d_channels=4", "train.pretrain_kimg=0.016"]
SHAPES = {"data": (1, 32)}
STAGE = Phase(32, 1.0)



STUB_NETS = {"G": Fn(lambda x: F.interpolate(x, scale_factor=4, mode="nearest")),
             "D": Fn(lambda x: x.mean(dim=(1, 2, 3)))}


def _family(tmp_path, *extra: str, svc=None) -> SRGAN:
    cfg = load_config(None, tiny_overrides(tmp_path, FAMILY) + list(extra))
    return SRGAN(cfg, svc or StubServices())


def _pair() -> Pair:
    lr = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    hr = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    hr[..., :2, :] = -1.0  # 8 pixels at -1, 8 at 0
    return Pair(lr, hr)


def test_losses_match_hand_computed_values(tmp_path):
    family, mb = _family(tmp_path), _pair()
    loss, _ = family.pretrain_loss(STUB_NETS, mb, STAGE)
    assert loss.item() == pytest.approx((8 * 1.5 ** 2 + 8 * 0.5 ** 2) / 16, abs=1e-12)  # 1.25
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    loss, _ = family.d_loss(STUB_NETS, mb, STAGE)  # D(hr) = -0.5, D(G(lr)) = 0.5
    assert loss.item() == pytest.approx(softplus(0.5) + softplus(0.5), abs=1e-6)
    loss, scalars = family.g_loss(STUB_NETS, mb, STAGE)
    assert scalars["loss/content"].item() == pytest.approx(1.25, abs=1e-12)
    assert scalars["loss/G"].item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert loss.item() == pytest.approx(1.25 + 1e-3 * softplus(-0.5), abs=1e-9)


def test_phases_follow_the_pretraining_schedule(tmp_path):
    family = _family(tmp_path, "train.pretrain_kimg=0.032")
    due = [[p.name for p in family.phases() if p.due(step, step * 16)] for step in range(4)]
    assert due == [["pretrain"], ["pretrain"], ["D", "G"], ["D", "G"]]


def test_low_resolution_inputs_are_made_from_each_sample(tmp_path):
    family = _family(tmp_path)
    stream = FixedStream(4, 0, 1, (1, 32), seed=0)
    mb = family.micro_batch({"data": stream.next_batch()}, family.svc)
    assert mb.lr.shape == (4, 1, 8, 8) and mb.hr.shape == (4, 1, 32, 32)
    torch.testing.assert_close(mb.lr, downscale(mb.hr, 4), rtol=0, atol=0)
    # bicubic with antialiasing: a 4x4 block mean would be the box filter; a constant survives
    flat = torch.full((1, 1, 32, 32), 0.25)
    torch.testing.assert_close(downscale(flat, 4), torch.full((1, 1, 8, 8), 0.25))


def test_vgg_content_loss_reads_a_local_file_and_names_a_missing_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = VGG19Features("conv2_2")  # random weights, saved in the torchvision layout
    path = tmp_path / "vgg19.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")},
               path)
    family = _family(tmp_path, "model.content=vgg", f"model.vgg_weights={path}",
                     "model.vgg_layer=conv2_2")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    want = F.mse_loss(reference(x), reference(y))
    torch.testing.assert_close(family.content_loss(x, y), want, rtol=1e-6, atol=0)
    monkeypatch.delenv("SCALEGAN_VGG19_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="nope.pth does not exist"):
        _family(tmp_path, "model.content=vgg", f"model.vgg_weights={tmp_path / 'nope.pth'}")
    with pytest.raises(MissingWeightsError, match="SCALEGAN_VGG19_WEIGHTS"):
        _family(tmp_path, "model.content=vgg")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed-3"])
def test_two_ranks_match_one_process(strategy, tmp_path):
    # step 0 pre-trains G on the MSE alone; steps 1 and 2 are adversarial
    extra = ["train.grad_accum=2", "train.batch_size=16"]
    single = train_fixed(DistEnv(), FAMILY, SHAPES, strategy, tmp_path / "single", extra, 3)
    assert single["phases"] == [["loss/mse"], ["loss/D", "loss/G", "loss/content"],
                                ["loss/D", "loss/G", "loss/content"]]
    ranks = run_ranks(2, train_fixed, FAMILY, SHAPES, strategy, tmp_path / "multi", extra, 3,
                      tmp_path=tmp_path)
    assert_matches(single, ranks, strategy)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    pack_demo_split(out, resolution=32)
    return out


def _real(tmp_path, faces, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, FAMILY) + [
        f"data.shards={faces / 'train'}", f"eval.real={faces / 'holdout'}",
        "data.num_workers=0", "data.shuffle_buffer=10", *extra]


def test_stop_and_resume_repeats_the_straight_run(tmp_path, faces):
    # 6 steps of 8: 2 of pre-training, then adversarial ones, across the resume
    assert_resume_is_exact(_real(tmp_path, faces, "train.total_kimg=0.048"), parts=(3, 3))


@pytest.mark.slow
def test_trains_on_the_built_in_faces_and_upscales_a_folder(tmp_path, faces):
    over = _real(tmp_path, faces, "model.channels=16", "model.res_blocks=4",
                 "model.d_channels=8", "train.total_kimg=1.6", "train.pretrain_kimg=1.2",
                 "train.batch_size=16", "optim.g_lr=0.001", "optim.d_lr=0.0001",
                 "checkpoint.every_kimg=1000")
    trainer, before, after = train_and_evaluate(over)
    # held-out PSNR: far below bicubic's at step 0, near it after 1.6 kimg
    assert after["psnr"] > before["psnr"] + 5, (before, after)
    assert after["psnr_bicubic"] == before["psnr_bicubic"]
    run, small = trainer.run_dir, tmp_path / "small"
    hr = shards_to_folder(faces / "holdout", tmp_path / "hr", 32, 1)
    small.mkdir()
    for p in hr:  # the model's input size: 8x8
        with Image.open(p) as im:
            im.resize((8, 8), Image.BICUBIC).save(small / p.name)
    out = tmp_path / "upscaled"
    assert main(["generate", str(run), "--input", str(small), "--out", str(out)]) == 0
    outputs = sorted(out.glob("*.png"))
    assert len(outputs) == 10
    with Image.open(outputs[0]) as im:
        assert im.size == (32, 32)
    assert_bad_inputs_are_named(run, tmp_path, side=8, channels=1)
    assert main(["eval", str(run)]) == 0
