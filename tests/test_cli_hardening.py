"""CLI depth: hostile or unlucky input (broken pipes, huge numbers, odd paths) never gives a
traceback, and every refusal is one line with its documented exit code."""

from __future__ import annotations

import subprocess

from restorehelp import save_tree

from conftest import BACKSHIFT


def _many_files(root, n=3000):
    root.mkdir()
    for i in range(n):
        (root / f"file-with-a-longish-name-{i:05d}.txt").write_bytes(b"x")
    return root


def test_list_into_head_exits_141_quietly(repo, tmp_path):
    save_tree(repo, _many_files(tmp_path / "src"))  # ~300 KB of -v lines: more than a pipe
    p1 = subprocess.Popen([BACKSHIFT, "-r", repo, "list", "--backup", "1", "-v"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.Popen(["head", "-1"], stdin=p1.stdout, stdout=subprocess.PIPE)
    p1.stdout.close()
    first, _ = p2.communicate(timeout=60)
    err = p1.stderr.read()
    assert p1.wait(timeout=60) == 141
    assert err == b""
    assert first.count(b"\n") == 1
