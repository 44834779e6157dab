"""The SQLite catalog: every SQL statement backshift runs, behind methods named by intent."""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Iterator

import apsw

from .crashpoints import crashpoint
from .errors import (
    BackshiftError,
    CatalogTooNew,
    NotACatalog,
    RepositoryIOError,
    RepositoryLocked,
    RepositoryNotFound,
)
from .model import ChunkRef, SaveRow, Version


def _without_memory_statistics() -> None:
    """Turn off SQLite's memory statistics (SQLITE_CONFIG_MEMSTATUS), before any connection.

    With them on, every allocation SQLite makes takes one process-wide mutex to count it,
    so connections on several threads queue on it: `list -v`'s two fetcher threads ran
    their blocks at half speed each (17-24 ms for 4,096 rows where one alone takes 8.5),
    and the listing of bench `mixed` took 114 ms instead of 100. backshift reads none of
    those statistics, nor sets a soft or hard heap limit, which need them. The library must
    be shut down to be configured: only when no connection is open yet (at import, as the
    CLI imports this module), else it stays as it is."""
    if apsw.connections():
        return
    apsw.shutdown()
    try:
        apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0)
    finally:
        apsw.initialize()


_without_memory_statistics()

APPLICATION_ID = 0x42534854  # 'BSHT'
CATALOG_NAME = b"catalog.sqlite3"
WRITER_BUSY_MS = 60_000
READER_BUSY_MS = 5_000
CHECKPOINT_BUSY_MS = 200


def _sql(text: str) -> str:
    """TEXT without its common indentation and outer blank lines (textwrap.dedent for the
    space-indented constants here; textwrap's regular expressions cost start-up time)."""
    lines = text.split("\n")
    indent = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()),
                 default=0)
    return "\n".join(line[indent:] if line.strip() else "" for line in lines).strip()


def _migrations_dir() -> str:
    """The folder of the package backshift.migrations (setuptools maps the top-level
    migrations/ there). A directory listing reads it, also in an editable install, without
    importlib.resources and all it imports at start-up."""
    package = importlib.import_module(f"{__package__}.migrations")
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


# -- statements ----------------------------------------------------------------------------

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

PATH_ID_BY_KEY = _sql("""
    SELECT id
    FROM path
    WHERE key = :key
""")

INSERT_PATH = _sql("""
    INSERT INTO path (parent_id, key, name)
    VALUES (:parent_id, :key, :name)
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

INSERT_VERSION = _sql("""
    INSERT INTO version (path_id, mode, uid, gid, user, grp, size, mtime_ns, ctime_ns, dev,
                         ino, nlink, rdev, link_target, content_id, xattrs_id)
    VALUES (:path_id, :mode, :uid, :gid, :user, :grp, :size, :mtime_ns, :ctime_ns, :dev,
            :ino, :nlink, :rdev, :link_target, :content_id, :xattrs_id)
""")

INSERT_MEMBER = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    VALUES (:save_id, :path_id, :version_id)
    ON CONFLICT DO NOTHING
""")

CONTENT_BY_DIGEST = _sql("""
    SELECT id
    FROM content
    WHERE digest = :digest
      AND size = :size
""")

INSERT_CONTENT = _sql("""
    INSERT INTO content (size, digest, chunk_count)
    VALUES (:size, :digest, :chunk_count)
""")

CHUNK_ID_BY_SHA = _sql("""
    SELECT id
    FROM chunk
    WHERE sha256 = :sha256
""")

INSERT_CHUNK = _sql("""
    INSERT INTO chunk (sha256, length, stored_length)
    VALUES (:sha256, :length, :stored_length)
""")

UPDATE_CHUNK_STORED_LENGTH = _sql("""
    UPDATE chunk
    SET stored_length = :stored_length
    WHERE id = :chunk_id
      AND stored_length != :stored_length
""")

INSERT_CONTENT_CHUNK = _sql("""
    INSERT INTO content_chunk (content_id, seq, chunk_id)
    VALUES (:content_id, :seq, :chunk_id)
""")

CHUNK_FILES_OF_CONTENT = _sql("""
    SELECT lower(hex(k.sha256)), k.stored_length
    FROM content_chunk AS cc
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE cc.content_id = :content_id
    ORDER BY cc.seq
""")

SET_CHUNK_STORED_LENGTH = _sql("""
    UPDATE chunk
    SET stored_length = :stored_length
    WHERE sha256 = :sha256
      AND stored_length != :stored_length
""")

CHUNK_LENGTH_BY_SHA = _sql("""
    SELECT length
    FROM chunk
    WHERE sha256 = :sha256
""")

CHUNKS_OF_CONTENT = _sql("""
    SELECT k.sha256, k.length
    FROM content_chunk AS cc
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE cc.content_id = :content_id
    ORDER BY cc.seq
""")

# -- reports ---------------------------------------------------------------------------------

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


# -- listing and tar ---
# A save is traversed from the path table in key (depth-first) order, probing member by its
# primary key for each path: an index range, never a scan of the save. CROSS JOIN pins that
# loop order (path outside), so ORDER BY key needs no sort. The path table holds the paths of
# every save; paths of other saves cost one probe each.

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


# -- listing text ---
# `list` / `list -v` of a key range as finished `tar -tf` / `tar -tvf` lines, so that Python
# touches only the rare rows it must. LISTING_LINES gives (line, path_id, flag) in key order:
# flag NULL: `line` is the member's line, newline included, with the name still in key form
#   (NUL between components): ops/listing.py turns NUL into '/' for a whole block at once
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
# from :modes, the 4096 strings of 9 bytes that ops/listing.py makes (one substr of a blob
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

# -- save digests (migration 0005) ---
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


# -- import-legacy ---
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

CONTENTS_STARTING_WITH_CHUNK = _sql("""
    SELECT c.id
    FROM chunk AS k
    JOIN content_chunk AS cc ON cc.chunk_id = k.id AND cc.seq = 0
    JOIN content AS c ON c.id = cc.content_id
    WHERE k.sha256 = :sha256
      AND c.chunk_count = :chunk_count
      AND c.size = :size
""")


# -- expire, check, catalog copies ---------------------------------------------------------

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

ALL_CHUNKS = _sql("""
    SELECT sha256, stored_length
    FROM chunk
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



# -- save speed ---------------------------------------------------------------------------

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

# New rows in one statement where the row is most likely new (a first save): the insert
# itself says whether the key existed, instead of a lookup before every insert.
INSERT_PATH_IF_NEW = _sql("""
    INSERT INTO path (parent_id, key, name)
    VALUES (:parent_id, :key, :name)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
""")

UPSERT_CHUNK = _sql("""
    INSERT INTO chunk (sha256, length, stored_length)
    VALUES (:sha256, :length, :stored_length)
    ON CONFLICT (sha256) DO UPDATE
    SET stored_length = excluded.stored_length
    WHERE chunk.stored_length != excluded.stored_length
    RETURNING id
""")

# Contents of many small files at once (Catalog.contents_of): a few statements per batch
# instead of four per file. Every statement releases the GIL and the save's readers take it
# at each release: per-file statements kept the catalog's thread waiting. The row lists are
# "?" marks repeated; ids of new rows are given explicitly (max + 1 ..., we hold the write
# lock), so that no statement has to return them row by row.
BULK_ROWS = 256  # rows per statement (16 values a row at most: far below SQLite's 32766 variables)

CONTENTS_BY_DIGESTS = _sql("""
    SELECT id, digest, size
    FROM content
    WHERE digest IN ({marks})
""")

CHUNKS_BY_SHAS_WITH_LENGTH = _sql("""
    SELECT sha256, length, stored_length
    FROM chunk
    WHERE sha256 IN ({marks})
""")

CHUNKS_BY_SHAS = _sql("""
    SELECT sha256, id, stored_length
    FROM chunk
    WHERE sha256 IN ({marks})
""")

LAST_CONTENT_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM content
""")

LAST_CHUNK_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM chunk
""")

INSERT_CONTENTS = _sql("""
    INSERT INTO content (id, size, digest, chunk_count)
    VALUES {rows}
""")

INSERT_CHUNKS = _sql("""
    INSERT INTO chunk (id, sha256, length, stored_length)
    VALUES {rows}
""")

INSERT_CONTENT_CHUNKS = _sql("""
    INSERT INTO content_chunk (content_id, seq, chunk_id)
    VALUES {rows}
""")

# A first save's paths, versions and members, a batch at a time (Saver.flush_records): the
# same rows as INSERT_PATH / INSERT_VERSION / INSERT_MEMBER, with the ids given explicitly.
PATHS_BY_KEYS = _sql("""
    SELECT key, id
    FROM path
    WHERE key IN ({marks})
""")

LAST_PATH_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM path
""")

LAST_VERSION_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM version
""")

INSERT_PATHS = _sql("""
    INSERT INTO path (id, parent_id, key, name)
    VALUES {rows}
""")

INSERT_VERSIONS = _sql("""
    INSERT INTO version (id, path_id, mode, uid, gid, user, grp, size, mtime_ns, ctime_ns,
                         dev, ino, nlink, rdev, link_target, content_id, xattrs_id)
    VALUES {rows}
""")

INSERT_MEMBERS = _sql("""
    INSERT INTO member (save_id, path_id, version_id)
    VALUES {rows}
    ON CONFLICT DO NOTHING
""")


# -- extended attributes ---
# A distinct attribute set is stored once under its digest (xattrs.set_digest); versions
# name it by xattrs_id. Sets are few: a lookup per new set, a cache in the caller.

XATTR_SET_BY_DIGEST = _sql("""
    SELECT id
    FROM xattr_set
    WHERE digest = :digest
""")

INSERT_XATTR_SET = _sql("""
    INSERT INTO xattr_set (digest)
    VALUES (:digest)
""")

INSERT_XATTR = _sql("""
    INSERT INTO xattr (set_id, name, value, is_text)
    VALUES (:set_id, :name, :value, :is_text)
""")

XATTRS_OF_SET = _sql("""
    SELECT name, value
    FROM xattr
    WHERE set_id = :set_id
    ORDER BY name
""")

# Set-based like the other sweeps; the partial index version_by_xattrs holds only the
# versions that have a set.
DELETE_UNREFERENCED_XATTR_SETS = _sql("""
    DELETE FROM xattr_set
    WHERE id NOT IN (SELECT xattrs_id FROM version WHERE xattrs_id IS NOT NULL)
""")

VERSIONS_WITHOUT_XATTR_SET = _sql("""
    SELECT v.id, v.xattrs_id
    FROM version AS v
    LEFT JOIN xattr_set AS x ON x.id = v.xattrs_id
    WHERE v.xattrs_id IS NOT NULL
      AND x.id IS NULL
""")

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


def _slices(items: list) -> Iterator[list]:
    for i in range(0, len(items), BULK_ROWS):
        yield items[i : i + BULK_ROWS]


class Catalog:
    """One apsw connection to REPO/catalog.sqlite3, opened for writing or read-only."""

    def __init__(self, conn: apsw.Connection, path: bytes, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.schema = schema_version()  # what an older catalog opened read-only holds

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: bytes) -> Catalog:
        """Create a new catalog file with every migration applied (init only)."""
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_EXRESCODE
        conn = apsw.Connection(os.fsdecode(path), flags=flags)
        cat = cls(conn, path, readonly=False)
        cat._configure(writer=True)
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        cat.migrate()
        return cat

    @classmethod
    def open(cls, path: bytes, readonly: bool = False) -> Catalog:
        """Open an existing catalog. Never creates a file; refuses foreign or newer catalogs."""
        if not os.path.isfile(path):
            raise RepositoryNotFound(os.fsdecode(os.path.dirname(path) or b"."))
        if readonly:
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
            name = read_only_uri(path)
        else:
            flags = apsw.SQLITE_OPEN_READWRITE
            name = os.fsdecode(path)
        flags |= apsw.SQLITE_OPEN_EXRESCODE
        try:
            conn = apsw.Connection(name, flags=flags)
            cat = cls(conn, path, readonly=readonly)
            cat._configure(writer=not readonly)
            cat._check_identity()
            if readonly:
                stand_in_for_migrations(conn)
        except apsw.Error as e:
            raise open_error(e, path, readonly) from None
        if not readonly:
            cat.migrate()
        return cat

    def _configure(self, writer: bool) -> None:
        c = self.conn
        c.set_busy_timeout(WRITER_BUSY_MS if writer else READER_BUSY_MS)
        c.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        c.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        c.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        c.execute("PRAGMA foreign_keys = ON")
        c.execute("PRAGMA trusted_schema = OFF")
        if writer:
            c.execute("PRAGMA synchronous = FULL")
            c.execute("PRAGMA journal_size_limit = 67108864")
        c.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache

    def limit_cache(self, kib: int) -> None:
        """A page cache of KIB KiB for this connection instead of the 64 MiB default (a
        helper connection that reads each page about once)."""
        self.conn.execute(f"PRAGMA cache_size = -{int(kib)}")

    def _check_identity(self) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchall()[0][0]
        version = self.schema = self.user_version()
        if app_id != APPLICATION_ID:
            raise NotACatalog(os.fsdecode(self.path), "application_id does not match")
        if version > schema_version():
            raise CatalogTooNew(os.fsdecode(self.path), version, schema_version())

    def user_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchall()[0][0]


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

    def close(self) -> None:
        try:
            self.conn.close()
        except apsw.Error:
            # SQLite checkpoints the WAL when the last connection closes; if that write
            # fails (disk full, I/O error) every commit is still safe in the WAL and the
            # next open recovers it. Close anyway, and let the original outcome stand.
            self.conn.close(True)

    # -- transactions ---------------------------------------------------------------------

    def begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            raise RepositoryLocked(
                os.fsdecode(self.path),
                f"another writer held the catalog for {WRITER_BUSY_MS // 1000} s") from None

    def commit(self) -> None:
        crashpoint("before_catalog_commit")
        try:
            self.conn.execute("COMMIT")
        except apsw.Error as e:
            self.rollback_quietly()
            raise translate_error(e, self.path) from None
        crashpoint("after_catalog_commit")

    def probe_integrity(self) -> None:
        """NotACatalog, before a save writes anything, when SQLite's quick_check finds a
        malformed page. quick_check reads every page of every table and index, the pages
        a save may write included, and checks their structure and record formats (not the
        indexes against the tables, which integrity_check does): ~2.5 ms per MB of catalog
        where integrity_check takes ~6. It stops at the first problem. A save that still
        meets damage later stops there and writes nothing more (Saver.fail).
        Not chosen: the checksum VFS (cksumvfs) is not built into apsw's SQLite and needs
        8 reserved bytes a page, i.e. a rewrite of existing catalogs; cell_size_check only
        catches damaged cell layouts, which quick_check finds too."""
        try:
            problems = [p for (p,) in self.conn.execute("PRAGMA quick_check(1)") if p != "ok"]
        except apsw.Error as e:
            problems = [_root_cause(e)]
        if problems:
            first = "; ".join(line for line in problems[0].splitlines()
                              if line and not line.startswith("***"))  # "*** in database main"
            copies = os.path.join(os.path.dirname(self.path), b"catalog-copies", b"")
            raise NotACatalog(os.fsdecode(self.path), (
                f"damaged (quick_check: {first}); nothing was written: restore it from "
                f"a copy in {os.fsdecode(copies)} (README: 'Restoring the catalog from its "
                "copy')"))

    def rollback_quietly(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except apsw.Error:
                pass

    def checkpoint(self) -> str | None:
        """Fold the WAL back into the catalog file (end of save/expire); None, or why that
        failed (disk full): every commit is safe in the WAL already, so a failure loses
        nothing (the next checkpoint folds it), and callers report it as a warning."""
        # Short busy wait only: a TRUNCATE checkpoint holds the writer lock while it waits
        # for readers, and another save waiting in BEGIN IMMEDIATE holds a read mark, so
        # with the long writer timeout two concurrent saves stalled each other for 60 s.
        self.conn.set_busy_timeout(CHECKPOINT_BUSY_MS)
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except apsw.BusyError:
            pass  # a reader holds the WAL; the automatic checkpoint will catch up
        except apsw.Error as e:
            return _root_cause(e)
        finally:
            self.conn.set_busy_timeout(WRITER_BUSY_MS if not self.readonly else READER_BUSY_MS)
        return None

    # -- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self.conn.execute("SELECT value FROM meta WHERE key = :key", {"key": key})
        row = rows.fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (:key, :value) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            {"key": key, "value": value},
        )

    # -- saves ----------------------------------------------------------------------------

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

    # -- save digests ---------------------------------------------------------------------

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
        """Compute and store the save's members digest (inside a write transaction)."""
        computed = self.members_digest(save_id)
        self.conn.execute(INSERT_SAVE_DIGEST, {
            "save_id": save_id, "scheme": DIGEST_SCHEME, "members": computed.members,
            "digest": computed.digest(),
        })

    def complete_saves_digests(self) -> list[tuple[int, int | None, int | None, bytes | None]]:
        """(save id, scheme, members, digest) of every complete save; None when it has none."""
        if self.schema < DIGESTS_SINCE:
            return [(sid, None, None, None) for (sid,) in self._rows(COMPLETE_SAVE_IDS)]
        return self._rows(COMPLETE_SAVES_WITH_DIGESTS)

    # -- paths ----------------------------------------------------------------------------

    def path_id(self, key: bytes) -> int | None:
        row = self.conn.execute(PATH_ID_BY_KEY, {"key": key}).fetchone()
        return row[0] if row else None

    def insert_path(self, parent_id: int | None, key: bytes, name: bytes) -> int:
        self.conn.execute(INSERT_PATH, {"parent_id": parent_id, "key": key, "name": name})
        return self.conn.last_insert_rowid()

    # -- versions and membership ----------------------------------------------------------

    def version_in_save(self, save_id: int, path_id: int) -> tuple[int, Version] | None:
        row = self.conn.execute(VERSION_IN_SAVE, {"save_id": save_id, "path_id": path_id})
        found = row.fetchone()
        if found is None:
            return None
        return found[0], Version(*found[1:])

    def insert_version(self, path_id: int, v: Version) -> int:
        self.conn.execute(INSERT_VERSION, {
            "path_id": path_id, "mode": v.mode, "uid": v.uid, "gid": v.gid, "user": v.user,
            "grp": v.group, "size": v.size, "mtime_ns": v.mtime_ns, "ctime_ns": v.ctime_ns,
            "dev": v.dev, "ino": v.ino, "nlink": v.nlink, "rdev": v.rdev,
            "link_target": v.link_target, "content_id": v.content_id, "xattrs_id": v.xattrs_id,
        })
        return self.conn.last_insert_rowid()

    def insert_member(self, save_id: int, path_id: int, version_id: int) -> bool:
        """Record that the save holds this version; False if the path was already in it."""
        self.conn.execute(INSERT_MEMBER, {
            "save_id": save_id, "path_id": path_id, "version_id": version_id,
        })
        return self.conn.changes() == 1

    # -- contents and chunks --------------------------------------------------------------

    def content_id(self, digest: bytes, size: int, refs: list[ChunkRef]) -> int | None:
        """The content with this digest and size AND exactly this chunk list, if any.

        The digest (xxh3-128) only narrows the search: it is not collision resistant, so a
        content is the same only when its SHA-256 chunk list is too.
        """
        rows = self.conn.execute(CONTENT_BY_DIGEST, {"digest": digest, "size": size})
        for (content_id,) in rows.fetchall():
            if self.chunks_of_content(content_id) == refs:
                return content_id
        return None

    def insert_content(self, digest: bytes, size: int,
                       chunks: list[tuple[ChunkRef, int]]) -> int:
        """A content with its ordered chunks (ref, stored length; 0 = unknown, keep old)."""
        self.conn.execute(INSERT_CONTENT, {
            "size": size, "digest": digest, "chunk_count": len(chunks),
        })
        content_id = self.conn.last_insert_rowid()
        for seq, (ref, stored_length) in enumerate(chunks):
            chunk_id = self.chunk_id(ref, stored_length)
            self.conn.execute(INSERT_CONTENT_CHUNK, {
                "content_id": content_id, "seq": seq, "chunk_id": chunk_id,
            })
        return content_id

    def chunk_id(self, ref: ChunkRef, stored_length: int) -> int:
        if stored_length:  # a chunk file just written: its row is most likely new too
            row = self.conn.execute(UPSERT_CHUNK, {
                "sha256": ref.sha256, "length": ref.length, "stored_length": stored_length,
            }).fetchone()
            if row is not None:
                return row[0]
        row = self.conn.execute(CHUNK_ID_BY_SHA, {"sha256": ref.sha256}).fetchone()
        if row is not None:
            if stored_length:
                self.conn.execute(UPDATE_CHUNK_STORED_LENGTH, {
                    "chunk_id": row[0], "stored_length": stored_length,
                })
            return row[0]
        self.conn.execute(INSERT_CHUNK, {
            "sha256": ref.sha256, "length": ref.length, "stored_length": stored_length,
        })
        return self.conn.last_insert_rowid()

    def contents_of(self, files: list[tuple[bytes, int, list[tuple[ChunkRef, int, bool]]]]
                    ) -> list[int]:
        """content_id-or-insert_content for many files at once (inside a write transaction).

        FILES: (digest, size, [(chunk ref, stored length, whether the chunk file was just
        written)]) per file, as read. Each gets the content with that digest, size and chunk
        list, inserted when there is none (the same rules as content_id and insert_content,
        chunk rows upserted the same way; a found content's chunks that were just written
        again get their new stored length, as in healing). Returns the ids in FILES' order.
        """
        c = self.conn
        keys = [(digest, size, tuple(ch[0] for ch in chunks)) for digest, size, chunks in files]
        found: dict[tuple, int] = {}
        digests = list({k[0] for k in keys})
        candidates: dict[tuple[bytes, int], list[int]] = {}
        for part in _slices(digests):
            sql = CONTENTS_BY_DIGESTS.format(marks=",".join("?" * len(part)))
            for cid, digest, size in c.execute(sql, part):
                candidates.setdefault((digest, size), []).append(cid)
        for key in keys:
            if key in found:
                continue
            for cid in candidates.get((key[0], key[1]), ()):
                if tuple(self.chunks_of_content(cid)) == key[2]:
                    found[key] = cid
                    break
        # chunk rows to write: every chunk of a new content, the rewritten ones of found ones
        new_keys: dict[tuple, list[tuple[ChunkRef, int, bool]]] = {}
        wanted: dict[bytes, tuple[ChunkRef, int]] = {}
        for key, (_d, _s, chunks) in zip(keys, files, strict=True):
            if key in found:
                chunks = [ch for ch in chunks if ch[2]]
            elif key not in new_keys:
                new_keys[key] = chunks
            for ref, stored_length, _new in chunks:
                if stored_length or ref.sha256 not in wanted:
                    wanted[ref.sha256] = (ref, stored_length)
        chunk_ids: dict[bytes, int] = {}
        shas = list(wanted)
        for part in _slices(shas):
            sql = CHUNKS_BY_SHAS.format(marks=",".join("?" * len(part)))
            for sha, kid, stored_length in c.execute(sql, part):
                chunk_ids[sha] = kid
                want = wanted[sha][1]
                if want and want != stored_length:
                    c.execute(UPDATE_CHUNK_STORED_LENGTH, {"chunk_id": kid, "stored_length": want})
        missing = [wanted[sha] for sha in shas if sha not in chunk_ids]
        if missing:
            next_id = c.execute(LAST_CHUNK_ID).fetchone()[0] + 1
            rows = []
            for ref, stored_length in missing:
                chunk_ids[ref.sha256] = next_id
                rows.append((next_id, ref.sha256, ref.length, stored_length))
                next_id += 1
            self._insert_rows(INSERT_CHUNKS, rows)
        if new_keys:
            next_id = c.execute(LAST_CONTENT_ID).fetchone()[0] + 1
            rows, links = [], []
            for key, chunks in new_keys.items():
                found[key] = next_id
                rows.append((next_id, key[1], key[0], len(chunks)))
                links.extend((next_id, seq, chunk_ids[ch[0].sha256])
                             for seq, ch in enumerate(chunks))
                next_id += 1
            self._insert_rows(INSERT_CONTENTS, rows)
            self._insert_rows(INSERT_CONTENT_CHUNKS, links)
        return [found[key] for key in keys]

    def _insert_rows(self, sql: str, rows: list[tuple]) -> None:
        """Run an INSERT ... VALUES {rows} statement for ROWS, BULK_ROWS at a time."""
        if not rows:
            return
        width = len(rows[0])
        mark = "(" + ",".join("?" * width) + ")"
        for part in _slices(rows):
            self.conn.execute(sql.format(rows=",".join([mark] * len(part))),
                              [v for row in part for v in row])

    def chunks_of_content(self, content_id: int) -> list[ChunkRef]:
        rows = self.conn.execute(CHUNKS_OF_CONTENT, {"content_id": content_id})
        return [ChunkRef(sha, length) for sha, length in rows]

    def chunk_files_of_content(self, content_id: int) -> tuple[list[str], list[int]]:
        """The content's chunk file names (sha256 in lowercase hex) and their recorded
        stored lengths, in order."""
        rows = self.conn.execute(CHUNK_FILES_OF_CONTENT, {"content_id": content_id}).fetchall()
        return [name for name, _ in rows], [stored for _, stored in rows]

    def chunk_sizes(self, shas: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """(length, stored length) of those of SHAS the catalog has a chunk row for."""
        found: dict[bytes, tuple[int, int]] = {}
        for part in _slices(shas):
            sql = CHUNKS_BY_SHAS_WITH_LENGTH.format(marks=",".join("?" * len(part)))
            for sha, length, stored_length in self.conn.execute(sql, part):
                found[sha] = (length, stored_length)
        return found

    def chunk_length(self, sha256: bytes) -> int | None:
        """The data length the catalog records for chunk SHA256 (None: no row)."""
        row = self.conn.execute(CHUNK_LENGTH_BY_SHA, {"sha256": sha256}).fetchone()
        return None if row is None else row[0]

    def set_stored_length(self, sha256: bytes, stored_length: int) -> None:
        """Record the size of a chunk file verified in another valid encoding than the one
        recorded (raw or zstd: both decode to the same bytes). In a write transaction."""
        self.conn.execute(SET_CHUNK_STORED_LENGTH,
                          {"sha256": sha256, "stored_length": stored_length})

    # -- expire, check, catalog copies --------------------------------------------------

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

    def all_chunks(self) -> list[tuple[bytes, int]]:
        """(sha256, stored_length) of every chunk row."""
        return self._rows(ALL_CHUNKS)

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


    # -- listing and tar --

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


    # -- reports --------------------------------------------------------------------------

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

    def find_paths(self, lo: bytes, hi: bytes, name_glob: bytes | None,
                   path_glob: bytes | None, save_id: int | None,
                   since_ns: int | None) -> Iterator[tuple]:
        yield from self.conn.execute(FIND_PATHS, {
            "lo": lo, "hi": hi, "name_glob": name_glob, "path_glob": path_glob,
            "save_id": save_id, "since_ns": since_ns,
        })

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

    def content_by_chunk_list(self, refs: list[ChunkRef]) -> int | None:
        """A content made of exactly these chunks, in this order (so of the same bytes)."""
        rows = self.conn.execute(CONTENTS_STARTING_WITH_CHUNK, {
            "sha256": refs[0].sha256, "chunk_count": len(refs),
            "size": sum(r.length for r in refs),
        }).fetchall()
        for (content_id,) in rows:
            if self.chunks_of_content(content_id) == refs:
                return content_id
        return None


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

    def insert_members(self, rows: list[tuple[int, int, int]]) -> list[int]:
        """Record (save id, path id, version id) rows in one batch; returns the indexes of
        the rows not recorded because the save held that path already (usually none)."""
        c = self.conn
        before = c.total_changes()
        c.execute("SAVEPOINT members")
        try:
            self._insert_rows(INSERT_MEMBERS, rows)
            if c.total_changes() - before != len(rows):  # a duplicate: find which, in order
                c.execute("ROLLBACK TO members")
                held = []
                for i, row in enumerate(rows):
                    c.execute(INSERT_MEMBER, row)
                    if c.changes() != 1:
                        held.append(i)
                c.execute("RELEASE members")
                return held
        except BaseException:
            try:  # the error may have ended the whole transaction, savepoint included
                c.execute("ROLLBACK TO members")
                c.execute("RELEASE members")
            except apsw.Error:
                pass
            raise
        c.execute("RELEASE members")
        return []

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

    def insert_versions(self, versions: list[tuple[int, Version]]) -> list[int]:
        """insert_version for many (path id, version) pairs at once: their ids, in order."""
        if not versions:
            return []
        first = self.conn.execute(LAST_VERSION_ID).fetchone()[0] + 1
        self._insert_rows(INSERT_VERSIONS, [
            (first + i, path_id, v.mode, v.uid, v.gid, v.user, v.group, v.size, v.mtime_ns,
             v.ctime_ns, v.dev, v.ino, v.nlink, v.rdev, v.link_target, v.content_id, v.xattrs_id)
            for i, (path_id, v) in enumerate(versions)])
        return list(range(first, first + len(versions)))

    # -- extended attributes --

    def xattr_set_id(self, digest: bytes, xattrs: list[tuple[bytes, bytes, bool]]) -> int:
        """The id of the attribute set with DIGEST (xattrs.set_digest of XATTRS: (name,
        value, is_text) triples), inserted when new (inside a write transaction)."""
        row = self.conn.execute(XATTR_SET_BY_DIGEST, {"digest": digest}).fetchone()
        if row is not None:
            return row[0]
        self.conn.execute(INSERT_XATTR_SET, {"digest": digest})
        set_id = self.conn.last_insert_rowid()
        for name, value, text in xattrs:
            self.conn.execute(INSERT_XATTR, {
                "set_id": set_id, "name": name, "value": value, "is_text": int(text),
            })
        return set_id

    def xattrs_of_set(self, set_id: int) -> tuple[tuple[bytes, bytes], ...]:
        """The (name, value) pairs of an attribute set, sorted by name."""
        return tuple(self.conn.execute(XATTRS_OF_SET, {"set_id": set_id}).fetchall())

    def insert_path_if_new(self, parent_id: int | None, key: bytes, name: bytes) -> int | None:
        """The new path's id; None when KEY is already there."""
        row = self.conn.execute(INSERT_PATH_IF_NEW, {
            "parent_id": parent_id, "key": key, "name": name,
        }).fetchone()
        return row[0] if row else None

    # -- mount ------------------------------------------------------------------------------
    # `backshift mount` (ops/mount.py): every lookup, getattr and directory listing of the
    # filesystem is one of these index queries, never a scan of a save.

    MOUNT_HOSTS = _sql("""
        SELECT DISTINCT hostname
        FROM save
        ORDER BY hostname
    """)

    MOUNT_SUBSETS = _sql("""
        SELECT DISTINCT subset
        FROM save
        WHERE hostname = :hostname
        ORDER BY subset
    """)

    MOUNT_SAVES_OF_SERIES = _sql("""
        SELECT id, started_ns
        FROM save
        WHERE hostname = :hostname
          AND subset = :subset
        ORDER BY id
    """)

    # The symlink `latest` of a series: its newest complete save (a running or interrupted
    # one is never what `latest` points at).
    MOUNT_NEWEST_COMPLETE = _sql("""
        SELECT id
        FROM save
        WHERE hostname = :hostname
          AND subset = :subset
          AND status = 'complete'
        ORDER BY started_ns DESC, id DESC
        LIMIT 1
    """)

    MOUNT_SAVE_SERIES = _sql("""
        SELECT hostname, subset, started_ns
        FROM save
        WHERE id = :save_id
    """)

    MOUNT_ENTRY_COLUMNS = _sql("""
        p.id, p.key, p.name, v.mode, v.uid, v.gid, v.size, v.mtime_ns, v.ctime_ns, v.dev,
        v.ino, v.nlink, v.rdev, v.link_target, v.content_id
    """)

    # A path of the save: its version, or NULL columns when the save does not hold it but
    # holds something beneath it (a directory the save passed through: /, /home for a save
    # of /home/ann); no row when neither. The subtree is the key range [key\0, key\1).
    MOUNT_HELD_BENEATH = _sql("""
        EXISTS (
            SELECT 1
            FROM path AS q
            CROSS JOIN member AS n
            WHERE q.key > CAST(p.key || x'00' AS BLOB)
              AND q.key < CAST(p.key || x'01' AS BLOB)
              AND n.save_id = :save_id
              AND n.path_id = q.id)
    """)

    MOUNT_CHILDREN = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.parent_id = :parent_id
          AND (m.version_id IS NOT NULL OR {MOUNT_HELD_BENEATH})
    """)

    MOUNT_CHILD = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.key = CAST((SELECT key FROM path WHERE id = :parent_id) || x'00' || :name
                           AS BLOB)
          AND (m.version_id IS NOT NULL OR {MOUNT_HELD_BENEATH})
    """)

    MOUNT_ENTRY = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.id = :path_id
    """)

    MOUNT_CHUNKS_OF_CONTENT = _sql("""
        SELECT k.sha256, k.length, k.stored_length
        FROM content_chunk AS cc
        JOIN chunk AS k ON k.id = cc.chunk_id
        WHERE cc.content_id = :content_id
        ORDER BY cc.seq
    """)

    def mount_hosts(self) -> list[str]:
        return [r[0] for r in self.conn.execute(self.MOUNT_HOSTS).fetchall()]

    def mount_subsets(self, hostname: str) -> list[str]:
        return [r[0] for r in self.conn.execute(self.MOUNT_SUBSETS,
                                                {"hostname": hostname}).fetchall()]

    def mount_saves_of_series(self, hostname: str, subset: str) -> list[tuple[int, int]]:
        """(id, started_ns) of every save of the series, running and interrupted ones too."""
        return self.conn.execute(self.MOUNT_SAVES_OF_SERIES,
                                 {"hostname": hostname, "subset": subset}).fetchall()

    def mount_newest_complete(self, hostname: str, subset: str) -> int | None:
        rows = self.conn.execute(self.MOUNT_NEWEST_COMPLETE,
                                 {"hostname": hostname, "subset": subset}).fetchall()
        return rows[0][0] if rows else None

    def mount_save_series(self, save_id: int) -> tuple[str, str, int] | None:
        """(hostname, subset, started_ns) of a save, None when there is no such save."""
        rows = self.conn.execute(self.MOUNT_SAVE_SERIES, {"save_id": save_id}).fetchall()
        return rows[0] if rows else None

    def mount_children(self, save_id: int, parent_id: int) -> list[tuple]:
        """MOUNT_ENTRY_COLUMNS of the entries of directory PARENT_ID in the save (version
        columns NULL for a directory the save only passes through), in no set order."""
        return self.conn.execute(self.MOUNT_CHILDREN,
                                 {"save_id": save_id, "parent_id": parent_id}).fetchall()

    def mount_child(self, save_id: int, parent_id: int, name: bytes) -> tuple | None:
        rows = self.conn.execute(self.MOUNT_CHILD, {
            "save_id": save_id, "parent_id": parent_id, "name": name}).fetchall()
        return rows[0] if rows else None

    def mount_entry(self, save_id: int, path_id: int) -> tuple | None:
        rows = self.conn.execute(self.MOUNT_ENTRY,
                                 {"save_id": save_id, "path_id": path_id}).fetchall()
        return rows[0] if rows else None

    def mount_chunks_of_content(self, content_id: int) -> list[tuple[bytes, int, int]]:
        """(sha256, length, stored_length) of a content's chunks, in order."""
        return self.conn.execute(self.MOUNT_CHUNKS_OF_CONTENT,
                                 {"content_id": content_id}).fetchall()


def stand_in_for_migrations(conn: apsw.Connection) -> None:
    """A catalog opened read-only is not migrated (it may be on read-only media): the
    objects of the migrations it lacks get empty stand-ins in CONN's temp schema, which
    unqualified names find first, so that reading code (and users' SQL) sees one schema."""
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    for number, sql in sorted(READ_ONLY_STAND_INS.items()):
        if number > version:
            conn.execute(sql)


def _fanout_range(fanout: int) -> dict:
    """The sha256 range [lo, hi) of one fan-out byte; 33 x 0xff is above every sha256."""
    hi = bytes([fanout + 1]) if fanout < 255 else b"\xff" * 33
    return {"lo": bytes([fanout]), "hi": hi}


def on_read_only_media(path: bytes) -> bool:
    """Whether PATH (a file or directory) is on a filesystem mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _wal_holds_frames(path: bytes) -> bool:
    """Whether the catalog at PATH has a write-ahead log with transactions in it (one not
    checkpointed into the file: the last writer was killed, or the media went away)."""
    try:
        return os.path.getsize(path + b"-wal") > 0
    except OSError:
        return False


def read_only_uri(path: bytes) -> str:
    """The URI that opens the catalog at PATH read-only (SQLITE_OPEN_URI).

    A WAL catalog opens read-only only with a -shm file SQLite may create or write, which
    read-only media (a backup disk mounted ro for a restore) do not allow. There nothing can
    change the file, and with no log beside it the file is the whole catalog: immutable=1
    reads it without -shm or locks. A log with transactions in it must not be ignored:
    then the plain read-only open is tried, and open_error explains a failure."""
    uri = "file:" + _uri_quote(os.fsdecode(path)) + "?mode=ro"
    if on_read_only_media(path) and not _wal_holds_frames(path):
        uri += "&immutable=1"
    return uri


def open_error(e: apsw.Error, path: bytes, readonly: bool) -> BackshiftError:
    """The user-facing error for a failure to open the catalog at PATH."""
    if readonly and isinstance(e, apsw.CantOpenError):
        if on_read_only_media(path):
            return RepositoryIOError(os.fsdecode(path), (
                "cannot read the catalog on read-only media: its write-ahead log (-wal) "
                "holds transactions not yet in the file, and SQLite cannot read them without "
                "a -shm file, which it cannot create here; copy the repository to writable "
                "storage, or mount the media read-write once (the next save or expire folds "
                "the log into the file)"))
        if not os.access(os.path.dirname(path) or b".", os.W_OK):
            return RepositoryIOError(os.fsdecode(path), (
                "cannot open the catalog read-only: SQLite needs to create its -shm file "
                "beside it and this user may not write in that directory"))
    return NotACatalog(os.fsdecode(path), _root_cause(e))


def _uri_quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def catalog_damage(error: BaseException | None) -> bool:
    """Whether ERROR says the catalog file is damaged (then nothing more is written)."""
    return isinstance(error, apsw.CorruptError | apsw.NotADBError | NotACatalog)


def translate_error(e: apsw.Error, path: bytes) -> Exception:
    """The user-facing error for an SQLite failure met while using the catalog at PATH."""
    if isinstance(e, apsw.CorruptError | apsw.NotADBError):
        return NotACatalog(os.fsdecode(path), f"damaged ({_root_cause(e)}); see 'backshift check'")
    return RepositoryIOError(os.fsdecode(path), _root_cause(e))


def _root_cause(e: BaseException) -> str:
    """The first error of a chain: apsw may mask 'disk I/O error' behind a rollback error."""
    while e.__context__ is not None and isinstance(e.__context__, apsw.Error):
        e = e.__context__
    return str(e)
