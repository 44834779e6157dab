"""A save's members by key range: entries, listing lines and blocks, find.

The SQL `list`, `tar` and `find` stream from (one walk of the key index per range)."""

from __future__ import annotations

from collections.abc import Iterator

from .reports import PATH_TEXT_OF_KEY
from .saves import DIGEST_RECORD
from .sqltext import _slices, _sql

# -- listing and tar --
# A save is traversed from the path table in key (depth-first) order, probing member by its
# primary key for each path: an index range, never a scan of the save. CROSS JOIN pins that
# loop order (path outside), so ORDER BY key needs no sort. The path table holds the paths of
# every save; paths of other saves cost one probe each.

# The last column is the member's DIGEST_RECORD where a digest is computed, else NULL.
ENTRY_COLUMNS = _sql("""
    p.id, p.key, v.mode, v.uid, v.gid, v.user, v.grp, v.size, v.mtime_ns, v.dev, v.ino,
    v.nlink, v.rdev, v.link_target, v.content_id, c.digest, v.xattrs_id, c.size, NULL
""")

ENTRY_COLUMNS_WITH_RECORD = ENTRY_COLUMNS.replace(", NULL", f", CAST({DIGEST_RECORD} AS BLOB)")

ENTRIES_IN_KEY_RANGE = _sql(f"""
    SELECT {ENTRY_COLUMNS}
    FROM path AS p
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    LEFT JOIN content AS c ON c.id = v.content_id
    WHERE p.key >= :lo
      AND p.key < :hi
      AND m.save_id = :save_id
      AND m.path_id = p.id
    ORDER BY p.key
""")

ENTRIES_IN_KEY_RANGE_RECORDS = ENTRIES_IN_KEY_RANGE.replace(ENTRY_COLUMNS,
                                                            ENTRY_COLUMNS_WITH_RECORD)

# The chunks of the regular files in a key range, in the order of ENTRIES_IN_KEY_RANGE (the
# same loops, then the content's chunks by primary key in seq order: still no sort). The tar
# producer walks it beside the plan: one streaming query instead of one per file.
CHUNKS_IN_KEY_RANGE = _sql("""
    SELECT p.key, k.sha256, k.length, k.stored_length
    FROM path AS p
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    JOIN content_chunk AS cc ON cc.content_id = v.content_id
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE p.key >= :lo
      AND p.key < :hi
      AND m.save_id = :save_id
      AND m.path_id = p.id
    ORDER BY p.key, cc.seq
""")

ENTRY_AT_KEY = _sql(f"""
    SELECT {ENTRY_COLUMNS}
    FROM path AS p
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    LEFT JOIN content AS c ON c.id = v.content_id
    WHERE p.key = :key
      AND m.save_id = :save_id
      AND m.path_id = p.id
""")

FIRST_PATH_IN_KEY_RANGE = _sql("""
    SELECT p.key
    FROM path AS p
    WHERE p.key >= :lo
      AND p.key < :hi
    ORDER BY p.key
    LIMIT 1
""")

WHERE_PREDICATE_MATCHES = """
    SELECT 1
    FROM files
    WHERE save_id = :save_id
      AND path_id = :path_id
      AND ({predicate}
      )
"""

# -- listing text --
# `list` / `list -v` of a key range as finished `tar -tf` / `tar -tvf` lines, so that Python
# touches only the rare rows it must. LISTING_LINES gives (line, path_id, flag) in key order:
# flag NULL: `line` is the member's line, newline included, with the name still in key form
#   (NUL between components): ops/listfast.py turns NUL into '/' for a whole block at once
#   and checks the block for bytes GNU tar would quote (cheaper there than a GLOB here).
# flag 'p': Python formats the member (root, a device, a hardlink candidate, an owner with a
#   NUL, a time SQLite's localtime cannot match, a `user/group size` wider than :width).
# flag 'd': a non-directory with some path below it: Python asks whether a member is.
# flag 'a': a row the planner refuses or warns about: Python hands the listing to it.
# :width is GNU tar's `user/group size` width so far; it only grows.
# SQLite's 'localtime' calls the C library's localtime_r like tar, but maps years outside
# 1970-2037 to another year: those rows are flagged.

LISTING_FLAG = _sql("""
    CASE
        WHEN p.key = x'' THEN 'p'
        WHEN instr(p.key, x'2f') > 0 OR instr(p.key, x'0000') > 0
          OR substr(p.key, -1) = x'00'
          OR (instr(p.key, x'002e') > 0
              AND (instr(CAST(p.key || x'00' AS BLOB), x'002e00') > 0
                   OR instr(CAST(p.key || x'00' AS BLOB), x'002e2e00') > 0))
          OR (v.mode & 61440) NOT IN (32768, 16384, 40960, 8192, 24576, 4096)
          OR ((v.mode & 61440) = 32768 AND v.size < 0)
          OR ((v.mode & 61440) = 40960 AND (v.link_target IS NULL
              OR length(v.link_target) = 0 OR instr(v.link_target, x'00') > 0)) THEN 'a'
        WHEN (v.mode & 61440) <> 16384 AND EXISTS (
            SELECT 1
            FROM path AS d
            WHERE d.key > p.key
              AND d.key < CAST(p.key || x'01' AS BLOB)) THEN 'd'
        WHEN instr(v.user, x'00') > 0 OR instr(v.grp, x'00') > 0 THEN 'p'
        {verbose_flags}
    END
""")

LISTING_VERBOSE_FLAGS = _sql("""
        WHEN (v.mode & 61440) IN (8192, 24576)
          OR ((v.mode & 61440) = 32768 AND v.nlink > 1) THEN 'p'
        WHEN v.mtime_ns < 0 OR v.mtime_ns >= 2145916800000000000 THEN 'p'
        WHEN CASE WHEN v.user = x'' THEN length(CAST(v.uid AS TEXT)) ELSE length(v.user) END
             + CASE WHEN v.grp = x'' THEN length(CAST(v.gid AS TEXT)) ELSE length(v.grp) END
             + CASE WHEN (v.mode & 61440) = 32768 THEN length(CAST(v.size AS TEXT)) ELSE 1 END
             + 2 > :width THEN 'p'
""")


def _listing_rows(verbose_flags: str, record: str = "") -> str:
    flag = LISTING_FLAG.format(verbose_flags=verbose_flags)
    return _sql(f"""
        SELECT p.id AS path_id, p.key AS key, v.mode AS mode, v.mode & 61440 AS kind,
               v.size AS size, v.mtime_ns AS mtime_ns, v.link_target AS target,
               CASE WHEN v.user = x'' THEN CAST(v.uid AS TEXT) ELSE v.user END || '/' ||
               CASE WHEN v.grp = x'' THEN CAST(v.gid AS TEXT) ELSE v.grp END AS owner,
               {flag} AS flag{record}
        FROM path AS p
        CROSS JOIN member AS m
        JOIN version AS v ON v.id = m.version_id
        WHERE p.key >= :lo
          AND p.key < :hi
          AND m.save_id = :save_id
          AND m.path_id = p.id
        ORDER BY p.key
    """)


# The mode string: the type letter, then the nine rwx/sStT letters of mode & 0o7777 cut
# from :modes, the 4096 strings of 9 bytes that ops/listformat.py makes (one substr of a blob
# is cheaper than four of text). The date: datetime() is cheaper than strftime().
LISTING_LINE_VERBOSE = _sql("""
    concat(substr('?pc?d?b?-?l?s???', (kind >> 12) + 1, 1),
           substr(:modes, (mode & 4095) * 9 + 1, 9), ' ',
           owner, ' ',
           printf('%*s', :width - length(CAST(owner AS BLOB)) - 1,
                  CASE kind WHEN 32768 THEN size ELSE 0 END), ' ',
           substr(datetime(mtime_ns / 1000000000, 'unixepoch', 'localtime'), 1, 16), ' ',
           substr(key, 2),
           CASE kind WHEN 16384 THEN '/' WHEN 40960 THEN ' -> ' || target END,
           x'0a')
""")

LISTING_LINE_NAME = "concat(substr(key, 2), CASE kind WHEN 16384 THEN '/' END, x'0a')"


def _listing_lines(line: str, verbose_flags: str) -> str:
    return (f"SELECT CASE WHEN flag IS NULL THEN CAST({line} AS BLOB) END,\n"
            f"       path_id,\n"
            f"       flag\n"
            f"FROM ({_listing_rows(verbose_flags)}) AS r")


LISTING_LINES_VERBOSE = _listing_lines(LISTING_LINE_VERBOSE, LISTING_VERBOSE_FLAGS)

LISTING_LINES_NAMES = _listing_lines(LISTING_LINE_NAME, "")


# LISTING_BLOCK gives the same lines as one row for a whole key range: (lines, marks, rows).
# `lines` holds every plain member's line and an empty line ("\n") in place of each flagged
# one; `marks` the flagged rows in order, as flag || path_id separated by commas (NULL when
# none); `rows` how many members (lines) there are. One row instead of thousands: the
# query runs without giving the GIL back at every row, so two of them really run on two
# cores, and Python builds no tuple per member. group_concat takes the rows in the order
# the subquery yields them: key order, from the path index the CROSS JOIN makes the outer
# loop (the plan tests in test_list_fast.py check that). A plain line is never empty: the
# empty name (key x'00') is flagged 'a'.
# With records: a fourth column, the block's DIGEST_RECORDs (for a whole save's listing).
def _listing_block(line: str, verbose_flags: str, records: bool = False) -> str:
    record = f",\n       {DIGEST_RECORD} AS record" if records else ""
    fourth = ",\n       CAST(group_concat(record, '') AS BLOB)" if records else ""
    return (f"SELECT CAST(group_concat(CASE WHEN flag IS NULL THEN CAST({line} AS BLOB)\n"
            f"                                  ELSE x'0a' END, '') AS BLOB),\n"
            f"       group_concat(flag || path_id, ','),\n"
            f"       count(*){fourth}\n"
            f"FROM ({_listing_rows(verbose_flags, record)}) AS r")


LISTING_BLOCK_VERBOSE = _listing_block(LISTING_LINE_VERBOSE, LISTING_VERBOSE_FLAGS)

LISTING_BLOCK_NAMES = _listing_block(LISTING_LINE_NAME, "")

LISTING_BLOCK_VERBOSE_RECORDS = _listing_block(LISTING_LINE_VERBOSE, LISTING_VERBOSE_FLAGS, True)

LISTING_BLOCK_NAMES_RECORDS = _listing_block(LISTING_LINE_NAME, "", True)

PATH_KEY_AFTER = _sql("""
    SELECT p.key
    FROM path AS p
    WHERE p.key >= :lo
      AND p.key < :hi
    ORDER BY p.key
    LIMIT 1 OFFSET :count
""")

ENTRIES_OF_PATH_IDS = _sql(f"""
    SELECT {ENTRY_COLUMNS}
    FROM path AS p
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    LEFT JOIN content AS c ON c.id = v.content_id
    WHERE p.id IN ({{marks}})
      AND m.save_id = ?
      AND m.path_id = p.id
""")

ENTRY_OF_PATH_ID = _sql(f"""
    SELECT {ENTRY_COLUMNS}
    FROM path AS p
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    LEFT JOIN content AS c ON c.id = v.content_id
    WHERE p.id = :path_id
      AND m.save_id = :save_id
      AND m.path_id = p.id
""")

# -- find --
# Matching paths come from the distinct path table (a key range when the glob starts with a
# directory), then one member probe per save; newest save first.
FIND_PATHS = _sql(f"""
    SELECT s.id, s.hostname, s.subset, s.started_ns, p.key, v.mode, v.size, v.mtime_ns
    FROM path AS p
    CROSS JOIN save AS s
    CROSS JOIN member AS m
    JOIN version AS v ON v.id = m.version_id
    WHERE p.key >= :lo AND p.key < :hi
      AND (:name_glob IS NULL OR CAST(p.name AS TEXT) GLOB CAST(:name_glob AS TEXT))
      AND (:path_glob IS NULL OR ({PATH_TEXT_OF_KEY}) GLOB CAST(:path_glob AS TEXT))
      AND (:save_id IS NULL OR s.id = :save_id)
      AND (:since_ns IS NULL OR s.started_ns >= :since_ns)
      AND m.save_id = s.id
      AND m.path_id = p.id
    ORDER BY s.started_ns DESC, s.id DESC, p.key
""")


class Members:
    """Members of a save read by key range, listing lines built by SQLite, find."""

    def entries_in_key_range(self, save_id: int, lo: bytes, hi: bytes,
                             records: bool = False) -> Iterator[tuple]:
        """Rows (ENTRY_COLUMNS) of the save's members with lo <= key < hi, in key order;
        with RECORDS, their DIGEST_RECORDs in the last column."""
        sql = ENTRIES_IN_KEY_RANGE_RECORDS if records else ENTRIES_IN_KEY_RANGE
        yield from self.conn.execute(sql, {"save_id": save_id, "lo": lo, "hi": hi})

    def chunks_in_key_range(self, save_id: int, lo: bytes,
                            hi: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
        """(key, sha256, length, stored_length) of the chunks of the save's members with
        lo <= key < hi, in key order and each content's chunk order."""
        yield from self.conn.execute(CHUNKS_IN_KEY_RANGE,
                                     {"save_id": save_id, "lo": lo, "hi": hi})

    def entry_at_key(self, save_id: int, key: bytes) -> tuple | None:
        return self.conn.execute(ENTRY_AT_KEY, {"save_id": save_id, "key": key}).fetchone()

    def first_path_in_key_range(self, lo: bytes, hi: bytes) -> bytes | None:
        """The smallest path key in [lo, hi) of any save (for stepping over subtrees)."""
        row = self.conn.execute(FIRST_PATH_IN_KEY_RANGE, {"lo": lo, "hi": hi}).fetchone()
        return row[0] if row else None

    def listing_lines(self, save_id: int, lo: bytes, hi: bytes, width: int,
                      modes: bytes | None) -> Iterator[tuple]:
        """(line, path_id, flag) of the members with lo <= key < hi, in key order (see
        LISTING_LINES_VERBOSE); a plain member's line is done but for NUL -> '/'. MODES:
        the 9-letter mode strings of 0..0o7777 for long lines, None for names only."""
        params = {"save_id": save_id, "lo": lo, "hi": hi}
        if modes is None:  # names only (tar -tf)
            return self.conn.execute(LISTING_LINES_NAMES, params)
        params.update(width=width, modes=modes)
        return self.conn.execute(LISTING_LINES_VERBOSE, params)

    def listing_block(self, save_id: int, lo: bytes, hi: bytes, width: int,
                      modes: bytes | None, records: bool = False) -> tuple:
        """listing_lines for [lo, hi) in one row: (lines, marks, rows) of LISTING_BLOCK,
        and with RECORDS the block's DIGEST_RECORDs as a fourth column."""
        params = {"save_id": save_id, "lo": lo, "hi": hi}
        if modes is None:
            sql = LISTING_BLOCK_NAMES_RECORDS if records else LISTING_BLOCK_NAMES
            return self.conn.execute(sql, params).fetchone()
        params.update(width=width, modes=modes)
        sql = LISTING_BLOCK_VERBOSE_RECORDS if records else LISTING_BLOCK_VERBOSE
        return self.conn.execute(sql, params).fetchone()

    def path_key_after(self, lo: bytes, hi: bytes, count: int) -> bytes | None:
        """The key COUNT paths (of any save) past lo in [lo, hi), None when there are
        fewer: where to cut a listing into chunks."""
        row = self.conn.execute(PATH_KEY_AFTER, {"lo": lo, "hi": hi, "count": count}).fetchone()
        return row[0] if row else None

    def entries_of_path_ids(self, save_id: int, path_ids: list[int]) -> dict[int, tuple]:
        """entry_of_path_id for many paths at once: {path_id: row} of those in the save."""
        out = {}
        for part in _slices(path_ids):
            sql = ENTRIES_OF_PATH_IDS.format(marks=",".join("?" * len(part)))
            for row in self.conn.execute(sql, [*part, save_id]):
                out[row[0]] = row
        return out

    def entry_of_path_id(self, save_id: int, path_id: int) -> tuple | None:
        return self.conn.execute(ENTRY_OF_PATH_ID,
                                 {"save_id": save_id, "path_id": path_id}).fetchone()

    def explain(self, sql: str, params: dict) -> list[str]:
        """The EXPLAIN QUERY PLAN details of a statement of this module (for tests)."""
        return [row[3] for row in self.conn.execute("EXPLAIN QUERY PLAN " + sql, params)]

    def find_paths(self, lo: bytes, hi: bytes, name_glob: bytes | None,
                   path_glob: bytes | None, save_id: int | None,
                   since_ns: int | None) -> Iterator[tuple]:
        yield from self.conn.execute(FIND_PATHS, {
            "lo": lo, "hi": hi, "name_glob": name_glob, "path_glob": path_glob,
            "save_id": save_id, "since_ns": since_ns,
        })
