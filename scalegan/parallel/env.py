"""Process group from the launcher's environment: torchrun's variables, or Slurm's under srun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. A task started by `srun`
directly has SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_JOB_NODELIST instead; those are
translated to the torchrun names (so webdataset's split_by_node and every other reader agree), with
the first host of the allocation as the rendezvous address.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    """None when no process group was created (a single process)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _from_slurm(environ: dict) -> dict[str, str] | None:
    """torchrun-style variables for a task launched by srun, or None outside such a task."""
    if "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) < 2:
        return None
    job_id = int(environ.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(environ["SLURM_JOB_NODELIST"]),
        # a port derived from the job id, so two jobs sharing a node do not collide
        "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + job_id % 20000),
    }


def init_distributed(environ: dict | None = None) -> DistEnv:
    """Create the default process group if the environment describes more than one process.

    nccl with one GPU per local rank on CUDA machines, gloo on CPU.
    """
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        slurm = _from_slurm(environ)
        if slurm is not None:
            environ.update(slurm)
    world = int(environ.get("WORLD_SIZE", "1"))
    rank = int(environ.get("RANK", "0"))
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world < 2:
        return DistEnv(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, device, backend)


def shutdown(env: DistEnv, barrier: bool = True) -> None:
    """Tear the process group down; the barrier first avoids aborts at exit seen with gloo. Without
    ``barrier`` (this rank is failing on its own: the others may be waiting in a collective it
    will never join), the group is torn down at once."""
    if env.distributed and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
