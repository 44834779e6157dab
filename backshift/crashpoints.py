"""Named crash points for the fault tests: BACKSHIFT_CRASH_AT=name[:nth] SIGKILLs the process.

Only the test suite sets the variable. Without it a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "BACKSHIFT_CRASH_AT"

# Every point the code has; the fault tests loop over this list.
POINTS = (
    "after_chunk_tmp_write",
    "after_chunk_rename",
    "before_catalog_commit",
    "after_catalog_commit",
    "before_save_complete",
    "borrow_after_match",
    "borrow_after_members",
    "gc_after_catalog_delete",
    "gc_mid_unlink",
    "migration_mid",
    "import_after_save_commit",
)

_lock = threading.Lock()
# Set in a save's reader processes: a crash point there kills the saving process first, as
# a crash of the machine would (the reader alone dying is an error the save reports).
kill_parent = False
_counts: dict[str, int] = {}
_target: tuple[str, int] | None = None
_parsed = False


def _parse() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth or 1)


def crashpoint(name: str) -> None:
    """Die here, by SIGKILL, if the environment names this point (and this is its nth visit)."""
    global _target, _parsed
    if not _parsed:
        _target = _parse()
        _parsed = True
    if _target is None or _target[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= _target[1]:
            if kill_parent:
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
