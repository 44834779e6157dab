"""Matrix rows E1-E3, E8-E10, E13 of docs/reliability.md: the tar producer under faults."""

from __future__ import annotations

import os
import pty
import shutil
import stat
import subprocess
from pathlib import Path

import apsw
import pytest
from harness.consistency import assert_repo_consistent
from harness.faults import PEAK_RSS_MAX, run_capped
from harness.oracle import diff, from_catalog, manifest
from harness.scenario import one_line_error, save, small_tree, snapshot
from restorehelp import reseal_digest
from tarlint import lint_tar

from backshift.pathcodec import sort_key
from backshift.store import Store
from conftest import BACKSHIFT, make_tree, run


def _tar(repo: bytes, *args: str, exit_code: int | None = 0) -> tuple[bytes, str, int]:
    res = run("-r", repo, "tar", "--backup", "latest", *args, exit_code=exit_code)
    lint_tar(res.stdout_bytes)
    return res.stdout_bytes, res.stderr, res.code


def _extract(tool: str, data: bytes, dest: Path) -> subprocess.CompletedProcess:
    dest.mkdir(parents=True)
    cmd = {"gnu": ["tar", "-xpf", "-", "-C", str(dest)],
           "bsd": ["bsdtar", "-xpf", "-", "-C", str(dest)]}[tool]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=120)


def _restored(dest: Path, root: Path) -> dict:
    """The manifest of what was extracted under DEST, keyed by the original paths."""
    base = os.fsencode(dest)
    got = manifest(base + os.fsencode(root))
    out = {}
    for p, e in got.items():
        if e.group is not None:
            e = e.__class__(**{**e.__dict__, "group": frozenset(g[len(base):] for g in e.group)})
        out[p[len(base):]] = e
    return out


@pytest.mark.parametrize("tool", ["gnu", "bsd"])
def test_E1_every_stream_is_clean_and_restores_exactly(tmp_path, repo, tool):
    if tool == "bsd" and shutil.which("bsdtar") is None:
        pytest.skip("bsdtar not installed")
    src = make_tree(tmp_path / "src")
    res = save(repo, src)
    data, err, _ = _tar(repo)
    dest = tmp_path / "dest"
    ext = _extract(tool, data, dest)
    assert ext.returncode == 0, ext.stderr
    assert sorted(os.listdir(tmp_path)) == ["dest", "repo", "src"]  # nothing outside dest
    problems = diff(manifest(src), _restored(dest, src), symlink_mtime=False)
    assert not problems, problems
    assert not diff(manifest(src), from_catalog(repo, res["save_id"], os.fsencode(src)))


def _insert_member(repo: bytes, save_id: int, path: bytes, mode: int,
                   target: bytes | None = None, ino: int = 0, nlink: int = 1) -> None:
    """A member row written with raw SQL, as a damaged or hostile catalog could hold it."""
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("INSERT INTO path (parent_id, key, name) VALUES (NULL, ?, ?)",
                 (path.replace(b"/", b"\0"), path.rsplit(b"/", 1)[-1]))
    path_id = conn.last_insert_rowid()
    conn.execute("INSERT INTO version (path_id, mode, uid, gid, user, grp, size, mtime_ns, "
                 "ctime_ns, dev, ino, nlink, rdev, link_target, content_id) "
                 "VALUES (?, ?, 0, 0, x'', x'', 0, 0, 0, 0, ?, ?, 0, ?, NULL)",
                 (path_id, mode, ino, nlink, target))
    conn.execute("INSERT INTO member (save_id, path_id, version_id) VALUES (?, ?, ?)",
                 (save_id, path_id, conn.last_insert_rowid()))
    conn.close()
    reseal_digest(repo, save_id)


def test_E2_hostile_catalog_rows_are_refused_and_the_rest_restores(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    expected = manifest(src)
    sid = save(repo, src)["save_id"]
    raw = os.fsencode(src)
    _insert_member(repo, sid, raw + b"/d/../../victim", stat.S_IFREG | 0o644)
    _insert_member(repo, sid, raw + b"/zlink", stat.S_IFLNK | 0o777, b"/etc")
    _insert_member(repo, sid, raw + b"/zlink/evil", stat.S_IFREG | 0o644)
    _insert_member(repo, sid, raw + b"/x/../hl-a", stat.S_IFREG | 0o644, ino=99, nlink=2)
    _insert_member(repo, sid, raw + b"/hl-b", stat.S_IFREG | 0o644, ino=99, nlink=2)
    data, err, code = _tar(repo, exit_code=None)
    assert code == 10 and "Traceback" not in err
    assert "victim" in err and "zlink/evil" in err
    names = [ti.name for ti in lint_tar(data)]
    assert not any(".." in n.split("/") or n.endswith("zlink/evil") for n in names)
    dest = tmp_path / "dest"
    assert _extract("gnu", data, dest).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["dest", "repo", "src"]
    got = _restored(dest, src)
    for extra in (raw + b"/zlink", raw + b"/hl-b"):
        got.pop(extra)
    assert not diff(expected, got, symlink_mtime=False)


def test_E3_partial_restore_without_the_first_hardlink_member(tmp_path, repo):
    src = small_tree(tmp_path / "src")  # d/small and d/e/hard are one inode
    save(repo, src)
    sub = os.fsencode(src / "d" / "e")
    data, _, _ = _tar(repo, os.fsdecode(sub))
    links = [ti for ti in lint_tar(data) if ti.name.endswith("/hard")]
    assert len(links) == 1 and links[0].isreg()  # carries the data, not a link
    dest = tmp_path / "dest"
    assert _extract("gnu", data, dest).returncode == 0
    want = {p: e.__class__(**{**e.__dict__, "group": None})
            for p, e in manifest(sub).items()}
    got = {p: e.__class__(**{**e.__dict__, "group": None})
           for p, e in _restored(dest, Path(os.fsdecode(sub))).items()}
    assert not diff(want, got, symlink_mtime=False)


def test_E8_missing_chunk_mid_file_pads_reports_and_fails(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    expected = manifest(src)
    sid = save(repo, src)["save_id"]
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    sha = conn.execute(
        "SELECT k.sha256 FROM member AS m JOIN path AS p ON p.id = m.path_id "
        "JOIN version AS v ON v.id = m.version_id "
        "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
        "JOIN chunk AS k ON k.id = cc.chunk_id WHERE m.save_id = ? AND p.key = ? "
        "AND cc.seq = 2", (sid, sort_key(os.fsencode(src / "big.bin")))).fetchone()[0]
    conn.close()
    os.unlink(Store(repo).path_for(sha))
    data, err, code = _tar(repo, exit_code=None)
    assert code == 10, err
    assert "big.bin" in err and "offset" in err and "Traceback" not in err
    listing = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, timeout=60)
    assert listing.returncode == 0
    dest = tmp_path / "dest"
    assert _extract("gnu", data, dest).returncode == 0
    got = _restored(dest, src)
    big = os.fsencode(src / "big.bin")
    assert got[big].size == expected[big].size and got[big].sha256 != expected[big].sha256
    others = {p: e for p, e in expected.items() if p != big}
    assert not diff(others, {p: e for p, e in got.items() if p != big}, symlink_mtime=False)


HUGE = 4 << 30  # a sparse file: no disk, but reading it whole would need 4 GiB of memory


@pytest.mark.parametrize("catalog_says", ["real", "huge", "huge_length"])
def test_E8_huge_chunk_file_pads_reports_and_stays_small(tmp_path, repo, catalog_says):
    """A chunk file grown huge is damage (zeros, exit 10) read in bounded memory; a catalog
    that also gives the chunk that length disagrees with the file's size: catalog damage,
    the stream stops there (exit 7)."""
    src = small_tree(tmp_path / "src")
    expected = manifest(src)
    sid = save(repo, src)["save_id"]
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    sha, length = conn.execute(
        "SELECT k.sha256, k.length FROM member AS m JOIN path AS p ON p.id = m.path_id "
        "JOIN version AS v ON v.id = m.version_id "
        "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
        "JOIN chunk AS k ON k.id = cc.chunk_id WHERE m.save_id = ? AND p.key = ? "
        "AND cc.seq = 1", (sid, sort_key(os.fsencode(src / "big.bin")))).fetchone()
    if catalog_says == "huge":  # a hostile catalog agrees with the file's size
        conn.execute("UPDATE chunk SET stored_length = ? WHERE sha256 = ?", (HUGE, sha))
    if catalog_says == "huge_length":  # ... and says the chunk is that long too
        conn.execute("UPDATE chunk SET length = ?, stored_length = ? WHERE sha256 = ?",
                     (HUGE, HUGE, sha))
    conn.close()
    os.truncate(Store(repo).path_for(sha), HUGE)
    res = run_capped([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"])
    err = res.stderr.decode()
    assert "Traceback" not in err and "MemoryError" not in err
    assert res.peak_rss < PEAK_RSS_MAX
    if catalog_says == "huge_length":  # chunks longer than the content: catalog damage
        line = one_line_error(err)
        assert res.returncode == 7, err
        assert "big.bin has size" in line and "the catalog is damaged" in line, line
        assert "catalog-copies" in line, line
        return
    assert res.returncode == 10, err
    [line] = [ln for ln in err.splitlines() if sha.hex() in ln]
    why = f"chunk file is {HUGE} bytes, longer than any body of a {length}-byte chunk"
    assert "big.bin" in line and why in line, line
    lint_tar(res.stdout)
    dest = tmp_path / "dest"
    assert _extract("gnu", res.stdout, dest).returncode == 0
    got = _restored(dest, src)
    big = os.fsencode(src / "big.bin")
    assert got[big].size == expected[big].size and got[big].sha256 != expected[big].sha256
    others = {p: e for p, e in expected.items() if p != big}
    assert not diff(others, {p: e for p, e in got.items() if p != big}, symlink_mtime=False)


@pytest.mark.timeout(60)
def test_E9_consumer_dies_early(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1 << 16) * 400)  # 25 MiB of stream
    save(repo, src)
    before = snapshot(repo)
    p1 = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.Popen(["head", "-c", "1000"], stdin=p1.stdout, stdout=subprocess.DEVNULL)
    p1.stdout.close()
    p2.wait(timeout=50)
    err = p1.stderr.read()
    assert p1.wait(timeout=50) == 141
    assert err == b""
    after = snapshot(repo)
    assert {k: v for k, v in after.items() if not k.endswith((b"-wal", b"-shm"))} == {
        k: v for k, v in before.items() if not k.endswith((b"-wal", b"-shm"))}


def test_E10_restore_writes_nothing(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    before = snapshot(repo)
    _tar(repo)
    run("-r", repo, "list", "--backup", "latest", "-v")
    after = snapshot(repo)
    for side in (b"-wal", b"-shm"):  # SQLite's WAL reader files may appear, empty
        name = os.path.join(repo, b"catalog.sqlite3" + side)
        if name not in before and name in after:
            assert side == b"-shm" or after[name] == b""
            del after[name]
    assert after == before
    assert_repo_consistent(repo)


def test_E13_stream_end_and_terminal_refusal(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    save(repo, src)
    data, _, _ = _tar(repo)
    assert len(data) % 512 == 0 and data[-1024:] == b"\0" * 1024
    listing = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, timeout=60)
    assert listing.returncode == 0 and b"lone zero block" not in listing.stderr
    master, slave = pty.openpty()
    try:
        res = subprocess.run([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                             stdout=slave, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert res.returncode == 2
    assert "terminal" in one_line_error(res.stderr)


def test_D17_extreme_metadata_rows_reach_the_tar_stream(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    sid = save(repo, src)["save_id"]
    target = os.fsencode(src / "text.txt")
    mtime_ns = (2**33 + 1000) * 10**9 + 123_456_789  # beyond ustar's 2^33 s, with nanoseconds
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("UPDATE version SET uid = 3000000, gid = 3000001, mtime_ns = ? WHERE id = "
                 "(SELECT m.version_id FROM member AS m JOIN path AS p ON p.id = m.path_id "
                 "WHERE m.save_id = ? AND p.key = ?)", (mtime_ns, sid, sort_key(target)))
    conn.close()
    reseal_digest(repo, sid)
    data, _, _ = _tar(repo)
    (member,) = [ti for ti in lint_tar(data) if ti.name.endswith("/text.txt")]
    assert (member.uid, member.gid) == (3000000, 3000001)
    assert member.pax_headers.get("uid") == "3000000"
    assert member.pax_headers.get("mtime") == f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"
    listing = subprocess.run(["tar", "--numeric-owner", "-tvf", "-"], input=data,
                             capture_output=True, timeout=60)
    assert b"3000000/3000001" in listing.stdout
    dest = tmp_path / "dest"
    assert _extract("gnu", data, dest).returncode == 0
    st = os.lstat(os.fsencode(dest) + target)
    assert st.st_mtime_ns == mtime_ns
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (3000000, 3000001)
