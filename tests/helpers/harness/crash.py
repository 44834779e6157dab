"""H1: run `backshift` as a real process that SIGKILLs itself at a named crash point."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

from backshift.crashpoints import ENV

SAVE_POINTS = (
    "after_chunk_tmp_write",
    "after_chunk_rename",
    "before_catalog_commit",
    "after_catalog_commit",
    "before_save_complete",
)

# The fast path of a re-save, once per batch of names (ops/session.py offer): after the
# batch is matched in the catalog's temp tables, after its members are inserted.
BORROW_POINTS = (
    "borrow_after_match",
    "borrow_after_members",
)


def backshift(*args: str | bytes, input: bytes | None = None, crash_at: str | None = None,
              env: dict | None = None, timeout: float = 120, preexec_fn=None
              ) -> subprocess.CompletedProcess:
    """Run the installed command; CRASH_AT is 'name[:nth]' for BACKSHIFT_CRASH_AT."""
    from conftest import BACKSHIFT

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    full_env.update(env or {})
    if crash_at:
        full_env[ENV] = crash_at
    return subprocess.run([BACKSHIFT, *(os.fsdecode(a) if isinstance(a, bytes) else a
                                        for a in args)],
                          input=input, capture_output=True, env=full_env, timeout=timeout,
                          preexec_fn=preexec_fn)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert killed(proc), (
        f"expected death by SIGKILL, got exit {proc.returncode}\n"
        f"stderr: {proc.stderr.decode(errors='replace')}")


def each_visit(point: str, max_nth: int = 64) -> Iterator[int]:
    """nth values to try for POINT: 1, 2, 3, 5, 8, ... (the caller stops when a run survives)."""
    a, b = 1, 2
    while a <= max_nth:
        yield a
        a, b = b, a + b


def crash_loop(point: str, args: tuple, input: bytes | None, between, max_nth: int = 64,
               env: dict | None = None) -> list[int]:
    """Advance the failure point until the command completes (SQLite's ioerr method).

    BETWEEN(nth, proc) runs after every run (killed or not) and checks the repository.
    Returns the nth values that killed the process.
    """
    kills = []
    for nth in each_visit(point, max_nth):
        proc = backshift(*args, input=input, crash_at=f"{point}:{nth}", env=env)
        if not killed(proc):
            between(nth, proc)
            return kills
        kills.append(nth)
        between(nth, proc)
    return kills
