"""Recording a save's paths, versions and members: the batch API the save writes with.

Also the previous save's entries of a directory, which a re-save borrows from."""

from __future__ import annotations

from ..model import Version
from .sqltext import _slices, _sql

PATH_ID_BY_KEY = _sql("""
    SELECT id
    FROM path
    WHERE key = :key
""")

INSERT_PATH = _sql("""
    INSERT INTO path (parent_id, key, name)
    VALUES (:parent_id, :key, :name)
""")

# New rows in one statement where the row is most likely new (a first save): the insert
# itself says whether the key existed, instead of a lookup before every insert.
INSERT_PATH_IF_NEW = _sql("""
    INSERT INTO path (parent_id, key, name)
    VALUES (:parent_id, :key, :name)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
""")

# A first save's paths, versions and members, a batch at a time (Saver.flush_records): the
# same rows as INSERT_PATH / INSERT_MEMBER, with the ids given explicitly.
PATHS_BY_KEYS = _sql("""
    SELECT key, id
    FROM path
    WHERE key IN ({marks})
""")

LAST_PATH_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM path
""")

INSERT_PATHS = _sql("""
    INSERT INTO path (id, parent_id, key, name)
    VALUES {rows}
""")

VERSION_COLUMNS = _sql("""
    v.mode, v.uid, v.gid, v.user, v.grp, v.size, v.mtime_ns, v.ctime_ns, v.dev, v.ino,
    v.nlink, v.rdev, v.link_target, v.content_id
""")

VERSION_IN_SAVE = _sql(f"""
    SELECT v.id, {VERSION_COLUMNS}, v.xattrs_id
    FROM member AS m
    JOIN version AS v ON v.id = m.version_id
    WHERE m.save_id = :save_id
      AND m.path_id = :path_id
""")

LAST_VERSION_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM version
""")

INSERT_VERSIONS = _sql("""
    INSERT INTO version (id, path_id, mode, uid, gid, user, grp, size, mtime_ns, ctime_ns,
                         dev, ino, nlink, rdev, link_target, content_id, xattrs_id)
    VALUES {rows}
""")

INSERT_MEMBER = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    VALUES (:save_id, :path_id, :version_id)
    ON CONFLICT DO NOTHING
""")

INSERT_MEMBERS = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    VALUES {rows}
    ON CONFLICT DO NOTHING
""")

# One directory's entries in an earlier save, with their versions and chunk lists (one row
# per chunk): a re-save asks once per directory instead of twice per file. CROSS JOIN pins
# the plan (path_by_parent, then each table by its key): left free, SQLite scanned the whole
# save's members for each directory.
PREVIOUS_UNDER_PARENT = _sql(f"""
    SELECT p.id, p.name, v.id, {VERSION_COLUMNS}, lower(hex(k.sha256)), k.stored_length,
           v.xattrs_id
    FROM path AS p
    CROSS JOIN member AS m
    CROSS JOIN version AS v
    LEFT JOIN content_chunk AS cc ON cc.content_id = v.content_id
    LEFT JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE p.parent_id = :parent_id
      AND m.save_id = :save_id
      AND m.path_id = p.id
      AND v.id = m.version_id
    ORDER BY p.id, cc.seq
    LIMIT :limit
""")


class Recording:
    """Paths, versions and members: looked up, inserted in batches, borrowed."""

    def path_id(self, key: bytes) -> int | None:
        row = self.conn.execute(PATH_ID_BY_KEY, {"key": key}).fetchone()
        return row[0] if row else None

    def insert_path(self, parent_id: int | None, key: bytes, name: bytes) -> int:
        self.conn.execute(INSERT_PATH, {"parent_id": parent_id, "key": key, "name": name})
        return self.conn.last_insert_rowid()

    def insert_path_if_new(self, parent_id: int | None, key: bytes, name: bytes) -> int | None:
        """The new path's id; None when KEY is already there."""
        row = self.conn.execute(INSERT_PATH_IF_NEW, {
            "parent_id": parent_id, "key": key, "name": name,
        }).fetchone()
        return row[0] if row else None

    def path_ids(self, keys: list[bytes]) -> dict[bytes, int]:
        """The ids of those of KEYS the catalog holds, by key."""
        found: dict[bytes, int] = {}
        for part in _slices(keys):
            sql = PATHS_BY_KEYS.format(marks=",".join("?" * len(part)))
            found.update(self.conn.execute(sql, part))
        return found

    def next_path_id(self) -> int:
        """The id the next path row may take (we hold the write lock: nobody else inserts)."""
        return self.conn.execute(LAST_PATH_ID).fetchone()[0] + 1

    def insert_paths(self, rows: list[tuple[int, int | None, bytes, bytes]]) -> None:
        """New path rows (id, parent id, key, name), ids from next_path_id on."""
        self._insert_rows(INSERT_PATHS, rows)

    def version_in_save(self, save_id: int, path_id: int) -> tuple[int, Version] | None:
        row = self.conn.execute(VERSION_IN_SAVE, {"save_id": save_id, "path_id": path_id})
        found = row.fetchone()
        if found is None:
            return None
        return found[0], Version(*found[1:])

    def insert_versions(self, versions: list[tuple[int, Version]]) -> list[int]:
        """New versions of (path id, version) pairs, BULK_ROWS a statement: their ids, in order
        (one pair: import-legacy, a row at a time)."""
        if not versions:
            return []
        first = self.conn.execute(LAST_VERSION_ID).fetchone()[0] + 1
        self._insert_rows(INSERT_VERSIONS, [
            (first + i, path_id, v.mode, v.uid, v.gid, v.user, v.group, v.size, v.mtime_ns,
             v.ctime_ns, v.dev, v.ino, v.nlink, v.rdev, v.link_target, v.content_id, v.xattrs_id)
            for i, (path_id, v) in enumerate(versions)])
        return list(range(first, first + len(versions)))

    def insert_members(self, rows: list[tuple[int, int, int]]) -> list[int]:
        """Record (save id, path id, version id) rows in one batch; returns the indexes of
        the rows not recorded because the save held that path already (usually none)."""
        c = self.conn
        held: list[int] = []
        before = c.total_changes()
        with self.savepoint("members"):
            self._insert_rows(INSERT_MEMBERS, rows)
            if c.total_changes() - before != len(rows):  # a duplicate: find which, in order
                c.execute("ROLLBACK TO members")
                for i, row in enumerate(rows):
                    c.execute(INSERT_MEMBER, row)
                    if c.changes() != 1:
                        held.append(i)
        return held

    def _insert_rows(self, sql: str, rows: list[tuple]) -> None:
        """Run an INSERT ... VALUES {rows} statement for ROWS, BULK_ROWS at a time."""
        if not rows:
            return
        width = len(rows[0])
        mark = "(" + ",".join("?" * width) + ")"
        for part in _slices(rows):
            self.conn.execute(sql.format(rows=",".join([mark] * len(part))),
                              [v for row in part for v in row])

    # -- save speed --
    def entries_under(self, save_id: int, parent_id: int, limit: int) -> dict | None:
        """{name: (path id, name, version id, mode, uid, gid, user, group, size, mtime_ns,
        ctime_ns, dev, ino, nlink, rdev, link target, content id, chunks, stored lengths,
        xattrs id)} of the entries of directory PARENT_ID in save SAVE_ID, where chunks is ""
        (no chunk), one sha256 in lowercase hex (a chunk file's name), or a list of them in
        order, and stored lengths the sizes of their files, one int or a list alike; None
        when that takes more than LIMIT rows (one per chunk).
        The rows as SQLite returns them: a re-save compares them with lstat's fields."""
        rows = self.conn.execute(PREVIOUS_UNDER_PARENT, {
            "save_id": save_id, "parent_id": parent_id, "limit": limit + 1,
        }).fetchall()
        if len(rows) > limit:
            return None
        out = {r[1]: r for r in rows}
        if len(out) != len(rows):  # contents of several chunks: a row per chunk, merge
            shas: dict[bytes, list[str]] = {}
            stored: dict[bytes, list[int]] = {}
            for r in rows:
                shas.setdefault(r[1], []).append(r[17])
                stored.setdefault(r[1], []).append(r[18])
            for name, chunks in shas.items():
                if len(chunks) > 1:
                    out[name] = out[name][:17] + (chunks, stored[name]) + out[name][19:]
        return out
