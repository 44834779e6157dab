"""Migrations: the packaged schema steps, applied in order, and stand-ins for old catalogs.

A read-only open never migrates; the stand-ins give its reader the newest schema's names."""

from __future__ import annotations

import importlib
import os

import apsw

from ..crashpoints import crashpoint
from .sqltext import _sql


def _migrations_dir() -> str:
    """The folder of the package backshift.migrations (setuptools maps the top-level
    migrations/ there). A directory listing reads it, also in an editable install, without
    importlib.resources and all it imports at start-up."""
    package = importlib.import_module("..migrations", __package__)
    return os.path.dirname(os.path.abspath(package.__file__))


def _migration_names() -> list[tuple[int, str]]:
    return sorted((int(name.split("_", 1)[0]), name) for name in os.listdir(_migrations_dir())
                  if name.endswith(".sql"))


def migrations() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every packaged migration, in order."""
    folder = _migrations_dir()
    out = []
    for number, name in _migration_names():
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            out.append((number, name, f.read()))
    return out


def schema_version() -> int:
    """The schema version this program writes: the number of the last migration."""
    return _migration_names()[-1][0]


# Stand-ins of migration 0003 for a catalog read before it was migrated (Catalog.open):
# its versions have no attribute sets.
READ_ONLY_STAND_INS = {3: _sql("""
    CREATE TEMP VIEW version AS
    SELECT *, NULL AS xattrs_id
    FROM main.version;
    CREATE TEMP TABLE xattr_set (
        id     INTEGER PRIMARY KEY,
        digest BLOB    NOT NULL
    );
    CREATE TEMP TABLE xattr (
        set_id  INTEGER NOT NULL,
        name    BLOB    NOT NULL,
        value   BLOB    NOT NULL,
        is_text INTEGER NOT NULL,
        PRIMARY KEY (set_id, name)
    ) WITHOUT ROWID;
    CREATE TEMP VIEW xattrs AS
    SELECT m.save_id, NULL AS path, NULL AS name, NULL AS value, NULL AS size,
           m.path_id, m.version_id
    FROM main.member AS m
    WHERE 0;
""")}


def stand_in_for_migrations(conn: apsw.Connection) -> None:
    """A catalog opened read-only is not migrated (it may be on read-only media): the
    objects of the migrations it lacks get empty stand-ins in CONN's temp schema, which
    unqualified names find first, so that reading code (and users' SQL) sees one schema."""
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    for number, sql in sorted(READ_ONLY_STAND_INS.items()):
        if number > version:
            conn.execute(sql)


class Migrating:
    """Apply pending migrations (a writer's open, init)."""

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in its own IMMEDIATE transaction with its version."""
        applied = []
        for number, _name, sql in migrations():
            if number <= self.user_version():
                continue
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for _row in self.conn.execute(sql):
                    pass  # consume: apsw pauses a script at the first statement with rows
                crashpoint("migration_mid")
                self.conn.execute(f"PRAGMA user_version = {number}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            applied.append(number)
            self.schema = number
        return applied
