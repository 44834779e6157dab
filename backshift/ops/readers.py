"""The readers of a save: a pool of processes (a first save) or threads (a re-save), and
the tasks they run, each handing back its result and the chunk temp files it wrote.

Forked before the repository is opened. A task writes new chunks through a detached Store
(the local chunk sink) and returns their temp names; the saving process adopts them
(SaveSession.adopt) before the commit that names them.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from ..model import ChunkerParams, Version
from ..store import Store
from .reader import _check_stop, read_batch, read_file

# -- where files are read ----------------------------------------------------------------
# In threads, a first save of many small files spent its time handing the GIL over: each
# file is ~10 system calls (open, fstat, read, create, write, rename, ...), and a thread
# coming back from one waits for the GIL another holds. Reader processes have no GIL to
# share: on tmpfs, mixed's first save went from 2.36 s to 1.88 s (medians of 3). Forked
# before the repository is opened, so no catalog connection, lock or thread is carried into
# them (SQLite's rule: no fork with an open connection).

READERS_ENV = "BACKSHIFT_READERS"  # "threads": read in threads of the saving process


def reader_pool(workers: int, resave: Callable[[], bool] | None = None) -> Executor:
    """WORKERS reader processes, forked now: call it before the repository is opened.

    Threads of this process instead when RESAVE() says the series holds a save already
    (SaveSession.series_exists, asked before the repository opens): a re-save borrows
    most files, and starting processes (~30 ms: importing multiprocessing,
    forking, copy-on-write faults) cost an unchanged re-save of mixed 20% of its time.
    Threads too with BACKSHIFT_READERS=threads in the environment (for a debugger, and
    for the tests whose fault doubles must see every call)."""
    if os.environ.get(READERS_ENV) == "threads" or not hasattr(os, "fork") \
            or (resave is not None and resave()):
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_reader_started,
                               initargs=(os.getpid(),),
                               mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # with fork, the first task starts every process: now
    # whose temp files to remove should one of them die mid-task (Saver.run)
    pool.reader_pids = tuple(getattr(pool, "_processes", None) or ())
    return pool


class LazyReaders(Executor):
    """reader_pool(WORKERS, RESAVE), started by the first task submitted: a remote save
    that reads nothing (an unchanged re-save) forks no reader process. Tasks are submitted
    by the saving thread (Saver), so that thread forks them, as PR_SET_PDEATHSIG wants."""

    def __init__(self, workers: int, resave: Callable[[], bool] | None = None) -> None:
        self.workers = workers
        self.resave = resave
        self.pool: Executor | None = None

    def submit(self, fn, /, *args, **kwargs):
        if self.pool is None:
            self.pool = reader_pool(self.workers, self.resave)
        return self.pool.submit(fn, *args, **kwargs)

    @property
    def reader_pids(self) -> tuple[int, ...]:
        return getattr(self.pool, "reader_pids", ())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait, cancel_futures=cancel_futures)


def _reader_started(saver_pid: int) -> None:
    """In a reader process: Ctrl-C and SIGTERM are for the saving process, which finishes
    what was read and then stops the readers (a reader killed mid-file would fail the save);
    a crash point kills the saving process too. When the saving process dies (SIGKILL, a
    crash), the kernel kills the readers (PR_SET_PDEATHSIG): each holds the others' ends of
    the task pipes, so none would ever see them close.

    A SIGTERM from the saving process itself still ends a reader: the pool sends it to the
    others when one died (BrokenProcessPool). An idle reader waits for tasks holding the
    task queue's lock, the others wait for that lock: had they ignored it, the pool would
    wait for them, and they for the dead one's lock, forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too
    threading.Thread(target=_sigterm_from, args=(saver_pid,), name="sigterm",
                     daemon=True).start()
    from .. import crashpoints, diskio
    crashpoints.kill_parent = True
    diskio.die_with_parent()
    if os.getppid() != saver_pid:  # it died before the line above
        os._exit(1)


def _sigterm_from(saver_pid: int) -> None:
    """In a reader process: take each SIGTERM (blocked in every thread); exit on one the
    saving process sent, ignore the others (a group's or a service manager's)."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == saver_pid:
            os._exit(1)


_readers = threading.local()


def _reader_store(repo: bytes, zstd_level: int) -> Store:
    """This reader's detached store of REPO (one per process or thread, kept between tasks);
    for chunks in a bucket, the saving process's own object store (readers are threads then)."""
    from ..objstore import live_store
    shared = live_store(repo)
    if shared is not None:
        return shared  # type: ignore[return-value]
    store = getattr(_readers, "store", None)
    if store is None or store.repo != repo or store.zstd_level != zstd_level \
            or store.pid != os.getpid():
        store = _readers.store = Store(repo, zstd_level=zstd_level, detached=True)
    return store


def _handed_over(store: Store, work: Callable, *args) -> tuple:
    """(WORK's result, the temp files it wrote, whether it saw chunks on disk): what a
    reader task returns. On an error its temp files are removed: nobody would adopt them."""
    try:
        result = work(*args, store)
    except BaseException:
        store.abandon()
        raise
    pending, seen_existing = store.take_pending()
    return result, pending, seen_existing


def read_file_task(repo: bytes, zstd_level: int, path: bytes, st: Version,
                   params: ChunkerParams) -> tuple:
    """read_file in a reader."""
    _check_stop()
    return _handed_over(_reader_store(repo, zstd_level), read_file, path, st, params)


def read_batch_task(repo: bytes, zstd_level: int, jobs: list[tuple[bytes, Version]],
                    params: ChunkerParams) -> tuple:
    """read_batch in a reader."""
    _check_stop()
    return _handed_over(_reader_store(repo, zstd_level), read_batch, jobs, params)
