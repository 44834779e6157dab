"""Catalog copies: a consistent snapshot of the catalog after each save and expire, rotated.

The copy is made with SQLite's backup API from the open connection (never a file copy of
a live database), written to a temp name, fsynced, renamed into REPO/catalog-copies/ and
the directory fsynced; only the newest KEEP copies stay. README "Keeping a repository
healthy" says how to put one back.
"""

from __future__ import annotations

import os
import re
import time

from ..catalog import Catalog

COPIES_DIR = b"catalog-copies"
KEEP = 3
_NAME = re.compile(rb"^catalog-(\d+)-(\d+)\.sqlite3$")
# make_copy's temp file (FINAL.tmp) and what SQLite makes beside it while the backup runs
_TEMP_NAME = re.compile(rb"^catalog-\d+-(\d+)\.sqlite3\.tmp(-journal|-wal|-shm)?$")


def copies_dir(repo_path: bytes) -> bytes:
    return os.path.join(repo_path, COPIES_DIR)


def make_copy(repo_path: bytes, catalog: Catalog, keep: int = KEEP) -> bytes:
    """Write a new copy of CATALOG and drop all but the newest KEEP; returns its path."""
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


def temp_copies(repo_path: bytes) -> list[bytes]:
    """The temp files of copies in progress, or left by one that was stopped (a kill)."""
    d = copies_dir(repo_path)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(d, n) for n in names if _TEMP_NAME.match(n))


def copy_temp_pid(path: bytes) -> int | None:
    """The pid of the process that made temp file PATH (temp_copies), from its name."""
    m = _TEMP_NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else None
