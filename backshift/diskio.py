"""Every write, sync, rename and unlink of the chunk store goes through here.

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
