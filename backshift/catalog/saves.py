"""Saves: the save rows (insert, finish, mark, list, latest, series, roots) and digests.

A complete save's members digest (migration 0005) is computed and recorded here too."""

from __future__ import annotations

import os

import apsw

from ..model import SaveRow
from .conn import translate_error
from .sqltext import _sql

SAVE_COLUMNS = _sql("""
    id, hostname, subset, started_ns, finished_ns, status, files, bytes, bytes_read,
    bytes_borrowed, new_chunks, new_bytes_stored, warnings, tool_version, writer_host, writer_pid
""")

INSERT_SAVE = _sql("""
    INSERT INTO save (hostname, subset, started_ns, status, tool_version, writer_host, writer_pid)
    VALUES (:hostname, :subset, :started_ns, 'running', :tool_version, :writer_host, :writer_pid)
""")

UPDATE_SAVE_COUNTERS = _sql("""
    UPDATE save
    SET files = :files, bytes = :bytes, bytes_read = :bytes_read,
        bytes_borrowed = :bytes_borrowed, new_chunks = :new_chunks,
        new_bytes_stored = :new_bytes_stored, warnings = :warnings
    WHERE id = :save_id
""")

FINISH_SAVE = _sql("""
    UPDATE save
    SET status = :status, finished_ns = :finished_ns
    WHERE id = :save_id
""")

RUNNING_SAVES_OF_HOST = _sql("""
    SELECT id, writer_pid
    FROM save
    WHERE status = 'running'
      AND writer_host = :writer_host
""")

MARK_SAVE_INTERRUPTED = _sql("""
    UPDATE save
    SET status = 'interrupted'
    WHERE id = :save_id
      AND status = 'running'
""")

SET_SAVE_ROOTS = _sql("""
    UPDATE save
    SET roots = :roots
    WHERE id = :save_id
""")

PREVIOUS_SAVE_ROOTS = _sql("""
    SELECT roots
    FROM save
    WHERE hostname = :hostname AND subset = :subset AND id < :save_id
    ORDER BY started_ns DESC, id DESC
    LIMIT 1
""")

SERIES_EXISTS = _sql("""
    SELECT EXISTS (
        SELECT 1
        FROM save
        WHERE hostname = :hostname AND subset = :subset
    )
""")

PREVIOUS_SAVES_FOR_BORROWING = _sql("""
    SELECT id, started_ns FROM (
        SELECT id, started_ns
        FROM save
        WHERE hostname = :hostname AND subset = :subset AND id != :save_id
        ORDER BY started_ns DESC, id DESC
        LIMIT 1
    )
    UNION ALL
    SELECT id, started_ns FROM (
        SELECT id, started_ns
        FROM save
        WHERE hostname = :hostname AND subset = :subset AND id != :save_id
          AND status = 'complete'
        ORDER BY started_ns DESC, id DESC
        LIMIT 1
    )
    UNION ALL
    SELECT id, started_ns FROM (
        SELECT id, started_ns
        FROM save
        WHERE hostname = :hostname AND subset = :subset AND id != :save_id
        ORDER BY files DESC, started_ns ASC
        LIMIT 1
    )
""")

LIST_SAVES = _sql(f"""
    SELECT {SAVE_COLUMNS}
    FROM save
    WHERE (:hostname IS NULL OR hostname = :hostname)
      AND (:subset IS NULL OR subset = :subset)
    ORDER BY id
""")

GET_SAVE = _sql(f"""
    SELECT {SAVE_COLUMNS}
    FROM save
    WHERE id = :save_id
""")

LATEST_COMPLETE_SAVE_ID = _sql("""
    SELECT max(id)
    FROM save
    WHERE status = 'complete'
      AND (:hostname IS NULL OR hostname = :hostname)
      AND (:subset IS NULL OR subset = :subset)
""")

# -- import-legacy --
LEGACY_IDS = _sql("""
    SELECT legacy_id
    FROM save
    WHERE legacy_id IS NOT NULL
""")

IS_LEGACY_SAVE = _sql("""
    SELECT legacy_id IS NOT NULL
    FROM save
    WHERE id = :save_id
""")

INSERT_LEGACY_SAVE = _sql("""
    INSERT INTO save (hostname, subset, started_ns, status, tool_version, writer_host,
                      writer_pid, legacy_id)
    VALUES (:hostname, :subset, :started_ns, 'running', :tool_version, :writer_host,
            :writer_pid, :legacy_id)
""")

# -- save digests (migration 0005) --
# A save's members digest (migration 0005, scheme DIGEST_SCHEME) is the xxh3-128 of the
# concatenation of one DIGEST_RECORD per member, in key order: every field that shapes what
# `list` and `tar` make of the member (name, type and mode, owner ids and names, size, mtime,
# device numbers, link target, which content and attribute set, and for a hardlink
# candidate its group). The blobs' lengths come first, packed into one integer (20 bits for
# the key, 12 and 12 for the owner names: longer ones only make the packing ambiguous, never
# wrong), and nlink
# rides on the mode: list -v builds a record for every row, and each integer SQLite turns
# into text costs ~30 ns (the record adds ~0.5 us a row; 15 separate numbers cost ~0.7).
DIGEST_SCHEME = 1

DIGESTS_SINCE = 5  # the migration that adds save_digest (read-only opens do not migrate)

DIGEST_RECORD = _sql("""
    concat_ws(',',
              length(p.key) + (length(v.user) << 20) + (length(v.grp) << 32)
                  + (ifnull(length(v.link_target), -1) << 44),
              v.mode + (v.nlink << 16), v.uid, v.gid, v.size, v.mtime_ns, v.rdev,
              ifnull(v.content_id, -1), ifnull(v.xattrs_id, -1),
              CASE WHEN v.nlink > 1 THEN printf('%d,%d', v.dev, v.ino) END,
              p.key, v.user, v.grp, v.link_target)
""")

# A save's DIGEST_RECORDs in key order, one block for a key range (cut as listings are).
MEMBER_RECORDS_IN_KEY_RANGE = _sql(f"""
    SELECT CAST(group_concat(record, '') AS BLOB), count(*)
    FROM (
        SELECT {DIGEST_RECORD} AS record
        FROM path AS p
        CROSS JOIN member AS m
        JOIN version AS v ON v.id = m.version_id
        WHERE p.key >= :lo
          AND p.key < :hi
          AND m.save_id = :save_id
          AND m.path_id = p.id
        ORDER BY p.key
    ) AS r
""")

SAVE_DIGEST = _sql("""
    SELECT scheme, members, digest
    FROM save_digest
    WHERE save_id = :save_id
""")

INSERT_SAVE_DIGEST = _sql("""
    INSERT INTO save_digest (save_id, scheme, members, digest)
    VALUES (:save_id, :scheme, :members, :digest)
    ON CONFLICT (save_id) DO UPDATE
    SET scheme = excluded.scheme, members = excluded.members, digest = excluded.digest
""")

COMPLETE_SAVE_IDS = _sql("""
    SELECT id
    FROM save
    WHERE status = 'complete'
    ORDER BY id
""")

COMPLETE_SAVES_WITH_DIGESTS = _sql("""
    SELECT s.id, d.scheme, d.members, d.digest
    FROM save AS s
    LEFT JOIN save_digest AS d ON d.save_id = s.id
    WHERE s.status = 'complete'
    ORDER BY s.id
""")

DIGEST_BLOCK_PATHS = 8192  # paths (of any save) per block of records

# An unchanged re-save has the very member rows of an earlier complete save: its records,
# a function of the (path, version) rows its members name (rows never updated), are that
# save's, and so is its digest. SAME_MEMBERS_DIGEST finds the newest complete save with a
# digest of this scheme over as many members; MEMBERS_NOT_IN says whether SAVE_ID has a member
# that save does not (none, and as many members: the same set, one primary key probe a
# member, against ~11k instructions a member for the records). Reusing the earlier digest
# is no weaker than computing it: had a row been damaged since, the reused digest is
# that of the undamaged rows, and list and tar find the mismatch in both saves.
MEMBER_COUNT = _sql("""
    SELECT count(*)
    FROM member
    WHERE save_id = :save_id
""")

SAME_MEMBERS_DIGEST = _sql("""
    SELECT d.save_id, d.digest
    FROM save_digest AS d
    JOIN save AS s ON s.id = d.save_id
    WHERE d.save_id <> :save_id
      AND d.scheme = :scheme
      AND d.members = :members
      AND s.status = 'complete'
    ORDER BY d.save_id DESC
    LIMIT 1
""")

MEMBERS_NOT_IN = _sql("""
    SELECT EXISTS (
        SELECT 1
        FROM member AS a
        WHERE a.save_id = :save_id
          AND NOT EXISTS (SELECT 1
                          FROM member AS b
                          WHERE b.save_id = :other
                            AND b.path_id = a.path_id
                            AND b.version_id = a.version_id)
    )
""")


class MembersDigest:
    """A save's members digest as it is computed: DIGEST_RECORDs in, in key order."""

    __slots__ = ("_hash", "members")

    def __init__(self) -> None:
        import xxhash  # only commands that compute one need it

        self._hash = xxhash.xxh3_128()
        self.members = 0

    def row(self, record: bytes) -> None:
        self._hash.update(record)
        self.members += 1

    def block(self, records: bytes | None, count: int) -> None:
        if count:
            self._hash.update(records)
            self.members += count

    def digest(self) -> bytes:
        return self._hash.digest()


class Saves:
    """The save rows and their members digests."""

    def insert_save(self, hostname: str, subset: str, started_ns: int, tool_version: str,
                    writer_host: str, writer_pid: int) -> int:
        self.conn.execute(INSERT_SAVE, {
            "hostname": hostname, "subset": subset, "started_ns": started_ns,
            "tool_version": tool_version, "writer_host": writer_host, "writer_pid": writer_pid,
        })
        return self.conn.last_insert_rowid()

    def update_save_counters(self, save_id: int, **counters: int) -> None:
        self.conn.execute(UPDATE_SAVE_COUNTERS, {"save_id": save_id, **counters})

    def finish_save(self, save_id: int, status: str, finished_ns: int) -> None:
        """Set the save's final status; a complete save gets its members digest (in the
        same transaction: a save is complete only with it)."""
        if status == "complete":
            self.record_save_digest(save_id)
        self.conn.execute(FINISH_SAVE, {
            "save_id": save_id, "status": status, "finished_ns": finished_ns,
        })

    def running_saves_of_host(self, writer_host: str) -> list[tuple[int, int]]:
        return self.conn.execute(RUNNING_SAVES_OF_HOST, {"writer_host": writer_host}).fetchall()

    def mark_save_interrupted(self, save_id: int) -> None:
        self.conn.execute(MARK_SAVE_INTERRUPTED, {"save_id": save_id})

    def previous_saves_for_borrowing(self, hostname: str, subset: str,
                                     save_id: int) -> list[tuple[int, int]]:
        """(id, started_ns): the most recent, most recent complete, largest; no repeats."""
        seen: dict[int, int] = {}
        rows = self.conn.execute(PREVIOUS_SAVES_FOR_BORROWING, {
            "hostname": hostname, "subset": subset, "save_id": save_id,
        })
        for sid, started in rows:
            seen.setdefault(sid, started)
        return sorted(seen.items(), key=lambda item: item[1], reverse=True)

    def list_saves(self, hostname: str | None = None,
                   subset: str | None = None) -> list[SaveRow]:
        rows = self.conn.execute(LIST_SAVES, {"hostname": hostname, "subset": subset})
        return [SaveRow(*row) for row in rows]

    def get_save(self, save_id: int) -> SaveRow | None:
        row = self.conn.execute(GET_SAVE, {"save_id": save_id}).fetchone()
        return SaveRow(*row) if row else None

    def set_save_roots(self, save_id: int, roots: bytes) -> None:
        self.conn.execute(SET_SAVE_ROOTS, {"save_id": save_id, "roots": roots})

    def previous_save_roots(self, hostname: str, subset: str, save_id: int) -> bytes | None:
        """The roots of the series' save before SAVE_ID (None: none, or names from find)."""
        row = self.conn.execute(PREVIOUS_SAVE_ROOTS, {
            "hostname": hostname, "subset": subset, "save_id": save_id}).fetchone()
        return row[0] if row else None

    def has_series(self, hostname: str, subset: str) -> bool:
        """Whether any save of HOSTNAME/SUBSET exists (interrupted ones included)."""
        row = self.conn.execute(SERIES_EXISTS, {"hostname": hostname, "subset": subset})
        return bool(row.fetchone()[0])

    def latest_complete_save_id(self, hostname: str | None = None,
                                subset: str | None = None) -> int | None:
        """The newest (highest id) complete save, of HOSTNAME and SUBSET when given."""
        return self.conn.execute(LATEST_COMPLETE_SAVE_ID,
                                 {"hostname": hostname, "subset": subset}).fetchone()[0]

    # -- import-legacy --
    def legacy_ids(self) -> set[str]:
        """Backup ids of the backshift 1.x saves imported so far."""
        return {row[0] for row in self.conn.execute(LEGACY_IDS)}

    def is_legacy_save(self, save_id: int) -> bool:
        row = self.conn.execute(IS_LEGACY_SAVE, {"save_id": save_id}).fetchone()
        return bool(row and row[0])

    def insert_legacy_save(self, hostname: str, subset: str, started_ns: int,
                           tool_version: str, legacy_id: str, writer_host: str) -> int:
        """A save row for an imported legacy save (status set by finish_save at the end)."""
        self.conn.execute(INSERT_LEGACY_SAVE, {
            "hostname": hostname, "subset": subset, "started_ns": started_ns,
            "tool_version": tool_version, "writer_host": writer_host,
            "writer_pid": os.getpid(), "legacy_id": legacy_id,
        })
        return self.conn.last_insert_rowid()

    # -- save digests --
    def save_digest(self, save_id: int) -> tuple[int, int, bytes] | None:
        """(scheme, members, digest) recorded when the save completed; None: none recorded."""
        if self.schema < DIGESTS_SINCE:
            return None
        return self.conn.execute(SAVE_DIGEST, {"save_id": save_id}).fetchone()

    def members_digest(self, save_id: int) -> MembersDigest:
        """The save's members digest, computed from its rows as they are now."""
        out = MembersDigest()
        lo, hi = b"", b"\x01"
        try:
            while lo is not None:
                cut = self.path_key_after(lo, hi, DIGEST_BLOCK_PATHS)
                out.block(*self.conn.execute(MEMBER_RECORDS_IN_KEY_RANGE, {
                    "save_id": save_id, "lo": lo, "hi": cut if cut is not None else hi,
                }).fetchone())
                lo = cut
        except apsw.Error as e:  # a damaged page: NotACatalog (check reports it)
            raise translate_error(e, self.path) from None
        return out

    def record_save_digest(self, save_id: int) -> None:
        """Compute and store the save's members digest (inside a write transaction); the
        digest of an earlier save with the same members when there is one (above
        SAME_MEMBERS_DIGEST)."""
        found = self._same_members_digest(save_id)
        if found is None:
            computed = self.members_digest(save_id)
            found = (computed.members, computed.digest())
        self.conn.execute(INSERT_SAVE_DIGEST, {
            "save_id": save_id, "scheme": DIGEST_SCHEME, "members": found[0],
            "digest": found[1],
        })

    def _same_members_digest(self, save_id: int) -> tuple[int, bytes] | None:
        """(members, digest) of the newest complete save with SAVE_ID's very members."""
        c = self.conn
        try:
            members = c.execute(MEMBER_COUNT, {"save_id": save_id}).fetchone()[0]
            row = c.execute(SAME_MEMBERS_DIGEST, {
                "save_id": save_id, "scheme": DIGEST_SCHEME, "members": members}).fetchone()
            if row is None or c.execute(MEMBERS_NOT_IN, {
                    "save_id": save_id, "other": row[0]}).fetchone()[0]:
                return None
        except apsw.Error as e:  # a damaged page: NotACatalog (check reports it)
            raise translate_error(e, self.path) from None
        return members, row[1]

    def complete_saves_digests(self) -> list[tuple[int, int | None, int | None, bytes | None]]:
        """(save id, scheme, members, digest) of every complete save; None when it has none."""
        if self.schema < DIGESTS_SINCE:
            return [(sid, None, None, None) for (sid,) in self._rows(COMPLETE_SAVE_IDS)]
        return self._rows(COMPLETE_SAVES_WITH_DIGESTS)
