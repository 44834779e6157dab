"""Matrix rows H-1..H-4 of RELIABILITY.md: the read-only SQL command against hostile queries."""

from __future__ import annotations

import os

import apsw
import pytest
from harness.consistency import assert_repo_consistent
from harness.scenario import one_line_error, save, small_tree, snapshot

from conftest import run

WRITES = [
    "INSERT INTO meta (key, value) VALUES ('x', 'y')",
    "UPDATE save SET status = 'complete'",
    "DELETE FROM chunk",
    "CREATE TABLE t (x)",
    "DROP VIEW files",
    "ALTER TABLE save ADD COLUMN x",
    "ATTACH DATABASE 'other.db' AS o",
    "VACUUM INTO 'copy.db'",
    "PRAGMA query_only = 0",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "SELECT load_extension('/tmp/x.so')",
    "BEGIN",
    "REPLACE INTO meta (key, value) VALUES ('a', 'b')",
    "WITH x AS (SELECT 1) DELETE FROM save",
]


def _outside(tmp_path) -> set[str]:
    return set(os.listdir(tmp_path))


@pytest.fixture
def saved(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    return repo


def _unchanged(before: dict, after: dict) -> bool:
    keep = lambda d: {k: v for k, v in d.items() if not k.endswith((b"-wal", b"-shm"))}  # noqa: E731
    return keep(before) == keep(after)


@pytest.mark.parametrize("statement", WRITES)
def test_H1_write_attempts_are_denied_and_write_nothing(tmp_path, saved, statement):
    before, files_before = snapshot(saved), _outside(tmp_path)
    res = run("-r", saved, "sql", statement, exit_code=None)
    assert res.code in (11, 21), res.stderr  # refused, or failed before running
    line = one_line_error(res.stderr)
    assert "refused" in line or "not authorized" in line or "failed" in line, line
    assert _unchanged(before, snapshot(saved))
    assert _outside(tmp_path) == files_before  # no copy.db, other.db ...
    assert_repo_consistent(saved)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("statement,code,words", [
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
     20, "longer than"),
    ("SELECT randomblob(100000000)", 21, "too big"),
    ("SELECT zeroblob(2000000000)", 21, "too big"),
    ("SELECT printf('%.*c', 100000000, 'x')", 21, "too big"),
])
def test_H2_runaway_queries_stop(saved, statement, code, words):
    res = run("-r", saved, "sql", "--timeout", "1", statement, exit_code=code)
    assert words in one_line_error(res.stderr)


def test_H3_hostile_strings_are_escaped_in_output(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src)
    for name in (b"\x1b]0;pwned\x07", b"cr\rhere", b"nl\nhere", b"bad-\xff"):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"x")
    save(repo, src)
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("INSERT INTO meta (key, value) VALUES ('bad', CAST(x'41ff42' AS TEXT))")
    conn.close()
    for fmt in ("table", "json", "csv"):
        res = run("-r", repo, "sql", "--format", fmt, "SELECT path FROM files")
        assert "\x1b" not in res.stdout and "\r" not in res.stdout and "\x07" not in res.stdout
        assert "Traceback" not in res.stderr
        lines = [ln for ln in res.stdout.splitlines() if "here" in ln]
        assert len(lines) == 2  # one line each, the newline escaped
    res = run("-r", repo, "sql", "SELECT key, value FROM meta WHERE key = 'bad'",
              exit_code=None)
    assert res.code == 0 and "Traceback" not in res.stderr and "A" in res.stdout


@pytest.mark.parametrize("statements", ["SELECT 1; SELECT 2", "SELECT 1; DELETE FROM save"])
def test_H4_several_statements_are_refused(saved, statements):
    before = snapshot(saved)
    res = run("-r", saved, "sql", statements, exit_code=11)
    assert "several statements" in one_line_error(res.stderr)
    assert _unchanged(before, snapshot(saved))
