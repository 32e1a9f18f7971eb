"""The check to run on a CUDA machine: op tests, Triton-vs-torch op timings, PGGAN step throughput.

Three sections, one JSON file (``--out``) and a printed table:

1. **op tests**: ``pytest tests/ops -q`` in a subprocess, without ``TRITON_INTERPRET``: on a GPU the
   tests put their tensors on CUDA and run the compiled kernels. Pass / fail counts and duration.
2. **op timings**: every op on each path, ``impl="ref"`` (plain torch, the definition),
   ``impl="cpu"`` (the torch fast path; it runs on any device) and ``impl="triton"``, at the
   shapes the shipped models use: ``upsample_conv2d`` N=8 C=128 64^2 -> 128^2 and N=4 C=32
   256^2 -> 512^2 (a 1024^2-class shape), forward and forward+backward; ``minibatch_stddev``
   at D's last block 16x512x4x4 and ``minibatch_discrimination`` at N=512 A=256 B=64 C=16,
   forward, forward+backward and forward+backward+double backward (R1 / WGAN-GP differentiate
   D's input gradient); ``modulated_conv2d`` at StyleGAN2's 512-channel 32^2 layer, its up=2
   layer 16^2 -> 32^2 and a 64-channel 256^2 layer, the same three modes (path length and R1
   differentiate through it). Dtypes: bf16, fp32 with TF32 off and fp32 with TF32 on (cuDNN
   and cuBLAS flags together). Each figure is the median over ``--repeats`` rounds of one
   path's time per call, from CUDA events around a batch of calls (enough calls to last ~2 ms),
   the paths taking turns within each round (the order rotated per round). ``ref / triton`` and
   ``cpu / triton`` are the ratios to read (> 1: Triton is faster). Each case where Triton is
   the fastest path gets a suggested ``AutoChoice`` row for ``scalegan.ops._impl.AUTO_TABLE``
   (evidence: GPU, dtype, mode, shape, ratios).
3. **train step**: images/s of a training step of ``configs/ffhq1024_pggan.yaml``'s networks
   (WGAN-GP with drift, bf16 autocast, the config's global batch and strategy) held at 256^2 and
   at 1024^2 (``train.schedule.start_resolution`` set to that resolution: the schedule stays
   there, alpha 1), in one process and under ``torchrun --nproc-per-node=<visible GPUs>``. The
   trainer's own ``train_step`` runs on synthetic batches (uniform noise in [-1, 1], handed over
   on the host as the data pipeline does), so the figure is the GPU step without image decoding:
   a real run's ``images_per_s`` (each row of ``<run dir>/metrics.jsonl``) is at most this, and
   lower when the data pipeline cannot keep up. A step that runs out of memory in one process is
   retried with ``train.grad_accum`` doubled (same global batch, smaller micro-batches).

Without a CUDA device each section prints one ``skipped (no CUDA device)`` line, the JSON marks it
skipped and the script exits 0. ``--smoke`` runs every section's code on the CPU at tiny sizes
(a few op tests: float64 gradchecks of the torch paths; the timings at tiny shapes, the Triton
path only under ``TRITON_INTERPRET=1``; the train step at 32^2 with tiny widths, in one process
and in 2 gloo processes under torchrun), so CI exercises the GPU check's code without a GPU.
The exit status is 1 when a section failed (an op test, a worker), else 0. Subprocesses and op
timings stop at ``--budget`` seconds from the start (default 450); what was not reached is marked
in the JSON and the table.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--repeats 10] [--steps 10]
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib.metadata
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ffhq1024_pggan.yaml"
SECTIONS = ("op_tests", "op_timings", "train_step")
PATHS = ("ref", "cpu", "triton")
NO_CUDA = "no CUDA device"


# ----------------------------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info() -> dict:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    return {"torch": torch.__version__, "triton": _version("triton"), "cuda": torch.version.cuda,
            "gpus": gpus, "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0]}


def _cpu_env() -> dict:
    """The environment of a smoke subprocess: no GPU visible, whatever the machine has."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES="")


class Deadline:
    """The time left of the whole check: every subprocess's timeout is cut to it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


# ------------------------------------------------------------------------------- 1. the op tests


def parse_pytest_summary(output: str) -> dict[str, int | float]:
    """Counts from pytest's last line (``3 passed, 1 failed, 2 skipped in 4.56s``)."""
    lines = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    summary = lines[-1] if lines else ""
    counts: dict[str, int | float] = {k: 0 for k in ("passed", "failed", "skipped", "errors",
                                                     "deselected")}
    for num, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary):
        counts["errors" if word.startswith("error") else word] = int(num)
    return counts


def run_op_tests(smoke: bool, deadline: Deadline) -> dict:
    """``pytest tests/ops -q`` in a subprocess: counts, duration, the output's tail."""
    cmd = [sys.executable, "-m", "pytest", "tests/ops", "-q", "-p", "no:cacheprovider"]
    if smoke:  # a few float64 gradchecks of the torch paths: seconds on 2 cores
        cmd += ["-k", "gradcheck and not upsample"]
        env = _cpu_env()
    else:  # the compiled kernels on CUDA tensors, not the interpreter
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_pytest_") as tmp:
        cmd.append(f"--basetemp={tmp}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=deadline.left(60 if smoke else 240))
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            return {"status": "error", "reason": f"timed out after {e.timeout:.0f} s",
                    "command": " ".join(cmd[2:]), "tail": out[-2000:]}
        duration = time.perf_counter() - t0
    counts = parse_pytest_summary(proc.stdout)
    ok = proc.returncode == 0 and counts["passed"] > 0
    return {"status": "passed" if ok else "failed", "returncode": proc.returncode, **counts,
            "duration_s": round(duration, 2), "command": " ".join(cmd[2:-1]),
            "tail": (proc.stdout + proc.stderr)[-2000:]}


def print_op_tests(result: dict) -> None:
    if result["status"] == "skipped":
        print(f"op tests: skipped ({result['reason']})")
        return
    if result["status"] == "error":
        print(f"op tests: ERROR ({result['reason']})")
        return
    print(f"op tests ({result['command']}): {result['status'].upper()}: {result['passed']} "
          f"passed, {result['failed']} failed, {result['errors']} errors, {result['skipped']} "
          f"skipped, {result['deselected']} deselected in {result['duration_s']:.1f} s")
    if result["status"] != "passed":
        print("  " + result["tail"][-1500:].replace("\n", "\n  "))


# ------------------------------------------------------------------------------ 2. op timings


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16", "fp32", "fp32+tf32"
    dtype: torch.dtype
    tf32: bool


PRECISIONS = (Precision("bf16", torch.bfloat16, False), Precision("fp32", torch.float32, False),
              Precision("fp32+tf32", torch.float32, True))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for convolutions (cuDNN) and matmuls (cuBLAS), restored afterwards: the Triton
    kernels' fp32 dots follow the same flags."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _upsample_size_class(x_shape: tuple[int, ...]) -> str:
    # the classes of AUTO_TABLE's upsample_conv2d rows: input <= 8x8 pixels is "small"
    return "small" if x_shape[2] * x_shape[3] <= 64 else "large"


@dataclass(frozen=True)
class OpCase:
    """One op at one shape: ``make(device, dtype, gen)`` -> inputs; ``run(impl, inputs, mode)``
    one call of the op in ``mode``."""

    op: str
    shape: str
    size_class: str
    modes: tuple[str, ...]
    make: Callable
    run: Callable


def _leaf(t: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device, dtype).requires_grad_(True)


def _upsample_case(n: int, c: int, h: int) -> OpCase:
    from scalegan.ops import upsample_conv2d

    def make(device, dtype, gen):
        x = _leaf(torch.randn(n, c, h, h, generator=gen), device, dtype)
        w = _leaf(torch.randn(c, c, 3, 3, generator=gen) / math.sqrt(9 * c), device, dtype)
        b = _leaf(torch.randn(c, generator=gen), device, dtype)
        gy = torch.randn(n, c, 2 * h, 2 * h, generator=gen).to(device, dtype)
        return x, w, b, gy

    def run(impl, inputs, mode):
        x, w, b, gy = inputs
        if mode == "fwd":
            with torch.no_grad():
                return upsample_conv2d(x, w, b, "lrelu", gain=math.sqrt(2), impl=impl)
        y = upsample_conv2d(x, w, b, "lrelu", gain=math.sqrt(2), impl=impl)
        return torch.autograd.grad(y, (x, w, b), gy)

    return OpCase("upsample_conv2d", f"{n}x{c}x{h}x{h}->{2 * h}x{2 * h}",
                  _upsample_size_class((n, c, h, h)), ("fwd", "fwd+bwd"), make, run)


def _stddev_case(n: int, c: int, h: int, group: int = 4) -> OpCase:
    from scalegan.ops import minibatch_stddev

    def make(device, dtype, gen):
        x = _leaf(torch.randn(n, c, h, h, generator=gen), device, dtype)
        gy = torch.randn(n, c + 1, h, h, generator=gen).to(device, dtype)
        return x, gy

    def run(impl, inputs, mode):
        x, gy = inputs
        if mode == "fwd":
            with torch.no_grad():
                return minibatch_stddev(x, group, 1, impl=impl)
        y = minibatch_stddev(x, group, 1, impl=impl)
        if mode == "fwd+bwd":
            return torch.autograd.grad(y, x, gy)
        (gx,) = torch.autograd.grad(y, x, gy, create_graph=True)  # D's input gradient, as R1
        return torch.autograd.grad(gx.float().square().sum(), x)

    return OpCase("minibatch_stddev", f"{n}x{c}x{h}x{h} G={group}", "*",
                  ("fwd", "fwd+bwd", "fwd+bwd+2bwd"), make, run)


def _mbdisc_case(n: int, a: int, b: int, c: int) -> OpCase:
    from scalegan.ops import minibatch_discrimination

    def make(device, dtype, gen):
        f = _leaf(torch.randn(n, a, generator=gen), device, dtype)
        t = _leaf(torch.randn(a, b, c, generator=gen) / math.sqrt(a), device, dtype)
        go = torch.randn(n, b, generator=gen).to(device, dtype)
        return f, t, go

    def run(impl, inputs, mode):
        f, t, go = inputs
        if mode == "fwd":
            with torch.no_grad():
                return minibatch_discrimination(f, t, impl=impl)
        o = minibatch_discrimination(f, t, impl=impl)
        if mode == "fwd+bwd":
            return torch.autograd.grad(o, (f, t), go)
        (gf,) = torch.autograd.grad(o, f, go, create_graph=True)
        return torch.autograd.grad(gf.float().square().sum(), (f, t))

    return OpCase("minibatch_discrimination", f"N={n} A={a} B={b} C={c}", "*",
                  ("fwd", "fwd+bwd", "fwd+bwd+2bwd"), make, run)


def _modconv_case(n: int, c: int, h: int, up: int) -> OpCase:
    from scalegan.ops import modulated_conv2d

    def make(device, dtype, gen):
        x = _leaf(torch.randn(n, c, h, h, generator=gen), device, dtype)
        w = _leaf(torch.randn(c, c, 3, 3, generator=gen), device, dtype)
        s = _leaf(torch.randn(n, c, generator=gen) + 1, device, dtype)
        gy = torch.randn(n, c, up * h, up * h, generator=gen).to(device, dtype)
        return x, w, s, gy

    def run(impl, inputs, mode):
        x, w, s, gy = inputs
        if mode == "fwd":
            with torch.no_grad():
                return modulated_conv2d(x, w, s, up=up, impl=impl)
        y = modulated_conv2d(x, w, s, up=up, impl=impl)
        if mode == "fwd+bwd":
            return torch.autograd.grad(y, (x, w, s), gy)
        # R1 / path length differentiate the input gradient; it does not depend on x (the op
        # is linear in x), so the second pass goes to the weight and the styles
        (gx,) = torch.autograd.grad(y, x, gy, create_graph=True)
        return torch.autograd.grad(gx.float().square().sum(), (w, s))

    return OpCase("modulated_conv2d", f"{n}x{c}x{h}x{h} up={up}", "*",
                  ("fwd", "fwd+bwd", "fwd+bwd+2bwd"), make, run)


def op_cases(smoke: bool) -> list[OpCase]:
    if smoke:  # every op and mode at sizes Triton's interpreter runs in milliseconds
        return [_upsample_case(1, 3, 5), _stddev_case(4, 8, 2), _mbdisc_case(8, 6, 3, 4),
                _modconv_case(2, 3, 4, 1), _modconv_case(2, 3, 4, 2)]
    return [_upsample_case(8, 128, 64), _upsample_case(4, 32, 256), _stddev_case(16, 512, 4),
            _mbdisc_case(512, 256, 64, 16), _modconv_case(8, 512, 32, 1),
            _modconv_case(8, 512, 16, 2), _modconv_case(4, 64, 256, 1)]


class Timer:
    """Seconds per call of ``fn``: CUDA events around ``inner`` calls on a GPU, the wall clock
    on the CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable, inner: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def time_paths(fns: dict[str, Callable], repeats: int, timer: Timer,
               min_sample_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per call of each function, and the error of each that failed.

    Each function is warmed up (Triton compiles and autotunes, cuDNN picks its algorithms) and
    given the number of calls per sample that lasts ``min_sample_s`` (launch-bound ops would
    otherwise measure the events' resolution); then ``repeats`` rounds time every function once,
    in an order rotated per round so that clock and load drifts hit them alike."""
    errors: dict[str, str] = {}
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            fn()
            once = timer(fn, 1) if min_sample_s > 0 else 1.0
            inner[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
        except Exception as e:  # a failing path (compile error, out of memory) is reported
            errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    names = [n for n in fns if n in inner]
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        names = [n for n in names if n not in errors]
        for name in names[r % max(1, len(names)):] + names[:r % max(1, len(names))]:
            try:
                samples[name].append(timer(fns[name], inner[name]))
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    return {n: statistics.median(s) for n, s in samples.items() if n not in errors}, errors


def triton_usable(device: str) -> str | None:
    """None when the Triton path can run on ``device``'s tensors, else why not."""
    from scalegan.ops._impl import triton_available, triton_interpreted

    if not triton_available():
        return "triton is not installed"
    if device == "cpu" and not triton_interpreted():
        return "CPU tensors need TRITON_INTERPRET=1"
    return None


def run_op_timings(smoke: bool, repeats: int, deadline: Deadline) -> dict:
    device = "cpu" if smoke else "cuda"
    timer = Timer(device)
    no_triton = triton_usable(device)
    paths = [p for p in PATHS if p != "triton" or no_triton is None]
    cases, cut = [], []
    for case in op_cases(smoke):
        for prec in PRECISIONS:
            if not deadline.left(1.0):
                cut.append(f"{case.op} {case.shape} {prec.name}")
                continue
            gen = torch.Generator().manual_seed(0)
            inputs = case.make(device, prec.dtype, gen)
            with tf32(prec.tf32):
                for mode in case.modes:
                    fns = {p: functools.partial(case.run, p, inputs, mode) for p in paths}
                    secs, errors = time_paths(fns, repeats, timer,
                                              min_sample_s=0.0 if smoke else 2e-3)
                    cases.append(_case_row(case, prec, mode, secs, errors, no_triton))
            del inputs
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"status": "partial" if cut else "measured", "device": device, "repeats": repeats,
            "timer": "CUDA events" if device == "cuda" else "wall clock",
            "triton_skipped": no_triton, "cases": cases, "not_measured": cut,
            "suggested_auto_rows": suggested_rows(cases)}


def _case_row(case: OpCase, prec: Precision, mode: str, secs: dict[str, float],
              errors: dict[str, str], no_triton: str | None) -> dict:
    ms = {p: secs[p] * 1e3 for p in PATHS if p in secs}
    row = {"op": case.op, "shape": case.shape, "size_class": case.size_class,
           "dtype": prec.name, "tf32": prec.tf32, "mode": mode, "ms": ms, "errors": errors,
           "fastest": min(ms, key=ms.get) if ms else None}
    if no_triton is not None:
        row["errors"] = {**errors, "triton": f"skipped: {no_triton}"}
    for torch_path in ("ref", "cpu"):
        if "triton" in ms and torch_path in ms:
            row[f"{torch_path}/triton"] = ms[torch_path] / ms["triton"]
    return row


def _gpu_label() -> str:
    if not torch.cuda.is_available():
        return "CPU (smoke)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} (sm_{p.major}{p.minor})"


def suggested_rows(cases: list[dict]) -> list[str]:
    """An ``AutoChoice`` row for each case where Triton is the fastest path. A row covers every
    dtype and mode of its op, device and size class: adopt it where Triton wins the cases that
    training runs (bf16 forward+backward, and the double backward for D's ops)."""
    day = datetime.date.today().isoformat()
    rows = []
    for c in cases:
        if c["fastest"] != "triton":
            continue
        ratios = ", ".join(f"{p}/triton {c[f'{p}/triton']:.2f}x" for p in ("ref", "cpu")
                           if f"{p}/triton" in c)
        evidence = (f"gpu_check {day} on {_gpu_label()}: {c['dtype']} {c['mode']} {c['shape']}: "
                    f"triton {c['ms']['triton']:.3f} ms, {ratios}")
        rows.append(f'AutoChoice("{c["op"]}", "cuda", "{c["size_class"]}", "triton", '
                    f'"{evidence}"),')
    return rows


def print_op_timings(result: dict) -> None:
    if result["status"] not in ("measured", "partial"):
        print(f"op timings: {result['status']} ({result['reason']})")
        return
    print(f"\nop timings on {result['device']} ({result['timer']}, median of "
          f"{result['repeats']}); ratio = torch path / triton, > 1: Triton faster")
    if result["triton_skipped"]:
        print(f"  triton path skipped: {result['triton_skipped']}")
    head = (f"  {'op':<25}{'shape':<24}{'dtype':<11}{'mode':<14}{'ref ms':>9}{'cpu ms':>9}"
            f"{'triton ms':>11}{'ref/tri':>9}{'cpu/tri':>9}  fastest")
    print(head)

    def fmt(value, width, suffix=""):
        return f"{value:.3f}".rjust(width) if value is not None and not suffix else (
            f"{value:.2f}{suffix}".rjust(width) if value is not None else "-".rjust(width))

    for c in result["cases"]:
        ms = c["ms"]
        print(f"  {c['op']:<25}{c['shape']:<24}{c['dtype']:<11}{c['mode']:<14}"
              f"{fmt(ms.get('ref'), 9)}{fmt(ms.get('cpu'), 9)}{fmt(ms.get('triton'), 11)}"
              f"{fmt(c.get('ref/triton'), 9, 'x')}{fmt(c.get('cpu/triton'), 9, 'x')}"
              f"  {c['fastest'] or '-'}")
        for path, err in c["errors"].items():
            if not err.startswith("skipped"):
                print(f"      {path} failed: {err}")
    if result["not_measured"]:
        print(f"  not measured, the time budget (--budget) was spent: "
              f"{'; '.join(result['not_measured'])}")
    rows = result["suggested_auto_rows"]
    if rows:
        print("\nsuggested AUTO_TABLE rows (scalegan/ops/_impl.py), one per case Triton wins; a "
              "row covers all dtypes and modes of its size class:")
        for row in rows:
            print("    " + row)
    else:
        print("\nno case where Triton is the fastest path: AUTO_TABLE keeps the torch paths")


# ------------------------------------------------------------------------------- 3. train step


class SyntheticImages:
    """Stands in for the trainer's ImageStream: one fixed host batch (B, 3, R, R) in [-1, 1],
    handed out every step (the trainer copies it to the device, as it does real batches)."""

    def __init__(self, batch_size: int, resolution: int):
        self.batch_size, self.skipped = batch_size, 0
        self.set_resolution(resolution)

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution
        gen = torch.Generator().manual_seed(resolution)
        self.images = torch.rand(self.batch_size, 3, resolution, resolution, generator=gen) * 2 - 1

    def next_batch(self):
        from scalegan.data.pipeline import Batch

        return Batch(self.images, [])

    def close(self) -> None: ...


def train_overrides(resolution: int, batch: int, grad_accum: int, run_dir: Path, smoke: bool,
                    ops_impl: str | None) -> list[str]:
    out = [f"runs_dir={run_dir}", f"name=res{resolution}", "log.wandb=disabled",
           "log.progress=false", f"train.schedule.start_resolution={resolution}",
           f"train.batch_size={batch}", f"train.grad_accum={grad_accum}"]
    if smoke:  # the config's layers at a tiny width and resolution
        out += [f"model.resolution={resolution}", "model.channel_base=256",
                "model.channel_max=16", "model.latent_dim=16"]
    if ops_impl:
        out.append(f"model.ops_impl={ops_impl}")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_worker(args: argparse.Namespace) -> None:
    """One rank of the train-step measurement; rank 0 writes the result to ``args.result``."""
    import torch.distributed as dist

    from scalegan.config import load_config
    from scalegan.parallel.env import init_distributed, shutdown
    from scalegan.train.trainer import Trainer

    env = init_distributed()
    result: dict = {"world_size": env.world_size}
    try:
        grad_accum = args.grad_accum
        while True:
            cfg = load_config(CONFIG, train_overrides(args.resolution, args.batch, grad_accum,
                                                      Path(args.run_dir), args.smoke,
                                                      args.ops_impl))
            try:
                result.update(_timed_steps(cfg, env, args.warmup, args.steps, Trainer, dist))
                break
            except torch.cuda.OutOfMemoryError:
                # one process only: under torchrun a rank alone cannot retry, the others would
                # wait in a collective
                micro = args.batch // (grad_accum * env.world_size)
                if env.distributed or micro <= 1:
                    raise
                grad_accum *= 2
                gc.collect()
                torch.cuda.empty_cache()
        result.update(status="measured", grad_accum=grad_accum)
    except Exception as e:
        result.update(status="error", reason=f"{type(e).__name__}: {str(e).strip()[:500]}",
                      traceback=traceback.format_exc()[-3000:])
    if env.rank == 0:
        Path(args.result).write_text(json.dumps(result))
    shutdown(env, barrier=result.get("status") == "measured")


def _timed_steps(cfg, env, warmup: int, steps: int, trainer_class, dist) -> dict:
    trainer = trainer_class(cfg, env)
    try:
        trainer.data = SyntheticImages(trainer.micro_batch, cfg.train.schedule.start_resolution)
        for _ in range(warmup):
            trainer.train_step()
        _sync(trainer.device)
        if env.distributed:
            dist.barrier()
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        t0 = time.perf_counter()
        rows = [trainer.train_step() for _ in range(steps)]
        _sync(trainer.device)
        if env.distributed:
            dist.barrier()
        dt = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(trainer.device) / 2**30
                if trainer.device.type == "cuda" else None)
        return {"images_per_s": cfg.train.batch_size * steps / dt, "step_ms": dt / steps * 1e3,
                "steps": steps, "warmup": warmup, "batch_size": cfg.train.batch_size,
                "micro_batch": trainer.micro_batch, "strategy": trainer.strategy.name,
                "precision": cfg.train.precision, "ops_impl": cfg.model.ops_impl,
                "resolution": rows[-1]["resolution"], "alpha": rows[-1]["alpha"],
                "device": str(trainer.device), "peak_memory_gib": peak,
                "loss_D": rows[-1].get("loss/D"), "loss_G": rows[-1].get("loss/G")}
    finally:
        trainer.close()
        del trainer


def _multi_batch(batch: int, world: int, micro_single: int) -> tuple[int, int]:
    """(global batch, grad_accum) for ``world`` ranks: the batch rounded up to a multiple of the
    world size, and the fewest micro-batches that keep each one within the single process's."""
    batch = -(-batch // world) * world
    for g in range(1, batch // world + 1):
        if batch % (g * world) == 0 and batch // (g * world) <= micro_single:
            return batch, g
    return batch, batch // world


def launch_train(resolution: int, nproc: int, batch: int, grad_accum: int,
                 args: argparse.Namespace, deadline: Deadline, smoke: bool) -> dict:
    """One measurement in a fresh process (``nproc`` 1) or under torchrun (``nproc`` ranks)."""
    timeout = deadline.left(60 if smoke else 150)
    if timeout < 10:
        return {"status": "skipped", "reason": "the time budget (--budget) was spent",
                "resolution": resolution, "processes": nproc}
    with tempfile.TemporaryDirectory(prefix="gpu_check_train_") as tmp:
        result_file = Path(tmp) / "result.json"
        worker = [str(Path(__file__).resolve()), "--train-worker", "--resolution",
                  str(resolution), "--batch", str(batch), "--grad-accum", str(grad_accum),
                  "--warmup", str(args.warmup), "--steps", str(args.steps), "--run-dir",
                  str(Path(tmp) / "runs"), "--result", str(result_file)]
        worker += ["--smoke"] if smoke else []
        worker += ["--ops-impl", args.ops_impl] if args.ops_impl else []
        launcher = [sys.executable]
        if nproc > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone",
                         f"--nproc-per-node={nproc}"]
        env = _cpu_env() if smoke else dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(launcher + worker, cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return {"status": "error", "reason": f"timed out after {e.timeout:.0f} s",
                    "resolution": resolution, "processes": nproc}
        wall = time.perf_counter() - t0
        if result_file.exists():
            out = json.loads(result_file.read_text())
        else:
            out = {"status": "error", "reason": f"worker exited {proc.returncode} without a "
                                                f"result", "stderr": proc.stderr[-3000:]}
    out.update(processes=nproc, launcher="torchrun" if nproc > 1 else "python",
               wall_s=round(wall, 1))
    out.setdefault("resolution", resolution)
    if out["status"] == "measured" and out["resolution"] != resolution:
        out.update(status="error", reason=f"the trainer ran at {out['resolution']}^2, not "
                                          f"{resolution}^2")
    return out


def run_train_step(args: argparse.Namespace, deadline: Deadline, smoke: bool) -> dict:
    from scalegan.config import load_config

    cfg = load_config(CONFIG)
    nproc = 2 if smoke else torch.cuda.device_count()
    resolutions = (32,) if smoke else (256, 1024)
    batch = 8 if smoke else (args.batch or cfg.train.batch_size)
    runs, notes = [], []
    for res in resolutions:
        single = launch_train(res, 1, batch, 1, args, deadline, smoke)
        runs.append(single)
        if nproc < 2:
            notes.append(f"{res}^2 under torchrun: skipped (one visible GPU: the same as one "
                         f"process)")
            continue
        micro = (single.get("micro_batch") or batch) if single["status"] == "measured" else batch
        multi_batch, ga = _multi_batch(batch, nproc, micro)
        multi = launch_train(res, nproc, multi_batch, ga, args, deadline, smoke)
        if single["status"] == multi["status"] == "measured":
            multi["speedup_over_one_process"] = multi["images_per_s"] / single["images_per_s"]
        runs.append(multi)
    status = ("failed" if any(r["status"] == "error" for r in runs) else
              "partial" if any(r["status"] == "skipped" for r in runs) else "measured")
    return {"status": status, "config": str(CONFIG.relative_to(ROOT)),
            "data": "synthetic batches (no image decoding)", "runs": runs, "notes": notes}


def print_train_step(result: dict) -> None:
    if result["status"] == "skipped":
        print(f"train step: skipped ({result['reason']})")
        return
    first = next((r for r in result["runs"] if r["status"] == "measured"), {})
    print(f"\ntrain step: {result['config']} networks, {first.get('precision', '?')}, ops_impl="
          f"{first.get('ops_impl', '?')}, {result['data']}, {first.get('warmup', '?')} warm-up + "
          f"{first.get('steps', '?')} timed steps")
    print(f"  {'res':>5} {'procs':>6} {'strategy':>9} {'batch':>6} {'micro':>6} {'accum':>6} "
          f"{'images/s':>10} {'step ms':>9} {'peak GiB':>9} {'vs 1 proc':>10}")
    for r in result["runs"]:
        if r["status"] != "measured":
            print(f"  {r['resolution']:>5} {r['processes']:>6}  {r['status'].upper()}: "
                  f"{r.get('reason')}")
            continue
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        speed = (f"{r['speedup_over_one_process']:.2f}x" if "speedup_over_one_process" in r
                 else "")
        print(f"  {r['resolution']:>5} {r['processes']:>6} {r['strategy']:>9} "
              f"{r['batch_size']:>6} {r['micro_batch']:>6} {r['grad_accum']:>6} "
              f"{r['images_per_s']:>10.1f} {r['step_ms']:>9.1f} {peak:>9} {speed:>10}")
    for note in result["notes"]:
        print(f"  {note}")


# ------------------------------------------------------------------------------------------ main


def run_section(name: str, fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as e:
        return {"status": "error", "reason": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON file written")
    p.add_argument("--smoke", action="store_true",
                   help="every section on the CPU at tiny sizes (CI without a GPU)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None, help="rounds per op timing (10; 2 smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed train steps (10; 2 smoke)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up train steps (3; 1 smoke)")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch of the train step (default: the config's)")
    p.add_argument("--ops-impl", default=None, choices=("auto", "ref", "cpu", "triton"),
                   help="model.ops_impl of the train step (default: the config's)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check; subprocesses are cut to it (450; 120 smoke)")
    # the train-step worker (run by this script, in a fresh process or under torchrun)
    p.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    p.add_argument("--grad-accum", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.smoke else 10)
    args.steps = args.steps or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.budget = args.budget or (120.0 if args.smoke else 450.0)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.train_worker:
        train_worker(args)
        return 0
    smoke, cuda = args.smoke, torch.cuda.is_available()
    deadline = Deadline(args.budget)
    wanted = args.sections.split(",")
    report = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "smoke": smoke,
              "host": host_info()}
    print(f"gpu_check{' --smoke (CPU, tiny sizes)' if smoke else ''}: torch "
          f"{report['host']['torch']}, triton {report['host']['triton']}, "
          f"{len(report['host']['gpus'])} CUDA device(s) "
          f"{[g['name'] for g in report['host']['gpus']]}")
    t0 = time.perf_counter()
    steps = {
        "op_tests": (lambda: run_op_tests(smoke, deadline), print_op_tests),
        "op_timings": (lambda: run_op_timings(smoke, args.repeats, deadline),
                       print_op_timings),
        "train_step": (lambda: run_train_step(args, deadline, smoke), print_train_step),
    }
    for name in SECTIONS:
        run, show = steps[name]
        if name not in wanted:
            result = {"status": "skipped", "reason": "not in --sections"}
        elif not (cuda or smoke):
            result = {"status": "skipped", "reason": NO_CUDA}
        else:
            s0 = time.perf_counter()
            result = run_section(name, run)
            result["seconds"] = round(time.perf_counter() - s0, 1)
        report[name] = result
        show(result)
        if result["status"] == "error" and "traceback" in result:
            print("  " + result["traceback"].replace("\n", "\n  "))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")
    return 1 if any(report[n]["status"] in ("failed", "error") for n in SECTIONS) else 0


if __name__ == "__main__":
    sys.exit(main())
