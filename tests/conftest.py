"""Shared fixtures: hermetic environment, a fresh repository, a CLI runner, sample trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from backshift import cli
from backshift.model import ChunkerParams
from backshift.ops import borrow as borrow_mod
from backshift.repo import init_repository

BIN = Path(sys.executable).parent
BACKSHIFT = str(BIN / "backshift")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No BACKSHIFT_* from the caller's shell, a fixed TZ, and cwd in the test's tmp dir."""
    for key in list(os.environ):
        if key.startswith("BACKSHIFT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    yield
    time.tzset()


@pytest.fixture
def no_racy_margin(monkeypatch):
    """Trust files modified just before a save (tests make files and re-save at once)."""
    monkeypatch.setattr(borrow_mod, "RACY_MARGIN_NS", -10**18)


@dataclass
class Result:
    code: int
    stdout_bytes: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "surrogateescape")


def run(*args: str | bytes, input: bytes | None = None, exit_code: int | None = 0) -> Result:
    """Run the CLI in-process; assert its exit code, showing its output on failure."""
    argv = [os.fsdecode(a) if isinstance(a, bytes) else a for a in args]
    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, _mixed):
        code = cli.run(argv)
        result = Result(code, out.getvalue(), err.getvalue().decode("utf-8", "replace"))
    if exit_code is not None:
        assert code == exit_code, (
            f"exit {code}, expected {exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_bin(*args: str | bytes, input: bytes | None = None, env: dict | None = None,
            timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the installed `backshift` command as a real process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    full_env.update(env or {})
    return subprocess.run([BACKSHIFT, *args], input=input, capture_output=True, env=full_env,
                          timeout=timeout, **kw)


@pytest.fixture
def repo(tmp_path) -> bytes:
    """A freshly initialised repository with small chunks (many chunks from small files)."""
    path = os.fsencode(tmp_path / "repo")
    init_repository(path, ChunkerParams(min_size=4096, avg_size=16384, max_size=65536))
    return path


def find0(root: Path | bytes) -> bytes:
    """What `find ROOT -print0` prints: the real find, as users run it."""
    return subprocess.run(["find", os.fsencode(root), "-print0"], capture_output=True,
                          check=True).stdout


def make_tree(root: Path) -> Path:
    """A tree with every file type backshift records and names that trip up tools."""
    root = Path(root)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "random.bin").write_bytes(os.urandom(300_000))
    (root / "text.txt").write_bytes(b"".join(b"line %d of text\n" % i for i in range(20000)))
    os.link(root / "a.txt", root / "sub" / "hardlink")
    os.symlink("/nonexistent/target with space", root / "dangling link")
    os.symlink("a.txt", root / "good-link")
    os.mkfifo(root / "fifo")
    raw = os.fsencode(root)
    for name in (b"bad-\xff\xfe-name", b"new\nline", b"tab\there", b"-leading-dash",
                 b"back\\slash", "caf\u00e9.txt".encode(), b"x" * 255):
        with open(os.path.join(raw, b"sub", name), "wb") as f:
            f.write(b"odd name " + name + b"\n")
    (root / "sub" / "deeper" / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "sub" / "deeper" / "setuid", 0o4755)
    os.chmod(root / "sub" / "deeper", 0o750)
    os.utime(root / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "src")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# The OpenSSH server fixtures for ssh:// repositories (started once, only when a test asks).
from sshd import ssh_env, sshd  # noqa: E402, F401

pytest_plugins = ["seaweed"]  # the SeaweedFS fixtures of the object-store tests
