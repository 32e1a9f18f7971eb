"""DualGAN's held-out reconstruction error, before and after training, both directions, over
several seeds.

Packs the built-in domains (`scalegan pack demo-domains`: A = 40 faces, B = the photographic
negatives of 40 other faces, 10 held out of each), trains `configs/demo_faces32_dualgan.yaml` in
one process per seed, and measures the mean absolute error of G_B(G_A(a)) against a and of
G_A(G_B(b)) against b on the held-out images, at step 0 and at the end. The runs are short for
a CPU: --kimg 4 at RMSProp learning rate --lr 2e-4, 4x the paper's 5e-5 (which the config keeps:
`--lr 5e-5 --kimg 8` runs the config as it is, 2000 steps, to ratios of about 0.44 / 0.41 on seed
0). The same measurement as tests/families/test_dualgan_family.py's training test (seed 0). The
last line is the largest end / start ratio over the seeds and both directions.

    python benchmarks/dualgan_recon_error.py [--kimg 4] [--lr 2e-4] [--seeds 3] [--threads 2]
"""

from __future__ import annotations

from scalegan.data.demo import pack_demo_domains

from _families import parse_args, train_and_evaluate, workspace

CONFIG = "configs/demo_faces32_dualgan.yaml"


def main() -> None:
    args = parse_args(__doc__, 4.0, lr=2e-4, seeds=3)
    seeds = range(int(args.seeds))
    rows, seconds = [], 0.0
    with workspace(args.keep) as (data, runs):
        pack_demo_domains(data, resolution=32)
        for seed in seeds:
            _, before, after, secs = train_and_evaluate(
                CONFIG,
                [f"data.shards={data / 'a'}", f"data.shards_b={data / 'b'}",
                 f"eval.real={data / 'a_holdout'}", f"eval.real_b={data / 'b_holdout'}",
                 f"train.total_kimg={args.kimg}", f"optim.g_lr={args.lr}",
                 f"optim.d_lr={args.lr}", f"train.seed={seed}", f"name=seed{seed}"], runs)
            rows.append((seed, before, after))
            seconds += secs
    print(f"trained {args.kimg} kimg at lr {args.lr:g} per seed, {len(rows)} seeds in "
          f"{seconds:.0f} s; 10 held-out images per domain")
    print("| seed | A -> B -> A (faces): step 0 | trained | ratio "
          "| B -> A -> B (negatives): step 0 | trained | ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for seed, before, after in rows:
        cells = []
        for domain in ("a", "b"):
            ratio = after[f"recon_{domain}"] / before[f"recon_{domain}"]
            ratios.append(ratio)
            cells += [f"{before[f'recon_{domain}']:.4f}", f"{after[f'recon_{domain}']:.4f}",
                      f"{ratio:.3f}"]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print(f"worst reconstruction error, trained over step 0 (all seeds, both directions): "
          f"{max(ratios):.3f}")


if __name__ == "__main__":
    main()
