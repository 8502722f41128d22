"""Stopping a run cleanly on SIGTERM, SIGUSR1 (what SLURM sends before preemption) and SIGINT (Ctrl-C).

While training runs (``StopRequest.deferring``), a signal only sets a flag. The training loop reads it
after each optimizer step (a Python attribute, no device sync), saves a mid-epoch checkpoint with the
loader's position and returns; the CLI then exits with ``EXIT_PREEMPTED`` (75, SIGTERM/SIGUSR1) or
``EXIT_INTERRUPTED`` (130, SIGINT). A second Ctrl-C while that checkpoint is written stops at once; the
atomic write keeps the previous ``last.pt``. Before training starts there is nothing to save, so a
signal raises ``StoppedBySignal`` at once (imports, data loading) with the same exit statuses.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from .errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

STOP_SIGNALS = {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGUSR1: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}


class StoppedBySignal(Exception):
    """A stop signal arrived before training began: nothing to save, so the command ends here."""

    def __init__(
        self,
        signal_name: str,
        exit_status: int,
        what: str = "stopped before training began; nothing was left half-written",
    ) -> None:
        super().__init__(f"{signal_name}: {what}")
        self.exit_status = exit_status


class StopRequest:
    """Whether, and by which signal, the run was asked to stop; ``deferring`` while a loop can act on it."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.exit_status = 0
        self.deferring = False

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def set(self, name: str, exit_status: int) -> None:
        if self.signal_name is None:
            self.signal_name, self.exit_status = name, exit_status


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Route the stop signals to ``request`` inside the block; the previous handlers come back after.

    A signal that the parent process ignores (SIGINT in a ``nohup`` or ``&`` job) stays ignored. Off the
    main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def handle(number: int, frame: Any) -> None:
        if number == signal.SIGINT and request:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        name, status = signal.Signals(number).name, STOP_SIGNALS[signal.Signals(number)]
        request.set(name, status)
        if not request.deferring:
            raise StoppedBySignal(name, status)

    for number in STOP_SIGNALS:
        current = signal.getsignal(number)
        if current is signal.SIG_IGN:
            continue
        previous[number] = current
        signal.signal(number, handle)
    try:
        yield request
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
