"""Read-only for real: the guard put on every connection that runs user-written SQL.

A read-only open is not a sandbox (`VACUUM INTO 'x'` still writes a copy anywhere the
process can write). So user SQL runs on a connection opened read-only with query_only on,
and an authorizer that allows only reading: SELECT, READ, FUNCTION, RECURSIVE, and a short
list of introspection pragmas without a value. Everything else (ATTACH, VACUUM INTO, writes,
schema changes, transactions, PRAGMA with a value) is denied before it runs. Limits keep a
hostile statement small, and a progress handler stops it at a deadline.
"""

from __future__ import annotations

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


class Guard:
    """Installed on a connection: remembers why something was denied and the deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.denied: str | None = None
        self.timed_out = False

    def restart_clock(self) -> None:
        self.deadline = time.monotonic() + self.deadline_s
        self.timed_out = False

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


def harden(conn: apsw.Connection, deadline_s: float = 60.0) -> Guard:
    """Put the read-only guard on CONN and return it. CONN is a USER_SQL connection of
    backshift.catalog (read-only, query_only, defensive, no extensions: configured there)."""
    for limit, value in LIMITS.items():
        conn.limit(limit, value)
    guard = Guard(deadline_s)
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, PROGRESS_STEPS)
    return guard


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
