"""Paths longer than the kernel takes in one call (PATH_MAX, 4,096 bytes with the final NUL):
lstat, open, readlink, scandir and extended attributes through `*at` calls relative to an
fd of the path's directory, which is opened by walking the path's components in pieces
shorter than PATH_MAX (as find and GNU tar do).

Only the long paths come here: callers try the plain call first, or test the length, so a
short path costs nothing more than before.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .xattrs import XattrSet, read_xattrs

PATH_MAX = 4096  # bytes, the final NUL included: a path of this length or more is refused
PIECE = 3072  # the longest run of components opened with one openat
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def is_long(path: bytes) -> bool:
    return len(path) >= PATH_MAX


def too_long(e: OSError) -> bool:
    return e.errno == errno.ENAMETOOLONG


@contextmanager
def parent(path: bytes) -> Iterator[tuple[int, bytes]]:
    """(fd of PATH's directory, PATH's last component) for the `*at` calls; PATH is an
    absolute normal path. Symlinks among the directories are followed, as the kernel follows
    them in a plain call; the last component is the caller's to follow or not."""
    head, _, name = path.rpartition(b"/")
    fd = os.open(b"/", _DIR_FLAGS)
    try:
        piece: list[bytes] = []
        size = 0
        for comp in head.split(b"/"):
            if not comp:
                continue
            if piece and size + len(comp) + 1 > PIECE:
                fd = _step(fd, b"/".join(piece))
                piece, size = [], 0
            piece.append(comp)
            size += len(comp) + 1
        if piece:
            fd = _step(fd, b"/".join(piece))
        yield fd, name
    finally:
        os.close(fd)


def _step(fd: int, rel: bytes) -> int:
    """Open REL below the directory FD, closing FD (kept open on failure, for the caller)."""
    new = os.open(rel, _DIR_FLAGS, dir_fd=fd)
    os.close(fd)
    return new


def lstat(path: bytes) -> os.stat_result:
    with parent(path) as (fd, name):
        return os.lstat(name, dir_fd=fd)


def open_file(path: bytes, flags: int) -> int:
    with parent(path) as (fd, name):
        return os.open(name, flags, dir_fd=fd)


def readlink(path: bytes) -> bytes:
    with parent(path) as (fd, name):
        return os.readlink(name, dir_fd=fd)


def xattrs(path: bytes) -> XattrSet:
    """read_xattrs() of a long path: the calls have no `*at` form, but the directory's fd
    names it in a short path (/proc/self/fd/N/NAME; the last component is not followed)."""
    with parent(path) as (fd, name):
        return read_xattrs(b"/proc/self/fd/%d/%s" % (fd, name))


def scandir_names(path: bytes) -> list[tuple[bytes, bool]]:
    """(name, is a directory) of each entry of the directory PATH (not followed if a
    symlink), unsorted."""
    with parent(path) as (fd, name):
        dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=fd)
    try:
        with os.scandir(dfd) as it:
            return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(dfd)
