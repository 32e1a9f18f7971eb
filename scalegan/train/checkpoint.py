"""Atomic, resumable checkpoints in torch.distributed.checkpoint (DCP) format.

Layout of ``<run>/checkpoints``::

    step_000001200/          one complete checkpoint
        .metadata, *.distcp  DCP tensors: G, D, G_ema and both optimizers (constant keys)
        meta.json            images seen, step, resolved config (written by rank 0)
        rank_00000.json      per-rank state: RNG, data position
    latest -> step_000001200 symlink, replaced atomically
    best -> step_000000800   with periodic evaluation: the best-scoring checkpoint, kept by
    best.json                pruning whatever its age, and its scores

A checkpoint is written into ``.tmp-step_...`` and renamed into place only when every rank has
finished, so a crash or a signal mid-write leaves the previous checkpoint as the newest complete
one. DCP never unpickles code on load, and it reshards when the world size changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{9})$")
META = "meta.json"
BEST = "best.json"


class ResumeError(ValueError):
    """A checkpoint exists but this run cannot continue from it; says why."""


class ModelState:
    """Stateful view of a module for DCP (FQN keys, works for sharded modules too)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState:
    """Stateful view of an optimizer, keyed by parameter FQN rather than position."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def quiet_single_process():
    """DCP warns that it assumes a single process when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    """A checkpoint directory that was renamed into place holds both DCP metadata and meta.json."""
    return path.is_dir() and (path / ".metadata").is_file() and (path / META).is_file()


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a ``latest`` link, or a run/checkpoints dir -> a complete checkpoint."""
    p = Path(path)
    if p.is_dir() and not is_complete(p):
        for candidate in (p, p / "checkpoints"):
            ckpts = list_checkpoints(candidate)
            if ckpts:
                return ckpts[-1]
    if not is_complete(p):
        raise FileNotFoundError(f"{path} is not a complete scalegan checkpoint (no .metadata and "
                                f"{META}), nor a run directory holding one")
    return p.resolve()


def _test_pause(step: int) -> None:
    """Fault-injection hook for the tests: ``SCALEGAN_TEST_CHECKPOINT_PAUSE=STEP:SECONDS`` holds
    the checkpoint of ``STEP`` half written (tensors on disk, not renamed into place) for
    ``SECONDS``, so a test can kill the process there."""
    spec = os.environ.get("SCALEGAN_TEST_CHECKPOINT_PAUSE")
    if spec:
        at, seconds = spec.split(":")
        if int(at) == step:
            time.sleep(float(seconds))


class CheckpointManager:
    """Writes and finds checkpoints of one run; keeps the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep

    def latest(self) -> Path | None:
        ckpts = list_checkpoints(self.directory)
        return ckpts[-1] if ckpts else None

    def save(self, step: int, app_state: dict[str, Any], meta: dict, rank_state: dict,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        """Write checkpoint ``step`` on every rank; returns its final path.

        ``app_state`` maps constant keys to Stateful objects (DCP), ``meta`` is rank 0's JSON,
        ``rank_state`` this rank's JSON; ``write_extra(dir)``, called on every rank, adds state
        kept in another format (DeepSpeed's engines) inside the same atomic directory.
        """
        rank = _rank()
        final = self.directory / f"step_{step:09d}"
        tmp = self.directory / f".tmp-step_{step:09d}"
        if rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        with quiet_single_process():
            dcp.save(app_state, checkpoint_id=tmp)
        if write_extra is not None:
            write_extra(tmp)
        _write_json(tmp / f"rank_{rank:05d}.json", rank_state)
        _test_pause(step)
        _barrier()
        if rank == 0:
            _write_json(tmp / META, meta)
            _fsync_dir(tmp)
            if final.exists():  # a re-save of the same step (e.g. after a resume)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            self._point_latest(final)
            self._prune()
        _barrier()
        return final

    def _point_latest(self, target: Path) -> None:
        link = self.directory / "latest"
        tmp_link = self.directory / ".latest.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(target.name, tmp_link)
        os.replace(tmp_link, link)

    def best(self) -> dict | None:
        """What ``mark_best`` recorded (with ``"path"``), if the checkpoint is still there."""
        record = self.directory / BEST
        if not record.is_file():
            return None
        info = json.loads(record.read_text())
        return info if is_complete(self.directory / info["checkpoint"]) else None

    def mark_best(self, path: Path, info: dict) -> None:
        """Rank 0: record ``path`` as the best checkpoint (``best`` link and best.json); pruning
        keeps it whatever its age."""
        if _rank() != 0:
            return
        _write_json(self.directory / BEST, {"checkpoint": path.name, **info})
        link, tmp_link = self.directory / "best", self.directory / ".best.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(path.name, tmp_link)
        os.replace(tmp_link, link)
        self._prune()

    def _prune(self) -> None:
        best = self.best()
        for old in list_checkpoints(self.directory)[:-self.keep]:
            if best is None or old.name != best["checkpoint"]:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def load(path: Path, app_state: dict[str, Any],
             read_extra: Callable[[Path], None] | None = None) -> tuple[dict, dict | None]:
        """Load ``app_state`` in place from ``path`` (and ``read_extra(path)``); returns
        (meta, this rank's state or None)."""
        with quiet_single_process():
            dcp.load(app_state, checkpoint_id=path)
        if read_extra is not None:
            read_extra(path)
        meta = json.loads((path / META).read_text())
        rank_file = path / f"rank_{_rank():05d}.json"
        rank_state = json.loads(rank_file.read_text()) if rank_file.is_file() else None
        return meta, rank_state


def read_meta(path: str | Path) -> dict:
    """meta.json of a checkpoint (config, counters) without loading any tensor."""
    return json.loads((resolve_checkpoint(path) / META).read_text())
