"""SIGTERM handled like Ctrl+C (SIGINT): schedulers and ``kill`` stop a command the way a user at
the keyboard does, and the exit status says which signal it was (128 + its number: 130, 143)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's exit status of a process stopped by ``signum``."""
    return 128 + signum


class Stopped(KeyboardInterrupt):
    """A command stopped by ``signum``; ``message`` says where, and how to go on."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum, self.message = signum, message


class StopSignals:
    """Within ``with StopSignals() as stop:``, SIGINT and SIGTERM raise :class:`Stopped` (a
    :class:`KeyboardInterrupt`; ``stop.received`` says which arrived). With ``at_once=False`` the
    first signal is only recorded, for the command to stop at its next safe point; a second one
    raises. The previous handlers come back on exit. Outside the main thread (where Python cannot
    set handlers) it does nothing."""

    def __init__(self, at_once: bool = True):
        self.at_once = at_once
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = self.received or signum
        if self.at_once or not first:
            raise Stopped(self.received)

    def install(self) -> None:
        """(Re)install the handlers, e.g. over ones a library set in the meantime."""
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous.setdefault(signum, signal.signal(signum, self._on_signal))

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> bool:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False

    def exit_status(self) -> int:
        """130 or 143 for the signal received (130 when a KeyboardInterrupt came some other way)."""
        return exit_status(self.received or signal.SIGINT)


@contextmanager
def stop_with(message: str) -> Iterator[StopSignals]:
    """Within it, SIGINT and SIGTERM end in :class:`Stopped` with ``message``, also where a library
    (Lightning's evaluation loops) turns the interrupt into a bare exit."""
    with StopSignals() as stop:
        try:
            yield stop
        except (KeyboardInterrupt, SystemExit):
            if stop.received is None:
                raise
            raise Stopped(stop.received, message) from None
