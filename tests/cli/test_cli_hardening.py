"""CLI depth: hostile or unlucky input (broken pipes, huge numbers, odd paths) never gives a
traceback, and every refusal is one line with its documented exit code."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from restorehelp import save_tree

from conftest import BACKSHIFT, run, run_bin


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


HUGE = "99999999999999999999"


@pytest.mark.parametrize("args", [
    ["list", "--backup", HUGE], ["tar", "--backup", HUGE, "-o", "out.tar"],
    ["diff", "1", HUGE], ["stats", "--backup", HUGE], ["find", "*", "--backup", HUGE],
    ["expire", "--save", HUGE],
])
def test_cli_huge_save_id_is_a_usage_error(repo, tmp_path, args):
    save_tree(repo, _many_files(tmp_path / "src", 2))
    res = run_bin("-r", repo, *args)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Traceback" not in err and "a save id is a whole number from 1" in err


@pytest.mark.parametrize("since", ["0001-01-01", "9999-12-31 23:59"])
def test_find_since_far_dates_work(repo, tmp_path, since):
    save_tree(repo, _many_files(tmp_path / "src", 2))
    future = since.startswith("9999")
    res = run("-r", repo, "find", "*00001.txt", "--since", since, "--format", "json",
              exit_code=9 if future else 0)  # 9: nothing matches (no save that late)
    found = [json.loads(line)["path"] for line in res.stdout.splitlines()]
    assert found == ([] if future else [
        str(tmp_path / "src" / "file-with-a-longish-name-00001.txt")])
    assert "Traceback" not in res.stderr


def test_init_non_utf8_path_is_refused_and_leaves_nothing(tmp_path):
    bad = os.fsencode(tmp_path) + b"/repo-\xff"
    res = run_bin("-r", bad, "init")
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert err.count("\n") == 1 and "must be UTF-8" in err and "Traceback" not in err
    assert not os.path.exists(bad)


def test_cli_unexpected_error_is_one_line_exit_2(repo, monkeypatch):
    from backshift.ops import report

    def boom(*_a, **_k):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(report, "stats", boom)
    res = run("-r", repo, "stats", exit_code=2)
    assert res.stderr.splitlines() == [
        "backshift: error: unexpected RuntimeError: injected fault "
        "(--debug shows where; please report it)"]
    res = run("-r", repo, "--debug", "stats", exit_code=2)
    assert "Traceback" in res.stderr and "injected fault" in res.stderr


@pytest.mark.parametrize("predicate", ["0); SELECT 1; --", "1); SELECT 1 FROM files WHERE (1"])
def test_tar_where_second_statement_is_refused(repo, tmp_path, predicate):
    save_tree(repo, _many_files(tmp_path / "src", 2))
    res = run("-r", repo, "tar", "--backup", "1", "--where", predicate, "-o", "out.tar",
              exit_code=11)
    assert res.stderr.splitlines() == ["backshift: error: query refused: --where takes one "
                                       "expression over the files view, not statements"]
    assert not os.path.exists("out.tar") or os.path.getsize("out.tar") == 0


@pytest.mark.parametrize("args", [
    ["sql", "--timeout", "nan", "SELECT 1"], ["sql", "--timeout", "inf", "SELECT 1"],
    ["save", "--checkpoint-interval", "nan", "."], ["save", "--checkpoint-interval", "inf", "."],
    ["check", "--lock-wait", "nan"],
])
def test_cli_nan_and_inf_seconds_are_refused(repo, args):
    res = run("-r", repo, *args, exit_code=2)
    assert "not a finite number" in res.stderr


def test_sql_allowlisted_pragmas_all_run(repo):
    from backshift import sqlguard
    for name in sorted(sqlguard.PRAGMAS_WITHOUT_VALUE):
        run("-r", repo, "sql", f"PRAGMA {name}")
    run("-r", repo, "sql", "PRAGMA journal_mode = DELETE", exit_code=11)
