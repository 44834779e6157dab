"""A re-save after random changes holds exactly the files on disk: the fast path
(Borrower.unchanged) and the general path's borrowing never reuse a stale content.

Every change keeps the size and puts the old mtime back where it can (the cases a
size+mtime rule alone would miss); ctime, inode, nlink, mode and type are what tell.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from repo_oracle import assert_save_matches, file_digests

from backshift import pathcodec
from backshift.ops import save as save_mod
from backshift.ops.save import SaveOptions
from backshift.repo import WRITE, open_repository
from conftest import find0


def _save(repo: bytes, root) -> int:
    names = [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("host", "prop"), warnings.append)
    assert stats.status == "complete", warnings
    return stats.save_id


def _rewrite_same_size_same_mtime(p: str, rng: random.Random) -> None:
    st = os.lstat(p)
    with open(p, "r+b") as f:
        f.write(bytes(rng.randrange(256) for _ in range(min(st.st_size, 8))) or b"")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _change(root: str, rng: random.Random) -> None:
    files = sorted(os.path.join(d, n) for d, _s, ns in os.walk(root) for n in ns
                   if os.path.isfile(os.path.join(d, n)))
    dirs = sorted(os.path.join(d, n) for d, ds, _n in os.walk(root) for n in ds)
    p = rng.choice(files)
    kind = rng.randrange(8)
    st = os.lstat(p)
    if kind == 0:  # same size, mtime put back
        _rewrite_same_size_same_mtime(p, rng)
    elif kind == 1:  # replaced by a new file (new inode) of the same size and times
        tmp = p + ".new"
        with open(tmp, "wb") as f:
            f.write(os.urandom(st.st_size))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, p)
    elif kind == 2:  # two files of one size swap names (inodes move)
        q = next((f for f in files if f != p and os.lstat(f).st_size == st.st_size), None)
        if q is not None:
            os.rename(p, p + ".swap")
            os.rename(q, p)
            os.rename(p + ".swap", q)
    elif kind == 3:  # becomes a hard link to another file
        q = rng.choice(files)
        if q != p:
            os.unlink(p)
            os.link(q, p)
    elif kind == 4:  # a hard link made and removed again (nlink back to 1), content changed
        os.link(p, p + ".l")
        _rewrite_same_size_same_mtime(p, rng)
        os.unlink(p + ".l")
    elif kind == 5:  # a file becomes a directory holding a file of that name
        os.unlink(p)
        os.mkdir(p)
        with open(os.path.join(p, "inner"), "wb") as f:
            f.write(os.urandom(100))
    elif kind == 6 and dirs:  # two directories swap names
        a, b = rng.sample(dirs, 2) if len(dirs) > 1 else (dirs[0], dirs[0])
        if a != b and not b.startswith(a + "/") and not a.startswith(b + "/"):
            os.rename(a, a + ".swap")
            os.rename(b, a)
            os.rename(a + ".swap", b)
    else:  # mode only
        os.chmod(p, st.st_mode ^ 0o040)


@pytest.mark.parametrize("seed", range(int(os.environ.get("RESAVE_SEEDS", "6"))))
def test_resave_after_random_changes_holds_what_is_on_disk(repo, tmp_path, no_racy_margin,
                                                            seed):
    rng = random.Random(seed)
    root = tmp_path / "src"
    for d in range(4):
        sub = root / f"d{d}" / f"e{d % 2}"
        sub.mkdir(parents=True)
        for i in range(12):
            size = rng.choice([0, 1, 7, 64, 3000, 5000])
            (sub / f"f{i}").write_bytes(os.urandom(size))
    _save(repo, root)
    for _round in range(3):
        for _ in range(rng.randrange(1, 6)):
            _change(str(root), rng)
        sid = _save(repo, root)
        assert_save_matches(repo, sid, file_digests(root))
    shutil.rmtree(root)
