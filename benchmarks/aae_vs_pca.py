"""The adversarial autoencoder against PCA with the same code size, on held-out digits.

Packs scikit-learn's 8x8 digits (`scalegan pack demo-digits`: a stratified 75% for training,
25% held out), trains `configs/demo_digits8_aae.yaml` in one process, and measures on the
held-out digits the reconstruction MSE per pixel ([-1, 1] scale) of the AAE and of PCA with as
many components as the AAE's code (fitted on the training digits: mean and top principal
directions by SVD), and how far the aggregated posterior's mean and covariance are from the
prior's (the largest absolute difference of any entry), over the training digits (q(z), as the
paper defines it) and over the held-out ones. The last line is the AAE's MSE over PCA's.

    python benchmarks/aae_vs_pca.py [--kimg 100] [--threads 2]
"""

from __future__ import annotations

import torch

from scalegan.data.demo import pack_demo_digits
from scalegan.data.pipeline import read_images

from _families import parse_args, train_and_evaluate, workspace


def pca_mse(train: torch.Tensor, test: torch.Tensor, k: int) -> float:
    """Held-out MSE per pixel of the rank-k PCA reconstruction fitted on ``train``."""
    x, y = train.flatten(1).double(), test.flatten(1).double()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    basis = vh[:k]
    recon = (y - mean) @ basis.T @ basis + mean
    return float((recon - y).square().mean())


def main() -> None:
    args = parse_args(__doc__, 100.0)
    with workspace(args.keep) as (data, runs):
        pack_demo_digits(data)
        trainer, before, after, seconds = train_and_evaluate(
            "configs/demo_digits8_aae.yaml",
            [f"data.shards={data / 'train'}", f"eval.real={data / 'holdout'}",
             f"train.total_kimg={args.kimg}"], runs)
        mc = trainer.cfg.model
        train = read_images(str(data / "train"), mc.resolution, channels=mc.img_channels)
        test = read_images(str(data / "holdout"), mc.resolution, channels=mc.img_channels)
    pca = pca_mse(train, test, mc.code_dim)
    print(f"trained {args.kimg} kimg in {seconds:.0f} s; code size {mc.code_dim}, prior "
          f"{mc.prior}; {len(test)} held-out digits")
    print("| | held-out reconstruction MSE | q(z) mean vs prior (training / held-out) | "
          "q(z) covariance vs prior (training / held-out) |")
    print("|---|---|---|---|")
    print(f"| PCA, {mc.code_dim} components | {pca:.4f} | | |")
    for name, r in (("AAE, step 0", before), ("AAE, trained", after)):
        print(f"| {name} | {r['recon_mse']:.4f} | {r['posterior_mean_error']:.3f} / "
              f"{r['heldout_mean_error']:.3f} | {r['posterior_cov_error']:.3f} / "
              f"{r['heldout_cov_error']:.3f} |")
    print(f"AAE reconstruction MSE over PCA's: {after['recon_mse'] / pca:.3f}")


if __name__ == "__main__":
    main()
