"""The tree `backshift mount` shows: inode numbers, attributes and directory entries, all
answered by catalog queries (the path index), never by a scan of a save.

Layout without --backup: ROOT/HOST/SUBSET/ID/... for each save and ROOT/HOST/SUBSET/latest,
a symlink to the newest complete save of the series. With --backup: that save's tree at
the root. Inode numbers are stable for the life of the mount: a path of a save is
(save id << 40 | path id), the host, series and `latest` nodes get small numbers as they
are first met, and the paths of a hardlink group (same dev, ino in a save) all take the
number the first of them got.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from .. import pathcodec
from ..catalog import Catalog

ROOT_INODE = 1  # FUSE's root
SAVE_SHIFT = 40  # a save's inodes: save id above, path id (below 2**40) beneath
PATH_MASK = (1 << SAVE_SHIFT) - 1
DIR_MODE = stat.S_IFDIR | 0o755  # directories the catalog does not describe
LATEST = b"latest"
KNOWN_MAX = 100_000  # attributes kept by inode (about 200 bytes each)
PAGE = 1000  # directory entries asked of the catalog at a time
CHUNK_LISTS_MAX = 200_000  # chunk refs kept by content id (about 150 bytes each)
LISTED_BYTES_MAX = 16 << 20  # a listed file larger than this gets its chunk list when
LISTED_CHUNKS_MAX = 64  # it is opened (as does one of more chunks than this)
LISTED_ENTRIES_MAX = 50_000  # directory entries of listings kept (about 300 bytes each)


class NotFound(Exception):
    """No such entry (ENOENT)."""


class Attr(NamedTuple):
    """What stat shows of a node."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    mtime_ns: int
    ctime_ns: int
    immutable: bool  # a path of a save: the kernel may cache it long
    content_id: int | None = None
    link_target: bytes | None = None
    key: bytes = b""  # the path's key (save nodes), for messages
    xattrs_id: int | None = None  # its extended attributes: a set in the catalog


class Tree:
    """Inode numbers and attributes of the mounted repository (one catalog connection,
    used from the FUSE loop's thread only)."""

    def __init__(self, catalog: Catalog, save_id: int | None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.catalog = catalog
        self.single = save_id  # --backup: this save's tree is the root
        self.warn = warn or (lambda msg: print(f"backshift: warning: {msg}", file=sys.stderr))
        self.started_ns = time.time_ns()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.root_path_id = catalog.path_id(b"")  # the path "/" (None: no save yet)
        self.synthetic: dict[int, tuple] = {ROOT_INODE: ("root",)}
        self.synthetic_ino: dict[tuple, int] = {("root",): ROOT_INODE}
        self.links: dict[tuple[int, int, int], int] = {}  # (save, dev, ino) -> inode
        self.warned: set[bytes] = set()
        self.known: dict[int, Attr] = {}  # recorded entries met lately: open and getattr
        # ask again for what lookup and readdir just answered (a save's rows never change)
        self.chunk_lists: dict[int, list[tuple[bytes, int, int]]] = {}  # by content id
        self.chunk_refs = 0  # the refs chunk_lists holds
        self.successor: dict[int, int] = {}  # a listed file's inode -> the next one's
        self.listed_with: dict[int, list[int]] = {}  # inode -> its page's content ids
        self.xattr_sets: dict[int, tuple[tuple[bytes, bytes], ...]] = {}
        # pages of directories of complete saves listed lately: (inode, after) -> what
        # children_page gave (the kernel's own cache of listings is not there: pyfuse3 3.5
        # cannot ask for it)
        self.listings: dict[tuple[int, int], tuple[list, int]] = {}
        self.listed_entries = 0
        self.complete: dict[int, bool] = {}  # save id -> complete (only True is kept)

    # -- inode numbers ------------------------------------------------------------------

    def _node(self, kind: tuple) -> int:
        ino = self.synthetic_ino.get(kind)
        if ino is None:
            ino = len(self.synthetic) + 1
            self.synthetic[ino] = kind
            self.synthetic_ino[kind] = ino
        return ino

    def _save_ino(self, save_id: int, path_id: int) -> int:
        if self.single is not None and path_id == self.root_path_id:
            return ROOT_INODE
        return save_id << SAVE_SHIFT | path_id

    def _save_node(self, ino: int) -> tuple[int, int] | None:
        """(save id, path id) of a save's inode, None for the other nodes."""
        if ino == ROOT_INODE and self.single is not None:
            if self.root_path_id is None:
                return None
            return self.single, self.root_path_id
        if ino >> SAVE_SHIFT:
            return ino >> SAVE_SHIFT, ino & PATH_MASK
        return None

    # -- the public questions -------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        attr = self.known.get(ino)
        if attr is not None:
            return attr
        node = self._save_node(ino)
        if node is not None:
            save_id, path_id = node
            row = self.catalog.mount_entry(save_id, path_id)
            if row is None:
                raise NotFound(ino)
            return self._attr(save_id, row, ino)
        kind = self.synthetic.get(ino)
        if kind is None:
            raise NotFound(ino)
        return self._synthetic_attr(ino, kind)

    def lookup(self, parent: int, name: bytes) -> Attr:
        node = self._save_node(parent)
        if node is not None:
            save_id, path_id = node
            row = self.catalog.mount_child(save_id, path_id, name)
            if row is None:
                raise NotFound(name)
            return self._attr(save_id, row)
        for child_name, attr in self._synthetic_children(parent, name):
            if child_name == name:
                return attr
        raise NotFound(name)

    def is_listed_by_pages(self, ino: int) -> bool:
        """Whether directory INO is a save's (listed a page at a time: children_page), not
        a host, series or the root (listed whole: children)."""
        return self._save_node(ino) is not None

    def children(self, ino: int) -> list[tuple[bytes, Attr]]:
        """The entries of a host, series or the root as (name, attributes), sorted by name."""
        return sorted(self._synthetic_children(ino, None))

    def children_page(self, ino: int, after: int) -> tuple[list[tuple[int, bytes, Attr]], int]:
        """At most PAGE entries of a save's directory INO past the offset AFTER, as
        (offset, name, attributes) in offset order (the path id: stable, so a listing may
        stop and go on, or seek back), and the offset the next page starts after (AFTER
        itself: no more entries)."""
        node = self._save_node(ino)
        if node is None:
            raise NotFound(ino)
        save_id, path_id = node
        listed = self.listings.get((ino, after))
        if listed is not None:  # listed already (ls, then cp -r; find, then tar)
            self._note_files(listed[0])
            return listed
        attr = self.getattr(ino)
        if not stat.S_ISDIR(attr.mode):
            return [], after
        rows = self.catalog.mount_children(save_id, path_id, after, PAGE)
        out = []
        for row in rows:
            name = row[2]
            if not _good_name(name) or row[1] != attr.key + b"\0" + name:
                self._warn_once(row[1], "catalog row refused: not a normal name beneath "
                                + pathcodec.escape(pathcodec.from_key(attr.key) or b"/"))
                continue
            out.append((row[0], name, self._attr(save_id, row)))
        self._note_files(out)
        end = rows[-1][0] if len(rows) == PAGE else after
        if self._complete(save_id):
            if self.listed_entries + len(out) > LISTED_ENTRIES_MAX:
                self.listings.clear()
                self.listed_entries = 0
            self.listings[(ino, after)] = out, end
            self.listed_entries += len(out) + 1
        return out, end

    def _complete(self, save_id: int) -> bool:
        """Whether the save is complete: its listings may be kept (a running save's grow)."""
        done = self.complete.get(save_id)
        if done is None:
            done = self.catalog.mount_save_complete(save_id)
            if done:  # a running one is asked again: it may be complete by now
                self.complete[save_id] = True
        return done

    def chunks_of(self, attr: Attr) -> list[tuple[bytes, int, int]]:
        """The (sha256, length, stored length) chunks of a regular file, in order."""
        if attr.content_id is None:
            return []
        chunks = self._listed(attr)
        if chunks is None:
            chunks = self.catalog.mount_chunks_of_content(attr.content_id)
        return chunks

    def listed_chunks(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        """The chunks of a file a listing met (None: not known without asking)."""
        attr = self.known.get(ino)
        if attr is None or attr.content_id is None:
            return None
        return self._listed(attr)

    def _listed(self, attr: Attr) -> list[tuple[bytes, int, int]] | None:
        chunks = self.chunk_lists.get(attr.content_id)
        if chunks is None:
            group = self.listed_with.pop(attr.ino, None)
            if group is not None:  # the first file of its page to be opened: all of them
                wanted = [c for c in group if c not in self.chunk_lists]
                for content_id, got in self.catalog.mount_chunks_of_contents(wanted).items():
                    if len(got) <= LISTED_CHUNKS_MAX:
                        self.chunk_lists[content_id] = got
                        self.chunk_refs += len(got) + 1
                chunks = self.chunk_lists.get(attr.content_id)
        return chunks

    def _note_files(self, entries: list[tuple[int, bytes, Attr]]) -> None:
        """Remember a page's regular files: when the first of them is opened, the chunk
        lists of all of them come in one query (none at each open; none when the listing
        is all that is wanted: ls, find), and the order they were listed in (a reader of a
        directory reads its files in that order: ops/fusefs fetches the next ones ahead)."""
        files = [a for _, _, a in entries if stat.S_ISREG(a.mode) and a.content_id is not None]
        if self.chunk_refs > CHUNK_LISTS_MAX or len(self.listed_with) > KNOWN_MAX:
            self.chunk_lists.clear()
            self.listed_with.clear()
            self.successor.clear()
            self.chunk_refs = 0
        group = sorted({a.content_id for a in files if a.size <= LISTED_BYTES_MAX})
        for a in files:
            if a.size <= LISTED_BYTES_MAX:
                self.listed_with[a.ino] = group
        for a, b in zip(files, files[1:], strict=False):
            self.successor[a.ino] = b.ino

    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]:
        """The extended attributes of a save's entry as (name, value), sorted by name."""
        attr = self.getattr(ino)
        if attr.xattrs_id is None:
            return ()
        got = self.xattr_sets.get(attr.xattrs_id)
        if got is None:
            got = self.catalog.xattrs_of_set(attr.xattrs_id)
            if len(self.xattr_sets) >= KNOWN_MAX:
                self.xattr_sets.clear()
            self.xattr_sets[attr.xattrs_id] = got
        return got

    def readlink(self, ino: int) -> bytes:
        attr = self.getattr(ino)
        if not stat.S_ISLNK(attr.mode) or not attr.link_target:
            raise NotFound(ino)
        return attr.link_target

    @staticmethod
    def path_of(key: bytes) -> str:
        """The saved path of a key, escaped for a message."""
        return pathcodec.escape(pathcodec.from_key(key) or b"/")

    # -- save nodes -------------------------------------------------------------------------

    def _attr(self, save_id: int, row: tuple, ino: int | None = None) -> Attr:
        (path_id, key, _name, mode, uid, gid, size, mtime_ns, ctime_ns, dev, inode, nlink,
         rdev, link_target, content_id, xattrs_id) = row
        if mode is None:  # a directory the save passes through: not recorded itself
            when = self._save_started(save_id)
            return Attr(ino or self._save_ino(save_id, path_id), DIR_MODE, 2, 0, 0, 0, 0,
                        when, when, True, key=key)
        if ino is None:
            ino = self._save_ino(save_id, path_id)
            if stat.S_ISREG(mode) and nlink > 1:  # one inode per hardlink group
                ino = self.links.setdefault((save_id, dev, inode), ino)
        if stat.S_ISLNK(mode):
            size = len(link_target or b"")  # what readlink gives, whatever the row says
        attr = Attr(ino, mode, nlink, uid, gid, rdev, max(size, 0), mtime_ns, ctime_ns, True,
                    content_id, link_target, key, xattrs_id)
        if len(self.known) >= KNOWN_MAX:
            self.known.clear()
        self.known[ino] = attr
        return attr

    def _save_started(self, save_id: int) -> int:
        row = self.catalog.mount_save_series(save_id)
        return row[2] if row else self.started_ns

    def _save_root(self, save_id: int, name: bytes) -> tuple[bytes, Attr]:
        if self.root_path_id is None:
            self.root_path_id = self.catalog.path_id(b"")
        if self.root_path_id is not None:
            row = self.catalog.mount_entry(save_id, self.root_path_id)
            if row is not None:
                return name, self._attr(save_id, row)
        when = self._save_started(save_id)
        ino = save_id << SAVE_SHIFT | (self.root_path_id or 0)
        return name, Attr(ino, DIR_MODE, 2, 0, 0, 0, 0, when, when, True)

    # -- hosts, series, latest ----------------------------------------------------------

    def _synthetic_attr(self, ino: int, kind: tuple) -> Attr:
        if kind[0] == "latest":
            target = self._latest_target(kind[1], kind[2])
            if target is None:
                raise NotFound(ino)
            return Attr(ino, stat.S_IFLNK | 0o777, 1, self.uid, self.gid, 0, len(target),
                        self.started_ns, self.started_ns, False, link_target=target)
        return Attr(ino, DIR_MODE, 2, self.uid, self.gid, 0, 0, self.started_ns,
                    self.started_ns, False)

    def _latest_target(self, host: str, subset: str) -> bytes | None:
        newest = self.catalog.mount_newest_complete(host, subset)
        return None if newest is None else b"%d" % newest

    def _synthetic_children(self, ino: int, name: bytes | None) -> list[tuple[bytes, Attr]]:
        """The entries of a host, series or the root (NAME: only that one is wanted)."""
        kind = self.synthetic.get(ino)
        if kind is None or self.single is not None and kind[0] == "root":
            if self.single is not None and kind == ("root",) and self.root_path_id is None:
                return []  # --backup of a repository whose catalog holds no path yet
            raise NotFound(ino)
        out = []
        if kind[0] == "root":
            for host in self.catalog.mount_hosts():
                raw = os.fsencode(host)
                if _good_name(raw) and name in (None, raw):
                    out.append((raw, self._synthetic_attr(self._node(("host", host)),
                                                          ("host", host))))
        elif kind[0] == "host":
            for subset in self.catalog.mount_subsets(kind[1]):
                raw = os.fsencode(subset)
                node = ("series", kind[1], subset)
                if _good_name(raw) and name in (None, raw):
                    out.append((raw, self._synthetic_attr(self._node(node), node)))
        elif kind[0] == "series":
            _, host, subset = kind
            if name in (None, LATEST):
                node = ("latest", host, subset)
                target = self._latest_target(host, subset)
                if target is not None:
                    out.append((LATEST, self._synthetic_attr(self._node(node), node)))
            for save_id, _started in self.catalog.mount_saves_of_series(host, subset):
                if name in (None, b"%d" % save_id):
                    out.append(self._save_root(save_id, b"%d" % save_id))
        return out

    def _warn_once(self, key: bytes, msg: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warn(msg)


def _good_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and b"\0" not in name and name not in (b".", b"..")
