"""Path ids for a save or an import: a path's row in the catalog, created on first sight.

PathInterner caches the ids of recent directories (their children ask next) and makes a
missing path and its missing ancestors in a loop, never recursion (paths may be deep).
"""

from __future__ import annotations

from collections.abc import Callable

from ..catalog import Catalog
from ..pathcodec import basename, parent, sort_key

DIR_IDS_MAX = 100_000  # cached ids; the cache is emptied when it grows past this


class PathInterner:
    """Interns paths into CAT's path table; HINT(parent id, path) may know a path's id
    without a query (a re-save: the earlier save's listing of its directory)."""

    def __init__(self, cat: Catalog,
                 hint: Callable[[int, bytes], int | None] | None = None,
                 max_depth: int = 64) -> None:
        self.cat = cat
        self.hint = hint
        self.max_depth = max_depth  # deeper paths are not cached (a deep tree's every level)
        self.dir_ids: dict[bytes, int] = {}

    def remember(self, path: bytes, path_id: int) -> None:
        """Cache a path's id for its children (and intern) to find."""
        if len(self.dir_ids) > DIR_IDS_MAX:
            self.dir_ids.clear()
        if path.count(b"/") < self.max_depth:
            self.dir_ids[path] = path_id

    def known(self, path: bytes) -> int | None:
        """PATH's id if cached, else looked up (and cached); None when the catalog lacks it."""
        pid = self.dir_ids.get(path)
        if pid is None:
            pid = self.cat.path_id(sort_key(path))
            if pid is not None:
                self.remember(path, pid)
        return pid

    def intern(self, path: bytes) -> int:
        """The path's id, creating it (and its missing parents) on first sight."""
        cached = self.dir_ids.get(path)
        if cached is not None:
            return cached
        up = parent(path)
        parent_id = self.dir_ids.get(up) if up is not None else None
        if parent_id is not None:  # the usual case: its directory was just interned
            pid = self.hint(parent_id, path) if self.hint is not None else None
            if pid is None:
                key = sort_key(path)
                pid = self.cat.insert_path_if_new(parent_id, key, basename(path))
                if pid is None:
                    pid = self.cat.path_id(key)
        else:
            pid = self._intern_with_parents(path)
        self.remember(path, pid)
        return pid

    def _intern_with_parents(self, path: bytes) -> int:
        """PATH's id, creating it and its missing ancestors (the slow path of intern)."""
        missing: list[bytes] = []  # this path and its ancestors not yet in the catalog
        parent_id: int | None = None
        cur: bytes | None = path
        while cur is not None:  # a loop, not recursion: paths may be thousands deep
            known = self.dir_ids.get(cur)
            if known is None:
                known = self.cat.path_id(sort_key(cur))
            if known is not None:
                parent_id = known
                break
            missing.append(cur)
            cur = parent(cur)
        pid = parent_id
        for p in reversed(missing):
            pid = self.cat.insert_path(parent_id, sort_key(p), basename(p))
            parent_id = pid
        return pid

    def intern_batch(self, paths: list[bytes]) -> list[int]:
        """The ids of PATHS (intern for many at once): known paths are looked up in one
        statement, new ones inserted in one with ids given in order. A directory neither
        cached nor in the batch (the first name, or an input order that is not a walk's) is
        interned first on its own."""
        if not paths:
            return []
        in_batch = set(paths)
        outside: dict[bytes, int] = {}  # ids of the directories not in the batch
        for path in in_batch:
            up = parent(path)
            if up is not None and up not in in_batch and up not in outside:
                outside[up] = self.intern(up)  # usually cached: its directory
        keys = {p: sort_key(p) for p in in_batch}
        found = self.cat.path_ids(list(keys.values()))
        ids = {p: found.get(k) for p, k in keys.items()}
        next_id = self.cat.next_path_id()  # after intern's inserts above
        new = []
        for path in paths:  # in input order: ids as the one-by-one inserts gave them
            if ids[path] is None:
                ids[path] = next_id
                new.append(path)
                next_id += 1
        rows = []
        for path in new:
            up = parent(path)
            parent_id = None if up is None else ids.get(up) or outside[up]
            rows.append((ids[path], parent_id, keys[path], basename(path)))
        self.cat.insert_paths(rows)
        for path, pid in ids.items():
            self.remember(path, pid)
        return [ids[path] for path in paths]
