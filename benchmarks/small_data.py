"""Small data: the built-in faces without augmentation and with ADA, over several seeds.

Packs the 100 built-in faces at 32^2 with 80 held out (`scalegan pack --holdout 80`: 20 to
train on; ``--holdout``), then trains a demo config (default
`configs/demo_faces32_stylegan2.yaml`) once per setting and seed: ``none`` (x-flip only, as the
demo) and ``ada`` (augment.kind=ada, its speed scaled to the run's length: ``--ada-speed`` kimg
for p to go from 0 to 1). From each run's
metrics.jsonl: r_t (``aug/rt``) late in the run, the gap ``d/real - d/holdout`` early and late,
p (``aug/p``); then the random-feature FID of 500 samples of G_ema against the held-out faces
(the headline), all 100 and the training ones. Writes the sample grid of each run into ``--out``.

The training faces themselves score ``FID(training faces, held-out faces)`` against the
held-out ones (printed first): what a generator that reproduced its training set would score.
With 20 faces to train on that is 0.73, and a generator below it has learnt more than its
20 faces. The last line is ADA's median held-out FID over that without augmentation (below 1:
ADA is the better).

    python benchmarks/small_data.py [--seeds 0 1 2] [--holdout 80] [--kimg K] [--threads 2]
                                    [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stylegan2_demo_fid import samples  # G_ema's images through the family's own sampling

from scalegan.config import load_config
from scalegan.data.demo import pack_demo
from scalegan.data.pipeline import read_images
from scalegan.metrics.features import RandomConvFeatures
from scalegan.metrics.fid import fid_from_features
from scalegan.monitor.grid import save_grid
from scalegan.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 500
HOLDOUT = 80
SETTINGS = {
    "none": [],
    "ada": ["augment.kind=ada", "augment.target=0.6", "augment.interval=4"],
}


def train(config: Path, shards: Path, runs: Path, setting: str, seed: int,
          extra: list[str]) -> tuple[Trainer, float]:
    cfg = load_config(config, [
        f"data.shards={shards}", f"runs_dir={runs}", f"name={setting}_seed{seed}",
        f"train.seed={seed}", "log.wandb=disabled", "log.progress=false", "log.every_steps=10",
        "checkpoint.every_kimg=1000", "log.overfit_threshold=0", *SETTINGS[setting], *extra])
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.train()
    trainer.close()
    return trainer, time.perf_counter() - t0


def signals(run_dir: Path, target: float) -> dict[str, float]:
    """Over-fitting signals of a run's log: r_t's mean over the last quarter of the rows, the
    d/real - d/holdout gap's mean over the first and the last quarter, ADA's final p, and the
    share of rows after the first quarter (the warm-up) whose r_t is within 0.1 of the target."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "aug/rt" in r and "d/holdout" in r]
    q = max(1, len(rows) // 4)
    first, last, warm = rows[:q], rows[-q:], rows[q:]

    def mean(rs, key):
        return sum(r[key] for r in rs) / len(rs)

    return {"rt_late": mean(last, "aug/rt"), "rt_max": max(r["aug/rt"] for r in rows),
            "gap_early": mean(first, "d/overfit_gap"), "gap_late": mean(last, "d/overfit_gap"),
            "p": rows[-1].get("aug/p", 0.0),
            "near_target": sum(abs(r["aug/rt"] - target) <= 0.1 for r in warm) / len(warm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/demo_faces32_stylegan2.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--kimg", type=float, default=None,
                        help="images shown per run, x1000 (default: the config's total_kimg)")
    parser.add_argument("--ada-speed", type=float, default=5.0,
                        help="augment.speed_kimg of the ada runs (published: 500, for runs of "
                             "thousands of kimg)")
    parser.add_argument("--holdout", type=int, default=HOLDOUT,
                        help="faces held out of the 100 (the rest are trained on)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("small_data"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    extra = list(args.overrides) + ([f"train.total_kimg={args.kimg}"] if args.kimg else [])
    SETTINGS["ada"] = SETTINGS["ada"] + [f"augment.speed_kimg={args.ada_speed}"]
    extractor = RandomConvFeatures()

    results: dict[str, list[dict]] = {s: [] for s in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "faces32"
        pack_demo(shards, resolution=32, holdout=args.holdout)
        channels = load_config(args.config).model.img_channels
        held = extractor(read_images(str(shards / "holdout"), 32, channels=channels)).numpy()
        train_set = extractor(read_images(str(shards), 32, channels=channels)).numpy()
        every = np.concatenate([train_set, held])
        print(f"{len(train_set)} training faces, {len(held)} held out; {args.config.name}; "
              f"FID(training faces, held-out faces) = {fid_from_features(held, train_set):.3f}",
              flush=True)
        print("| setting | seed | kimg | time | r_t late (max) | d/real - d/holdout early -> "
              "late | p | r_t within 0.1 of 0.6 | FID held-out | FID all 100 | FID train |",
              flush=True)
        print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for seed in args.seeds:
            for setting in args.settings:
                trainer, seconds = train(args.config, shards, tmp, setting, seed, extra)
                images = samples(trainer, SAMPLES, seed=2024)
                save_grid(images[:64], args.out / f"{setting}_seed{seed}.png", ncols=8)
                fake = extractor(images).numpy()
                row = {**signals(trainer.run_dir, trainer.cfg.augment.target),
                       "fid_all": fid_from_features(every, fake),
                       "fid_holdout": fid_from_features(held, fake),
                       "fid_train": fid_from_features(train_set, fake),
                       "seconds": seconds, "kimg": trainer.images_seen / 1000}
                results[setting].append(row)
                near = f"{row['near_target']:.0%}" if setting == "ada" else "-"
                print(f"| {setting} | {seed} | {row['kimg']:g} | {seconds:.0f} s | "
                      f"{row['rt_late']:.2f} ({row['rt_max']:.2f}) | {row['gap_early']:+.2f} -> "
                      f"{row['gap_late']:+.2f} | {row['p']:.3f} | {near} | "
                      f"{row['fid_holdout']:.3f} | {row['fid_all']:.3f} | "
                      f"{row['fid_train']:.3f} |", flush=True)

    def median(s, key):
        return statistics.median(r[key] for r in results[s])

    for s in results:
        print(f"{s}: median FID against the held-out faces {median(s, 'fid_holdout'):.3f}, "
              f"all 100 {median(s, 'fid_all'):.3f}, train {median(s, 'fid_train'):.3f}")
    if "ada" in results and "none" in results:
        ratio = median("ada", "fid_holdout") / median("none", "fid_holdout")
        print(f"ADA / no augmentation, median random-feature FID against the held-out faces "
              f"over {len(args.seeds)} seeds: {ratio:.2f}")


if __name__ == "__main__":
    main()
