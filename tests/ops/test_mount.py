"""`backshift mount`: a real FUSE mount served by a real `backshift mount` process, compared
entry by entry with the tree that was saved; damage, locks, signals and writes."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import damage as chunk_damage
from restorehelp import compare_trees, enrich_tree, walk_all

from backshift import pathcodec
from backshift.catalog import CATALOG_NAME, Catalog
from backshift.ops.mountread import ChunkCache
from backshift.store import Store
from conftest import BACKSHIFT, find0, run, run_bin

HOSTILE = bytes(b for b in range(1, 256) if b != ord("/"))  # every byte but NUL and '/'


def save(repo: bytes, root: Path | bytes, subset: str = "t") -> None:
    run("-r", repo, "save", "--hostname", "h", "--subset", subset, input=find0(root))


@contextmanager
def mounted(repo: bytes, mountpoint: Path, *args: str, env: dict | None = None):
    """A `backshift mount` process, serving once the mount is there; unmounted at the end,
    where the process must have exited 0."""
    mountpoint.mkdir(exist_ok=True)
    log = open(mountpoint.parent / f"{mountpoint.name}.stderr", "w+b")  # noqa: SIM115
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "mount", str(mountpoint), *args],
                            stdout=subprocess.DEVNULL, stderr=log,
                            env=None if env is None else {**os.environ, **env})
    proc.log_path = log.name
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"mount did not come up (exit {proc.poll()}): {log.read()!r}")
            time.sleep(0.05)
        yield proc
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


def stderr_of(proc) -> str:
    with open(proc.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


@pytest.fixture
def full_tree(tree):
    """The tar tests' tree (hostile names, every type, hardlinks) with a name of every
    byte but NUL and '/', a block device and a FIFO deeper down."""
    enrich_tree(tree)
    raw = os.fsencode(tree)
    with open(os.path.join(raw, b"sub", HOSTILE), "wb") as f:
        f.write(b"every byte\n")
    os.mkdir(os.path.join(raw, b"sub", b"." + HOSTILE[:100]))
    os.mkfifo(tree / "sub" / "deeper" / "fifo2", 0o600)
    if os.geteuid() == 0:
        os.mknod(tree / "sub" / "blockdev", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.utime(tree / "sub", ns=(1_500_000_000_987_654_321, 1_500_000_000_987_654_321))
    return tree


def in_save(mp: Path, tree: Path, save_id: int = 1) -> bytes:
    return os.fsencode(mp / "h" / "t" / str(save_id)) + os.fsencode(tree)


def test_mount_shows_the_save_entry_by_entry(repo, full_tree, tmp_path):
    save(repo, full_tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        got = in_save(mp, full_tree)
        compare_trees(full_tree, got)  # types, modes, owners, bytes, ns mtimes, symlinks,
        # hardlink groups by inode, device numbers
        src = os.fsencode(full_tree)
        for rel in walk_all(src):
            a, b = os.lstat(os.path.join(src, rel)), os.lstat(os.path.join(got, rel))
            if not stat.S_ISDIR(a.st_mode):
                assert (a.st_size, a.st_nlink) == (b.st_size, b.st_nlink), rel
        assert stat.S_ISFIFO(os.lstat(os.path.join(got, b"sub/deeper/fifo2")).st_mode)
        if os.geteuid() == 0:
            dev = os.lstat(os.path.join(got, b"sub/blockdev"))
            assert stat.S_ISBLK(dev.st_mode) and dev.st_rdev == os.makedev(7, 200)
        # inode numbers stay what they were
        before = {rel: os.lstat(os.path.join(got, rel)).st_ino for rel in walk_all(got)}
        after = {rel: os.lstat(os.path.join(got, rel)).st_ino for rel in walk_all(got)}
        assert before == after
        src_inodes = {os.lstat(os.path.join(src, rel)).st_ino for rel in walk_all(src)}
        assert len(set(before.values())) == len(src_inodes)  # hardlinks: one inode each
    assert proc.returncode == 0, stderr_of(proc)


def test_mount_layout_has_hosts_series_and_latest(repo, tree, tmp_path):
    save(repo, tree)
    save(repo, tree, subset="other")
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        assert os.listdir(mp) == ["h"]
        assert sorted(os.listdir(mp / "h")) == ["other", "t"]
        assert sorted(os.listdir(mp / "h" / "t")) == ["1", "latest"]
        assert os.readlink(mp / "h" / "t" / "latest") == "1"
        assert os.readlink(mp / "h" / "other" / "latest") == "2"
        # the directories the save only passed through (/, /tmp, ...) are there too
        assert os.path.isdir(mp / "h" / "t" / "1" / "tmp")
        assert (mp / "h" / "other" / "latest").joinpath(*tree.parts[1:], "a.txt") \
            .read_bytes() == b"hello\n"


def test_mount_shows_saves_made_while_mounted(repo, tree, tmp_path, no_racy_margin):
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        assert os.readlink(mp / "h" / "t" / "latest") == "1"
        (tree / "a.txt").write_bytes(b"changed\n")
        save(repo, tree)  # saves run while mounted (the lock is shared)
        assert sorted(os.listdir(mp / "h" / "t")) == ["1", "2", "latest"]
        time.sleep(1.1)  # the kernel keeps `latest` for SERIES_TIMEOUT_S
        assert os.readlink(mp / "h" / "t" / "latest") == "2"
        assert (Path(os.fsdecode(in_save(mp, tree, 2))) / "a.txt").read_bytes() == b"changed\n"
        assert (Path(os.fsdecode(in_save(mp, tree, 1))) / "a.txt").read_bytes() == b"hello\n"


def test_mount_latest_skips_an_interrupted_save(repo, tree, tmp_path):
    save(repo, tree)
    save(repo, tree)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME))
    cat.conn.execute("UPDATE save SET status = 'interrupted' WHERE id = 2")
    cat.close()
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        assert os.readlink(mp / "h" / "t" / "latest") == "1"
        assert sorted(os.listdir(mp / "h" / "t")) == ["1", "2", "latest"]


@pytest.mark.parametrize("spec", ["1", "latest"])
def test_mount_backup_puts_one_save_at_the_root(repo, tree, tmp_path, spec):
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp, "--backup", spec):
        assert os.listdir(mp) == [tree.parts[1]]
        compare_trees(tree, os.fsencode(mp) + os.fsencode(tree))


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_mount_damaged_chunk_is_eio_never_wrong_bytes(repo, tree, tmp_path, damage):
    save(repo, tree)
    chunk = chunk_damage.chunk_file_of(repo, tree / "random.bin")
    if damage == "missing":
        os.unlink(chunk)
    else:
        chunk_damage.garble(chunk)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        got = Path(os.fsdecode(in_save(mp, tree)))
        with pytest.raises(OSError) as e:
            (got / "random.bin").read_bytes()
        assert e.value.errno == errno.EIO
        assert (got / "text.txt").read_bytes() == (tree / "text.txt").read_bytes()
        assert (got / "random.bin").stat().st_size == 300_000
    err = stderr_of(proc)
    assert proc.returncode == 0, err
    assert "random.bin" in err and "(EIO)" in err and "Traceback" not in err, err


def test_mount_damaged_chunk_of_a_file_fetched_ahead_is_eio(repo, tmp_path):
    """A file whose chunk is damaged, fetched ahead when an earlier one of its directory is
    opened (in the FUSE loop, and stored in the page cache with the others), still gives
    EIO when read, never wrong bytes; the files around it read as saved."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"n{i}").write_bytes(os.urandom(5000 + i))
    save(repo, src)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        d = in_save(mp, src)
        names = os.listdir(d)  # listing order: the order they are fetched ahead in
        bad = names[3]
        chunk_damage.garble(chunk_damage.chunk_file_of(repo, src / os.fsdecode(bad), 0))
        for name in names:
            path = os.path.join(d, name)
            if name == bad:
                with pytest.raises(OSError) as e, open(path, "rb") as f:
                    f.read()
                assert e.value.errno == errno.EIO
            else:
                with open(path, "rb") as f:
                    assert f.read() == (src / os.fsdecode(name)).read_bytes()
    err = stderr_of(proc)
    assert proc.returncode == 0, err
    assert os.fsdecode(bad) in err and "(EIO)" in err and "Traceback" not in err, err


def test_mount_reads_holes_without_reading_chunks(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(100_000) + bytes(3 << 20) + os.urandom(50_000)
    (src / "sparse").write_bytes(data)
    save(repo, src)
    for sha in (bytes(65536),):  # the zero chunks are not needed: remove their file
        import hashlib
        hexname = hashlib.sha256(sha).hexdigest().encode()
        os.unlink(os.path.join(repo, b"chunks", hexname[:2], hexname))
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        assert (Path(os.fsdecode(in_save(mp, src))) / "sparse").read_bytes() == data


def test_mount_refuses_expire_while_mounted(repo, tree, tmp_path):
    save(repo, tree)
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        res = run("-r", repo, "expire", "--keep-last", "1", exit_code=5)
        assert "locked" in res.stderr and "mount" in res.stderr, res.stderr
        assert sorted(os.listdir(mp / "h" / "t")) == ["1", "2", "latest"]
    assert proc.returncode == 0
    run("-r", repo, "expire", "--keep-last", "1")  # unmounted: the lock is gone


def test_mount_unmount_ends_the_process_with_0(repo, tree, tmp_path):
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mp)
    assert "Traceback" not in stderr_of(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_mount_signal_unmounts_and_exits_0(repo, tree, tmp_path, sig):
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, stderr_of(proc)
        assert not os.path.ismount(mp)
    assert "Traceback" not in stderr_of(proc)


def test_mount_writes_fail_with_erofs(repo, tree, tmp_path):
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        got = in_save(mp, tree)
        a = os.path.join(got, b"a.txt")
        attempts = [
            lambda: open(a, "r+b"),
            lambda: open(a, "ab"),
            lambda: open(os.path.join(got, b"new"), "wb"),
            lambda: os.mkdir(os.path.join(got, b"d")),
            lambda: os.mkdir(os.path.join(os.fsencode(mp), b"newhost")),
            lambda: os.unlink(a),
            lambda: os.rmdir(os.path.join(got, b"emptydir")),
            lambda: os.rename(a, os.path.join(got, b"b.txt")),
            lambda: os.symlink(b"x", os.path.join(got, b"l")),
            lambda: os.link(a, os.path.join(got, b"l")),
            lambda: os.chmod(a, 0o777),
            lambda: os.chown(a, 1, 1),
            lambda: os.utime(a, ns=(0, 0)),
            lambda: os.truncate(a, 0),
            lambda: os.setxattr(a, b"user.x", b"1"),
            lambda: os.mkfifo(os.path.join(got, b"f")),
        ]
        for i, attempt in enumerate(attempts):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS, (i, e.value)
        assert (tree / "a.txt").read_bytes() == b"hello\n"


def test_mount_without_the_extra_is_one_line_exit_2(repo, tmp_path):
    fake = tmp_path / "nofuse"
    fake.mkdir()
    (fake / "pyfuse3.py").write_text("raise ImportError(\"No module named 'pyfuse3'\")\n")
    (tmp_path / "mnt").mkdir()
    res = run_bin("-r", repo, "mount", str(tmp_path / "mnt"), env={"PYTHONPATH": str(fake)})
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert err.count("\n") == 1 and "pip install 'backshift[mount]'" in err, err


@pytest.mark.parametrize("where", ["missing", "file"])
def test_mount_bad_mountpoint_is_one_line_exit_2(repo, tmp_path, where):
    mp = tmp_path / "mnt"
    if where == "file":
        mp.write_bytes(b"")
    res = run("-r", repo, "mount", str(mp), exit_code=2)
    assert res.stderr.count("\n") == 1 and "cannot mount at" in res.stderr, res.stderr


def test_mount_catalog_questions_are_index_lookups(repo, tree):
    save(repo, tree)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    try:
        for sql, params in [
            (cat.MOUNT_CHILDREN, {"save_id": 1, "parent_id": 1, "after": 0, "limit": 10}),
            (cat.MOUNT_CHUNKS_OF_CONTENTS, {"content_ids": "[1, 2]"}),
            (cat.MOUNT_CHILD, {"save_id": 1, "parent_id": 1, "name": b"tmp"}),
            (cat.MOUNT_ENTRY, {"save_id": 1, "path_id": 1}),
            (cat.MOUNT_NEWEST_COMPLETE, {"hostname": "h", "subset": "t"}),
            (cat.MOUNT_SAVES_OF_SERIES, {"hostname": "h", "subset": "t"}),
        ]:
            details = cat.explain(sql, params)
            text = "\n".join(details)
            # (the one scan allowed: of the list of content ids given, json_each)
            assert not any(d.startswith("SCAN") and "VIRTUAL TABLE" not in d
                           for d in details), text
    finally:
        cat.close()


def test_mount_chunk_cache_stays_within_its_limit(repo, tree):
    save(repo, tree)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    try:
        chunks = cat.conn.execute("SELECT sha256, length, stored_length FROM chunk").fetchall()
    finally:
        cat.close()
    assert len(chunks) > 4
    limit = sum(sorted(c[1] for c in chunks)[-2:])  # room for the two largest
    cache = ChunkCache(Store(repo), limit=limit)
    try:
        for sha, length, stored in chunks * 2:
            assert len(cache.get(sha, length, stored)) == length
            assert cache.size <= limit
        assert cache.reads > len(chunks)  # evicted chunks were read again
    finally:
        cache.close()


def test_mount_refuses_catalog_rows_with_names_a_directory_cannot_hold(repo, tree, tmp_path):
    """A damaged or hostile catalog: names with '/', '..', or a name that is not the last
    component of its key are left out of the listing and named once on stderr."""
    save(repo, tree)
    import apsw
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, CATALOG_NAME)))
    parent_key = pathcodec.sort_key(os.fsencode(tree))
    parent_id = conn.execute("SELECT id FROM path WHERE key = ?", (parent_key,)).fetchall()[0][0]
    for key, name in [(parent_key + b"\0x/y", b"x/y"), (parent_key + b"\0..", b".."),
                      (parent_key + b"\0other", b"a-lie")]:
        conn.execute("INSERT INTO path (parent_id, key, name) VALUES (?, ?, ?)",
                     (parent_id, key, name))
        path_id = conn.last_insert_rowid()
        conn.execute("INSERT INTO version (path_id, mode, uid, gid, user, grp, size, mtime_ns, "
                     "ctime_ns, dev, ino, nlink, rdev, link_target, content_id) "
                     "VALUES (?, ?, 0, 0, x'', x'', 0, 0, 0, 0, 0, 1, 0, NULL, NULL)",
                     (path_id, stat.S_IFDIR | 0o755))
        conn.execute("INSERT INTO member (save_id, path_id, version_id) VALUES (1, ?, ?)",
                     (path_id, conn.last_insert_rowid()))
    conn.close()
    mp = tmp_path / "mnt"
    with mounted(repo, mp) as proc:
        got = in_save(mp, tree)
        assert sorted(os.listdir(got)) == sorted(os.listdir(os.fsencode(tree)))
    err = stderr_of(proc)
    assert err.count("catalog row refused") == 3, err


def test_mount_sequential_reads_fetch_the_next_chunks_ahead(repo, tree):
    from backshift.ops.mountread import PREFETCH_CHUNKS, OpenFile
    save(repo, tree)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    try:
        row = cat.entry_at_key(1, pathcodec.sort_key(os.fsencode(tree / "random.bin")))
        chunks = cat.mount_chunks_of_content(row[14])
    finally:
        cat.close()
    assert len(chunks) > PREFETCH_CHUNKS + 1
    cache = ChunkCache(Store(repo))
    try:
        f = OpenFile(cache, b"", 300_000, chunks)
        first = chunks[0][1]
        assert f.read(0, first) == (tree / "random.bin").read_bytes()[:first]
        ahead = {sha for sha, _, _ in chunks[1:1 + PREFETCH_CHUNKS]}
        deadline = time.monotonic() + 10
        while not ahead <= set(cache.data) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ahead <= set(cache.data)  # fetched by the workers, never asked for
        assert chunks[1 + PREFETCH_CHUNKS][0] not in cache.data
        assert f.read(0, 300_000) == (tree / "random.bin").read_bytes()
    finally:
        cache.close()


def test_mount_backup_latest_narrowed_by_hostname_and_subset(repo, tree, tmp_path):
    save(repo, tree)  # 1: h/t
    (tree / "a.txt").write_bytes(b"other series\n")
    save(repo, tree, subset="other")  # 2: h/other, the newest
    run("-r", repo, "save", "--hostname", "g", "--subset", "t", input=find0(tree))  # 3: g/t
    mp = tmp_path / "mnt"
    inside = Path(os.fsdecode(os.fsencode(mp) + os.fsencode(tree)))
    with mounted(repo, mp, "--backup", "latest", "--hostname", "h", "--subset", "t"):
        assert (inside / "a.txt").read_bytes() == b"hello\n"  # save 1, not 2 or 3
    with mounted(repo, mp, "--backup", "latest", "--hostname", "h"):
        assert (inside / "a.txt").read_bytes() == b"other series\n"  # save 2, not 3
    res = run("-r", repo, "mount", str(mp), "--backup", "latest", "--hostname", "nohost",
              exit_code=8)
    assert res.stderr.count("\n") == 1 and "nohost" in res.stderr, res.stderr
    res = run("-r", repo, "mount", str(mp), "--backup", "1", "--subset", "other", exit_code=8)
    assert res.stderr.count("\n") == 1, res.stderr
    res = run("-r", repo, "mount", str(mp), "--hostname", "h", exit_code=2)
    assert res.stderr.count("\n") == 1 and "--backup" in res.stderr, res.stderr
    assert not os.path.ismount(mp)


def test_mount_serves_extended_attributes_as_saved(repo, tmp_path):
    """getfattr (listxattr, getxattr) of the mounted save prints what it prints of the
    source: user attributes (text, empty, binary, 3 KB), ACLs, a capability, hardlinks."""
    from test_xattrs import attributed_tree, dump, sh
    src = attributed_tree(tmp_path / "src")
    save(repo, src)
    mp = tmp_path / "mnt"
    with mounted(repo, mp, "--backup", "1") as proc:
        got = Path(os.fsdecode(os.fsencode(mp) + os.fsencode(src)))
        assert dump(got) == dump(src)
        assert os.getxattr(got / "text", "user.binary") == bytes.fromhex("00ff0a3d25c3")
        assert os.listxattr(got / "none") == []
        with pytest.raises(OSError) as e:
            os.getxattr(got / "none", "user.comment")
        assert e.value.errno == errno.ENODATA
        assert "user.dir" in sh("getfattr", "-d", got / "dir" / "inner")
    assert proc.returncode == 0, stderr_of(proc)


def test_mount_without_any_saved_xattrs_says_not_supported(repo, tree, tmp_path):
    """No attribute in the repository: the kernel is told once (ENOSYS) and asks no more,
    so `ls -l` costs no request per entry for them."""
    save(repo, tree)
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        got = Path(os.fsdecode(in_save(mp, tree)))
        for _ in range(2):
            with pytest.raises(OSError) as e:
                os.listxattr(got / "a.txt")
            assert e.value.errno == errno.EOPNOTSUPP
        assert (got / "a.txt").read_bytes() == b"hello\n"


def test_mount_lists_a_directory_larger_than_a_page(repo, tmp_path):
    """A directory of more entries than one catalog page (mounttree.PAGE): listed in
    pages, every entry once, with its attributes (readdirplus: no lookup each)."""
    from backshift.ops.mounttree import PAGE
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    names = {f"f{i:05d}" for i in range(PAGE * 2 + 500)}
    for i, n in enumerate(sorted(names)):
        (big / n).write_bytes(b"%d\n" % i if i % 500 == 0 else b"")
    save(repo, src)
    mp = tmp_path / "mnt"
    with mounted(repo, mp, "--backup", "1"):
        got = Path(os.fsdecode(os.fsencode(mp) + os.fsencode(big)))
        listed = os.listdir(got)
        assert len(listed) == len(names) and set(listed) == names
        with os.scandir(got) as it:
            sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
        assert sizes == {n: (big / n).stat().st_size for n in names}
        assert (got / "f01000").read_bytes() == b"1000\n"


def test_mount_directory_pages_go_on_and_seek_back(repo, tmp_path, monkeypatch):
    """Tree.children_page: at most PAGE rows a query; the offset it gives goes on where
    the page ended, and an earlier offset (seekdir) gives the same entries again."""
    from backshift.ops import mounttree
    monkeypatch.setattr(mounttree, "PAGE", 7)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"n{i:02d}").write_bytes(b"x" * i)
    save(repo, src)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    try:
        tree = mounttree.Tree(cat, 1)
        ino = tree.lookup(mounttree.ROOT_INODE, src.parts[1].encode()).ino
        for part in src.parts[2:]:
            ino = tree.lookup(ino, os.fsencode(part)).ino
        pages, after = [], 0
        while True:
            page, nxt = tree.children_page(ino, after)
            assert len(page) <= 7
            pages.append(page)
            if nxt == after:
                break
            after = nxt
        entries = [e for p in pages for e in p]
        assert sorted(name for _, name, _ in entries) == [b"n%02d" % i for i in range(30)]
        offsets = [off for off, _, _ in entries]
        assert offsets == sorted(set(offsets))
        again, _ = tree.children_page(ino, offsets[9])  # seek back into the second page
        assert again == entries[10:17]
        for _, _name, attr in entries:  # a listed file opens without asking the catalog
            assert tree.listed_chunks(attr.ino) == cat.mount_chunks_of_content(
                attr.content_id)
    finally:
        cat.close()


def test_mount_keeps_the_listings_of_complete_saves_only(repo, tmp_path, monkeypatch):
    """A directory of a complete save listed again (ls, then cp -r; find, then tar) is
    answered from the listing kept, with no catalog query; one of a save still running
    (or interrupted) is asked again each time: it may have grown. The listings kept stay
    within LISTED_ENTRIES_MAX."""
    from backshift.ops import mounttree
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(6):
        (src / f"n{i}").write_bytes(b"x" * i)
    save(repo, src)
    save(repo, src)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME))
    cat.conn.execute("UPDATE save SET status = 'running' WHERE id = 2")
    cat.close()
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    asked = []
    real = cat.mount_children
    monkeypatch.setattr(cat, "mount_children", lambda *a: asked.append(a[0]) or real(*a))
    try:
        for save_id, queries in ((1, 1), (2, 3)):
            tree = mounttree.Tree(cat, save_id)
            ino = mounttree.ROOT_INODE
            for part in src.parts[1:]:
                ino = tree.lookup(ino, os.fsencode(part)).ino
            asked.clear()
            first = tree.children_page(ino, 0)
            assert [tree.children_page(ino, 0) for _ in range(2)] == [first, first]
            assert asked == [save_id] * queries
            assert sorted(name for _, name, _ in first[0]) == [
                b"n0", b"n1", b"n2", b"n3", b"n4", b"n5", b"sub"]
        monkeypatch.setattr(mounttree, "LISTED_ENTRIES_MAX", 10)
        tree = mounttree.Tree(cat, 1)
        ino = mounttree.ROOT_INODE
        for part in src.parts[1:]:
            ino = tree.lookup(ino, os.fsencode(part)).ino
            tree.children_page(ino, 0)
            assert tree.listed_entries <= 10
    finally:
        cat.close()


def test_mount_open_fetches_the_next_listed_files_ahead(repo, tmp_path, monkeypatch):
    """Opening a file of a listed directory fetches the chunks of the files listed after
    it: a reader of the directory opens them next. Small chunks in the FUSE loop, done
    when open returns (a worker's hand-over costs more than their fetch), larger ones in
    worker threads."""
    import trio

    from backshift.ops import fusefs, mounttree
    src = tmp_path / "src"
    src.mkdir()
    for i in range(fusefs.AHEAD_FILES + 4):
        (src / f"n{i:02d}").write_bytes(os.urandom(1000 + i))
    (src / "n03").write_bytes(os.urandom(200_000))  # chunks of 4 to 64 KiB
    monkeypatch.setattr(fusefs, "INLINE_LOAD_MAX", 8192)  # some of them above it
    save(repo, src)
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    cache = ChunkCache(Store(repo))
    try:
        tree = mounttree.Tree(cat, 1)
        fs = fusefs.Filesystem(tree, cache, lambda msg: None)
        ino = mounttree.ROOT_INODE
        for part in src.parts[1:]:
            ino = tree.lookup(ino, os.fsencode(part)).ino
        page, _ = tree.children_page(ino, 0)
        files = [attr for _, _, attr in page]
        trio.run(fs.open, files[0].ino, os.O_RDONLY, None)
        refs = {ref for a in files[1:1 + fusefs.AHEAD_FILES] for ref in tree.listed_chunks(a.ino)}
        small = {sha for sha, length, _ in refs if length <= fusefs.INLINE_LOAD_MAX}
        assert small <= set(cache.data)  # fetched by open itself
        assert cache.pooled == len(refs) - len(small) > 0  # the others by worker threads
        ahead = {sha for sha, _, _ in refs}
        deadline = time.monotonic() + 30
        while not ahead <= set(cache.data) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ahead <= set(cache.data)
        assert cache.reads == len(ahead)  # the first file itself: read when it is read
        beyond = {sha for a in files[1 + fusefs.AHEAD_FILES:] for sha, _, _ in
                  tree.listed_chunks(a.ino)}
        assert not beyond & set(cache.data)
    finally:
        cache.close()
        cat.close()


def test_mount_serve_inline_takes_a_queued_request_without_a_trip_through_trio(monkeypatch):
    import pyfuse3
    import trio

    from backshift.ops import fusefs

    fuse = os.open("/dev/fuse", os.O_RDWR)
    r, w = os.pipe()
    try:
        assert fuse in fusefs.fuse_fds() and r not in fusefs.fuse_fds()
        monkeypatch.setattr(pyfuse3, "_wait_fuse_readable", None)
        assert not fusefs.serve_inline({r})  # no hook to take: pyfuse3 as it is
        stock = []

        async def stock_wait():
            stock.append(True)
            return True

        monkeypatch.setattr(pyfuse3, "_wait_fuse_readable", stock_wait)
        assert not fusefs.serve_inline({r, w})  # not one descriptor: pyfuse3 as it is
        assert fusefs.serve_inline({r})
        os.write(w, b"x")  # a queued request
        served = []

        async def serve():
            for _ in range(fusefs.YIELD_EVERY * 2):
                served.append(await pyfuse3._wait_fuse_readable())

        trio.run(serve)
        assert all(served)
        assert len(stock) == 2  # only every YIELD_EVERY-th request lets the others run
        os.read(r, 1)
        stock.clear()
        monkeypatch.setattr(fusefs, "WAIT_HERE_MS", 1)
        trio.run(serve)
        assert len(stock) == fusefs.YIELD_EVERY * 2  # nothing queued: trio waits for one
        # a request that comes while the loop waits (a reader in step with the mount): no
        # trip through trio either
        monkeypatch.setattr(fusefs, "WAIT_HERE_MS", 60_000)
        stock.clear()
        later = threading.Timer(0.2, os.write, (w, b"x"))
        later.start()
        try:
            assert trio.run(pyfuse3._wait_fuse_readable)
        finally:
            later.join()
        assert stock == []
    finally:
        for fd in (fuse, r, w):
            os.close(fd)


def test_mount_widens_the_kernels_read_ahead(repo, tree, tmp_path):
    from backshift.ops.mount import READ_AHEAD_KB

    save(repo, tree)
    mp = tmp_path / "mnt with\ta tab"  # the mount table escapes it
    with mounted(repo, mp):
        dev = os.stat(mp).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
            assert int(f.read()) == READ_AHEAD_KB


def test_mount_device_is_read_from_the_mount_table(tmp_path):
    from backshift.ops.mount import mount_device

    table = tmp_path / "mountinfo"
    table.write_bytes(b"36 35 98:0 / /mnt/a\\040b rw,noatime - ext3 /dev/root rw\n"
                      b"37 35 0:41 / /mnt/x rw - fuse.backshift backshift ro\n"
                      b"38 35 0:42 / /mnt/x rw - fuse.backshift backshift ro\n")
    assert mount_device(b"/mnt/a b", str(table)) == "98:0"
    assert mount_device(b"/mnt/x", str(table)) == "0:42"  # the last one mounted there
    assert mount_device(b"/mnt/none", str(table)) is None
    assert mount_device(b"/mnt/x", str(tmp_path / "missing")) is None


def resident_bytes(path: bytes) -> int:
    """Bytes of PATH in the kernel's page cache (fincore: nothing is read)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, check=True).stdout
    return int(out)


def test_mount_puts_the_next_listed_files_in_the_page_cache(repo, tmp_path):
    """Files listed after one that is opened, their chunks fetched, go into the kernel's
    page cache whole (no READ request when they are read), and read back as saved."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"n{i}").write_bytes(os.urandom(10_000 + i))
    save(repo, src)
    mp = tmp_path / "mnt"
    with mounted(repo, mp):
        d = os.fsencode(mp / "h" / "t" / "1") + os.fsencode(src)
        names = os.listdir(d)  # listing order: the order the files are fetched ahead in
        first, later = os.path.join(d, names[0]), os.path.join(d, names[-1])
        with open(first, "rb") as f:
            f.read()
        deadline = time.monotonic() + 60
        while not resident_bytes(later) and time.monotonic() < deadline:
            with open(first, "rb"):  # each open stores what was fetched meanwhile
                time.sleep(0.05)
        assert resident_bytes(later) > 0
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                assert f.read() == (src / os.fsdecode(name)).read_bytes()


def test_mount_stats_count_the_requests_by_type(repo, tmp_path):
    """BACKSHIFT_MOUNT_STATS: the mount's last line counts the requests it answered by type
    (what the speed work measures); without it, no such line."""
    from backshift.ops.mount import STATS_ENV

    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"n{i}").write_bytes(os.urandom(3000 + i))
    save(repo, src)
    for env, expected in (({STATS_ENV: "1"}, True), ({}, False)):
        mp = tmp_path / f"mnt{int(expected)}"
        with mounted(repo, mp, env=env) as proc:
            d = in_save(mp, src)
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    assert f.read() == (src / os.fsdecode(name)).read_bytes()
        assert proc.returncode == 0
        lines = [ln for ln in stderr_of(proc).splitlines() if "mount requests:" in ln]
        if not expected:
            assert lines == []
            continue
        assert len(lines) == 1, stderr_of(proc)
        counts = dict(part.rsplit(" ", 1) for part in
                      lines[0].split("requests: ", 1)[1].split(";")[0].split(", "))
        assert counts["open"] == "5" and int(counts["opendir"]) >= 1
        assert "chunk files read 5 (0 by worker threads)" in lines[0]


def test_mount_collects_garbage_rarely(repo, tmp_path):
    """The mount's caches grow by a few objects an entry and its requests make next to no
    cycles: Python's collector runs once GC_EVERY more objects are alive, not every 700
    (a run of it looked at every object of the caches: a sixth of the mount's CPU)."""
    from backshift.ops.mount import STATS_ENV

    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"n{i:03d}").write_bytes(b"%d" % i)
    save(repo, src)
    mp = tmp_path / "mnt"
    with mounted(repo, mp, env={STATS_ENV: "1"}) as proc:
        d = in_save(mp, src)
        for _ in range(2):
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as f:
                    f.read()
    assert proc.returncode == 0
    line = next(ln for ln in stderr_of(proc).splitlines() if "mount requests:" in ln)
    assert int(line.rsplit("garbage collections ", 1)[1]) == 0, line
