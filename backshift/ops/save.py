"""Saving a file tree, the client half: read names, lstat, hand files to the readers, and
sequence it all against the repository half (SaveSession); ops/saverun.py runs it.

The main thread walks or reads the names and lstats them; a re-save first offers each
batch to the session, which borrows the unchanged ones. The rest become Items: borrowed
(the session decides) or read by the reader pool (ops/readers.py), which writes new
chunks through the session's chunk sink. Results are recorded in input order, through
the session, which commits a batch per transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass

from .. import longpath
from ..errors import ReaderDied
from ..lock import pid_alive
from ..longpath import PATH_MAX
from ..model import TYPE_FILE, TYPE_SYMLINK, SaveStats, Version, type_of_mode
from ..repo import Repository
from ..walk import Walk
from ..xattrs import XattrError, read_xattrs
from .feed import END, Feed, FeedError, LocalFeed, Unchanged
from .intake import REREAD
from .owners import Owners
from .reader import (
    BATCH_BYTES,
    BATCH_FILES,
    ReadResult,
    ReadStopped,
    SkipFile,
    _live_bytes_read,
    _reset_shared,
    in_flight_cost,
    read_file,
)
from .readers import read_batch_task, read_file_task
from .session import SaveSession
from .stopping import _graceful_signals, _notice

# Bounds of what the catalog's thread holds, whatever the commit interval: items queued for
# recording (each holds its Version).
MAX_QUEUED = 8000

Warn = Callable[[str], None]
Progress = Callable[[SaveStats, int | None], None]


@dataclass(frozen=True)
class SaveOptions:
    hostname: str
    subset: str
    workers: int = 2
    batch_files: int = 20_000
    batch_bytes: int = 256 << 20
    batch_seconds: float = 10.0
    max_in_flight_bytes: int = 256 << 20
    roots: list[bytes] | None = None  # the PATHs walked (absolute, normal); None: from find



@dataclass
class Item:
    """One input name on its way to the catalog."""

    path: bytes
    path_id: int | None  # None until the session interns it (a first save: in batches)
    version: Version  # content_id filled in when known
    base_version_id: int | None  # an earlier identical version to reuse, if any
    future: Future | None = None
    link_first: Item | None = None  # earlier member of the same hardlink group
    parent_id: int | None = None  # the path id of its directory (None for /)
    index: int = -1  # its place in a read_batch, when read in one
    done: bool = False
    skipped: bool = False


class Saver:
    """Sequences one save: names in, lstat, hand-off to the readers, results recorded in
    input order through the session (self.session), stop requests honoured."""

    def __init__(self, repo: Repository | None, opts: SaveOptions, warn: Warn,
                 progress: Progress | None = None, readers: Executor | None = None,
                 session=None) -> None:
        self.repo = repo
        self.readers = readers  # reader_pool(); threads of this process when None
        self.opts = opts
        self.progress = progress
        # SESSION: the repository half when it is not REPO's own SaveSession (a remote
        # save's ops/saveproxy.SessionProxy: its chunker is known once it is open)
        self.session = session if session is not None else SaveSession(
            repo, opts.hostname, opts.subset, opts.roots, warn, batch_files=opts.batch_files,
            batch_bytes=opts.batch_bytes, batch_seconds=opts.batch_seconds)
        self.stats = self.session.stats
        self.warn = self.session.warn  # thread-safe: the name reader warns from its thread
        self.chunker = repo.chunker if repo is not None else None
        self.owners = Owners()
        self.hardlinks: dict[tuple[int, int], Item] = {}
        self.queue: collections.deque[Item] = collections.deque()
        self.in_flight_bytes = 0
        self.pool: Executor | None = None
        self._small: list[Item] = []  # small files waiting for their batch to be sent
        self._small_bytes = 0
        self._small_limit = repo.chunker.min_size if repo is not None else 0
        self.stop_signal: int | None = None
        self.names_seen = 0
        self.notice: Callable[[str], None] = _notice
        self.copied = True  # the catalog copy after a complete save was refreshed
        # reader tasks handed over whose temp files are not adopted yet: a save that fails
        # removes those of the finished ones (drop_unadopted), whatever became of their items
        self._tasks: set[Future] = set()
        self._handing_over = False  # a hard stop now waits until the task is in _tasks
        self._hard_stop_waiting = False
        self.started = time.monotonic()
        self._last_progress = 0.0
        self.scanned: int | None = None  # names a walk ahead counted (_scan_ahead), when done

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, paths: Iterable[bytes]) -> SaveStats:
        with _fewer_gc_passes():
            try:
                return self._run(paths)
            finally:
                self.session.close()  # the save's final status is committed

    def _run(self, paths: Iterable[bytes]) -> SaveStats:
        _reset_shared()
        # the handlers first: a signal before the save row exists ends in the same state
        # as one later (an interrupted save), never in a dead 'running' row (the main loop
        # enters them again: nested, the same handler)
        with _graceful_signals(self):
            return self._run_handled(paths)

    def _run_handled(self, paths: Iterable[bytes]) -> SaveStats:
        session = self.session
        session.open()
        if self.chunker is None:  # a remote session's: known now
            self.chunker = session.chunker
            self._small_limit = self.chunker.min_size
        if self.progress is not None and session.estimate is None and isinstance(paths, Walk):
            self._scan_ahead(paths)
        pool = self.pool = self.readers or ThreadPoolExecutor(
            max_workers=self.opts.workers, thread_name_prefix="read")
        names = LocalFeed(paths) if isinstance(paths, Walk) else Feed(paths)
        if session.borrower.fast:  # else read every attribute once
            names = Unchanged(self, names)
        try:
            with _graceful_signals(self):
                names.start()
                done = False
                while not done and self.stop_signal is None:
                    batch = names.get(timeout=0.25)
                    if not batch:
                        # The input is slow (a find still walking): record what is done
                        # and release the write lock so other saves can commit meanwhile.
                        self.send_small()
                        self.drain(block=False)
                        self.checkpoint(force=True)
                        self.report_progress()
                        continue
                    for path in batch:
                        if path is END:
                            done = True
                            break
                        if isinstance(path, FeedError):
                            raise path.error
                        if self.stop_signal is not None:
                            break
                        self.add(path, pool)
                        self.drain(block=False)
                        self.checkpoint()
                        self.report_progress()
                if self.stop_signal is None:
                    self.drain(block=True)
                if self.stop_signal is not None:
                    self.drain_stopped()
            pool.shutdown(wait=True, cancel_futures=self.stop_signal is not None)
            status = "complete" if self.stop_signal is None else "interrupted"
            if status == "interrupted":
                self.drop_unadopted()  # read, but stopped before their turn to be recorded
            elif self.stats.files == 0:
                session.discard_empty(self.names_seen)
            session.finish(status)  # its flush and commit can fail too: same clean-up
            self.stats.elapsed_s = time.monotonic() - self.started
            self.report_progress(final=True)
        except BaseException as e:
            pool.shutdown(wait=True, cancel_futures=True)
            self.fail(e)
            if isinstance(e, BrokenExecutor):
                # a reader died (the OOM killer): the pool stopped the others; nobody will
                # hand over the temp files they wrote
                session.discard_temps_of(
                    [pid for pid in getattr(pool, "reader_pids", ()) if not pid_alive(pid, None)])
                raise ReaderDied() from None
            raise
        return self.stats

    def checkpoint(self, force: bool = False) -> None:
        """Commit through the session when a batch is due (FORCE: now)."""
        self.session.checkpoint(force)

    def drain_stopped(self) -> None:
        """After a stop request: record, in input order, the items whose reading ended
        (the readers stop at their next chunk), up to the first one stopped or never sent;
        the rest is left out of the save."""
        q = self.queue
        while q:
            item = q[0]
            future = item.future
            if future is _UNSENT:
                break
            if future is not None:
                futures_wait([future])
                if isinstance(future.exception(), ReadStopped):
                    break
            q.popleft()
            try:
                self.record(item)
            except ReadStopped:  # a hardlink read here, in the main thread
                break
        q.clear()
        self._small = []

    def fail(self, error: BaseException | None = None) -> None:
        """After an error: keep nothing uncommitted, mark the save interrupted if possible."""
        if self.stats.status == "complete":
            return  # the error came after the final commit: the save stands
        self.drop_unadopted()
        self.session.abandon(error)

    def drop_unadopted(self) -> None:
        """Remove the temp files of the reader tasks that finished but will not be recorded
        (the readers are shut down already)."""
        for future in self._tasks:
            if getattr(future, "outcome", None) is not None or not future.done() \
                    or future.cancelled() or future.exception() is not None:
                continue
            _result, pending, _seen = future.result()
            self.session.discard(pending)
        self._tasks = set()

    def hand_over(self, pool: Executor, task: Callable, *args) -> Future:
        """Submit a reader TASK, kept in _tasks until its temp files are adopted. A hard
        stop (the second Ctrl-C) arriving meanwhile waits for the end of the hand-off:
        landing between the submit and the bookkeeping, it lost the task and its temps."""
        self._handing_over = True
        try:
            future = pool.submit(task, *args)
            self._tasks.add(future)
        finally:
            self._handing_over = False
        if self._hard_stop_waiting:
            raise KeyboardInterrupt
        return future

    def hard_stop(self) -> None:
        """A second SIGINT/SIGTERM: stop now (run() cleans up), after a hand-off under way."""
        if self._handing_over:
            self._hard_stop_waiting = True
            return
        raise KeyboardInterrupt

    def report_progress(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._last_progress >= 0.2:
            self._last_progress = now
            self.stats.elapsed_s = now - self.started
            shown = self.stats
            live = _live_bytes_read()
            if not final and live > shown.bytes_read:  # read, not all recorded yet
                shown = dataclasses.replace(shown, bytes_read=live)
            self.progress(shown, self.session.estimate or self.scanned)

    def _scan_ahead(self, paths: Walk) -> None:
        """Count the names of the walk ahead of the save, in a helper thread (as restic
        does): the progress line's total, and so its ETA, on a first save of PATHs (later
        ones take the previous save's count). Only while progress is shown."""
        roots, cwd, _warn, *options = paths.args
        ahead = Walk(roots, cwd, lambda _msg: None, *options)

        def count() -> None:
            n = 0
            for _name in ahead:
                n += 1
                if self.stop_signal is not None:
                    return
            self.scanned = n

        threading.Thread(target=count, name="scan-ahead", daemon=True).start()

    # -- per name -------------------------------------------------------------------------

    def add(self, path: bytes, pool: Executor) -> None:
        self.names_seen += 1
        session = self.session
        session.ensure_txn()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.warn(f"{os.fsdecode(path)}: vanished before it could be saved")
            return
        except OSError as e:
            st = long_lstat(path, e, self.warn)
            if st is None:
                return
        ftype = type_of_mode(st.st_mode)
        if ftype is None:
            self.warn(f"{os.fsdecode(path)}: skipped: unknown file type {st.st_mode:o}")
            return
        if not _fits_catalog(st):
            self.warn(f"{os.fsdecode(path)}: skipped: a time, size or id beyond what the "
                      "catalog holds (64-bit; times up to 2262)")
            return
        link_target = None
        if ftype == TYPE_SYMLINK:
            try:
                link_target = os.readlink(path) if len(path) < PATH_MAX \
                    else longpath.readlink(path)
            except OSError as e:
                self.warn(f"{os.fsdecode(path)}: cannot read symlink: {e.strerror}")
                return
        user, group = self.owners.names(st.st_uid, st.st_gid)
        version = Version(
            mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, user=user, group=group,
            size=st.st_size if ftype == TYPE_FILE else 0, mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino, nlink=st.st_nlink,
            rdev=st.st_rdev, link_target=link_target, content_id=None)
        if session.borrowing:  # borrowing looks the path up by its directory's id
            path_id, parent_id = session.locate(path)
            item = Item(path, path_id, version, None, parent_id=parent_id)
        else:  # a first save: the session interns the paths of a batch at once
            item = Item(path, None, version, None)
        if not self.attach_xattrs(item):
            return
        if ftype == TYPE_FILE:
            self.plan_regular(item, st, pool)
        else:
            item.base_version_id = session.reusable_version(
                path, item.path_id, item.parent_id, item.version)
            item.done = True
        self.queue.append(item)

    def attach_xattrs(self, item: Item) -> bool:
        """Give item.version its extended attribute set: the earlier version's when ctime
        is unchanged (setfattr, setfacl and setcap update ctime), without a system call;
        else the file's, read now. False when the file vanished meanwhile (warned)."""
        v = item.version
        kept, xattrs_id = self.session.kept_xattrs(item.path, item.path_id, item.parent_id, v)
        if kept:
            if xattrs_id is not None:
                item.version = v._replace(xattrs_id=xattrs_id)
            return True
        try:
            xattrs = read_xattrs(item.path) if len(item.path) < PATH_MAX \
                else longpath.xattrs(item.path)
        except FileNotFoundError:
            self.warn(f"{os.fsdecode(item.path)}: vanished before it could be saved")
            return False
        except XattrError as e:
            self.warn(f"{os.fsdecode(item.path)}: {e}; saved without them")
            return True
        if xattrs:
            item.version = v._replace(xattrs_id=self.session.xattr_set_id(xattrs))
        return True

    def plan_regular(self, item: Item, st: os.stat_result, pool: Executor) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self.hardlinks.get(key)
            if first is not None:
                item.link_first = first
                return
            self.hardlinks[key] = item
        if self.borrow(item):
            return
        self.in_flight_bytes += in_flight_cost(st.st_size)
        if st.st_size <= self._small_limit:
            self.pool = pool  # send_small() hands the batch to it
            item.future = _UNSENT
            item.index = len(self._small)
            self._small.append(item)
            self._small_bytes += st.st_size
            if len(self._small) >= BATCH_FILES or self._small_bytes >= BATCH_BYTES:
                self.send_small()
            return
        sink = self.session.sink
        item.future = self.hand_over(pool, read_file_task, sink.repo, sink.zstd_level,
                                     item.path, item.version, self.chunker)

    def send_small(self) -> None:
        """Hand the small files gathered so far to the pool as one read_batch."""
        items = self._small
        if not items:
            return
        self._small = []
        self._small_bytes = 0
        sink = self.session.sink
        future = self.hand_over(self.pool, read_batch_task, sink.repo, sink.zstd_level,
                                [(i.path, i.version) for i in items], self.chunker)
        for i in items:
            i.future = future

    def borrow(self, item: Item) -> bool:
        """Whether the session lets ITEM borrow an earlier save's content (not read)."""
        found = self.session.borrow(item.path, item.path_id, item.parent_id, item.version)
        if found is None:
            return False
        item.version, item.base_version_id = found
        item.done = True
        return True

    # -- recording ------------------------------------------------------------------------

    def drain(self, block: bool) -> None:
        """Record finished items in input order; block on the oldest when told to or when
        too much is in flight (memory stays bounded)."""
        q = self.queue
        while q:
            item = q[0]
            future = item.future
            if future is not None and not future.done():
                must_wait = block or self.in_flight_bytes > self.opts.max_in_flight_bytes \
                    or len(q) > MAX_QUEUED
                if not must_wait:
                    return
                if future is _UNSENT:
                    self.send_small()
                    future = item.future
                while not futures_wait([future], timeout=0.2).done:
                    self.report_progress()  # a big file: the bytes read move on
                    if self.stop_signal is not None:
                        break
            if self.stop_signal is not None:
                return  # drain_stopped records what the readers finished
            q.popleft()
            self.record(item)
            self.checkpoint()

    def record(self, item: Item) -> None:
        session = self.session
        session.ensure_txn()
        v = item.version
        if item.future is not None:
            self.in_flight_bytes -= in_flight_cost(v.size)
            try:
                result: ReadResult = self.outcome(item.future)
                if item.index >= 0:  # one of a read_batch
                    if not result.contents_known:
                        session.contents_of_batch(result)
                    result = result[item.index]
                    if isinstance(result, SkipFile):
                        raise result
                if result is REREAD:
                    result = self.read_here(item)
            except SkipFile as e:
                self.warn(f"{os.fsdecode(item.path)}: skipped: {e}")
                item.skipped = True
                return
            v = session.store_content(v, result)
            if result.changed:
                self.warn(f"{os.fsdecode(item.path)}: {result.changed}; saved as read, "
                          "it will be read again next time")
        elif item.link_first is not None:
            first = item.link_first
            if first.skipped or first.version.content_id is None:
                # the group's first member could not be read: this one carries the data
                self.hardlinks[(v.dev, v.ino)] = item
                item.link_first = None
                if not self.borrow(item):
                    try:
                        result = self.read_here(item)
                    except SkipFile as e:
                        self.warn(f"{os.fsdecode(item.path)}: skipped: {e}")
                        item.skipped = True
                        return
                    v = session.store_content(v, result)
                else:
                    v = item.version
            else:
                v = v._replace(content_id=first.version.content_id, size=first.version.size)
        item.version = v
        session.record(item.path, item.path_id, item.parent_id, v, item.base_version_id)

    def outcome(self, future: Future):
        """What a reader task returned, its temp files taken by the session (once per task:
        a read_batch's future is shared by its files)."""
        out = getattr(future, "outcome", None)
        if out is None:
            result, pending, seen_existing = future.result()
            out = future.outcome = self.session.take(result, pending, seen_existing)
            self._tasks.discard(future)
        return out

    def read_here(self, item: Item) -> ReadResult:
        """read_file in this process into the session's chunk sink, its found chunk files
        vetted: a damaged one is read a second time, which stores it afresh (SkipFile
        passes)."""
        sink = self.session.sink
        result = read_file(item.path, item.version, self.chunker, sink)
        if self.session.vet_found([result]):
            result = read_file(item.path, item.version, self.chunker, sink)
        return result


def long_lstat(path: bytes, e: OSError, warn: Warn) -> os.stat_result | None:
    """lstat of PATH after the plain call failed with E: through its directory's fd when
    PATH is beyond PATH_MAX; None when that fails too, or E is another error (warned)."""
    if longpath.too_long(e):
        try:
            return longpath.lstat(path)
        except FileNotFoundError:
            warn(f"{os.fsdecode(path)}: vanished before it could be saved")
            return None
        except OSError as e2:
            e = e2
    warn(f"{os.fsdecode(path)}: cannot lstat: {e.strerror}")
    return None


_INT64 = 1 << 63


def _fits_catalog(st: os.stat_result) -> bool:
    """Every number of ST fits an SQLite INTEGER (else apsw raises OverflowError when the
    version row is inserted: the whole save failed on one file, e.g. one touched to 2300)."""
    numbers = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_dev, st.st_ino, st.st_rdev,
               st.st_uid, st.st_gid, st.st_nlink)
    return -_INT64 <= min(numbers) and max(numbers) < _INT64  # builtins: no generator per file


class _Unsent:
    """The future of a small file whose batch is still being gathered (never done)."""

    @staticmethod
    def done() -> bool:
        return False


_UNSENT = _Unsent()


# Objects a save allocates between two passes of the cyclic garbage collector's youngest
# generation (Python's default: 700). A first save makes ~10 container objects per file
# (items, versions, results unpickled from the readers) and creates almost no cycles, so the
# default made ~300 passes over a 20,000-file save, some of them over every live object:
# ~0.1 s of the saving thread's CPU on bench `mixed`, and unpickling a reader's results was
# 3.5x slower (125 ms instead of 35 for 20,000 results).
GC_YOUNG_THRESHOLD = 50_000


@contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def save(repo: Repository, paths: Iterable[bytes], opts: SaveOptions, warn: Warn,
         progress: Progress | None = None) -> SaveStats:
    """Save PATHS (absolute, normal) as a new save of opts.hostname/opts.subset.

    Warnings about the input itself (bad names) belong in the save's count too: build the
    PATHS iterator with Saver.warn as its callback, as the CLI does.
    """
    return Saver(repo, opts, warn, progress).run(paths)
