"""CLI depth: messages and docs that say what the tool does (issue 21, 'docs that match')."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_sql_docs import doc_queries

from backshift.lock import RepoLock
from conftest import find0, run

ROOT = Path(__file__).parents[2]


def _save(repo, root, subset="s"):
    return run("-r", repo, "save", "--subset", subset, input=find0(root))


def test_sql_write_on_a_view_is_refused_with_exit_11(repo):
    res = run("-r", repo, "sql", "DELETE FROM files", exit_code=11)
    assert res.stderr.splitlines() == [
        "backshift: error: query refused: DELETE writes; backshift sql only reads"]
    res = run("-r", repo, "sql", "DROP VIEW files", exit_code=11)
    assert "DROP (a schema change) is not allowed" in res.stderr


def test_list_json_has_the_inode_columns(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    os.link(src / "a", src / "b")
    _save(repo, src)
    rows = {r["path"]: r for r in map(json.loads, run(
        "-r", repo, "list", "--backup", "1", "--json").stdout.splitlines())}
    st = os.stat(src / "a")
    row = rows[str(src / "a")]
    assert (row["dev"], row["ino"], row["nlink"], row["rdev"]) == (st.st_dev, st.st_ino, 2, 0)


def test_duplicate_files_query_does_not_count_hardlinks(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"same bytes\n")
    os.link(src / "a", src / "a-link")  # one file, two names
    (src / "copy").write_bytes(b"same bytes\n")  # a real copy
    (src / "lonely").write_bytes(b"other\n")
    os.link(src / "lonely", src / "lonely-link")  # only links: no duplicate
    _save(repo, src)
    [(_, sql, _)] = [q for q in doc_queries() if q[0].startswith("Duplicate files")]
    rows = [json.loads(line) for line in run("-r", repo, "sql", "--param", "save=1",
                                             "--json", sql).stdout.splitlines()]
    assert [(r["size"], r["copies"]) for r in rows] == [(11, 2)]


def test_summaries_say_1_file_and_history_says_no(repo, tmp_path):
    src = tmp_path / "one"
    src.write_bytes(b"x")
    out = run("-r", repo, "save", "--subset", "s", str(src)).stdout
    assert "1 file," in out and "read 1 file (" in out
    run("-r", repo, "save", "--subset", "s", str(src))
    table = run("-r", repo, "history", str(src)).stdout.splitlines()
    assert table[-1].split()[-1] == "no" and table[-2].split()[-1] == "yes"
    header = run("-r", repo, "saves").stdout.splitlines()[0]
    assert header.split()[-1] == "written"
    assert '"written" is what the save itself added' in run("saves", "--help").stdout


def test_wrong_repo_path_suggests_init_only_where_it_works(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    res = run("-r", str(tmp_path / "full"), "saves", exit_code=3)
    assert "holds no catalog.sqlite3 (is -r the right path?)" in res.stderr
    assert "init" not in res.stderr
    res = run("-r", str(tmp_path / "file"), "saves", exit_code=3)
    assert "it is not a directory (is -r the right path?)" in res.stderr
    res = run("-r", str(tmp_path / "new"), "saves", exit_code=3)
    assert f"create one with 'backshift -r {tmp_path / 'new'} init'" in res.stderr


def test_lock_error_names_lock_wait(repo):
    lock = RepoLock(repo, exclusive=True, operation="test")
    lock.acquire(0)
    try:
        res = run("-r", repo, "save", "--hostname", "h", "/etc", exit_code=5)
    finally:
        lock.release()
    assert "--lock-wait SECONDS" in res.stderr


def test_reliability_doc_cites_no_file_outside_the_repository():
    text = (ROOT / "docs" / "reliability.md").read_text()
    assert "`RELIABILITY.md`" not in text and "RELIABILITY.md sources" not in text
