"""`list` text through the catalog-built lines (ops/listing.write_lines, ops/listfast) stays
exactly what GNU tar -tf / -tvf prints for the `tar` stream: odd rows, other time zones,
width growth."""

from __future__ import annotations

import os
import re
import stat

import apsw
import pytest
from restorehelp import enrich_tree, gnu_tar_list, insert_raw_member, save_tree

from backshift.catalog import (
    LISTING_BLOCK_NAMES,
    LISTING_BLOCK_NAMES_RECORDS,
    LISTING_BLOCK_VERBOSE,
    LISTING_BLOCK_VERBOSE_RECORDS,
    LISTING_LINES_NAMES,
    LISTING_LINES_VERBOSE,
    MEMBER_RECORDS_IN_KEY_RANGE,
    Catalog,
)
from backshift.ops.listformat import mode_string, permission_strings
from conftest import run, run_bin


def assert_list_equals_tar(repo: bytes, *args: str, env: dict | None = None) -> bytes:
    """list and list -v equal GNU tar's listing of the stream; same exit code, stderr."""
    tar = run_bin("-r", repo, "tar", "--backup", "latest", *args, env=env)
    for verbose in (False, True):  # the -v text is returned
        flags = ["-v"] if verbose else []
        dirs = ["--dir", args[0]] if args else []
        listed = run_bin("-r", repo, "list", "--backup", "latest", *flags, *dirs, env=env)
        assert listed.stdout == gnu_tar_list(tar.stdout, verbose, env)
        assert (listed.returncode, listed.stderr) == (tar.returncode, tar.stderr)
    return listed.stdout


def _conn(repo: bytes) -> apsw.Connection:
    return apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))


@pytest.fixture
def saved(repo, tree):
    enrich_tree(tree)
    for i in range(30):  # enough plain rows around the odd ones
        (tree / "sub" / f"plain{i:02d}.txt").write_bytes(b"x" * i)
    save_tree(repo, tree)
    return tree


def test_list_fast_permission_strings_are_mode_strings():
    table = permission_strings()
    assert [table[m * 9:m * 9 + 9] for m in range(4096)] == [
        mode_string(b"0", m)[1:] for m in range(4096)]


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata",
                                "Australia/Lord_Howe", "Pacific/Chatham"])
def test_list_fast_times_equal_gnu_tar_in_time_zones(repo, tree, tz):
    """SQLite's localtime must print what tar's localtime prints, DST edges included;
    times before 1970 and after 2037 go through Python (SQLite maps their years)."""
    times = [0, 1, 1_711_846_799, 1_711_846_800, 1_711_850_400, 1_729_990_800, 1_730_001_599,
             1_700_000_000, 2_145_916_799, 2_145_916_800, 4_102_444_800, -1, -86_400,
             -2_208_988_800, 1_600_000_000]
    for i, sec in enumerate(times):
        path = tree / f"t{i:02d}"
        path.write_bytes(b"t")
        os.utime(path, ns=(sec * 10**9 + 999_999_999, sec * 10**9 + 999_999_999))
    save_tree(repo, tree)
    env = {**os.environ, "TZ": tz}
    listed = assert_list_equals_tar(repo, env=env)
    assert listed.count(b"\n") > len(times)


def test_list_fast_hostile_rows_list_as_the_stream_holds_them(repo, saved):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    insert_raw_member(repo, raw + b"\0sub\0..\0..\0escape", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0trap", stat.S_IFLNK | 0o777, b"/etc")
    insert_raw_member(repo, raw + b"\0trap\0passwd", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0sl/ash", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0sub\0\0empty", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0sub\0.", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0negative", stat.S_IFREG | 0o644, size=-5)
    insert_raw_member(repo, raw + b"\0nolink", stat.S_IFLNK | 0o777, b"")
    insert_raw_member(repo, raw + b"\0weird", 0o170000 | 0o644)
    listed = assert_list_equals_tar(repo)
    assert b"escape" not in listed and b"passwd" not in listed


def test_list_fast_socket_is_a_warning_as_in_the_stream(repo, saved):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    insert_raw_member(repo, raw + b"\0sub\0sock", stat.S_IFSOCK | 0o755)
    assert_list_equals_tar(repo)


def test_list_fast_member_below_a_file_of_another_save(repo, saved):
    """A path below a file exists (another save held it as a directory) but is not a
    member of this save: nothing is refused."""
    raw = os.fsencode(saved).replace(b"/", b"\0")
    conn = _conn(repo)
    conn.execute("INSERT INTO path (parent_id, key, name) VALUES (NULL, ?, ?)",
                 (raw + b"\0a.txt\0old-child", b"old-child"))
    conn.close()
    listed = assert_list_equals_tar(repo)
    assert b"old-child" not in listed


def test_list_fast_width_grows_mid_listing(repo, saved):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    insert_raw_member(repo, raw + b"\0sub\0plain10.tx", stat.S_IFREG | 0o600,
                   user=b"a-very-long-user-name")
    insert_raw_member(repo, raw + b"\0sub\0plain20.tx", stat.S_IFREG | 0o600,
                   user=b"an-even-much-longer-user-name")
    listed = assert_list_equals_tar(repo)
    starts = {m.start() for m in re.finditer(rb" \d{4}-\d\d-\d\d \d\d:\d\d ", listed)}
    date_columns = {listed.rfind(b"\n", 0, start) - start for start in starts}
    assert len(date_columns) == 3  # 19 wide, then wider twice


def test_list_fast_odd_owner_and_target_bytes(repo, saved):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    insert_raw_member(repo, raw + b"\0sub\0owner-nul", stat.S_IFREG | 0o644, user=b"u\0x")
    insert_raw_member(repo, raw + b"\0sub\0owner-nl", stat.S_IFREG | 0o644, user=b"u\nx")
    insert_raw_member(repo, raw + b"\0sub\0link-nl", stat.S_IFLNK | 0o777, b"a\nb")
    insert_raw_member(repo, raw + b"\0sub\0link-utf8", stat.S_IFLNK | 0o777, "\u00e9".encode())
    run("-r", repo, "list", "--backup", "latest", "-v")  # no crash
    tar = run_bin("-r", repo, "tar", "--backup", "latest")
    listed = run_bin("-r", repo, "list", "--backup", "latest", "-v")
    assert listed.returncode == tar.returncode == 0
    # GNU tar reads a uname up to its NUL; the listing prints the recorded bytes, as before
    got = [line for line in listed.stdout.split(b"\n") if b"owner-nul" not in line]
    want = [line for line in gnu_tar_list(tar.stdout, True).split(b"\n")
            if b"owner-nul" not in line]
    assert got == want


def test_list_fast_dir_and_whole_save_agree_with_stream(repo, saved):
    assert_list_equals_tar(repo, str(saved / "sub"))
    assert_list_equals_tar(repo, str(saved / "sub" / "deeper" / "setuid"))


@pytest.mark.parametrize("sql", [LISTING_LINES_VERBOSE, LISTING_LINES_NAMES,
                                 LISTING_BLOCK_VERBOSE, LISTING_BLOCK_NAMES,
                                 LISTING_BLOCK_VERBOSE_RECORDS, LISTING_BLOCK_NAMES_RECORDS,
                                 MEMBER_RECORDS_IN_KEY_RANGE])
def test_list_fast_query_plan_reads_the_range_in_key_order(repo, saved, sql):
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        params = {"save_id": 1, "lo": b"", "hi": b"\x01", "width": 19,
                  "modes": permission_strings()}
        if sql in (LISTING_LINES_NAMES, LISTING_BLOCK_NAMES, LISTING_BLOCK_NAMES_RECORDS,
                   MEMBER_RECORDS_IN_KEY_RANGE):
            del params["width"], params["modes"]
        details = cat.explain(sql, params)
    finally:
        cat.close()
    text = "\n".join(details)
    assert "TEMP B-TREE" not in text, text
    assert [d for d in details if d.startswith("SCAN")] == ["SCAN r"], text
    assert "SEARCH p USING COVERING INDEX sqlite_autoindex_path_1 (key>? AND key<?)" in text
    assert "SEARCH m USING PRIMARY KEY (save_id=? AND path_id=?)" in text


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 paths and batches of 4 rows: every path of write_lines on a small save
    (two threads, widths changing between chunks, restarts, hand-over to the planner)."""
    from backshift.ops import listfast
    monkeypatch.setattr(listfast, "CHUNK_PATHS", 3)
    monkeypatch.setattr(listfast, "BATCH_ROWS", 4)


def assert_in_process_list_equals_tar(repo: bytes, *args: str) -> None:
    tar = run("-r", repo, "tar", "--backup", "latest", *args, exit_code=None)
    dirs = ["--dir", args[0]] if args else []
    for verbose in (False, True):
        flags = ["-v"] if verbose else []
        listed = run("-r", repo, "list", "--backup", "latest", *flags, *dirs, exit_code=None)
        assert listed.stdout_bytes == gnu_tar_list(tar.stdout_bytes, verbose)
        assert (listed.code, listed.stderr) == (tar.code, tar.stderr)


def test_list_fast_in_small_chunks_plain_and_odd(repo, saved, small_chunks):
    assert_in_process_list_equals_tar(repo)
    assert_in_process_list_equals_tar(repo, str(saved / "sub"))


def test_list_fast_in_small_chunks_width_grows(repo, saved, small_chunks):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    for i, user in ((3, b"a-long-user-name-1"), (11, b"a-longer-user-name-22"),
                    (12, b"the-longest-user-name-333")):
        insert_raw_member(repo, raw + b"\0sub\0plain%02d.tx" % i, stat.S_IFREG | 0o600,
                       user=user)
    assert_in_process_list_equals_tar(repo)


def test_list_fast_in_small_chunks_hostile_rows(repo, saved, small_chunks):
    raw = os.fsencode(saved).replace(b"/", b"\0")
    insert_raw_member(repo, raw + b"\0sub\0plain07.tx", stat.S_IFREG | 0o600, user=b"x" * 30)
    insert_raw_member(repo, raw + b"\0trap", stat.S_IFLNK | 0o777, b"/etc")
    insert_raw_member(repo, raw + b"\0trap\0passwd", stat.S_IFREG | 0o644)
    insert_raw_member(repo, raw + b"\0zz\0..\0x", stat.S_IFREG | 0o644)
    assert_in_process_list_equals_tar(repo)


def test_list_fast_chunk_cuts_use_the_path_index(repo, saved):
    from backshift.catalog import PATH_KEY_AFTER
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        details = cat.explain(PATH_KEY_AFTER, {"lo": b"", "hi": b"\x01", "count": 3})
        assert cat.path_key_after(b"", b"\x01", 10**6) is None
    finally:
        cat.close()
    assert details == [
        "SEARCH p USING COVERING INDEX sqlite_autoindex_path_1 (key>? AND key<?)"], details


@pytest.mark.parametrize("verbose", [False, True])
def test_list_fast_is_one_snapshot_when_expire_removes_the_save_meanwhile(
        repo, saved, small_chunks, monkeypatch, verbose):
    """`list` takes no lock (READ): an expire may delete the save while it lists. The
    listing must still be the save as one snapshot saw it (as one streaming query did
    before the chunked, two-connection listing), never silently cut short."""
    from backshift.ops import listfast
    flags = ["-v"] if verbose else []
    whole = run("-r", repo, "list", "--backup", "1", *flags).stdout_bytes
    assert whole.count(b"\n") > 3 * listfast.CHUNK_PATHS
    real_range = listfast.FastLines._range
    calls = []

    def expire_meanwhile(self, lo, hi, rows=None):
        calls.append(lo)
        if len(calls) == 2:  # a concurrent expire commits while the listing runs
            conn = _conn(repo)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("DELETE FROM save WHERE id = 1")
            conn.close()
        return real_range(self, lo, hi, rows)

    monkeypatch.setattr(listfast.FastLines, "_range", expire_meanwhile)
    listed = run("-r", repo, "list", "--backup", "1", *flags)
    assert len(calls) >= 2
    assert listed.stdout_bytes == whole, listed.stderr


@pytest.mark.parametrize("chunk_paths", [2, 3, 5])
def test_list_fast_flagged_rows_at_block_edges(repo, tree, monkeypatch, chunk_paths):
    """A block holds an empty line in place of each flagged row: runs of flagged rows, and
    flagged rows first and last in a block, come out in their places."""
    from backshift.ops import listfast
    monkeypatch.setattr(listfast, "CHUNK_PATHS", chunk_paths)
    enrich_tree(tree)
    hl = tree / "hl"
    hl.mkdir()
    (hl / "a").write_bytes(b"data")
    for name in ("b", "c", "d"):
        os.link(hl / "a", hl / name)
    (hl / "e").write_bytes(b"plain")
    os.link(hl / "e", tree / "hl-last")
    save_tree(repo, tree)
    assert_in_process_list_equals_tar(repo)
    assert_in_process_list_equals_tar(repo, str(hl))


def test_list_fast_flagged_entries_are_one_indexed_query(repo, saved):
    from backshift.catalog import ENTRIES_OF_PATH_IDS
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        ids = [row[0] for row in cat.conn.execute("SELECT path_id FROM member LIMIT 5")]
        details = cat.explain(ENTRIES_OF_PATH_IDS.format(marks="?,?"), [ids[0], ids[1], 1])
        entries = cat.entries_of_path_ids(1, [*ids, 10**9])
    finally:
        cat.close()
    assert "SEARCH p USING INTEGER PRIMARY KEY (rowid=?)" in details, details
    assert "SEARCH m USING PRIMARY KEY (save_id=? AND path_id=?)" in details, details
    assert sorted(entries) == sorted(ids)
