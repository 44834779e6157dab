"""Matrix rows I1-I3 of docs/reliability.md: exit codes, no tracebacks, every write error fails."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import apsw
import pytest
import seaweed
from harness import crash
from harness.consistency import assert_repo_consistent
from harness.faults import EIO, ENOSPC, Fault, inject
from harness.scenario import one_line_error, save, save_status, small_tree

from backshift import repo as repo_module
from backshift.catalog import schema_version
from backshift.errors import exit_code_table
from backshift.lock import RepoLock
from backshift.objstore import ObjectStore
from backshift.store import Store
from conftest import BACKSHIFT, find0, run


def _saved(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    return src


def _code_ok(tmp_path, repo, monkeypatch):
    return run("-r", repo, "saves")


def _code_warning(tmp_path, repo, monkeypatch):
    (tmp_path / "here").write_bytes(b"here\n")  # one name saved, one vanished: a warning
    names = os.fsencode(tmp_path / "here") + b"\0/nonexistent/file\0"
    return run("-r", repo, "save", "--subset", "t", "--hostname", "h", input=names,
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
        return run("-r", repo, "save", "--subset", "t",
                   "--hostname", "h", input=b"/etc\0", exit_code=None)
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
    return run("-r", repo, "save", "--subset", "t",
               "--hostname", "h", input=find0(small_tree(tmp_path / "s")),
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


# The ssh:// codes. A local "rsh" runs the far end as ssh would run it on the server (as
# `rsync -e` allows), or plays ssh refusing the login; tests/ops/test_remote_ssh.py has each
# through a real sshd.
LOCAL_RSH = "sh -c 'shift; exec \"$@\"' rsh"


def _remote(monkeypatch, remote_path: str, rsh: str = LOCAL_RSH, *argv: str):
    monkeypatch.setenv("BACKSHIFT_RSH", rsh)
    monkeypatch.setenv("BACKSHIFT_REMOTE_PATH", remote_path)
    return run("-r", "ssh://backup.example/srv/repo", *(argv or ("saves",)), exit_code=None)


def _code_remote_unreachable(tmp_path, repo, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    monkeypatch.setenv("BACKSHIFT_RSH", "ssh -o BatchMode=yes")
    return run("-r", f"ssh://127.0.0.1:{port}/srv/repo", "saves", exit_code=None)


def _code_remote_auth_failed(tmp_path, repo, monkeypatch):
    return _remote(monkeypatch, BACKSHIFT, "sh -c 'echo \"Permission denied (publickey).\" "
                   ">&2; exit 255' ssh")


def _code_remote_command_not_found(tmp_path, repo, monkeypatch):
    return _remote(monkeypatch, str(tmp_path / "no-backshift-here"))


def _code_remote_version_mismatch(tmp_path, repo, monkeypatch):
    import sys

    newer = tmp_path / "backshift-newer"
    newer.write_text(f"#!{sys.executable}\nfrom backshift.remote import protocol\n"
                     "protocol.VERSIONS = (7, 9)\nfrom backshift.cli import main\nmain()\n")
    newer.chmod(0o755)
    return _remote(monkeypatch, str(newer))


def _code_remote_connection_lost(tmp_path, repo, monkeypatch):
    import sys

    dies = tmp_path / "backshift-dies"  # answers the hello, then dies running the command
    dies.write_text(f"#!{sys.executable}\nimport os\nfrom backshift.remote import server\n"
                    "server._run = lambda *args: os._exit(0)\n"
                    "from backshift.cli import main\nmain()\n")
    dies.chmod(0o755)
    return _remote(monkeypatch, str(dies), LOCAL_RSH, "saves")


def _code_remote_refused(tmp_path, repo, monkeypatch):
    return _remote(monkeypatch, BACKSHIFT,
                   f"sh -c 'exec {BACKSHIFT} serve --restrict-to-path {tmp_path}' rsh")


def _code_remote_chunk_rejected(tmp_path, repo, monkeypatch):
    """A broken or hostile client: every body it uploads has one bit flipped."""
    from backshift.ops import saveproxy

    real = saveproxy.SessionProxy._put

    def flipped(self, batch, lengths):
        return real(self, [(sha, body[:-1] + bytes([body[-1] ^ 1])) for sha, body in batch],
                    lengths)

    monkeypatch.setattr(saveproxy.SessionProxy, "_put", flipped)
    monkeypatch.setenv("BACKSHIFT_RSH", LOCAL_RSH)
    monkeypatch.setenv("BACKSHIFT_REMOTE_PATH", BACKSHIFT)
    src = small_tree(tmp_path / "src")
    return run("-r", f"ssh://backup.example{os.fsdecode(repo)}", "save", "--subset", "t",
               input=find0(src), exit_code=None)


SCENARIOS.update({
    30: _code_remote_unreachable, 31: _code_remote_auth_failed,
    32: _code_remote_command_not_found, 33: _code_remote_version_mismatch,
    34: _code_remote_connection_lost, 35: _code_remote_refused,
    36: _code_remote_chunk_rejected,
})


def _objstore_probe_at_open(repo, monkeypatch, url: str, env: dict[str, str]):
    """`saves` with a repository open that first probes the bucket URL, as opening a
    repository whose chunks are in a bucket will (docs/objstore.md): the object store's
    real errors through the CLI's one translation, until `init --chunks` is wired."""
    real = repo_module.open_repository

    def probing(*args, **kw):
        with ObjectStore(url, retries=1, backoff_s=0.005) as store:
            store.probe()
        return real(*args, **kw)

    seaweed.use_env(monkeypatch, env)
    monkeypatch.setattr(repo_module, "open_repository", probing)
    return run("-r", repo, "saves", exit_code=None)


def _code_objstore_unreachable(tmp_path, repo, monkeypatch):
    port = seaweed.free_ports(1)[0]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    return _objstore_probe_at_open(repo, monkeypatch, "s3://bucket/p", env)


def _code_objstore_denied(tmp_path, repo, monkeypatch):
    server = seaweed.session_server()
    env = {**server.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    return _objstore_probe_at_open(repo, monkeypatch, f"s3://{server.bucket}/p", env)


def _code_objstore_bucket_missing(tmp_path, repo, monkeypatch):
    server = seaweed.session_server()
    return _objstore_probe_at_open(repo, monkeypatch, "s3://no-such-bucket/p", server.env())


def _code_objstore_failed(tmp_path, repo, monkeypatch):
    with seaweed.throttling_endpoint() as stub:
        env = {**seaweed.session_server().env(), "AWS_ENDPOINT_URL": stub.url}
        return _objstore_probe_at_open(repo, monkeypatch, "s3://bucket/p", env)


SCENARIOS.update({40: _code_objstore_unreachable, 41: _code_objstore_denied,
                  42: _code_objstore_bucket_missing, 43: _code_objstore_failed})

def test_I1_every_documented_exit_code_has_a_scenario():
    documented = {code for code, _ in exit_code_table()}
    # 130, 141 and 143 need real processes and signals: test_I1_interrupted_save_exits_130...,
    # test_cli_hardening.py's test_list_into_head_exits_141_quietly, test_save_first_day.py's
    # test_save_stops_within_a_second_inside_a_big_file
    assert documented - set(SCENARIOS) <= {130, 141, 143}, "add a scenario for the new exit code"


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
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t", "--hostname", "h"],
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
    proc = crash.backshift("-r", repo, "save", "--subset", "t", "--hostname", "h", input=find0(src),
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
        res = run("-r", repo, "save", "--subset", "t",
                  "--hostname", "h", input=find0(src), exit_code=None)
    expected = {"enospc": 12, "eio_rename": 12, "locked": 5, "corrupt": 7, "bad_args": 2}
    assert res.code == expected[scenario], res.stderr
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
    res = run("-r", repo, "save", "--subset", "t",
              "--hostname", "h", input=find0(src), exit_code=None)
    assert fault.raised == 1
    assert res.code == 12, res.stderr
    assert list(save_status(repo).values()) == ["interrupted"]
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)
