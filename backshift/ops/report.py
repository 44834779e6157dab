"""Ready-made reports over the catalog: space statistics, save diffs, path history, find."""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import NoSuchSave, UsageError
from ..pathcodec import BadPath, from_key, normalize, sort_key, subtree_range
from ..repo import Repository

ALL_KEYS = (b"", b"\x01")  # every key: the root is b"", all others start with NUL


# -- stats --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceStats:
    """One line of `stats`: the repository (save_id None) or one save."""

    save_id: int | None
    label: str
    files: int
    logical_bytes: int
    chunks: int
    chunk_bytes: int  # distinct chunks, uncompressed
    stored_bytes: int  # distinct chunks as stored (compressed, with headers)
    new_bytes: int  # chunk bytes the save wrote

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.chunk_bytes if self.chunk_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.chunk_bytes / self.stored_bytes if self.stored_bytes else None


def stats(repo: Repository, save_id: int | None = None) -> list[SpaceStats]:
    """The repository line, then one line per save (only SAVE_ID's when given)."""
    cat = repo.catalog
    files, logical, chunks, length, stored, new = cat.repository_totals()
    out = [SpaceStats(None, "repository", files, logical, chunks, length, stored, new)]
    if save_id is not None:
        saves = [_get_save(repo, save_id)]
    else:
        saves = cat.list_saves()
    for save in saves:
        files, logical, chunks, length, stored = cat.save_totals(save.id)
        out.append(SpaceStats(save.id, f"{save.hostname}/{save.subset}", files, logical,
                              chunks, length, stored, save.new_bytes_stored))
    return out


# -- diff ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | content | metadata
    path: bytes
    fields: tuple[str, ...]  # for metadata: which fields differ


CHANGE_MARKS = {"added": "+", "removed": "-", "content": "C", "metadata": "M"}
_META_FIELDS = ("mode", "uid", "gid", "user", "group", "size", "mtime")


def diff(repo: Repository, old_id: int, new_id: int,
         path: bytes | None = None) -> Iterator[Change]:
    """Differences from save OLD_ID to NEW_ID in path order, below PATH when given."""
    _get_save(repo, old_id)
    _get_save(repo, new_id)
    lo, hi = ALL_KEYS
    if path is not None:
        key = sort_key(_normal(path))
        lo, hi = key, subtree_range(key)[1]  # the path itself and everything below it
    width = 11  # version columns per side (catalog.DIFF_VERSION_COLUMNS)
    for row in repo.catalog.diff_saves(old_id, new_id, lo, hi):
        key, old, new = row[0], row[1:1 + width], row[1 + width:]
        yield _classify(from_key(key), old, new)


def _classify(path: bytes, old: tuple, new: tuple) -> Change:
    if old[0] is None:
        return Change("added", path, ())
    if new[0] is None:
        return Change("removed", path, ())
    if stat.S_IFMT(old[1]) != stat.S_IFMT(new[1]) or old[9] != new[9] or old[8] != new[8]:
        return Change("content", path, ())
    # id, mode, uid, gid, user, grp, size, mtime_ns: which of these differ
    fields = tuple(name for name, a, b in zip(_META_FIELDS, old[1:8], new[1:8], strict=True)
                   if a != b)
    if old[10] != new[10]:  # attribute sets are stored once: another id, other attributes
        fields += ("xattrs",)
    return Change("metadata", path, fields or ("ctime/inode",))


# -- history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    save_id: int
    hostname: str
    subset: str
    started_ns: int
    type: str
    size: int
    mtime_ns: int
    digest: str | None
    changed: bool  # content differs from the previous save listed (first: True)


def history(repo: Repository, path: bytes, hostname: str | None = None,
            subset: str | None = None) -> list[HistoryEntry]:
    """Every save holding PATH, oldest first, with whether its content changed.

    PATH as list and tar take it (leading '/' optional, so a name pasted from `list`
    works); a relative PATH no save holds that way is also tried below the current
    directory."""
    from .select import normal_path

    path_id = repo.catalog.path_id(sort_key(normal_path(path)))
    if path_id is None and not path.startswith(b"/"):
        path_id = repo.catalog.path_id(sort_key(_normal(path)))
    if path_id is None:
        return []
    out: list[HistoryEntry] = []
    previous: object = object()
    for sid, host, sub, started, mode, size, mtime, digest, content_id, target in \
            repo.catalog.path_history(path_id, hostname, subset):
        state = (stat.S_IFMT(mode), content_id, target)
        out.append(HistoryEntry(sid, host, sub, started, type_name(mode), size, mtime, digest,
                                state != previous))
        previous = state
    return out


# -- find ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    save_id: int
    hostname: str
    subset: str
    started_ns: int
    path: bytes
    type: str
    size: int
    mtime_ns: int


def find(repo: Repository, glob: bytes, save_id: int | None = None,
         since_ns: int | None = None) -> Iterator[Found]:
    """Paths matching GLOB in every save (or SAVE_ID's, or saves started since SINCE_NS),
    newest save first. A GLOB with '/' matches the whole path, otherwise the name."""
    if save_id is not None:
        _get_save(repo, save_id)
    if not glob:
        raise UsageError("find needs a non-empty GLOB")
    lo, hi = ALL_KEYS
    name_glob = path_glob = None
    if b"/" in glob:
        # a member name pasted from `list` has no leading '/': as tar, take it as absolute
        path_glob = glob if glob.startswith((b"/", b"*")) else b"/" + glob
        lo, hi = _glob_key_range(path_glob)
    else:
        name_glob = glob
    for row in repo.catalog.find_paths(lo, hi, name_glob, path_glob, save_id, since_ns):
        sid, host, sub, started, key, mode, size, mtime = row
        yield Found(sid, host, sub, started, from_key(key), type_name(mode), size, mtime)


def _glob_key_range(glob: bytes) -> tuple[bytes, bytes]:
    """The key range of the directory before GLOB's first wildcard ('/home/u/*.txt' ->
    everything below /home/u), so a whole-path glob reads only that part of the index."""
    cut = min((i for i in (glob.find(c) for c in (b"*", b"?", b"[")) if i >= 0),
              default=len(glob))
    literal = glob[:cut]
    head = literal[:literal.rfind(b"/") + 1].rstrip(b"/")
    if not head.startswith(b"/") or head in (b"", b"/"):
        return ALL_KEYS
    key = sort_key(head)
    if cut == len(glob):  # no wildcard: the path itself and below
        return key, subtree_range(key)[1]
    return subtree_range(key)


def parse_since(text: str) -> int:
    """'2026-01-31' or '2026-01-31 12:00[:00]' (local time) -> ns since the epoch."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since wants a date like 2026-01-31 or '2026-01-31 12:00', "
                         f"got {text!r}") from None
    try:
        seconds = int(when.timestamp())
    except (ValueError, OverflowError, OSError):  # before 1970 by centuries, or past 9999
        seconds = -(2**62) if when.year < 1970 else 2**62
    return max(min(seconds * 1_000_000_000, 2**63 - 1), -(2**63))


# -- shared -------------------------------------------------------------------------------


_TYPE_NAMES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket",
}


def type_name(mode: int) -> str:
    """The `files` view's type words."""
    return _TYPE_NAMES.get(stat.S_IFMT(mode), "unknown")


def _get_save(repo: Repository, save_id: int):
    save = repo.catalog.get_save(save_id)
    if save is None:
        raise NoSuchSave(save_id)
    return save


def _normal(path: bytes) -> bytes:
    try:
        return normalize(path, os.getcwdb())
    except BadPath as e:
        raise UsageError(f"bad path {path!r}: {e}") from None
