"""Run a function on N local gloo ranks and collect results.

The ranks are forked from the test process rather than spawned: they inherit torch, scalegan
and DeepSpeed already imported, which saves a fresh interpreter's ~3 s of imports per test (the
suite's two-rank tests took 670 s spawned, 400 s forked). Each rank runs on one intra-op thread
and leaves through ``os._exit``, so nothing of the parent's threads or exit handlers runs in it;
a process group live in the parent would be shared by its forks, so that is refused.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from scalegan.parallel.env import init_distributed, shutdown

    env = init_distributed()
    try:
        result = fn(env, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)  # a fork must not run the test process's exit handlers
    finally:
        shutdown(env)
    # The result is on disk and the group is gone: leave without the interpreter's teardown, where
    # gloo's threads now and then abort the process (SIGABRT), as `scalegan train` does.
    os._exit(0)


def run_ranks(world: int, fn, *args, tmp_path: Path) -> list:
    """``fn(env, *args)`` on ``world`` ranks; returns each rank's result (rank order)."""
    if dist.is_initialized():
        raise AssertionError("a process group is live in the test process; forks would share it")
    out = tmp_path / f"spawn_{fn.__name__}_{world}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.start_processes(_entry, args=(world, free_port(), fn, args, str(out)), nprocs=world,
                           join=True, start_method="fork")
    except Exception as e:
        errors = "\n".join(p.read_text() for p in sorted(out.glob("*.err")))
        raise AssertionError(f"a rank failed:\n{errors or e}") from None
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]
