"""CycleGAN's held-out cycle-reconstruction error, before and after training, both directions.

Packs the built-in domains (`scalegan pack demo-domains`: A = 40 faces, B = the photographic
negatives of 40 other faces, 10 held out of each), trains `configs/demo_faces32_cyclegan.yaml`
in one process, and measures the mean absolute error of G_BA(G_AB(a)) against a and of
G_AB(G_BA(b)) against b on the held-out images, at step 0 and at the end. The last line is the
larger of the two end / start ratios.

    python benchmarks/cyclegan_cycle_error.py [--kimg 4] [--threads 2]
"""

from __future__ import annotations

from scalegan.data.demo import pack_demo_domains

from _families import parse_args, train_and_evaluate, workspace


def main() -> None:
    args = parse_args(__doc__, 4.0)
    with workspace(args.keep) as (data, runs):
        pack_demo_domains(data, resolution=32)
        _, before, after, seconds = train_and_evaluate(
            "configs/demo_faces32_cyclegan.yaml",
            [f"data.shards={data / 'a'}", f"data.shards_b={data / 'b'}",
             f"eval.real={data / 'a_holdout'}", f"eval.real_b={data / 'b_holdout'}",
             f"train.total_kimg={args.kimg}"], runs)
    print(f"trained {args.kimg} kimg in {seconds:.0f} s; 10 held-out images per domain")
    print("| held-out cycle error (mean abs, [-1, 1] scale) | step 0 | trained | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for domain, what in (("a", "A -> B -> A (faces)"), ("b", "B -> A -> B (negatives)")):
        ratio = after[f"cycle_{domain}"] / before[f"cycle_{domain}"]
        ratios.append(ratio)
        print(f"| {what} | {before[f'cycle_{domain}']:.4f} | {after[f'cycle_{domain}']:.4f} | "
              f"{ratio:.3f} |")
    print(f"worst cycle error, trained over step 0: {max(ratios):.3f}")


if __name__ == "__main__":
    main()
