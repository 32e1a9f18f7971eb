"""StackGAN-v2 end to end: labelled packs through the pipeline, training, resume, generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalegan.cli import main
from scalegan.config import load_config
from scalegan.data.pack import pack_folder
from scalegan.data.pipeline import DataError, ImageStream, box_pyramid, expand_shards
from scalegan.train.trainer import Trainer

from conftest import write_shards

CLASSES = ("blue", "red")  # sorted folder names: class 0 is blue, class 1 red


def colour_folder(root: Path, per_class: int = 24, size: int = 64) -> Path:
    """Noisy images whose blue (class 0) or red (class 1) channel is raised, in class folders."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[..., 2 if label == 0 else 0] += 150
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    """The same images packed with class labels (from the folders) and with attribute vectors."""
    root = tmp_path_factory.mktemp("stack")
    src = colour_folder(root / "src")
    pack_folder(src, root / "labelled", 64, shard_size=12, labels="dirs")
    table = {f"{name}/{i:03d}.png": [float(c), float(i % 3) / 2, 1.0 - c]
             for c, name in enumerate(CLASSES) for i in range(24)}
    (root / "attributes.json").write_text(json.dumps(table))
    pack_folder(src, root / "attributes", 64, shard_size=12, labels=root / "attributes.json")
    return {"root": root, "labelled": root / "labelled", "attributes": root / "attributes"}


def stack_overrides(runs: Path, shards: Path, condition: str, name: str) -> list[str]:
    return [
        f"runs_dir={runs}", f"name={name}", f"data.shards={shards}", "model.arch=stackgan",
        "model.resolution=64", "model.base_resolution=16", "model.gf_dim=4", "model.df_dim=4",
        "model.latent_dim=16", "model.cond_dim=8", f"model.condition={condition}",
        "model.num_classes=2", "model.embedding_dim=3", "train.batch_size=8",
        "train.total_kimg=100", "loss.r1_gamma=1.0", "loss.r1_interval=4", "log.every_steps=10",
        "log.sample_grid=4", "log.wandb=disabled", "log.progress=false", "data.num_workers=0",
        "data.shuffle_buffer=16", "checkpoint.every_kimg=100",
    ]


def test_pipeline_serves_every_scale_and_the_label_of_one_sample(packs):
    stream = ImageStream(expand_shards(str(packs["labelled"])), batch_size=6, resolution=64,
                         label_key="label", pyramid=3, shuffle_buffer=8)
    images, keys, labels = stream.next_batch()[:3]
    assert [tuple(x.shape) for x in images] == [(6, 3, 16, 16), (6, 3, 32, 32), (6, 3, 64, 64)]
    for k, x in enumerate(reversed(images)):  # each scale: 2^k x 2^k block means of the full one
        torch.testing.assert_close(x, torch.nn.functional.avg_pool2d(images[-1], 2 ** k),
                                   rtol=0, atol=1e-6)
    assert labels.dtype == torch.int64 and len(labels) == len(keys) == 6
    red_minus_blue = images[0][:, 0].mean((1, 2)) - images[0][:, 2].mean((1, 2))
    assert torch.equal(labels, (red_minus_blue > 0).long())  # each label is its image's class

    vectors = ImageStream(expand_shards(str(packs["attributes"])), batch_size=6, resolution=64,
                          label_key="attributes", shuffle_buffer=8).next_batch()
    assert vectors.labels.dtype == torch.float32 and vectors.labels.shape == (6, 3)
    red = vectors.images[:, 0].mean((1, 2)) > vectors.images[:, 2].mean((1, 2))
    assert torch.equal(vectors.labels[:, 0], red.float())


def test_box_pyramid_of_a_known_image():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    small, mid, full = box_pyramid(x, 3)
    assert full is x and mid.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert small.item() == pytest.approx(7.5)


def test_conditional_model_on_unlabelled_shards_names_the_sample(tmp_path):
    write_shards(tmp_path / "plain", num_shards=1, per_shard=4, resolution=16)
    stream = ImageStream(expand_shards(str(tmp_path / "plain")), batch_size=2, resolution=16,
                         label_key="label")
    with pytest.raises(DataError, match=r"sample 0000000\d in .*000000.tar has no 'label'.*"
                                        r"--labels"):
        stream.next_batch()


def test_more_classes_in_the_pack_than_the_model_has_is_an_error(tmp_path):
    for i, name in enumerate(("a", "b", "c")):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (80 * i, 0, 0)).save(tmp_path / "src" / name / "0.png")
    pack_folder(tmp_path / "src", tmp_path / "three", 64, shard_size=1, labels="dirs")
    trainer = Trainer(load_config(None, stack_overrides(tmp_path, tmp_path / "three", "label",
                                                        "k")))
    with pytest.raises(DataError, match=r"index.json lists 3 classes but model.num_classes=2: "
                                        r"set model.num_classes=3"):
        trainer.train(max_steps=1)


@pytest.fixture(scope="module")
def trained_label_run(packs) -> Path:
    """300 steps of a 3-stage (16, 32, 64) label-conditional model on the colour classes."""
    cfg = load_config(None, stack_overrides(packs["root"] / "runs", packs["labelled"], "label",
                                            "label"))
    trainer = Trainer(cfg)
    assert trainer.train(max_steps=300) == "max_steps"
    trainer.close()
    return cfg.run_dir


@pytest.mark.slow
def test_three_stage_model_trains_300_steps_and_draws_every_stage(trained_label_run):
    rows = [json.loads(line) for line in
            (trained_label_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 301, 10))
    keys = ("loss/D", "loss/G", "loss/color", "loss/r1")
    assert all(math.isfinite(r[k]) for r in rows for k in keys)
    # the colour-consistency term falls as the stages learn to agree
    assert rows[-1]["loss/color"] < 0.5 * rows[0]["loss/color"]
    grid = np.asarray(Image.open(trained_label_run / "samples" / "latest.png"))
    assert grid.shape == (4 * 64, 4 * 3 * 64, 3)  # 4 x 4 samples, each 3 stages side by side
    first_stage = grid[:64, :64].astype(int)  # 16x16 enlarged 4x: constant 4x4 blocks
    assert (first_stage == np.repeat(np.repeat(first_stage[::4, ::4], 4, 0), 4, 1)).all()
    last_stage = grid[:64, 128:192].astype(int)
    assert (last_stage != np.repeat(np.repeat(last_stage[::4, ::4], 4, 0), 4, 1)).any()


@pytest.mark.slow
def test_generate_draws_the_requested_label(trained_label_run, tmp_path, capsys):
    red_minus_blue = {}
    for label in (0, 1):
        out = tmp_path / f"label{label}"
        assert main(["generate", str(trained_label_run), "--label", str(label), "--num", "12",
                     "--individual", "--out", str(out)]) == 0
        files = sorted(out.glob("*.png"))
        assert len(files) == 12
        images = np.stack([np.asarray(Image.open(f)) for f in files]).astype(float)
        assert images.shape == (12, 64, 64, 3)  # the final stage
        red_minus_blue[label] = images[..., 0].mean() - images[..., 2].mean()
    # the "red" class (1) comes out clearly redder than the "blue" class (0); measured: 132 levels
    assert red_minus_blue[1] - red_minus_blue[0] > 30

    assert main(["generate", str(trained_label_run), "--num", "4", "--stages", "all",
                 "--out", str(tmp_path / "all.png")]) == 0
    assert Image.open(tmp_path / "all.png").size == (2 * 3 * 64, 2 * 64)

    assert main(["generate", str(trained_label_run), "--label", "2"]) == 2
    assert "--label 2 is out of range: the model has model.num_classes=2" in \
        capsys.readouterr().err


def test_resume_with_attribute_conditions_is_exact(packs, tmp_path):
    # conditioning augmentation's noise, wrong pairs and the data position all resume exactly
    def run(name: str, steps: int) -> Trainer:
        trainer = Trainer(load_config(None, stack_overrides(tmp_path, packs["attributes"],
                                                            "embedding", name) +
                                      ["log.every_steps=1"]))
        trainer.train(max_steps=steps)
        trainer.close()
        return trainer

    straight = run("straight", 6)
    run("split", 3)
    second = run("split", 3)

    def rows(t: Trainer) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k.startswith("loss/")}
                for line in (t.run_dir / "metrics.jsonl").read_text().splitlines()]

    want, got = rows(straight), rows(second)
    assert len(want) == 6 and "loss/kl" in want[0] and "loss/color" in want[0]
    assert got == want  # bit-identical floats, step by step
    assert main(["generate", str(second.run_dir), "--embedding", "1,0.5,0", "--num", "2",
                 "--out", str(tmp_path / "e.png")]) == 0


def _faces(shards: Path, resolution: int) -> torch.Tensor:
    """Every packed demo face at ``resolution``, grayscale, in [-1, 1]."""
    import webdataset as wds

    from scalegan.data.pipeline import decode_sample

    images = [decode_sample(s, resolution) for url in expand_shards(str(shards))
              for s in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return x.mean(1, keepdim=True)


@pytest.mark.slow
def test_one_stage_model_learns_the_faces(tmp_path):
    # StackGAN's first stage alone at 16^2 on the 100 built-in faces, with the demo config's
    # optimizer: the random-feature FID of G_ema against the faces falls to under half its
    # value at step 0 within 300 steps (measured: 2.8 at step 0, about 0.9 after 125 steps)
    from scalegan.data.demo import pack_demo
    from scalegan.metrics.features import RandomConvFeatures
    from scalegan.metrics.fid import fid_from_features

    pack_demo(tmp_path / "faces", resolution=16)
    cfg = load_config("configs/demo_faces64_stackgan.yaml", [
        f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'faces'}",
        "model.resolution=16", "model.base_resolution=16", "log.wandb=disabled",
        "log.progress=false", "checkpoint.every_kimg=100", "log.sample_every_kimg=100"])
    extractor = RandomConvFeatures()
    real = extractor(_faces(tmp_path / "faces", 16)).numpy()
    z = torch.randn(500, cfg.model.latent_dim, generator=torch.Generator().manual_seed(7))

    def fid(trainer: Trainer) -> float:
        with torch.no_grad():
            fake = torch.cat([trainer.G_ema(zb)[0][0] for zb in z.split(100)])
        return fid_from_features(real, extractor(fake).numpy())

    trainer = Trainer(cfg)
    assert trainer.G.num_stages == 1
    before = fid(trainer)
    assert trainer.train(max_steps=300) == "max_steps"
    after = fid(trainer)
    trainer.close()
    print(f"random-feature FID {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)
