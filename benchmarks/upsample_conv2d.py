"""upsample_conv2d: the fused paths against interpolate + conv2d, timed in one run.

CPU (always): ``impl="cpu"`` (the phase decomposition, 4/9 of the multiply-adds) against
``impl="ref"`` (F.interpolate nearest 2x, then F.conv2d) at N=8, C_in=C_out=128, 64x64 -> 128x128,
fp32, bias and leaky ReLU, forward alone and forward+backward (to x, weight and bias). Each time
is the median of --repeats runs after a warm-up, the two paths alternating; the ratio ref / cpu
is what to read (absolute CPU times are noisy), the last line the forward+backward one. The cpu
path's output is channels_last (see ``scalegan.ops.upsample_conv2d``); the gradient of
``y.sum()`` reaches both paths as the same expanded tensor. CUDA (when a GPU is present):
``impl="triton"`` against ``impl="ref"`` in bf16, same shape.

    python benchmarks/upsample_conv2d.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scalegan.ops import upsample_conv2d


def _time_pair(fn_a, fn_b, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """Median times of two functions, run alternately so that load drifts hit both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats + 1):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            sync()
            if i:  # the first round is a warm-up
                out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def compare(impl: str, device: str, dtype: torch.dtype, repeats: int) -> float:
    """Print the forward and forward+backward times; return the forward+backward ratio."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 128, 64, 64, generator=gen).to(device, dtype).requires_grad_(True)
    w = (torch.randn(128, 128, 3, 3, generator=gen) / 34).to(device, dtype).requires_grad_(True)
    b = torch.randn(128, generator=gen).to(device, dtype).requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward(which):
        with torch.no_grad():
            upsample_conv2d(x, w, b, "lrelu", impl=which)

    def forward_backward(which):
        y = upsample_conv2d(x, w, b, "lrelu", impl=which)
        torch.autograd.grad(y.sum(), (x, w, b))

    print(f"{device} {str(dtype).removeprefix('torch.')}: N=8 C=128 64x64 -> 128x128, median of "
          f"{repeats}")
    print(f"  {'':<18}{'ref (ms)':>10}{impl + ' (ms)':>14}{'ref / ' + impl:>14}")
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        t_ref, t_new = _time_pair(lambda fn=fn: fn("ref"), lambda fn=fn: fn(impl), repeats, sync)
        print(f"  {name:<18}{t_ref * 1e3:>10.1f}{t_new * 1e3:>14.1f}{t_ref / t_new:>13.2f}x")
    return t_ref / t_new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    ratio = compare("cpu", "cpu", torch.float32, args.repeats)
    if torch.cuda.is_available():
        compare("triton", "cuda", torch.bfloat16, args.repeats)
    else:
        print("cuda: no GPU here, Triton-vs-eager section skipped")
    print(f"forward+backward cpu vs ref: {ratio:.2f}x")


if __name__ == "__main__":
    main()
