"""Matrix rows I1-I3 of RELIABILITY.md: exit codes, no tracebacks, every write error fails."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import apsw
import pytest
from harness import crash
from harness.consistency import assert_repo_consistent
from harness.faults import EIO, ENOSPC, Fault, inject
from harness.scenario import one_line_error, save, save_status, small_tree

from backshift.catalog import schema_version
from backshift.errors import exit_code_table
from backshift.lock import RepoLock
from backshift.store import Store
from conftest import BACKSHIFT, find0, run


def _saved(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    return src


def _code_ok(tmp_path, repo, monkeypatch):
    return run("-r", repo, "saves")


def _code_warning(tmp_path, repo, monkeypatch):
    return run("-r", repo, "save", "--hostname", "h", input=b"/nonexistent/file\0",
               exit_code=None)


def _code_usage(tmp_path, repo, monkeypatch):
    return run("-r", repo, "init", "--chunk-min", "10", exit_code=None)


def _code_not_found(tmp_path, repo, monkeypatch):
    return run("-r", str(tmp_path / "nope"), "saves", exit_code=None)


def _code_exists(tmp_path, repo, monkeypatch):
    return run("-r", repo, "init", exit_code=None)


def _code_locked(tmp_path, repo, monkeypatch):
    lock = RepoLock(repo, exclusive=True, operation="test")
    lock.acquire(0)
    try:
        return run("-r", repo, "save", "--hostname", "h", input=b"/etc\0", exit_code=None)
    finally:
        lock.release()


def _code_too_new(tmp_path, repo, monkeypatch):
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute(f"PRAGMA user_version = {schema_version() + 5}")
    conn.close()
    return run("-r", repo, "saves", exit_code=None)


def _code_not_catalog(tmp_path, repo, monkeypatch):
    cat = os.path.join(repo, b"catalog.sqlite3")
    for side in (b"-wal", b"-shm"):
        if os.path.exists(cat + side):
            os.unlink(cat + side)
    with open(cat, "wb") as f:
        f.write(b"not sqlite at all" * 100)
    return run("-r", repo, "saves", exit_code=None)


def _code_no_such_save(tmp_path, repo, monkeypatch):
    return run("-r", repo, "tar", "--backup", "999", exit_code=None)


def _code_no_such_path(tmp_path, repo, monkeypatch):
    _saved(tmp_path, repo)
    return run("-r", repo, "tar", "--backup", "latest", "/no/such/path", exit_code=None)


def _code_damaged(tmp_path, repo, monkeypatch):
    _saved(tmp_path, repo)
    store = Store(repo)
    for sha, _ in store.iter_chunk_files():
        if sha is not None:
            os.unlink(store.path_for(sha))
    return run("-r", repo, "tar", "--backup", "latest", exit_code=None)


def _code_query_denied(tmp_path, repo, monkeypatch):
    return run("-r", repo, "sql", "DELETE FROM save", exit_code=None)


def _code_io_error(tmp_path, repo, monkeypatch):
    inject(monkeypatch, "write_all", Fault(EIO, after_calls=0))
    return run("-r", repo, "save", "--hostname", "h", input=find0(small_tree(tmp_path / "s")),
               exit_code=None)


def _code_kept_chunk_missing(tmp_path, repo, monkeypatch):
    _saved(tmp_path, repo)
    store = Store(repo)
    sha = next(sha for sha, _ in store.iter_chunk_files() if sha is not None)
    os.unlink(store.path_for(sha))
    return run("-r", repo, "expire", "--keep-last", "1", exit_code=None)


def _code_query_timeout(tmp_path, repo, monkeypatch):
    return run("-r", repo, "sql", "--timeout", "0.2", "WITH RECURSIVE c(x) AS (SELECT 1 UNION "
               "ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", exit_code=None)


def _code_query_failed(tmp_path, repo, monkeypatch):
    return run("-r", repo, "sql", "SELECT * FROM no_such_view", exit_code=None)


def _code_legacy_invalid(tmp_path, repo, monkeypatch):
    (tmp_path / "notlegacy").mkdir()
    return run("-r", repo, "import-legacy", str(tmp_path / "notlegacy"), exit_code=None)


SCENARIOS = {
    0: _code_ok, 1: _code_warning, 2: _code_usage, 3: _code_not_found, 4: _code_exists,
    5: _code_locked, 6: _code_too_new, 7: _code_not_catalog, 8: _code_no_such_save,
    9: _code_no_such_path, 10: _code_damaged, 11: _code_query_denied, 12: _code_io_error,
    13: _code_kept_chunk_missing, 20: _code_query_timeout, 21: _code_query_failed,
    25: _code_legacy_invalid,
}


def test_I1_every_documented_exit_code_has_a_scenario():
    documented = {code for code, _ in exit_code_table()}
    # 130 and 141 need real processes: test_I1_interrupted_save_exits_130_and_keeps_its_work,
    # test_cli_hardening.py's test_list_into_head_exits_141_quietly
    assert documented - set(SCENARIOS) <= {130, 141}, "add a scenario for the new exit code"


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_I1_each_documented_exit_code(tmp_path, repo, monkeypatch, code):
    assert code in dict(exit_code_table()), f"exit code {code} is not documented"
    res = SCENARIOS[code](tmp_path, repo, monkeypatch)
    assert res.code == code, res.stderr
    assert "Traceback" not in res.stderr  # I2
    if code == 10:  # one line per damaged member, then a summary line
        assert all(ln.startswith("backshift: error:") for ln in res.stderr.splitlines())
    elif code >= 2:
        one_line_error(res.stderr)


@pytest.mark.timeout(60)
def test_I1_interrupted_save_exits_130_and_keeps_its_work(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--hostname", "h"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdin.write(find0(src))
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    while not save_status(repo) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.stdin.close()  # the save notices the signal between names
    assert proc.wait(timeout=30) == 130
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "interrupted" in err
    assert list(save_status(repo).values()) == ["interrupted"]
    assert_repo_consistent(repo)


def test_I1_killed_process_is_minus_9(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    proc = crash.backshift("-r", repo, "save", "--hostname", "h", input=find0(src),
                           crash_at="before_catalog_commit:2")
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("scenario", ["enospc", "eio_rename", "locked", "corrupt", "bad_args"])
def test_I2_expected_failures_print_one_line_without_traceback(tmp_path, repo, monkeypatch,
                                                              scenario):
    src = small_tree(tmp_path / "src")
    if scenario == "enospc":
        inject(monkeypatch, "write_all", Fault(ENOSPC, after_bytes=1000))
    elif scenario == "eio_rename":
        inject(monkeypatch, "rename", Fault(EIO, after_calls=0))
    if scenario == "locked":
        res = _code_locked(tmp_path, repo, monkeypatch)
    elif scenario == "corrupt":
        res = _code_not_catalog(tmp_path, repo, monkeypatch)
    elif scenario == "bad_args":
        res = run("-r", repo, "save", "--subset", "", input=b"", exit_code=None)
    else:
        res = run("-r", repo, "save", "--hostname", "h", input=find0(src), exit_code=None)
    assert res.code >= 2
    line = one_line_error(res.stderr)
    if scenario in ("enospc", "eio_rename"):
        assert os.fsdecode(repo) in line and os.strerror(
            ENOSPC if scenario == "enospc" else EIO) in line


@pytest.mark.parametrize("call,nth", [("write_all", 1), ("write_all", 5), ("create_temp", 3),
                                      ("rename", 2), ("syncfs", 1), ("close", 1)])
def test_I3_a_single_repository_write_error_fails_the_save(tmp_path, repo, monkeypatch,
                                                          call, nth):
    src = small_tree(tmp_path / "src")
    # fail exactly once, then work again (a transient error)
    fault = inject(monkeypatch, call, Fault(EIO, after_calls=nth - 1, times=1))
    res = run("-r", repo, "save", "--hostname", "h", input=find0(src), exit_code=None)
    assert fault.raised == 1
    assert res.code == 12, res.stderr
    assert list(save_status(repo).values()) == ["interrupted"]
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)
