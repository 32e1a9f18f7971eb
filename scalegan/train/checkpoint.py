"""Atomic, verified, resumable checkpoints in torch.distributed.checkpoint (DCP) format.

Layout of ``<run>/checkpoints``::

    step_000001200/          one complete checkpoint
        .metadata, *.distcp  DCP tensors: G, D, G_ema and both optimizers (constant keys)
        meta.json            images seen, step, resolved config, and the manifest: size and
                             CRC32 of every other file, and a CRC32 of meta.json itself
        rank_00000.json      per-rank state: RNG, data position, CRC32 of the weights it held
    step_000000800.corrupt/  a checkpoint that failed verification, moved aside (never deleted)
    latest -> step_000001200 symlink, replaced atomically
    best -> step_000000800   with periodic evaluation: the best-scoring checkpoint, kept by
    best.json                pruning whatever its age, and its scores

A checkpoint is written into ``.tmp-step_...`` and renamed into place only when every rank has
finished, so a crash or a signal mid-write leaves the previous checkpoint as the newest complete
one. Before anything is read from a checkpoint, ``verify`` checks meta.json's own checksum and
the size and CRC32 of every file in its manifest (the ranks share the reading). Loading never
runs code from the files: DCP's metadata and bytes items go through the allow-list unpicklers of
``scalegan.train.safe_load``. DCP reshards when the world size changes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from scalegan.fs import fsync_dir
from scalegan.train.safe_load import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    UnsafeCheckpointError,
    check_items,
)

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{9})$")
META = "meta.json"
BEST = "best.json"


class ResumeError(ValueError):
    """A checkpoint exists but this run cannot continue from it; says why."""


class CheckpointError(ValueError):
    """A checkpoint is damaged, incomplete or unsafe to load; names the file and the reason."""


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the partial directory is gone."""


REQUIRED_META = {"step": int, "images_seen": int, "phase": dict, "world_size": int, "rng": str,
                 "config": dict}
"""Keys every meta.json has, with their JSON types."""


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (one tiny all-reduce when distributed)."""
    if not _distributed():
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order, on every rank (sent as UTF-8 bytes:
    nothing is unpickled)."""
    if not _distributed():
        return [obj]
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(_world())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(_world())]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(p[:int(n.item())].cpu().tolist()).decode())
            for p, n in zip(parts, sizes, strict=True)]


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


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _meta_checksum(meta: dict) -> int:
    """CRC32 of meta.json's content without its ``checksum`` key (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _files_of(directory: Path) -> list[str]:
    """Relative paths of every file under ``directory`` but meta.json, sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != META)


def is_complete(path: Path) -> bool:
    """A checkpoint directory that was renamed into place holds both DCP metadata and meta.json."""
    return path.is_dir() and (path / ".metadata").is_file() and (path / META).is_file()


def step_dirs(directory: Path) -> list[Path]:
    """Every ``step_*`` directory under ``directory`` (complete or not), oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def damaged_dirs(directory: Path) -> list[Path]:
    """Checkpoints that failed verification and were moved aside (``step_X.corrupt``)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step_*.corrupt*") if p.is_dir())


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    return [p for p in step_dirs(directory) if is_complete(p)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a ``latest`` link, or a run/checkpoints dir -> a complete checkpoint."""
    p = Path(path)
    if p.is_dir() and not is_complete(p) and not _STEP_DIR.match(p.resolve().name):
        for candidate in (p, p / "checkpoints"):
            ckpts = step_dirs(candidate)
            if ckpts:
                return ckpts[-1].resolve()
    if p.is_symlink() and not p.exists():
        raise FileNotFoundError(f"{path} points to {os.readlink(p)}, which does not exist")
    if not p.is_dir():
        raise FileNotFoundError(f"{path} is not a scalegan checkpoint directory, nor a run "
                                f"directory holding one")
    return p.resolve()


# ------------------------------------------------------------------------------ verification


def read_meta(path: str | Path) -> dict:
    """meta.json of a checkpoint, checked: valid JSON, its own checksum, the keys every
    checkpoint has. CheckpointError names the file and what is wrong."""
    file = Path(path) / META
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: {path} is not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} cannot be read: {e}") from None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} holds a JSON {type(meta).__name__}, not an object")
    if "checksum" in meta and meta["checksum"] != _meta_checksum(meta):
        raise CheckpointError(f"{file} does not match its checksum: its content was altered "
                              f"or damaged")
    for key, kind in REQUIRED_META.items():
        if key not in meta:
            raise CheckpointError(f"{file} has no {key!r} key")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CheckpointError(f"{file}: {key!r} is a {type(meta[key]).__name__}, expected "
                                  f"{kind.__name__}")
    return meta


def _check_files(directory: Path, manifest: dict[str, dict], names: list[str]) -> list[str]:
    """Problems of ``names`` against the manifest: missing, wrong size, wrong CRC32."""
    problems = []
    for name in names:
        entry, file = manifest[name], directory / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            problems.append(f"{file} is missing")
            continue
        if size != entry["size"]:
            problems.append(f"{file} is {size} bytes, the manifest says {entry['size']} "
                            f"(truncated or replaced)")
        elif file_crc32(file) != entry["crc32"]:
            problems.append(f"{file} does not match its CRC32 (its bytes were altered)")
    return problems


def verify(path: Path, scope: str = "all") -> dict:
    """Check the checkpoint at ``path`` before anything is loaded from it; returns its meta.

    Every rank calls this (the files of the manifest are shared out among the ranks to CRC) and
    every rank gets the same outcome: CheckpointError naming each damaged file and why.
    ``scope="dcp"`` checks only meta.json and the DCP files (what ``generate`` reads).
    """
    problems: list[str] = []
    meta = None
    try:
        meta = read_meta(path)
    except CheckpointError as e:
        problems.append(str(e))
    if meta is not None:
        manifest = meta.get("files")
        if not isinstance(manifest, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("size"), int)
                and isinstance(v.get("crc32"), int) for v in manifest.values()):
            if manifest is not None:
                problems.append(f"{path / META}: its manifest of files is malformed")
            elif not (path / ".metadata").is_file():
                problems.append(f"{path / '.metadata'} is missing")
            elif _rank() == 0:
                log.warning("%s was written without checksums: its files are not verified", path)
        else:
            names = sorted(n for n in manifest if scope == "all" or n == ".metadata"
                           or n.endswith(".distcp") or n.startswith("rank_"))
            if ".metadata" not in manifest:
                problems.append(f"{path / META}: the manifest lists no .metadata")
            problems += _check_files(path, manifest, names[_rank()::_world()])
    if meta is not None and not problems and _rank() == 0:
        try:  # DCP's metadata and small pickled items: through the allow-lists, before any use
            check_items(path)
        except (UnsafeCheckpointError, ValueError, OSError) as e:
            problems.append(str(e))
    found = sorted({p for rank_problems in all_gather_json(problems) for p in rank_problems})
    if found:
        raise CheckpointError("; ".join(found))
    return meta


def _causes(error: BaseException):
    """``error`` and every exception behind it: causes, contexts, and the per-rank failures a
    DCP CheckpointException carries ({rank: (exception, trace)})."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "failures", None)
        inner = [f[0] if isinstance(f, tuple) else f for f in failures.values()] \
            if isinstance(failures, dict) else []
        todo += [e.__cause__, e.__context__, *[f for f in inner if isinstance(f, BaseException)]]


def _oserror_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error``, if any."""
    return next((e for e in _causes(error) if isinstance(e, OSError)), None)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
        kept in another format (DeepSpeed's engines) inside the same atomic directory. Every file
        is listed in meta.json with its size and CRC32. A full disk raises DiskFullError on every
        rank, with the partial directory removed and the previous checkpoints untouched.
        """
        rank = _rank()
        final = self.directory / f"step_{step:09d}"
        tmp = self.directory / f".tmp-step_{step:09d}"
        error: BaseException | None = None
        try:
            if rank == 0:
                self.directory.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
        except OSError as e:
            error = e
        _barrier()
        if not any_rank(error is not None):
            try:
                with quiet_single_process():
                    dcp.save(app_state, checkpoint_id=tmp)
                if write_extra is not None:
                    write_extra(tmp)
                _write_json(tmp / f"rank_{rank:05d}.json", rank_state)
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - agreed on, then raised
                error = e
        _test_pause(step)
        if not any_rank(error is not None):
            # every file is on disk: each rank checksums its share of them
            try:
                names = _files_of(tmp)
                mine = {n: {"size": (tmp / n).stat().st_size, "crc32": file_crc32(tmp / n)}
                        for n in names[rank::_world()]}
            except OSError as e:
                error, mine = e, {}
        manifest = {}
        if not any_rank(error is not None):
            for part in all_gather_json(mine):
                manifest.update(part)
            if rank == 0:
                try:
                    meta = {**meta, "files": manifest}
                    _write_json(tmp / META, {**meta, "checksum": _meta_checksum(meta)})
                    fsync_dir(tmp)
                    if final.exists():  # a re-save of the same step (e.g. after a resume)
                        shutil.rmtree(final)
                    os.replace(tmp, final)
                    fsync_dir(self.directory)
                    self._point_latest(final)
                    self._prune()
                except OSError as e:
                    error = e
        failed = any_rank(error is not None)
        if failed:
            self._abandon(tmp, error)
        _barrier()
        return final

    def _abandon(self, tmp: Path, error: BaseException | None) -> None:
        """After a failed save: remove the partial directory and raise on every rank."""
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        os_error = _oserror_in(error) if error is not None else None
        previous = self.latest()
        kept = f"the newest checkpoint, {previous}, is intact" if previous else (
            "there is no earlier checkpoint")
        if os_error is not None and os_error.errno in NO_SPACE:
            free = shutil.disk_usage(self.directory if self.directory.exists()
                                     else self.directory.parent).free
            raise DiskFullError(os_error.errno, f"no space left on the device while writing "
                                f"{tmp} ({free / 2 ** 20:.1f} MiB free there); the partial "
                                f"checkpoint was removed and {kept}")
        if error is None:
            raise CheckpointError(f"another rank failed to write {tmp}; the partial checkpoint "
                                  f"was removed and {kept}")
        raise CheckpointError(f"writing {tmp} failed ({type(error).__name__}: {error}); the "
                              f"partial checkpoint was removed and {kept}") from error

    def _point_latest(self, target: Path) -> None:
        link = self.directory / "latest"
        tmp_link = self.directory / ".latest.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(target.name, tmp_link)
        os.replace(tmp_link, link)

    def move_aside(self, path: Path, reason: str) -> Path:
        """Rank 0: rename a damaged checkpoint to ``<name>.corrupt`` (never deleted) and write
        the reason beside it; ``latest`` then points to the newest complete one left."""
        target = path.with_name(path.name + ".corrupt")
        if _rank() == 0:
            n = 1
            while target.exists():
                target, n = path.with_name(f"{path.name}.corrupt{n}"), n + 1
            os.replace(path, target)
            (target.parent / f"{target.name}.reason.txt").write_text(reason + "\n")
            remaining = self.latest()
            if remaining is not None:
                self._point_latest(remaining)
            else:
                (self.directory / "latest").unlink(missing_ok=True)
        _barrier()
        return target

    def best(self) -> dict | None:
        """What ``mark_best`` recorded (with ``"checkpoint"``), if the checkpoint is still
        there. A damaged best.json is reported and moved aside (as best.json.corrupt)."""
        record = self.directory / BEST
        if not record.is_file():
            return None
        try:
            info = json.loads(record.read_text())
            if not isinstance(info, dict) or not isinstance(info.get("checkpoint"), str):
                raise ValueError("no 'checkpoint' entry")
        except (OSError, ValueError) as e:
            if _rank() == 0:
                log.warning("%s is damaged (%s): moved aside to %s.corrupt; the best checkpoint "
                            "is chosen afresh", record, e, BEST)
                os.replace(record, record.with_name(BEST + ".corrupt"))
            return None
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

    def newest_finite(self) -> Path | None:
        """The newest complete checkpoint whose meta.json records finite weights."""
        for path in reversed(list_checkpoints(self.directory)):
            try:
                if json.loads((path / META).read_text()).get("finite") is True:
                    return path
            except (OSError, ValueError):
                continue
        return None

    def _prune(self) -> None:
        """Delete all but the newest ``keep`` checkpoints; never the best one, never the newest
        one with finite weights."""
        best = self.best()
        protected = {best["checkpoint"]} if best else set()
        finite = self.newest_finite()
        if finite is not None:
            protected.add(finite.name)
        for old in list_checkpoints(self.directory)[:-self.keep]:
            if old.name not in protected:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def load(path: Path, app_state: dict[str, Any],
             read_extra: Callable[[Path], None] | None = None) -> tuple[dict, dict | None]:
        """Load ``app_state`` in place from ``path`` (and ``read_extra(path)``); returns
        (meta, this rank's state or None). Call ``verify`` first. Raises CheckpointError (on
        every rank) when a file cannot be read or asks for anything but tensors and plain data.
        """
        meta = read_meta(path)
        problem = None
        try:
            load_dcp(path, app_state)
            if read_extra is not None:
                read_extra(path)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - reported on every rank
            problem = _load_problem(path, e)
        problems = all_gather_json(problem)
        if any(problems):
            raise CheckpointError("; ".join(sorted({p for p in problems if p})))
        rank_file = path / f"rank_{_rank():05d}.json"
        rank_state = None
        if rank_file.is_file():
            try:
                rank_state = json.loads(rank_file.read_text())
            except ValueError as e:
                raise CheckpointError(f"{rank_file} is not valid JSON ({e})") from None
        return meta, rank_state


def _load_problem(path: Path, error: BaseException) -> str:
    """One line naming what failed while loading ``path``: the unsafe-class refusal wherever DCP
    wrapped it, else the first failure."""
    refusal = next((e for e in _causes(error)
                    if isinstance(e, (UnsafeCheckpointError, CheckpointError))), None)
    if refusal is not None:
        return str(refusal)
    failures = getattr(error, "failures", None)  # DCP's CheckpointException: the first rank's
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        error = inner[0] if isinstance(inner, tuple) else inner
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{path} could not be loaded ({type(error).__name__}: {first[:300]})"


def load_dcp(path: Path, state: dict[str, Any]) -> None:
    """``dcp.load`` of ``state`` from ``path`` through the safe reader and planner."""
    with quiet_single_process():
        dcp.load(state, storage_reader=SafeFileSystemReader(path),
                 planner=SafeLoadPlanner(source=str(path)))
