"""One escaping style for names in every text output: GNU tar's, in the user's real locale,
also under cron's empty environment (where Python coerces C to C.UTF-8)."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BACKSHIFT


@pytest.fixture
def saved(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src)
    for name in ("r\u00e9sum\u00e9".encode(), b"caf\xe9.txt", b"tab\there"):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"x")
    subprocess.run([BACKSHIFT, "-r", repo, "save", "-q", str(src)], check=True,
                   env={"PATH": os.environ["PATH"]})
    return repo


def _cron(*args: str | bytes, **env: str) -> bytes:
    """A command as cron runs it: no LANG, no LC_* (`env -i`)."""
    res = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *args],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("env", [{}, {"LC_ALL": "C"}, {"LANG": "C.UTF-8"}])
def test_list_under_cron_prints_what_gnu_tar_prints(saved, env):
    stream = _cron(BACKSHIFT, "-r", saved, "tar", "--backup", "1", **env)
    tar = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "tar", "-tf",
                          "-"], input=stream, capture_output=True, timeout=60).stdout
    listed = _cron(BACKSHIFT, "-r", saved, "list", "--backup", "1", **env)
    assert listed == tar
    if env.get("LANG") == "C.UTF-8":
        assert "r\u00e9sum\u00e9".encode() in listed and b"caf\\351.txt" in listed
    else:
        assert b"r\\303\\251sum\\303\\251" in listed and b"caf\\351.txt" in listed
    assert b"tab\\there" in listed


def test_find_sql_history_and_diff_escape_as_tar_does(saved):
    for args in (["find", "caf*"], ["sql", "SELECT path FROM files"],
                 ["diff", "--backup", "1", "--backup", "1"]):
        out = _cron(BACKSHIFT, "-r", saved, *args)
        assert b"\\x" not in out, args  # the old Python-style escapes are gone
    assert b"caf\\351.txt" in _cron(BACKSHIFT, "-r", saved, "find", "caf*")
    assert b"r\\303\\251sum\\303\\251" in _cron(BACKSHIFT, "-r", saved, "sql",
                                                "SELECT name FROM files")
    assert "r\u00e9sum\u00e9".encode() in _cron(BACKSHIFT, "-r", saved, "sql",
                                               "SELECT name FROM files", LANG="C.UTF-8")
    # json and csv do not depend on the locale
    assert _cron(BACKSHIFT, "-r", saved, "find", "*sum*", "--json") == _cron(
        BACKSHIFT, "-r", saved, "find", "*sum*", "--json", LANG="C.UTF-8")
