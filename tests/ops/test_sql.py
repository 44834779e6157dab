"""`backshift sql`: read-only for real, one statement, runaway queries stopped, safe output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backshift.errors import QueryDenied, QueryFailed, QueryTimeout
from conftest import BACKSHIFT, find0, run, run_bin


@pytest.fixture
def saved(repo, tmp_path, no_racy_margin) -> bytes:
    """A repository with one save of a tree holding hostile names."""
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src)
    for name in (b"plain.txt", b"bad-\xff-name", b"esc-\x1b[31m-red", b"new\nline", b"cr\rx"):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"content of " + name)
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    return repo


def snapshot(*dirs: Path | bytes) -> dict[str, str]:
    """Every file under DIRS with the sha256 of its bytes (the repository and the cwd)."""
    out = {}
    for top in dirs:
        for root, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[os.fsdecode(path)] = hashlib.sha256(f.read()).hexdigest()
    return out


WRITE_ROUTES = [
    "INSERT INTO meta (key, value) VALUES ('x', 'y')",
    "UPDATE save SET hostname = 'x'",
    "DELETE FROM member",
    "CREATE TABLE t (x)",
    "CREATE TEMP TABLE t (x)",
    "DROP VIEW files",
    "ALTER TABLE save ADD COLUMN x",
    "ATTACH 'attached.db' AS other",
    "VACUUM INTO 'copy.db'",
    "VACUUM",
    "PRAGMA query_only = 0",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "PRAGMA user_version = 99",
    "SELECT load_extension('/tmp/evil.so')",
    "BEGIN",
    "BEGIN IMMEDIATE",
    "SAVEPOINT s",
    "REINDEX",
    "ANALYZE",
]


@pytest.mark.parametrize("statement", WRITE_ROUTES)
def test_sql_denies_write_route_and_changes_nothing(saved, tmp_path, statement):
    run("-r", saved, "sql", "SELECT 1")  # a first read may leave -wal/-shm: the baseline
    before = snapshot(saved, tmp_path)
    result = run("-r", saved, "sql", statement, exit_code=QueryDenied.exit_code)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "query refused" in result.stderr
    assert snapshot(saved, tmp_path) == before
    assert not (tmp_path / "copy.db").exists() and not (tmp_path / "attached.db").exists()


def test_sql_names_what_was_denied(saved):
    assert "VACUUM writes" in run("-r", saved, "sql", "VACUUM INTO 'x.db'", exit_code=11).stderr
    assert "attach" in run("-r", saved, "sql", "ATTACH 'x.db' AS x", exit_code=11).stderr
    assert "PRAGMA journal_mode = DELETE" in run(
        "-r", saved, "sql", "PRAGMA journal_mode=DELETE", exit_code=11).stderr
    assert "load_extension" in run(
        "-r", saved, "sql", "SELECT load_extension('x')", exit_code=11).stderr
    assert "insert" in run("-r", saved, "sql", "INSERT INTO meta VALUES ('a', 'b')",
                           exit_code=11).stderr


@pytest.mark.parametrize("statements", [
    "SELECT 1; SELECT 2",
    "SELECT 1;SELECT 2;",
    "SELECT 1; DELETE FROM member",
    "SELECT 1; -- fine\nSELECT 2",
    "SELECT 1; ; ;SELECT 2",
    "SELECT 1; /* c */ ; DROP VIEW files",
])
def test_sql_refuses_several_statements(saved, statements):
    result = run("-r", saved, "sql", statements, exit_code=QueryDenied.exit_code)
    assert "one statement" in result.stderr
    assert result.stdout == ""


def test_sql_allows_trailing_semicolon_and_comment(saved):
    result = run("-r", saved, "sql", "SELECT 40 + 2 AS answer; ; -- done\n;", "--format", "csv")
    assert result.stdout == "answer\n42\n"


def test_sql_stops_runaway_recursive_query(saved):
    result = run("-r", saved, "sql", "--timeout", "0.5",
                 "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
                 "SELECT count(*) FROM r", exit_code=QueryTimeout.exit_code)
    assert "0.5 s" in result.stderr


@pytest.mark.parametrize("statement", [
    "SELECT length(randomblob(1e9))",
    "SELECT length(zeroblob(1e9))",
    "SELECT length(printf('%.*c', 1000000000, 'x'))",
])
def test_sql_refuses_huge_values(saved, statement):
    result = run("-r", saved, "sql", statement, exit_code=QueryFailed.exit_code)
    assert "too big" in result.stderr


def test_sql_escapes_control_characters_and_bad_utf8(saved):
    for fmt in ("table", "json", "csv"):
        result = run("-r", saved, "sql", "SELECT path, name FROM files WHERE type = 'file'",
                     "--format", fmt)
        out = result.stdout_bytes
        assert b"\x1b" not in out and b"\r" not in out and b"\xff" not in out
        text = result.stdout
        if fmt == "json":
            text = "\n".join(json.loads(line)["path"] for line in text.splitlines())
        assert "/bad-\\377-name" in text  # as GNU tar prints names
        assert "/esc-\\033[31m-red" in text
        assert "/new\\nline" in text


def test_sql_invalid_utf8_text_cell_is_shown_losslessly(saved):
    # `files.path` is TEXT made from bytes: apsw cannot decode it; backshift fetches bytes.
    result = run("-r", saved, "sql", "--format", "json",
                 "SELECT path FROM files WHERE name LIKE 'bad-%'")
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["path"].endswith("/bad-\\377-name")
    # Not wrappable (a pragma) and still not a crash:
    run("-r", saved, "sql", "PRAGMA table_info(files)")


def test_sql_keeps_the_order_of_the_statement(saved):
    result = run("-r", saved, "sql", "--format", "csv",
                 "SELECT value FROM (SELECT 3 AS value UNION ALL SELECT 1 UNION ALL SELECT 2) "
                 "ORDER BY value DESC")
    assert result.stdout.split() == ["value", "3", "2", "1"]


def test_sql_keeps_duplicate_column_names_and_types(saved):
    result = run("-r", saved, "sql", "--format", "json",
                 "SELECT 1 AS a, 'x' AS a, NULL AS n, 2.5 AS f, x'00ff' AS b")
    assert result.stdout.strip() == '{"a": "x", "n": null, "f": 2.5, "b": "\\\\000\\\\377"}'


def test_sql_row_cap_says_it_cut(saved):
    result = run("-r", saved, "sql", "--max-rows", "2", "--format", "csv",
                 "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) "
                 "SELECT n FROM r")
    assert result.stdout.split() == ["n", "1", "2"]
    assert "cut at 2 rows" in result.stderr
    result = run("-r", saved, "sql", "--max-rows", "0", "--format", "csv",
                 "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) "
                 "SELECT n FROM r")
    assert len(result.stdout.split()) == 11 and "cut" not in result.stderr


def test_sql_binds_params(saved):
    result = run("-r", saved, "sql", "--param", "id=1", "--param", "name=plain.txt",
                 "--format", "csv",
                 "SELECT save_id, name FROM files WHERE save_id = :id AND name = :name")
    assert result.stdout.splitlines() == ["save_id,name", "1,plain.txt"]


def test_sql_missing_param_is_an_error(saved):
    result = run("-r", saved, "sql", "SELECT :nope", exit_code=QueryFailed.exit_code)
    assert "--param nope=" in result.stderr


def test_sql_syntax_error_is_one_line(saved):
    result = run("-r", saved, "sql", "SELEC 1", exit_code=QueryFailed.exit_code)
    assert result.stderr.count("\n") == 1 and "syntax error" in result.stderr


@pytest.mark.parametrize("statement", [
    "PRAGMA table_info(files)",
    "SELECT name FROM pragma_table_info('files')",
    "PRAGMA user_version",
    "SELECT name FROM sqlite_schema WHERE type = 'view'",
])
def test_sql_allows_introspection(saved, statement):
    assert run("-r", saved, "sql", statement).stdout


def test_sql_catalog_unchanged_by_reads(saved, tmp_path):
    run("-r", saved, "sql", "SELECT 1")
    before = snapshot(saved, tmp_path)
    run("-r", saved, "sql", "SELECT count(*) FROM files")
    run("-r", saved, "sql", "SELECT * FROM saves", "--format", "json")
    assert snapshot(saved, tmp_path) == before


def test_sql_missing_repository(tmp_path):
    result = run("-r", tmp_path / "nothing", "sql", "SELECT 1", exit_code=3)
    assert not (tmp_path / "nothing").exists()
    assert "no repository" in result.stderr


def test_sql_escapes_column_names(saved):
    result = run("-r", saved, "sql", "SELECT 1 AS \"\x1b[2J\"", "--format", "csv")
    assert result.stdout.splitlines()[0] == "\\033[2J"


def test_sql_denied_in_a_real_process_leaves_no_file(saved, tmp_path):
    run("-r", saved, "sql", "SELECT 1")
    before = snapshot(saved, tmp_path)
    proc = run_bin("-r", saved, "sql", "VACUUM INTO 'escaped.db'", cwd=tmp_path, timeout=60)
    assert proc.returncode == QueryDenied.exit_code and proc.stdout == b""
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
    assert snapshot(saved, tmp_path) == before


def test_sql_reads_last_commit_while_a_save_writes(saved):
    """A writer in the middle of a transaction neither blocks the report nor shows in it."""
    from backshift.catalog import CATALOG_NAME, Catalog

    writer = Catalog.open(os.path.join(saved, CATALOG_NAME))
    try:
        writer.begin()
        writer.insert_save("other", "x", 1, "test", "other", 1)
        result = run("-r", saved, "sql", "SELECT count(*) AS n FROM saves", "--format", "csv")
        assert result.stdout.split() == ["n", "1"]
    finally:
        writer.rollback_quietly()
        writer.close()


def test_sql_ctrl_c_stops_a_long_query(saved):
    proc = subprocess.Popen(
        [BACKSHIFT, "-r", saved, "sql",
         "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
         "SELECT count(*) FROM r"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


def test_sql_unwrappable_statement_with_bad_text_does_not_crash(saved):
    for fmt in ("table", "json", "csv"):
        result = run("-r", saved, "sql", "EXPLAIN SELECT CAST(x'41ff' AS TEXT)", "--format", fmt)
        assert "not UTF-8" in result.stdout and "Halt" in result.stdout


QUERY_FILE = "-- params: name=plain.txt\n-- a second comment\nSELECT size FROM files\n" \
             "WHERE path LIKE '%/' || :name\n"


def test_sql_statement_starting_with_a_comment_line(saved):
    res = run("-r", saved, "sql", "--format", "csv", "--param", "name=plain.txt", QUERY_FILE)
    assert res.stdout.splitlines() == ["size", str(len(b"content of plain.txt"))]


def test_sql_reads_the_statement_from_stdin_and_from_a_file(saved, tmp_path):
    expected = ["size", str(len(b"content of plain.txt"))]
    res = run_bin("-r", saved, "sql", "--param", "name=plain.txt", "--format", "csv", "-",
                  input=QUERY_FILE.encode())
    assert (res.returncode, res.stdout.decode().splitlines()) == (0, expected), res.stderr
    (tmp_path / "q.sql").write_text(QUERY_FILE)
    res = run("-r", saved, "sql", "--file", str(tmp_path / "q.sql"), "--format", "csv",
              "--param", "name=plain.txt")
    assert res.stdout.splitlines() == expected


@pytest.mark.parametrize("args", [[], ["SELECT 1", "--file", "q.sql"]])
def test_sql_needs_exactly_one_statement_source(saved, args):
    res = run("-r", saved, "sql", *args, exit_code=2)
    assert "give one STATEMENT" in res.stderr
