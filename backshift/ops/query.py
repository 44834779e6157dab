"""Running one user-written SQL statement on a guarded, read-only connection to the catalog.

The statement runs on its own connection (read-only open, `mode=ro`, sqlguard's authorizer,
limits and deadline), alone (a second statement is refused before anything runs), and inside
one read transaction, so every row comes from the same snapshot. TEXT cells are fetched as
bytes (the statement is wrapped so that text becomes BLOB), because a path that is not UTF-8
is still TEXT in the views and apsw cannot decode it; the renderer escapes bytes losslessly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import apsw

from .. import sqlguard
from ..catalog import CATALOG_NAME, open_error, open_user_sql
from ..errors import QueryDenied, QueryFailed, QueryTimeout, RepositoryLocked

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ROWS = 100_000

_LEADING_NOISE = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)
_WRAPPABLE = re.compile(r"(?:SELECT|WITH|VALUES)\b", re.I)
_WRAP_NAME = "backshift_user_query"
_WRITE_VERBS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "UPSERT", "CREATE", "DROP", "ALTER",
                "VACUUM", "REINDEX", "ANALYZE", "ATTACH", "DETACH", "BEGIN", "COMMIT", "END",
                "ROLLBACK", "SAVEPOINT", "RELEASE"}


@dataclass
class QueryResult:
    """Column names and a row stream; `truncated` is set once the row cap cut the stream."""

    headers: list[str]
    rows: Iterator[tuple]
    max_rows: int
    truncated: bool = field(default=False)


class QueryRunner:
    """A guarded read-only connection to REPO's catalog; use as a context manager."""

    def __init__(self, repo_path: bytes, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        path = os.path.join(os.path.abspath(repo_path), CATALOG_NAME)
        self.conn = open_user_sql(path)  # read-only, configured, one snapshot for its life
        try:
            self.guard = sqlguard.harden(self.conn, timeout_s)
        except apsw.Error as e:
            self.conn.close()
            raise open_error(e, path, readonly=True) from None
        self.watchdog = sqlguard.Watchdog(self.conn, self.guard,
                                          QueryTimeout(f"{timeout_s:g}")).__enter__()

    def __enter__(self) -> QueryRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.watchdog.__exit__(None, None, None)
        self.conn.close()  # rolls the read transaction back

    def run(self, sql: str, params: dict[str, object] | None = None,
            max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
        """Check and start SQL; rows stream from the result (at most MAX_ROWS, 0 = all)."""
        params = params or {}
        self.guard.restart_clock()
        self.guard.denied = None
        first, description = self._prepare_one(sql, params)
        headers = [name for name, _decltype in description]
        cursor = None
        if headers and _is_wrappable(first):
            cursor = self._execute(_wrap(first, len(headers)), params, fallback_ok=True)
        if cursor is None:
            cursor = self._execute(first, params)
        result = QueryResult(headers, iter(()), max_rows)
        result.rows = self._rows(cursor, result)
        return result

    def _prepare_one(self, sql: str, params: dict) -> tuple[str, tuple]:
        """Prepare (never run) the first statement; refuse a second one or a denied one."""
        try:
            info = self._trace(sql, params)
        except QueryFailed:
            # `DELETE FROM files` fails to prepare (a view cannot be modified): a write all
            # the same, refused as every write is
            verb = sql[_LEADING_NOISE.match(sql).end():].split(None, 1)
            if verb and verb[0].upper() in _WRITE_VERBS:
                raise QueryDenied(f"{verb[0].upper()} writes; backshift sql only reads") \
                    from None
            raise
        if info is None or not info["has_vdbe"]:
            raise QueryFailed("no SQL statement given")
        rest = info["remaining"]
        while rest and rest.strip():  # only empty statements and comments may follow
            try:
                more = self._trace(rest, {})
            except (QueryFailed, QueryDenied):
                more = {"has_vdbe": True, "first": rest}  # a second one, even if broken
            if more is None or not more["first"]:
                break
            if more["has_vdbe"]:
                raise QueryDenied("several statements given; run one statement at a time")
            rest = more["remaining"]
        verb = info["first"][_LEADING_NOISE.match(info["first"]).end():].split(None, 1)
        # SQLite calls `PRAGMA journal_mode` a write even without a value; every PRAGMA that
        # got past the authorizer is one of its allowlisted reads (a value is denied there).
        if not info["readonly"] and (verb or [""])[0].upper() != "PRAGMA":
            # VACUUM asks the authorizer nothing while being prepared; SQLite knows it writes.
            raise QueryDenied(f"{(verb or ['it'])[0].upper()} writes; backshift sql only reads")
        return info["first"], info["description"]

    def _trace(self, sql: str, params: dict) -> dict | None:
        found: dict = {}

        def tracer(cursor: apsw.Cursor, first: str, _bindings: object) -> bool:
            found.update(first=first, remaining=sql[len(first):], has_vdbe=cursor.has_vdbe,
                         readonly=cursor.is_readonly,
                         description=cursor.get_description() if cursor.has_vdbe else ())
            return False  # prepared and seen: do not run it

        cursor = self.conn.cursor()
        cursor.exec_trace = tracer
        try:
            cursor.execute(sql, params)
        except apsw.ExecTraceAbort:
            pass
        except KeyError as e:
            raise QueryFailed(f"no value for :{e.args[0]} (give --param {e.args[0]}=VALUE)") \
                from None
        except apsw.Error as e:
            raise self._translate(e) from None
        return found or None

    def _execute(self, sql: str, params: dict, fallback_ok: bool = False) -> apsw.Cursor | None:
        try:
            return self.conn.cursor().execute(sql, params)
        except apsw.Error as e:
            if fallback_ok and not self.guard.timed_out and self.guard.denied is None \
                    and isinstance(e, apsw.SQLError):
                return None  # the wrapper did not fit (limits): run the statement as given
            raise self._translate(e) from None

    def _rows(self, cursor: apsw.Cursor, result: QueryResult) -> Iterator[tuple]:
        count = 0
        it = iter(cursor)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except UnicodeDecodeError:
                # Only for statements that could not be wrapped (PRAGMA, EXPLAIN): apsw
                # cannot hand the row over; say so in the row instead of stopping.
                note = "<row not shown: text that is not UTF-8; select CAST(x AS BLOB)>"
                row = (note,) + (None,) * (len(result.headers) - 1)
            except apsw.Error as e:
                raise self._translate(e) from None
            if result.max_rows and count >= result.max_rows:
                result.truncated = True
                return
            count += 1
            yield row

    def _translate(self, e: apsw.Error) -> BaseException:
        if self.guard.sigint:
            return KeyboardInterrupt()  # Ctrl-C stopped the statement: exit 130
        if self.guard.denied is not None:
            denied, self.guard.denied = self.guard.denied, None
            return QueryDenied(f"{denied} is not allowed (backshift sql only reads)")
        if self.guard.timed_out:
            return QueryTimeout(f"{self.guard.deadline_s:g}")
        if isinstance(e, apsw.NoMemError):
            return QueryFailed(sqlguard.MEMORY_LIMIT_NOTE)
        if isinstance(e, apsw.BusyError | apsw.LockedError):
            return RepositoryLocked(os.fsdecode(self.conn.filename), str(e))
        if isinstance(e, apsw.AuthError):
            return QueryDenied(str(e))
        return QueryFailed(str(e).removeprefix("SQLError: "))


def parse_params(items: tuple[str, ...] | list[str]) -> dict[str, object]:
    """`NAME=VALUE` pairs for --param: whole integers bind as INTEGER, the rest as TEXT."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.lstrip(":$@")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise QueryFailed(f"--param wants NAME=VALUE, got {item!r}")
        out[name] = int(value) if re.fullmatch(r"-?[0-9]{1,18}", value) else value
    return out


def _is_wrappable(statement: str) -> bool:
    body = statement[_LEADING_NOISE.match(statement).end():]
    return bool(_WRAPPABLE.match(body))


def _wrap(statement: str, columns: int) -> str:
    """STATEMENT with each TEXT cell turned into a BLOB (same bytes), columns renamed by
    position; the newline keeps a trailing `-- comment` from eating the parenthesis."""
    body = statement.rstrip().rstrip(";")
    names = ", ".join(f"c{i}" for i in range(columns))
    cells = ", ".join(
        f"CASE WHEN typeof(c{i}) = 'text' THEN CAST(c{i} AS BLOB) ELSE c{i} END"
        for i in range(columns)
    )
    return f"WITH {_WRAP_NAME}({names}) AS (\n{body}\n)\nSELECT {cells}\nFROM {_WRAP_NAME}"

