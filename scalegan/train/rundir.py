"""One trainer per run directory, and no new run silently mixed into an old one.

``RunDirectory.open`` (every rank calls it; rank 0 does the work, all agree on the outcome):

- takes ``<run>/.lock`` with ``flock``: a second trainer on the same directory is refused, naming
  the host and pid that hold it. The kernel drops the lock when its process dies, so the lock of
  a crashed or killed trainer is simply taken over;
- refuses ``checkpoint.resume=false`` in a directory that already holds checkpoints (the new
  run's checkpoints would be pruned by step number against the old ones, and a later resume
  would continue the old run) unless ``checkpoint.overwrite=true``, which moves the old
  checkpoints, metrics and samples into ``previous-<time>/``: nothing is deleted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from scalegan.train.checkpoint import _rank, all_gather_json, damaged_dirs, step_dirs

log = logging.getLogger(__name__)

LOCK = ".lock"
MOVED_ASIDE = ("checkpoints", "metrics.jsonl", "samples", "wandb_run_id")
"""What ``checkpoint.overwrite=true`` moves into ``previous-<time>/``."""


class RunDirError(ValueError):
    """The run directory is in use, or holds a run this command would overwrite; says which."""


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def open(self, resume: bool, overwrite: bool) -> None:
        problem = None
        if _rank() == 0:
            try:
                self._lock()
                self._check_history(resume, overwrite)
            except RunDirError as e:
                problem = str(e)
        problems = [p for p in all_gather_json(problem) if p]
        if problems:
            self.close()
            raise RunDirError(problems[0])

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another trainer ({holder}; lock file "
                              f"{lock}): two trainers must not write one run directory. Wait "
                              f"for it to end, or give this run another name") from None
        previous = os.pread(fd, 4096, 0)
        if previous:
            log.info("%s: taking over the lock of a trainer that is gone (%s)", lock,
                     _describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd

    def _check_history(self, resume: bool, overwrite: bool) -> None:
        checkpoints = self.path / "checkpoints"
        old = [p.name for p in step_dirs(checkpoints) + damaged_dirs(checkpoints)]
        if resume or not old:
            return
        if not overwrite:
            raise RunDirError(f"{checkpoints} already holds {len(old)} checkpoint(s) (newest "
                              f"{old[-1]}) and checkpoint.resume=false: a new run there would be "
                              f"mixed with the old one. Resume it (checkpoint.resume=true), give "
                              f"the new run another name, or set checkpoint.overwrite=true to "
                              f"move the old run aside")
        aside = self.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while aside.exists():
            aside, n = self.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}", n + 1
        aside.mkdir()
        for name in MOVED_ASIDE:
            if (self.path / name).exists():
                os.replace(self.path / name, aside / name)
        log.warning("checkpoint.overwrite=true: the previous run's %s moved to %s",
                    ", ".join(n for n in MOVED_ASIDE if (aside / n).exists()), aside)

    def close(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
        return f"host {info['host']}, pid {info['pid']}, since {info.get('since', '?')}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "holder unknown"
