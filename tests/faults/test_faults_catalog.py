"""Matrix rows A1-A8 of docs/reliability.md: crashes, I/O errors, strange files at the catalog."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time

import apsw
import pytest
from harness import crash, faults
from harness.consistency import assert_repo_consistent
from harness.oracle import assert_save_matches, manifest
from harness.scenario import (
    change_tree,
    one_line_error,
    save,
    save_status,
    small_tree,
    snapshot,
)

from backshift.catalog import CATALOG_NAME, migrations, schema_version
from conftest import BACKSHIFT, find0, run


def _save_args(repo: bytes) -> tuple:
    return ("-r", repo, "save", "--hostname", "h", "--subset", "s", "--json")


@pytest.mark.parametrize("point", crash.SAVE_POINTS)
def test_A1_kill_during_save_at_every_point(tmp_path, repo, point):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    change_tree(src)
    after = manifest(src)
    names = find0(src)
    known = set(save_status(repo))

    def between(nth, proc):
        statuses = save_status(repo)
        new = set(statuses) - known
        known.update(new)
        if crash.killed(proc):
            # The next command opens the catalog normally; the killed save is absent or never
            # complete, unless it was killed after the commit that completed it.
            run("-r", repo, "saves")
            assert len(new) <= 1
            for killed_id in new:
                if statuses[killed_id] == "complete":
                    assert_save_matches(repo, killed_id, after, src)
            assert_repo_consistent(repo, allow_dead_running=True)
        else:
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert_save_matches(repo, first["save_id"], before, src)

    kills = crash.crash_loop(point, _save_args(repo), names, between)
    assert kills, f"crash point {point} was never reached"
    # The run that survived completed; every dead 'running' save is now 'interrupted'.
    statuses = save_status(repo)
    last = max(statuses)
    assert statuses[last] == "complete"
    assert set(list(statuses.values())[:-1]) <= {"complete", "interrupted"}
    assert_repo_consistent(repo)
    assert_save_matches(repo, last, after, src, tmp_path)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_A1_kill_during_save_at_random_times(tmp_path, repo, seed):
    src = small_tree(tmp_path / "src", seed=seed)
    first = save(repo, src)
    before = manifest(src)
    change_tree(src, seed=seed + 100)
    delay = random.Random(seed).uniform(0.05, 0.6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--hostname", "h", "--subset", "s"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    proc.stdin.write(find0(src))
    proc.stdin.close()
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)
    assert_repo_consistent(repo, allow_dead_running=True)
    assert_save_matches(repo, first["save_id"], before, src)
    again = save(repo, src)
    assert_repo_consistent(repo)
    assert_save_matches(repo, again["save_id"], manifest(src), src)


def _many_small_files(root) -> int:
    """~600 small files in 6 directories (a third share 50 contents), a symlink, a FIFO
    and an empty directory: three batches of the fast path; the regular files' count."""
    for d in range(6):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(100):
            n = d * 100 + i
            (sub / f"f{i:03d}").write_bytes(b"%d\n" % (n % 50 if n % 3 == 0 else n) * 20)
    os.symlink("d0/f000", root / "link")
    os.mkfifo(root / "fifo")
    (root / "empty").mkdir()
    return 600


@pytest.mark.parametrize("point", crash.BORROW_POINTS)
def test_A1_kill_in_a_resave_batch_leaves_a_catalog_the_next_save_borrows_from(
        tmp_path, repo, point):
    """SIGKILL at a crash point of the fast path (after a batch is matched in the temp
    tables, after its members are inserted), at every batch of an unchanged re-save that
    commits after each batch: the catalog opens, H4 holds, the killed save is never
    complete and keeps what it committed; the next save borrows every file (reads none)
    from it or the saves before, completes and restores."""
    src = tmp_path / "src"
    files = _many_small_files(src)
    time.sleep(2.1)  # every ctime before the first save's start less the racy margin
    first = save(repo, src)
    assert first["files_read"] == files
    before = manifest(src)
    names = find0(src)
    committed = []

    def between(nth, proc):
        if crash.killed(proc):
            assert_repo_consistent(repo, allow_dead_running=True)
            killed_id = max(save_status(repo))
            assert save_status(repo)[killed_id] == "running"
            conn = apsw.Connection(os.fsdecode(os.path.join(repo, CATALOG_NAME)),
                                   flags=apsw.SQLITE_OPEN_READONLY)
            try:
                committed.append(conn.execute("SELECT count(*) FROM member WHERE save_id = ?",
                                              (killed_id,)).fetchone()[0])
            finally:
                conn.close()
        else:
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        again = save(repo, src)  # borrows from the killed save, and the complete ones
        assert (again["files_read"], again["files_borrowed"]) == (0, files)
        assert again["files"] == first["files"]

    kills = crash.crash_loop(point, (*_save_args(repo), "--checkpoint-files", "10"), names,
                             between)
    assert kills[:3] == [1, 2, 3]  # a kill in each batch
    assert committed[0] == 0 and max(committed) > 256  # later kills after commits
    statuses = save_status(repo)
    assert statuses[first["save_id"]] == "complete"
    assert set(statuses.values()) <= {"complete", "interrupted"}
    assert_repo_consistent(repo)
    assert_save_matches(repo, max(statuses), before, src, tmp_path)


def _downgrade_to_first_migration(catalog: bytes) -> set:
    """Turn a current catalog into one at schema 1: drop what later migrations created."""
    fresh = apsw.Connection(":memory:")
    fresh.execute(migrations()[0][2])
    v1 = set(fresh.execute("SELECT type, name FROM sqlite_schema").fetchall())
    conn = apsw.Connection(os.fsdecode(catalog))
    objects = conn.execute("SELECT type, name FROM sqlite_schema "
                           "WHERE name NOT LIKE 'sqlite_%'").fetchall()
    with conn:
        for kind, name in objects:
            if (kind, name) not in v1 and kind in ("view", "table", "index", "trigger"):
                conn.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        for kind, table in v1:  # and the columns later migrations added to its tables
            if kind != "table" or table.startswith("sqlite_"):
                continue
            old = {r[1] for r in fresh.execute(f'PRAGMA table_info("{table}")')}
            for r in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if r[1] not in old:
                    conn.execute(f'ALTER TABLE "{table}" DROP COLUMN "{r[1]}"')
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    return v1


def _schema(catalog: bytes) -> tuple[int, set]:
    conn = apsw.Connection(os.fsdecode(catalog), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return (conn.execute("PRAGMA user_version").fetchone()[0],
                set(conn.execute("SELECT type, name FROM sqlite_schema "
                                 "WHERE name NOT LIKE 'sqlite_%'").fetchall()))
    finally:
        conn.close()


@pytest.mark.skipif(len(migrations()) < 2, reason="needs a migration after 0001")
def test_A3_kill_during_schema_migration(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    catalog = os.path.join(repo, CATALOG_NAME)
    v1 = _downgrade_to_first_migration(catalog)
    full = None

    def between(nth, proc):
        nonlocal full
        version, objects = _schema(catalog)
        if crash.killed(proc):
            # never mixed: exactly the objects of some applied prefix of the migrations
            assert 1 <= version < schema_version()
            if version == 1:
                assert {o for o in objects if o[1] != "sqlite_sequence"} <= v1 | {
                    ("table", "sqlite_sequence")}
        else:
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            assert version == schema_version()
            full = objects

    kills = crash.crash_loop("migration_mid", _save_args(repo), find0(src), between)
    assert kills == list(crash.each_visit("migration_mid", len(kills)))[: len(kills)]
    assert full is not None
    assert_repo_consistent(repo)
    assert_save_matches(repo, first["save_id"], before, src, tmp_path)


def test_A4_catalog_write_fails_reports_root_cause(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(3000):
        (many / f"file-with-a-rather-long-name-{i:05d}").write_bytes(b"%d\n" % i)
    catalog = os.path.join(repo, CATALOG_NAME)
    limit = max(256 << 10, os.path.getsize(catalog) + (64 << 10))
    proc = crash.backshift(*_save_args(repo), input=find0(many),
                           preexec_fn=faults.fsize_limit(limit))
    line = one_line_error(proc.stderr)
    assert proc.returncode == 12, proc.stderr
    assert os.fsdecode(catalog) in line
    assert "disk I/O error" in line or "disk is full" in line, line
    assert "cannot rollback" not in line and "no transaction" not in line
    assert_repo_consistent(repo, allow_dead_running=True)
    assert_save_matches(repo, first["save_id"], before, src)
    # Fault lifted: the next save works and everything is intact.
    again = save(repo, many)
    assert save_status(repo)[again["save_id"]] == "complete"
    assert_repo_consistent(repo)
    assert_save_matches(repo, again["save_id"], manifest(many), many)
    assert_save_matches(repo, first["save_id"], before, src, tmp_path)


def _corrupt(catalog: bytes, how: str) -> None:
    size = os.path.getsize(catalog)
    with open(catalog, "r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        elif how == "page_zeroed":
            page = 4096
            f.seek(page * 2)
            f.write(b"\0" * page)
        elif how == "header_overwritten":
            f.write(b"This is not SQLite")


@pytest.mark.parametrize("how", ["truncated", "page_zeroed", "header_overwritten"])
@pytest.mark.parametrize("command", ["saves", "save"])
def test_A6_damaged_catalog_is_an_error_and_nothing_is_written(tmp_path, repo, how, command):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    save(repo, src)  # more pages
    catalog = os.path.join(repo, CATALOG_NAME)
    run("-r", repo, "saves")  # checkpointed: the catalog is one file
    for side in (b"-wal", b"-shm"):
        if os.path.exists(catalog + side):
            os.unlink(catalog + side)
    _corrupt(catalog, how)
    chunks_before = {k: v for k, v in snapshot(repo).items() if b"/chunks/" in k}
    cat_before = hashlib.sha256(open(catalog, "rb").read()).digest()
    args = ["-r", repo, command] + (["--hostname", "h", "--subset", "s"]
                                    if command == "save" else [])
    res = run(*args, input=find0(src), exit_code=7)
    line = one_line_error(res.stderr)
    assert "catalog" in line and os.fsdecode(catalog) in line, line
    assert hashlib.sha256(open(catalog, "rb").read()).digest() == cat_before
    assert {k: v for k, v in snapshot(repo).items() if b"/chunks/" in k} == chunks_before


@pytest.mark.parametrize("command", ["saves", "save"])
def test_A7_newer_catalog_schema_is_refused_before_writing(tmp_path, repo, command):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    catalog = os.path.join(repo, CATALOG_NAME)
    conn = apsw.Connection(os.fsdecode(catalog))
    conn.execute(f"PRAGMA user_version = {schema_version() + 1}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = snapshot(repo)
    args = ["-r", repo, command] + (["--hostname", "h", "--subset", "t"]
                                     if command == "save" else [])
    res = run(*args, input=find0(src), exit_code=6)
    line = one_line_error(res.stderr)
    assert f"schema {schema_version() + 1}" in line and "newer" in line, line
    after = snapshot(repo)
    assert after.get(catalog) == before[catalog]
    assert not after.get(catalog + b"-wal"), "WAL content written"
    assert {k: v for k, v in after.items() if b"/chunks/" in k} == {
        k: v for k, v in before.items() if b"/chunks/" in k}


def _other_sqlite(path: bytes) -> None:
    conn = apsw.Connection(os.fsdecode(path))
    conn.execute("CREATE TABLE notes (x); INSERT INTO notes VALUES ('mine');")
    conn.close()


@pytest.mark.parametrize("kind", ["zero_length", "text", "other_sqlite"])
@pytest.mark.parametrize("command", ["saves", "save"])
def test_A8_wrong_file_is_not_a_catalog(tmp_path, repo, kind, command):
    catalog = os.path.join(repo, CATALOG_NAME)
    for side in (b"-wal", b"-shm"):
        if os.path.exists(catalog + side):
            os.unlink(catalog + side)
    os.unlink(catalog)
    if kind == "zero_length":
        open(catalog, "wb").close()
    elif kind == "text":
        with open(catalog, "wb") as f:
            f.write(b"just some notes\n" * 100)
    else:
        _other_sqlite(catalog)
    before = open(catalog, "rb").read()
    args = ["-r", repo, command] + (["--hostname", "h", "--subset", "t"]
                                     if command == "save" else [])
    res = run(*args, input=b"/nonexistent\0", exit_code=7)
    line = one_line_error(res.stderr)
    assert "not a usable backshift catalog" in line and os.fsdecode(catalog) in line
    assert open(catalog, "rb").read() == before


def test_A8_mistyped_repository_path_creates_nothing(tmp_path):
    res = run("-r", str(tmp_path / "typo"), "save", "--subset", "t",
              "--hostname", "h", input=b"/etc\0",
              exit_code=3)
    one_line_error(res.stderr)
    assert not (tmp_path / "typo").exists()


def test_A1_killed_save_leaves_running_record_until_next_save(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    proc = crash.backshift(*_save_args(repo), input=find0(src),
                           crash_at="before_save_complete")
    crash.assert_killed(proc)
    assert list(save_status(repo).values()) == ["running"]
    # the writer is dead: the next save marks it interrupted
    save(repo, src)
    assert list(save_status(repo).values()) == ["interrupted", "complete"]


@pytest.mark.parametrize("err,call", [(faults.EIO, "xWrite"), (faults.ENOSPC, "xWrite"),
                                      (faults.EIO, "xSync")])
def test_A4_catalog_write_fault_loop_through_a_vfs(tmp_path, repo, err, call):
    """SQLite's ioerr method: fail the Nth catalog write, N = 1, 2, 3, 5 ... until the save
    completes; after every failure the catalog is intact and the earlier save restores."""
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    change_tree(src)
    failures = 0
    for nth in crash.each_visit(call, 400):
        with faults.FaultVFS(faults.Fault(err, after_calls=nth - 1), calls=(call,)) as vfs:
            res = run(*_save_args(repo), input=find0(src), exit_code=None)
        if not vfs.fault.raised:
            assert res.code == 0, res.stderr
            break
        failures += 1
        if res.code == 1:  # only the catalog copy failed: a warning, the save itself stands
            assert "could not write a catalog copy" in res.stderr, res.stderr
            assert save_status(repo)[max(save_status(repo))] == "complete"
        elif res.code != 0:  # a failure the save could not absorb: reported, root cause named
            line = one_line_error(res.stderr)
            assert res.code == 12, res.stderr
            assert os.fsdecode(catalog_path(repo)) in line
            assert ("disk I/O error" in line or "disk is full" in line
                    or "injected" in line), line
            assert "cannot rollback" not in line
        assert_repo_consistent(repo, allow_dead_running=True)
        assert_save_matches(repo, first["save_id"], before, src)
    else:
        pytest.fail("the save never completed")
    assert failures >= 2
    assert_repo_consistent(repo)
    last = max(save_status(repo))
    assert save_status(repo)[last] == "complete"
    assert_save_matches(repo, last, manifest(src), src, tmp_path)


def catalog_path(repo: bytes) -> bytes:
    return os.path.join(repo, CATALOG_NAME)
