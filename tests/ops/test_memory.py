"""The memory of check --read-data and expire (issue 19 item 16): both read the catalog once
through with a small page cache, and the bench row that measures their peak RSS on a
1M-file catalog (bench/memory.py) runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backshift.cli import admin
from backshift.ops import check as check_mod
from backshift.ops import expire as expire_mod
from conftest import find0, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["check", "--read-data"], ["expire", "--keep-last", "1"]])
def test_memory_check_and_expire_read_with_a_small_page_cache(repo, tree, monkeypatch,
                                                              command):
    run("-r", repo, "save", "--subset", "s", input=find0(tree))
    run("-r", repo, "save", "--subset", "s", input=find0(tree))
    seen = []
    for mod, name in ((check_mod, "check"), (expire_mod, "expire")):
        real = getattr(mod, name)

        def spy(repo_, *a, _real=real, **kw):
            seen.append(repo_.catalog.conn.execute("PRAGMA cache_size").fetchone()[0])
            return _real(repo_, *a, **kw)
        monkeypatch.setattr(mod, name, spy)
    run("-r", repo, *command)
    assert seen == [-admin.STREAMING_CACHE_KIB] and admin.STREAMING_CACHE_KIB <= 16 * 1024


def test_memory_bench_row_runs_on_a_small_catalog(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--files", "2000",
                           "--cache", tmp_path / "cache", "--work", tmp_path / "work"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = proc.stdout.splitlines()[1:]
    assert [r.split(" (")[0] for r in rows] == ["check --read-data", "expire --keep-last 1"]
    for r in rows:  # seconds, peak RSS MB, the limit, exit status 0
        _s, mb, limit, code = r.split(")")[1].split()
        assert 0 < float(mb) < int(limit) == 250 and code == "0", r
