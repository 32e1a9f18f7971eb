"""Stacked digits: modes covered by the progressive GAN with and without minibatch discrimination.

Problem: Stacked MNIST (Metz et al. 2017; VEEGAN; PacGAN) with scikit-learn's 8x8 digits
(:mod:`scalegan.data.digits`): three independently drawn digit images as the R, G, B channels of
one 8x8 image, so the data has 1000 modes, one per digit triple. ``--train-images`` such images
are packed into WebDataset shards in a temporary directory with ``pack_arrays`` and the
progressive GAN trains on them through the real trainer (``Trainer(cfg).train()``) at a fixed 8x8
resolution (``model.resolution=8``, ``train.schedule.start_resolution=8``: no growing, no fade),
without mirroring (a mirrored digit is not a digit).

Score (the Stacked-MNIST protocol): ``--samples`` images of G_ema (26000 as in the papers), each
channel labelled by :class:`~scalegan.data.digits.DigitClassifier` (logistic regression on the
digits; its accuracy is printed); **modes** = digit triples with at least one sample (of 1000),
**KL** = KL(q || uniform) of the triples' distribution q, in nats.

The protocol alone cannot tell digits from noise (the classifier names a digit for any image:
uniform noise covers all 1000 triples), so the table adds **precision**:
:func:`~scalegan.data.digits.digit_precision` of the channels of the first 5000 samples, the share
that lies within the k = 3 nearest-neighbour radius of a real digit. Reference rows give every
score for real stacked digits (the ceiling; their precision is that of the held-out digits, since
the others are the precision's own reference set), uniform noise and an untrained G.

Variants, the same settings otherwise (``SETTINGS``), minibatch stddev off unless named so that
the comparison isolates minibatch discrimination:

* ``plain``: neither minibatch stddev nor minibatch discrimination;
* ``mbdisc``: minibatch discrimination in D's last block (``model.mbdisc_kernels=32``, kernel
  dimension ``model.mbdisc_dim=16``);
* ``mbstd``: minibatch stddev (group 4) instead, no minibatch discrimination (not run by default).

Each (variant, seed) trains from scratch with ``train.seed=seed`` and is scored with latents
seeded by ``seed``; the table has one row per run and the median over seeds per variant.
Seconds: wall time of one run (building the trainer and training; packing and scoring excluded),
one thread; compare them within one invocation.

    python benchmarks/stacked_digits.py [--seeds 0,1,2 --kimg 48 --samples 26000
                                         --variants plain,mbdisc --train-images 50000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scalegan.config import load_config
from scalegan.data.digits import (
    NUM_MODES,
    DigitClassifier,
    digit_images,
    digit_precision,
    digit_split,
    mode_coverage,
    stacked_digits,
    to_signed,
)
from scalegan.data.pack import pack_arrays
from scalegan.models import build_models
from scalegan.train.trainer import Trainer

RESOLUTION = 8
LATENT_DIM = 64
BATCH = 64
PRECISION_IMAGES = 5000  # images whose 3 channels each go into digit_precision

# Shared by every variant. 64 feature maps at 4x4 and 8x8 in G and D (channel_base 512 / 8 = 64,
# capped by channel_max); otherwise the trainer's PGGAN defaults (non-saturating loss, Adam lr
# 1e-3, betas (0, 0.99), no R1) except the EMA half-life, shortened for a run of tens of kimg.
# One run takes ~105 s here. Also tried, at 20-120 kimg, on plain: lr 1e-4, 5e-4, 2e-3, 3e-3;
# D or G lr alone at 3e-3; beta1 0.5; batch 16, 32; 32 or 128 feature maps; R1 (gamma 1, 10);
# WGAN-GP (also with minibatch stddev); hinge; 120 kimg. None made the samples clearly more
# digit-like: in every case ~0.15 of the generated channels were read by the classifier with
# probability >= 0.9, against 0.86 for real digits (precision was measured for these settings
# only).
SETTINGS = [
    "model.arch=progressive", f"model.resolution={RESOLUTION}",
    f"train.schedule.start_resolution={RESOLUTION}",
    f"model.latent_dim={LATENT_DIM}", "model.channel_base=512", "model.channel_max=64",
    f"train.batch_size={BATCH}", "train.ema_halflife_kimg=2",
    "data.xflip=false", "data.num_workers=0", "data.shuffle_buffer=2000",
    "log.wandb=disabled", "log.progress=false", "log.every_steps=50",
    "checkpoint.every_kimg=1000", "checkpoint.resume=false", "log.sample_every_kimg=1000",
]

VARIANTS = {
    "plain": ["model.mbstd_group_size=0", "model.mbdisc_kernels=0"],
    "mbdisc": ["model.mbstd_group_size=0", "model.mbdisc_kernels=32", "model.mbdisc_dim=16"],
    "mbstd": ["model.mbstd_group_size=4", "model.mbdisc_kernels=0"],
}


def run_config(runs_dir: Path, shards: Path, variant: str, seed: int, kimg: float):
    return load_config(None, SETTINGS + VARIANTS[variant] + [
        f"runs_dir={runs_dir}", f"name={variant}_seed{seed}", f"data.shards={shards}",
        f"train.total_kimg={kimg}", f"train.seed={seed}",
    ])


def train_one(cfg) -> tuple[torch.nn.Module, float]:
    """Train one run from scratch; returns its G_ema and the wall seconds of building and
    training."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer.G_ema, time.perf_counter() - t0


@torch.no_grad()
def generate(G: torch.nn.Module, n: int, seed: int, batch: int = 1000) -> np.ndarray:
    """``n`` images ``(n, 3, 8, 8)`` float32 of ``G`` (about [-1, 1]) from seeded latents."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        z = torch.randn(min(batch, n - start), LATENT_DIM, generator=gen)
        out.append(G(z, RESOLUTION, 1.0).numpy())  # (B, 3, 8, 8)
    return np.concatenate(out)


def score(images: np.ndarray, classifier: DigitClassifier) -> dict:
    """Modes and KL of ``images`` ``(N, 3, 8, 8)`` in [-1, 1], and the precision of the
    channels of the first PRECISION_IMAGES."""
    result = mode_coverage(classifier.predict_stacked(images))
    result["precision"] = digit_precision(images[:PRECISION_IMAGES].reshape(-1, 8, 8))
    return result


def _row(name: str, seeds: str, s: dict, seconds: float | None) -> str:
    secs = "-" if seconds is None else f"{seconds:.0f}"
    return (f"| {name} | {seeds} | {s['modes']:g} | {s['kl']:.3f} | {s['precision']:.3f} "
            f"| {secs} |")


def reference_rows(classifier: DigitClassifier, n: int, cfg) -> list[str]:
    """Rows for real stacked digits, uniform noise and an untrained G, ``n`` images each."""
    real_images, real_labels = stacked_digits(n, seed=777)
    real_x = to_signed(real_images).transpose(0, 3, 1, 2)  # (n, 3, 8, 8)
    per_channel = (classifier.predict_stacked(real_x) == real_labels).mean(axis=0)
    print(f"classifier: held-out accuracy {classifier.test_accuracy:.4f} (450 digits); per "
          f"channel on {n} real stacked digits {', '.join(f'{a:.4f}' for a in per_channel)}")
    real = mode_coverage(classifier.predict_stacked(real_x))
    pool, _ = digit_images()
    real["precision"] = digit_precision(to_signed(pool[digit_split(0)[1]]))
    noise = np.random.default_rng(0).uniform(-1, 1, (n, 3, RESOLUTION, RESOLUTION))
    torch.manual_seed(cfg.train.seed)  # the initial weights of seed cfg.train.seed's runs
    G_untrained, _ = build_models(cfg.model)
    return [
        _row("real stacked digits (ceiling)", "-", real, None),
        _row("uniform noise in [-1, 1]", "-", score(noise.astype(np.float32), classifier), None),
        _row("untrained G", str(cfg.train.seed),
             score(generate(G_untrained.eval(), n, cfg.train.seed), classifier), None),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    p.add_argument("--kimg", type=float, default=48.0, help="thousands of real images per run")
    p.add_argument("--samples", type=int, default=26000, help="generated images scored per run")
    p.add_argument("--variants", default="plain,mbdisc",
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--train-images", type=int, default=50000,
                   help="real stacked digits packed for training")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}: expected one of {', '.join(VARIANTS)}")

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    classifier = DigitClassifier().fit(seed=0)
    header = [f"| variant | seed | modes (of {NUM_MODES}) | KL | precision | seconds |",
              "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="stacked_digits_") as tmp:
        shards = Path(tmp) / "shards"
        images, _ = stacked_digits(args.train_images, seed=12345)  # not the scoring seeds
        pack_arrays(list(images), shards, resolution=RESOLUTION, shard_size=5000)
        refs = reference_rows(classifier, args.samples,
                              run_config(Path(tmp), shards, variants[0], seeds[0], args.kimg))
        print(f"runs: {args.kimg:g} kimg each (batch {BATCH}) on {args.train_images} packed "
              f"stacked digits; {args.samples} samples scored per run, precision on "
              f"{min(args.samples, PRECISION_IMAGES)} of them; torch threads "
              f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
        print()
        print("\n".join(header + refs), flush=True)
        results: dict[str, list[tuple[int, dict, float]]] = {v: [] for v in variants}
        rows = []
        for variant in variants:
            for seed in seeds:
                cfg = run_config(Path(tmp) / "runs", shards, variant, seed, args.kimg)
                G_ema, seconds = train_one(cfg)
                s = score(generate(G_ema, args.samples, seed), classifier)
                results[variant].append((seed, s, seconds))
                rows.append(_row(variant, str(seed), s, seconds))
                print(rows[-1], flush=True)
    for variant in variants:
        runs = results[variant]
        median = {key: statistics.median(s[key] for _, s, _ in runs)
                  for key in ("modes", "kl", "precision")}
        rows.append(_row(f"**{variant} median**", ",".join(str(seed) for seed, _, _ in runs),
                         median, statistics.median(t for _, _, t in runs)))
    print()
    print("\n".join(header + refs + rows))
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
