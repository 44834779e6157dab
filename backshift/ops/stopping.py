"""Stopping a save on SIGINT/SIGTERM: the first finishes the current file, commits and
stops (the readers stop at their next chunk); a second stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from .reader import _reset_shared


class Stoppable(Protocol):
    """What the signal handlers need of the save they stop (ops/save.py's Saver)."""

    stop_signal: int | None

    def hard_stop(self) -> None: ...

    def notice(self, msg: str) -> None: ...

_early_signals: list[int] = []


def catch_stop_signals() -> Callable[[], None]:
    """Remember SIGINT/SIGTERM from now until a save handles them (its first moments:
    forking readers, opening the repository); returns what restores the old handlers."""
    _early_signals.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, lambda signum, frame: _early_signals.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _early_signals.clear()
    return restore


def _notice(msg: str) -> None:
    os.write(2, msg.encode("utf-8", "replace") + b"\n")  # safe inside a signal handler


class _graceful_signals:
    """First SIGINT/SIGTERM: finish the current file, commit, stop. Second: hard stop."""

    def __init__(self, saver: Stoppable) -> None:
        self.saver = saver
        self.old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.handle)
            if _early_signals:  # came before this save could handle it (catch_stop_signals)
                self.handle(_early_signals.pop(0), None)
                _early_signals.clear()
        return self

    def handle(self, signum, frame):
        if self.saver.stop_signal is not None:
            self.saver.hard_stop()
            return
        self.saver.stop_signal = signum
        _reset_shared(stop=True)  # the readers stop at their next chunk
        name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "it"
        self.saver.notice(f"backshift: {name}: stopping; committing what is saved so far "
                          f"(send {again} again to stop at once)")

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False
