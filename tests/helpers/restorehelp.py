"""Helpers for list/tar tests: save a tree, make a stream, extract it, compare trees."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import apsw
from tarlint import lint_tar

from conftest import find0, run


def save_tree(repo: bytes, root: Path | bytes, subset: str = "t") -> None:
    run("-r", repo, "save", "--subset", subset, input=find0(root))


def gnu_tar_list(data: bytes, verbose: bool, env: dict | None = None) -> bytes:
    """What GNU tar lists for the stream DATA (`tar -tf -`, `-tvf` when VERBOSE)."""
    res = subprocess.run(["tar", "-tvf" if verbose else "-tf", "-"], input=data,
                         capture_output=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def tar_stream(repo: bytes, *args: str | bytes, exit_code: int = 0) -> tuple[bytes, str]:
    """The stream `backshift tar` writes (linted), and its stderr."""
    res = run("-r", repo, "tar", "--backup", "latest", *args, exit_code=exit_code)
    lint_tar(res.stdout_bytes)
    return res.stdout_bytes, res.stderr


def extract(tool: str, data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if tool == "python":
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                          errors="surrogateescape") as tf:
            tf.extractall(dest, filter="tar")
        return
    cmd = {"gnu": ["tar", "-xpf", "-", "-C", str(dest)],
           "bsd": ["bsdtar", "-xpf", "-", "-C", str(dest)]}[tool]
    res = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")


def walk_all(root: bytes) -> list[bytes]:
    """Every path under ROOT (bytes, relative), ROOT itself as b''."""
    out = [b""]
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def compare_trees(src: Path | bytes, dst: Path | bytes, *, mode_mask: int = 0o7777,
                  mtime_exact: bool = True, owners: bool = True,
                  mtime_of: Callable[[int], int] | None = None,
                  only: Iterable[bytes] | None = None) -> None:
    """Assert DST restores SRC: types, bytes, modes, mtimes (files and dirs), symlink
    targets, owners, hardlink groups (same inode in DST exactly where same inode in SRC).

    MTIME_OF maps a source mtime_ns to the one the restore must have (an archive that
    stored it less precisely). ONLY (paths relative to SRC) compares just those: a
    partial restore, where DST may also hold the parent directories tar made for them."""
    src, dst = os.fsencode(src), os.fsencode(dst)
    if only is None:
        names = walk_all(src)
        assert walk_all(dst) == names
    else:
        names = sorted(set(only))
        extra = set(walk_all(dst)) - set(names)
        assert all(os.path.isdir(os.path.join(dst, n)) for n in extra), sorted(extra)
    groups: dict[tuple[int, int], bytes] = {}
    for rel in names:
        a, b = os.path.join(src, rel), os.path.join(dst, rel)
        sa, sb = os.lstat(a), os.lstat(b)
        where = f"{rel!r}"
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), where
        if not stat.S_ISLNK(sa.st_mode):
            assert stat.S_IMODE(sa.st_mode) & mode_mask == stat.S_IMODE(sb.st_mode), where
            want = mtime_of(sa.st_mtime_ns) if mtime_of else sa.st_mtime_ns
            if mtime_exact:
                assert want == sb.st_mtime_ns, where
            else:
                assert abs(want - sb.st_mtime_ns) < 1000, where
        if owners:
            assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), where
        if stat.S_ISREG(sa.st_mode):
            assert _digest(a) == _digest(b), where
            if sa.st_nlink > 1:
                first = groups.setdefault((sa.st_dev, sa.st_ino), b)
                assert os.lstat(first).st_ino == sb.st_ino, f"{where} not linked to {first!r}"
            else:
                assert sb.st_nlink == 1, f"{where} hardlinked in DST, not in SRC"
        elif stat.S_ISLNK(sa.st_mode):
            assert os.readlink(a) == os.readlink(b), where
        elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
            assert sa.st_rdev == sb.st_rdev, where


def _digest(path: bytes) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def hash_dir(root: Path | bytes) -> dict[bytes, str]:
    """Every file under ROOT with the sha256 of its bytes (to prove nothing was written)."""
    root = os.fsencode(root)
    out = {}
    for rel in walk_all(root):
        p = os.path.join(root, rel)
        st = os.lstat(p)
        out[rel] = _digest(p) if stat.S_ISREG(st.st_mode) else f"{st.st_mode:o}"
    return out


def enrich_tree(tree: Path) -> Path:
    """make_tree plus a hardlink group of three, odd times and owners, as root a char device."""
    (tree / "sub" / "deeper" / "big").write_bytes(os.urandom(200_000))
    os.link(tree / "sub" / "deeper" / "big", tree / "big-link1")
    os.link(tree / "sub" / "deeper" / "big", tree / "sub" / "big-link2")
    os.utime(tree / "sub", ns=(1_500_000_000_987_654_321, 1_500_000_000_987_654_321))
    if os.geteuid() == 0:
        os.mknod(tree / "null-dev", stat.S_IFCHR | 0o640, os.makedev(1, 3))
        os.chown(tree / "empty", 1234, 2097152 + 5)  # no names; gid beyond ustar's octal
    (tree / "sticky").mkdir()
    os.chmod(tree / "sticky", 0o1777)
    # before 1970; whole seconds: libarchive reads "-86400.000000001" as -86399.999999999
    os.utime(tree / "sticky", ns=(-86_400_000_000_000, -86_400_000_000_000))
    os.utime(tree, ns=(1_400_000_000_000_000_001, 1_400_000_000_000_000_001))
    return tree


def insert_raw_member(repo: bytes, key: bytes, mode: int, target: bytes | None = None, *,
                      name: bytes | None = None, size: int = 0, user: bytes = b"",
                      mtime_ns: int = 0, ino: int = 0, nlink: int = 1) -> None:
    """A member row of save 1 written with raw SQL under path KEY (no normalising: '..'
    stays), as a damaged or hostile catalog could hold it."""
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("INSERT INTO path (parent_id, key, name) VALUES (NULL, ?, ?)",
                 (key, key.rsplit(b"\0", 1)[-1] if name is None else name))
    path_id = conn.last_insert_rowid()
    conn.execute("INSERT INTO version (path_id, mode, uid, gid, user, grp, size, mtime_ns, "
                 "ctime_ns, dev, ino, nlink, rdev, link_target, content_id) "
                 "VALUES (?, ?, 0, 0, ?, x'', ?, ?, 0, 0, ?, ?, 0, ?, NULL)",
                 (path_id, mode, user, size, mtime_ns, ino, nlink, target))
    conn.execute("INSERT INTO member (save_id, path_id, version_id) VALUES (1, ?, ?)",
                 (path_id, conn.last_insert_rowid()))
    conn.close()
    reseal_digest(repo, 1)


def reseal_digest(repo: bytes, save_id: int) -> None:
    """Record the save's members digest again after a test wrote rows behind backshift's
    back: a forged catalog carries a digest that matches (the digest finds damage, it is
    no signature), and the planner's own checks must stop what such rows hold."""
    from backshift.catalog import CATALOG_NAME, Catalog

    cat = Catalog.open(os.path.join(repo, CATALOG_NAME))
    try:
        cat.begin()
        cat.record_save_digest(save_id)
        cat.commit()
    finally:
        cat.close()
