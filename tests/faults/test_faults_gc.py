"""Matrix rows A2, C3, F1, F2, F5 of docs/reliability.md: expire and its garbage collection."""

from __future__ import annotations

import os
import subprocess
import time

import apsw
import pytest
from harness import crash
from harness.consistency import assert_repo_consistent
from harness.oracle import assert_save_matches, manifest
from harness.scenario import one_line_error, save, save_status, small_tree

from backshift.store import Store
from conftest import BACKSHIFT, find0, run

DAY_NS = 86_400 * 10**9


def _chunk_files(repo: bytes) -> set[bytes]:
    return {sha for sha, _ in Store(repo).iter_chunk_files() if sha is not None}


def _series(tmp_path, repo, n: int = 3) -> list[tuple[int, dict, object]]:
    """N complete saves of a changing tree, each with its manifest, dated N..1 days ago."""
    src = small_tree(tmp_path / "src")
    out = []
    for i in range(n):
        (src / f"gen-{i}.bin").write_bytes(os.urandom(40_000))
        if i:
            os.unlink(src / f"gen-{i - 1}.bin")
        sid = save(repo, src)["save_id"]
        out.append((sid, manifest(src), src))
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    now = time.time_ns()
    for k, (sid, _, _) in enumerate(out):
        conn.execute("UPDATE save SET started_ns = ?, finished_ns = ? WHERE id = ?",
                     (now - (n - k) * DAY_NS, now - (n - k) * DAY_NS + 10**9, sid))
    conn.close()
    return out


@pytest.mark.parametrize("point", ["gc_after_catalog_delete", "gc_mid_unlink"])
def test_A2_kill_during_expire_at_every_point(tmp_path, repo, point):
    saves = _series(tmp_path, repo)
    kept_sid, kept_manifest, src = saves[-1]

    def between(nth, proc):
        if not crash.killed(proc):
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        # at most orphan chunk files: no complete save references a missing chunk
        assert_repo_consistent(repo)
        assert_save_matches(repo, kept_sid, kept_manifest, src)

    kills = crash.crash_loop(point, ("-r", repo, "expire", "--keep-last", "1"), None, between)
    assert kills, f"{point} was never reached"
    assert sorted(save_status(repo)) == [kept_sid]
    run("-r", repo, "expire", "--keep-last", "1")  # a second run removes the orphans
    referenced = _chunk_files(repo)
    assert_repo_consistent(repo)
    run("-r", repo, "check", "--read-data")
    assert referenced == _chunk_files(repo)
    assert_save_matches(repo, kept_sid, kept_manifest, src, tmp_path)


@pytest.mark.timeout(60)
def test_C3_expire_is_refused_while_a_save_runs(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--hostname", "h", "--subset", "s"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(find0(src))  # the save dedups against every existing chunk ...
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while len(save_status(repo)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = _chunk_files(repo)
        res = run("-r", repo, "expire", "--older-than", "0s", "--allow-empty-series",
                  exit_code=5)  # ... so GC must not run now
        line = one_line_error(res.stderr)
        assert "locked" in line and f"pid {proc.pid}" in line, line
        assert _chunk_files(repo) == before
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    second = max(save_status(repo))
    assert save_status(repo) == {first["save_id"]: "complete", second: "complete"}
    assert_repo_consistent(repo)
    assert_save_matches(repo, second, manifest(src), src, tmp_path)


def test_F1_retention_removes_only_what_the_policy_lets_go(tmp_path, repo):
    saves = _series(tmp_path, repo, n=4)
    files_before = _chunk_files(repo)
    dry = run("-r", repo, "expire", "--keep-last", "2", "--dry-run")
    assert _chunk_files(repo) == files_before and len(save_status(repo)) == 4
    real = run("-r", repo, "expire", "--keep-last", "2")
    strip = lambda text: [ln for ln in text.splitlines() if ln.startswith(("keep ", "remove "))]  # noqa: E731
    assert strip(dry.stdout) == strip(real.stdout) and strip(real.stdout)
    assert sorted(save_status(repo)) == [saves[2][0], saves[3][0]]
    assert _chunk_files(repo) < files_before  # the dropped generations' chunks are gone
    assert_repo_consistent(repo)
    for sid, expected, src in saves[2:]:
        assert_save_matches(repo, sid, expected, src)


def test_F2_referenced_chunk_missing_aborts_before_deleting_anything(tmp_path, repo):
    saves = _series(tmp_path, repo)
    store = Store(repo)
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    sha = conn.execute(
        "SELECT k.sha256 FROM member AS m JOIN version AS v ON v.id = m.version_id "
        "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
        "JOIN chunk AS k ON k.id = cc.chunk_id WHERE m.save_id = ? LIMIT 1",
        (saves[-1][0],)).fetchone()[0]
    conn.close()
    os.unlink(store.path_for(sha))
    before = _chunk_files(repo)
    statuses = save_status(repo)
    res = run("-r", repo, "expire", "--keep-last", "1", exit_code=13)
    line = one_line_error(res.stderr)
    assert "missing" in line and "nothing deleted" in line and sha.hex() in line, line
    assert _chunk_files(repo) == before and save_status(repo) == statuses


def test_F5_interrupted_saves_go_only_after_a_later_complete_save(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    proc = crash.backshift("-r", repo, "save", "--hostname", "h", "--subset", "s",
                           input=find0(src), crash_at="before_save_complete")
    crash.assert_killed(proc)
    proc = crash.backshift("-r", repo, "save", "--hostname", "h", "--subset", "s",
                           input=find0(src), crash_at="before_save_complete")
    crash.assert_killed(proc)
    check = run("-r", repo, "check", "--repair")  # marks the dead saves: no warning left
    assert check.stdout.count("interrupted") == 2, check.stdout
    assert set(save_status(repo).values()) == {"interrupted"}
    run("-r", repo, "expire", "--keep-last", "5")
    assert len(save_status(repo)) == 2  # no later complete save yet: kept
    listed = run("-r", repo, "saves", "--format", "json").stdout
    assert '"complete"' not in listed
    last = save(repo, src)
    run("-r", repo, "expire", "--keep-last", "5")
    assert save_status(repo) == {last["save_id"]: "complete"}
    assert_repo_consistent(repo)
    assert_save_matches(repo, last["save_id"], manifest(src), src, tmp_path)
