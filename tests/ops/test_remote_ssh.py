"""ssh:// repositories end to end through a real OpenSSH server (tests/helpers/sshd.py)."""

from __future__ import annotations

import os
import subprocess

from backshift.catalog import CATALOG_NAME
from backshift.errors import (
    NoSuchSave,
    RemoteAuthFailed,
    RemoteCommandNotFound,
    RemoteConnectionLost,
    RemoteRefused,
    RemoteUnreachable,
    RemoteVersionMismatch,
)
from conftest import BACKSHIFT, find0, run, run_bin


def saved_repo(tmp_path, tree) -> bytes:
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536")
    run("-r", repo, "save", "--subset", "t", input=find0(tree))
    return repo


def test_remote_list_verbose_is_byte_identical_to_local(tmp_path, tree, sshd, ssh_env):
    repo = saved_repo(tmp_path, tree)
    local = run_bin("-r", repo, "list", "--backup", "latest", "-v", env={"TZ": "UTC"})
    remote = run_bin("-r", sshd.url(os.fsdecode(repo)), "list", "--backup", "latest", "-v",
                     env={**ssh_env, "TZ": "UTC"})
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert remote.stderr == local.stderr


def test_remote_tar_restores_exactly_through_gnu_tar(tmp_path, tree, sshd, ssh_env):
    from restorehelp import compare_trees

    repo = saved_repo(tmp_path, tree)
    local = run_bin("-r", repo, "tar", "--backup", "latest")
    remote = run_bin("-r", sshd.url(os.fsdecode(repo)), "tar", "--backup", "latest",
                     env=ssh_env)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(["tar", "-xpf", "-", "-C", str(dest)], input=remote.stdout, check=True)
    compare_trees(tree, dest / str(tree).lstrip("/"))


def test_remote_tar_output_file_is_written_on_the_client(tmp_path, tree, sshd, ssh_env):
    repo = saved_repo(tmp_path, tree)
    local = run_bin("-r", repo, "tar", "--backup", "latest")
    res = run_bin("-r", sshd.url(os.fsdecode(repo)), "tar", "--backup", "latest",
                  "-o", "restore.tar", env=ssh_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b""
    assert (tmp_path / "restore.tar").read_bytes() == local.stdout


def test_remote_sql_prints_what_local_sql_prints(tmp_path, tree, sshd, ssh_env):
    repo = saved_repo(tmp_path, tree)
    query = "SELECT count(*) AS n, sum(size) AS bytes FROM files"
    local = run("-r", repo, "sql", query, "--format", "json")
    remote = run("-r", sshd.url(os.fsdecode(repo)), "sql", query, "--format", "json")
    assert remote.stdout_bytes == local.stdout_bytes
    assert b'"n"' in remote.stdout_bytes


def test_remote_exit_code_and_error_line_are_forwarded(tmp_path, tree, sshd, ssh_env):
    repo = saved_repo(tmp_path, tree)
    res = run("-r", sshd.url(os.fsdecode(repo)), "list", "--backup", "99",
              exit_code=NoSuchSave.exit_code)
    assert res.stderr == "backshift: error: no save 99 in this repository (see 'backshift saves')\n"


def test_remote_init_then_saves_and_expire_work(tmp_path, sshd, ssh_env):
    url = sshd.url(tmp_path / "fresh")
    res = run("-r", url, "init")
    assert "created repository" in res.stderr
    assert os.path.isfile(os.path.join(os.fsencode(tmp_path / "fresh"), CATALOG_NAME))
    local = run("-r", tmp_path / "fresh", "saves").stdout_bytes
    assert run("-r", url, "saves").stdout_bytes == local
    run("-r", url, "expire", "--keep-last", "1", "--allow-empty-series")


def test_remote_save_to_an_unreachable_host_is_one_line(tmp_path):
    res = run("-r", "ssh://127.0.0.1:1/srv/repo", "save", "--subset", "x", input=b"",
              exit_code=RemoteUnreachable.exit_code)
    assert "cannot reach 127.0.0.1" in res.stderr
    assert res.stderr.count("\n") == 1


def test_remote_restrict_to_path_refuses_other_repositories(tmp_path, tree, sshd, ssh_env,
                                                             monkeypatch):
    repo = saved_repo(tmp_path, tree)  # not under the forced key's --restrict-to-path
    monkeypatch.setenv("BACKSHIFT_RSH", sshd.rsh(sshd.forced_key))
    res = run("-r", sshd.url(os.fsdecode(repo)), "saves", exit_code=RemoteRefused.exit_code)
    assert "outside the paths this server allows" in res.stderr
    # neither '..' nor a symlink out of the allowed directory is a way around it
    dotdot = f"{sshd.allowed}/{os.path.relpath(os.fsdecode(repo), sshd.allowed)}"
    link = sshd.allowed / f"link-{tmp_path.name}"
    link.symlink_to(os.fsdecode(repo))
    for sneaky in (dotdot, str(link)):
        res = run("-r", sshd.url(sneaky), "saves", exit_code=RemoteRefused.exit_code)
        assert "outside the paths this server allows" in res.stderr


def test_remote_append_only_refuses_expire_but_allows_reads(tmp_path, tree, sshd, ssh_env,
                                                            monkeypatch):
    repo = sshd.allowed / tmp_path.name
    run("-r", repo, "init")
    run("-r", repo, "save", "--subset", "t", input=find0(tree))
    monkeypatch.setenv("BACKSHIFT_RSH", sshd.rsh(sshd.forced_key))
    url = sshd.url(repo)
    local = run("-r", repo, "list", "--backup", "latest")
    assert run("-r", url, "list", "--backup", "latest").stdout_bytes == local.stdout_bytes
    run("-r", url, "check")
    for argv in (["expire", "--keep-last", "1"], ["break-lock"], ["check", "--repair"]):
        res = run("-r", url, *argv, exit_code=RemoteRefused.exit_code)
        assert "--append-only" in res.stderr, argv
    assert len(run("-r", repo, "saves", "--format", "json").stdout.splitlines()) >= 1


def test_remote_version_mismatch_is_one_clear_line(tmp_path, tree, sshd, ssh_env,
                                                   monkeypatch):
    import sys

    repo = saved_repo(tmp_path, tree)
    newer = tmp_path / "backshift-newer"
    newer.write_text(f"#!{sys.executable}\n"
                     "from backshift.remote import protocol\n"
                     "protocol.VERSIONS = (7, 9)\n"
                     "from backshift.cli import main\n"
                     "main()\n")
    newer.chmod(0o755)
    monkeypatch.setenv("BACKSHIFT_REMOTE_PATH", str(newer))
    res = run("-r", sshd.url(os.fsdecode(repo)), "saves",
              exit_code=RemoteVersionMismatch.exit_code)
    assert res.stderr == ("backshift: error: protocol versions cannot talk: the client speaks "
                          "1..1, the server 7..9; install the same backshift release on both "
                          "hosts\n")


def test_remote_backshift_without_serve_is_a_version_mismatch(tmp_path, sshd, ssh_env,
                                                              monkeypatch):
    old = tmp_path / "backshift-old"  # what a release without serve says to `serve`
    old.write_text("#!/bin/sh\necho \"Error: No such command 'serve'.\" >&2\nexit 2\n")
    old.chmod(0o755)
    monkeypatch.setenv("BACKSHIFT_REMOTE_PATH", str(old))
    res = run("-r", sshd.url("/srv/repo"), "saves", exit_code=RemoteVersionMismatch.exit_code)
    assert res.stderr == (f"backshift: error: '{old} serve' on 127.0.0.1 ended before the "
                          "handshake (exit status 2: Error: No such command 'serve'.); is the "
                          "backshift there a release without serve?\n")


def test_remote_unreachable_port_is_one_clear_line(tmp_path, sshd, ssh_env):
    from sshd import _free_port

    url = f"ssh://127.0.0.1:{_free_port()}/srv/repo"
    res = run("-r", url, "saves", exit_code=RemoteUnreachable.exit_code)
    assert res.stderr.startswith("backshift: error: cannot reach 127.0.0.1: ")
    assert "Connection refused" in res.stderr
    assert res.stderr.count("\n") == 1


def test_remote_unknown_key_is_an_auth_failure(tmp_path, sshd, ssh_env, monkeypatch):
    from sshd import _keygen

    _keygen(tmp_path / "stranger")
    monkeypatch.setenv("BACKSHIFT_RSH", sshd.rsh(tmp_path / "stranger"))
    res = run("-r", sshd.url("/srv/repo"), "saves", exit_code=RemoteAuthFailed.exit_code)
    assert "Permission denied" in res.stderr
    assert res.stderr.count("\n") == 1


def test_remote_missing_backshift_is_command_not_found(tmp_path, sshd, ssh_env, monkeypatch):
    monkeypatch.setenv("BACKSHIFT_REMOTE_PATH", "/nonexistent/backshift")
    res = run("-r", sshd.url("/srv/repo"), "saves",
              exit_code=RemoteCommandNotFound.exit_code)
    assert res.stderr.startswith("backshift: error: cannot run '/nonexistent/backshift serve' "
                                 "on 127.0.0.1: ")
    assert res.stderr.count("\n") == 1


def _remote_tar_of_24_mib(tmp_path, sshd, ssh_env) -> subprocess.Popen:
    """A remote `tar --backup latest` of a save of 24 MiB of random bytes, started: its
    stdout and stderr are pipes."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(24 << 20))
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    proc = subprocess.Popen([BACKSHIFT, "-r", sshd.url(os.fsdecode(repo)), "tar", "--backup",
                             "latest"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, **ssh_env})
    return proc


def test_remote_tar_cut_mid_stream_is_a_lost_connection(tmp_path, sshd, ssh_env):
    proc = _remote_tar_of_24_mib(tmp_path, sshd, ssh_env)
    try:
        assert len(proc.stdout.read(65536)) == 65536
        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
        assert len(children) == 1  # the ssh process
        os.kill(int(children[0]), 9)
        rest = proc.stdout.read()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == RemoteConnectionLost.exit_code, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(rest) < 20 << 20
    assert err.startswith("backshift: error: connection to 127.0.0.1 lost: ")
    assert "killed by signal 9" in err
    assert err.count("\n") == 1


def test_remote_ctrl_c_mid_tar_exits_130_and_ends_ssh(tmp_path, sshd, ssh_env):
    import signal

    proc = _remote_tar_of_24_mib(tmp_path, sshd, ssh_env)
    try:
        assert len(proc.stdout.read(65536)) == 65536
        ssh_pid = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
        proc.send_signal(signal.SIGINT)  # the client only, as a signal from elsewhere
        proc.stdout.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    # click ends the ^C line first, as for a local command
    assert proc.stderr.read().decode() == "\nbackshift: interrupted\n"
    assert not os.path.exists(f"/proc/{ssh_pid}")  # ended and reaped by the client
