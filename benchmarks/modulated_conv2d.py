"""modulated_conv2d: the shared-weight path against the grouped-convolution reference, one run.

CPU, fp32: ``impl="cpu"`` (styles scale the input, one conv2d / conv_transpose2d with the shared
weight, demodulation scales the output) against ``impl="ref"`` (per-sample weights, one grouped
convolution) at StyleGAN2-like layer shapes (N=8, 3x3, demodulated; up=1 and up=2), forward and
backward to x, weight and styles. Each time is the median of --repeats runs after a warm-up, the
two paths alternating; the ratio ref / cpu is what to read, the last line the smallest
forward+backward ratio over the shapes.

    python benchmarks/modulated_conv2d.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scalegan.ops import modulated_conv2d

# (N, C_in, C_out, H, up)
SHAPES = [(8, 256, 256, 16, 1), (8, 256, 256, 32, 1), (8, 256, 256, 16, 2),
          (8, 256, 256, 32, 2), (8, 512, 512, 8, 1), (8, 512, 512, 8, 2)]


def _time_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median times of two functions, run alternately so that load drifts hit both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats + 1):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            if i:  # the first round is a warm-up
                out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def compare(shape: tuple[int, int, int, int, int], repeats: int) -> float:
    """Print one shape's row; return its forward+backward ratio ref / cpu."""
    n, c_in, c_out, h, up = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, h, generator=gen).requires_grad_(True)
    w = torch.randn(c_out, c_in, 3, 3, generator=gen).requires_grad_(True)
    s = (torch.randn(n, c_in, generator=gen) + 1).requires_grad_(True)

    def forward(impl):
        with torch.no_grad():
            modulated_conv2d(x, w, s, up=up, impl=impl)

    def forward_backward(impl):
        y = modulated_conv2d(x, w, s, up=up, impl=impl)
        torch.autograd.grad(y.sum(), (x, w, s))

    row = f"  {n:>3} {c_in:>4}->{c_out:<4} {h:>3}x{h:<3} up={up}"
    ratio = 0.0
    for fn in (forward, forward_backward):
        t_ref, t_cpu = _time_pair(lambda fn=fn: fn("ref"), lambda fn=fn: fn("cpu"), repeats)
        ratio = t_ref / t_cpu
        row += f"{t_ref * 1e3:>10.1f}{t_cpu * 1e3:>10.1f}{ratio:>8.2f}x"
    print(row)
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32, 3x3, "
          f"demodulate, median of {args.repeats}")
    print(f"  {'N':>3} {'Cin->Cout':<10} {'H x W':<7} {'':<4}"
          f"{'fwd ref':>10}{'fwd cpu':>10}{'ratio':>9}{'f+b ref':>10}{'f+b cpu':>10}{'ratio':>9}"
          "   (ms; ratio = ref / cpu)")
    ratios = [compare(shape, args.repeats) for shape in SHAPES]
    print(f"forward+backward cpu vs ref: {min(ratios):.2f}x (smallest), "
          f"{statistics.median(ratios):.2f}x (median) over {len(ratios)} shapes")


if __name__ == "__main__":
    main()
