"""Filesystem input: NUL-separated name lists (find -print0) and walking PATH arguments."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from . import longpath
from .pathcodec import BadPath, normalize

Warn = Callable[[str], None]


def read_nul_names(stream: BinaryIO, block: int = 1 << 16) -> Iterator[bytes]:
    """Raw names from a NUL-separated stream, read incrementally (memory stays flat).

    Empty records are skipped; a last name without its final NUL still counts.
    """
    tail = b""
    # read1 returns what the pipe has now: names are saved as find produces them, instead
    # of waiting for a full block (and nothing is left unsaved in a buffer on Ctrl-C).
    read = getattr(stream, "read1", stream.read)
    while True:
        data = read(block)
        if not data:
            break
        parts = (tail + data).split(b"\x00")
        tail = parts.pop()
        for p in parts:
            if p:
                yield p
    if tail:
        yield tail


def normalized(names: Iterable[bytes], cwd: bytes, warn: Warn) -> Iterator[bytes]:
    """Absolute normal paths for raw input names; bad names are warned about and skipped."""
    for raw in names:
        try:
            yield normalize(raw, cwd)
        except BadPath as e:
            warn(f"{os.fsdecode(raw)!r}: skipped: {e}")


CACHEDIR_TAG = b"CACHEDIR.TAG"
# The Cache Directory Tagging Specification (https://bford.info/cachedir/): a file of this
# name that begins with these bytes marks its directory as a cache.
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def tags_in(directory: bytes, tags: list[bytes]) -> list[bytes]:
    """The paths of the exclusion tags (file names; CACHEDIR_TAG only with its signature)
    that DIRECTORY holds, sorted as the walk sorts names: a tagged directory is saved with
    its tag files and nothing else, as GNU tar's --exclude-tag and --exclude-caches do."""
    found = []
    long = longpath.is_long(directory)
    for tag in tags:
        path = directory.rstrip(b"/") + b"/" + tag
        try:
            if tag == CACHEDIR_TAG:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = longpath.open_file(path, flags) if long else os.open(path, flags)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode) or \
                            os.read(fd, len(CACHEDIR_SIGNATURE)) != CACHEDIR_SIGNATURE:
                        continue
                finally:
                    os.close(fd)
            else:
                longpath.lstat(path) if long else os.lstat(path)
        except OSError:
            continue
        found.append(path)
    return sorted(found)


def excluded(path: bytes, patterns: list[bytes]) -> bool:
    """True when a glob matches the whole path (pattern with '/') or its last component."""
    name = path.rsplit(b"/", 1)[-1]
    for pat in patterns:
        target = path if b"/" in pat else name
        if fnmatch.fnmatchcase(target, pat):
            return True
    return False


class Walk:
    """The names of a walk (see walk()), as an iterable that only makes local filesystem
    calls: a consumer may run it in its own thread, since it never waits for another process
    the way a pipe from `find` does."""

    def __init__(self, roots: Iterable[bytes], cwd: bytes, warn: Warn,
                 one_file_system: bool = False, excludes: list[bytes] | None = None,
                 tags: list[bytes] | None = None) -> None:
        self.args = (list(roots), cwd, warn, one_file_system, excludes or [], tags or [])

    def __iter__(self) -> Iterator[bytes]:
        return _walk(*self.args)


def walk(roots: Iterable[bytes], cwd: bytes, warn: Warn, one_file_system: bool = False,
         excludes: list[bytes] | None = None, tags: list[bytes] | None = None) -> Walk:
    """Each root and everything below it, depth-first, directories before their contents,
    entries sorted by name bytes. Symlinks are never followed. Iterative: no depth limit.
    A directory holding one of TAGS (tags_in) yields only those tag files.
    """
    return Walk(roots, cwd, warn, one_file_system, excludes, tags)


def _walk(roots: Iterable[bytes], cwd: bytes, warn: Warn, one_file_system: bool,
          excludes: list[bytes], tags: list[bytes]) -> Iterator[bytes]:
    for raw in roots:
        try:
            root = normalize(raw, cwd)
        except BadPath as e:
            warn(f"{os.fsdecode(raw)!r}: skipped: {e}")
            continue
        if excluded(root, excludes):
            continue
        try:
            st = _lstat(root)
        except OSError as e:
            warn(f"{os.fsdecode(root)}: skipped: {e.strerror}")
            continue
        yield root
        if not stat.S_ISDIR(st.st_mode):
            continue
        tagged = tags_in(root, tags) if tags else None
        if tagged:
            yield from tagged
            continue
        stack = [(root, _sorted_children(root, warn))]
        while stack:
            parent, children = stack[-1]
            prefix = parent + b"/" if parent != b"/" else parent
            for name, is_dir in children:
                path = prefix + name
                if excludes and excluded(path, excludes):
                    continue
                yield path
                if is_dir:
                    if one_file_system:
                        try:
                            if _lstat(path).st_dev != st.st_dev:
                                continue
                        except OSError:
                            continue
                    tagged = tags_in(path, tags) if tags else None
                    if tagged:
                        yield from tagged
                        continue
                    stack.append((path, _sorted_children(path, warn)))
                    break  # its contents first; this directory's iterator resumes after
            else:
                stack.pop()


def _lstat(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        if not longpath.too_long(e):
            raise
    return longpath.lstat(path)


def _sorted_children(path: bytes, warn: Warn) -> Iterator[tuple[bytes, bool]]:
    try:
        if longpath.is_long(path):  # beyond PATH_MAX: listed through its parent's fd
            entries = longpath.scandir_names(path)
        else:
            with os.scandir(path) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    except OSError as e:
        warn(f"{os.fsdecode(path)}: cannot list directory: {e.strerror}")
        return iter(())
    entries.sort()
    return iter(entries)
