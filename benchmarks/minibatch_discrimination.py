"""minibatch_discrimination forward + backward and double backward: blocked cpu path vs naive.

Problem: ``features`` ``(N, A)`` ~ N(0, 1), ``T`` ``(A, B, C)`` ~ N(0, 1) / sqrt(A) (the scale
:class:`~scalegan.ops.minibatch_discrimination.MinibatchDiscrimination` applies), fp32 on the CPU.
Two steps are measured:

* ``fwd+bwd``: ``o = minibatch_discrimination(features, T, impl)``, ``o.sum().backward()``
  (gradients to ``features`` and ``T``);
* ``double`` (R1-like, as D's R1 / WGAN-GP penalty): ``gx = d(o * w).sum()/dfeatures`` with
  ``create_graph=True`` (``w`` a fixed random ``(N, B)``), then ``gx.square().sum().backward()``
  (second-order gradients to ``features`` and ``T``).

Variants: ``impl="ref"`` (naive: the ``(N, N, B, C)`` broadcast of ``|M_i - M_j|`` and autograd,
whose double backward keeps ``N * N * B * C`` sign blocks in its graph) and ``impl="cpu"``
(blocked, analytic double backward, nothing of size ``N * N * B * C``).

Peak memory, measured, not computed: each variant runs in a fresh subprocess, so neither sees the
other's freed memory in its allocator. The subprocess builds the inputs, runs one tiny step of the
same variant (torch's lazy initialisations - thread pools, kernels' scratch - would otherwise
count as the op's memory), reads its resident set (``VmRSS`` in ``/proc/self/status``), resets the
kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and runs one full
step; the figure is the peak RSS (``VmHWM``) after that step minus the RSS before it, i.e. all the
memory the step touched at its peak: temporaries, the autograd graph's saved tensors, outputs and
gradients. Where the counter cannot be reset the peak is ``ru_maxrss`` (peak since the process
started), which can only overstate a variant's memory; the printed method says which was used.

Time: the median wall time of ``--repeats`` further steps in the same subprocess (after the
measured one). The machine may be shared: the ratio of the two medians is the figure to read.

A CUDA section (Triton kernels against the eager reference, bf16, peak from
``torch.cuda.max_memory_allocated``) runs only when ``torch.cuda.is_available()``; no GPU numbers
are printed otherwise.

The last printed line holds the headline ratios (peak memory ref / cpu for both steps).

    python benchmarks/minibatch_discrimination.py [--n 512 --a 256 --b 64 --c 16 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from scalegan.ops.minibatch_discrimination import minibatch_discrimination

VARIANTS = (("naive (ref)", "ref"), ("cpu", "cpu"))
STEPS = ("fwd+bwd", "double")
# peak-memory ratio ref / cpu each step must reach
TARGETS = {"fwd+bwd": 200.0, "double": 100.0}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmRSS:   123456 kB"
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(n: int, a: int, b: int, c: int, device: str = "cpu",
            dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, a, generator=g).to(device, dtype).requires_grad_()
    T = (torch.randn(a, b, c, generator=g) / math.sqrt(a)).to(device, dtype).requires_grad_()
    w = torch.randn(n, b, generator=g).to(device, dtype)
    return features, T, w


def _step(features: torch.Tensor, T: torch.Tensor, w: torch.Tensor, impl: str,
          step: str) -> None:
    features.grad = None
    T.grad = None
    o = minibatch_discrimination(features, T, impl=impl)  # (N, B)
    if step == "fwd+bwd":
        o.sum().backward()
        return
    (gx,) = torch.autograd.grad((o * w).sum(), features, create_graph=True)  # (N, A)
    gx.square().sum().backward()


def worker(impl: str, step: str, n: int, a: int, b: int, c: int, repeats: int) -> dict:
    """Run in a fresh process: peak-RSS increase of one step (KiB) and median step time (s)."""
    warm = _inputs(4, 3, 2, 2)
    _step(*warm, impl, step)  # lazy initialisations, outside the measured step
    del warm
    inputs = _inputs(n, a, b, c)
    before = _status_kib("VmRSS")
    if _reset_peak_rss():
        method = "VmHWM after clear_refs"
        _step(*inputs, impl, step)
        peak = _status_kib("VmHWM")
    else:
        method = "ru_maxrss (peak since process start)"
        _step(*inputs, impl, step)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(*inputs, impl, step)
        times.append(time.perf_counter() - t0)
    return {"peak_kib": peak - before, "time_s": statistics.median(times), "method": method,
            "threads": torch.get_num_threads()}


def _run_worker(impl: str, step: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--step", step, "--n", str(args.n),
           "--a", str(args.a), "--b", str(args.b), "--c", str(args.c),
           "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cuda_section(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("CUDA (Triton vs eager ref, bf16): skipped, torch.cuda.is_available() is False")
        return
    rows = []
    for step in STEPS:
        for name, impl in (("eager ref", "ref"), ("triton", "triton")):
            inputs = _inputs(args.n, args.a, args.b, args.c, "cuda", torch.bfloat16)
            _step(*inputs, impl, step)  # compile / warm up
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            _step(*inputs, impl, step)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            times = []
            for _ in range(args.repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                _step(*inputs, impl, step)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            rows.append((step, name, peak / 2**20, statistics.median(times)))
            del inputs
            torch.cuda.empty_cache()
    print(f"\nCUDA ({torch.cuda.get_device_name()}), bf16, peak = max_memory_allocated over the "
          f"allocated baseline")
    print(f"{'step':<8} {'variant':<12} {'peak MiB':>10} {'time ms':>10}")
    for step, name, mib, sec in rows:
        print(f"{step:<8} {name:<12} {mib:>10.1f} {sec * 1e3:>10.3f}")
    for ref, tri in zip(rows[::2], rows[1::2], strict=True):
        print(f"{ref[0]} ratio ref/triton: memory {ref[2] / max(tri[2], 1e-6):.1f}x, "
              f"time {ref[3] / tri[3]:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--a", type=int, default=256)
    p.add_argument("--b", type=int, default=64)
    p.add_argument("--c", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", choices=[impl for _, impl in VARIANTS], help=argparse.SUPPRESS)
    p.add_argument("--step", choices=STEPS, default="fwd+bwd", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.step, args.n, args.a, args.b, args.c,
                                args.repeats)))
        return

    results = {(step, name): _run_worker(impl, step, args)
               for step in STEPS for name, impl in VARIANTS}
    first = next(iter(results.values()))
    print(f"minibatch_discrimination, N={args.n} A={args.a} B={args.b} C={args.c}, fp32, CPU, "
          f"{first['threads']} torch threads")
    print(f"peak memory: peak RSS of one step minus RSS before it, fresh subprocess per variant "
          f"and step ({first['method']}); time: median of {args.repeats} steps")
    print(f"{'step':<8} {'variant':<12} {'peak MiB':>10} {'time s':>10}")
    for (step, name), r in results.items():
        print(f"{step:<8} {name:<12} {r['peak_kib'] / 1024:>10.1f} {r['time_s']:>10.3f}")
    mem_ratio = {}
    for step in STEPS:
        naive, blocked = results[(step, "naive (ref)")], results[(step, "cpu")]
        mem_ratio[step] = naive["peak_kib"] / max(blocked["peak_kib"], 1)
        time_ratio = naive["time_s"] / blocked["time_s"]
        met = "met" if mem_ratio[step] >= TARGETS[step] else "NOT met"
        print(f"{step}: ratio naive/cpu: memory {mem_ratio[step]:.1f}x "
              f"(target >= {TARGETS[step]:.0f}x: {met}), time {time_ratio:.2f}x")
    cuda_section(args)
    print("headline: peak memory naive/cpu " + ", ".join(
        f"{step} {mem_ratio[step]:.0f}x (target >= {TARGETS[step]:.0f}x)" for step in STEPS))


if __name__ == "__main__":
    main()
