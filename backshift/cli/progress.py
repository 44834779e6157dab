"""The live progress of a long command, on stderr only (never on stdout, which may carry a
tar stream or a listing), as borg's --progress: on a terminal one line rewritten in place
(\\r) a few times a second; off a terminal (with -v or --progress) a plain line now and
then and the last state at the end; nothing with -q. One Progress per invocation; the
commands hand its `update` (through a formatting function of theirs) to the operation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ..render import human_bytes

TTY_EVERY_S = 0.2  # a terminal's line is redrawn at most this often
LINES_EVERY_S = 10.0  # off a terminal: one line at most this often (and the last at the end)


class Progress:
    def __init__(self, stream=None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = TTY_EVERY_S if self.tty else LINES_EVERY_S
        self.last = -1e9  # monotonic time of the last line written: the first goes at once
        self.pending: str | Callable[[], str] | None = None  # the newest, not written yet
        self.shown = False  # a terminal line is on screen (cleared before other output)

    def update(self, text: str | Callable[[], str], final: bool = False) -> None:
        """Show TEXT now if it is time to (or FINAL), else keep it for later. TEXT may be a
        function that makes it: called only when the line is written (a command may report
        a million times; the line is made a few times a second)."""
        now = time.monotonic()
        if not final and now - self.last < self.every:
            self.pending = text
            return
        self.last = now
        self.pending = None
        if not isinstance(text, str):
            text = text()
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take a terminal's line away, before a warning or a summary is written."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def finish(self) -> None:
        """The end: off a terminal the last state not written yet goes out; a terminal's
        line is cleared."""
        if not self.tty and self.pending is not None:
            self.update(self.pending, final=True)
        self.clear()


def rate_eta(done: float, total: float | None, elapsed_s: float, unit: str = "") -> str:
    """', 45%, 12 MB/s, ETA 1:23' (percent and ETA only when TOTAL is known and ahead)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    out = f", {human_bytes(rate)}/s" if unit == "B" else ""
    if total and 0 < done < total:
        out = f", {100 * done / total:.0f}%" + out + ", ETA " + clock(
            elapsed_s * (total - done) / done)
    return out


def clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
