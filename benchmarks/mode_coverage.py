"""Mode coverage on the 2-D mixtures (the Unrolled-GAN / VEEGAN / PacGAN protocol): the plain
GAN with and without minibatch discrimination, the original WGAN, RpGAN + R1 + R2, EBGAN and
MRGAN, through scalegan's own trainer.

The data are the ring of 8 Gaussians (radius 2, std 0.02) and the 5x5 grid of 25 Gaussians
(points {-4, -2, 0, 2, 4}^2, std 0.05). The run is configs/grid25_mlp.yaml (`model.arch=mlp`: G and
D with 3 hidden layers of 128 units, a 2-D latent, batch 128, Adam (lr 1e-3, betas 0 / 0.99), 8000
steps, the non-saturating loss, and G_ema with a half-life of 10k points) with data.points set to
the mixture. Variant "mbdisc" keeps its minibatch discrimination (8 kernels of dimension 4) before
D's output layer; "plain" turns it off; "wgan", "rpgan", "ebgan" and "mrgan" are
configs/grid25_<variant>.yaml (the same MLP widths, latent, batch and number of D steps).

After training, 2500 samples of G_ema are judged with `scalegan.metrics.modes.mode_stats`: a
sample is high quality within 3 std of its nearest mode; a mode is covered when it is the nearest
mode of at least one high-quality sample (the VEEGAN / PacGAN rule). `m20` counts modes with at
least 20 such samples, KL is the high-quality samples' mode histogram against uniform. Each run
uses one thread; wall seconds are this machine's, measured in this run.

    python benchmarks/mode_coverage.py [--mixtures grid25,ring8]
        [--variants mbdisc,plain,wgan,rpgan,ebgan,mrgan]
        [--seeds 0,1,2] [--steps 8000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scalegan.config import load_config
from scalegan.data.points import mixture
from scalegan.metrics.modes import mode_stats
from scalegan.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SAMPLES = 2500
VARIANTS = {
    "mbdisc": ("grid25_mlp.yaml", []),
    "plain": ("grid25_mlp.yaml", ["model.mbdisc_kernels=0"]),
    "wgan": ("grid25_wgan.yaml", []),
    "rpgan": ("grid25_rpgan.yaml", []),
    "ebgan": ("grid25_ebgan.yaml", []),
    "mrgan": ("grid25_mrgan.yaml", []),
}
"""Variant -> (its config in configs/, overrides). Every one is a 3x128 MLP pair with a 2-D
latent at batch 128 and 8000 steps of D; "plain" is the non-saturating GAN the others are
compared with."""


def run(mix: str, variant: str, seed: int, steps: int, root: str) -> dict:
    config, overrides = VARIANTS[variant]
    cfg = load_config(CONFIGS / config, [
        f"runs_dir={root}", f"name={mix}-{variant}-{seed}", f"data.points={mix}",
        f"train.seed={seed}", "log.every_steps=1000", "log.sample_every_kimg=100000",
        "checkpoint.every_kimg=100000", "log.progress=false", *overrides])
    cfg.train.total_kimg = steps * cfg.train.batch_size / 1000
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    seconds = time.perf_counter() - t0
    with torch.no_grad():  # G_ema on latents N(0, I) seeded by 10000 + seed
        points = trainer.family.generate(trainer.ema, SAMPLES, 10_000 + seed, trainer.phase(),
                                         {"batch": SAMPLES})
    centers, std = mixture(mix)
    stats = mode_stats(points, centers, std)
    m20 = sum(c >= 20 for c in stats["counts"])
    return {"modes": stats["modes"], "of": len(centers), "hq": stats["high_quality"],
            "m20": m20, "kl": stats["kl"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixtures", default="grid25,ring8")
    parser.add_argument("--variants", default="mbdisc,plain")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=8000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| mixture | variant | seed | modes | high quality | m20 | KL | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for mix in args.mixtures.split(","):
            for variant in args.variants.split(","):
                rows = []
                for seed in seeds:
                    r = run(mix, variant, seed, args.steps, root)
                    rows.append(r)
                    print(f"| {mix} | {variant} | {seed} | {r['modes']}/{r['of']} | "
                          f"{100 * r['hq']:.1f}% | {r['m20']} | {r['kl']:.3f} | "
                          f"{r['seconds']:.0f} |", flush=True)
                med = {k: statistics.median(r[k] for r in rows)
                       for k in ("modes", "hq", "m20", "kl")}
                total = sum(r["seconds"] for r in rows)
                print(f"| **{mix}** | **{variant}** | median of {len(rows)} | "
                      f"**{med['modes']:g}/{rows[0]['of']}** | **{100 * med['hq']:.1f}%** | "
                      f"{med['m20']:g} | {med['kl']:.3f} | {total:.0f} in all |", flush=True)


if __name__ == "__main__":
    main()
