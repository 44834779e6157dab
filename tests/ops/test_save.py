"""Operation depth: ops.save on a real temp repository, verified from the catalog."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from backshift import pathcodec
from backshift.errors import RepositoryIOError
from backshift.model import ChunkRef
from backshift.ops import borrow as borrow_mod
from backshift.ops import feed as feed_mod
from backshift.ops import reader as reader_mod
from backshift.ops import readers as readers_mod
from backshift.ops import save as save_mod
from backshift.ops import session as session_mod
from backshift.ops.save import SaveOptions
from backshift.repo import READ, WRITE, open_repository
from backshift.store import Store
from conftest import BACKSHIFT, find0, make_tree, run


def do_save(repo: bytes, root: Path, subset: str = "t", **opts):
    warnings: list[str] = []
    names = [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("host", subset, **opts), warnings.append)
    return stats, warnings


def members(repo: bytes, save_id: int) -> dict[bytes, dict]:
    """Every member of a save: path bytes -> version columns and content bytes."""
    out = {}
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute(
            "SELECT p.key, v.mode, v.uid, v.gid, v.size, v.mtime_ns, v.link_target, "
            "v.content_id, v.rdev, v.nlink FROM member m JOIN path p ON p.id = m.path_id "
            "JOIN version v ON v.id = m.version_id WHERE m.save_id = ?", (save_id,)).fetchall()
        for key, mode, uid, gid, size, mtime_ns, target, content_id, rdev, nlink in rows:
            data = None
            if content_id is not None:
                data = b"".join(r.store.read(ref)
                                for ref in r.catalog.chunks_of_content(content_id))
            out[pathcodec.from_key(key)] = dict(mode=mode, uid=uid, gid=gid, size=size,
                                                 mtime_ns=mtime_ns, target=target, data=data,
                                                 rdev=rdev, nlink=nlink)
    return out


def test_save_records_every_type_and_odd_name(repo, tree):
    stats, warnings = do_save(repo, tree)
    assert warnings == []
    got = members(repo, stats.save_id)
    expected = [pathcodec.normalize(n, b"/") for n in find0(tree).split(b"\0") if n]
    assert sorted(got) == sorted(expected)
    for path, m in got.items():
        st = os.lstat(path)
        assert m["mode"] == st.st_mode, path
        assert (m["uid"], m["gid"], m["mtime_ns"]) == (st.st_uid, st.st_gid, st.st_mtime_ns)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                assert m["data"] == f.read(), path
            assert m["size"] == st.st_size
        elif stat.S_ISLNK(st.st_mode):
            assert m["target"] == os.readlink(path)
        else:
            assert m["data"] is None
    raw = os.fsencode(tree)
    assert got[raw + b"/sub/bad-\xff\xfe-name"]["data"] == b"odd name bad-\xff\xfe-name\n"
    assert got[raw + b"/sub/new\nline"]["size"] > 0
    assert stat.S_ISFIFO(got[raw + b"/fifo"]["mode"])
    assert got[raw + b"/a.txt"]["mtime_ns"] == 1_600_000_000_123_456_789
    assert got[raw + b"/sub/deeper/setuid"]["mode"] & 0o7777 == 0o4755


def test_save_identical_files_share_one_content(repo, tmp_path):
    root = tmp_path / "dups"
    root.mkdir()
    for i in range(5):
        (root / f"copy{i}").write_bytes(b"same bytes\n" * 1000)
    stats, _ = do_save(repo, root)
    with open_repository(repo, READ) as r:
        n = r.catalog.conn.execute("SELECT count(*) FROM content").fetchone()[0]
    assert n == 1
    assert stats.new_chunks == 1


def test_save_borrows_unchanged_file_without_reading(repo, tree, no_racy_margin, monkeypatch):
    first, _ = do_save(repo, tree)

    def no_reading(path):
        raise AssertionError(f"{path!r} was opened for reading")

    monkeypatch.setattr(reader_mod, "open_for_reading", no_reading)
    second, warnings = do_save(repo, tree)
    assert warnings == []
    assert second.files_read == 0 and second.bytes_read == 0
    inodes = {(p.lstat().st_dev, p.lstat().st_ino) for p in tree.rglob("*")
              if p.is_file() and not p.is_symlink()}
    assert second.files_borrowed == len(inodes)
    assert members(repo, first.save_id) == members(repo, second.save_id)


def test_save_unchanged_resave_adds_only_member_rows(repo, tree, no_racy_margin):
    do_save(repo, tree)

    def counts():
        with open_repository(repo, READ) as r:
            return {t: r.catalog.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("path", "version", "content", "chunk", "member")}

    before = counts()
    do_save(repo, tree)
    after = counts()
    assert {t: after[t] - before[t] for t in after} == {
        "path": 0, "version": 0, "content": 0, "chunk": 0, "member": before["member"]}


def chunks_of_file(repo: bytes, save_id: int, path) -> list:
    """The chunk refs of PATH's content in save SAVE_ID, in order."""
    with open_repository(repo, READ) as r:
        content_id = r.catalog.conn.execute(
            "SELECT v.content_id FROM member m JOIN path p ON p.id = m.path_id "
            "JOIN version v ON v.id = m.version_id WHERE m.save_id = ? AND p.key = ?",
            (save_id, pathcodec.sort_key(os.fsencode(path)))).fetchone()[0]
        return r.catalog.chunks_of_content(content_id)


def test_save_rereads_borrowed_content_whose_chunk_is_missing(repo, tree, no_racy_margin):
    first, _ = do_save(repo, tree)
    refs = chunks_of_file(repo, first.save_id, tree / "text.txt")
    with open_repository(repo, READ) as r:
        os.unlink(r.store.path_for(refs[0].sha256))
    second, _ = do_save(repo, tree)
    assert second.files_read == 1 and second.new_chunks >= 1
    with open_repository(repo, READ) as r:
        assert r.store.read(refs[0])  # healed: the chunk is back and verifies


def test_save_rereads_borrowed_content_whose_chunk_sits_in_the_wrong_directory(
        repo, tree, no_racy_margin):
    """A chunk file moved to another fan-out directory is not where reads look for it
    (path_for): the presence test must call it missing."""
    first, _ = do_save(repo, tree)
    refs = chunks_of_file(repo, first.save_id, tree / "text.txt")
    with open_repository(repo, READ) as r:
        real = r.store.path_for(refs[0].sha256)
        name = os.path.basename(real)
        other = b"00" if not name.startswith(b"00") else b"01"
        os.rename(real, os.path.join(r.store.root, other, name))
    second, _ = do_save(repo, tree)
    assert second.files_read == 1 and second.new_chunks >= 1
    with open_repository(repo, READ) as r:
        assert r.store.read(refs[0])  # healed: the chunk is back where reads look


def test_save_skips_a_file_whose_time_the_catalog_cannot_hold(repo, tree):
    """A time past 2262 (touch -d 2300-01-01; ext4 holds times to 2446) does not fit the
    catalog's 64-bit nanoseconds: that file is skipped with a warning, the save goes on,
    instead of the save (and every later one) failing on it with OverflowError."""
    far = tree / "far-future"
    far.write_bytes(b"from the future\n")
    os.utime(far, ns=(2**63 + 10**9, 2**63 + 10**9))
    stats, warnings = do_save(repo, tree)
    assert stats.status == "complete"
    assert len(warnings) == 1 and "far-future" in warnings[0], warnings
    got = members(repo, stats.save_id)
    assert os.fsencode(far) not in got and os.fsencode(tree / "a.txt") in got


def test_save_resave_borrows_beside_a_file_whose_time_the_catalog_cannot_hold(
        repo, tree, no_racy_margin):
    """A re-save's fast path stages each batch's lstat numbers in the catalog: a time past
    2262 in a batch (which SQLite cannot bind) leaves that name to the general path, which
    skips it with the warning, while the rest of its batch is borrowed as usual."""
    first, _ = do_save(repo, tree)
    far = tree / "far-future"
    far.write_bytes(b"from the future\n")
    os.utime(far, ns=(2**63 + 10**9, 2**63 + 10**9))
    stats, warnings = do_save(repo, tree)
    assert stats.status == "complete"
    assert len(warnings) == 1 and "far-future" in warnings[0], warnings
    assert (stats.files_read, stats.files_borrowed) == (0, first.files_read)
    now, before = members(repo, stats.save_id), members(repo, first.save_id)
    top = os.fsencode(tree)  # its mtime moved: a new version
    assert now[top]["mtime_ns"] != before[top]["mtime_ns"]
    assert {k: v for k, v in now.items() if k != top} == \
        {k: v for k, v in before.items() if k != top}


def test_save_file_changing_while_read_is_kept_as_read_and_reread(repo, tmp_path,
                                                                  no_racy_margin,
                                                                  monkeypatch):
    root = tmp_path / "grow"
    root.mkdir()
    path = root / "log"
    path.write_bytes(os.urandom(200_000))
    real_put = Store.put
    appended = []

    def put_and_append(self, data, sha):
        if not appended:
            with open(path, "ab") as f:
                f.write(b"appended while reading\n")
            appended.append(True)
        return real_put(self, data, sha)

    monkeypatch.setattr(Store, "put", put_and_append)
    stats, warnings = do_save(repo, root)
    assert any("while being read" in w for w in warnings), warnings
    got = members(repo, stats.save_id)[os.fsencode(path)]
    assert got["size"] == len(got["data"])  # declared size = bytes stored
    monkeypatch.setattr(Store, "put", real_put)
    again, warnings = do_save(repo, root)
    assert warnings == [] and again.files_read == 1
    assert members(repo, again.save_id)[os.fsencode(path)]["data"] == path.read_bytes()


def test_save_runs_with_fewer_gc_passes_and_restores_the_threshold(repo, tree):
    """The collector's youngest generation waits for GC_YOUNG_THRESHOLD allocations while a
    save runs (a warning shows what it was then), and the caller's setting comes back."""
    import gc
    names = [pathcodec.normalize(n, b"/") for n in find0(tree).split(b"\0") if n]
    (tree / "a.txt").unlink()
    seen: list[tuple[int, int, int]] = []
    before = gc.get_threshold()
    with open_repository(repo, WRITE) as r:
        save_mod.save(r, names, SaveOptions("h", "s"), lambda msg: seen.append(gc.get_threshold()))
    assert seen and seen[0][0] == save_mod.GC_YOUNG_THRESHOLD != before[0]
    assert gc.get_threshold() == before


def test_save_duplicate_name_in_a_resave_is_saved_once(repo, tree, no_racy_margin):
    """Unchanged files of a re-save are recorded in batches: a name given twice is still
    warned about once and counted once."""
    first, _ = do_save(repo, tree)
    names = [pathcodec.normalize(n, b"/") for n in find0(tree).split(b"\0") if n]
    twice = next(n for n in names if os.path.isfile(n) and os.stat(n).st_nlink == 1)
    names.append(twice)
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("host", "t"), warnings.append)
    assert len(warnings) == 1 and "more than once" in warnings[0]
    assert stats.files == len(names) - 1 == first.files
    assert stats.files_read == 0 and stats.bytes == first.bytes
    assert members(repo, stats.save_id) == members(repo, first.save_id)


def test_save_resave_records_changed_metadata_of_unchanged_content(repo, tree,
                                                                   no_racy_margin):
    """A directory whose mode changed, beside unchanged ones, gets a new version row."""
    first, _ = do_save(repo, tree)
    (tree / "sub").chmod(0o700)
    second, warnings = do_save(repo, tree)
    assert warnings == [] and second.files == first.files and second.files_read == 0
    got = members(repo, second.save_id)
    assert got[os.fsencode(tree / "sub")]["mode"] & 0o777 == 0o700
    assert members(repo, first.save_id)[os.fsencode(tree / "sub")]["mode"] & 0o777 != 0o700
    del got[os.fsencode(tree / "sub")]
    old = members(repo, first.save_id)
    del old[os.fsencode(tree / "sub")]
    assert got == old


def _member_versions(repo: bytes, save_id: int) -> dict[bytes, int]:
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute(
            "SELECT p.key, m.version_id FROM member m JOIN path p ON p.id = m.path_id "
            "WHERE m.save_id = ?", (save_id,)).fetchall()
    return dict(rows)


def test_save_fast_path_records_what_the_general_path_records(repo, tree, no_racy_margin,
                                                              monkeypatch):
    """After every kind of change, a re-save records the same version rows with the fast
    path for unchanged names as without it (every name through add())."""
    first, _ = do_save(repo, tree)
    (tree / "text.txt").write_bytes(b"changed size\n")  # content
    (tree / "random.bin").chmod(0o600)  # metadata (ctime) only
    (tree / "sub" / "deeper" / "setuid").unlink()  # gone
    (tree / "new.txt").write_bytes(b"new file\n")  # new, and its directory changed
    (tree / "empty").unlink()
    (tree / "empty").mkdir()  # a file that became a directory
    (tree / "empty" / "inside").write_bytes(b"in a new directory\n")
    (tree / "emptydir").chmod(0o700)  # a directory's own metadata
    os.utime(tree / "sub", ns=(1, 1))  # a directory's times
    fast, warnings = do_save(repo, tree)
    assert warnings == [] and fast.files_borrowed > 0

    def general_path_only(self, entries):
        return [False] * len(entries), None

    monkeypatch.setattr(borrow_mod.Borrower, "match", general_path_only)
    general, warnings = do_save(repo, tree)
    assert warnings == []
    assert (general.files, general.bytes) == (fast.files, fast.bytes)
    assert fast.files_read == 4 and general.files_read == 0  # the changed files, once
    assert _member_versions(repo, general.save_id) == _member_versions(repo, fast.save_id)
    assert members(repo, fast.save_id) == members(repo, general.save_id)
    assert members(repo, fast.save_id).keys() != members(repo, first.save_id).keys()


def test_save_disk_full_stops_with_error_and_leaves_save_interrupted(repo, tree, monkeypatch):
    from backshift import diskio

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diskio, "write_all", full)
    with pytest.raises(RepositoryIOError, match="No space left on device"):
        do_save(repo, tree)
    with open_repository(repo, READ) as r:
        assert [s.status for s in r.catalog.list_saves()] == ["interrupted"]
        assert [p for sha, p in r.store.iter_chunk_files() if sha is None] == []


def _interrupted_status(repo: bytes) -> list[str]:
    res = run("-r", repo, "saves", "--format", "json")
    return [json.loads(line)["status"] for line in res.stdout.splitlines()]


@pytest.mark.timeout(60)
def test_save_killed_midway_then_next_save_completes_and_borrows(repo, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        (root / f"f{i:03d}").write_bytes(os.urandom(5000))
    time.sleep(2.1)  # older than the racy margin, so save 2 may borrow
    env = dict(os.environ, BACKSHIFT_CRASH_AT="after_catalog_commit:4")
    proc = subprocess.run([BACKSHIFT, "-r", repo, "save", "--subset", "t",
                           "--checkpoint-files", "10",
                           "--workers", "1"], input=find0(root), env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _interrupted_status(repo) == ["interrupted"]
    with open_repository(repo, READ) as r:
        assert r.catalog.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        committed = r.catalog.conn.execute("SELECT count(*) FROM member").fetchone()[0]
    assert 0 < committed < 61
    res = run("-r", repo, "save", "--subset", "t", "--json", input=find0(root))
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete" and summary["files"] == 61
    assert summary["files_borrowed"] >= committed - 1
    assert _interrupted_status(repo) == ["interrupted", "complete"]
    for path, m in members(repo, summary["save_id"]).items():
        if m["data"] is not None:
            assert m["data"] == Path(os.fsdecode(path)).read_bytes()


def _interrupted_save(repo: bytes, root: Path, group: bool) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a save given 5 names, sent SIGINT (to its whole process group
    when GROUP, as Ctrl-C in a terminal does), then given the rest: it exits 130."""
    names = find0(root).split(b"\0")[:-1]
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t",
                             "--json"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=group)
    proc.stdin.write(b"\0".join(names[:5]) + b"\0")
    proc.stdin.flush()
    time.sleep(1.5)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    try:
        proc.stdin.write(b"\0".join(names[5:]) + b"\0")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait(timeout=30)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    return out, err


@pytest.mark.timeout(60)
def test_save_ctrl_c_commits_work_done_and_exits_130(repo, tmp_path):
    out, _err = _interrupted_save(repo, make_tree(tmp_path / "src"), group=False)
    assert _interrupted_status(repo) == ["interrupted"]
    summary = json.loads(out)
    assert summary["status"] == "interrupted" and summary["files"] >= 5


def test_save_chunk_refs_match_store(repo, tree):
    stats, _ = do_save(repo, tree)
    with open_repository(repo, READ) as r:
        for sha, length, stored in r.catalog.conn.execute(
                "SELECT sha256, length, stored_length FROM chunk"):
            assert r.store.stored_size(sha) == stored
            assert len(r.store.read(ChunkRef(sha, length))) == length


@pytest.mark.timeout(90)
def test_save_waiting_for_input_does_not_block_another_save(repo, tmp_path):
    """A save whose find is still walking must not hold the catalog's write lock."""
    root = make_tree(tmp_path / "src")
    names = find0(root).split(b"\0")[:-1]
    slow = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "slow", "--json"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    slow.stdin.write(b"\0".join(names[:5]) + b"\0")
    slow.stdin.flush()
    time.sleep(1.5)  # the slow save has recorded 5 names and waits for more
    other = subprocess.run([BACKSHIFT, "-r", repo, "save", "--subset", "fast", "--json",
                            os.fsdecode(root)], capture_output=True, timeout=30)
    assert other.returncode == 0, other.stderr
    slow.stdin.write(b"\0".join(names[5:]) + b"\0")
    slow.stdin.close()
    slow.wait(timeout=30)
    assert slow.returncode == 0, slow.stderr.read()
    assert json.loads(slow.stdout.read())["files"] == len(names)
    assert _interrupted_status(repo) == ["complete", "complete"]


def test_save_fresh_read_never_reuses_content_with_other_chunks(repo, tmp_path):
    """Same bytes recorded with another chunk list (a 1.x import) whose chunk is lost: a
    fresh read must give a content made of the chunks it just stored, which restores."""
    import hashlib

    import xxhash

    data = os.urandom(200_000)
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    with open_repository(repo, WRITE) as r:
        sha = hashlib.sha256(data).digest()  # one legacy-style chunk for the whole file
        c = r.store.put(data, sha)
        r.store.flush()
        r.catalog.begin()
        r.catalog.insert_content(xxhash.xxh3_128(data).digest(), len(data),
                                 [(c.ref, c.stored_length)])
        r.catalog.commit()
        os.unlink(r.store.path_for(sha))
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, [os.fsencode(f)], SaveOptions("h", "t"), print)
    assert stats.files_read == 1
    out = tmp_path / "out.tar"
    run("-r", repo, "tar", "--backup", "latest", "-o", str(out))
    import tarfile
    with tarfile.open(out) as t:
        assert t.extractfile(str(f).lstrip("/")).read() == data


def test_save_deep_path_without_its_parents_in_the_input(repo, tmp_path):
    """`find / -name X` gives names whose parents are not in the input: interning must
    not recurse once per level (1200 levels here)."""
    deep = os.path.join(os.fsencode(tmp_path), b"/".join([b"a"] * 1200))
    subprocess.run([b"mkdir", b"-p", deep], check=True)
    name = os.path.join(deep, b"f")
    with open(name, "wb") as fh:
        fh.write(b"deep\n")
    try:
        res = run("-r", repo, "save", "--subset", "t", "--json", input=name + b"\0")
        assert json.loads(res.stdout)["files"] == 1
        listed = run("-r", repo, "list", "--backup", "latest").stdout_bytes
        assert listed == name.lstrip(b"/") + b"\n"
    finally:
        subprocess.run([b"rm", b"-rf", os.path.join(os.fsencode(tmp_path), b"a")])


def test_save_small_file_changing_while_read_is_kept_as_read_and_reread(repo, tmp_path,
                                                                        no_racy_margin,
                                                                        monkeypatch):
    """The batched path (files of one chunk) notices a change during the read too."""
    root = tmp_path / "grow"
    root.mkdir()
    path = root / "log"
    path.write_bytes(b"first line\n")
    (root / "other").write_bytes(b"another small file\n")
    real_read_whole = reader_mod.read_whole

    def read_then_append(fd, size, limit=None):
        data = real_read_whole(fd, size, limit)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            with open(path, "ab") as f:
                f.write(b"appended while reading\n")
        return data

    monkeypatch.setattr(reader_mod, "read_whole", read_then_append)
    stats, warnings = do_save(repo, root)
    assert [w for w in warnings if "while being read" in w] != [], warnings
    got = members(repo, stats.save_id)[os.fsencode(path)]
    assert got["data"] == b"first line\n" and got["size"] == len(got["data"])
    monkeypatch.setattr(reader_mod, "read_whole", real_read_whole)
    again, warnings = do_save(repo, root)
    assert warnings == [] and again.files_read == 1
    assert members(repo, again.save_id)[os.fsencode(path)]["data"] == path.read_bytes()


def test_save_small_file_grown_past_one_chunk_is_cut_like_a_big_one(repo, tmp_path,
                                                                    monkeypatch):
    """A file small at lstat and big at read is cut by the chunker, not stored whole."""
    root = tmp_path / "src"
    root.mkdir()
    path = root / "grows"
    path.write_bytes(b"x")
    big = os.urandom(300_000)
    real_open = reader_mod.open_for_reading

    def grow_then_open(p):
        if p == os.fsencode(path):
            path.write_bytes(big)  # same inode, now many chunks' worth
        return real_open(p)

    monkeypatch.setattr(reader_mod, "open_for_reading", grow_then_open)
    stats, warnings = do_save(repo, root)
    assert any("size changed" in w for w in warnings), warnings
    assert members(repo, stats.save_id)[os.fsencode(path)]["data"] == big
    with open_repository(repo, READ) as r:
        lengths = [n for (n,) in r.catalog.conn.execute("SELECT length FROM chunk")]
        assert len(lengths) > 1 and max(lengths) <= r.chunker.max_size


GROWN_MIB = 48  # what a small file grows to between lstat and read: far more than a window


@pytest.mark.parametrize("start", [100, 200_000])  # one chunk (read in a batch), or more
def test_save_small_file_grown_to_far_more_than_a_window_is_streamed(repo, tmp_path,
                                                                     monkeypatch, start,
                                                                     no_racy_margin):
    """A file small at lstat that grew to many times SMALL_FILE before it was read is read
    through the chunker's bounded window like a big file, never whole into memory; it is
    still saved as read, flagged as changed, and not trusted for borrowing."""
    root = tmp_path / "src"
    root.mkdir()
    path = root / "log"
    pattern = os.urandom(1 << 20)
    path.write_bytes(pattern[:start])
    (root / "other").write_bytes(b"another small file\n")
    real_open = reader_mod.open_for_reading

    def grow_then_open(p):
        if p == os.fsencode(path):
            with open(path, "r+b") as f:  # same inode, now GROWN_MIB MiB
                for _ in range(GROWN_MIB):
                    f.write(pattern)
        return real_open(p)

    monkeypatch.setattr(reader_mod, "open_for_reading", grow_then_open)
    tracemalloc.start()
    try:
        stats, warnings = do_save(repo, root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < reader_mod.STREAM_BYTES, f"{peak} bytes allocated at the peak"
    assert [w for w in warnings if "size changed while being read" in w], warnings
    got = members(repo, stats.save_id)[os.fsencode(path)]
    assert got["size"] == GROWN_MIB << 20
    assert got["data"] == pattern * GROWN_MIB
    monkeypatch.setattr(reader_mod, "open_for_reading", real_open)
    again, warnings = do_save(repo, root)
    assert warnings == [] and again.files_read == 1  # the suspect file is read afresh


def test_save_batch_with_duplicates_and_a_vanished_file(repo, tmp_path, monkeypatch):
    root = tmp_path / "src"
    root.mkdir()
    n = save_mod.BATCH_FILES + 50  # more than one batch
    for i in range(n):
        (root / f"f{i:03d}").write_bytes(b"same bytes\n" if i % 10 == 0 else b"file %d\n" % i)
    (root / "empty").write_bytes(b"")
    gone = os.fsencode(root / "f007")
    real_open = reader_mod.open_for_reading

    def vanish(p):
        if p == gone:
            os.unlink(p)
        return real_open(p)

    monkeypatch.setattr(reader_mod, "open_for_reading", vanish)
    stats, warnings = do_save(repo, root)
    assert len(warnings) == 1 and "f007" in warnings[0] and "vanished" in warnings[0]
    got = members(repo, stats.save_id)
    assert gone not in got and len(got) == n + 1  # the directory, n - 1 files and empty
    assert got[os.fsencode(root / "empty")]["data"] == b""
    for i in range(n):
        if i != 7:
            want = b"same bytes\n" if i % 10 == 0 else b"file %d\n" % i
            assert got[os.fsencode(root / f"f{i:03d}")]["data"] == want
    same = len(range(0, n, 10))
    with open_repository(repo, READ) as r:
        shared = {c for (c,) in r.catalog.conn.execute(
            "SELECT DISTINCT v.content_id FROM version v JOIN content c ON c.id = v.content_id"
            " WHERE c.size = 11")}
        assert len(shared) == 1  # identical files share one content row
        assert stats.new_chunks == r.catalog.conn.execute(
            "SELECT count(*) FROM chunk").fetchone()[0] == n - same - 1 + 1


def test_with_content_equals_replace():
    from backshift.model import Version
    v = Version(0o100644, 1, 2, b"u", b"g", 10, 11, 12, 13, 14, 15, 16, b"t", None)
    assert session_mod._with_content(v, 99, 7) == v._replace(size=99, content_id=7)


def _many_small_files(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"f{i:03d}").write_bytes(b"small file number %d\n" % i * 10)
    return root


def test_save_with_flush_ahead_keeps_every_chunk_and_the_order(repo, tmp_path, monkeypatch):
    """Chunks renamed by the flush-ahead thread are in the save and durable like the rest."""
    from harness.consistency import assert_repo_consistent

    from backshift import chunkbatch, diskio
    monkeypatch.setattr(chunkbatch, "FLUSH_AHEAD", 8)
    root = _many_small_files(tmp_path / "src", 120)
    events = []
    real_sync, real_rename = diskio.syncfs, diskio.rename
    monkeypatch.setattr(diskio, "syncfs", lambda p: events.append("sync") or real_sync(p))
    monkeypatch.setattr(diskio, "rename",
                        lambda a, b: events.append("rename") or real_rename(a, b))
    real_commit = session_mod.SaveSession.checkpoint

    def commit_marks(self, force=False):
        before = self._txn
        real_commit(self, force)
        if before and not self._txn:
            events.append("commit")

    monkeypatch.setattr(session_mod.SaveSession, "checkpoint", commit_marks)
    stats, warnings = do_save(repo, root, batch_files=40)
    assert warnings == [] and stats.new_chunks == 120
    assert events.count("rename") == 120
    for i, e in enumerate(events):  # every commit comes after a sync that follows the renames
        if e == "commit":
            last_rename = max(j for j in range(i) if events[j] == "rename")
            assert "sync" in events[last_rename:i], events
    got = members(repo, stats.save_id)
    for i in range(120):
        assert got[os.fsencode(root / f"f{i:03d}")]["data"] == b"small file number %d\n" % i * 10
    assert_repo_consistent(repo, allow_temps=False)


def test_save_flush_ahead_rename_failure_fails_the_save_cleanly(repo, tmp_path, monkeypatch):
    from errno import EIO

    from harness.consistency import assert_repo_consistent
    from harness.faults import Fault, inject

    from backshift import chunkbatch
    monkeypatch.setattr(chunkbatch, "FLUSH_AHEAD", 8)
    root = _many_small_files(tmp_path / "src", 60)
    inject(monkeypatch, "rename", Fault(EIO, after_calls=3))
    with pytest.raises(RepositoryIOError, match="Input/output error"):
        do_save(repo, root)
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)
    with open_repository(repo, READ) as r:
        assert [s.status for s in r.catalog.list_saves()] == ["interrupted"]


def _path_rows_consistent(repo: bytes) -> None:
    """Every path row's parent is the row of its parent path (interning in batches)."""
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute("SELECT id, parent_id, key, name FROM path").fetchall()
    by_id = {pid: key for pid, _, key, _ in rows}
    assert len(set(by_id.values())) == len(rows)
    for _pid, parent_id, key, name in rows:
        path = pathcodec.from_key(key)
        assert name == pathcodec.basename(path)
        up = pathcodec.parent(path)
        if up is None:
            assert parent_id is None
        else:
            assert by_id[parent_id] == pathcodec.sort_key(up)


def test_save_names_given_twice_within_and_across_record_batches(repo, tmp_path):
    """Catalog rows are inserted a record batch at a time: each repeated name (a file,
    a directory, a symlink, a hard link; next to itself, later in the batch, in a later
    batch) gets one member and one warning, and the counters count it once."""
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    n = session_mod.RECORD_BATCH + 40
    for i in range(n):
        (root / "d" / f"f{i:03d}").write_bytes(b"file %d\n" % i)
    (root / "link").symlink_to("d/f001")
    os.link(root / "d" / "f002", root / "hard")
    names = [pathcodec.normalize(x, b"/") for x in find0(root).split(b"\0") if x]
    d = os.fsencode(root / "d")
    f5 = os.fsencode(root / "d" / "f005")
    twice = [f5, d, os.fsencode(root / "link"), os.fsencode(root / "hard")]
    i5 = names.index(f5)
    names[i5 + 1 : i5 + 1] = [f5]  # next to itself
    names[20:20] = twice  # later in the same batch as their first sight (or before it)
    names.extend(twice)  # in a later batch
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("h", "s"), warnings.append)
    distinct = set(names)
    assert len(warnings) == len(names) - len(distinct) == 9
    assert all("more than once" in w for w in warnings)
    got = members(repo, stats.save_id)
    assert set(got) == distinct and stats.files == len(distinct)
    assert stats.bytes == sum(os.lstat(p).st_size for p in distinct
                              if stat.S_ISREG(os.lstat(p).st_mode))
    assert got[f5]["data"] == b"file 5\n"
    assert got[os.fsencode(root / "hard")]["data"] == b"file 2\n"
    assert got[os.fsencode(root / "link")]["target"] == b"d/f001"
    _path_rows_consistent(repo)


def test_save_children_before_their_directories_in_the_input(repo, tmp_path):
    """Names in any order (here reversed: children first) are interned with the right
    parents, within one record batch and across batches."""
    root = tmp_path / "src"
    for j in range(3):
        sub = root / f"s{j}" / "deeper"
        sub.mkdir(parents=True)
        for i in range(session_mod.RECORD_BATCH // 2):
            (sub / f"f{i}").write_bytes(b"%d %d\n" % (j, i))
    names = [pathcodec.normalize(x, b"/") for x in find0(root).split(b"\0") if x]
    names.reverse()
    stats, warnings = None, []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("h", "s"), warnings.append)
    assert warnings == [] and stats.files == len(names)
    got = members(repo, stats.save_id)
    assert set(got) == set(names)
    assert got[os.fsencode(root / "s2" / "deeper" / "f7")]["data"] == b"2 7\n"
    _path_rows_consistent(repo)
    again, _ = do_save(repo, root, subset="s")  # the same names in walk order: known paths
    assert again.files == len(names)
    _path_rows_consistent(repo)


@pytest.mark.timeout(60)
def test_save_killed_before_a_commit_keeps_earlier_batches_and_is_borrowed_from(repo,
                                                                                 tmp_path):
    """SIGKILL while a record batch is inserted but not committed: the commits before it
    stand whole (paths, versions, members), the catalog checks clean, and the next save
    borrows what they hold and reads the rest."""
    root = tmp_path / "many"
    root.mkdir()
    n = session_mod.RECORD_BATCH + 100
    for i in range(n):
        (root / f"f{i:03d}").write_bytes(b"%d\n" % i + os.urandom(100))
    time.sleep(2.1)  # older than the racy margin, so save 2 may borrow
    env = dict(os.environ, BACKSHIFT_CRASH_AT="before_catalog_commit:4")
    proc = subprocess.run([BACKSHIFT, "-r", repo, "save", "--subset", "t",
                           "--checkpoint-files", "100",
                           "--workers", "1"], input=find0(root), env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with open_repository(repo, READ) as r:
        c = r.catalog.conn
        committed = c.execute("SELECT count(*) FROM member").fetchone()[0]
        versions = c.execute("SELECT count(*) FROM version").fetchone()[0]
    assert 0 < committed < n + 1 and versions == committed
    checked = run("-r", repo, "check", exit_code=1).stdout  # a warning: nothing is damaged
    assert "1 warning(s) above" in checked
    assert "'running' but its process" in checked
    _path_rows_consistent(repo)
    res = run("-r", repo, "save", "--subset", "t", "--json", input=find0(root))
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete" and summary["files"] == n + 1
    assert summary["files_borrowed"] >= committed - 1  # all but the directory
    for path, m in members(repo, summary["save_id"]).items():
        if m["data"] is not None:
            assert m["data"] == Path(os.fsdecode(path)).read_bytes()
    _path_rows_consistent(repo)


def test_save_fast_path_name_given_twice_is_saved_once_per_batch_or_across(repo, tree,
                                                                          no_racy_margin,
                                                                          monkeypatch):
    """The fast path records each batch's members as it is offered (one INSERT ... SELECT,
    nothing held until a commit): a name given twice in one batch, and once more in a
    later batch, is saved once, with a warning for each repeat."""
    first, _ = do_save(repo, tree)
    monkeypatch.setattr(feed_mod, "FEED_BATCH", 4)
    names = [pathcodec.normalize(n, b"/") for n in find0(tree).split(b"\0") if n]
    twice = next(n for n in names if os.path.isfile(n) and os.stat(n).st_nlink == 1)
    at = names.index(twice)
    names[at:at + 1] = [twice, twice]  # in one batch, unless at a batch's end
    names.append(twice)  # in the last batch
    inserted = []
    from backshift.catalog import Catalog
    real = Catalog.insert_matched_members
    monkeypatch.setattr(Catalog, "insert_matched_members",
                        lambda self, sid, n: inserted.append(n) or real(self, sid, n))
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("host", "t"), warnings.append)
    assert len(warnings) == 2 and all("more than once" in w for w in warnings)
    assert stats.files == first.files and stats.bytes == first.bytes
    assert stats.files_borrowed == first.files_read
    assert len(inserted) >= len(names) // 4 - 1  # a statement per batch
    assert members(repo, stats.save_id) == members(repo, first.save_id)


def test_save_identical_files_in_several_readers_store_each_chunk_once(repo, tmp_path):
    """Reader processes do not see each other's temp files: the same bytes read by two of
    them at once are written twice and adopted once (Store.adopt); the counts say so."""
    from harness.consistency import assert_repo_consistent
    root = tmp_path / "same"
    root.mkdir()
    data = os.urandom(400_000)
    for i in range(8):
        (root / f"copy{i}").write_bytes(data)
    res = run("-r", repo, "save", "--subset", "t", "--json", "--workers", "4", input=find0(root))
    summary = json.loads(res.stdout)
    with open_repository(repo, READ) as r:
        chunks = r.catalog.conn.execute("SELECT count(*), sum(stored_length) FROM chunk")
        count, stored = chunks.fetchone()
    assert summary["new_chunks"] == count and summary["new_bytes_stored"] == stored
    assert_repo_consistent(repo, allow_temps=False)
    for m in members(repo, summary["save_id"]).values():
        if m["data"] is not None:
            assert m["data"] == data


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _save_waiting_for_more_names(repo: bytes, root) -> subprocess.Popen:
    """A first save (two reader processes) given ROOT's first 5 names on a pipe left open:
    it runs, and waits for more."""
    names = find0(root).split(b"\0")[:-1]
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "t", "--workers", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(b"\0".join(names[:5]) + b"\0")
    proc.stdin.flush()
    return proc


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.timeout(60)
def test_save_readers_hold_no_catalog_fd_and_die_with_the_saving_process(repo, tmp_path):
    """Reader processes are forked before the repository opens (SQLite: no fork with an
    open connection; the lock stays the saver's), and die when the saving process does:
    nothing is left holding the repository after a crash."""
    root = make_tree(tmp_path / "src")
    proc = _save_waiting_for_more_names(repo, root)
    try:
        time.sleep(1.5)  # the catalog is open and a save is running
        readers = _children(proc.pid)
        assert len(readers) == 2
        opened = [os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        assert any("catalog.sqlite3" in target for target in opened)
        for reader in readers:
            for fd in os.listdir(f"/proc/{reader}/fd"):
                target = os.readlink(f"/proc/{reader}/fd/{fd}")
                assert os.fsdecode(repo) not in target, target
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not all(_gone(r) for r in readers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(r) for r in readers)
    finally:
        proc.kill()
        proc.stdin.close()
        proc.wait()


@pytest.mark.timeout(60)
def test_save_ctrl_c_in_a_terminal_reaches_the_readers_too_and_still_commits(repo, tmp_path):
    """Ctrl-C signals the whole foreground process group: the readers ignore it and the
    saving process finishes what was read, commits, and exits 130."""
    out, err = _interrupted_save(repo, make_tree(tmp_path / "src"), group=True)
    assert b"BrokenProcessPool" not in err
    assert json.loads(out)["status"] == "interrupted"


@pytest.mark.timeout(60)
def test_save_reads_in_processes_the_first_time_and_in_threads_when_it_can_borrow(
        repo, tmp_path):
    root = make_tree(tmp_path / "src")
    names = find0(root)

    def readers_of_a_running_save(subset: str) -> int:
        proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", subset,
                                 "--workers", "2"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(names[:200])
        proc.stdin.flush()
        time.sleep(1.0)
        children = len(_children(proc.pid))
        proc.stdin.write(names[200:])
        proc.stdin.close()
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read()
        return children

    assert readers_of_a_running_save("a") == 2
    assert readers_of_a_running_save("a") == 0  # a re-save: threads
    assert readers_of_a_running_save("b") == 2  # another series starts afresh


def _killed_mid_task(repo_: bytes, zstd_level: int, *_args):
    """A reader task that writes a chunk's temp file and is then killed (the OOM killer)."""
    import hashlib
    store = readers_mod._reader_store(repo_, zstd_level)
    data = os.urandom(3000)
    store.put(data, hashlib.sha256(data).digest())
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_save_reader_killed_mid_task_is_one_line_error_and_leaves_no_temps(repo, tmp_path,
                                                                            monkeypatch):
    """A reader process that dies (SIGKILL: the OOM killer) stops the save with a one-line
    error and the generic exit code, not a BrokenProcessPool traceback; the save is marked
    interrupted and the temp files the dead reader wrote are removed."""
    from harness.consistency import assert_repo_consistent
    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(os.urandom(2000 + i))
    (root / "big").write_bytes(os.urandom(200_000))
    monkeypatch.setattr(save_mod, "read_batch_task", _killed_mid_task)
    monkeypatch.setattr(save_mod, "read_file_task", _killed_mid_task)
    res = run("-r", repo, "save", "--subset", "t", input=find0(root), exit_code=2)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("backshift: error: a reader process "), lines
    with open_repository(repo, READ) as r:
        statuses = [row[0] for row in r.catalog.conn.execute("SELECT status FROM save")]
    assert statuses == ["interrupted"]
    assert_repo_consistent(repo, allow_temps=False)


@pytest.mark.timeout(90)
def test_save_reader_killed_while_holding_the_task_queue_does_not_hang(repo, tmp_path):
    """An idle reader waits for the next task holding the task queue's read lock; the other
    waits for that lock. When the first is killed, the pool terminates the other (SIGTERM,
    from the saving process): a reader that ignored every SIGTERM waited for the dead one's
    lock forever, and so did the save."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(40):
        (root / f"f{i}").write_bytes(os.urandom(3000))
    proc = _save_waiting_for_more_names(repo, root)
    try:
        holder = None
        deadline = time.monotonic() + 20
        while holder is None and time.monotonic() < deadline:
            time.sleep(0.1)
            for reader in _children(proc.pid):
                with open(f"/proc/{reader}/wchan") as f:
                    if "pipe" in f.read():  # blocked reading the task pipe, lock held
                        holder = reader
        assert holder is not None
        os.kill(holder, signal.SIGKILL)
        time.sleep(0.3)
        try:
            proc.stdin.write(b"\0".join(find0(root).split(b"\0")[5:]))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
        assert proc.returncode == 2, err  # ReaderDied: the pool broke, the save stopped
        assert err.startswith("backshift: error: a reader process died"), err
        assert "Traceback" not in err
    finally:
        proc.kill()
        proc.wait()



def test_save_store_pool_is_made_once_by_reader_threads_racing_for_it(monkeypatch):
    """Re-save readers are threads: several may reach their first big file at once, and
    each must get the one pool of store threads (a second pool would be left idle, never
    shut down). The race is made certain, not likely: STORE_THREADS becomes a number slow to
    compare, and ThreadPoolExecutor compares it (max_workers <= 0) while being made, so every
    thread past the barrier finds no pool yet unless something makes it wait."""
    compared = []

    class SlowToCompare(int):
        def __le__(self, other):
            compared.append(1)
            time.sleep(0.1)  # not CPU: the other readers run meanwhile
            return int(self) <= other

    monkeypatch.setattr(reader_mod, "STORE_THREADS", SlowToCompare(reader_mod.STORE_THREADS))
    monkeypatch.setattr(reader_mod, "_store_pool", None)
    barrier = threading.Barrier(8)
    pools = []

    def reader():
        barrier.wait()
        pools.append(reader_mod._store_pool_here())

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = {id(pool): pool for pool in pools}
    for pool in made.values():
        pool.shutdown()
    assert compared, "ThreadPoolExecutor no longer compares max_workers: make the race another way"
    assert len(pools) == 8
    assert len(made) == 1, f"{len(made)} pools made"


def test_save_store_pool_is_made_in_a_reader_forked_while_its_lock_was_held():
    """A reader process forked while a thread of the saver held the pool's lock gets a lock
    of its own: the copy would stay held forever (its holder is not in the fork)."""
    with reader_mod._store_pool_lock:
        pid = os.fork()
        if pid == 0:  # the child: a deadlock ends by SIGALRM, not by hanging the test
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(10)
            code = 1
            try:
                reader_mod._store_pool_here().shutdown()
                code = 0
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("task", ["read_batch_task", "read_file_task"])
def test_save_second_ctrl_c_during_a_hand_off_leaves_no_temp_files(repo, tmp_path, task):
    """A second Ctrl-C stops a save at once. Landing while the saver hands a task to a
    reader (send_small's batch of small files, or one big file), after the reader wrote its
    temp files but before the saver holds the task's future, it left those temp files in
    the store for good: nobody adopted them, nobody removed them."""
    from harness.consistency import assert_repo_consistent, temp_files
    from harness.faults import CtrlCInHandOff

    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(os.urandom(2000 + i))
    (root / "big").write_bytes(os.urandom(200_000))
    names = [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]
    readers = CtrlCInHandOff(task)
    with open_repository(repo, WRITE) as r:
        saver = save_mod.Saver(r, SaveOptions("host", "t"), [].append, readers=readers)
        with pytest.raises(KeyboardInterrupt):
            saver.run(names)
    assert readers.fired
    assert temp_files(repo) == []
    assert_repo_consistent(repo, allow_temps=False)
    run("-r", repo, "check")


@pytest.mark.parametrize("call", ["syncfs", "rename"])
def test_save_second_ctrl_c_while_chunks_are_made_durable_leaves_no_temp_files(
        repo, tmp_path, monkeypatch, call):
    """A hard stop landing in the store's flush (its syncfs can take long: a likely place
    for an impatient second Ctrl-C) left the batch's temp files behind: flush had taken
    them out of the pending set that abandon() clears."""
    from harness.consistency import assert_repo_consistent, temp_files
    from harness.faults import inject_ctrl_c

    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(os.urandom(2000 + i))
    (root / "big").write_bytes(os.urandom(200_000))
    fired = inject_ctrl_c(monkeypatch, call)
    run("-r", repo, "save", "--subset", "t", input=find0(root), exit_code=130)
    assert fired
    assert temp_files(repo) == []
    assert_repo_consistent(repo, allow_temps=False)
    run("-r", repo, "check")


def test_save_resave_interns_new_paths_in_batches(repo, tree, no_racy_margin, monkeypatch):
    """A re-save interns the paths the catalog lacks (a new directory of 300 files) with
    the batches of records that hold them (insert_paths, a statement per batch), never one
    insert per path; the new files are saved and restore, the old ones are borrowed."""
    first, _ = do_save(repo, tree)
    added = tree / "added"
    added.mkdir()
    for i in range(300):
        (added / f"n{i:03d}").write_bytes(b"new %d\n" % i)
    from backshift.catalog import Catalog
    calls: dict[str, int] = {}
    for name in ("insert_path", "insert_path_if_new", "insert_paths"):
        real = getattr(Catalog, name)

        def counted(self, *args, _real=real, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(self, *args)
        monkeypatch.setattr(Catalog, name, counted)
    stats, warnings = do_save(repo, tree)
    assert warnings == []
    assert calls.get("insert_path", 0) + calls.get("insert_path_if_new", 0) == 0
    assert 1 <= calls["insert_paths"] <= 3
    assert stats.files == first.files + 301 and stats.files_read == 300
    assert stats.files_borrowed == first.files_read
    saved = members(repo, stats.save_id)
    for i in range(300):
        path = os.fsencode(added / f"n{i:03d}")
        assert saved[path]["data"] == b"new %d\n" % i
