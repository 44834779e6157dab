"""Matrix rows H-1..H-4 of docs/reliability.md: read-only SQL against hostile queries."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import apsw
import pytest
from harness.consistency import assert_repo_consistent
from harness.scenario import one_line_error, save, small_tree, snapshot

from conftest import BACKSHIFT, run, run_bin

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
    assert res.code == 11, res.stderr  # refused, also when it fails to prepare (a view)
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


# One VM step that runs for about a minute: instr() over megabyte strings never reaches the
# progress handler between steps.
COSTLY = "instr(printf('%.*c', 3000000, 'x'), printf('%.*c', 1000000, 'x') || 'y')"


def _timed(proc: subprocess.Popen, limit: float) -> tuple[int, str, float]:
    start = time.monotonic()
    _out, err = proc.communicate(timeout=limit)
    return proc.returncode, err.decode(), time.monotonic() - start


@pytest.mark.timeout(60)
def test_H5_one_costly_step_stops_at_the_timeout(saved):
    start = time.monotonic()
    proc = subprocess.Popen([BACKSHIFT, "-r", saved, "sql", "--timeout", "2",
                             f"SELECT {COSTLY}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, err, _ = _timed(proc, 50)
    assert code == 20, err
    assert time.monotonic() - start < 8
    assert one_line_error(err).endswith("it ran longer than 2 s (raise --timeout, or narrow "
                                        "the query)")


@pytest.mark.timeout(60)
def test_H5_ctrl_c_stops_one_costly_step(saved):
    proc = subprocess.Popen([BACKSHIFT, "-r", saved, "sql", f"SELECT {COSTLY}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)  # well inside the statement
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, err, _ = _timed(proc, 50)
    assert code == 130, err
    assert time.monotonic() - sent < 4
    assert err.strip().splitlines() == ["backshift: interrupted"]


@pytest.mark.timeout(90)
def test_H5_tar_where_costly_step_stops_at_its_deadline(saved, tmp_path):
    from backshift.ops.where import WHERE_DEADLINE_S
    start = time.monotonic()
    proc = subprocess.Popen([BACKSHIFT, "-r", saved, "tar", "--backup", "1", "--where",
                             f"{COSTLY} = 0", "-o", str(tmp_path / "out.tar")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, err, _ = _timed(proc, 80)
    assert code == 11, err
    assert time.monotonic() - start < WHERE_DEADLINE_S + 6
    assert "--where took longer than" in one_line_error(err)


@pytest.mark.timeout(60)
def test_H6_order_by_over_large_blobs_is_capped_in_memory(saved, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    statement = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                 "WHERE i < 100000) SELECT randomblob(10000) AS b, i FROM n ORDER BY b")
    res = run_bin("-r", saved, "sql", "--timeout", "50", statement,
                  env={"SQLITE_TMPDIR": str(tmpdir), "TMPDIR": str(tmpdir)}, timeout=55)
    err = res.stderr.decode()
    assert res.returncode == 21, err
    assert "more than 512 MiB for sorting" in one_line_error(err)
    assert "never in /var/tmp" in err


def test_H5_refused_where_leaves_no_watchdog_behind(saved):
    """A refused --where stopped its constructor after the watchdog started: the thread
    kept the SIGINT wake-up fd, and a later Ctrl-C in the same process ended it (130)."""
    import signal as sig
    import threading

    run("-r", saved, "tar", "--backup", "1", "--where", "nosuchcolumn = 1", "-o", "x.tar",
        exit_code=11)
    run("-r", saved, "tar", "--backup", "1", "--where", "0); SELECT 1; --", "-o", "x.tar",
        exit_code=11)
    assert not [t for t in threading.enumerate() if t.name == "sql-watchdog"]
    assert sig.set_wakeup_fd(-1) == -1
