"""Stopping cleanly on SIGUSR1 / SIGTERM: Slurm's warning before a time limit, preemption.

The handler only records the signal; the training loop finishes the step it is in, all ranks
agree (one could have been signalled a moment before another), every rank writes the checkpoint,
and the process exits with ``EXIT_REQUEUE`` so the launcher knows to requeue the job, which
resumes from that checkpoint with no image lost or repeated.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

EXIT_REQUEUE = 3
"""Exit code of ``scalegan train`` after a signal-triggered checkpoint: requeue me."""

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignal:
    """``with StopSignal() as stop:`` records SIGUSR1 / SIGTERM in ``stop.received``; the previous
    handlers come back on exit. Outside the main thread (where Python cannot install handlers) it
    records nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank has received a signal (one tiny all-reduce)."""
        flag = self.received is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag
