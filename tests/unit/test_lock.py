"""Locks: shared saves, exclusive expire, stale and foreign records, break-lock, races (C1-C6)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from repo_oracle import assert_save_matches, file_digests

from backshift.lock import RepoLock, read_records
from conftest import BACKSHIFT, find0, run, run_bin


def write_record(repo: bytes, **fields) -> str:
    locks = os.path.join(os.fsdecode(repo), "locks")
    os.makedirs(locks, exist_ok=True)
    rec = {"host": "otherhost", "pid": 4242, "start_time": 1, "exclusive": True,
           "operation": "expire", "since": 1_700_000_000.0}
    rec.update(fields)
    path = os.path.join(locks, f"{rec['host']}.{rec['pid']}.test.json")
    with open(path, "w") as f:
        json.dump(rec, f)
    return path


def make_src(root) -> None:
    root.mkdir()
    for i in range(4):
        (root / f"f{i}.bin").write_bytes(os.urandom(60_000))


def test_lock_foreign_host_record_refuses_until_break_lock(tmp_path, repo):
    make_src(tmp_path / "src")
    rec = write_record(repo)
    res = run("-r", repo, "save", "--subset", "t", input=find0(tmp_path / "src"), exit_code=5)
    assert "host otherhost pid 4242" in res.stderr and "since 2023-11-14" in res.stderr
    assert "backshift break-lock" in res.stderr
    out = run("-r", repo, "break-lock").stdout
    assert "removed lock record: held exclusively by host otherhost pid 4242" in out
    assert not os.path.exists(rec)
    run("-r", repo, "save", "--subset", "t", input=find0(tmp_path / "src"))


def test_lock_foreign_shared_record_allows_saves_but_not_expire(tmp_path, repo):
    make_src(tmp_path / "src")
    write_record(repo, exclusive=False, operation="save")
    run("-r", repo, "save", "--subset", "t", input=find0(tmp_path / "src"))
    run("-r", repo, "expire", "--keep-last", "1", exit_code=5)


def test_lock_dead_local_holder_is_taken_over_with_a_notice(tmp_path, repo):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    rec = write_record(repo, host=socket.gethostname(), pid=int(dead.stdout))
    res = run("-r", repo, "expire", "--keep-last", "1")
    assert f"taking over a stale lock record: process {int(dead.stdout)}" in res.stderr
    assert not os.path.exists(rec)


def test_lock_break_lock_keeps_live_local_holders(repo):
    lock = RepoLock(repo, exclusive=False, operation="save")
    lock.acquire()
    try:
        out = run("-r", repo, "break-lock").stdout
        assert "kept lock record of a live process" in out
        assert len(read_records(repo)) == 1
        run("-r", repo, "expire", "--keep-last", "1", exit_code=5)
    finally:
        lock.release()
    assert read_records(repo) == []


RACER = r"""
import os, sys, time
from backshift.lock import RepoLock
repo, marker, rounds = os.fsencode(sys.argv[1]), sys.argv[2], int(sys.argv[3])
bad = 0
for _ in range(rounds):
    lock = RepoLock(repo, exclusive=True, operation="race")
    lock.acquire(wait_s=60)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        bad += 1
    time.sleep(0.002)
    try:
        os.unlink(marker)
    except FileNotFoundError:
        bad += 1
    lock.release()
print(bad)
"""


def test_lock_race_threads_and_processes_hold_exclusive_one_at_a_time(tmp_path, repo):
    marker = str(tmp_path / "holder")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, os.fsdecode(repo), marker, "25"],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    errors: list[BaseException] = []
    bad = [0]

    def worker() -> None:
        try:
            for _ in range(25):
                lock = RepoLock(repo, exclusive=True, operation="race")
                lock.acquire(wait_s=60)
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    os.close(fd)
                except FileExistsError:
                    bad[0] += 1
                time.sleep(0.002)
                os.unlink(marker)
                lock.release()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    outs = [p.communicate(timeout=100)[0] for p in procs]
    assert errors == []
    assert bad[0] == 0
    assert [int(o) for o in outs] == [0, 0, 0]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert read_records(repo) == []


def test_lock_two_saves_at_once_both_complete_storing_each_chunk_once(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.bin").write_bytes(os.urandom(150_000))
    expected = file_digests(src)
    (tmp_path / "names").write_bytes(find0(src))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    # names from a file, so that neither save waits on input while the other runs
    procs = [subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", f"s{i}",
                               "--filelist", str(tmp_path / "names")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for i in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1].decode() for r in results]
    root = os.path.join(os.fsdecode(repo), "chunks")
    files = [n for d in os.listdir(root) for n in os.listdir(os.path.join(root, d))]
    assert all(".tmp." not in n for n in files)
    from backshift.catalog import Catalog
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    shas = [sha.hex() for (sha,) in cat.conn.execute("SELECT sha256 FROM chunk")]
    cat.close()
    assert sorted(files) == sorted(shas) and len(set(shas)) == len(shas)
    assert_save_matches(repo, 1, expected)
    assert_save_matches(repo, 2, expected)
    run("-r", repo, "check", "--read-data")


def test_lock_save_and_expire_together_expire_refused_or_waits(tmp_path, repo):
    src = tmp_path / "src"
    make_src(src)
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    (src / "f0.bin").write_bytes(os.urandom(60_000))  # the old f0 becomes garbage later
    expected = file_digests(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    save = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    names = find0(src).split(b"\0")
    save.stdin.write(b"\0".join(names[:3]) + b"\0")  # half the names; the save keeps going
    save.stdin.flush()
    deadline = time.time() + 30
    while not read_records(repo) and time.time() < deadline:
        time.sleep(0.05)
    refused = run_bin("-r", repo, "expire", "--keep-last", "1")
    assert refused.returncode == 5
    assert b"locked" in refused.stderr and b"(save, since" in refused.stderr
    waiting = subprocess.Popen([BACKSHIFT, "-r", repo, "expire", "--keep-last", "1",
                                "--lock-wait", "60"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting for the save
    save.stdin.write(b"\0".join(names[3:]))
    out, err = save.communicate(timeout=60)
    assert save.returncode == 0, err
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert b"remove       save 1" in out
    assert_save_matches(repo, 2, expected)
    run("-r", repo, "check", "--read-data")


def test_lock_restore_in_progress_keeps_expire_out(repo, tmp_path):
    """tar holds a shared flock while it reads chunks: expire must not run meanwhile."""
    import fcntl as _fcntl

    from backshift.errors import RepositoryLocked
    from backshift.lock import ReaderLock

    reader = ReaderLock(repo)
    reader.acquire()
    try:
        assert reader.fd is not None
        res = run("-r", repo, "expire", "--keep-last", "1", exit_code=5)
        assert "locked" in res.stderr
    finally:
        reader.release()
    run("-r", repo, "expire", "--keep-last", "1")
    # and a restore started during an expire waits for it, then says who holds the lock
    fd = os.open(os.path.join(repo, b"lock"), os.O_RDWR)
    _fcntl.flock(fd, _fcntl.LOCK_EX)
    try:
        with pytest.raises(RepositoryLocked):
            ReaderLock(repo).acquire(0.2)
    finally:
        os.close(fd)
