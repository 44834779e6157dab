"""The syscalls of the chunk store: every write, sync, rename and unlink, and whole-file reads
(read_whole, also the save's). A leaf: it imports nothing of backshift.

One small module on purpose: the fault-injection tests replace these functions to make the
store fail with ENOSPC, EIO or EACCES after N calls or bytes (restic TestNoSpacePermanent).
"""

from __future__ import annotations

import ctypes
import os
import signal

_libc = None


def create_temp(path: bytes) -> int:
    """Create PATH exclusively for writing; the caller chooses a unique temp name."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_whole(fd: int, expected: int, limit: int | None = None) -> bytes:
    """All bytes of the open file FD, which should be EXPECTED bytes long: one read() when
    it is (asking for one byte more and getting exactly EXPECTED means the end is reached);
    a short read is confirmed at EOF by one more read, and a longer file is read on.

    With LIMIT, never more than LIMIT + 1 bytes are read (nor asked for): a result longer
    than LIMIT means the file is, and the caller decides what that means."""
    if limit is not None and expected > limit:
        expected = limit
    data = os.read(fd, expected + 1)
    if len(data) <= expected:
        more = os.read(fd, 1) if len(data) < expected else b""
        if not more:
            return data
        data += more
    parts = [data]
    have = len(data)
    while limit is None or have <= limit:
        block = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit + 1 - have))
        if not block:
            break
        parts.append(block)
        have += len(block)
    return b"".join(parts)


def fsync(fd: int) -> None:
    os.fsync(fd)


def close(fd: int) -> None:
    os.close(fd)


def rename(src: bytes, dst: bytes) -> None:
    os.rename(src, dst)


def link(src: bytes, dst: bytes) -> None:
    os.link(src, dst)


def unlink(path: bytes) -> None:
    os.unlink(path)


def fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: bytes) -> None:
    """Flush every dirty page of the filesystem holding PATH (one call for a whole batch).

    syncfs(2) where the C library has it, else a full sync(2): both wait for the data to
    reach the disk on Linux. Far cheaper than an fsync per chunk file for thousands of
    small chunks, and it keeps the order 'data durable, then names, then catalog'.
    """
    libc = _c()
    if libc is not None and hasattr(libc, "syncfs"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)
    else:
        os.sync()


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl; elsewhere
    nothing)."""
    libc = _c()
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _c():
    """The C library of this process, or None. CDLL(None) is the process's own symbols:
    ctypes.util.find_library runs ldconfig (~20 ms, and a child process)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc or None
