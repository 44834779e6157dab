"""Unit depth: PathInterner on a real catalog (the save's and import-legacy's path ids)."""

from __future__ import annotations

import os
import sys

from backshift.catalog import Catalog
from backshift.ops.interning import PathInterner
from backshift.pathcodec import sort_key


def _catalog(tmp_path) -> Catalog:
    return Catalog.create(os.fsencode(tmp_path / "c.sqlite3"))


def _parent_ids(cat: Catalog, path: bytes) -> list[int | None]:
    """The parent id of each ancestor of PATH, from / down, as the catalog holds them."""
    out = []
    parts = path.split(b"/")[1:]
    for i in range(1, len(parts) + 1):
        key = sort_key(b"/" + b"/".join(parts[:i]))
        row = cat.conn.execute("SELECT parent_id FROM path WHERE key = ?", (key,)).fetchone()
        out.append(row[0])
    return out


def test_path_interner_interns_a_path_deeper_than_the_recursion_limit(tmp_path):
    """A path thousands of levels deep (import-legacy's recursive intern raised
    RecursionError there) gets its ancestors made in a loop, each the parent of the next."""
    cat = _catalog(tmp_path)
    depth = sys.getrecursionlimit() + 500
    path = b"".join(b"/d%d" % i for i in range(depth))
    cat.begin()
    pid = PathInterner(cat, max_depth=1 << 30).intern(path)
    cat.commit()
    parents = _parent_ids(cat, path)
    root = cat.path_id(sort_key(b"/"))  # / is a path too, the parent of /d0
    assert len(parents) == depth and root is not None and parents[0] == root
    ids = [cat.path_id(sort_key(b"".join(b"/d%d" % i for i in range(n))))
           for n in range(1, depth + 1)]
    assert ids[-1] == pid
    assert parents[1:] == ids[:-1]


def test_path_interner_batch_gives_the_ids_one_by_one_interning_gives(tmp_path):
    """intern_batch (a first save's batches) numbers new paths as intern would, in input
    order, and finds the ones already there."""
    names = [b"/a", b"/a/x", b"/a/y", b"/b", b"/b/z", b"/a/x"]
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    one, many = _catalog(tmp_path / "one"), _catalog(tmp_path / "many")
    one.begin()
    interner = PathInterner(one)
    singles = [interner.intern(p) for p in names]
    one.commit()
    many.begin()
    interner = PathInterner(many)
    interner.intern(b"/a")  # already there: looked up, not inserted again
    batch = interner.intern_batch(names[1:])
    many.commit()
    assert [singles[0]] + batch == singles
