"""`backshift list`: byte-for-byte GNU tar -tf / -tvf lines, --dir, json/csv, query plans."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess

import apsw
import pytest
from restorehelp import enrich_tree, gnu_tar_list, reseal_digest, save_tree, tar_stream

from backshift import pathcodec
from backshift.catalog import (
    CHUNKS_IN_KEY_RANGE,
    ENTRIES_IN_KEY_RANGE,
    ENTRIES_IN_KEY_RANGE_RECORDS,
    ENTRY_AT_KEY,
    FIRST_PATH_IN_KEY_RANGE,
    WHERE_PREDICATE_MATCHES,
    Catalog,
)
from backshift.ops import tarstream as ts
from backshift.ops.listformat import TarLister, mode_string
from conftest import BACKSHIFT, run, run_bin


@pytest.fixture
def saved(repo, tree):
    enrich_tree(tree)
    save_tree(repo, tree)
    return tree


@pytest.mark.parametrize("verbose", [True, False])
def test_list_equals_gnu_tar_listing_of_the_stream(repo, saved, verbose):
    data, _ = tar_stream(repo)
    flags = ["-v"] if verbose else []
    listed = run("-r", repo, "list", "--backup", "latest", *flags).stdout_bytes
    assert listed == gnu_tar_list(data, verbose)
    assert b"link to " in listed or not verbose
    assert b"\\377\\376" in listed and b"new\\nline" in listed and b"back\\\\slash" in listed


@pytest.mark.parametrize("lc_all", ["C", "C.UTF-8"])
def test_list_escapes_names_as_gnu_tar_does_in_the_locale(repo, saved, lc_all):
    env = {**os.environ, "LC_ALL": lc_all, "TZ": "UTC"}
    data = run_bin("-r", repo, "tar", "--backup", "latest", env=env).stdout
    listed = run_bin("-r", repo, "list", "--backup", "latest", "-v", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == gnu_tar_list(data, True, env)
    cafe = b"caf\\303\\251.txt" if lc_all == "C" else "caf\u00e9.txt".encode()
    assert cafe in listed.stdout


def test_list_dir_equals_tar_of_that_subtree(repo, saved):
    sub = str(saved / "sub")
    data, _ = tar_stream(repo, sub)
    for arg in (sub, sub.lstrip("/")):
        listed = run("-r", repo, "list", "--backup", "latest", "-v", "--dir", arg)
        assert listed.stdout_bytes == gnu_tar_list(data, True)


def test_list_no_recursive_lists_own_entries(repo, saved):
    res = run("-r", repo, "list", "--backup", "latest", "--dir", str(saved / "sub"),
              "--no-recursive")
    top = str(saved / "sub").lstrip("/")
    lines = res.stdout_bytes.splitlines()
    assert len(lines) == 10
    assert top.encode() + b"/deeper/" in lines
    assert not any(line.count(b"/") > top.count("/") + 2 for line in lines)
    assert lines == sorted(lines, key=lambda n: n.rstrip(b"/").replace(b"/", b"\0"))


def test_list_dir_not_in_save_is_an_error(repo, saved):
    res = run("-r", repo, "list", "--backup", "latest", "--dir", "/no/where", exit_code=9)
    assert "/no/where" in res.stderr and res.stdout == ""


def test_list_json_and_csv_carry_every_column(repo, saved):
    lines = run("-r", repo, "list", "--backup", "latest", "--format", "json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    by_path = {pathcodec.unescape(r["path"]): r for r in rows}
    raw = os.fsencode(saved)
    bad = by_path[raw + b"/sub/bad-\xff\xfe-name"]
    assert bad["type"] == "file" and bad["size"] == len(b"odd name bad-\xff\xfe-name\n")
    assert len(bad["digest"]) == 32
    a = by_path[raw + b"/a.txt"]
    assert a["mtime_ns"] == 1_600_000_000_123_456_789 and a["mode"] == 0o644
    assert by_path[raw + b"/sub/hardlink"]["hardlink_to"] == os.fsdecode(raw + b"/a.txt")
    assert by_path[raw + b"/dangling link"]["link_target"] == "/nonexistent/target with space"
    text = run("-r", repo, "list", "--backup", "latest", "--format", "csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == list(rows[0]) and len(table) == len(rows)


def test_list_verbose_widens_like_gnu_tar_for_huge_members(tmp_path):
    """Header level (E5): 9 GiB, a big uid, a device; the data is a hole in a sparse file."""
    members = [
        ts.Header(name=b"small", typeflag=ts.REGTYPE, mode=0o644, uid=0, gid=0, uname=b"root",
                  gname=b"root", size=3, mtime_ns=1_000_000_000_000_000_000),
        ts.Header(name=b"huge", typeflag=ts.REGTYPE, mode=0o6755, uid=3_000_000, gid=0,
                  uname=b"", gname=b"", size=9 << 30, mtime_ns=1_700_000_000_5),
        ts.Header(name=b"dev", typeflag=ts.BLKTYPE, mode=0o660, uid=0, gid=6, uname=b"root",
                  gname=b"disk", size=0, mtime_ns=0, devmajor=259, devminor=65536),
        ts.Header(name=b"after", typeflag=ts.REGTYPE, mode=0o600, uid=0, gid=0,
                  uname=b"root", gname=b"root", size=0, mtime_ns=0),
    ]
    path = tmp_path / "huge.tar"
    with open(path, "wb") as f:
        for h in members:
            f.write(ts.encode_header(h))
            f.seek(h.size + len(ts.padding(h.size)), os.SEEK_CUR)
        f.write(ts.END_OF_ARCHIVE)
    lister = TarLister(verbose=True)
    want = b"".join(lister.line(h) for h in members)
    got = subprocess.run(["tar", "-tvf", str(path)], capture_output=True, timeout=60).stdout
    assert got == want
    assert b"3000000/0 9663676416 " in got


def test_list_mode_string_letters():
    assert mode_string(ts.REGTYPE, 0o4755) == b"-rwsr-xr-x"
    assert mode_string(ts.REGTYPE, 0o6644) == b"-rwSr-Sr--"
    assert mode_string(ts.DIRTYPE, 0o1777) == b"drwxrwxrwt"
    assert mode_string(ts.DIRTYPE, 0o1776) == b"drwxrwxrwT"


# -- query plans: listing and tar are index lookups, never scans of a save ----------------


def plan(repo: bytes, sql: str, params: dict) -> list[str]:
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        return cat.explain(sql, params)
    finally:
        cat.close()


@pytest.mark.parametrize("sql, params", [
    (ENTRIES_IN_KEY_RANGE, {"save_id": 1, "lo": b"", "hi": b"\x01"}),  # whole save
    (ENTRIES_IN_KEY_RANGE, {"save_id": 1, "lo": b"\0a", "hi": b"\0a\x01"}),  # subtree
    (ENTRIES_IN_KEY_RANGE_RECORDS, {"save_id": 1, "lo": b"", "hi": b"\x01"}),  # digest
    (CHUNKS_IN_KEY_RANGE, {"save_id": 1, "lo": b"", "hi": b"\x01"}),  # tar's chunk walk
    (CHUNKS_IN_KEY_RANGE, {"save_id": 1, "lo": b"\0a", "hi": b"\0a\x01"}),
    (ENTRY_AT_KEY, {"save_id": 1, "key": b"\0a"}),  # parents, --dir checks
    (FIRST_PATH_IN_KEY_RANGE, {"lo": b"\0a\0", "hi": b"\0a\x01"}),  # --no-recursive steps
    (WHERE_PREDICATE_MATCHES.format(predicate="size > 1e9"),
     {"save_id": 1, "path_id": 5}),  # --where, probed per member
])
def test_list_query_plans_use_indexes(repo, saved, sql, params):
    details = plan(repo, sql, params)
    text = "\n".join(details)
    assert not any(d.startswith("SCAN") for d in details), text
    assert "TEMP B-TREE" not in text, text
    assert "INDEX sqlite_autoindex_path_1 (key" in text or "PRIMARY KEY" in text, text
    if "member" in sql:
        assert "SEARCH m USING PRIMARY KEY (save_id=? AND path_id=?)" in text, text


@pytest.mark.slow
def test_list_and_tar_agree_on_a_9_gib_member(repo, tree):
    """A 9 GiB member (a pax size): a file of one 64 KiB chunk of zeros made 9 GiB of that
    chunk by hand, with a digest to match. The stream holds it as a sparse member whose
    zero chunks are never read; GNU tar lists it like `backshift list`."""
    (tree / "zeros").write_bytes(bytes(65536))
    save_tree(repo, tree)
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    key = pathcodec.sort_key(os.fsencode(tree / "zeros"))
    (content_id,) = conn.execute("SELECT v.content_id FROM version AS v JOIN path AS p "
                                 "ON p.id = v.path_id WHERE p.key = ?", (key,)).fetchone()
    [(chunk_id, length)] = conn.execute(
        "SELECT k.id, k.length FROM content_chunk AS cc JOIN chunk AS k ON k.id = cc.chunk_id "
        "WHERE cc.content_id = ?", (content_id,)).fetchall()
    count = (9 << 30) // length
    conn.execute("WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                 "INSERT INTO content_chunk (content_id, seq, chunk_id) SELECT ?, i, ? FROM s",
                 (count - 1, content_id, chunk_id))
    conn.execute("UPDATE content SET size = ?, chunk_count = ? WHERE id = ?",
                 (9 << 30, count, content_id))
    conn.execute("UPDATE version SET size = ? WHERE content_id = ?", (9 << 30, content_id))
    conn.close()
    reseal_digest(repo, 1)
    p1 = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = subprocess.run(["tar", "-tvf", "-"], stdin=p1.stdout, capture_output=True,
                         timeout=900)
    p1.stdout.close()
    assert p1.wait(timeout=60) == 0, p1.stderr.read()
    listed = run("-r", repo, "list", "--backup", "latest", "-v").stdout_bytes
    assert got.returncode == 0 and got.stdout == listed
    assert b" 9663676416 " in listed
