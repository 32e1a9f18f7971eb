"""Stopping cleanly on SIGUSR1 / SIGTERM / SIGINT: Slurm's warning before a time limit,
preemption, ``scancel``, Ctrl-C.

The handler records the signal; the training loop finishes the step it is in, all ranks agree
(one could have been signalled a moment before another), every rank writes the checkpoint, and
the process exits with ``EXIT_REQUEUE`` (``EXIT_INTERRUPTED`` after Ctrl-C) so the launcher knows
to requeue the job, which resumes from that checkpoint with no image lost or repeated.

A signal that arrives while the trainer waits for data (``interruptible``) stops the wait at once
(``Interrupted``): the step had not begun, so nothing is lost. A second Ctrl-C aborts without a
checkpoint. DataLoader workers ignore all three signals (``ignore_in_child``): Slurm and a
terminal signal the whole process group, and the trainer shuts its workers down itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_REQUEUE = 3
"""Exit code of ``scalegan train`` after a signal-triggered checkpoint: requeue me."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (SIGINT), with the checkpoint written: the shell's 128 + 2."""

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal arrived during a wait that ``StopSignal.interruptible`` allows to cut short.
    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it."""


class StopSignal:
    """``with StopSignal() as stop:`` records SIGUSR1 / SIGTERM / SIGINT in ``stop.received``;
    the previous handlers come back on exit. Outside the main thread (where Python cannot install
    handlers) it records nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._waiting = 0

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        if self.received is None:
            self.received = signum
        if self._waiting:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def interruptible(self):
        """A wait (for data) that a stop signal ends at once with ``Interrupted``."""
        if self.received is not None:
            raise Interrupted(self.received)
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _ignored(signum: int, frame) -> None:
    """A handler that does nothing. Unlike SIG_IGN it is not inherited by programs the worker
    runs (a ``pipe:`` shard's command), which stay stoppable."""


def ignore_in_child() -> None:
    """In a DataLoader worker: ignore the stop signals (and let through those that arrived while
    ``blocked`` held them back). The trainer ends its workers itself (``ImageStream.close``)."""
    for sig in SIGNALS:
        signal.signal(sig, _ignored)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextlib.contextmanager
def blocked():
    """Hold the stop signals back while worker processes are forked, so none can die of one
    before ``ignore_in_child`` runs; they are delivered to this process afterwards."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
