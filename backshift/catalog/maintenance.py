"""Maintenance: expire's deletes and sweeps, check's probes, catalog copies.

The sweeps are set-based, never a probe per row."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import apsw

from ..errors import NotACatalog
from .conn import _root_cause
from .sqltext import _sql

DELETE_SAVE = _sql("""
    DELETE FROM save
    WHERE id = :save_id
""")

# The sweeps are set-based (one NOT IN list built once), never a probe per row: member has
# no index on version_id and version none on path_id.
DELETE_UNREFERENCED_VERSIONS = _sql("""
    DELETE FROM version
    WHERE id NOT IN (SELECT version_id FROM member)
""")

DELETE_UNREFERENCED_CONTENTS = _sql("""
    DELETE FROM content
    WHERE id NOT IN (SELECT content_id FROM version WHERE content_id IS NOT NULL)
""")

DELETE_UNREFERENCED_CHUNKS = _sql("""
    DELETE FROM chunk
    WHERE id NOT IN (SELECT chunk_id FROM content_chunk)
""")

# Live paths: those a member or version names, and all their ancestors (parent_id). One
# pass, however deep a removed subtree was.
DELETE_UNREFERENCED_PATHS = _sql("""
    WITH RECURSIVE live (id) AS (
        SELECT path_id FROM member
        UNION
        SELECT path_id FROM version
        UNION
        SELECT p.parent_id
        FROM path AS p
        JOIN live AS l ON p.id = l.id
        WHERE p.parent_id IS NOT NULL
    )
    DELETE FROM path
    WHERE id NOT IN (SELECT id FROM live)
""")

# Set-based like the other sweeps; the partial index version_by_xattrs holds only the
# versions that have a set.
DELETE_UNREFERENCED_XATTR_SETS = _sql("""
    DELETE FROM xattr_set
    WHERE id NOT IN (SELECT xattrs_id FROM version WHERE xattrs_id IS NOT NULL)
""")

# One fan-out directory's worth of chunk rows (sha256 in [lo, hi)): check and expire
# compare the catalog with the disk one directory at a time, so their memory is a 256th
# of the store's, however many chunks it holds. A range search of the sha256 index.
CHUNKS_IN_RANGE = _sql("""
    SELECT sha256, stored_length
    FROM chunk
    WHERE sha256 >= :lo
      AND sha256 < :hi
""")

UNREFERENCED_CHUNKS_IN_RANGE = _sql("""
    SELECT sha256, stored_length
    FROM chunk
    WHERE sha256 >= :lo
      AND sha256 < :hi
      AND id NOT IN (SELECT chunk_id FROM content_chunk)
""")

INTEGRITY_CHECK = "PRAGMA integrity_check"
QUICK_CHECK = "PRAGMA quick_check"
FOREIGN_KEY_CHECK = "PRAGMA foreign_key_check"

MEMBERS_WITHOUT_VERSION = _sql("""
    SELECT m.save_id, m.path_id, m.version_id
    FROM member AS m
    LEFT JOIN version AS v ON v.id = m.version_id
    WHERE v.id IS NULL
""")

MEMBERS_WITHOUT_PATH = _sql("""
    SELECT m.save_id, m.path_id
    FROM member AS m
    LEFT JOIN path AS p ON p.id = m.path_id
    WHERE p.id IS NULL
""")

VERSIONS_WITHOUT_PATH = _sql("""
    SELECT v.id, v.path_id
    FROM version AS v
    LEFT JOIN path AS p ON p.id = v.path_id
    WHERE p.id IS NULL
""")

VERSIONS_WITHOUT_XATTR_SET = _sql("""
    SELECT v.id, v.xattrs_id
    FROM version AS v
    LEFT JOIN xattr_set AS x ON x.id = v.xattrs_id
    WHERE v.xattrs_id IS NOT NULL
      AND x.id IS NULL
""")

RUNNING_SAVES = _sql("""
    SELECT id, hostname, subset, started_ns, writer_host, writer_pid
    FROM save
    WHERE status = 'running'
""")

# Every (chunk, content) pair in use, with the content's digest: check --read-data walks
# it content by content (each chunk read once, each content's digest verified).
CONTENT_CHUNKS_IN_ORDER = _sql("""
    SELECT cc.content_id, c.size, c.digest, k.sha256, k.length, k.id
    FROM content AS c
    JOIN content_chunk AS cc ON cc.content_id = c.id
    JOIN chunk AS k ON k.id = cc.chunk_id
    ORDER BY cc.content_id, cc.seq
""")

# Who references a chunk: the saves and paths, for grouped problem reports.
CHUNK_USERS = _sql("""
    SELECT DISTINCT m.save_id, p.key
    FROM chunk AS k
    JOIN content_chunk AS cc ON cc.chunk_id = k.id
    JOIN version AS v ON v.content_id = cc.content_id
    JOIN member AS m ON m.version_id = v.id
    JOIN path AS p ON p.id = m.path_id
    WHERE k.sha256 = :sha256
    ORDER BY m.save_id, p.key
    LIMIT :limit
""")


def _fanout_range(fanout: int) -> dict:
    """The sha256 range [lo, hi) of one fan-out byte; 33 x 0xff is above every sha256."""
    hi = bytes([fanout + 1]) if fanout < 255 else b"\xff" * 33
    return {"lo": bytes([fanout]), "hi": hi}


class Maintenance:
    """Deleting saves, sweeping what nothing references, checking, copying the catalog."""

    def delete_save(self, save_id: int) -> None:
        """Remove a save; its member rows go with it (ON DELETE CASCADE)."""
        self.conn.execute(DELETE_SAVE, {"save_id": save_id})

    def sweep_unreferenced_versions(self) -> None:
        """Delete versions and contents nothing references (inside a write transaction).
        Chunk rows stay until sweep_unreferenced_chunks(): see unreferenced_chunks_in()."""
        c = self.conn
        c.execute(DELETE_UNREFERENCED_VERSIONS)
        c.execute(DELETE_UNREFERENCED_CONTENTS)  # content_chunk rows cascade
        c.execute(DELETE_UNREFERENCED_XATTR_SETS)  # xattr rows cascade

    def sweep_unreferenced_chunks(self) -> None:
        """Delete the chunk and path rows nothing references (after the versions)."""
        c = self.conn
        c.execute(DELETE_UNREFERENCED_CHUNKS)
        c.execute(DELETE_UNREFERENCED_PATHS)

    def chunks_in(self, fanout: int) -> list[tuple[bytes, int]]:
        """(sha256, stored_length) of the chunk rows whose sha256 starts with byte FANOUT
        (the chunks of store directory chunks/%02x)."""
        return self._rows(CHUNKS_IN_RANGE, _fanout_range(fanout))

    def unreferenced_chunks_in(self, fanout: int) -> list[tuple[bytes, int]]:
        """Like chunks_in(), only the rows no content references any more."""
        return self._rows(UNREFERENCED_CHUNKS_IN_RANGE, _fanout_range(fanout))

    def _rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        """All rows of a check query; a damaged catalog becomes NotACatalog, not a crash."""
        try:
            return self.conn.execute(sql, params or {}).fetchall()
        except apsw.Error as e:
            raise NotACatalog(os.fsdecode(self.path), _root_cause(e)) from None

    def integrity_problems(self, quick: bool) -> list[str]:
        rows = self._rows(QUICK_CHECK if quick else INTEGRITY_CHECK)
        return [r[0] for r in rows if r[0] != "ok"]

    def foreign_key_problems(self) -> list[tuple]:
        return self._rows(FOREIGN_KEY_CHECK)

    def dangling_references(self) -> list[str]:
        """The references SQLite does not enforce (see migration 0001), found by anti-join."""
        out = [f"save {s} member path {p} names missing version {v}"
               for s, p, v in self._rows(MEMBERS_WITHOUT_VERSION)]
        out += [f"save {s} member names missing path {p}"
                for s, p in self._rows(MEMBERS_WITHOUT_PATH)]
        out += [f"version {v} names missing path {p}"
                for v, p in self._rows(VERSIONS_WITHOUT_PATH)]
        out += [f"version {v} names missing extended attribute set {x}"
                for v, x in self._rows(VERSIONS_WITHOUT_XATTR_SET)]
        return out

    def running_saves(self) -> list[tuple[int, str, str, int, str, int]]:
        return self._rows(RUNNING_SAVES)

    def content_chunks_in_order(self) -> Iterator[tuple[int, int, bytes, bytes, int, int]]:
        """(content id, size, digest, chunk sha256, chunk length, chunk id) in content
        order, each content's chunks in sequence."""
        try:
            yield from self.conn.execute(CONTENT_CHUNKS_IN_ORDER)
        except apsw.Error as e:
            raise NotACatalog(os.fsdecode(self.path), _root_cause(e)) from None

    def chunk_users(self, sha256: bytes, limit: int = 20) -> list[tuple[int, bytes]]:
        """(save id, path key) pairs that reference a chunk, at most LIMIT."""
        return self._rows(CHUNK_USERS, {"sha256": sha256, "limit": limit})

    def backup_to(self, dest: str) -> None:
        """Copy the whole catalog, consistently, into a new SQLite file DEST (backup API)."""
        out = apsw.Connection(dest)
        try:
            # no syncs of the copy while it is written: it is a temp name until the caller
            # (catalog_copy.make_copy) has fsynced the whole file and renamed it
            out.execute("PRAGMA synchronous = OFF")
            with out.backup("main", self.conn, "main") as b:
                b.step(-1)  # one step: one consistent snapshot even while saves commit
            out.execute("PRAGMA journal_mode = DELETE").fetchall()
        except apsw.Error as e:
            # SQLite may name a failed write 'disk I/O error', or even 'not an error' once
            # the backup is finished: the system's errno says what failed (ENOSPC, EIO)
            no = out.system_errno or (errno.ENOSPC if isinstance(e, apsw.FullError) else 0)
            if no:
                raise OSError(no, os.strerror(no), dest) from e
            raise
        finally:
            out.close()
