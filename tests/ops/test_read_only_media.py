"""A repository on read-only media: a backup disk mounted read-only for a restore, a
snapshot, write-protected storage. Everything that only reads works there; writing
commands fail with one line naming the path. Before, every command failed with "not a
usable backshift catalog: unable to open database file" (exit 7): SQLite opens a WAL
catalog read-only only with a -shm file it can create or write.

The media are real: the repository is bind-mounted read-only onto itself in a private mount
namespace (`unshare --mount`), and the commands run inside it as real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import apsw
import pytest
from restorehelp import compare_trees, extract, hash_dir

from conftest import BACKSHIFT, find0, make_tree, run

# sh -c SCRIPT REPO ARGV...: REPO read-only onto itself, then ARGV in that namespace
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


def _namespace_prefix() -> list[str]:
    """How to get a private mount namespace here: as root directly, else as the root of a
    user namespace (unprivileged user namespaces)."""
    base = ["unshare", "--mount", "--propagation", "private"]
    for prefix in (base, [*base[:1], "--map-root-user", *base[1:]]):
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    pytest.skip("no mount namespace here (unshare --mount refused): cannot make read-only media")


def on_read_only_media(repo: bytes, *args: str | bytes, input: bytes | None = None
                       ) -> subprocess.CompletedProcess:
    """Run `backshift -r REPO ARGS` with REPO on read-only media."""
    argv = [*_namespace_prefix(), "sh", "-c", READ_ONLY, repo, BACKSHIFT, "-r", repo, *args]
    return subprocess.run(argv, input=input, capture_output=True, timeout=120)


@pytest.fixture
def saved(repo, tmp_path) -> tuple[bytes, Path]:
    src = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    (src / "new.txt").write_bytes(b"in the second save only\n")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    return repo, src


def test_read_only_media_serve_every_reading_command(saved, tmp_path):
    repo, src = saved
    listed = run("-r", repo, "list", "--backup", "latest", "-v").stdout_bytes
    before = hash_dir(repo)
    res = on_read_only_media(repo, "list", "--backup", "latest", "-v")
    assert res.returncode == 0, res.stderr
    assert res.stdout == listed
    res = on_read_only_media(repo, "tar", "--backup", "latest")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "dest"
    extract("gnu", res.stdout, dest)
    compare_trees(src, dest / os.path.relpath(src, "/"))
    for args, expect in [(("saves",), b"complete"),
                         (("find", "*new.txt"), b"new.txt"),
                         (("history", os.fsencode(src / "new.txt")), b"file    24"),
                         (("sql", "SELECT count(*) AS n FROM saves"), b"2"),
                         (("stats",), b"repository"),
                         (("check", "--read-data"), b"no problems found")]:
        res = on_read_only_media(repo, *args)
        assert res.returncode == 0, (args, res.stderr)
        assert expect in res.stdout, (args, res.stdout)
        assert not res.stderr, (args, res.stderr)
    assert hash_dir(repo) == before  # nothing written, not even an empty -shm


@pytest.mark.parametrize("args", [("save", "--subset", "t"), ("expire", "--keep-last", "1")])
def test_read_only_media_refuse_writing_commands_in_one_line(saved, args):
    repo, src = saved
    res = on_read_only_media(repo, *args, input=find0(src))
    err = res.stderr.decode()
    assert res.returncode == 12, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{os.fsdecode(repo)}/lock: Read-only file system" in err, err


def _with_unfolded_log(repo: bytes, copy: bytes, keep_shm: bool) -> None:
    """COPY: REPO as a crash (or a yanked disk) leaves it, with a commit that is only in
    the write-ahead log: subset renamed to 'moved'. KEEP_SHM: with the -shm file too."""
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE save SET subset = 'moved'")
    shutil.copytree(repo, copy)
    conn.close()
    assert os.path.getsize(os.path.join(copy, b"catalog.sqlite3-wal")) > 0
    if not keep_shm:
        os.unlink(os.path.join(copy, b"catalog.sqlite3-shm"))


def test_read_only_media_read_a_log_not_folded_in_when_its_shm_is_there(saved, tmp_path):
    repo, _src = saved
    copy = os.fsencode(tmp_path / "copy")
    _with_unfolded_log(repo, copy, keep_shm=True)
    res = on_read_only_media(copy, "saves")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(b"moved") == 2  # the log's commit is seen, not the stale file


def test_read_only_media_explain_a_log_they_cannot_read(saved, tmp_path):
    """Without a -shm the log cannot be read, and ignoring it (immutable) would show a
    catalog older than the last commit: a clear error instead."""
    repo, _src = saved
    copy = os.fsencode(tmp_path / "copy")
    _with_unfolded_log(repo, copy, keep_shm=False)
    for args in (("saves",), ("list", "--backup", "latest"), ("sql", "SELECT 1")):
        res = on_read_only_media(copy, *args)
        err = res.stderr.decode()
        assert res.returncode == 12, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "catalog.sqlite3: cannot read the catalog on read-only media: its " \
            "write-ahead log (-wal) holds transactions not yet in the file" in err, err
