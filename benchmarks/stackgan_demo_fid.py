"""StackGAN-v2 against PGGAN on the built-in faces, at equal kimg, in one process.

Trains `configs/demo_faces32_pggan.yaml` (8^2 -> 32^2) and `configs/demo_faces64_stackgan.yaml`
(16^2 -> 32^2 -> 64^2) on the 100 built-in faces for the same number of images, then measures the
random-feature FID (`scalegan.metrics.features.RandomConvFeatures`, 500 samples of G_ema against
all 100 faces) of each stage. The headline compares the two at the resolution they share, 32^2:
PGGAN's final output against StackGAN's final stage box-filtered to 32^2 (and StackGAN's 32^2
stage); the last line is StackGAN's FID over PGGAN's.

    python benchmarks/stackgan_demo_fid.py [--kimg 22] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from scalegan.config import load_config
from scalegan.data.demo import pack_demo
from scalegan.data.pipeline import decode_sample, expand_shards
from scalegan.metrics.features import RandomConvFeatures
from scalegan.metrics.fid import fid_from_features
from scalegan.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 500


def faces(shards: Path, resolution: int) -> torch.Tensor:
    images = [decode_sample(s, resolution) for url in expand_shards(str(shards))
              for s in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return x.mean(1, keepdim=True)  # the demo models are grayscale


def train(config: str, shards: Path, runs: Path, kimg: float) -> tuple[Trainer, float]:
    cfg = load_config(ROOT / config, [
        f"data.shards={shards}", f"runs_dir={runs}", f"train.total_kimg={kimg}",
        "log.wandb=disabled", "log.progress=false", "checkpoint.every_kimg=1000"])
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.train()
    trainer.close()
    return trainer, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=22.0, help="images shown to each, x1000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = RandomConvFeatures()
    z = torch.randn(SAMPLES, 128, generator=torch.Generator().manual_seed(2024))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in (32, 64):
            pack_demo(tmp / f"faces{r}", resolution=r)
        real = {r: extractor(faces(tmp / "faces64", r)).numpy() for r in (16, 32, 64)}
        fid = {}

        pggan, pggan_s = train("configs/demo_faces32_pggan.yaml", tmp / "faces32", tmp, args.kimg)
        with torch.no_grad():
            images = torch.cat([pggan.G_ema(zb, 32, 1.0) for zb in z.split(100)])
        fid["pggan 32"] = fid_from_features(real[32], extractor(images).numpy())

        stack, stack_s = train("configs/demo_faces64_stackgan.yaml", tmp / "faces64", tmp,
                               args.kimg)
        with torch.no_grad():
            stages = [torch.cat(parts) for parts in zip(
                *[stack.G_ema(zb[:, :stack.cfg.model.latent_dim])[0] for zb in z.split(100)],
                strict=True)]
        for images in stages:
            r = images.shape[-1]
            fid[f"stackgan {r}"] = fid_from_features(real[r], extractor(images).numpy())
        fid["stackgan 64 -> 32"] = fid_from_features(
            real[32], extractor(F.avg_pool2d(stages[-1], 2)).numpy())

    print(f"random-feature FID after {args.kimg:g} kimg each ({SAMPLES} samples of G_ema, "
          f"100 real faces); PGGAN trained {pggan_s:.0f} s, StackGAN {stack_s:.0f} s")
    print("| model, stage | FID |")
    print("|---|---|")
    for key, value in fid.items():
        print(f"| {key} | {value:.3f} |")
    ratio = fid["stackgan 64 -> 32"] / fid["pggan 32"]
    print(f"StackGAN final stage (box-filtered to 32^2) / PGGAN FID at {args.kimg:g} kimg: "
          f"{ratio:.2f}")


if __name__ == "__main__":
    main()
