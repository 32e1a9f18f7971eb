"""Metric loggers behind one interface: metrics.jsonl always, Weights & Biases when enabled.

Only rank 0 logs; callers reduce scalars across ranks first. wandb is imported lazily so that
runs with ``log.wandb=disabled`` never touch it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Logger:
    """Interface: scalars per step, images per step, warnings, a final close."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_image(self, step: int, key: str, path: Path) -> None: ...

    def alert(self, title: str, text: str) -> None: ...

    def close(self) -> None: ...


def strict_json_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every NaN or infinity replaced by ``null`` (JSON has no such numbers) and,
    when there were any, ``"nonfinite_values"``: how many."""
    out, bad = {}, 0
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value, bad = None, bad + 1
        out[key] = value
    if bad:
        out["nonfinite_values"] = bad
    return out


class JsonlLogger(Logger):
    """Appends one JSON object per call to ``metrics.jsonl`` (flushed, so a crash loses nothing).
    Every line is strict JSON: non-finite values are written as ``null`` and counted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        row = strict_json_row({"step": step, **scalars})
        self._f.write(json.dumps(row, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> ``online`` with an API key configured, ``offline`` without (never a prompt)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if _has_wandb_key() else "offline"


def run_id_for(run_dir: Path) -> str:
    """A W&B run id stored in the run directory, so every restart of the run resumes it."""
    id_file = run_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    id_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = id_file.with_name(id_file.name + ".tmp")
    tmp.write_text(run_id)
    try:
        os.link(tmp, id_file)  # first writer wins if two processes race
    except FileExistsError:
        pass
    tmp.unlink()
    return id_file.read_text().strip()


class WandbLogger(Logger):
    """Scalars, images and the config to a W&B run whose files live in ``<run_dir>/wandb``.

    W&B runs a service process beside the trainer, which a signal to the whole job step (Slurm's
    scancel, preemption, time limit) stops as well. A failure of W&B during the run is therefore
    reported once and turns W&B off: metrics.jsonl goes on, and so does training (and the
    checkpoint the signal asks for). The next part of the job resumes the same W&B run.
    """

    def __init__(self, run_dir: Path, project: str, name: str, config: dict, mode: str,
                 group: str | None = None):
        import wandb  # lazy: heavy import, and optional for disabled runs

        self._wandb = wandb
        self.failed = False
        self.mode = resolve_wandb_mode(mode)
        self.run = wandb.init(project=project, name=name, id=run_id_for(run_dir), resume="allow",
                              dir=str(run_dir), config=config, mode=self.mode, group=group,
                              settings=wandb.Settings(console="off", silent=True,
                                                      x_disable_stats=True,
                                                      x_disable_machine_info=True))
        self.run_path = Path(self.run.dir).parent if self.mode != "disabled" else None

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - monitoring must never stop training
            log.warning("W&B failed while %s (%s: %s): W&B is off for the rest of this run; "
                        "metrics.jsonl goes on", what, type(e).__name__, e)
            self.run, self.failed = None, True

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._guard("logging scalars", lambda: self.run.log(scalars, step=step))

    def log_image(self, step: int, key: str, path: Path) -> None:
        self._guard("logging an image",
                    lambda: self.run.log({key: self._wandb.Image(str(path))}, step=step))

    def alert(self, title: str, text: str) -> None:
        """A W&B alert (e-mail / Slack as the project is set up), at most one an hour per
        title."""
        self._guard("sending an alert", lambda: self.run.alert(
            title=title, text=text, level=self._wandb.AlertLevel.WARN, wait_duration=3600))

    def close(self) -> None:
        self._guard("finishing the run", lambda: self.run.finish())
        self.run = None
        with contextlib.suppress(Exception):  # stop W&B's service now, not in an exit hook
            self._wandb.teardown()


class MultiLogger(Logger):
    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_scalars(step, scalars)

    def log_image(self, step: int, key: str, path: Path) -> None:
        for lg in self.loggers:
            lg.log_image(step, key, path)

    def alert(self, title: str, text: str) -> None:
        for lg in self.loggers:
            lg.alert(title, text)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
