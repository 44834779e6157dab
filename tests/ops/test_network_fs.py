"""A repository on a network or FUSE filesystem (here a real sshfs mount of a local
directory through the test sshd): opened for writing in SQLite's exclusive locking mode
(no -shm file) under an exclusive repository lock, with a one-line notice."""

from __future__ import annotations

import os
import subprocess
import time

import apsw
import pytest
from repo_oracle import assert_save_matches, file_digests

from backshift.catalog import network_filesystem
from backshift.errors import RepositoryLocked
from backshift.lock import LOCKS_DIR
from conftest import BACKSHIFT, find0, run, run_bin


@pytest.fixture
def sshfs_dir(tmp_path, sshd):
    """TMP/exported mounted at TMP/mnt over sshfs; (mount point, exported directory)."""
    exported, mnt = tmp_path / "exported", tmp_path / "mnt"
    exported.mkdir()
    mnt.mkdir()
    subprocess.run(["sshfs", "-p", str(sshd.port), "-o",
                    f"IdentityFile={sshd.client_key},IdentitiesOnly=yes,"
                    "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes",
                    f"127.0.0.1:{exported}", str(mnt)], check=True, timeout=60,
                   stderr=subprocess.PIPE)
    try:
        yield mnt, exported
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)


def test_network_filesystem_names_fuse_and_not_a_local_disk(tmp_path, sshfs_dir):
    mnt, _exported = sshfs_dir
    assert network_filesystem(os.fsencode(mnt)) == "FUSE"
    assert network_filesystem(os.fsencode(tmp_path)) is None


def test_repository_on_sshfs_saves_with_exclusive_locking_and_one_notice(tmp_path, tree,
                                                                        sshfs_dir):
    mnt, exported = sshfs_dir
    repo = os.fsencode(mnt / "repo")
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536")
    res = run_bin("-r", repo, "save", "--subset", "t", input=find0(tree))
    assert res.returncode == 0, res.stderr
    notices = [line for line in res.stderr.decode().splitlines() if "network filesystem" in line]
    assert len(notices) == 1 and "FUSE" in notices[0] and "ssh://" in notices[0], res.stderr
    # a second writer is refused while one holds the repository (one writer at a time)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    first = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "u"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    try:
        locks = exported / "repo" / LOCKS_DIR.decode()
        deadline = time.monotonic() + 60
        while not (locks.is_dir() and any(p.suffix == ".json" for p in locks.iterdir())):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = run_bin("-r", repo, "save", "--subset", "v", input=find0(tree))
        assert second.returncode == RepositoryLocked.exit_code, second.stderr
        # the writer holds SQLite's file lock (exclusive locking mode): a reader, which
        # WAL's shared index would let in, waits
        db = apsw.Connection(os.fsdecode(repo) + "/catalog.sqlite3",
                             flags=apsw.SQLITE_OPEN_READONLY)
        try:
            with pytest.raises(apsw.BusyError):
                db.execute("SELECT count(*) FROM save").fetchall()
        finally:
            db.close()
    finally:
        first.communicate(find0(tree), timeout=120)
    assert first.returncode == 0
    run("-r", repo, "check", "--read-data")
    save_id = int(run("-r", repo, "sql", "SELECT min(id) FROM save").stdout_bytes.split()[-1])
    assert_save_matches(os.fsencode(exported / "repo"), save_id, file_digests(tree))
