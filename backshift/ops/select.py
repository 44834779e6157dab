"""Which members of a save a listing or tar stream holds, in what order, under what names.

Selectors become key ranges of the path index (a path selects itself and its subtree; a glob
is narrowed to the range of its literal directory prefix), traversed depth-first by one
streaming query each. The planner then re-validates every row, because the catalog is
untrusted input: names must be relative and normal, nothing may sit beneath an emitted
non-directory, parents of a selected member are emitted before it, and the first emitted
member of a hardlink group carries the data while later ones link to it. `list` and `tar`
share this plan, so a listing always equals `tar -tv` of the stream. A --where predicate
runs in where.py; the save's members digest is checked in digestcheck.py.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

from .. import pathcodec
from ..catalog import Catalog
from ..errors import NoSuchPath, UsageError
from . import tarstream as ts
from .digestcheck import DigestCheck
from .where import WherePredicate

GLOB_CHARS = b"*?["
WHOLE_SAVE = (b"", b"\x01")  # every key: root is b"", all others start with NUL
FILE_TYPE_BITS = 0o170000  # the mask stat.S_IFMT() applies


class Entry(NamedTuple):
    """One member row of a save, as the catalog holds it (ENTRY_COLUMNS).

    A named tuple rather than a frozen dataclass: one is built per row of every listing
    and tar stream, and a tuple is made from the row in one step.
    """

    path_id: int
    key: bytes
    mode: int
    uid: int
    gid: int
    user: bytes
    group: bytes
    size: int
    mtime_ns: int
    dev: int
    ino: int
    nlink: int
    rdev: int
    link_target: bytes | None
    content_id: int | None
    digest: bytes | None
    xattrs_id: int | None  # its extended attribute set, None: none
    content_size: int | None
    record: bytes | None  # catalog.DIGEST_RECORD, when the save's digest is computed

    @property
    def path(self) -> bytes:
        return pathcodec.from_key(self.key)


class Planned(NamedTuple):
    """A member as it goes into the stream: its validated name and tar header."""

    entry: Entry
    header: ts.Header


@dataclass(frozen=True)
class Selection:
    """What to take from a save. Empty paths and globs select everything."""

    paths: tuple[bytes, ...] = ()  # absolute normal paths: each with its subtree
    globs: tuple[bytes, ...] = ()  # fnmatch patterns over whole member names
    excludes: tuple[bytes, ...] = ()  # with '/': whole member name; else the last component
    where: str | None = None  # SQL predicate over the `files` view
    recursive: bool = True  # False: only the entries of paths[0] (list --no-recursive)


def parse_selectors(args: tuple[bytes, ...] | list[bytes]) -> tuple[tuple, tuple]:
    """Split command-line selectors into (paths, globs); paths get their leading '/'."""
    paths, globs = [], []
    for arg in args:
        if any(c in arg for c in GLOB_CHARS):
            globs.append(arg.lstrip(b"/"))
        else:
            paths.append(normal_path(arg))
    return tuple(paths), tuple(globs)


def normal_path(arg: bytes) -> bytes:
    """A user-given path, with or without its leading '/', as an absolute normal path."""
    try:
        return pathcodec.normalize(arg if arg.startswith(b"/") else b"/" + arg, b"/")
    except pathcodec.BadPath as e:
        raise UsageError(f"bad path {pathcodec.escape(arg)}: {e}") from None


def _glob_range(catalog: Catalog, pattern: bytes) -> tuple[bytes, bytes]:
    """The key range a glob can match in: the subtree of its literal directory prefix."""
    cut = min([pattern.find(bytes([c])) for c in GLOB_CHARS if bytes([c]) in pattern])
    head = pattern[:cut]
    if b"/" not in head:
        return WHOLE_SAVE
    key = pathcodec.sort_key(b"/" + head.rsplit(b"/", 1)[0])
    return pathcodec.subtree_range(key)


def key_ranges(catalog: Catalog, sel: Selection) -> list[tuple[bytes, bytes]]:
    """Disjoint, sorted key ranges that hold every member the selection can pick."""
    if not sel.paths and not sel.globs:
        return [WHOLE_SAVE]
    ranges = [(pathcodec.sort_key(p), pathcodec.sort_key(p) + b"\x01") for p in sel.paths]
    ranges += [_glob_range(catalog, g) for g in sel.globs]
    ranges.sort()
    merged: list[tuple[bytes, bytes]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def literal_globs(catalog: Catalog, save_id: int, sel: Selection) -> Selection:
    """SEL with each glob that names a member literally (`report[1].txt`) made a path."""
    keep, literal = [], []
    for g in sel.globs:
        path = normal_path(g)
        if catalog.entry_at_key(save_id, pathcodec.sort_key(path)) is not None:
            literal.append(path)
        else:
            keep.append(g)
    if not literal:
        return sel
    return replace(sel, paths=sel.paths + tuple(literal), globs=tuple(keep))


def check_paths_exist(catalog: Catalog, save_id: int, paths: tuple[bytes, ...]) -> None:
    """NoSuchPath for the first selector path that is not a member of the save."""
    for p in paths:
        if catalog.entry_at_key(save_id, pathcodec.sort_key(p)) is None:
            raise NoSuchPath(pathcodec.escape(p), save_id)


def digest_check(catalog: Catalog, save_id: int, sel: Selection) -> DigestCheck | None:
    """A DigestCheck when the planner reads every member row of the save for SEL (excludes
    and --where drop members only after their rows are read) and the save has a digest."""
    if not sel.recursive or sel.paths or sel.globs:
        return None
    check = DigestCheck(catalog, save_id)
    return check if check.expected is not None else None


# Ancestor states on the planner's stack.
ABSENT, PENDING, DIR, NONDIR, REFUSED = "absent", "pending", "dir", "nondir", "refused"


@dataclass
class Problems:
    """What went wrong while planning or streaming; each is also reported as it happens."""

    report: Callable[[str, str], None]  # (level 'warning'|'error', message)
    warnings: int = 0
    refused: int = 0
    damaged: int = 0
    unmatched: tuple[bytes, ...] = ()  # glob selectors that matched no member

    def warn(self, msg: str) -> None:
        self.warnings += 1
        self.report("warning", msg)

    def refuse(self, key: bytes, why: str) -> None:
        self.refused += 1
        self.report("error", f"{pathcodec.escape(pathcodec.from_key(key))}: {why}; not emitted")

    def damage(self, path: bytes, msg: str) -> None:
        self.damaged += 1
        self.report("error", f"{pathcodec.escape(path)}: {msg}")


def member_name_of_key(key: bytes) -> bytes | None:
    """The tar name of a catalog key, or None when the key is not a normal absolute path."""
    return None if key_problem(key) else (key[1:].replace(b"\0", b"/") or b".")


def key_problem(key: bytes) -> str | None:
    """Why a catalog key is not a normal absolute path, or None when it is one."""
    if key == b"":
        return None
    # fast path (every member of every listing goes through here): substring tests in C
    padded = key + b"\0"
    if (key[:1] == b"\0" and b"/" not in key and b"\0\0" not in padded
            and b"\0.\0" not in padded and b"\0..\0" not in padded):
        return None
    parts = key.split(b"\0")
    if parts[0] != b"":
        return "not an absolute path"
    for part in parts[1:]:
        if part in (b"", b".", b".."):
            return "an empty, '.' or '..' component"
        if b"/" in part:
            return f"a '/' inside the component {pathcodec.escape(part)!r}"
    return None


class Planner:
    """Turns the rows of a selection into validated members, depth-first."""

    def __init__(self, catalog: Catalog, save_id: int, sel: Selection,
                 problems: Problems, digest: DigestCheck | None = None) -> None:
        self.catalog = catalog
        self.save_id = save_id
        self.sel = sel
        self.problems = problems
        self.digest = digest  # fed every row read: give one only when they are all read
        # The chain of ancestors from root: [key + NUL, state, entry, clean], where clean
        # means this item and every one above it is DIR or ABSENT (nothing to emit first,
        # nothing refuses what lies beneath): the common case, checked in one step.
        self.stack: list[list] = []
        self.links: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first emitted name
        self.where = WherePredicate(catalog, sel.where) if sel.where else None
        self.path_ranges = [(pathcodec.sort_key(p), pathcodec.sort_key(p) + b"\x01")
                            for p in sel.paths]
        self.glob_root: bytes | None = None  # a directory a glob matched: its subtree is in
        self.globs_pending = list(sel.globs)  # globs no member matched yet

    def unmatched_globs(self) -> tuple[bytes, ...]:
        """The glob selectors no member matched (call after members() is exhausted)."""
        return tuple(self.globs_pending)

    def close(self) -> None:
        if self.where is not None:
            self.where.close()

    def members(self) -> Iterator[Planned]:
        skip_below: bytes | None = None
        stack = self.stack
        excludes = self.sel.excludes
        recursive = self.sel.recursive
        filtering = (recursive and bool(self.sel.paths or self.sel.globs)) \
            or self.where is not None
        make_entry = Entry._make
        for row in self._rows():
            e = make_entry(row)
            key = e.key
            if skip_below is not None:
                if key.startswith(skip_below):
                    continue
                skip_below = None
            name = member_name_of_key(key)
            if excludes and name is not None and self._excluded(name):
                skip_below = key + b"\0"
                continue
            clean = self._chain(key)
            if filtering and not self._selected(e, name):
                stack.append([key + b"\0", PENDING, e, False])
                continue
            if not clean:
                if recursive:
                    yield from self._emit_parents(key)
                if self._beneath_nondir(key):
                    stack.append([key + b"\0", REFUSED, e, False])
                    continue
                clean = self._clean_top()
            planned = self._plan(e, name)
            if planned is not None:
                yield planned
            if e.mode & FILE_TYPE_BITS != stat.S_IFDIR:
                stack.append([key + b"\0", NONDIR, e, False])  # even when refused: nothing
            elif planned is None:                             # may go beneath it
                stack.append([key + b"\0", REFUSED, e, False])
            else:
                stack.append([key + b"\0", DIR, e, clean])

    def _rows(self) -> Iterator[tuple]:
        """Candidate rows in key order: the selection's ranges, or one directory's entries."""
        if self.sel.recursive:
            for lo, hi in key_ranges(self.catalog, self.sel):
                if self.digest is None:
                    yield from self.catalog.entries_in_key_range(self.save_id, lo, hi)
                    continue
                add = self.digest.computed.row
                for row in self.catalog.entries_in_key_range(self.save_id, lo, hi, True):
                    add(row[-1])
                    yield row
            return
        # The entries of one directory: seek from child to child over the path index,
        # stepping over each child's subtree, so a huge subtree below costs nothing.
        lo, hi = pathcodec.subtree_range(pathcodec.sort_key(self.sel.paths[0]))
        while (key := self.catalog.first_path_in_key_range(lo, hi)) is not None:
            row = self.catalog.entry_at_key(self.save_id, key)
            if row is not None:
                yield row
            lo = key + b"\x01"

    # -- selection --

    def _excluded(self, name: bytes) -> bool:
        for pat in self.sel.excludes:
            target = name if b"/" in pat else name.rsplit(b"/", 1)[-1]
            if fnmatch.fnmatchcase(target, pat.lstrip(b"/")):
                return True
        return False

    def _selected(self, e: Entry, name: bytes | None) -> bool:
        if self.sel.recursive and (self.sel.paths or self.sel.globs):
            if not self._picked(e, name):
                return False
        if self.where is not None:
            return self.where.matches(self.save_id, e.path_id)
        return True

    def _picked(self, e: Entry, name: bytes | None) -> bool:
        if self.globs_pending and name is not None:  # also where a path or glob took it
            self.globs_pending = [p for p in self.globs_pending
                                  if not fnmatch.fnmatchcase(name, p)]
        if any(lo <= e.key < hi for lo, hi in self.path_ranges):
            return True
        if self.glob_root is not None and e.key.startswith(self.glob_root):
            return True
        self.glob_root = None
        if name is None:
            return bool(self.sel.globs)  # let validation refuse it loudly
        for pat in self.sel.globs:
            if fnmatch.fnmatchcase(name, pat):
                if stat.S_ISDIR(e.mode):
                    self.glob_root = e.key + b"\0"
                return True
        return False

    # -- ancestors --

    def _chain(self, key: bytes) -> bool:
        """Make the stack the chain of KEY's ancestors, root first, looking up missing ones;
        True when that chain is clean (all DIR or ABSENT)."""
        stack = self.stack
        while stack and not key.startswith(stack[-1][0]):
            stack.pop()
        if key == b"":
            return True
        if len(stack) < key.count(b"\0"):  # ancestors not seen yet: look them up
            cuts = []
            pos = key.find(b"\0")
            while pos >= 0:  # the separators: key[:pos] is an ancestor (key[:0] the root)
                cuts.append(pos)
                pos = key.find(b"\0", pos + 1)
            for i in cuts[len(stack):]:
                anc = key[:i]
                row = self.catalog.entry_at_key(self.save_id, anc)
                if row:
                    stack.append([anc + b"\0", PENDING, Entry._make(row), False])
                else:
                    stack.append([anc + b"\0", ABSENT, None, not stack or stack[-1][3]])
        return not stack or stack[-1][3]

    def _clean_top(self) -> bool:
        """Recompute the clean flags (after parents were emitted); the top's."""
        clean = True
        for item in self.stack:
            clean = item[3] = clean and item[1] in (DIR, ABSENT)
        return clean

    def _emit_parents(self, key: bytes) -> Iterator[Planned]:
        for item in self.stack:
            if item[1] == PENDING and stat.S_ISDIR(item[2].mode):
                planned = self._plan(item[2], member_name_of_key(item[2].key))
                item[1] = DIR if planned else REFUSED
                if planned is not None:
                    yield planned

    def _beneath_nondir(self, key: bytes) -> bool:
        for anc, state, e, _clean in self.stack:
            if state == NONDIR or (state == PENDING and not stat.S_ISDIR(e.mode)):
                self.problems.refuse(key, "beneath " + pathcodec.escape(
                    pathcodec.from_key(anc[:-1])) + ", which is not a directory")
                return True
        return False

    # -- one member --

    def _plan(self, e: Entry, name: bytes | None) -> Planned | None:
        """The member of row E whose tar name is NAME (member_name_of_key), or None."""
        if name is None:
            self.problems.refuse(e.key, "not a normal path: " + (key_problem(e.key) or "?"))
            return None
        kind = e.mode & FILE_TYPE_BITS
        size, link, major, minor = 0, b"", 0, 0
        if kind == stat.S_IFREG:
            typeflag, size = ts.REGTYPE, e.size
            if size < 0:
                self.problems.refuse(e.key, f"negative size {e.size}")
                return None
            if e.nlink > 1:
                first = self.links.get((e.dev, e.ino))
                if first is None:
                    self.links[(e.dev, e.ino)] = name
                else:
                    typeflag, size, link = ts.LNKTYPE, 0, first
        elif kind == stat.S_IFDIR:
            typeflag = ts.DIRTYPE
            name = b"./" if name == b"." else name + b"/"
        elif kind == stat.S_IFLNK:
            typeflag, link = ts.SYMTYPE, e.link_target or b""
            if not link or b"\0" in link:
                self.problems.refuse(e.key, "symlink with an empty or NUL-holding target")
                return None
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            typeflag = ts.CHRTYPE if kind == stat.S_IFCHR else ts.BLKTYPE
            major, minor = os.major(e.rdev), os.minor(e.rdev)
        elif kind == stat.S_IFIFO:
            typeflag = ts.FIFOTYPE
        elif kind == stat.S_IFSOCK:
            self.problems.warn(f"{pathcodec.escape(e.path)}: socket skipped (tar cannot hold it)")
            return None
        else:
            self.problems.refuse(e.key, f"unknown file type (mode {e.mode:o})")
            return None
        header = ts.Header(name, typeflag, e.mode & 0o7777, e.uid, e.gid, e.user or b"",
                           e.group or b"", size, e.mtime_ns, link, major, minor)
        return Planned(e, header)
