"""Reports: totals of a save and of the repository, diff of two saves, a path's history.

Read-only queries of the stats, diff and history commands."""

from __future__ import annotations

from collections.abc import Iterator

from .sqltext import _sql

# Path text from a key ('/' for NUL), as in the `files` view: replace() cannot search for NUL,
# json_quote spells it \u0000 (see migrations/0002).
PATH_TEXT_OF_KEY = _sql(r"""
    CASE WHEN p.key = x'' THEN '/'
         ELSE replace(replace(replace(json_quote(CAST(p.key AS TEXT)), '\\', char(1)),
                  '\u0000', '/'), char(1), '\\') ->> '$' END
""")

REPORT_SAVE_TOTALS = _sql("""
    WITH held AS (
        SELECT v.mode, v.size, v.content_id
        FROM member AS m
        JOIN version AS v ON v.id = m.version_id
        WHERE m.save_id = :save_id
    ),
    used AS (
        SELECT DISTINCT cc.chunk_id
        FROM (SELECT DISTINCT content_id FROM held WHERE content_id IS NOT NULL) AS c
        JOIN content_chunk AS cc ON cc.content_id = c.content_id
    )
    SELECT (SELECT count(*) FROM held),
           (SELECT coalesce(sum(size), 0) FROM held WHERE mode & 61440 = 32768),
           count(*), coalesce(sum(k.length), 0), coalesce(sum(k.stored_length), 0)
    FROM used
    JOIN chunk AS k ON k.id = used.chunk_id
""")

REPORT_REPOSITORY_TOTALS = _sql("""
    SELECT (SELECT count(*) FROM member),
           (SELECT coalesce(sum(v.size), 0)
            FROM member AS m
            JOIN version AS v ON v.id = m.version_id
            WHERE v.mode & 61440 = 32768),
           count(*), coalesce(sum(length), 0), coalesce(sum(stored_length), 0)
    FROM chunk
""")

REPORT_NEW_BYTES = _sql("""
    SELECT coalesce(sum(new_bytes_stored), 0)
    FROM save
""")

# Both saves' members in path-key order: one walk of the key index with two primary-key
# probes per path, so the differences stream out already sorted (no sort, no sets).
DIFF_VERSION_COLUMNS = ("id, mode, uid, gid, user, grp, size, mtime_ns, link_target, content_id, "
                        "xattrs_id")

DIFF_SAVES = _sql(f"""
    SELECT p.key,
           {", ".join("va." + c for c in DIFF_VERSION_COLUMNS.split(", "))},
           {", ".join("vb." + c for c in DIFF_VERSION_COLUMNS.split(", "))}
    FROM path AS p
    LEFT JOIN member AS a ON a.save_id = :old_id AND a.path_id = p.id
    LEFT JOIN member AS b ON b.save_id = :new_id AND b.path_id = p.id
    LEFT JOIN version AS va ON va.id = a.version_id
    LEFT JOIN version AS vb ON vb.id = b.version_id
    WHERE p.key >= :lo AND p.key < :hi
      AND a.version_id IS NOT b.version_id
    ORDER BY p.key
""")

# Every save holding one path: the saves are few, so probe member's primary key once per
# save (CROSS JOIN keeps save outermost); member is never scanned.
PATH_HISTORY = _sql("""
    SELECT s.id, s.hostname, s.subset, s.started_ns, v.mode, v.size, v.mtime_ns,
           lower(hex(c.digest)), v.content_id, v.link_target
    FROM save AS s
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    LEFT JOIN content AS c ON c.id = v.content_id
    WHERE m.save_id = s.id
      AND m.path_id = :path_id
      AND (:hostname IS NULL OR s.hostname = :hostname)
      AND (:subset IS NULL OR s.subset = :subset)
    ORDER BY s.started_ns, s.id
""")


class Reports:
    """Totals, diff and history."""

    def save_totals(self, save_id: int) -> tuple[int, int, int, int, int]:
        """(files, logical bytes, distinct chunks, their length, their stored length)."""
        return self.conn.execute(REPORT_SAVE_TOTALS, {"save_id": save_id}).fetchone()

    def repository_totals(self) -> tuple[int, int, int, int, int, int]:
        """As save_totals over every save and every chunk, plus bytes the saves wrote."""
        row = self.conn.execute(REPORT_REPOSITORY_TOTALS).fetchone()
        return (*row, self.conn.execute(REPORT_NEW_BYTES).fetchone()[0])

    def diff_saves(self, old_id: int, new_id: int, lo: bytes, hi: bytes) -> Iterator[tuple]:
        """Paths whose version differs between two saves in key order: key, old, new."""
        yield from self.conn.execute(DIFF_SAVES, {
            "old_id": old_id, "new_id": new_id, "lo": lo, "hi": hi,
        })

    def path_history(self, path_id: int, hostname: str | None,
                     subset: str | None) -> Iterator[tuple]:
        yield from self.conn.execute(PATH_HISTORY, {
            "path_id": path_id, "hostname": hostname, "subset": subset,
        })
