"""Read-only for real: the guard put on every connection that runs user-written SQL.

A read-only open is not a sandbox (`VACUUM INTO 'x'` still writes a copy anywhere the
process can write). So user SQL runs on a connection opened read-only with query_only on,
and an authorizer that allows only reading: SELECT, READ, FUNCTION, RECURSIVE, and a short
list of introspection pragmas without a value. Everything else (ATTACH, VACUUM INTO, writes,
schema changes, transactions, PRAGMA with a value) is denied before it runs. Limits keep a
hostile statement small, and a progress handler stops it at a deadline. One costly VM step
(`instr()` over megabyte strings) never reaches the progress handler, and Python cannot run
a signal handler while SQLite holds the thread: a watchdog thread interrupts the statement at
the deadline and on SIGINT.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import apsw

ALLOWED_ACTIONS = {
    apsw.SQLITE_SELECT,
    apsw.SQLITE_READ,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
}

# Introspection pragmas a reporting user needs. These take a table or index name as their
# argument and only ever read (`PRAGMA table_info(files)`, `pragma_table_info('files')`):
PRAGMAS_WITH_NAME = {
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "table_list",
}
# These read a setting, and would change it if given a value: allowed only without one.
PRAGMAS_WITHOUT_VALUE = {
    "collation_list", "function_list", "pragma_list", "database_list", "user_version",
    "application_id", "page_size", "page_count", "freelist_count", "schema_version",
    "compile_options", "journal_mode", "encoding",
}

# Functions with effects outside the query, never allowed even though reading.
DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}

LIMITS = {
    apsw.SQLITE_LIMIT_LENGTH: 10_000_000,
    apsw.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    apsw.SQLITE_LIMIT_ATTACHED: 0,
    apsw.SQLITE_LIMIT_COLUMN: 500,
    apsw.SQLITE_LIMIT_EXPR_DEPTH: 100,
    apsw.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    apsw.SQLITE_LIMIT_VARIABLE_NUMBER: 100,
    apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000,
    apsw.SQLITE_LIMIT_FUNCTION_ARG: 16,
    apsw.SQLITE_LIMIT_TRIGGER_DEPTH: 1,
}

PROGRESS_STEPS = 10_000  # VM instructions between deadline checks

# `sql` keeps sorts and temporary results in memory (temp_store = MEMORY), under a hard cap
# on everything SQLite allocates in the process: an ORDER BY over large blobs once filled
# /var/tmp with a deleted temp file at ~200 MB/s. See cap_memory.
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
MEMORY_LIMIT_NOTE = (f"it needs more than {MEMORY_LIMIT_BYTES >> 20} MiB for sorting or "
                     "temporary results, which backshift keeps in memory, never in /var/tmp; "
                     "narrow it, or sort fewer or smaller columns")


class Guard:
    """Installed on a connection: remembers why something was denied and the deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.denied: str | None = None
        self.timed_out = False
        self.sigint = False  # the watchdog stopped the statement for Ctrl-C

    def restart_clock(self) -> None:
        self.deadline = time.monotonic() + self.deadline_s
        self.timed_out = False

    def stop_clock(self) -> None:
        """No deadline until the next restart_clock (the connection is idle)."""
        self.deadline = float("inf")

    def authorize(self, action: int, p1, p2, dbname, trigger) -> int:
        if action in ALLOWED_ACTIONS:
            if action == apsw.SQLITE_FUNCTION and (p2 or "").lower() in DENIED_FUNCTIONS:
                return self._deny(f"function {p2}()")
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_PRAGMA:
            name = (p1 or "").lower()
            if name in PRAGMAS_WITH_NAME or (name in PRAGMAS_WITHOUT_VALUE and p2 is None):
                return apsw.SQLITE_OK
            return self._deny(f"PRAGMA {p1}" + (f" = {p2}" if p2 is not None else ""))
        if action == apsw.SQLITE_DELETE and (p1 or "").lower() in _SCHEMA_TABLES:
            return self._deny("DROP (a schema change)")  # DROP asks this before DROP_VIEW
        return self._deny(_ACTION_NAMES.get(action, f"action {action}"))

    def _deny(self, what: str) -> int:
        """Remember the first denial of a statement (DROP VIEW also asks to DELETE after)."""
        if self.denied is None:
            self.denied = what
        return apsw.SQLITE_DENY

    def progress(self) -> bool:
        """True stops the statement (SQLITE_INTERRUPT)."""
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False


_memory_capped = False


def cap_memory() -> bool:
    """Put MEMORY_LIMIT_BYTES on SQLite's heap for the rest of the process (the `sql`
    command, before it opens anything); guarded connections then keep temp data in memory.

    A heap limit needs SQLite's memory statistics, which the catalog turns off for speed,
    and they can only be turned on while no connection is open. False (and temp data stays
    in files) when that is too late, which happens only in a process that did other work."""
    global _memory_capped
    if not _memory_capped:
        if apsw.connections():
            return False
        apsw.shutdown()
        try:
            apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 1)
        finally:
            apsw.initialize()
        apsw.hard_heap_limit(MEMORY_LIMIT_BYTES)
        _memory_capped = True
    return True


def harden(conn: apsw.Connection, deadline_s: float = 60.0) -> Guard:
    """Put the read-only guard on CONN and return it. CONN is a USER_SQL connection of
    backshift.catalog (read-only, query_only, defensive, no extensions: configured there)."""
    for limit, value in LIMITS.items():
        conn.limit(limit, value)
    guard = Guard(deadline_s)
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, PROGRESS_STEPS)
    return guard


_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}

_ACTION_NAMES = {
    value: name.removeprefix("SQLITE_").replace("_", " ").lower()
    for name, value in vars(apsw).items()
    if name.startswith("SQLITE_") and isinstance(value, int) and name in {
        "SQLITE_ATTACH", "SQLITE_DETACH", "SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE",
        "SQLITE_CREATE_TABLE", "SQLITE_CREATE_INDEX", "SQLITE_CREATE_VIEW",
        "SQLITE_CREATE_TRIGGER", "SQLITE_CREATE_TEMP_TABLE", "SQLITE_CREATE_TEMP_VIEW",
        "SQLITE_CREATE_TEMP_INDEX", "SQLITE_CREATE_TEMP_TRIGGER", "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_TABLE", "SQLITE_DROP_INDEX", "SQLITE_DROP_VIEW", "SQLITE_DROP_TRIGGER",
        "SQLITE_DROP_TEMP_TABLE", "SQLITE_DROP_TEMP_VIEW", "SQLITE_DROP_TEMP_INDEX",
        "SQLITE_DROP_TEMP_TRIGGER", "SQLITE_DROP_VTABLE", "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX", "SQLITE_ANALYZE", "SQLITE_TRANSACTION", "SQLITE_SAVEPOINT",
    }
}


class Watchdog:
    """A thread that calls CONN.interrupt() when GUARD's deadline passes or SIGINT arrives.

    Use as a context manager around the connection's use. SIGINT is seen through
    signal.set_wakeup_fd (main thread only; elsewhere only the deadline is watched); the
    interpreter still raises KeyboardInterrupt once SQLite gives the thread back.

    SQLite looks at an interrupt only between VM steps, and one step can be a function call
    that runs for minutes (`instr()` over megabyte strings). When the thread that runs the
    statement has not let go GRACE_S after the interrupt, the watchdog ends the process
    itself: TIMEOUT_ERROR's line and exit code, or "interrupted" and 130. The connection
    only reads, so nothing is left half-written.
    """

    GRACE_S = 1.0
    _STOP = b"\0"  # no signal has number 0

    def __init__(self, conn: apsw.Connection, guard: Guard, timeout_error) -> None:
        self.conn = conn
        self.guard = guard
        self.timeout_error = timeout_error
        self._old_fd: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        try:
            self._old_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signal wake-ups, the deadline still holds
            self._old_fd = None
        self._thread = threading.Thread(target=self._watch, name="sql-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        os.write(self._wfd, self._STOP)
        self._thread.join()
        os.close(self._rfd)
        os.close(self._wfd)

    def _watch(self) -> None:
        stuck_at = None  # when the interrupt was sent, if it was
        while True:
            now = time.monotonic()
            if stuck_at is not None:
                wait = stuck_at + self.GRACE_S - now
                if wait <= 0:
                    self._give_up()
                    return
            else:  # re-read the deadline often: restart_clock moves it between statements
                wait = self.guard.deadline - now
            ready, _, _ = select.select([self._rfd], [], [], max(min(wait, 0.25), 0.0))
            if ready:
                got = os.read(self._rfd, 512)
                if self._STOP in got:
                    return
                if bytes([signal.SIGINT]) in got and stuck_at is None:
                    self.guard.sigint = True
                    self.conn.interrupt()
                    stuck_at = time.monotonic()
            elif stuck_at is None and time.monotonic() > self.guard.deadline:
                self.guard.timed_out = True
                self.conn.interrupt()
                stuck_at = time.monotonic()

    def _give_up(self) -> None:
        if self.guard.sigint:
            line, code = "backshift: interrupted", 130
        else:
            line, code = f"backshift: error: {self.timeout_error}", self.timeout_error.exit_code
        os.write(2, (line + "\n").encode())
        os._exit(code)
