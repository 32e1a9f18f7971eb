"""Class-conditional DCGAN on the built-in digits: how many samples show the digit they were
asked for.

Data: scikit-learn's 8x8 digits with their labels (`scalegan pack demo-digits`: the training
75%), packed once in a temporary directory. Each (variant, seed) trains configs/
demo_digits8_cdcgan.yaml from scratch through the trainer with ``train.seed=seed``:

* ``projection``: D takes the label by projection (Miyato & Koyama 2018), the config's choice;
* ``concat``: D takes the label's embedding joined to its last 4x4 features (Mirza & Osindero);
* ``unconditional``: the same DCGAN without labels, the run without the technique: its samples
  are scored against labels it never saw, so it sits at chance (~10%).

Score: ``--samples`` images of G_ema, class k requested for sample i = i mod 10, each read by
the bundled digit classifier (:class:`~scalegan.data.digits.DigitClassifier`, logistic
regression, 97.8% on held-out real digits): **label accuracy** = the share read as the
requested class; **precision** = :func:`~scalegan.data.digits.digit_precision`, the share that
lies within the k = 3 nearest-neighbour radius of a real digit (is a digit at all). Wall
seconds: one run, one thread, this machine. The last line is the headline: the median label
accuracy of the conditional DCGAN over seeds.

    python benchmarks/conditional_digits.py [--seeds 0,1,2 --kimg 60 --samples 5000
                                             --variants projection,concat,unconditional]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scalegan.config import load_config
from scalegan.data.demo import pack_demo_digits
from scalegan.data.digits import DigitClassifier, digit_precision
from scalegan.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_digits8_cdcgan.yaml"
VARIANTS = {"projection": ["model.cond_d=projection"], "concat": ["model.cond_d=concat"],
            "unconditional": ["model.condition=none"]}


def run(variant: str, seed: int, kimg: float, shards: Path, root: str, samples: int,
        classifier: DigitClassifier) -> dict:
    cfg = load_config(CONFIG, [
        f"runs_dir={root}", f"name={variant}-{seed}", f"data.shards={shards}",
        f"train.seed={seed}", f"train.total_kimg={kimg}", "log.every_steps=1000",
        "log.sample_every_kimg=100000", "checkpoint.every_kimg=100000", "log.progress=false",
        "log.wandb=disabled", *VARIANTS[variant]])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    seconds = time.perf_counter() - t0
    requested = np.arange(samples) % 10
    family = trainer.family
    with torch.no_grad():  # conditional: every class in turn, sample i asks for i mod 10
        images = family.generate(trainer.ema, samples, 10_000 + seed, trainer.phase(),
                                 {"batch": 500})
    x = images.float().clamp(-1, 1)[:, 0].numpy()  # (N, 8, 8)
    accuracy = float((classifier.predict(x) == requested).mean())
    return {"accuracy": accuracy, "precision": digit_precision(x[:2000]), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kimg", type=float, default=60.0)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--variants", default="projection,concat,unconditional")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    classifier = DigitClassifier().fit(0)
    print(f"digit classifier: {100 * classifier.test_accuracy:.1f}% on held-out real digits; "
          f"{args.kimg:g} kimg per run, {args.samples} samples scored")
    print("| variant | seed | label accuracy | precision | wall s |")
    print("|---|---|---|---|---|")
    medians = {}
    with tempfile.TemporaryDirectory() as root:
        pack_demo_digits(Path(root) / "digits")
        shards = Path(root) / "digits" / "train"
        for variant in args.variants.split(","):
            rows = []
            for seed in seeds:
                r = run(variant, seed, args.kimg, shards, root, args.samples, classifier)
                rows.append(r)
                print(f"| {variant} | {seed} | {100 * r['accuracy']:.1f}% | "
                      f"{r['precision']:.3f} | {r['seconds']:.0f} |", flush=True)
            med = {k: statistics.median(r[k] for r in rows) for k in ("accuracy", "precision")}
            medians[variant] = med
            print(f"| **{variant}** | median of {len(rows)} | **{100 * med['accuracy']:.1f}%** | "
                  f"{med['precision']:.3f} | {sum(r['seconds'] for r in rows):.0f} in all |",
                  flush=True)
    conditional = [v for v in medians if v != "unconditional"]
    if conditional:
        best = conditional[0]
        base = medians.get("unconditional", {}).get("accuracy", float("nan"))
        print(f"conditional DCGAN ({best}): median {100 * medians[best]['accuracy']:.1f}% of "
              f"samples read as their requested digit (unconditional: {100 * base:.1f}%)")


if __name__ == "__main__":
    main()
