"""Remote save interrupted: the client killed, `serve` killed, the connection cut (ssh
killed) or a Ctrl-C, each before anything is committed and after a checkpoint. The
repository checks clean and the next save works and borrows what was committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import apsw
import pytest

from backshift.errors import EXIT_INTERRUPTED, RemoteConnectionLost
from conftest import BACKSHIFT, find0, run, run_bin

WAIT_S = 60.0


def make_files(root, n: int = 120):
    root.mkdir()
    for i in range(n):
        (root / f"f{i:03d}").write_bytes(os.urandom(3000) + b"%d" % i)
    time.sleep(2.1)  # past the racy window: the next save may borrow them
    return root


def last_save(repo: bytes) -> tuple[int, str, int, int] | None:
    """(id, status, files, pid) of the newest save, read while the save runs (WAL)."""
    db = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")),
                         flags=apsw.SQLITE_OPEN_READONLY)
    db.setbusytimeout(10_000)
    try:
        row = db.execute("SELECT id, status, files, writer_pid FROM save "
                         "ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return row


def until(what, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def ssh_child(pid: int) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            if int(fields[1]) == pid and os.path.basename(argv0) == b"ssh":
                return int(entry)
    return 0


@pytest.mark.parametrize("point", ["opened", "committed"])
@pytest.mark.parametrize("victim", ["client", "server", "ssh", "ctrl-c"])
def test_remote_save_killed_leaves_an_interrupted_save_the_next_one_borrows(
        tmp_path, sshd, ssh_env, victim, point):
    src = make_files(tmp_path / "src")
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536")
    url = sshd.url(os.fsdecode(repo))
    names = find0(src).split(b"\0")[:-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    client = subprocess.Popen([BACKSHIFT, "-r", url, "save", "--subset", "t",
                               "--checkpoint-interval", "0.1"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, **ssh_env}, start_new_session=True)
    try:
        row = until(lambda: os.path.exists(os.path.join(repo, b"catalog.sqlite3"))
                    and (r := last_save(repo)) is not None and r[1] == "running" and r)
        if point == "committed":  # half the names, then the input stalls: a checkpoint
            client.stdin.write(b"\0".join(names[:60]) + b"\0")
            client.stdin.flush()
            row = until(lambda: (r := last_save(repo))[2] >= 60 and r)
        if victim == "client":
            client.kill()
        elif victim == "server":
            os.kill(row[3], signal.SIGKILL)
        elif victim == "ssh":
            os.kill(until(lambda: ssh_child(client.pid)), signal.SIGKILL)
        else:  # Ctrl-C at a terminal: the whole foreground process group
            os.killpg(client.pid, signal.SIGINT)
        _out, err = client.communicate(timeout=WAIT_S)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if victim in ("server", "ssh"):
        assert client.returncode == RemoteConnectionLost.exit_code, err
        assert err.decode().count("\n") == 1, err
        assert b"connection to 127.0.0.1 lost" in err
    elif victim == "ctrl-c":
        assert client.returncode == EXIT_INTERRUPTED, err
    if victim != "server":  # serve saw the client go and marked its save interrupted
        until(lambda: last_save(repo)[1] == "interrupted")
    committed = last_save(repo)[2]
    if point == "committed":
        assert committed >= 60
    again = run_bin("-r", url, "save", "--subset", "t", "--json", input=find0(src),
                    env=ssh_env)
    assert again.returncode == 0, again.stderr
    stats = json.loads(again.stdout)
    assert stats["files"] == len(names)
    if point == "committed":  # what the interrupted save committed is borrowed
        assert stats["files_borrowed"] >= 60 - 1
    db = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    db.setbusytimeout(10_000)
    statuses = [r[0] for r in db.execute("SELECT status FROM save ORDER BY id")]
    db.close()
    assert statuses == ["interrupted", "complete"]
    run("-r", repo, "check", "--read-data")


def test_remote_save_removes_the_staging_directory_a_killed_save_left(tmp_path, sshd,
                                                                      ssh_env):
    from backshift.ops.saveproxy import STAGING, _staging_parent
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    parent = _staging_parent() or __import__("tempfile").gettempdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = os.path.join(parent, f"{STAGING}{dead.pid}-leftover")
    os.makedirs(os.path.join(left, "chunks"))
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init")
    res = run_bin("-r", sshd.url(os.fsdecode(repo)), "save", "--subset", "t",
                  input=find0(src), env=ssh_env)
    assert res.returncode == 0, res.stderr
    assert not os.path.exists(left)
    assert not [n for n in os.listdir(parent) if n.startswith(f"{STAGING}{os.getpid()}-")]
