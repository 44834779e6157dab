"""ssh:// repositories end to end through a real OpenSSH server (tests/sshd.py)."""

from __future__ import annotations

import os
import subprocess

from conftest import BACKSHIFT, find0, run, run_bin
from sshd import ssh_env, sshd  # noqa: F401 - fixtures

from backshift.errors import (
    NoSuchSave,
    RemoteAuthFailed,
    RemoteCommandNotFound,
    RemoteConnectionLost,
    RemoteRefused,
    RemoteUnreachable,
    RemoteVersionMismatch,
)


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
