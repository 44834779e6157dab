"""Matrix rows C1-C4 of docs/reliability.md: saves side by side, locks of dead processes."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from harness import crash
from harness.consistency import assert_repo_consistent, open_readonly
from harness.oracle import assert_save_matches, manifest
from harness.scenario import one_line_error, save, save_status, small_tree

from backshift.lock import LOCKS_DIR, RepoLock, read_records
from conftest import BACKSHIFT, find0, run, run_bin


def _popen_save(repo: bytes, src, hostname: str, subset: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t", "--hostname", hostname,
                             "--subset", subset], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # Both inputs arrive at once (a small list fits the pipe buffer): a save holds the
    # catalog's write transaction while it waits for names, see docs/reliability.md.
    proc.stdin.write(find0(src))
    proc.stdin.close()
    return proc


def _unique_chunks_referenced(repo: bytes) -> tuple[int, int]:
    conn = open_readonly(repo)
    try:
        rows = conn.execute("SELECT count(*), count(DISTINCT sha256) FROM chunk").fetchone()
    finally:
        conn.close()
    return rows


@pytest.mark.timeout(120)
@pytest.mark.parametrize("same_series", [False, True], ids=["C1_two_series", "C2_same_series"])
def test_C1_C2_two_saves_at_once_of_overlapping_data(tmp_path, repo, same_series):
    src = small_tree(tmp_path / "src")
    expected = manifest(src)
    procs = [_popen_save(repo, src, "h", "s" if same_series else f"s{i}") for i in range(2)]
    for p in procs:
        p.wait(timeout=100)
        err = p.stderr.read()
        assert p.returncode == 0, err.decode(errors="replace")
    statuses = save_status(repo)
    assert sorted(statuses.values()) == ["complete", "complete"]  # two distinct saves
    rows, distinct = _unique_chunks_referenced(repo)
    assert rows == distinct  # each unique chunk stored (and catalogued) once
    assert_repo_consistent(repo)
    for sid in statuses:
        assert_save_matches(repo, sid, expected, src, tmp_path)


@pytest.mark.timeout(60)
def test_C4_lock_of_a_killed_save_does_not_block_the_next_command(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    proc = crash.backshift("-r", repo, "save", "--subset", "t", "--hostname", "h", input=find0(src),
                           crash_at="before_save_complete")
    crash.assert_killed(proc)
    records = os.listdir(os.path.join(repo, LOCKS_DIR))
    assert records, "the killed save leaves its lock record behind"
    again = save(repo, src)  # proceeds: the kernel dropped the flock, the pid is dead
    assert save_status(repo) == {1: "interrupted", again["save_id"]: "complete"}
    # an exclusive lock is obtainable too (no live holder left)
    lock = RepoLock(repo, exclusive=True, operation="test")
    lock.acquire(0)
    lock.release()
    assert read_records(repo) == []  # the dead holder is never reported as holding it
    assert_repo_consistent(repo)
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)


@pytest.mark.timeout(30)
def test_C3_save_refused_while_an_exclusive_lock_is_held(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    lock = RepoLock(repo, exclusive=True, operation="expire")
    lock.acquire(0)
    try:
        res = run("-r", repo, "save", "--subset", "t",
                  "--hostname", "h", input=find0(src), exit_code=5)
    finally:
        lock.release()
    line = one_line_error(res.stderr)
    assert "locked" in line and f"pid {os.getpid()}" in line and "expire" in line, line
    assert save_status(repo) == {}


@pytest.mark.timeout(90)
def test_C1_a_save_waiting_for_names_does_not_block_another_save(tmp_path, repo):
    """A slow producer (find on a slow disk) must not hold the catalog's write lock: another
    host's save completes meanwhile, well within the 60 s busy timeout."""
    src = small_tree(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    stalled = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t",
                                "--hostname", "slow-host"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    try:
        stalled.stdin.write(find0(src))  # some names, then the producer goes quiet
        stalled.stdin.flush()
        deadline = time.monotonic() + 20
        while not save_status(repo) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        other = run_bin("-r", repo, "save", "--subset", "t",
                        "--hostname", "fast-host", input=find0(src),
                        timeout=30)
        assert other.returncode == 0, other.stderr
    finally:
        stalled.stdin.close()
    assert stalled.wait(timeout=30) == 0, stalled.stderr.read()
    assert sorted(save_status(repo).values()) == ["complete", "complete"]
    assert_repo_consistent(repo)
    for sid in save_status(repo):
        assert_save_matches(repo, sid, manifest(src), src)
