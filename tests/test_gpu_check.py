"""benchmarks/gpu_check.py: without a GPU every section is skipped (exit 0, JSON says so);
``--smoke`` runs every section's code on the CPU and fills the JSON with figures; the pieces that
turn measurements into an AUTO_TABLE row, a pytest summary into counts and a batch into per-rank
micro-batches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalegan.ops._impl import AutoChoice

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
OPS = {"upsample_conv2d", "minibatch_stddev", "minibatch_discrimination", "modulated_conv2d"}


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_module()


def _run(tmp_path: Path, *flags: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    # no GPU visible, whatever this machine has: the check must not start its 8-minute GPU run;
    # the smoke run's Triton path runs in the interpreter on CPU tensors
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *flags], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_without_a_gpu_every_section_is_skipped(tmp_path):
    proc, report = _run(tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("op tests: skipped (no CUDA device)", "op timings: skipped (no CUDA device)",
                 "train step: skipped (no CUDA device)"):
        assert line in proc.stdout.splitlines(), proc.stdout
    for section in gpu_check.SECTIONS:
        assert report[section] == {"status": "skipped", "reason": "no CUDA device"}
    assert report["smoke"] is False and report["host"]["gpus"] == []


@pytest.mark.slow  # ~25 s on 2 cores: pytest, 72 tiny timings, 1 + 2 trainer processes
def test_smoke_fills_every_section(tmp_path):
    t0 = time.perf_counter()
    proc, report = _run(tmp_path, "--smoke", timeout=180)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["smoke"] is True

    tests = report["op_tests"]
    assert tests["status"] == "passed" and tests["passed"] >= 1, tests
    assert tests["failed"] == tests["errors"] == 0

    timings = report["op_timings"]
    assert timings["status"] == "measured" and timings["triton_skipped"] is None
    cases = timings["cases"]
    assert {c["op"] for c in cases} == OPS
    assert {c["dtype"] for c in cases} == {"bf16", "fp32", "fp32+tf32"}
    assert {c["mode"] for c in cases if c["op"] != "upsample_conv2d"} == {
        "fwd", "fwd+bwd", "fwd+bwd+2bwd"}
    for c in cases:
        assert c["errors"] == {} and set(c["ms"]) == {"ref", "cpu", "triton"}, c
        assert all(ms > 0 for ms in c["ms"].values()), c
        assert c["ref/triton"] == pytest.approx(c["ms"]["ref"] / c["ms"]["triton"])
        assert c["fastest"] == min(c["ms"], key=c["ms"].get)
    assert "ref ms" in proc.stdout and "ref/tri" in proc.stdout

    train = report["train_step"]
    assert train["status"] == "measured", train
    runs = {r["processes"]: r for r in train["runs"]}
    assert set(runs) == {1, 2}
    for procs, r in runs.items():
        assert r["status"] == "measured" and r["resolution"] == 32 and r["alpha"] == 1.0, r
        assert r["images_per_s"] > 0 and r["step_ms"] > 0, r
        assert r["world_size"] == procs and r["micro_batch"] == r["batch_size"] // procs
        assert r["precision"] == "bf16"  # the config's
    assert runs[2]["strategy"] == "ddp" and runs[2]["launcher"] == "torchrun"
    assert runs[2]["speedup_over_one_process"] == pytest.approx(
        runs[2]["images_per_s"] / runs[1]["images_per_s"])
    print(f"gpu_check --smoke: {seconds:.1f} s")


def _case(fastest_ms: dict[str, float], **extra) -> dict:
    row = {"op": "upsample_conv2d", "shape": "8x128x64x64->128x128", "size_class": "large",
           "dtype": "bf16", "mode": "fwd+bwd", "ms": fastest_ms,
           "fastest": min(fastest_ms, key=fastest_ms.get), **extra}
    for p in ("ref", "cpu"):
        row[f"{p}/triton"] = fastest_ms[p] / fastest_ms["triton"]
    return row


def test_a_row_is_suggested_only_where_triton_wins():
    wins = _case({"ref": 3.0, "cpu": 2.0, "triton": 1.0})
    loses = _case({"ref": 3.0, "cpu": 0.5, "triton": 1.0}, op="minibatch_stddev",
                  size_class="*")
    rows = gpu_check.suggested_rows([wins, loses])
    assert len(rows) == 1
    choice = eval(rows[0].rstrip(","), {"AutoChoice": AutoChoice})  # the printed row is code
    assert (choice.op, choice.device, choice.size_class, choice.impl) == (
        "upsample_conv2d", "cuda", "large", "triton")
    assert "ref/triton 3.00x, cpu/triton 2.00x" in choice.evidence
    assert "bf16 fwd+bwd 8x128x64x64->128x128" in choice.evidence


def test_pytest_summary_counts():
    out = "....F.s\n=== short test summary ===\n2 failed, 40 passed, 3 skipped, 1 error, " \
          "7 deselected in 12.34s\n"
    assert gpu_check.parse_pytest_summary(out) == {
        "passed": 40, "failed": 2, "skipped": 3, "errors": 1, "deselected": 7}
    assert gpu_check.parse_pytest_summary("no tests ran in 0.01s")["passed"] == 0


@pytest.mark.parametrize("batch, world, micro_single, want", [
    (16, 2, 16, (16, 1)),  # 8 per rank fits
    (16, 2, 4, (16, 2)),  # one process needed micro-batches of 4: 2 of 4 per rank
    (16, 3, 16, (18, 1)),  # rounded up to a multiple of the world size
    (16, 8, 1, (16, 2)),
])
def test_batch_under_torchrun(batch, world, micro_single, want):
    got = gpu_check._multi_batch(batch, world, micro_single)
    assert got == want
    total, accum = got
    assert total % (accum * world) == 0 and total // (accum * world) <= micro_single


def test_time_paths_reports_a_failing_path_and_ranks_the_others():
    def fail():
        raise RuntimeError("no kernel\nsecond line")

    secs, errors = gpu_check.time_paths(
        {"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.001), "broken": fail},
        repeats=3, timer=gpu_check.Timer("cpu"), min_sample_s=0.0)
    assert errors == {"broken": "RuntimeError: no kernel"}
    assert set(secs) == {"slow", "fast"}
    assert secs["fast"] >= 0.001 and secs["slow"] >= 0.004 and secs["slow"] > secs["fast"]
