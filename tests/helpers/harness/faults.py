"""H2: I/O fault injection. diskio functions that fail after N calls or bytes, and a child
process whose file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes catalog writes fail."""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import signal
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from backshift import diskio

ENOSPC, EIO, EACCES = errno.ENOSPC, errno.EIO, errno.EACCES


class Fault:
    """Counts calls (and bytes, for write_all) and raises OSError(ERRNO) once past the limit.

    The counters live in shared memory behind a lock: a save's reader processes, forked
    after the fault is injected, count and fail against the same limits as the test sees.
    """

    def __init__(self, err: int, after_calls: int | None = None,
                 after_bytes: int | None = None, times: int | None = None) -> None:
        self.err = err
        self.after_calls = after_calls
        self.after_bytes = after_bytes
        self.times = times  # fail this often at most, then work again (transient errors)
        self._counts = multiprocessing.RawArray("q", 3)  # calls, bytes, raised
        self.lock = multiprocessing.Lock()

    calls = property(lambda self: self._counts[0],
                     lambda self, v: self._counts.__setitem__(0, v))
    bytes = property(lambda self: self._counts[1],
                     lambda self, v: self._counts.__setitem__(1, v))
    raised = property(lambda self: self._counts[2],
                      lambda self, v: self._counts.__setitem__(2, v))

    def __repr__(self) -> str:
        return (f"Fault(err={self.err}, after_calls={self.after_calls}, "
                f"after_bytes={self.after_bytes}, calls={self.calls}, bytes={self.bytes}, "
                f"raised={self.raised})")

    def check(self, nbytes: int = 0, filename=None) -> None:
        with self.lock:
            self.calls += 1
            self.bytes += nbytes
            over = (self.after_calls is not None and self.calls > self.after_calls) or (
                self.after_bytes is not None and self.bytes > self.after_bytes)
            over = over and (self.times is None or self.raised < self.times)
            if over:
                self.raised += 1
        if over:
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


def ctrl_c_twice() -> None:
    """The user presses Ctrl-C twice, now: the first asks a save to stop, the second (a hard
    stop) raises KeyboardInterrupt here, from the save's own SIGINT handler. Signals, not a
    raised KeyboardInterrupt: the handler decides what the second one does. Call it in the
    main thread (Python runs signal handlers there)."""
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)


def inject_ctrl_c(monkeypatch, name: str) -> list:
    """Make the first call of diskio.NAME in the main thread come with ctrl_c_twice(),
    before its real work. The list returned gets an entry when it fired."""
    real = getattr(diskio, name)
    fired: list = []

    def wrapper(*args):
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(args)
            ctrl_c_twice()
        return real(*args)

    monkeypatch.setattr(diskio, name, wrapper)
    return fired


class CtrlCInHandOff(ThreadPoolExecutor):
    """A reader pool (threads) during whose hand-off of its first task named TASK the user
    presses Ctrl-C twice (ctrl_c_twice): the hard stop lands inside the hand-off, after the
    task is queued and has written its temp files, before submit returns its future."""

    def __init__(self, task: str, workers: int = 2) -> None:
        super().__init__(workers, thread_name_prefix="read")
        self.task = task
        self.fired = False

    def submit(self, fn, /, *args, **kwargs):
        future = super().submit(fn, *args, **kwargs)
        if not self.fired and fn.__name__ == self.task:
            wait([future])  # its temp files exist: only its hand-off can be lost
            self.fired = True
            ctrl_c_twice()
        return future


def fsize_limit(limit_bytes: int):
    """preexec_fn for subprocess: files may not grow beyond LIMIT_BYTES (EFBIG, no signal)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


MEMORY_CAP = 512 << 20  # address space of a capped child: ~4x what a tar or check needs
PEAK_RSS_MAX = 200 << 20  # what such a child may have touched at its peak


@dataclass
class Capped:
    returncode: int
    stdout: bytes
    stderr: bytes
    peak_rss: int  # bytes, the child's ru_maxrss


def run_capped(args: list, cap: int = MEMORY_CAP, **kw) -> Capped:
    """Run ARGS as a child process whose address space is capped at CAP (RLIMIT_AS): a
    program that tries to read a huge file into memory fails there (MemoryError) instead of
    filling the machine's memory. Also its peak resident size, from its own rusage."""
    import subprocess
    import tempfile

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=apply, **kw)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: no wait() left
        out.seek(0)
        err.seek(0)
        return Capped(proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024)


# -- H2b: an apsw VFS whose files fail writes or syncs after N calls -------------------------

import apsw  # noqa: E402


class FaultVFS(apsw.VFS):
    """Registered as the default VFS while in use: every SQLite file opened in this process
    (the catalog, its WAL and journal) counts its xWrite/xSync calls against FAULT and fails
    with SQLITE_FULL (ENOSPC) or SQLITE_IOERR once past the limit."""

    def __init__(self, fault: Fault, calls: tuple[str, ...] = ("xWrite", "xSync")) -> None:
        self.fault = fault
        self.calls = calls
        self.base = "unix" if "unix" in apsw.vfs_names() else apsw.vfs_names()[0]
        super().__init__("backshift-fault", base=self.base, makedefault=True)

    def xOpen(self, name, flags):  # noqa: N802 - apsw's method name
        return _FaultFile(self, name, flags)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unregister()
        return False


class _FaultFile(apsw.VFSFile):
    def __init__(self, vfs: FaultVFS, name, flags) -> None:
        self.vfs = vfs
        super().__init__(vfs.base, name, flags)

    def _hit(self, call: str, nbytes: int = 0) -> None:
        if call not in self.vfs.calls:
            return
        try:
            self.vfs.fault.check(nbytes)
        except OSError as e:
            if e.errno == ENOSPC:
                raise apsw.FullError("injected: " + e.strerror) from None
            raise apsw.IOError("injected: " + e.strerror) from None

    def xWrite(self, data, offset):  # noqa: N802
        self._hit("xWrite", len(data))
        return super().xWrite(data, offset)

    def xSync(self, flags):  # noqa: N802
        self._hit("xSync")
        return super().xSync(flags)

    def xTruncate(self, newsize):  # noqa: N802
        self._hit("xTruncate")
        return super().xTruncate(newsize)
