"""docs/schema.md documents exactly the views' columns; every query in docs/queries.md runs."""

from __future__ import annotations

import csv
import io
import os
import pwd
import re
from pathlib import Path

import apsw
import pytest

from backshift.repo import READ, open_repository
from conftest import find0, make_tree, run

DOCS = Path(__file__).parents[2] / "docs"
VIEWS = ("saves", "files", "contents", "chunks", "xattrs")


def documented_columns() -> dict[str, list[str]]:
    """`## view` sections of docs/schema.md and the first-column names of their tables."""
    out: dict[str, list[str]] = {}
    current = None
    for line in (DOCS / "schema.md").read_text().splitlines():
        heading = re.match(r"^## (\w+)\s*$", line)
        if heading:
            current = heading.group(1)
            out[current] = []
        elif current and (cell := re.match(r"^\| `(\w+)` \|", line)):
            out[current].append(cell.group(1))
    return out


def doc_queries() -> list[tuple[str, str, dict[str, str]]]:
    """(heading, SQL, params) for every ```sql block of docs/queries.md."""
    text = (DOCS / "queries.md").read_text()
    out = []
    for match in re.finditer(r"^## (.+?)\n(.*?)^```sql\n(.*?)^```", text, re.M | re.S):
        sql = match.group(3)
        params = {}
        found = re.search(r"^-- params: (.*)$", sql, re.M)
        if found:
            params = dict(item.split("=", 1) for item in found.group(1).split())
        out.append((match.group(1), sql, params))
    return out


def test_schema_doc_lists_exactly_the_view_columns(repo):
    with open_repository(repo, READ) as r:
        actual = {
            view: [row[1] for row in r.catalog.conn.execute(f"PRAGMA table_info({view})")]
            for view in VIEWS
        }
    assert documented_columns() == actual


def test_queries_doc_has_at_least_ten_queries():
    assert len(doc_queries()) >= 10


@pytest.fixture(scope="module")
def docs_repo(tmp_path_factory) -> bytes:
    """Two real saves of the sample tree, with one file edited and one added in between."""
    from backshift.model import ChunkerParams
    from backshift.ops import borrow as borrow_mod
    from backshift.repo import init_repository

    base = tmp_path_factory.mktemp("docs")
    repo = os.fsencode(base / "repo")
    init_repository(repo, ChunkerParams(min_size=4096, avg_size=16384, max_size=65536))
    src = make_tree(base / "src")
    (src / "edit.txt").write_bytes(b"first\n")
    (src / "copy-of-a.txt").write_bytes(b"hello\n")  # a real duplicate of a.txt, not a link
    old_margin = borrow_mod.RACY_MARGIN_NS
    borrow_mod.RACY_MARGIN_NS = -10**18
    try:
        os.setxattr(src / "edit.txt", "user.comment", b"draft")
        run("-r", repo, "save", "--subset", "docs", input=find0(src))
        (src / "edit.txt").write_bytes(b"second, longer\n")
        os.setxattr(src / "edit.txt", "user.comment", b"final")
        (src / "sub" / "added.txt").write_bytes(b"added\n")
        run("-r", repo, "save", "--subset", "docs", input=find0(src))
    finally:
        borrow_mod.RACY_MARGIN_NS = old_margin
    return repo


@pytest.mark.parametrize("heading,sql,params", doc_queries(),
                         ids=[q[0].split(",")[0] for q in doc_queries()])
def test_queries_doc_query_runs_and_finds_rows(docs_repo, heading, sql, params):
    if "user" in params:
        params["user"] = pwd.getpwuid(os.getuid()).pw_name
    args = [arg for name, value in params.items() for arg in ("--param", f"{name}={value}")]
    result = run("-r", docs_repo, "sql", "--format", "csv", *args, sql)  # as pasted
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert len(rows) >= 2, f"{heading}: no rows\n{result.stdout}"


def test_views_work_in_a_plain_sqlite_connection(docs_repo):
    """The views need nothing from backshift: any SQLite >= 3.38 client can read them."""
    conn = apsw.Connection(os.fsdecode(os.path.join(docs_repo, b"catalog.sqlite3")),
                           flags=apsw.SQLITE_OPEN_READONLY)
    paths = [row[0] for row in conn.execute("SELECT CAST(path AS BLOB) FROM files")]
    assert any(p.endswith(b"/sub/bad-\xff\xfe-name") for p in paths)
    assert all(p.startswith(b"/") and b"\0" not in p for p in paths)
    conn.close()
