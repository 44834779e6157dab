"""A user's --where predicate over the `files` view (list, tar): one SQL expression, run per
member on its own read-only connection under sqlguard's rules and deadline."""

from __future__ import annotations

import apsw

from .. import sqlguard
from ..catalog import WHERE_PREDICATE_MATCHES, Catalog
from ..errors import QueryDenied

WHERE_DEADLINE_S = 10.0  # per member


class WherePredicate:
    """A user's --where SQL, run on its own read-only connection under sqlguard."""

    def __init__(self, catalog: Catalog, predicate: str) -> None:
        self.cat = Catalog.open(catalog.path, readonly=True, user_sql=True)
        self.guard = sqlguard.harden(self.cat.conn, WHERE_DEADLINE_S)
        self.guard.stop_clock()
        self.watchdog = sqlguard.Watchdog(self.cat.conn, self.guard, QueryDenied(
            f"--where took longer than {WHERE_DEADLINE_S:g} s")).__enter__()
        self.sql = WHERE_PREDICATE_MATCHES.format(predicate=predicate)
        try:
            self.matches(0, -1)  # refuse a bad predicate before any output
        except BaseException:
            self.close()  # the watchdog must not outlive us (it holds the SIGINT wake-up)
            raise

    def matches(self, save_id: int, path_id: int) -> bool:
        self.guard.restart_clock()
        statements = []

        def one_statement(_cursor, sql: str, _bindings) -> bool:
            statements.append(sql)
            return len(statements) == 1  # `0); SELECT 1; --` would run a second one

        cursor = self.cat.conn.cursor()
        try:
            cursor.exec_trace = one_statement
            rows = cursor.execute(self.sql, {"save_id": save_id, "path_id": path_id})
            return rows.fetchone() is not None
        except apsw.ExecTraceAbort:
            raise QueryDenied("--where takes one expression over the files view, "
                              "not statements") from None
        except apsw.Error as e:
            if self.guard.sigint:
                raise KeyboardInterrupt from None
            if self.guard.timed_out:
                raise QueryDenied(f"--where took longer than {WHERE_DEADLINE_S:g} s") from None
            raise QueryDenied(f"--where: {self.guard.denied or e}") from None
        finally:
            cursor.close()  # no statement left active for the watchdog to interrupt
            self.guard.stop_clock()

    def close(self) -> None:
        self.watchdog.__exit__(None, None, None)
        self.cat.close()
