"""Shared fixtures: tiny WebDataset shards written straight into tmp_path."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. The variable is read
# when a kernel is defined, so it is set before any test imports scalegan.kernels.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_member(sample: dict, resolution: int) -> np.ndarray:
    """A raw tar sample's one image member (png, jpg or raw rgb bytes) as (R, R, 3) uint8."""
    members = [m for m in ("png", "jpg", "rgb") if m in sample]
    assert len(members) == 1, sorted(sample)
    data = sample[members[0]]
    if members[0] == "rgb":
        assert len(data) == 3 * resolution * resolution
        return np.frombuffer(data, np.uint8).reshape(resolution, resolution, 3)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB" and img.size == (resolution, resolution)
        return np.asarray(img)


def wait_for_first_shard(proc, build: Path, poll: float = 0.01) -> None:
    """Wait until a running ``scalegan pack`` (``proc``) has completed its first shard in its
    build directory ``build`` (000001.tar exists); fail if it ends first or takes over 60 s."""
    deadline = time.monotonic() + 60
    while not (build / "000001.tar").exists():
        if proc.poll() is not None:
            pytest.fail(f"pack ended (rc {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read().decode(errors='replace')}")
        assert time.monotonic() < deadline, "no shard appeared in the build directory"
        time.sleep(poll)


def write_shards(directory: Path, num_shards: int, per_shard: int, resolution: int,
                 seed: int = 0, index: bool = True) -> list[str]:
    """``num_shards`` tars of ``per_shard`` random RGB PNGs keyed 00000000, 00000001, ..., and
    (``index``) the index.json `scalegan pack` writes beside them."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(num_shards):
        path = directory / f"{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                img = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
                sink.write({"__key__": f"{s * per_shard + i:08d}", "png": png_bytes(img)})
        urls.append(str(path))
    if index:
        shards = [{"name": Path(u).name, "count": per_shard,
                   "sha256": hashlib.sha256(Path(u).read_bytes()).hexdigest()} for u in urls]
        (directory / "index.json").write_text(json.dumps(
            {"num_samples": num_shards * per_shard, "resolution": resolution, "channels": 3,
             "labels": None, "shards": shards, "skipped": [], "fit": "crop"}, indent=2))
    return urls


@pytest.fixture
def shards(tmp_path: Path):
    """Factory: shards(num_shards, per_shard, resolution) -> list of tar paths."""
    def make(num_shards: int = 4, per_shard: int = 6, resolution: int = 16, seed: int = 0):
        return write_shards(tmp_path / f"shards_{num_shards}_{per_shard}_{resolution}_{seed}",
                            num_shards, per_shard, resolution, seed)
    return make


# ---------------------------------------------------------------------------------------------
# the ahead-of-time compile of every Triton kernel, started in the background

AOT_EVERY_KERNEL = "test_every_kernel_module_compiles_for_sm80_and_sm90"
TESTS_OPS = Path(__file__).resolve().parent / "ops"
_aot_run = pytest.StashKey[dict]()


def aot_command(report: Path, cache: Path, *modules: str,
                interpret: bool = False) -> tuple[list[str], dict]:
    """The command and environment of ``python -m scalegan.kernels.aot`` over ``modules`` (every
    kernel module if none) for sm_80 and sm_90, writing its JSON ``report``: without
    ``TRITON_INTERPRET`` (which this process sets, and under which ``@triton.jit`` functions
    cannot be compiled) unless ``interpret``, with Triton's cache in ``cache`` and ``tests/ops``
    on ``PYTHONPATH`` (the ``aot_fixtures`` modules)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_OPS), env.get("PYTHONPATH")]))
    env["TRITON_CACHE_DIR"] = str(cache)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return [sys.executable, "-m", "scalegan.kernels.aot", *modules, "--arch", "80,90",
            "--json", str(report)], env


def pytest_collection_modifyitems(session, config, items):
    """The compile of every kernel module (~150 s of ptxas on 2 cores) runs last, so that its
    background process (below) has the whole session to use the CPU time the other tests leave
    idle while they wait for subprocesses, torchrun and Slurm."""
    last = [item for item in items if item.originalname == AOT_EVERY_KERNEL]
    items[:] = [item for item in items if item.originalname != AOT_EVERY_KERNEL] + last


def _idle_priority() -> None:
    """In the child before exec: Linux's idle scheduling class (inherited by its workers)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def pytest_collection_finish(session):
    """Start that compile under ``SCHED_IDLE`` as soon as the session knows the test will run
    (it gets a core only when nothing else wants one: at ``nice 10`` it still slowed the 2-thread
    torch tests beside it, whose threads wait for each other, several-fold); the
    test (fixture ``aot_every_kernel``) waits for it and checks its report."""
    # found without importing triton: imported at the top of this file, before TRITON_INTERPRET
    # is set, its language functions would not run in the interpreter
    ptxas = Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / \
        "bin" / "ptxas"
    if session.config.option.collectonly or not ptxas.exists() or not any(
            item.originalname == AOT_EVERY_KERNEL for item in session.items):
        return  # (the test skips without the bundled ptxas)
    out = Path(tempfile.mkdtemp(prefix="scalegan-aot-"))
    command, env = aot_command(out / "aot.json", out / "cold_cache")
    log = open(out / "output.txt", "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_idle_priority)
    session.config.stash[_aot_run] = {"proc": proc, "dir": out, "log": log}


def pytest_sessionfinish(session):
    run = session.config.stash.get(_aot_run, None)
    if run is None:
        return
    if run["proc"].poll() is None:  # the session ended first (-x, Ctrl-C): the tool's group
        os.killpg(run["proc"].pid, signal.SIGKILL)  # with its compile workers
        run["proc"].wait()
    run["log"].close()
    shutil.rmtree(run["dir"], ignore_errors=True)


@pytest.fixture
def aot_every_kernel(request) -> tuple[int, str, dict | None]:
    """``(exit status, output, JSON report or None)`` of the compile of every kernel module: the
    background run's (waited for), or a run started now when there is none."""
    run = request.config.stash.get(_aot_run, None)
    if run is None:
        out = Path(tempfile.mkdtemp(prefix="scalegan-aot-"))
        command, env = aot_command(out / "aot.json", out / "cold_cache")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        report = out / "aot.json"
        data = json.loads(report.read_text()) if report.exists() else None
        shutil.rmtree(out, ignore_errors=True)
        return done.returncode, done.stdout + done.stderr, data
    status = run["proc"].wait(timeout=1200)
    run["log"].flush()
    report = run["dir"] / "aot.json"
    return (status, (run["dir"] / "output.txt").read_text(),
            json.loads(report.read_text()) if report.exists() else None)
