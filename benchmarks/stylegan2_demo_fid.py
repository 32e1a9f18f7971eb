"""StyleGAN2 against PGGAN on the built-in faces, each at its own demo config, in one process.

Packs the 100 built-in faces at 32^2, trains `configs/demo_faces32_pggan.yaml` (8^2 -> 32^2) and
`configs/demo_faces32_stylegan2.yaml` (32^2 throughout) for the kimg their configs give (the
demo budget: each under 10 minutes on 2 cores; ``--kimg`` overrides both), then measures the
random-feature FID (`scalegan.metrics.features.RandomConvFeatures`, 500 samples of G_ema, no
truncation, against all 100 faces). With several ``--seeds`` each model trains once per seed
(``train.seed``) and the medians are compared: one run's FID moves by about as much as the gap
between the two models. Writes the sample grids of the first seed into ``--out``. The last line
is StyleGAN2's median FID over PGGAN's (below 1: StyleGAN2 is the better).

    python benchmarks/stylegan2_demo_fid.py [--seeds 0 1 2] [--kimg K] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stackgan_demo_fid import faces  # every face of the pack, grayscale, in [-1, 1]

from scalegan.config import load_config
from scalegan.data.demo import pack_demo
from scalegan.metrics.features import RandomConvFeatures
from scalegan.metrics.fid import fid_from_features
from scalegan.monitor.grid import save_grid
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 500


def train(config: str, shards: Path, runs: Path, kimg: float | None,
          seed: int) -> tuple[Trainer, float]:
    extra = [f"train.seed={seed}", f"name={Path(config).stem}_seed{seed}"]
    extra += [] if kimg is None else [f"train.total_kimg={kimg}"]
    cfg = load_config(ROOT / config, [
        f"data.shards={shards}", f"runs_dir={runs}", "log.wandb=disabled",
        "log.progress=false", "checkpoint.every_kimg=1000", *extra])
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.train()
    trainer.close()
    return trainer, time.perf_counter() - t0


@torch.no_grad()
def samples(trainer: Trainer, n: int, seed: int) -> torch.Tensor:
    """``n`` images of the trained G_ema from latents of ``seed``, sampled as the metrics of
    ``scalegan eval`` sample them (``family.metric_images``: StyleGAN2 with random noise)."""
    family, mc = trainer.family, trainer.cfg.model
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mc.latent_dim, generator=gen)
    image_seeds = torch.randint(0, 2 ** 62, (n,), generator=gen)
    nets = {name: trainer.ema[name] for name in family.ema}
    phase = Phase(mc.resolution, 1.0)
    return torch.cat([family.metric_images(nets, zb, None, phase, sb)
                      for zb, sb in zip(z.split(100), image_seeds.split(100), strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=None,
                        help="images shown to each, x1000 (default: each config's total_kimg)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; the medians over them are compared")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("stylegan2_demo"),
                        help="directory for the two sample grids")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = RandomConvFeatures()
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, list[tuple[int, float, float, float]]] = {"pggan": [], "stylegan2": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pack_demo(tmp / "faces32", resolution=32)
        real = extractor(faces(tmp / "faces32", 32)).numpy()
        for seed in args.seeds:
            for name, config in (("pggan", "configs/demo_faces32_pggan.yaml"),
                                 ("stylegan2", "configs/demo_faces32_stylegan2.yaml")):
                trainer, seconds = train(config, tmp / "faces32", tmp, args.kimg, seed)
                images = samples(trainer, SAMPLES, seed=2024)
                if seed == args.seeds[0]:
                    save_grid(images[:64], args.out / f"{name}.png", ncols=8)
                fid = fid_from_features(real, extractor(images).numpy())
                results[name].append((seed, fid, seconds, trainer.images_seen / 1000))
                print(f"  seed {seed} {name}: FID {fid:.3f}, {seconds:.0f} s", flush=True)

    print(f"random-feature FID ({SAMPLES} samples of G_ema, 100 real faces, 32x32); grids of seed "
          f"{args.seeds[0]} in {args.out}/")
    print("| model | seed | kimg | train time | FID |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        for seed, fid, seconds, kimg in rows:
            print(f"| {name} | {seed} | {kimg:g} | {seconds:.0f} s | {fid:.3f} |")
    median = {name: statistics.median(r[1] for r in rows) for name, rows in results.items()}
    print(f"median FID over seeds {' '.join(map(str, args.seeds))}: pggan {median['pggan']:.3f}, "
          f"stylegan2 {median['stylegan2']:.3f}")
    print(f"StyleGAN2 / PGGAN random-feature FID on the built-in faces: "
          f"{median['stylegan2'] / median['pggan']:.2f}")


if __name__ == "__main__":
    main()
