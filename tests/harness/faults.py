"""H2: I/O fault injection. diskio functions that fail after N calls or bytes, and a child
process whose file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes catalog writes fail."""

from __future__ import annotations

import errno
import os
import resource
import signal
from dataclasses import dataclass, field

from backshift import diskio

ENOSPC, EIO, EACCES = errno.ENOSPC, errno.EIO, errno.EACCES


@dataclass
class Fault:
    """Counts calls (and bytes, for write_all) and raises OSError(ERRNO) once past the limit."""

    err: int
    after_calls: int | None = None
    after_bytes: int | None = None
    calls: int = 0
    bytes: int = 0
    raised: int = 0
    filenames: list = field(default_factory=list)

    def check(self, nbytes: int = 0, filename=None) -> None:
        self.calls += 1
        self.bytes += nbytes
        over = (self.after_calls is not None and self.calls > self.after_calls) or (
            self.after_bytes is not None and self.bytes > self.after_bytes)
        if over:
            self.raised += 1
            raise OSError(self.err, os.strerror(self.err), filename)


def inject(monkeypatch, name: str, fault: Fault) -> Fault:
    """Make diskio.NAME consult FAULT before doing its real work."""
    real = getattr(diskio, name)

    if name == "write_all":
        def wrapper(fd, data):
            fault.check(len(data))
            return real(fd, data)
    else:
        def wrapper(*args):
            fault.check(0, args[0] if args and isinstance(args[0], bytes | str) else None)
            return real(*args)

    monkeypatch.setattr(diskio, name, wrapper)
    return fault


def fsize_limit(limit_bytes: int):
    """preexec_fn for subprocess: files may not grow beyond LIMIT_BYTES (EFBIG, no signal)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply
