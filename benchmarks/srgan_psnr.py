"""SRGAN against bicubic upsampling on held-out faces (x4: 8^2 -> 32^2).

Packs the built-in faces (`scalegan pack demo-split`: 90 for training, 10 held out), trains
`configs/demo_faces32_srgan.yaml` in one process (its MSE pre-training, then the adversarial
phases), and measures PSNR and SSIM of G's outputs and of bicubic upsampling against the
held-out originals. The last line is G's PSNR over bicubic's.

    python benchmarks/srgan_psnr.py [--kimg 40] [--pretrain-kimg 30] [--threads 2]
"""

from __future__ import annotations

from scalegan.data.demo import pack_demo_split

from _families import parse_args, train_and_evaluate, workspace


def main() -> None:
    args = parse_args(__doc__, 40.0, pretrain_kimg=30.0)
    with workspace(args.keep) as (data, runs):
        pack_demo_split(data, resolution=32)
        _, before, after, seconds = train_and_evaluate(
            "configs/demo_faces32_srgan.yaml",
            [f"data.shards={data / 'train'}", f"eval.real={data / 'holdout'}",
             f"train.total_kimg={args.kimg}", f"train.pretrain_kimg={args.pretrain_kimg}"], runs)
    print(f"trained {args.kimg} kimg ({args.pretrain_kimg} of MSE pre-training) in "
          f"{seconds:.0f} s; 10 held-out faces")
    print("| x4 upscaling, held-out faces | PSNR (dB) | SSIM |")
    print("|---|---|---|")
    print(f"| bicubic | {after['psnr_bicubic']:.2f} | {after['ssim_bicubic']:.3f} |")
    print(f"| SRGAN G, step 0 | {before['psnr']:.2f} | {before['ssim']:.3f} |")
    print(f"| SRGAN G, trained | {after['psnr']:.2f} | {after['ssim']:.3f} |")
    print(f"SRGAN PSNR over bicubic: {after['psnr'] / after['psnr_bicubic']:.3f} "
          f"({after['psnr'] - after['psnr_bicubic']:+.2f} dB)")


if __name__ == "__main__":
    main()
