"""LAPGAN on the built-in faces: every level of the pyramid, and the run without it.

Data: the 100 built-in faces at 32x32 (``scalegan pack demo``), packed once in a temporary
directory. Each seed trains ``configs/demo_faces32_lapgan.yaml`` (three levels 8 -> 16 -> 32,
16 kimg) through the trainer, and, as the run without the technique, a DCGAN that draws the
32x32 image at once (``model.arch=dcgan``, 64 feature maps at 16x16 and 128 below, the same
batch, Adam settings and kimg).

Per run: **FID** of 1000 samples of the averaged G's against the 100 faces, on scalegan's
fixed random-feature extractor (``eval.extractor=random``: comparable between these runs only,
never with published FIDs); for LAPGAN also **spread_0** (the coarsest level's per-pixel std
across samples over the real 8x8 images') and **residual_j** (the std of G_j's residuals given
real coarser images over the real residuals' std; 1 is the data's). Seed 0's grids are copied to
``--images`` (default docs/images/): ``lapgan_samples.png`` (each sample's 8, 16 and 32 levels
side by side) and ``lapgan_residuals.png`` (each level's generated residuals, divided by 3 times
the level's std: mid-grey is 0). The last line is the headline: the median FID of each.

    python benchmarks/lapgan_levels.py [--seeds 0,1,2 --kimg 16 --images docs/images]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scalegan.config import load_config
from scalegan.data.demo import pack_demo
from scalegan.data.pipeline import read_images
from scalegan.families.lapgan import residuals_path
from scalegan.metrics.evaluate import evaluate, extractor_for
from scalegan.parallel.env import DistEnv
from scalegan.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_faces32_lapgan.yaml"
DCGAN = ["model.arch=dcgan", "model.resolution=32", "model.img_channels=1",
         "model.latent_dim=100", "model.channel_base=1024", "model.channel_max=128",
         "train.batch_size=32", "data.num_workers=0", "data.shuffle_buffer=100",
         "optim.g_lr=0.0002", "optim.d_lr=0.0002", "optim.beta1=0.5", "optim.beta2=0.999",
         "log.sample_grid=8"]
"""The run without the pyramid: DCGAN's own Adam settings (the LAPGAN config's 1e-3 and
betas (0, 0.99) are for its fully connected coarsest level)."""


def run(name: str, overrides: list[str], seed: int, kimg: float, shards: Path, root: str,
        real: torch.Tensor) -> tuple[Trainer, dict]:
    cfg = load_config(CONFIG if name == "lapgan" else None, [
        f"runs_dir={root}", f"name={name}-{seed}", f"data.shards={shards}",
        f"train.seed={seed}", f"train.total_kimg={kimg}", "log.every_steps=1000",
        f"log.sample_every_kimg={kimg}", "checkpoint.every_kimg=100000", "log.progress=false",
        "log.wandb=disabled", "eval.extractor=random", "eval.num_fake=1000",
        "eval.metrics=fid", *overrides])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    seconds = time.perf_counter() - t0
    extractor = extractor_for(cfg.eval, torch.device("cpu"))
    results, _ = evaluate(trainer.ema, cfg, trainer.phase(), DistEnv(), extractor, None,
                          family=trainer.family)
    figures = {"fid": results["fid"], "seconds": seconds}
    if cfg.model.arch == "lapgan":
        figures.update(trainer.family.level_figures(trainer.ema, real, num=500))
    return trainer, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kimg", type=float, default=16.0)
    parser.add_argument("--images", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| model | seed | FID (random features) | spread_0 | residual_1 | residual_2 | wall s |")
    print("|---|---|---|---|---|---|---|")
    fids: dict[str, list[float]] = {"lapgan": [], "dcgan": []}
    with tempfile.TemporaryDirectory() as root:
        shards = Path(root) / "faces"
        pack_demo(shards, resolution=32)
        real = read_images(str(shards), 32, channels=1)
        for seed in seeds:
            for name, overrides in (("lapgan", []), ("dcgan", DCGAN)):
                trainer, r = run(name, overrides, seed, args.kimg, shards, root, real)
                fids[name].append(r["fid"])
                levels = " | ".join(f"{r[k]:.2f}" if k in r else "" for k in
                                    ("spread_0", "residual_1", "residual_2"))
                print(f"| {name} | {seed} | {r['fid']:.3f} | {levels} | {r['seconds']:.0f} |",
                      flush=True)
                if name == "lapgan" and seed == seeds[0]:
                    out = Path(args.images)
                    out.mkdir(parents=True, exist_ok=True)
                    grid = trainer.run_dir / "samples" / "latest.png"
                    shutil.copy(grid, out / "lapgan_samples.png")
                    shutil.copy(residuals_path(grid), out / "lapgan_residuals.png")
    print(f"LAPGAN FID (random features) median {statistics.median(fids['lapgan']):.3f}, "
          f"DCGAN at 32x32 in one go {statistics.median(fids['dcgan']):.3f} "
          f"({len(seeds)} seeds, {args.kimg:g} kimg)")


if __name__ == "__main__":
    main()
