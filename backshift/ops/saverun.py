"""How a save runs as a command: stop signals, the reader pool, the repository half (a
local SaveSession, or saveproxy's for ssh://) and the names to save, around the one Saver.

run_save (a local repository) and saveproxy.run_remote_save (ssh://) both go through
drive_save; input_names turns PATHs or a NUL-separated stream into the names a save reads.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from ..model import SaveStats
from ..repo import Repository
from .readers import LazyReaders, reader_pool
from .save import Progress, SaveOptions, Saver, Warn
from .session import series_exists
from .stopping import catch_stop_signals


@dataclass
class SaveRun:
    """What run_save did: the save's stats, the stop signal that ended it (if any), whether
    the catalog copy was refreshed, and whether a second SIGTERM stopped it at once."""

    stats: SaveStats | None
    stop_signal: int | None
    copied: bool = True
    terminated: bool = False


def run_save(repo_path: bytes, opts: SaveOptions, warn: Warn, *, lock_wait_s: float = 0.0,
             progress: Progress | None = None, notice: Callable[[str], None] | None = None,
             after_complete: Callable[[Repository], bool] | None = None,
             **names_from) -> SaveRun:
    """The save command: fork the readers, open REPO_PATH for writing, save the names of
    NAMES_FROM (input_names' arguments: cwd, PATHs and the walk's options, or a STREAM),
    and call AFTER_COMPLETE(repo) on a complete save (its result: SaveRun.copied). A second
    SIGINT raises KeyboardInterrupt; a second SIGTERM returns terminated."""
    from ..repo import WRITE, chunks_in_bucket, open_repository

    @contextmanager
    def saver_in(readers: Executor) -> Iterator[Saver]:
        with open_repository(repo_path, WRITE, operation="save",
                             lock_wait_s=lock_wait_s) as repo:
            saver = Saver(repo, opts, warn, progress, readers)
            yield saver
            if saver.stats.status == "complete" and after_complete is not None:
                saver.copied = after_complete(repo)

    # forked before the repository (and its catalog) opens; a bucket's readers are threads
    return drive_save(saver_in, lambda: chunks_in_bucket(repo_path) or series_exists(
        repo_path, opts.hostname, opts.subset), opts, notice, names_from)


def drive_save(saver_in: Callable[[Executor], AbstractContextManager[Saver]],
               threads: Callable[[], bool] | None, opts: SaveOptions,
               notice: Callable[[str], None] | None, names_from: dict,
               lazy: bool = False) -> SaveRun:
    """The one way a save runs, into a local repository (run_save) or an ssh:// one
    (saveproxy.run_remote_save): stop signals caught first, the reader pool forked (threads
    when THREADS() says so; LAZY: when the first file is read), then SAVER_IN(readers) gives
    the Saver, which saves the names of NAMES_FROM (input_names' arguments)."""
    restore_signals = catch_stop_signals()  # from now on a signal ends as one later
    try:
        readers = LazyReaders(opts.workers, threads) if lazy \
            else reader_pool(opts.workers, threads)
    except BaseException:
        restore_signals()
        raise
    saver = None
    try:
        with saver_in(readers) as saver:
            if notice is not None:
                saver.notice = notice
            stats = saver.run(input_names(saver.warn, **names_from))
    except KeyboardInterrupt:  # a second signal: stopped at once, marked interrupted
        if saver is None or saver.stop_signal != signal.SIGTERM:
            raise
        return SaveRun(None, saver.stop_signal, terminated=True)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        restore_signals()
    return SaveRun(stats, saver.stop_signal, saver.copied)


def input_names(warn: Warn, *, cwd: bytes, paths: Iterable[bytes] = (), stream=None,
                one_file_system: bool = False, excludes: Iterable[str] = (),
                exclude_caches: bool = False, exclude_if_present: Iterable[str] = ()
                ) -> Iterable[bytes]:
    """The names a save reads: a walk of PATHS (with the walk's options), or the
    NUL-separated names of STREAM, absolute and normal; bad ones are WARNed about."""
    from .. import walk

    if paths:
        tags = sorted({os.fsencode(n) for n in exclude_if_present}
                      | ({walk.CACHEDIR_TAG} if exclude_caches else set()))
        return walk.walk(paths, cwd, warn, one_file_system=one_file_system,
                         excludes=[os.fsencode(e) for e in excludes], tags=tags)
    return walk.normalized(walk.read_nul_names(stream), cwd, warn)
