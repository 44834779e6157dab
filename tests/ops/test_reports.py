"""Ready-made reports: stats, diff, history, find; and the query plans that keep them fast."""

from __future__ import annotations

import json
import os

import pytest
from catalog_gen import build_catalog

from backshift import catalog as catalog_mod
from backshift.errors import NoSuchSave
from backshift.pathcodec import sort_key
from backshift.repo import READ, open_repository
from conftest import find0, run


@pytest.fixture
def two_saves(repo, tmp_path, no_racy_margin):
    """Save 1 of a small tree, then changes (content, chmod, add, remove), then save 2."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "same.txt").write_bytes(b"same\n")
    (src / "edit.txt").write_bytes(b"before\n")
    (src / "chmod.txt").write_bytes(b"mode\n")
    (src / "gone.txt").write_bytes(b"bye\n")
    (src / "sub" / "copy.txt").write_bytes(b"same\n")
    with open(os.path.join(os.fsencode(src), b"bad-\xff"), "wb") as f:
        f.write(b"odd\n")
    os.utime(src / "same.txt", (1_600_000_000, 1_600_000_000))
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    (src / "edit.txt").write_bytes(b"after, longer\n")
    os.chmod(src / "chmod.txt", 0o600)
    (src / "gone.txt").unlink()
    (src / "sub" / "new.txt").write_bytes(b"new\n")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    return repo, src


def test_stats_counts_files_and_ratios(two_saves):
    repo, _src = two_saves
    rows = [json.loads(line) for line in
            run("-r", repo, "stats", "--format", "json").stdout.splitlines()]
    total, first, second = rows
    assert total["save_id"] is None and [first["save_id"], second["save_id"]] == [1, 2]
    assert first["files"] == 8 and second["files"] == 8  # src, sub, 6 files / 5 + new
    assert first["logical_bytes"] == 5 + 7 + 5 + 4 + 5 + 4
    assert first["dedup_ratio"] > 1  # same.txt and sub/copy.txt share their content
    assert total["files"] == 16 and total["chunks"] >= second["chunks"]
    assert total["new_bytes"] == first["new_bytes"] + second["new_bytes"]
    assert second["new_bytes"] > 0 and total["compression_ratio"] > 0
    table = run("-r", repo, "stats", "--backup", "2").stdout
    assert "repository" in table and len(table.splitlines()) == 4


def test_stats_unknown_save(two_saves):
    repo, _src = two_saves
    run("-r", repo, "stats", "--backup", "9", exit_code=NoSuchSave.exit_code)


def test_diff_reports_each_kind_in_path_order(two_saves):
    repo, src = two_saves
    lines = run("-r", repo, "diff", "1", "2").stdout.splitlines()
    s = str(src)
    assert lines == [
        f"M {s}  [mtime]",
        f"M {s}/chmod.txt  [mode]",
        f"C {s}/edit.txt",
        f"- {s}/gone.txt",
        f"M {s}/sub  [mtime]",
        f"+ {s}/sub/new.txt",
    ]


def test_diff_below_a_path_and_as_json(two_saves):
    repo, src = two_saves
    out = run("-r", repo, "diff", "1", "2", str(src / "sub"), "--format", "json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["change"], r["path"]) for r in rows] == [
        ("metadata", f"{src}/sub"), ("added", f"{src}/sub/new.txt")]
    csv_out = run("-r", repo, "diff", "2", "1", "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "change,path,fields" and f"added,{src}/gone.txt," in csv_out


def test_diff_unknown_save(two_saves):
    repo, _src = two_saves
    run("-r", repo, "diff", "1", "7", exit_code=NoSuchSave.exit_code)


def test_history_lists_saves_and_content_changes(two_saves, no_racy_margin):
    repo, src = two_saves
    run("-r", repo, "save", "--subset", "t", input=find0(src))  # save 3: nothing changed
    rows = [json.loads(line) for line in run(
        "-r", repo, "history", str(src / "edit.txt"), "--format", "json").stdout.splitlines()]
    assert [(r["save_id"], r["size"], r["changed"]) for r in rows] == [
        (1, 7, True), (2, 14, True), (3, 14, False)]
    assert rows[0]["digest"] != rows[1]["digest"] == rows[2]["digest"]
    assert run("-r", repo, "history", str(src / "edit.txt"), "--subset", "other",
               "--format", "csv", exit_code=9).stdout == ""
    never = run("-r", repo, "history", str(src / "never.txt"), exit_code=9)
    assert never.stdout == "" and "nothing matches" in never.stderr
    gone = run("-r", repo, "history", str(src / "gone.txt"), "--format", "csv").stdout
    assert [line.split(",")[0] for line in gone.splitlines()[1:]] == ["1"]


def test_history_relative_path_and_odd_name(two_saves, monkeypatch):
    repo, src = two_saves
    monkeypatch.chdir(src)
    out = run("-r", repo, "history", b"bad-\xff", "--format", "csv").stdout.splitlines()
    assert len(out) == 3


def test_find_by_name_newest_first(two_saves):
    repo, src = two_saves
    rows = [json.loads(line) for line in
            run("-r", repo, "find", "*.txt", "--format", "json").stdout.splitlines()]
    assert [r["save_id"] for r in rows] == [2] * 5 + [1] * 5
    assert rows[0]["path"] == f"{src}/chmod.txt"
    one = run("-r", repo, "find", "new.txt", "--backup", "1", "--format", "csv", exit_code=9)
    assert one.stdout == "" and "nothing matches 'new.txt' in save 1" in one.stderr


def test_find_by_whole_path_glob(two_saves):
    repo, src = two_saves
    out = run("-r", repo, "find", f"{src}/sub/*", "--format", "csv").stdout.splitlines()
    assert [line.split(",")[4] for line in out[1:]] == [
        f"{src}/sub/copy.txt", f"{src}/sub/new.txt", f"{src}/sub/copy.txt"]
    odd = run("-r", repo, "find", "bad-*", "--backup", "2").stdout
    assert "bad-\\377" in odd and "\xff" not in odd  # as GNU tar prints it


def test_find_since_date(two_saves):
    repo, _src = two_saves
    assert run("-r", repo, "find", "*", "--since", "2999-01-01",
               "--format", "csv", exit_code=9).stdout == ""
    assert len(run("-r", repo, "find", "*", "--since", "2000-01-01",
                   "--format", "csv").stdout.splitlines()) == 17
    run("-r", repo, "find", "*", "--since", "yesterday", exit_code=2)


# -- query plans on a generated catalog ------------------------------------------------------


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> bytes:
    from backshift.model import ChunkerParams
    from backshift.repo import init_repository

    path = os.fsencode(tmp_path_factory.mktemp("big") / "repo")
    init_repository(path, ChunkerParams())
    build_catalog(path, 100_000, 10, seed=5)
    return path


def plan(repo: bytes, sql: str, params: dict) -> list[str]:
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return [row[3] for row in rows]


def scans_of(details: list[str], *tables: str) -> list[str]:
    return [d for d in details if d.startswith("SCAN") and d.split()[1] in tables]


def test_catalog_gen_builds_the_rows_asked_for(big_repo):
    with open_repository(big_repo, READ) as r:
        members = r.catalog.conn.execute("SELECT count(*) FROM member").fetchone()[0]
        saves = r.catalog.conn.execute("SELECT count(*) FROM saves").fetchone()[0]
    assert saves == 10 and 90_000 <= members <= 120_000


def test_history_plan_never_scans_member_or_version(big_repo):
    details = plan(big_repo, catalog_mod.PATH_HISTORY,
                   {"path_id": 5000, "hostname": None, "subset": None})
    assert not scans_of(details, "m", "v", "member", "version", "c", "content"), details
    assert any("member" in d or " m " in d for d in details if d.startswith("SEARCH"))


def test_find_plans_scan_only_the_path_table(big_repo):
    for name_glob, path_glob, lo, hi in [
        (b"*.pdf", None, b"", b"\x01"),
        (None, b"/home/user3/*", sort_key(b"/home/user3") + b"\0",
         sort_key(b"/home/user3") + b"\1"),
    ]:
        details = plan(big_repo, catalog_mod.FIND_PATHS, {
            "lo": lo, "hi": hi, "name_glob": name_glob, "path_glob": path_glob,
            "save_id": None, "since_ns": None})
        assert not scans_of(details, "m", "v", "member", "version"), details
        if path_glob:
            assert not scans_of(details, "p", "path"), details  # a key range, not a scan


def test_diff_plan_walks_the_key_index(big_repo):
    details = plan(big_repo, catalog_mod.DIFF_SAVES,
                   {"old_id": 1, "new_id": 10, "lo": b"", "hi": b"\x01"})
    assert not scans_of(details, "a", "b", "va", "vb", "member", "version"), details
    assert not any("TEMP B-TREE" in d for d in details), details  # no sort: key order


def test_reports_on_generated_catalog(big_repo):
    with open_repository(big_repo, READ) as r:
        from backshift.ops import report

        key = r.catalog.conn.execute("SELECT key FROM path WHERE id = 5000").fetchone()[0]
        hist = report.history(r, key.replace(b"\0", b"/"))
        assert 1 <= len(hist) <= 10 and hist[0].changed
        found = list(report.find(r, b"*.pdf"))
        assert found and found[0].save_id == 10 and all(f.path.endswith(b".pdf") for f in found)
        changes = list(report.diff(r, 1, 2))
        assert {c.kind for c in changes} >= {"added", "removed", "content", "metadata"}
        assert [c.path for c in changes] == sorted((c.path for c in changes), key=sort_key)


@pytest.mark.slow
def test_reports_on_a_million_row_catalog(tmp_path):
    """The benchmark's catalog size: find, history and diff still answer (no timing here)."""
    from backshift.model import ChunkerParams
    from backshift.ops import report
    from backshift.repo import init_repository

    path = os.fsencode(tmp_path / "repo")
    init_repository(path, ChunkerParams())
    build_catalog(path, 1_000_000, 10, seed=1)
    with open_repository(path, READ) as r:
        assert r.catalog.conn.execute("SELECT count(*) FROM member").fetchone()[0] >= 1_000_000
        key = r.catalog.conn.execute("SELECT key FROM path WHERE id = 50000").fetchone()[0]
        assert report.history(r, key.replace(b"\0", b"/"))
        found = list(report.find(r, b"file0001234.*"))
        assert {f.save_id for f in found} == set(range(1, 11))
        assert any(c.kind == "content" for c in report.diff(r, 9, 10))
