"""Graceful interrupts: SIGINT / SIGTERM (and an extra signal such as Slurm's SIGUSR1) stop a run at
the next safe point instead of killing it.

The first signal asks the run to stop. Where stopping at once keeps the state consistent (during a
rollout, which changes nothing that the last checkpoint does not restore) the run is abandoned
right there (`RunInterrupted` is raised from the handler); elsewhere (an optimizer step in
progress) the flag is read at the end of the step. The trainer then writes a checkpoint of the
last completed step and exits with the conventional status: 128 + the signal number (130 for
SIGINT, 143 for SIGTERM). A second SIGINT or SIGTERM exits at once, without saving, and says so;
an interrupted save leaves the previous checkpoint intact (checkpoints are written atomically).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


class RunInterrupted(Exception):
    """Raised where the run can stop at once (see the module docstring)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def in_main_thread() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def signal_number(name: str) -> int:
    """'SIGUSR1' or 'USR1' -> its number; ValueError naming the unknown signal."""
    key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    try:
        return int(getattr(signal, key))
    except AttributeError:
        raise ValueError(f"unknown signal '{name}'") from None


class GracefulInterrupts:
    """Signal handlers for one run. `requested` is the first signal received (None if none)."""

    def __init__(self, extra_signals: tuple[str, ...] = (), say=None):
        self.signals = [signal.SIGINT, signal.SIGTERM, *(signal_number(s) for s in extra_signals)]
        self.requested: int | None = None
        self._abandonable = False
        self._say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum in (signal.SIGINT, signal.SIGTERM):
            self._say(f"pivotal: second {name}: exiting now, without saving")
            os._exit(exit_status(signum))
        if self.requested is None:
            self.requested = signum
            self._say(f"pivotal: {name} received: stopping at the next safe point and saving a "
                      f"checkpoint (send it again to exit at once without saving)")
        if self._abandonable:
            self._abandonable = False
            raise RunInterrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulInterrupts]:
        """Install the handlers for the duration (main thread only; elsewhere a no-op)."""
        if not in_main_thread():
            yield self
            return
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous.clear()

    @contextlib.contextmanager
    def abandonable(self) -> Iterator[None]:
        """Inside, a first signal raises RunInterrupted at once (the work may be thrown away)."""
        if self.requested is not None:
            raise RunInterrupted(self.requested)
        self._abandonable = True
        try:
            yield
        finally:
            self._abandonable = False
