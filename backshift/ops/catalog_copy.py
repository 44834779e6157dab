"""Catalog copies: a consistent snapshot of the catalog after each save and expire, rotated.

The copy is made with SQLite's backup API from the open connection (never a file copy of
a live database), written to a temp name, fsynced, renamed into REPO/catalog-copies/ and
the directory fsynced; only the newest KEEP copies stay. README "Keeping a repository
healthy" says how to put one back.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ..catalog import Catalog

COPIES_DIR = b"catalog-copies"
KEEP = 3
_NAME = re.compile(rb"^catalog-(\d+)-(\d+)\.sqlite3$")
# make_copy's temp file (FINAL.tmp) and what SQLite makes beside it while the backup runs
_TEMP_NAME = re.compile(rb"^catalog-\d+-(\d+)\.sqlite3\.tmp(-journal|-wal|-shm)?$")


def copies_dir(repo_path: bytes) -> bytes:
    return os.path.join(repo_path, COPIES_DIR)


def make_copy(repo_path: bytes, catalog: Catalog, keep: int = KEEP,
              upload: Callable[[bytes, BinaryIO], object] | None = None) -> bytes:
    """Write a new copy of CATALOG and drop all but the newest KEEP; returns its path.
    UPLOAD(final path, open file of the copy) sends it elsewhere too (the bucket of the
    chunks): it runs in a thread while the local copy is synced and renamed, and its error
    is raised here once the local copy is done."""
    d = copies_dir(repo_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    name = b"catalog-%d-%d.sqlite3" % (time.time_ns(), os.getpid())
    final = os.path.join(d, name)
    temp = final + b".tmp"
    sending = None
    try:
        catalog.backup_to(os.fsdecode(temp))
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if upload is not None:  # read through this fd: the name changes meanwhile
                sending = _Sending(upload, final, os.dup(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except BaseException:
        if sending is not None:
            sending.wait()
        for leftover in (temp, temp + b"-journal", temp + b"-wal"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise
    try:
        _sync_and_rotate(d, repo_path, keep)
    finally:
        if sending is not None:
            sending.wait()
    if sending is not None:
        sending.result()
    return final


def _sync_and_rotate(d: bytes, repo_path: bytes, keep: int) -> None:
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


class _Sending:
    """UPLOAD(path, file) of make_copy, run in a thread of its own."""

    def __init__(self, upload: Callable[[bytes, BinaryIO], object], path: bytes,
                 fd: int) -> None:
        self.file = os.fdopen(fd, "rb")
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(upload, path),
                                       name="catalog-copy-upload", daemon=True)
        self.thread.start()

    def _run(self, upload, path: bytes) -> None:
        try:
            upload(path, self.file)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            self.error = e
        finally:
            self.file.close()

    def wait(self) -> None:
        self.thread.join()

    def result(self) -> None:
        """Raise what UPLOAD raised (after wait())."""
        if self.error is not None:
            raise self.error


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
