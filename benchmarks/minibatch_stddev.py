"""minibatch_stddev: the cpu path against the plain reference at the sizes D's 4x4 block sees.

Sizes: N in {4, 8, 16, 32} samples per micro-batch and C in {16, 64, 256, 512, 2560} channels
(the shipped progressive configs: 16 in the tests' models, 64 in demo_faces32_pggan, 512 in
ffhq1024_pggan, 2560 in ffhq1024_pggan_fsdp / _zero3; their batches per rank and micro-batch run
from 4 to 16), 4x4 pixels, group size 4, one statistic channel, fp32, on the CPU.

Modes, each through the public op ``minibatch_stddev(x, 4, 1, impl=...)``; ``x`` stands for the
features from D's earlier layers and ``w`` (``(N, C + 1, 4, 4)``, requires grad) for the layers
after it, ``logits = (y * w).sum()``:

* ``forward``: under ``torch.no_grad()`` (inference; a forward that records a graph is always
  followed by a backward, timed below);
* ``fwd+bwd``: the forward, then ``autograd.grad(logits, (x, w))``;
* ``fwd+bwd+2nd``: R1-like: ``g = autograd.grad(logits, x, create_graph=True)``, then
  ``autograd.grad(g.square().sum(), (x, w))`` (the double backward through the op's backward).

Each figure is the median over ``--repeats`` samples (after a warm-up) of the mean time of a loop
of calls lasting ~``--sample-ms``, the two paths alternating sample by sample so that load drifts
hit both alike. With ``--threads 1`` (the default: the tensors are small, and on a shared
machine wall time mostly measures the other processes) the time is the CPU time of the calling
thread, which runs all of torch's work then; with more threads it is wall time. Printed: the ratio
ref / cpu per size and mode (> 1: cpu faster) and the cpu path's ms in the R1-like mode; the last
line is the minimum ratio.

    python benchmarks/minibatch_stddev.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scalegan.ops import minibatch_stddev

BATCHES = (4, 8, 16, 32)
CHANNELS = (16, 64, 256, 512, 2560)
MODES = ("forward", "fwd+bwd", "fwd+bwd+2nd")


def _step(mode: str, impl: str, x: torch.Tensor, w: torch.Tensor):
    def forward():
        with torch.no_grad():
            minibatch_stddev(x, 4, 1, impl=impl)

    def forward_backward():
        logits = (minibatch_stddev(x, 4, 1, impl=impl) * w).sum()
        torch.autograd.grad(logits, (x, w))

    def double_backward():
        logits = (minibatch_stddev(x, 4, 1, impl=impl) * w).sum()
        (g,) = torch.autograd.grad(logits, x, create_graph=True)
        torch.autograd.grad(g.square().sum(), (x, w))

    return {"forward": forward, "fwd+bwd": forward_backward,
            "fwd+bwd+2nd": double_backward}[mode]


def _loop_time(fn, calls: int) -> float:
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    t0 = clock()
    for _ in range(calls):
        fn()
    return (clock() - t0) / calls


def time_pair(fn_a, fn_b, repeats: int, sample_s: float) -> tuple[float, float]:
    """Median per-call times of two functions, sampled alternately."""
    calls = max(1, round(sample_s / max(_loop_time(fn_a, 2), _loop_time(fn_b, 2))))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats + 1):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t = _loop_time(fn, calls)
            if i:  # the first round is a warm-up
                out.append(t)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sample-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({clock}), fp32, "
          f"4x4, G=4, F=1; ref / cpu (> 1: cpu faster), median of {args.repeats}")
    print(f"{'N':>4}{'C':>6}" + "".join(f"{m:>14}" for m in MODES) + f"{'cpu ms':>10}")
    ratios = []
    gen = torch.Generator().manual_seed(0)
    for n in BATCHES:
        for c in CHANNELS:
            x = torch.randn(n, c, 4, 4, generator=gen).requires_grad_(True)
            w = torch.randn(n, c + 1, 4, 4, generator=gen).requires_grad_(True)
            row, last = [], 0.0
            for mode in MODES:
                t_ref, t_cpu = time_pair(_step(mode, "ref", x, w), _step(mode, "cpu", x, w),
                                         args.repeats, args.sample_ms / 1e3)
                row.append(t_ref / t_cpu)
                last = t_cpu
            ratios += [(r, n, c, m) for r, m in zip(row, MODES, strict=True)]
            print(f"{n:>4}{c:>6}" + "".join(f"{r:>13.2f}x" for r in row) + f"{last * 1e3:>10.3f}",
                  flush=True)
    worst = min(ratios)
    print(f"headline: minimum ref / cpu ratio {worst[0]:.2f}x (N={worst[1]}, C={worst[2]}, "
          f"{worst[3]})")


if __name__ == "__main__":
    main()
