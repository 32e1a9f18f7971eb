"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90, without a GPU.

``scalegan.kernels.aot`` runs in a subprocess without ``TRITON_INTERPRET`` (this process has it set
by conftest, which turns ``@triton.jit`` into interpreter functions that cannot be compiled), with a
fresh ``TRITON_CACHE_DIR`` per test session, as CI runs it. The slow test checks the real kernel
modules; the fast ones check the tool itself on the small kernel modules in ``aot_fixtures/``
(importable as ``aot_fixtures.<name>`` with ``tests/ops`` on ``PYTHONPATH``), each written so that
one check must pass or must fail.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import scalegan.kernels
import triton

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(),
                                reason=f"the triton wheel has no bundled ptxas ({PTXAS})")

TESTS_OPS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def triton_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("triton_cache")


def run_aot(out_dir: Path, cache: Path, *modules: str, interpret: bool = False) -> tuple:
    """``(exit status, stdout, JSON report or None)`` of the tool over ``modules`` (all kernel
    modules if none) for sm_80 and sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_OPS), env.get("PYTHONPATH")]))
    env["TRITON_CACHE_DIR"] = str(cache)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    report = out_dir / "aot.json"
    run = subprocess.run(
        [sys.executable, "-m", "scalegan.kernels.aot", *modules, "--arch", "80,90",
         "--json", str(report)], env=env, capture_output=True, text=True, timeout=1200)
    data = json.loads(report.read_text()) if report.exists() else None
    return run.returncode, run.stdout + run.stderr, data


def by_kernel(records: list[dict]) -> dict:
    """``(module, kernel, arch) -> {spec: record}``."""
    out: dict = defaultdict(dict)
    for r in records:
        out[(r["module"], r["kernel"], r["arch"])][r["spec"]] = r
    return out


def best_aligned(records: dict) -> set[str]:
    """Specs (of one kernel on one arch) whose set of arguments divisible by 16 no other spec's
    set strictly contains."""
    sets = {spec: set(r["divisible_by_16"]) for spec, r in records.items()}
    return {spec for spec, s in sets.items() if not any(s < t for t in sets.values())}


def uses_tensor_cores_as_declared(r: dict) -> bool:
    """mma.sync on sm_80 / wgmma on sm_90, unless every dot is an fp32 ieee dot (no tensor core
    computes that)."""
    if r["dots"] and r["ieee_fp32_dots"] == r["dots"]:
        return True
    return (r["mma_sync"] if r["arch"] == 80 else r["wgmma"]) > 0


# ---------------------------------------------------------------------------------------------
# the real kernel modules


@pytest.mark.slow
def test_every_kernel_module_compiles_for_sm80_and_sm90(tmp_path):
    status, output, report = run_aot(tmp_path, tmp_path / "cold_cache")
    assert report is not None, output
    expected = sorted(f"scalegan.kernels.{m.name}"
                      for m in pkgutil.iter_modules(scalegan.kernels.__path__)
                      if not m.name.startswith("_") and m.name != "aot")
    assert sorted(report["modules"]) == expected
    assert report["failures"] == [], "\n".join(report["failures"])
    assert status == 0, output
    records = by_kernel(report["records"])
    for name, module in report["modules"].items():
        assert module["uncovered"] == [] and module["failures"] == [], name
        assert module["launched"], f"{name}: aot_launches() launched nothing"
        calls = {c for r in report["records"] if r["module"] == name for c in r["launch_calls"]}
        assert calls == set(range(module["launch_calls"])), name
        for kernel in module["launched"]:
            sm80, sm90 = records[(name, kernel, 80)], records[(name, kernel, 90)]
            assert sm80 and sorted(sm80) == sorted(sm90), f"{kernel}: specialisations differ"
            for arch_records in (sm80, sm90):
                aligned = best_aligned(arch_records)
                for r in arch_records.values():
                    where = f"{kernel} sm_{r['arch']} [{r['spec']}]"
                    assert r["compiled"], f"{where}: {r['error']}"
                    assert r["spill_stores"] == r["spill_loads"] == 0, where
                    if kernel in module["tensor_core_kernels"]:
                        assert uses_tensor_cores_as_declared(r), where
                        if r["spec"] in aligned:
                            assert r["vector_stores"] + r["bulk_stores"] > 0, where
                    assert r["ok"], where


# ---------------------------------------------------------------------------------------------
# the tool, on fixture modules


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory, triton_cache):
    out = tmp_path_factory.mktemp("aot_clean")
    return run_aot(out, triton_cache, "aot_fixtures.gemm", "aot_fixtures.elementwise")


def test_clean_fixture_modules_pass_every_check(clean_report):
    status, output, report = clean_report
    assert status == 0 and report["failures"] == [], output
    records = by_kernel(report["records"])
    # gemm: 4 launches x 2 autotune configs; elementwise: 4 launches, not autotuned
    for module, kernel, count in (("gemm", "_matmul_kernel", 8),
                                  ("elementwise", "_affine_kernel", 4)):
        sm80 = records[(f"aot_fixtures.{module}", kernel, 80)]
        sm90 = records[(f"aot_fixtures.{module}", kernel, 90)]
        assert len(sm80) == len(sm90) == count and sorted(sm80) == sorted(sm90)
    for r in report["records"]:
        assert r["compiled"] and r["ok"] and r["spill_stores"] == r["spill_loads"] == 0
        assert r["regs"] > 0 and r["num_warps"] in (4, 8)
        if r["kernel"] == "_matmul_kernel":
            assert r["tensor_core_declared"] and r["dots"] == 1
            ieee_fp32 = "*fp32" in r["spec"] and "INPUT_PRECISION='ieee'" in r["spec"]
            assert (r["ieee_fp32_dots"] == 1) == ieee_fp32
            tensor_core_ops = r["mma_sync"] if r["arch"] == 80 else r["wgmma"]
            assert (tensor_core_ops == 0) == ieee_fp32
            assert r["vector_stores_required"] == r["fully_aligned"]
            if r["fully_aligned"]:
                assert r["vector_stores"] > 0
        else:
            assert not r["tensor_core_declared"] and r["dots"] == 0
            assert r["mma_sync"] == r["wgmma"] == 0


def test_specialisation_follows_triton_rules(clean_report):
    """Pointers are 16-aligned (fresh allocations); an int is marked divisible by 16 exactly when
    it is; an int equal to 1 becomes a constexpr; dtypes name the signature."""
    _, _, report = clean_report
    affine = {r["spec"] for r in report["records"]
              if r["kernel"] == "_affine_kernel" and r["arch"] == 80}
    tail = "alpha:fp32 beta:fp32 BLOCK=1024 w4 s3"
    assert affine == {
        f"x_ptr:*fp32/16 y_ptr:*fp32/16 n:i32/16 {tail}",  # n = 4096
        f"x_ptr:*fp32/16 y_ptr:*fp32/16 n:i32 {tail}",  # n = 1000
        f"x_ptr:*fp32/16 y_ptr:*fp32/16 n=1 {tail}",  # n = 1
        f"x_ptr:*bf16/16 y_ptr:*bf16/16 n:i32/16 {tail}",
    }
    for r in report["records"]:
        if r["kernel"] == "_matmul_kernel":
            ints = ["M", "N", "K", "stride_am", "stride_bk", "stride_ym"]
            divisible = set(r["divisible_by_16"]) & set(ints)
            # sizes 256 (all ints divisible) and 100 (none)
            assert divisible in (set(), set(ints))
            assert r["fully_aligned"] == (divisible == set(ints))
            assert {"a_ptr", "b_ptr", "bias_ptr", "y_ptr"} <= set(r["divisible_by_16"])


def test_autotuned_kernel_is_expanded_over_every_config(clean_report):
    from aot_fixtures import gemm

    _, _, report = clean_report
    configs = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                c.num_stages) for c in gemm.CONFIGS]
    assert len(set(configs)) == 2
    per_launch = defaultdict(list)
    for r in report["records"]:
        if r["kernel"] != "_matmul_kernel":
            continue
        assert r["autotune_config_count"] == 2 and len(r["autotune_configs"]) == 1
        c = r["constexprs"]
        config = (int(c["BLOCK_M"]), int(c["BLOCK_N"]), int(c["BLOCK_K"]), r["num_warps"],
                  r["num_stages"])
        assert config == configs[r["autotune_configs"][0]]
        for call in r["launch_calls"]:
            per_launch[(call, r["arch"])].append(config)
    assert {call for call, _ in per_launch} == set(range(len(gemm.aot_launches())))
    for seen in per_launch.values():
        assert sorted(seen) == sorted(configs)


def test_kernel_never_launched_fails_naming_it(tmp_path, triton_cache):
    status, output, report = run_aot(tmp_path, triton_cache, "aot_fixtures.uncovered")
    assert status == 1
    module = report["modules"]["aot_fixtures.uncovered"]
    assert module["uncovered"] == ["_forgotten_kernel"]
    assert module["launched"] == ["_scale_kernel"] and module["called_helpers"] == ["_double"]
    assert report["failures"] == [
        "aot_fixtures.uncovered: _forgotten_kernel is defined in aot_fixtures.uncovered but never "
        "launched by aot_launches() nor called by a launched kernel"]
    assert "FAIL aot_fixtures.uncovered: _forgotten_kernel" in output
    # the covered kernel is still compiled and checked for both architectures
    assert sorted(r["arch"] for r in report["records"]) == [80, 90]
    assert all(r["ok"] for r in report["records"])


def test_module_without_aot_launches_fails_clearly(tmp_path, triton_cache):
    status, output, report = run_aot(tmp_path, triton_cache, "aot_fixtures.no_launches")
    assert status == 1
    assert report["records"] == []
    assert ("aot_fixtures.no_launches: no aot_launches(): a kernel module must export "
            "aot_launches()") in output
    assert report["modules"]["aot_fixtures.no_launches"]["uncovered"] == ["_fill_kernel"]


def test_each_broken_check_fails(tmp_path, triton_cache):
    """``aot_fixtures.flawed``: scalar stores in a GEMM, spills, a ptxas failure, a declared
    tensor-core kernel without a dot, a grid axis over CUDA's limit and an ``aot_launches()``
    entry that launches nothing are each reported."""
    status, output, report = run_aot(tmp_path, triton_cache, "aot_fixtures.flawed")
    assert status == 1
    failures = report["failures"]

    def failing(kernel, arch, maxnreg):
        [r] = [r for r in report["records"] if r["kernel"] == kernel and r["arch"] == arch
               and ("maxnreg=32" in r["spec"]) == maxnreg]
        return r["failures"]

    for arch in (80, 90):
        assert failing("_interleaved_matmul_kernel", arch, False) == [
            "GEMM kernel stores only with scalar st.global (32 of them) although every pointer "
            "and int argument is divisible by 16"]
    spilled = failing("_interleaved_matmul_kernel", 80, True)
    assert spilled[0].startswith("register spills: ") and "(regs 32)" in spilled[0]
    [ptxas_error] = failing("_interleaved_matmul_kernel", 90, True)
    assert ptxas_error.startswith("compile failed: ") and "Insufficient registers" in ptxas_error
    copies = [r for r in report["records"] if r["kernel"] == "_copy_kernel"]
    assert len(copies) == 2
    for r in copies:
        assert "listed in TENSOR_CORE_KERNELS but this specialisation has no tl.dot" in (
            r["failures"])
    assert ("aot_fixtures.flawed: _copy_kernel (aot_launches()[3]): grid (1, 70000): axis 1 is "
            "70000, CUDA allows at most 65535") in failures
    assert "aot_fixtures.flawed: aot_launches()[4] launched no Triton kernel" in failures
    assert sum(f.startswith("aot_fixtures.flawed: ") for f in failures) == 2


def test_refuses_to_run_under_the_interpreter(tmp_path, triton_cache):
    status, output, report = run_aot(tmp_path, triton_cache, "aot_fixtures.elementwise",
                                     interpret=True)
    assert status == 2 and report is None
    assert "TRITON_INTERPRET is set" in output
