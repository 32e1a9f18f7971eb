"""Ahead-of-time GPU compilation of every Triton kernel, checked without a GPU.

``python -m scalegan.kernels.aot [MODULE ...] [--arch 80,90] [--jobs 2] [--json PATH]``

For each kernel module (by default every public module of ``scalegan.kernels`` but this one; a
name without a dot means ``scalegan.kernels.<name>``) the tool

1. imports it in a process without ``TRITON_INTERPRET`` (so ``@triton.jit`` gives real
   ``JITFunction`` objects) and lists its kernels: the ``JITFunction`` / ``triton.autotune`` /
   ``triton.heuristics`` objects among its globals whose Python function is defined in it;
2. calls every entry of its ``aot_launches()`` (zero-argument calls of its launchers on
   ``device="meta"`` tensors) with ``JITFunction.run`` and ``Autotuner.run`` replaced by recorders:
   a launch ``kernel[grid](*args, **kwargs)`` is recorded instead of run, and an autotuned launch is
   recorded once per entry of the autotuner's ``configs`` (the config's kwargs, ``num_warps``,
   ``num_stages``, ``num_ctas``; pruning and pre-hooks are not applied);
3. specialises each recorded launch with Triton's own binder (``create_function_from_signature``
   and ``JITFunction._pack_args``, what ``JITFunction.run`` calls), for a ``GPUTarget("cuda", cc,
   32)`` per architecture: dtypes give the signature (``*bf16``, ``i32``/``i64``, ``fp32``), an int
   equal to 1 becomes a constexpr, ints divisible by 16 and pointers (a meta tensor's address is 0,
   as 16-byte aligned as a fresh allocation) get ``tt.divisibility=16``. The launch grid is
   evaluated with the bound arguments and checked against CUDA's limits (axis 0 < 2^31, axes 1
   and 2 <= 65535);
4. compiles each distinct specialisation once per architecture with ``triton.compile`` in a pool
   of ``--jobs`` forked workers (Triton's on-disk cache makes a second run fast), runs the
   ``ptxas`` Triton itself uses for that architecture with ``-v`` on the PTX (the output is cached
   beside Triton's) and checks:

   * it compiles;
   * ptxas reports 0 bytes of spill stores and spill loads;
   * a kernel named in the module's ``TENSOR_CORE_KERNELS`` has ``mma.sync`` in its sm_80 PTX and
     ``wgmma`` in its sm_90 PTX, unless every ``tl.dot`` of that specialisation multiplies fp32 by
     fp32 with ``input_precision="ieee"`` (no tensor core does that; reported as ``ieee``);
   * a ``TENSOR_CORE_KERNELS`` kernel stores with vector instructions (``st.global.v2/.v4`` or a
     bulk TMA copy) at least once in each of its best-aligned specialisations per architecture:
     those whose set of arguments divisible by 16 no other specialisation of it strictly
     contains (the fully aligned ones, when a launch makes every pointer and int divisible by 16).
     Those have all the alignment the launchers ever give the compiler, so all-scalar stores
     there come from the kernel's store layout. Less aligned specialisations, and other kernels,
     have their stores reported only.

Coverage: every kernel of a module must be compiled. A ``@triton.jit`` function counts as covered
when it is launched by ``aot_launches()`` or called (by name, found in its source) from a covered
function, so helpers like ``_load_rows`` need no launch of their own, while a kernel added to a
module and not launched by ``aot_launches()`` fails the check, named. A module without
``aot_launches`` or ``TENSOR_CORE_KERNELS``, an ``aot_launches()`` entry that raises or launches
no kernel, a grid over CUDA's limits, or a name in ``TENSOR_CORE_KERNELS`` that is not a kernel of
the module fails too.

Output: a table, one line per compiled specialisation: kernel, arch, registers per thread, spill
bytes stored/loaded, shared memory bytes, warps, tensor-core instructions (``mma N``, ``wgmma N``,
``ieee`` or ``-`` without a dot), global stores (``<vector>v+<scalar>s``), ok, specialisation;
then every failure. ``--json PATH`` writes the same records with more detail. The exit status is 1
on any failure, 2 when run under ``TRITON_INTERPRET``.

A specialisation reads ``name:type`` per argument with ``/16`` when Triton marks it divisible by
16, ``NAME=value`` per constexpr, then ``w<num_warps> s<num_stages>``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

ARCHS = (80, 90)
# CUDA's grid limits per axis (x, y, z)
GRID_LIMITS = (2**31 - 1, 65535, 65535)


@dataclass
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``: ``call`` indexes the module's
    ``aot_launches()``; ``config`` is ``(index, count)`` of the autotuner config it came from."""

    fn: Any  # triton JITFunction
    grid: Any
    args: tuple
    kwargs: dict
    call: int
    config: tuple[int, int] | None


@dataclass
class Spec:
    """One distinct compilation: a JITFunction specialised for one architecture."""

    module: str
    kernel: str
    fn: Any
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: Any
    summary: str
    fully_aligned: bool
    tensor_core: bool
    divisible: frozenset = frozenset()  # indices of the arguments divisible by 16
    launches: set = field(default_factory=set)
    configs: set = field(default_factory=set)
    grids: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# modules and their kernels


def module_names(names: list[str]) -> list[str]:
    """Full module names: ``names`` (``x`` meaning ``scalegan.kernels.x``) or, if empty, every
    public module of ``scalegan.kernels`` except this one."""
    if names:
        return [n if "." in n else f"scalegan.kernels.{n}" for n in names]
    package = importlib.import_module("scalegan.kernels")
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_") and m.name != "aot")


def base_jit_function(obj):
    """The JITFunction under ``triton.autotune`` / ``triton.heuristics`` wrappers, else None."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    while isinstance(obj, (Autotuner, Heuristics)):
        obj = obj.fn
    return obj if isinstance(obj, JITFunction) else None


def module_kernels(module: types.ModuleType) -> dict[str, Any]:
    """Global name -> JITFunction for every jit / autotuned / heuristics kernel defined in
    ``module`` (not imported into it)."""
    found = {}
    for name, value in vars(module).items():
        fn = base_jit_function(value)
        if fn is not None and fn.fn.__module__ == module.__name__:
            found[name] = fn
    return found


def _resolve(node: ast.AST, scope: dict):
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope)
        if isinstance(base, types.ModuleType):
            return getattr(base, node.attr, None)
    return None


def called_jit_functions(fn) -> list:
    """JITFunctions named in ``fn``'s source (``helper(...)``, ``module.helper(...)``), found in
    the scope the function's globals and closure give it."""
    from triton.runtime.jit import JITFunction

    scope = fn.get_capture_scope()
    called = []
    for node in ast.walk(fn.parse()):
        value = _resolve(node, scope)
        if isinstance(value, JITFunction) and value is not fn and value not in called:
            called.append(value)
    return called


def covered_functions(launched: list) -> set:
    """Ids of the launched JITFunctions and of every JITFunction they reach by calls."""
    seen: dict[int, Any] = {}
    todo = list(launched)
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen[id(fn)] = fn
        todo.extend(called_jit_functions(fn))
    return set(seen)


# ---------------------------------------------------------------------------------------------
# recording launches


class Recorder:
    """Collects :class:`Launch` records; ``call`` is the index of the ``aot_launches()`` entry
    running now."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.call = -1
        self._configs: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def patched(self):
        """Within the block, ``JITFunction.run`` records a launch instead of compiling and
        running it, and ``Autotuner.run`` runs its wrapped function once per config."""
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        recorder = self
        jit_run, tuner_run = JITFunction.run, Autotuner.run

        def record(self, *args, grid, warmup, **kwargs):
            config = recorder._configs[-1] if recorder._configs else None
            recorder.launches.append(Launch(self, grid, args, kwargs, recorder.call, config))

        def expand(self, *args, **kwargs):
            for index, config in enumerate(self.configs):
                recorder._configs.append((index, len(self.configs)))
                try:
                    self.fn.run(*args, **kwargs, **config.all_kwargs())
                finally:
                    recorder._configs.pop()

        JITFunction.run, Autotuner.run = record, expand
        try:
            yield
        finally:
            JITFunction.run, Autotuner.run = jit_run, tuner_run


def _error_text(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(lines[-6:]).strip()


def capture_module(name: str) -> tuple[types.ModuleType | None, int, list[Launch], list[str]]:
    """Import module ``name`` and record the launches of its ``aot_launches()``; returns the
    module, the number of ``aot_launches()`` entries, the launches and the failures met."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return None, 0, [], [f"import failed: {_error_text(exc)}"]
    failures = []
    if not hasattr(module, "TENSOR_CORE_KERNELS"):
        failures.append("no TENSOR_CORE_KERNELS: a kernel module must name its tl.dot kernels "
                        "(an empty tuple if none)")
    if not callable(getattr(module, "aot_launches", None)):
        failures.append("no aot_launches(): a kernel module must export aot_launches() -> "
                        "list of zero-argument calls of its launchers on device='meta' tensors, "
                        "reaching every specialisation")
        return module, 0, [], failures
    try:
        calls = list(module.aot_launches())
    except Exception as exc:
        return module, 0, [], failures + [f"aot_launches() raised: {_error_text(exc)}"]
    if not calls:
        failures.append("aot_launches() returned no calls")
    recorder = Recorder()
    with recorder.patched():
        for index, launch in enumerate(calls):
            recorder.call = index
            before = len(recorder.launches)
            try:
                launch()
            except Exception as exc:
                failures.append(f"aot_launches()[{index}] raised: {_error_text(exc)}")
                continue
            if len(recorder.launches) == before:
                # e.g. a launcher that took a torch fallback path for these inputs
                failures.append(f"aot_launches()[{index}] launched no Triton kernel")
    return module, len(calls), recorder.launches, failures


# ---------------------------------------------------------------------------------------------
# specialisation, as JITFunction.run does it


class Specialiser:
    """Triton's binder for each (JITFunction, architecture), built without a driver."""

    def __init__(self):
        self._binders: dict = {}

    def __call__(self, launch: Launch, arch: int):
        """``(signature, constexprs, attrs, options, bound_args)`` of ``launch`` on ``arch``."""
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        fn = launch.fn
        key = (id(fn), arch)
        if key not in self._binders:
            backend = make_backend(GPUTarget("cuda", arch, 32))
            self._binders[key] = backend, create_function_from_signature(
                fn.signature, fn.params, backend)
        backend, binder = self._binders[key]
        kwargs = dict(launch.kwargs)
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        bound_args, specialization, options = binder(*launch.args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(
            backend, kwargs, bound_args, specialization, options)
        return signature, constexprs, attrs, options, bound_args


def _value_repr(value) -> str:
    from triton.runtime.jit import JITCallable

    if isinstance(value, JITCallable):
        return value.__name__
    return repr(value)


def _divisible(attrs: dict, index: int) -> bool:
    return any(a[0] == "tt.divisibility" for a in attrs.get((index,), []))


def spec_summary(fn, signature: dict, constexprs: dict, attrs: dict, options,
                 launch_kwargs: dict) -> tuple[str, bool]:
    """Readable specialisation and whether every pointer / int argument is divisible by 16;
    compile options the launch sets besides warps, stages and CTAs are appended as ``k=v``."""
    parts, aligned = [], True
    for index, param in enumerate(fn.params):
        ty = signature[param.name]
        if ty == "constexpr":
            parts.append(f"{param.name}={_value_repr(constexprs.get((index,)))}")
            continue
        div = _divisible(attrs, index)
        if isinstance(ty, str) and (ty.startswith("*") or ty[0] in "iu") and ty != "u1":
            aligned &= div
        parts.append(f"{param.name}:{ty}{'/16' if div else ''}")
    parts.append(f"w{options.num_warps} s{options.num_stages}"
                 + (f" c{options.num_ctas}" if options.num_ctas != 1 else ""))
    names = set(fn.arg_names) | {"num_warps", "num_stages", "num_ctas"}
    parts += [f"{k}={getattr(options, k, v)}" for k, v in launch_kwargs.items() if k not in names]
    return " ".join(parts), aligned


def evaluate_grid(grid, bound_args: dict) -> tuple[int, ...]:
    grid = grid(bound_args) if callable(grid) else grid
    return tuple(int(g) for g in grid)


def grid_failure(grid: tuple[int, ...]) -> str | None:
    if not 1 <= len(grid) <= 3:
        return f"grid {grid} must have 1 to 3 axes"
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS[:len(grid)], strict=True)):
        if size < 0 or size > limit:
            return f"grid {grid}: axis {axis} is {size}, CUDA allows at most {limit}"
    return None


# ---------------------------------------------------------------------------------------------
# compiling and inspecting (runs in the worker processes)

_JOBS: list[Spec] = []


def ptxas_report(ptx: str, arch: int, options, fresh_log: str = "") -> str:
    """``ptxas -v`` output for ``ptx``, with the binary and flags Triton uses to build the cubin.

    ``fresh_log`` is that output when Triton has just printed it (``TRITON_DUMP_PTXAS_LOG``);
    otherwise (Triton's cache held the cubin) ptxas runs again. Either way it is kept in Triton's
    cache directory, keyed by the PTX, the flags and the ptxas version."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas, get_ptxas_version
    from triton.backends.nvidia.compiler import sm_arch_from_capability as sm_arch
    from triton.runtime.cache import get_cache_manager

    ptxas = get_ptxas(arch).path
    if knobs.compilation.disable_line_info:
        flags = ["-lineinfo", "-suppress-debug-info"]
    else:
        flags = ["-g"] if knobs.nvidia.disable_ptxas_opt else ["-lineinfo"]
    if not options.enable_fp_fusion:
        flags.append("--fmad=false")
    flags += ["-v", "--regAllocOptLevel=2"]
    if knobs.nvidia.disable_ptxas_opt:
        flags += ["--opt-level", "0"]
    flags += options.ptx_options.split(" ") if options.ptx_options else []
    flags.append(f"--gpu-name={sm_arch(arch)}")
    key = hashlib.sha256("\0".join([get_ptxas_version(arch), *flags, ptx]).encode()).hexdigest()
    cache = get_cache_manager(key)
    if "registers" in fresh_log:
        cache.put(fresh_log, "ptxas_v.log", binary=False)
        return fresh_log
    cached = cache.get_file("ptxas_v.log")
    if cached is not None:
        with open(cached) as f:
            return f.read()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, *flags, src, "-o", os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({run.returncode}): {run.stderr.strip()}")
    cache.put(run.stderr, "ptxas_v.log", binary=False)
    return run.stderr


_VECTOR_STORE = re.compile(r"\bst\.global(?:\.\w+)*\.v[248]\b")
_ANY_STORE = re.compile(r"\bst\.global\b")
_BULK_STORE = re.compile(r"\bcp\.async\.bulk(?:\.tensor)?[.\w:]*\.global\.shared")
_DOT = re.compile(r"\btt\.dot(?:_scaled)?\b(.*)")
# TTIR leaves out the default inputPrecision, which is ieee
_DOT_PRECISION = re.compile(r"inputPrecision = (\w+)")
_DOT_TYPES = re.compile(r":\s*tensor<[^>]*x(\w+)>\s*\*\s*tensor<[^>]*x(\w+)>")


def inspect_kernel(ptx: str, ttir: str, ptxas: str) -> dict:
    """Figures read from the PTX, TTIR and ``ptxas -v`` output of one compiled kernel."""
    def total(pattern):
        return sum(int(m) for m in re.findall(pattern, ptxas))

    regs = [int(r) for r in re.findall(r"Used (\d+) registers", ptxas)]
    dots = [m.group(1) for line in ttir.splitlines() if (m := _DOT.search(line))]
    ieee_fp32 = 0
    for rest in dots:
        precision = _DOT_PRECISION.search(rest)
        types = _DOT_TYPES.search(rest)
        if ((precision.group(1) if precision else "ieee") == "ieee" and types
                and types.group(1) == types.group(2) == "f32"):
            ieee_fp32 += 1
    vector = len(_VECTOR_STORE.findall(ptx))
    bulk = len(_BULK_STORE.findall(ptx))
    return {
        "regs": max(regs) if regs else None,
        "spill_stores": total(r"(\d+) bytes spill stores"),
        "spill_loads": total(r"(\d+) bytes spill loads"),
        "stack_frame": total(r"(\d+) bytes stack frame"),
        "dots": len(dots),
        "ieee_fp32_dots": ieee_fp32,
        "mma_sync": len(re.findall(r"\bmma\.sync\b", ptx)),
        "wgmma": len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
        "vector_stores": vector,
        "bulk_stores": bulk,
        "scalar_stores": len(_ANY_STORE.findall(ptx)) - vector,
    }


def compile_job(index: int) -> dict:
    """Compile ``_JOBS[index]`` and return its figures (or its error) as a plain dict."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = _JOBS[index]
    start = time.perf_counter()
    printed = io.StringIO()
    try:
        # Triton prints its own ptxas -v log (saving a second ptxas run) and, when ptxas fails,
        # the whole PTX: both go to `printed`, the exception says enough
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(printed):
            kernel = triton.compile(
                ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs),
                target=GPUTarget("cuda", spec.arch, 32), options=spec.options.__dict__)
        ptxas = ptxas_report(kernel.asm["ptx"], spec.arch, spec.options, printed.getvalue())
        out = inspect_kernel(kernel.asm["ptx"], kernel.asm["ttir"], ptxas)
        out.update(compiled=True, error=None, smem=kernel.metadata.shared,
                   num_warps=kernel.metadata.num_warps)
    except Exception as exc:
        out = {"compiled": False, "error": f"{type(exc).__name__}: {exc}".strip()}
    out["compile_s"] = round(time.perf_counter() - start, 3)
    return out


def run_jobs(jobs: int) -> list[dict]:
    """Compile every entry of ``_JOBS``, in ``jobs`` forked worker processes when ``jobs > 1``
    (they inherit ``_JOBS``: JITFunctions and meta tensors need not be pickled)."""
    order = sorted(range(len(_JOBS)), key=lambda i: not _JOBS[i].tensor_core)
    if jobs <= 1 or len(_JOBS) <= 1:
        return [compile_job(i) for i in range(len(_JOBS))]
    results: list[dict] = [{}] * len(_JOBS)
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(compile_job, i): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


# ---------------------------------------------------------------------------------------------
# checks


def spec_failures(spec: Spec, result: dict, vector_required: bool) -> list[str]:
    """What is wrong with one compiled specialisation (empty if nothing)."""
    if not result["compiled"]:
        return [f"compile failed: {result['error']}"]
    failures = []
    if result["spill_stores"] or result["spill_loads"]:
        failures.append(f"register spills: {result['spill_stores']} bytes stored, "
                        f"{result['spill_loads']} bytes loaded (regs {result['regs']})")
    if spec.tensor_core:
        want = "mma_sync" if spec.arch < 90 else "wgmma"
        if result["dots"] == 0:
            failures.append("listed in TENSOR_CORE_KERNELS but this specialisation has no tl.dot")
        elif result["ieee_fp32_dots"] < result["dots"] and result[want] == 0:
            failures.append(f"listed in TENSOR_CORE_KERNELS but its sm_{spec.arch} PTX has no "
                            f"{want.replace('_', '.')} (mma.sync {result['mma_sync']}, "
                            f"wgmma {result['wgmma']})")
        if vector_required and result["vector_stores"] + result["bulk_stores"] == 0:
            what = ("every pointer and int argument is divisible by 16" if spec.fully_aligned
                    else "no launch of it has more arguments divisible by 16")
            failures.append(f"GEMM kernel stores only with scalar st.global "
                            f"({result['scalar_stores']} of them) although {what}")
    return failures


def vector_store_required(specs: list[Spec]) -> list[bool]:
    """Per spec: must it store with vector instructions? Those of a tensor-core kernel whose set
    of arguments divisible by 16 is maximal among that kernel's specialisations on that arch."""
    groups: dict[tuple, list[Spec]] = {}
    for spec in specs:
        groups.setdefault((spec.module, spec.kernel, spec.arch), []).append(spec)
    return [spec.tensor_core and not any(spec.divisible < other.divisible
                                         for other in groups[(spec.module, spec.kernel, spec.arch)])
            for spec in specs]


# ---------------------------------------------------------------------------------------------
# driver


def collect(names: list[str], archs: tuple[int, ...]) -> tuple[dict, list[Spec], list[str]]:
    """Capture and specialise every module: per-module summaries, the distinct specialisations
    (one per architecture) and the failures that are not about one compiled kernel."""
    modules: dict[str, dict] = {}
    specs: dict[tuple, Spec] = {}
    failures: list[str] = []
    specialise = Specialiser()
    for name in names:
        module, n_calls, launches, module_failures = capture_module(name)
        kernels = module_kernels(module) if module is not None else {}
        names_of = {id(fn): n for n, fn in kernels.items()}
        tc = tuple(getattr(module, "TENSOR_CORE_KERNELS", ()) or ())
        for kernel_name in tc:
            if kernel_name not in kernels:
                module_failures.append(f"TENSOR_CORE_KERNELS names {kernel_name!r}, which is not "
                                       f"a kernel of the module")
        launched, passed = [], []  # launched kernels; kernels passed to them as constexprs
        for launch in launches:
            kernel = names_of.get(id(launch.fn), launch.fn.__name__)
            launched.append(launch.fn)
            try:
                touched, bound = [], {}
                for arch in archs:
                    sig, constexprs, attrs, options, bound = specialise(launch, arch)
                    summary, aligned = spec_summary(launch.fn, sig, constexprs, attrs, options,
                                                    launch.kwargs)
                    key = (name, launch.fn._fn_name, arch, summary, repr(attrs), repr(options))
                    if key not in specs:
                        specs[key] = Spec(
                            name, kernel, launch.fn, arch, sig, constexprs, attrs, options,
                            summary, aligned, kernel in tc or launch.fn.__name__ in tc,
                            frozenset(i for i in range(len(sig)) if _divisible(attrs, i)))
                    touched.append(specs[key])
                    # kernels passed as constexpr arguments are compiled into this one
                    passed += [base_jit_function(v) for v in constexprs.values()
                               if base_jit_function(v) is not None]
                grid = evaluate_grid(launch.grid, bound)
                for spec in touched:
                    spec.launches.add(launch.call)
                    if launch.config is not None:
                        spec.configs.add(launch.config)
                    if grid not in spec.grids:
                        spec.grids.append(grid)
                problem = grid_failure(grid)
                if problem:
                    module_failures.append(f"{kernel} (aot_launches()[{launch.call}]): {problem}")
            except Exception as exc:
                module_failures.append(f"{kernel} (aot_launches()[{launch.call}]) cannot be "
                                       f"specialised: {_error_text(exc)}")
        covered = covered_functions(launched + passed)
        uncovered = sorted(n for n, fn in kernels.items() if id(fn) not in covered)
        for kernel_name in uncovered:
            module_failures.append(f"{kernel_name} is defined in {name} but never launched by "
                                   f"aot_launches() nor called by a launched kernel")
        launched_ids = {id(fn) for fn in launched}
        modules[name] = {
            "kernels": sorted(kernels),
            "launched": sorted(n for n, fn in kernels.items() if id(fn) in launched_ids),
            "called_helpers": sorted(n for n, fn in kernels.items()
                                     if id(fn) in covered and id(fn) not in launched_ids),
            "uncovered": uncovered,
            "tensor_core_kernels": list(tc),
            "launch_calls": n_calls,
            "captured_launches": len(launches),
            "failures": module_failures,
        }
        failures += [f"{name}: {f}" for f in module_failures]
    return modules, list(specs.values()), failures


def spec_record(spec: Spec, result: dict, vector_required: bool, failures: list[str]) -> dict:
    """The JSON record of one compiled specialisation."""
    return {
        "module": spec.module,
        "kernel": spec.kernel,
        "arch": spec.arch,
        "spec": spec.summary,
        "signature": {k: str(v) for k, v in spec.signature.items()},
        "constexprs": {spec.fn.arg_names[k[0]]: _value_repr(v)
                       for k, v in spec.constexprs.items()},
        "divisible_by_16": [p.name for i, p in enumerate(spec.fn.params)
                            if _divisible(spec.attrs, i)],
        "fully_aligned": spec.fully_aligned,
        "vector_stores_required": vector_required,
        "num_warps": spec.options.num_warps,
        "num_stages": spec.options.num_stages,
        "num_ctas": spec.options.num_ctas,
        "autotune_configs": sorted(i for i, _ in spec.configs),
        "autotune_config_count": max((n for _, n in spec.configs), default=0),
        "launch_calls": sorted(spec.launches),
        "grids": [list(g) for g in spec.grids],
        "tensor_core_declared": spec.tensor_core,
        **result,
        "failures": failures,
        "ok": not failures,
    }


def _tc_cell(r: dict) -> str:
    if not r.get("dots"):
        return "-"
    if r["ieee_fp32_dots"] == r["dots"]:
        return "ieee"
    return f"wgmma {r['wgmma']}" if r["arch"] >= 90 else f"mma {r['mma_sync']}"


def _store_cell(r: dict) -> str:
    text = f"{r['vector_stores']}v+{r['scalar_stores']}s"
    return text + (f"+{r['bulk_stores']}tma" if r["bulk_stores"] else "")


def print_table(records: list[dict], out=sys.stdout) -> None:
    """One line per compiled specialisation: registers per thread, spilled bytes (stores/loads),
    shared memory bytes, warps, tensor-core instructions, vector/scalar global stores."""
    header = ("kernel", "arch", "regs", "spill", "smem", "warps", "tc", "stores", "ok", "spec")
    rows = []
    for r in records:
        name = f"{r['module'].rsplit('.', 1)[-1]}.{r['kernel']}"
        if r["compiled"]:
            rows.append((name, f"sm_{r['arch']}", str(r["regs"]),
                         f"{r['spill_stores']}/{r['spill_loads']}", str(r["smem"]),
                         str(r["num_warps"]), _tc_cell(r), _store_cell(r),
                         "ok" if r["ok"] else "FAIL", r["spec"]))
        else:
            rows.append((name, f"sm_{r['arch']}", "-", "-", "-", str(r["num_warps"]), "-", "-",
                         "FAIL", r["spec"]))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]), file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scalegan.kernels.aot",
        description="Compile every Triton kernel of the kernel modules for sm_80 / sm_90 without "
                    "a GPU and check spills, tensor cores and store vectorisation.")
    parser.add_argument("modules", nargs="*",
                        help="modules to check (x means scalegan.kernels.x); default: all")
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)),
                        help="comma-separated compute capabilities (default 80,90)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="compile worker processes (default min(2, cores))")
    parser.add_argument("--json", metavar="PATH", help="also write the records as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from triton import knobs

    if knobs.runtime.interpret:
        print("scalegan.kernels.aot: TRITON_INTERPRET is set, so @triton.jit makes interpreter "
              "functions that cannot be compiled; run without it "
              "(env -u TRITON_INTERPRET python -m scalegan.kernels.aot)", file=sys.stderr)
        return 2
    archs = tuple(int(a) for a in args.arch.split(","))
    start = time.perf_counter()
    modules, specs, failures = collect(module_names(args.modules), archs)
    captured = time.perf_counter()
    _JOBS[:] = specs
    results = run_jobs(args.jobs)
    compiled = time.perf_counter()
    required = vector_store_required(specs)
    records = []
    for spec, result, vector in zip(specs, results, required, strict=True):
        problems = spec_failures(spec, result, vector)
        records.append(spec_record(spec, result, vector, problems))
        failures += [f"{spec.module}.{spec.kernel} sm_{spec.arch} [{spec.summary}]: {p}"
                     for p in problems]
    print_table(records)
    timing = {"capture_s": round(captured - start, 2), "compile_s": round(compiled - captured, 2),
              "wall_s": round(compiled - start, 2)}
    print(f"\n{len(modules)} modules, {sum(m['captured_launches'] for m in modules.values())} "
          f"launches captured, {len(specs)} distinct compilations over sm_"
          f"{', sm_'.join(map(str, archs))} in {timing['compile_s']} s with {args.jobs} "
          f"worker(s); wall {timing['wall_s']} s")
    for failure in failures:
        print(f"FAIL {failure}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ok": not failures, "archs": list(archs), "jobs": args.jobs, **timing,
                       "failures": failures, "modules": modules, "records": records}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
