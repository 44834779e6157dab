"""Catalog copies: a consistent snapshot of the catalog after saves and expires, rotated.

The copy is made with SQLite's backup API from the open connection (never a file copy of
a live database), written to a temp name, fsynced, renamed into REPO/catalog-copies/ and
the directory fsynced; only the newest KEEP copies stay. README "Restoring the catalog
from its copy" says how to put one back.

A copy costs a write and an fsync of the whole catalog, while an unchanged re-save changes
~2% of it: a save skips the copy when the newest one is still current enough (see
copy_is_current): the saves a newest copy lacks were all made within COPY_MAX_AGE_S after
it, and it never holds a save whose chunks an expire has freed.
"""

from __future__ import annotations

import os
import re
import time

import apsw

from ..catalog import Catalog
from ..errors import BackshiftError

COPIES_DIR = b"catalog-copies"
KEEP = 3
COPY_MAX_AGE_S = 3600  # a newest copy older than this is always replaced
COPY_GROWTH = 8  # ... and so is one the catalog has outgrown by more than 1/COPY_GROWTH
_NAME = re.compile(rb"^catalog-(\d+)-(\d+)\.sqlite3$")


def copies_dir(repo_path: bytes) -> bytes:
    return os.path.join(repo_path, COPIES_DIR)


def make_copy(repo_path: bytes, catalog: Catalog, keep: int = KEEP,
              force: bool = False) -> bytes:
    """Write a new copy of CATALOG and drop all but the newest KEEP; returns its path.
    Unless FORCE, a newest copy that is still current (copy_is_current) is kept instead."""
    if not force:
        current = copy_is_current(repo_path, catalog)
        if current is not None:
            return current
    d = copies_dir(repo_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    name = b"catalog-%d-%d.sqlite3" % (time.time_ns(), os.getpid())
    final = os.path.join(d, name)
    temp = final + b".tmp"
    try:
        catalog.backup_to(os.fsdecode(temp))
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except BaseException:
        for leftover in (temp, temp + b"-journal", temp + b"-wal"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    for old in list_copies(repo_path)[keep:]:
        try:
            os.unlink(old[0])
        except FileNotFoundError:
            pass  # a concurrent save rotated it already
    return final


def copy_is_current(repo_path: bytes, catalog: Catalog,
                    now_ns: int | None = None) -> bytes | None:
    """The newest copy, if it can stand for CATALOG: made less than COPY_MAX_AGE_S ago,
    the catalog not grown by more than 1/COPY_GROWTH since, and every save it holds still
    in the catalog with the same status (after an expire it would name freed chunks)."""
    copies = list_copies(repo_path)
    if not copies:
        return None
    path, made_ns = copies[0]
    now_ns = time.time_ns() if now_ns is None else now_ns
    if not 0 <= now_ns - made_ns < COPY_MAX_AGE_S * 1_000_000_000:
        return None
    try:
        size = os.stat(path).st_size
        if catalog.size_bytes() - size > size // COPY_GROWTH:
            return None
        copy = Catalog.open(path, readonly=True)
        try:
            held = copy.save_states()
        finally:
            copy.close()
    except (OSError, BackshiftError, apsw.Error):
        return None  # unreadable: replace it
    if not held <= catalog.save_states():
        return None
    return path


def list_copies(repo_path: bytes) -> list[tuple[bytes, int]]:
    """(path, made_ns) of every copy, newest first."""
    d = copies_dir(repo_path)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if m:
            out.append((os.path.join(d, name), int(m.group(1))))
    out.sort(key=lambda item: item[1], reverse=True)
    return out


def newest_copy_age_s(repo_path: bytes, now_ns: int | None = None) -> float | None:
    copies = list_copies(repo_path)
    if not copies:
        return None
    now_ns = time.time_ns() if now_ns is None else now_ns
    return (now_ns - copies[0][1]) / 1e9
