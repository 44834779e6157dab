"""A re-save's unchanged entries borrowed as set operations, a batch of names at a time.

The client half lstats a batch of names; the batch is staged in a TEMP table (one
executemany) and one statement joins it against the latest save's members and versions
(each name's path by the path key index, then its member and version by their keys): the
entries equal in every lstat field and trusted by the borrowing rules (ops/borrow.py) are
the matches. Their contents' chunk files not yet seen whole in this save are listed for the
caller to test; the members of the rest are inserted with one INSERT ... SELECT, and only
the names that did not match come back. The TEMP tables live as long as the connection
(they hold nothing of the catalog's, and a crash leaves nothing of them behind)."""

from __future__ import annotations

import apsw

from .sqltext import BULK_ROWS, _sql

# The staged names: rowid is the name's place in the batch (1, 2, ... in an emptied table).
# st_size is lstat's (a symlink's: its target's length); the rest as in a version row.
CREATE_BORROW_TABLES = (
    _sql("""
        CREATE TEMP TABLE IF NOT EXISTS borrow_offer (
            key      BLOB    NOT NULL,
            mode     INTEGER NOT NULL,
            uid      INTEGER NOT NULL,
            gid      INTEGER NOT NULL,
            user     BLOB    NOT NULL,
            grp      BLOB    NOT NULL,
            st_size  INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            dev      INTEGER NOT NULL,
            ino      INTEGER NOT NULL,
            nlink    INTEGER NOT NULL,
            rdev     INTEGER NOT NULL
        )
    """),
    # the matches of the batch: its place, the earlier member, its content (NULL: none)
    _sql("""
        CREATE TEMP TABLE IF NOT EXISTS borrow_match (
            seq        INTEGER PRIMARY KEY,
            path_id    INTEGER NOT NULL,
            version_id INTEGER NOT NULL,
            content_id INTEGER,
            size       INTEGER NOT NULL
        )
    """),
    # contents whose chunk files were all found sound during this save
    _sql("""
        CREATE TEMP TABLE IF NOT EXISTS borrow_whole (
            content_id INTEGER PRIMARY KEY
        )
    """),
)

CLEAR_BORROW_BATCH = (
    "DELETE FROM temp.borrow_offer",
    "DELETE FROM temp.borrow_match",
)

# {rows}: "(?, ?, ...)" once per row, the whole batch in one statement (executemany would
# look the statement up in apsw's cache again for every row: a fifth of the staging's cost)
STAGE_OFFER = _sql("""
    INSERT INTO temp.borrow_offer (key, mode, uid, gid, user, grp, st_size, mtime_ns,
                                   ctime_ns, dev, ino, nlink, rdev)
    VALUES {rows}
""")
STAGE_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
STAGE_ROW_VALUES = 13

# The borrowing rules of the fast path (Borrower.unchanged's before this statement): every
# field lstat gives equal to the latest save's version of the path (a regular file's size,
# the others' 0; a symlink's target length besides: it cannot change without a new ctime);
# a regular file has one link (hard links are grouped by the general path) and a content;
# no entry but a directory is racy (mtime or ctime at or after :trusted_before, the latest
# save's start less RACY_MARGIN_NS: it may have changed again within the timestamp
# granularity after it was read). CROSS JOIN pins the plan: each staged name, its path by
# the key index, its member and version by their primary keys.
MATCH_OFFER = _sql("""
    INSERT INTO temp.borrow_match (seq, path_id, version_id, content_id, size)
    SELECT o.rowid, p.id, v.id, v.content_id, v.size
    FROM temp.borrow_offer AS o
    CROSS JOIN path AS p
    CROSS JOIN member AS m
    CROSS JOIN version AS v
    WHERE p.key = o.key
      AND m.save_id = :latest
      AND m.path_id = p.id
      AND v.id = m.version_id
      AND v.mode = o.mode
      AND v.mtime_ns = o.mtime_ns
      AND v.ctime_ns = o.ctime_ns
      AND v.ino = o.ino
      AND v.dev = o.dev
      AND v.uid = o.uid
      AND v.gid = o.gid
      AND v.nlink = o.nlink
      AND v.rdev = o.rdev
      AND v.user = o.user
      AND v.grp = o.grp
      AND CASE o.mode & 0xF000
          WHEN 0x4000 THEN v.size = 0
          WHEN 0x8000 THEN v.size = o.st_size AND o.nlink = 1 AND v.content_id IS NOT NULL
                           AND o.mtime_ns < :trusted_before AND o.ctime_ns < :trusted_before
          WHEN 0xA000 THEN v.size = 0 AND length(v.link_target) = o.st_size
                           AND o.mtime_ns < :trusted_before AND o.ctime_ns < :trusted_before
          ELSE v.size = 0
               AND o.mtime_ns < :trusted_before AND o.ctime_ns < :trusted_before
          END
""")

# The chunk files of the matched contents not yet found whole in this save: the caller
# tests each (Store.chunk_test: one lstat) before the members are inserted. Not DISTINCT:
# two names of one content in a batch are rare, a temp b-tree for every batch is not.
MATCHED_CHUNKS = _sql("""
    SELECT b.content_id, lower(hex(k.sha256)), k.stored_length
    FROM temp.borrow_match AS b
    CROSS JOIN content_chunk AS cc
    CROSS JOIN chunk AS k
    WHERE b.content_id IS NOT NULL
      AND b.content_id NOT IN (SELECT content_id FROM temp.borrow_whole)
      AND cc.content_id = b.content_id
      AND k.id = cc.chunk_id
""")

DROP_MATCHES_OF_CONTENT = _sql("""
    DELETE FROM temp.borrow_match
    WHERE content_id = :content_id
""")

REMEMBER_WHOLE = _sql("""
    INSERT OR IGNORE INTO temp.borrow_whole (content_id)
    SELECT content_id
    FROM temp.borrow_match
    WHERE content_id IS NOT NULL
""")

FORGET_WHOLE = "DELETE FROM temp.borrow_whole"

# WHERE true: an INSERT ... SELECT with an upsert clause needs one (SQLite's parser)
INSERT_MATCHED_MEMBERS = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    SELECT :save_id, path_id, version_id
    FROM temp.borrow_match
    WHERE true
    ORDER BY seq
    ON CONFLICT DO NOTHING
""")

MATCHED_MEMBERS = _sql("""
    SELECT seq, path_id, version_id, content_id, size
    FROM temp.borrow_match
    ORDER BY seq
""")

MATCHED_TOTALS = _sql("""
    SELECT count(*), count(content_id), coalesce(sum(size), 0)
    FROM temp.borrow_match
""")

UNMATCHED_OFFER = _sql("""
    SELECT o.rowid
    FROM temp.borrow_offer AS o
    WHERE o.rowid NOT IN (SELECT seq FROM temp.borrow_match)
    ORDER BY o.rowid
""")

# For each staged name that did not match: its path's id and its directory's (the path's
# parent_id), and its version in each candidate save ({marks}: their ids) that holds it
# (NULLs: none does); no row when the catalog lacks the path. The general path's questions
# about the name (Borrower.previous_version: kept_xattrs, borrow, reusable_version) are then
# answered from these rows, not from a listing of its whole directory per candidate save.
UNMATCHED_PREVIOUS = _sql("""
    SELECT o.rowid, p.id, p.parent_id, m.save_id, v.id, v.mode, v.uid, v.gid, v.user, v.grp,
           v.size, v.mtime_ns, v.ctime_ns, v.dev, v.ino, v.nlink, v.rdev, v.link_target,
           v.content_id, v.xattrs_id
    FROM temp.borrow_offer AS o
    CROSS JOIN path AS p
    LEFT JOIN member AS m ON m.save_id IN ({marks}) AND m.path_id = p.id
    LEFT JOIN version AS v ON v.id = m.version_id
    WHERE o.rowid NOT IN (SELECT seq FROM temp.borrow_match)
      AND p.key = o.key
""")

INSERT_MEMBER_ONCE = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    VALUES (:save_id, :path_id, :version_id)
    ON CONFLICT DO NOTHING
""")


class Borrowing:
    """The set path of a re-save: stage a batch, match it, insert the members of the matches."""

    def stage_offer(self, values: list) -> None:
        """Stage the rows of VALUES (flat: key, mode, uid, gid, user, group, st_size,
        mtime_ns, ctime_ns, dev, ino, nlink, rdev, then the next row's) as the batch, in
        order; the previous batch is dropped. The TEMP tables are made on first use (again
        if a rollback took them)."""
        c = self.conn
        try:
            for sql in CLEAR_BORROW_BATCH:
                c.execute(sql)
        except apsw.SQLError:  # no such table
            for sql in CREATE_BORROW_TABLES:
                c.execute(sql)
        n = len(values) // STAGE_ROW_VALUES
        step = BULK_ROWS * 4  # 13,312 variables a statement at most (SQLite allows 32,766)
        for i in range(0, n, step):
            part = min(step, n - i)
            c.execute(STAGE_OFFER.format(rows=",".join([STAGE_ROW] * part)),
                      values[i * STAGE_ROW_VALUES:(i + part) * STAGE_ROW_VALUES])

    def match_offer(self, latest: int, trusted_before: int) -> None:
        """Match the staged batch against save LATEST's versions (the rules above MATCH_OFFER)."""
        self.conn.execute(MATCH_OFFER, {"latest": latest, "trusted_before": trusted_before})

    def matched_chunks(self) -> list[tuple[int, str, int]]:
        """(content id, chunk name: sha256 in lowercase hex, stored length) of the matches'
        contents not yet found whole in this save."""
        return self.conn.execute(MATCHED_CHUNKS).fetchall()

    def drop_matches_of(self, content_ids: set[int]) -> None:
        """Unmatch the names whose content has a chunk file missing or unsound."""
        for content_id in content_ids:
            self.conn.execute(DROP_MATCHES_OF_CONTENT, {"content_id": content_id})

    def remember_whole(self) -> int:
        """The matches' contents are whole: not tested again in this save; how many were
        new to the set."""
        self.conn.execute(REMEMBER_WHOLE)
        return self.conn.changes()

    def forget_whole(self) -> None:
        """Start the set of contents found whole afresh (it grew past its bound)."""
        self.conn.execute(FORGET_WHOLE)

    def matched_totals(self) -> tuple[int, int, int]:
        """(matches, matches with a content, their bytes)."""
        return self.conn.execute(MATCHED_TOTALS).fetchone()

    def unmatched_offer(self) -> list[int]:
        """The places (from 1) in the batch of the names that did not match."""
        return [r[0] for r in self.conn.execute(UNMATCHED_OFFER)]

    def unmatched_previous(self, save_ids: list[int]) -> list[tuple]:
        """(place in the batch, path id, parent id, save id, version id, the version's
        fields as Version orders them) of the staged names that did not match, one row per
        save of SAVE_IDS holding the path (save id and on None when none does); none for a
        path the catalog lacks."""
        sql = UNMATCHED_PREVIOUS.format(marks=",".join("?" * len(save_ids)))
        return self.conn.execute(sql, save_ids).fetchall()

    def insert_matched_members(self, save_id: int, matches: int) -> list[int]:
        """Record the MATCHES matches as members of SAVE_ID in one statement; the places in
        the batch of those not recorded because the save held that path already (a path
        given twice: usually none)."""
        c = self.conn
        held: list[int] = []
        with self.savepoint("borrow_members"):
            before = c.total_changes()
            c.execute(INSERT_MATCHED_MEMBERS, {"save_id": save_id})
            if c.total_changes() - before != matches:  # a duplicate: find which, in order
                c.execute("ROLLBACK TO borrow_members")
                for seq, path_id, version_id, _cid, _size in \
                        c.execute(MATCHED_MEMBERS).fetchall():
                    c.execute(INSERT_MEMBER_ONCE, {"save_id": save_id, "path_id": path_id,
                                                   "version_id": version_id})
                    if c.changes() != 1:
                        held.append(seq)
        return held
