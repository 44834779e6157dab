"""Saving a file tree: lstat each name, borrow unchanged files, read the rest, record it all.

The main thread owns the catalog. A few reader processes (reader_pool) read, chunk, hash,
compress and write new chunks to temp files; the saving process adopts those temp files
(Store.adopt) and makes them durable before the commit that names them. Results are
recorded in input order, a batch per transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import gc
import hashlib
import itertools
import mmap
import os
import queue
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from .. import __version__
from ..catalog import catalog_damage
from ..diskio import read_whole
from ..errors import BackshiftError, ChunkCorrupt, ChunkMissing, NothingToSave, ReaderDied
from ..lock import (
    hold_save_lock,
    pid_alive,
    release_save_lock,
    remove_dead_save_lock,
    save_alive,
)
from ..model import (
    TYPE_FILE,
    TYPE_SYMLINK,
    ChunkerParams,
    SaveStats,
    StoredChunk,
    Version,
    type_of_mode,
)
from ..pathcodec import basename, parent, sort_key
from ..repo import Repository
from ..store import Store

if TYPE_CHECKING:
    from ..chunker import Chunker
from ..walk import Walk
from ..xattrs import XattrError, XattrSet, is_text, read_xattrs, set_digest
from .owners import Owners
from .previous import ContentPresence, Entry, PreviousEntries, entry_chunks, entry_version

# A file whose mtime or ctime is this close to (or after) the start of the save that
# recorded it may have changed again within the filesystem's timestamp granularity after
# it was read: it is not trusted for borrowing (git's racy-git rule, borg's cmtime rule).
RACY_MARGIN_NS = 2_000_000_000

# An unchanged file recorded by the fast path costs next to nothing to redo after an
# interruption, so it counts as 1/UNCHANGED_PER_BATCH_FILE of a file towards a commit batch
# (opts.batch_files): each commit syncs the WAL, ~1 ms quiet, much more under I/O load.
UNCHANGED_PER_BATCH_FILE = 16

Warn = Callable[[str], None]
Progress = Callable[[SaveStats, int | None], None]


def subset_for_roots(roots: Iterable[bytes]) -> str:
    """The series name of a save of ROOTS (absolute, normal) given no --subset, as restic
    groups snapshots by their paths: each root without its leading '/' and with '/' as
    '-' (/etc: etc, /usr/share/doc: usr-share-doc, /: rootfs), sorted, joined by '+'. A
    root with anything but letters, digits, '.', '_' and '-' in it, or a name longer than
    SUBSET_NAME_MAX, gives paths-<first 12 hex digits of the SHA-256 of the sorted roots
    joined by NUL> instead."""
    roots = sorted(set(roots))
    parts = []
    for root in roots:
        try:
            text = root.decode("utf-8")
        except UnicodeDecodeError:
            break
        text = text.strip("/").replace("/", "-") or "rootfs"
        if not all(ch.isalnum() or ch in "._-" for ch in text):
            break
        parts.append(text)
    name = "+".join(parts)
    if len(parts) < len(roots) or not name or len(name) > SUBSET_NAME_MAX:
        name = "paths-" + hashlib.sha256(b"\0".join(roots)).hexdigest()[:12]
    return name


SUBSET_NAME_MAX = 80


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


class SkipFile(Exception):
    """A file that could not be saved; the message says why (becomes a warning)."""


@dataclass
class ReadResult:
    size: int
    digest: bytes
    chunks: list[StoredChunk]
    changed: str | None  # why the file is suspect, if it changed while being read
    content_id: int | None = None  # known already (see Saver.contents_of_batch)


class ReadBatch(list):
    """What read_batch returns: a ReadResult or SkipFile per file, in order."""

    contents_known = False  # the catalog's content ids were filled in (main thread)


# -- stopping and live progress, shared with the readers ---------------------------------
# One anonymous shared page, mapped at import and so inherited by the reader processes
# forked later: byte 0 is the stop flag (set by the first Ctrl-C/SIGTERM; every reader
# checks it between chunks, also inside one big file), then LIVE_SLOTS counters of the
# bytes the readers have read (each process or thread adds to its own slot: progress moves
# while a big file is read, not only when it is recorded).
LIVE_SLOTS = 64
_shared = mmap.mmap(-1, 8 + 8 * LIVE_SLOTS)


class ReadStopped(Exception):
    """The save is stopping: a reader stopped at a chunk boundary."""


def _check_stop() -> None:
    if _shared[0]:
        raise ReadStopped()


def _count_read(nbytes: int) -> None:
    slot = 8 + 8 * (hash((os.getpid(), threading.get_ident())) % LIVE_SLOTS)
    old = int.from_bytes(_shared[slot:slot + 8], "little")
    _shared[slot:slot + 8] = (old + nbytes).to_bytes(8, "little")


def _live_bytes_read() -> int:
    return sum(int.from_bytes(_shared[i:i + 8], "little")
               for i in range(8, 8 + 8 * LIVE_SLOTS, 8))


def _reset_shared(stop: bool = False) -> None:
    _shared[0:1] = b"\x01" if stop else b"\x00"
    if not stop:
        _shared[8:] = bytes(8 * LIVE_SLOTS)


# -- reading (worker threads) ------------------------------------------------------------

_local = threading.local()
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
O_NOATIME = getattr(os, "O_NOATIME", 0)


def open_for_reading(path: bytes) -> int:
    """Open without following symlinks, blocking on FIFOs or touching atime (when allowed)."""
    if O_NOATIME:
        try:
            return os.open(path, OPEN_FLAGS | O_NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership (EPERM): retry without it
    return os.open(path, OPEN_FLAGS)


SMALL_FILE = 1 << 20  # files up to this size (as lstat saw them) are read in one piece
STREAM_BYTES = 16 << 20  # what a bigger file holds in memory while it is read: a window


def in_flight_cost(size: int) -> int:
    """The memory a file being read may hold (max_in_flight_bytes counts these): a small
    file is held whole, a big one streams through a window. Counting a big file's whole size
    made the catalog's thread wait for the two 100 MB files of mixed instead of going on
    with the small ones (24% of its time)."""
    return size if size <= SMALL_FILE else min(size, STREAM_BYTES)


def _chunker(params: ChunkerParams) -> Chunker:
    """This thread's chunker (pyfastcdc objects are not shared between threads)."""
    chunker = getattr(_local, "chunker", None)
    if chunker is None or chunker.params != params:
        from ..chunker import Chunker  # pyfastcdc loads only where a file is read
        chunker = _local.chunker = Chunker(params)
    return chunker


def _open_checked(path: bytes, st: Version) -> int:
    """An fd of PATH, which must still be the regular file lstat saw (type, dev, ino)."""
    try:
        fd = open_for_reading(path)
    except FileNotFoundError:
        raise SkipFile("vanished before it could be read") from None
    except PermissionError:
        raise SkipFile("permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SkipFile("replaced by a symlink since it was listed") from None
        raise SkipFile(e.strerror or str(e)) from None
    try:
        fst = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise SkipFile(e.strerror or str(e)) from None
    if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.ino or fst.st_dev != st.dev:
        os.close(fd)
        raise SkipFile("replaced by another file between lstat and open")
    return fd


def _changed(st: Version, size: int, after: os.stat_result) -> str | None:
    """Why a file read as SIZE bytes, then fstat'ed as AFTER, is suspect; None if it is not."""
    if size != st.size or after.st_size != st.size:
        return f"size changed while being read ({st.size} -> {size} bytes)"
    if after.st_mtime_ns != st.mtime_ns or after.st_ctime_ns != st.ctime_ns:
        return "modified while being read"
    return None


def read_file(path: bytes, st: Version, params: ChunkerParams, store: Store) -> ReadResult:
    """Chunk, hash and store one regular file; SkipFile if it cannot be read safely.

    ST is what lstat said: the open file must be that same regular file (type, dev, ino).
    """
    fd = _open_checked(path, st)
    try:
        return _read_open(fd, st, params, store)
    finally:
        os.close(fd)


def _read_open(fd: int, st: Version, params: ChunkerParams, store: Store,
               stream: bool = False) -> ReadResult:
    """read_file for the open file FD. A small file (as lstat said) is read whole in one
    read() and cut in memory: the same cuts as cut_stream, without its 8 MiB buffer per call
    (most files are small). A big one, one that grew past SMALL_FILE since lstat, or any
    when told to STREAM, is read from its start through cut_stream's bounded window: a log
    file that grew to gigabytes meanwhile is never held whole."""
    chunker = _chunker(params)
    digest = xxhash.xxh3_128()
    chunks = []
    size = 0
    try:
        data = None
        if st.size <= SMALL_FILE and not stream:
            data = read_whole(fd, st.size, SMALL_FILE)
            stream = len(data) > SMALL_FILE
        if stream:
            data = None
            os.lseek(fd, 0, os.SEEK_SET)
        if data is not None:
            _count_read(len(data))
            for view in chunker.cut_buffer(data):
                digest.update(view)
                chunks.append(store.put(view, hashlib.sha256(view).digest()))
                size += len(view)
        else:
            size = _store_stream(chunker.cut_stream(
                os.fdopen(fd, "rb", buffering=0, closefd=False)), digest, chunks, store)
        after = os.fstat(fd)
    except OSError as e:
        raise SkipFile(f"read error: {e.strerror or e}") from None
    return ReadResult(size, digest.digest(), chunks, _changed(st, size, after))


# A big file's chunks are hashed, compressed and written by STORE_THREADS helper threads
# of its reader while the reader reads and cuts on: one 100 MB file is no longer one core's
# work while the other waits (mixed's two 100 MB files come last in find's order). At most
# STORE_AHEAD chunks (4 MiB each at most) wait for them.
STORE_THREADS = 2
STORE_AHEAD = 4
_store_pool: ThreadPoolExecutor | None = None
_store_pool_pid = 0
_store_pool_lock = threading.Lock()


def _new_store_pool_lock() -> None:
    global _store_pool_lock
    _store_pool_lock = threading.Lock()  # a fork's copy may be held by a thread it lacks


os.register_at_fork(after_in_child=_new_store_pool_lock)


def _store_pool_here() -> ThreadPoolExecutor:
    """This process's pool of store threads, made by the first reader to need it. Re-save
    readers are threads that may need it at once: the lock makes one pool, not one each
    (the others left idle, never shut down)."""
    global _store_pool, _store_pool_pid
    with _store_pool_lock:
        if _store_pool is None or _store_pool_pid != os.getpid():  # a fork has no threads
            _store_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
            _store_pool_pid = os.getpid()
        return _store_pool


def _store_stream(views: Iterable[memoryview], digest, chunks: list[StoredChunk],
                  store: Store) -> int:
    """Store the chunks of a stream (appended to CHUNKS in order) and feed DIGEST; the
    number of bytes read."""
    pool = _store_pool_here()
    waiting: collections.deque[Future] = collections.deque()
    size = 0
    try:
        for view in views:
            _check_stop()
            digest.update(view)
            data = bytes(view)  # cut_stream reuses its buffer for the next chunk
            size += len(data)
            _count_read(len(data))
            waiting.append(pool.submit(_put_chunk, store, data))
            if len(waiting) >= STORE_AHEAD:
                chunks.append(waiting.popleft().result())
        while waiting:
            chunks.append(waiting.popleft().result())
    finally:
        for future in waiting:  # an error: let the others end (their temps are pending)
            future.cancel()
        for future in waiting:
            if not future.cancelled():
                future.exception()
    return size


def _put_chunk(store: Store, data: bytes) -> StoredChunk:
    return store.put(data, hashlib.sha256(data).digest())


# A regular file no bigger than the chunker's minimum is one chunk (FastCDC never cuts
# before min_size; an empty file has none). Such files are read, hashed, compressed and
# stored in batches: one pool task, one compressor call and one future per batch instead of
# per file (per-file tasks cost a GIL hand-over at every step: 18% of a first save in futex).
BATCH_FILES = 256
RECORD_BATCH = 256  # recorded items whose catalog rows are inserted together (flush_records)
# Bounds of what the catalog's thread holds, whatever the commit interval: items queued for
# recording (each holds its Version), member rows of the fast path waiting for insert_members.
MAX_QUEUED = 8000
MAX_FAST_MEMBERS = 8192
VETTED_MAX = 65536  # found chunk files verified in this save, remembered so none is read twice
BATCH_BYTES = 8 << 20


def read_batch(jobs: list[tuple[bytes, Version]], params: ChunkerParams,
               store: Store) -> list[ReadResult | SkipFile]:
    """read_file for files of one chunk at most (size <= params.min_size as lstat saw them):
    each file's result or why it was skipped."""
    results = ReadBatch([None] * len(jobs))
    chunks: list[tuple[bytes, bytes, bytes]] = []
    owners: list[int] = []
    limit = max(SMALL_FILE, params.min_size)
    for i, (path, st) in enumerate(jobs):
        _check_stop()
        try:
            fd = _open_checked(path, st)
            try:
                data = read_whole(fd, st.size, limit)
                if len(data) > limit:  # it grew past a small file since lstat: streamed
                    data = None
                    results[i] = _read_open(fd, st, params, store, stream=True)
                else:
                    after = os.fstat(fd)
            except OSError as e:
                raise SkipFile(f"read error: {e.strerror or e}") from None
            finally:
                os.close(fd)
        except SkipFile as e:
            results[i] = e
            continue
        if data is None:
            continue
        _count_read(len(data))
        xxh = xxhash.xxh3_128_digest(data)
        results[i] = ReadResult(len(data), xxh, [], _changed(st, len(data), after))
        if len(data) > params.min_size:  # it grew since lstat: cut it as read_file does
            results[i].chunks.extend(store.put(view, hashlib.sha256(view).digest())
                                     for view in _chunker(params).cut_buffer(data))
        elif data:
            chunks.append((data, hashlib.sha256(data).digest(), xxh))
            owners.append(i)
    for i, stored in zip(owners, store.put_many(chunks), strict=True):
        results[i].chunks.append(stored)
    return results


# -- where files are read ----------------------------------------------------------------
# In threads, a first save of many small files spent its time handing the GIL over: each
# file is ~10 system calls (open, fstat, read, create, write, rename, ...), and a thread
# coming back from one waits for the GIL another holds. Reader processes have no GIL to
# share: on tmpfs, mixed's first save went from 2.36 s to 1.88 s (medians of 3). Forked
# before the repository is opened, so no catalog connection, lock or thread is carried into
# them (SQLite's rule: no fork with an open connection).

READERS_ENV = "BACKSHIFT_READERS"  # "threads": read in threads of the saving process


def reader_pool(workers: int, repo: bytes | None = None, hostname: str = "",
                subset: str = "") -> Executor:
    """WORKERS reader processes, forked now: call it before the repository is opened.

    Threads of this process instead when REPO already holds a save of HOSTNAME/SUBSET: a
    re-save borrows most files, and starting processes (~30 ms: importing multiprocessing,
    forking, copy-on-write faults) cost an unchanged re-save of mixed 20% of its time.
    Threads too with BACKSHIFT_READERS=threads in the environment (for a debugger, and
    for the tests whose fault doubles must see every call)."""
    if os.environ.get(READERS_ENV) == "threads" or not hasattr(os, "fork") \
            or (repo is not None and _series_exists(repo, hostname, subset)):
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


def _series_exists(repo: bytes, hostname: str, subset: str) -> bool:
    """Whether REPO holds a save of HOSTNAME/SUBSET; False when it cannot tell (the save
    itself then reports what is wrong). The catalog is closed again before any fork."""
    from ..catalog import CATALOG_NAME, Catalog
    try:
        cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    except (BackshiftError, OSError):
        return False
    try:
        return cat.has_series(hostname, subset)
    except Exception:  # noqa: BLE001 - an unreadable catalog is the save's to report
        return False
    finally:
        cat.close()


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
    """This reader's detached store of REPO (one per process or thread, kept between tasks)."""
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


def _not_new(result, again: set[bytes]):
    """RESULT (a ReadResult, or a read_batch's list) with the chunks of AGAIN marked not
    new: another reader stored the same bytes first (Store.adopt kept its temp file)."""
    def fix(r):
        if isinstance(r, ReadResult) and any(c.ref.sha256 in again for c in r.chunks):
            r.chunks[:] = [c._replace(new=False) if c.new and c.ref.sha256 in again else c
                           for c in r.chunks]
    if isinstance(result, list):
        for r in result:
            fix(r)
    else:
        fix(result)
    return result


# -- the save ----------------------------------------------------------------------------


@dataclass
class Item:
    """One input name on its way to the catalog."""

    path: bytes
    path_id: int | None  # None until flush_records interns it (a first save)
    version: Version  # content_id filled in when known
    base_version_id: int | None  # an earlier identical version to reuse, if any
    future: Future | None = None
    link_first: Item | None = None  # earlier member of the same hardlink group
    parent_id: int | None = None  # the path id of its directory (None for /)
    index: int = -1  # its place in a read_batch, when read in one
    done: bool = False
    skipped: bool = False


class Saver:
    def __init__(self, repo: Repository, opts: SaveOptions, warn: Warn,
                 progress: Progress | None = None, readers: Executor | None = None) -> None:
        self.repo = repo
        self.readers = readers  # reader_pool(); threads of this process when None
        self.cat = repo.catalog
        self.opts = opts
        self._warn_cb = warn
        self.progress = progress
        self.stats = SaveStats()
        self.owners = Owners()
        self.dir_ids: dict[bytes, int] = {}
        self.hardlinks: dict[tuple[int, int], Item] = {}
        self.queue: collections.deque[Item] = collections.deque()
        self.in_flight_bytes = 0
        self.pool: Executor | None = None
        self._small: list[Item] = []  # small files waiting for their batch to be sent
        self._small_bytes = 0
        self._small_limit = repo.chunker.min_size
        self.stop_signal: int | None = None
        self._save_lock: int | None = None  # lock.hold_save_lock's fd while the save runs
        self.names_seen = 0
        self.notice: Callable[[str], None] = _notice
        # reader tasks handed over whose temp files are not adopted yet: a save that fails
        # removes those of the finished ones (drop_unadopted), whatever became of their items
        self._tasks: set[Future] = set()
        self._handing_over = False  # a hard stop now waits until the task is in _tasks
        self._hard_stop_waiting = False
        self.estimate: int | None = None
        self.started = time.monotonic()
        self._batch_files = 0
        self._batch_bytes = 0
        self._batch_started = time.monotonic()
        self._last_progress = 0.0
        self.previous = PreviousEntries(self.cat)
        self._presence: ContentPresence | None = None
        # member rows of files borrowed by the fast path, inserted in one batch before
        # each commit; with their paths and sizes, for the rare path given twice
        self._members: list[tuple[int, int, int]] = []
        self._member_paths: list[tuple[bytes, int | None]] = []  # size None: directory
        self._warn_lock = threading.Lock()
        self._txn = False
        # recorded items whose version and member rows are still to be inserted (in one
        # batch by flush_records), with the id of a version to reuse (None: a new one)
        self._records: list[tuple[Item, int | None]] = []
        self._xattr_sets: dict[bytes, int] = {}  # attribute set digest -> id
        self._vetted: set[bytes] = set()  # found chunk files verified sound (vet_found)

    def warn(self, msg: str) -> None:
        """Record a per-file problem (thread-safe: the name reader warns from its thread)."""
        with self._warn_lock:
            self.stats.warnings += 1
            self._warn_cb(msg)

    def ensure_txn(self) -> None:
        """Take the catalog's write lock only when there is something to write."""
        if not self._txn:
            self.cat.begin()
            self._txn = True

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        host = socket.gethostname()
        repo_path = self.repo.path
        self.cat.probe_integrity()  # a damaged catalog: refuse before writing anything
        self.cat.begin()
        try:
            dead = [sid for sid, pid in self.cat.running_saves_of_host(host)
                    if not save_alive(repo_path, sid, pid)]
            for sid in dead:
                self.cat.mark_save_interrupted(sid)
            started_ns = time.time_ns()
            self.stats.save_id = self.cat.insert_save(
                self.opts.hostname, self.opts.subset, started_ns, __version__, host,
                os.getpid())
            self.check_roots()
            # held before the row is visible: a 'running' row with a free lock is dead
            self._save_lock = hold_save_lock(repo_path, self.stats.save_id)
        except BaseException:
            self.cat.rollback_quietly()
            raise
        self.cat.commit()
        for sid in dead:
            remove_dead_save_lock(repo_path, sid)
        self.candidates = self.cat.previous_saves_for_borrowing(
            self.opts.hostname, self.opts.subset, self.stats.save_id)
        if self.candidates:
            biggest = max(self.cat.get_save(sid).files for sid, _ in self.candidates)
            self.estimate = biggest or None
        self.legacy_candidates = {sid for sid, _ in self.candidates
                                  if self.cat.is_legacy_save(sid)}
        # saves that recorded no extended attributes: imported ones, those made before the
        # catalog had them (migration 0003)
        before = int(self.cat.get_meta("last_save_without_xattrs") or 0)
        self.attrless = self.legacy_candidates | {sid for sid, _ in self.candidates
                                                  if sid <= before}

    def check_roots(self) -> None:
        """Record the save's root PATHs; warn when they differ from the previous save's of
        the series (two trees in one series: expire's policy would treat them as one)."""
        roots = self.opts.roots
        if roots is None:
            return
        joined = b"\0".join(sorted(roots))
        self.cat.set_save_roots(self.stats.save_id, joined)
        before = self.cat.previous_save_roots(self.opts.hostname, self.opts.subset,
                                              self.stats.save_id)
        if before is not None and before != joined:
            def shown(raw: bytes) -> str:
                return " ".join(os.fsdecode(r) for r in raw.split(b"\0"))
            self.warn(f"series {self.opts.hostname}/{self.opts.subset}: the paths saved "
                      f"changed from {shown(before)} to {shown(joined)}; expire treats "
                      "the series as one (give another --subset to keep them apart)")

    def run(self, paths: Iterable[bytes]) -> SaveStats:
        with _fewer_gc_passes():
            try:
                return self._run(paths)
            finally:
                if self._save_lock is not None:  # the save's final status is committed
                    release_save_lock(self.repo.path, self.stats.save_id, self._save_lock)
                    self._save_lock = None

    def _run(self, paths: Iterable[bytes]) -> SaveStats:
        _reset_shared()
        # the handlers first: a signal before the save row exists ends in the same state
        # as one later (an interrupted save), never in a dead 'running' row (the main loop
        # enters them again: nested, the same handler)
        with _graceful_signals(self):
            return self._run_handled(paths)

    def _run_handled(self, paths: Iterable[bytes]) -> SaveStats:
        self.start()
        pool = self.pool = self.readers or ThreadPoolExecutor(
            max_workers=self.opts.workers, thread_name_prefix="read")
        names = _LocalFeed(paths) if isinstance(paths, Walk) else _Feed(paths)
        if self.candidates:
            self.start_fast_path()
            if self.candidates[0][0] not in self.attrless:  # else read every attribute once
                names = _Unchanged(self, names)
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
                        if self._txn:
                            self.maybe_commit(force=True)
                        self.report_progress()
                        continue
                    for path in batch:
                        if path is _END:
                            done = True
                            break
                        if isinstance(path, _FeedError):
                            raise path.error
                        if self.stop_signal is not None:
                            break
                        self.add(path, pool)
                        self.drain(block=False)
                        self.maybe_commit()
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
                self.discard_empty()
            self.finish(status)  # its flush and commit can fail too: same clean-up
        except BaseException as e:
            pool.shutdown(wait=True, cancel_futures=True)
            self.fail(e)
            if isinstance(e, BrokenExecutor):
                # a reader died (the OOM killer): the pool stopped the others; nobody will
                # hand over the temp files they wrote
                self.repo.store.discard_temps_of(
                    [pid for pid in getattr(pool, "reader_pids", ()) if not pid_alive(pid, None)])
                raise ReaderDied() from None
            raise
        return self.stats

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

    def discard_empty(self) -> None:
        """A save that saved nothing is not recorded at all: as the newest complete save
        of its series, an empty save would be what expire's policy keeps."""
        self.ensure_txn()
        self.cat.delete_save(self.stats.save_id)
        self.cat.commit()
        self._txn = False
        self.stats.status = "discarded"
        if self.names_seen:
            why = f"none of the {self.names_seen:,} names given could be saved (see above)"
        elif self.stats.warnings:
            why = "no name could be saved (see above)"
        else:
            why = "no names came in (an empty list; is the find command right?)"
        raise NothingToSave(why)

    def finish(self, status: str) -> None:
        self.ensure_txn()
        self.flush_records()
        self.insert_members()
        self.repo.store.flush()
        self.write_counters()
        from ..crashpoints import crashpoint
        crashpoint("before_save_complete")
        self.cat.finish_save(self.stats.save_id, status, time.time_ns())
        self.cat.commit()
        self._txn = False
        self.stats.status = status
        problem = self.cat.checkpoint()
        if problem:
            self.warn(f"save {self.stats.save_id} is {status} and restorable; only folding the "
                      f"catalog's write-ahead log into the catalog file failed ({problem}): "
                      "nothing is lost, a later save or expire folds it")
        self.stats.elapsed_s = time.monotonic() - self.started
        self.report_progress(final=True)

    def fail(self, error: BaseException | None = None) -> None:
        """After an error: keep nothing uncommitted, mark the save interrupted if possible
        (not in a catalog found damaged: nothing more is written there)."""
        if self.stats.status == "complete":
            return  # the error came after the final commit: the save stands
        self.drop_unadopted()
        self.repo.store.abandon()
        self.cat.rollback_quietly()
        if catalog_damage(error):
            self.stats.status = "interrupted"
            return
        self._members, self._member_paths = [], []
        self._records = []
        self._txn = False
        try:
            self.cat.begin()
            self.write_counters()
            self.cat.finish_save(self.stats.save_id, "interrupted", time.time_ns())
            self.cat.commit()
        except BackshiftError:
            self.cat.rollback_quietly()
        except Exception:  # the original error matters more than this one
            self.cat.rollback_quietly()
        self.stats.status = "interrupted"

    def drop_unadopted(self) -> None:
        """Remove the temp files of the reader tasks that finished but will not be recorded
        (the readers are shut down already)."""
        for future in self._tasks:
            if getattr(future, "outcome", None) is not None or not future.done() \
                    or future.cancelled() or future.exception() is not None:
                continue
            _result, pending, _seen = future.result()
            self.repo.store.discard(pending)
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

    def write_counters(self) -> None:
        s = self.stats
        self.cat.update_save_counters(
            s.save_id, files=s.files, bytes=s.bytes, bytes_read=s.bytes_read,
            bytes_borrowed=s.bytes_borrowed, new_chunks=s.new_chunks,
            new_bytes_stored=s.new_bytes_stored, warnings=s.warnings)

    def maybe_commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._txn:
            return
        if not force and self._batch_files < self.opts.batch_files \
                and self._batch_bytes < self.opts.batch_bytes \
                and now - self._batch_started < self.opts.batch_seconds:
            return
        self.flush_records()
        self.insert_members()
        self.repo.store.flush()
        self.write_counters()
        self.cat.commit()
        self._txn = False
        self._batch_files = 0
        self._batch_bytes = 0
        self._batch_started = now

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
            self.progress(shown, self.estimate)

    # -- per name -------------------------------------------------------------------------

    def add(self, path: bytes, pool: Executor) -> None:
        self.names_seen += 1
        self.ensure_txn()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.warn(f"{os.fsdecode(path)}: vanished before it could be saved")
            return
        except OSError as e:
            self.warn(f"{os.fsdecode(path)}: cannot lstat: {e.strerror}")
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
                link_target = os.readlink(path)
            except OSError as e:
                self.warn(f"{os.fsdecode(path)}: cannot read symlink: {e.strerror}")
                return
        user, group = self.owners.names(st.st_uid, st.st_gid)
        version = Version(
            mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, user=user, group=group,
            size=st.st_size if ftype == TYPE_FILE else 0, mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino, nlink=st.st_nlink,
            rdev=st.st_rdev, link_target=link_target, content_id=None)
        if self.candidates:  # borrowing looks the path up by its directory's id
            item = Item(path, self.intern(path), version, None)
            up = parent(path)
            item.parent_id = self.intern(up) if up is not None else None
        else:  # a first save: flush_records interns the paths of a batch at once
            item = Item(path, None, version, None)
        if not self.attach_xattrs(item):
            return
        if ftype == TYPE_FILE:
            self.plan_regular(item, st, pool)
        else:
            item.base_version_id = self.reusable_version(item, item.version)
            item.done = True
        self.queue.append(item)

    def attach_xattrs(self, item: Item) -> bool:
        """Give item.version its extended attribute set: the earlier version's when ctime
        is unchanged (setfattr, setfacl and setcap update ctime), without a system call;
        else the file's, read now. False when the file vanished meanwhile (warned)."""
        v = item.version
        for sid, started_ns in self.candidates:
            found = self.previous_version(sid, item)
            if found is None:
                continue
            old = found[1]
            if old.ctime_ns == v.ctime_ns and old.ino == v.ino \
                    and v.ctime_ns < started_ns - RACY_MARGIN_NS and sid not in self.attrless:
                if old.xattrs_id is not None:
                    item.version = v._replace(xattrs_id=old.xattrs_id)
                return True
            break
        try:
            xattrs = read_xattrs(item.path)
        except FileNotFoundError:
            self.warn(f"{os.fsdecode(item.path)}: vanished before it could be saved")
            return False
        except XattrError as e:
            self.warn(f"{os.fsdecode(item.path)}: {e}; saved without them")
            return True
        if xattrs:
            item.version = v._replace(xattrs_id=self.xattr_set_id(xattrs))
        return True

    def xattr_set_id(self, xattrs: XattrSet) -> int:
        """The catalog's id of an attribute set, stored on first sight (sets are few)."""
        digest = set_digest(xattrs)
        set_id = self._xattr_sets.get(digest)
        if set_id is None:
            set_id = self.cat.xattr_set_id(digest, [(n, x, is_text(x)) for n, x in xattrs])
            if len(self._xattr_sets) < 4096:
                self._xattr_sets[digest] = set_id
        return set_id

    def plan_regular(self, item: Item, st: os.stat_result, pool: Executor) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self.hardlinks.get(key)
            if first is not None:
                item.link_first = first
                return
            self.hardlinks[key] = item
        borrowed = self.borrow(item)
        if borrowed:
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
        store = self.repo.store
        item.future = self.hand_over(pool, read_file_task, store.repo, store.zstd_level,
                                     item.path, item.version, self.repo.chunker)

    def send_small(self) -> None:
        """Hand the small files gathered so far to the pool as one read_batch."""
        items = self._small
        if not items:
            return
        self._small = []
        self._small_bytes = 0
        store = self.repo.store
        future = self.hand_over(self.pool, read_batch_task, store.repo, store.zstd_level,
                                [(i.path, i.version) for i in items], self.repo.chunker)
        for i in items:
            i.future = future

    def borrow_unchanged(self, path: bytes, st: os.stat_result) -> bool:
        """The fast path of a re-save: a directory, or a regular file with one link, equal
        in every field to its entry in the latest earlier save (and not racy, its chunks on
        disk) becomes a member row with that entry's version; no Item, no Version. False
        leaves the name to the general path (which also tries the other candidate saves)."""
        up, _, name = path.rpartition(b"/")
        if up != self._fast_dir:
            entries = self._fast_entries = self.entries_of_dir(up or b"/")
            self._fast_dir = up
        else:
            entries = self._fast_entries
        if entries is None:
            return False
        entry = entries.get(name)
        if entry is None:
            return False
        content_id = entry[16]
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if st.st_nlink != 1 or content_id is None:
                return False  # hard links are grouped by the general path
            mtime_ns = st.st_mtime_ns
            ctime_ns = st.st_ctime_ns
            trusted_before = self._fast_trusted_before
            if mtime_ns >= trusted_before or ctime_ns >= trusted_before:
                return False  # racy: may have changed within the timestamp granularity
            size = st.st_size
        elif stat.S_ISDIR(mode):
            # its path id is known whatever changed: its children can take this path too
            # even when the general path records the directory itself (later)
            self.remember_dir(path, entry[0])
            size = 0
            mtime_ns = st.st_mtime_ns
            ctime_ns = st.st_ctime_ns
        else:
            return False
        uid = st.st_uid
        gid = st.st_gid
        user, group = self.owners.names(uid, gid)
        if entry[3:15] != (mode, uid, gid, user, group, size, mtime_ns, ctime_ns,
                           st.st_dev, st.st_ino, st.st_nlink, st.st_rdev):
            return False
        if content_id is not None and not self._presence.whole(content_id, entry[17], entry[18]):
            return False  # a chunk file missing or unsound: the general path reads it afresh
        if not self._txn:
            self.ensure_txn()
        stats = self.stats
        if content_id is None:  # a directory
            self._member_paths.append((path, None))
        else:
            stats.files_borrowed += 1
            stats.bytes_borrowed += size
            stats.bytes += size
            self._member_paths.append((path, size))
        members = self._members
        members.append((stats.save_id, entry[0], entry[2]))
        if len(members) >= MAX_FAST_MEMBERS:
            self.insert_members()  # their contents are durable already: any time will do
        stats.files += 1
        self._fast_files += 1
        if self._fast_files == UNCHANGED_PER_BATCH_FILE:
            self._fast_files = 0
            self._batch_files += 1
        return True

    def start_fast_path(self) -> None:
        """Set up borrow_unchanged and the chunk presence checks of borrowing (a re-save:
        self.candidates is not empty)."""
        sid, started_ns = self.candidates[0]
        self._fast_sid = sid
        self._fast_trusted_before = started_ns - RACY_MARGIN_NS
        self._fast_dir: bytes | None = None
        self._fast_files = 0
        self._fast_entries: dict | None = None
        self._presence = ContentPresence(self.repo.store)

    def entries_of_dir(self, path: bytes) -> dict | None:
        """The latest save's entries of directory PATH; None when it has none (or is too
        big to fetch at once). A path the catalog does not know is new: no entries."""
        parent_id = self.dir_ids.get(path)
        if parent_id is None:  # the first name of a save, or a directory the walk left
            parent_id = self.cat.path_id(sort_key(path))
            if parent_id is None:
                return None
            self.remember_dir(path, parent_id)
        return self.previous.directory(self._fast_sid, parent_id)

    def content_on_disk(self, content_id: int, chunks: tuple[list[str], list[int]]) -> bool:
        """Every chunk of the content has a sound file on disk (checked, not taken from the
        catalog). CHUNKS: their names and stored lengths (entry_chunks)."""
        return self._presence.whole(content_id, chunks[0], chunks[1])

    def insert_members(self) -> None:
        """Insert the fast path's member rows (before each commit, and every MAX_FAST_MEMBERS)."""
        rows, paths = self._members, self._member_paths
        if not rows:
            return
        self._members, self._member_paths = [], []
        for i in self.cat.insert_members(rows):  # a path given twice: count it once
            path, size = paths[i]
            self.warn(f"{os.fsdecode(path)}: given more than once; saved once")
            self.stats.files -= 1
            if size is not None:
                self.stats.files_borrowed -= 1
                self.stats.bytes_borrowed -= size
                self.stats.bytes -= size

    def remember_dir(self, path: bytes, path_id: int) -> None:
        """Cache a path's id for its children (and intern) to find."""
        if len(self.dir_ids) > 100_000:
            self.dir_ids.clear()
        if path.count(b"/") < 64:
            self.dir_ids[path] = path_id

    def borrow(self, item: Item) -> bool:
        """Reuse an earlier save's content for an unchanged file (size, mtime, ctime, inode)."""
        v = item.version
        for sid, started_ns in self.candidates:
            found = self.previous_version(sid, item)
            if found is None:
                continue
            old_id, old, shas = found
            if (old.content_id is None or old.size != v.size or old.ino != v.ino
                    or old.mode != v.mode or not self.same_times(sid, old, v)):
                continue
            if max(v.mtime_ns, v.ctime_ns) >= started_ns - RACY_MARGIN_NS:
                continue  # racy: may have changed within the timestamp granularity
            if shas is None:
                shas = self.cat.chunk_files_of_content(old.content_id)
            if not self.content_on_disk(old.content_id, shas):
                return False  # missing or unsound: read afresh, which stores it again
            if _same_metadata(v, old):  # the usual case: reuse the old version row as is
                item.version = old
                item.base_version_id = old_id
            else:
                item.version = v._replace(content_id=old.content_id)
            item.done = True
            self.stats.files_borrowed += 1
            self.stats.bytes_borrowed += v.size
            return True
        return False

    def same_times(self, sid: int, old: Version, v: Version) -> bool:
        """Equal mtime and ctime. A save imported from backshift 1.x holds the times as the
        original wrote them (repr of the st_mtime float, ~0.2 us resolution): compare the
        current times rounded the same way (legacy.legacy_time_ns), never approximately."""
        if old.mtime_ns == v.mtime_ns and old.ctime_ns == v.ctime_ns:
            return True
        if sid not in self.legacy_candidates:
            return False
        from ..legacy import legacy_time_ns  # decimal: only for imported saves
        return old.mtime_ns == legacy_time_ns(v.mtime_ns) and \
            old.ctime_ns == legacy_time_ns(v.ctime_ns)

    def reusable_version(self, item: Item, v: Version) -> int | None:
        for sid, _ in self.candidates:
            found = self.previous_version(sid, item)
            if found is not None:
                return found[0] if found[1] == v else None
        return None

    def previous_version(self, sid: int, item: Item
                         ) -> tuple[int, Version, tuple[list[str], list[int]] | None] | None:
        """(version id, version, its chunks' names (sha256 hex) and stored lengths or None
        if not fetched yet) of ITEM's path in earlier save SID, if that save holds it."""
        entries = (self.previous.directory(sid, item.parent_id)
                   if item.parent_id is not None else None)
        if entries is None:
            found = self.cat.version_in_save(sid, item.path_id)
            return None if found is None else (found[0], found[1], None)
        entry: Entry | None = entries.get(basename(item.path))
        if entry is None:
            return None
        return entry[2], entry_version(entry), entry_chunks(entry)

    def intern(self, path: bytes) -> int:
        """The path's id, creating it (and its missing parents) on first sight."""
        cached = self.dir_ids.get(path)
        if cached is not None:
            return cached
        up = parent(path)
        parent_id = self.dir_ids.get(up) if up is not None else None
        if parent_id is not None:  # the usual case: its directory was just interned
            pid = None
            if self.candidates:  # a re-save: the earlier save's directory listing knows it
                entries = self.previous.directory(self.candidates[0][0], parent_id)
                if entries is not None:
                    entry = entries.get(basename(path))
                    pid = entry[0] if entry is not None else None
            if pid is None:
                key = sort_key(path)
                pid = self.cat.insert_path_if_new(parent_id, key, basename(path))
                if pid is None:
                    pid = self.cat.path_id(key)
        else:
            pid = self._intern_with_parents(path)
        self.remember_dir(path, pid)
        return pid

    def _intern_with_parents(self, path: bytes) -> int:
        """PATH's id, creating it and its missing ancestors (the slow path of intern)."""
        missing: list[bytes] = []  # this path and its ancestors not yet in the catalog
        parent_id: int | None = None
        cur: bytes | None = path
        while cur is not None:  # a loop, not recursion: paths may be thousands deep
            known = self.dir_ids.get(cur)
            if known is None:
                known = self.cat.path_id(sort_key(cur))
            if known is not None:
                parent_id = known
                break
            missing.append(cur)
            cur = parent(cur)
        pid = parent_id
        for p in reversed(missing):
            pid = self.cat.insert_path(parent_id, sort_key(p), basename(p))
            parent_id = pid
        return pid

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
            self.maybe_commit()

    def record(self, item: Item) -> None:
        self.ensure_txn()
        v = item.version
        if item.future is not None:
            self.in_flight_bytes -= in_flight_cost(v.size)
            try:
                result: ReadResult = self.outcome(item.future)
                if item.index >= 0:  # one of a read_batch
                    if not result.contents_known:
                        self.contents_of_batch(result)
                    result = result[item.index]
                    if isinstance(result, SkipFile):
                        raise result
                if result is _REREAD:
                    result = self.read_here(item)
            except SkipFile as e:
                self.warn(f"{os.fsdecode(item.path)}: skipped: {e}")
                item.skipped = True
                return
            v = self.store_content(v, result)
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
                    v = self.store_content(v, result)
                else:
                    v = item.version
            else:
                v = v._replace(content_id=first.version.content_id, size=first.version.size)
        item.version = v
        version_id = item.base_version_id
        is_file = v.type == TYPE_FILE
        if version_id is None and is_file:
            version_id = self.reusable_version(item, v)
        self._records.append((item, version_id))
        self.stats.files += 1
        if is_file:
            self.stats.bytes += v.size
        self._batch_files += 1
        if len(self._records) >= RECORD_BATCH:
            self.flush_records()

    def outcome(self, future: Future):
        """What a reader task returned, its temp files adopted by the store (once per task:
        a read_batch's future is shared by its files)."""
        out = getattr(future, "outcome", None)
        if out is None:
            result, pending, seen_existing = future.result()
            again = self.repo.store.adopt(pending, seen_existing)
            out = _not_new(result, again) if again else result
            out = future.outcome = self.vetted(out)
            self._tasks.discard(future)
        return out

    def vetted(self, result):
        """RESULT (a ReadResult, or a read_batch's list) with each file that met a damaged
        chunk file replaced by _REREAD: record() reads it again here, storing that chunk
        afresh (see vet_found)."""
        one = not isinstance(result, list)
        bad = self.vet_found([result] if one else result)
        if not bad:
            return result
        if one:
            return _REREAD
        for i, r in enumerate(result):
            if isinstance(r, ReadResult) and any(c.ref.sha256 in bad for c in r.chunks):
                result[i] = _REREAD
        return result

    def vet_found(self, results: list) -> set[bytes]:
        """The chunk files readers took as stored (found on disk, not written) that fail
        verification. A found file is trusted when the catalog records it with that very
        size (the borrow path's test); one the catalog does not know (an orphan: an
        interrupted save's leftover) or records with another size (another valid encoding,
        or damage) is decoded and hashed first. A sound one in another encoding gets its
        size recorded; a damaged one is stored again by the next put() (replace_files):
        never is it taken into this save. Their sha256s."""
        found: dict[bytes, StoredChunk] = {}
        vetted = self._vetted
        for r in results:
            if isinstance(r, ReadResult):
                for c in r.chunks:
                    if c.found and c.ref.sha256 not in vetted:
                        found[c.ref.sha256] = c
        if not found:
            return set()
        store = self.repo.store
        rows = self.cat.chunk_sizes(list(found))
        bad: set[bytes] = set()
        for sha, c in found.items():
            row = rows.get(sha)
            if row is not None and row[1] == c.stored_length or store.is_pending(sha):
                continue
            try:
                size = store.verify_file(sha, c.ref.length)
            except (ChunkCorrupt, ChunkMissing):
                bad.add(sha)
                continue
            if row is not None and row[1] != size:
                self.ensure_txn()
                self.cat.set_stored_length(sha, size)
            if len(vetted) >= VETTED_MAX:
                vetted.clear()
            vetted.add(sha)
        if bad:
            store.replace_files(bad)
        return bad

    def read_here(self, item: Item) -> ReadResult:
        """read_file in this process into the saving store, its found chunk files vetted:
        a damaged one is read a second time, which stores it afresh (SkipFile passes)."""
        store = self.repo.store
        result = read_file(item.path, item.version, self.repo.chunker, store)
        if self.vet_found([result]):
            result = read_file(item.path, item.version, self.repo.chunker, store)
        return result

    def flush_records(self) -> None:
        """Insert the paths, versions and members of the items recorded since the last
        flush, a few statements per batch instead of two or three per file (each statement
        hands the GIL to the readers and waits to take it back). Before every commit: the
        rows join the transaction that makes their contents' chunks durable first."""
        records = self._records
        if not records:
            return
        self._records = []
        self.intern_batch([item for item, _ in records if item.path_id is None])
        versions = self.cat.insert_versions(
            [(item.path_id, item.version) for item, vid in records if vid is None])
        new_ids = iter(versions)
        save_id = self.stats.save_id
        rows = [(save_id, item.path_id, next(new_ids) if vid is None else vid)
                for item, vid in records]
        for i in self.cat.insert_members(rows):  # a path given twice: saved once
            item = records[i][0]
            self.warn(f"{os.fsdecode(item.path)}: given more than once; saved once")
            self.stats.files -= 1
            if item.version.type == TYPE_FILE:
                self.stats.bytes -= item.version.size

    def intern_batch(self, items: list[Item]) -> None:
        """Set the path id of ITEMS (intern for many at once): known paths are looked up in
        one statement, new ones inserted in one with ids given in order. A directory neither
        cached nor in the batch (the first name, or an input order that is not a walk's) is
        interned first on its own."""
        if not items:
            return
        in_batch = {item.path for item in items}
        outside: dict[bytes, int] = {}  # ids of the directories not in the batch
        for path in in_batch:
            up = parent(path)
            if up is not None and up not in in_batch and up not in outside:
                outside[up] = self.intern(up)  # usually cached: its directory
        keys = {p: sort_key(p) for p in in_batch}
        found = self.cat.path_ids(list(keys.values()))
        ids = {p: found.get(k) for p, k in keys.items()}
        next_id = self.cat.next_path_id()  # after intern's inserts above
        new = []
        for item in items:  # in input order: ids as the one-by-one inserts gave them
            path = item.path
            if ids[path] is None:
                ids[path] = next_id
                new.append(path)
                next_id += 1
        rows = []
        for path in new:
            up = parent(path)
            parent_id = None if up is None else ids.get(up) or outside[up]
            rows.append((ids[path], parent_id, keys[path], basename(path)))
        self.cat.insert_paths(rows)
        for item in items:
            item.path_id = ids[item.path]
        for path, pid in ids.items():
            self.remember_dir(path, pid)

    def contents_of_batch(self, batch: ReadBatch) -> None:
        """The content ids of a whole read_batch in a few statements (Catalog.contents_of)."""
        read = [r for r in batch if isinstance(r, ReadResult)]
        if read:
            ids = self.cat.contents_of(
                [(r.digest, r.size, [(c.ref, c.stored_length, c.new) for c in r.chunks])
                 for r in read])
            for r, content_id in zip(read, ids, strict=True):
                r.content_id = content_id
        batch.contents_known = True

    def store_content(self, v: Version, result: ReadResult) -> Version:
        self.stats.files_read += 1
        self.stats.bytes_read += result.size
        self._batch_bytes += result.size
        for c in result.chunks:
            if c.new:
                self.stats.new_chunks += 1
                self.stats.new_bytes_stored += c.stored_length
        if result.content_id is not None:
            return _with_content(v, result.size, result.content_id)
        refs = [c.ref for c in result.chunks]
        content_id = self.cat.content_id(result.digest, result.size, refs)
        if content_id is None:
            content_id = self.cat.insert_content(
                result.digest, result.size, [(c.ref, c.stored_length) for c in result.chunks])
        else:
            for c in result.chunks:  # heal: a re-stored chunk gets its new stored length
                if c.new:
                    self.cat.chunk_id(c.ref, c.stored_length)
        return _with_content(v, result.size, content_id)


_INT64 = 1 << 63


def _fits_catalog(st: os.stat_result) -> bool:
    """Every number of ST fits an SQLite INTEGER (else apsw raises OverflowError when the
    version row is inserted: the whole save failed on one file, e.g. one touched to 2300)."""
    numbers = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_dev, st.st_ino, st.st_rdev,
               st.st_uid, st.st_gid, st.st_nlink)
    return -_INT64 <= min(numbers) and max(numbers) < _INT64  # builtins: no generator per file


def _with_content(v: Version, size: int, content_id: int) -> Version:
    """v._replace(size=SIZE, content_id=CONTENT_ID), without _replace's per-field loop."""
    return Version(v.mode, v.uid, v.gid, v.user, v.group, size, v.mtime_ns, v.ctime_ns, v.dev,
                   v.ino, v.nlink, v.rdev, v.link_target, content_id, v.xattrs_id)


def _same_metadata(a: Version, b: Version) -> bool:
    """Equal in everything but content_id (cheaper than dataclasses.replace + ==)."""
    return (a.mode == b.mode and a.mtime_ns == b.mtime_ns and a.ctime_ns == b.ctime_ns
            and a.size == b.size and a.ino == b.ino and a.dev == b.dev and a.uid == b.uid
            and a.gid == b.gid and a.nlink == b.nlink and a.rdev == b.rdev
            and a.user == b.user and a.group == b.group and a.link_target == b.link_target
            and a.xattrs_id == b.xattrs_id)


class _Unsent:
    """The future of a small file whose batch is still being gathered (never done)."""

    @staticmethod
    def done() -> bool:
        return False


_UNSENT = _Unsent()
_REREAD = object()  # in place of a read result that met a damaged chunk file (Saver.vetted)
_END = object()


class _FeedError:
    def __init__(self, error: BaseException) -> None:
        self.error = error


FEED_BATCH = 256  # names per queue item: a queue hand-off per name cost ~25% of a re-save


class _Feed:
    """Input names handed from the reader thread to the main thread in batches. A batch
    still filling is taken early by get() when input stalls, so names written
    before a pause are saved during the pause. Order is kept: every hand-off, queued or
    taken, is counted under one lock; a partial take happens only with none in transit."""

    def __init__(self, paths: Iterable[bytes]) -> None:
        self.paths = paths
        self.queue: queue.Queue = queue.Queue(maxsize=4096 // FEED_BATCH)
        self.lock = threading.Lock()
        self.pending: list = []
        self.in_transit = 0  # batches taken from pending and not yet in the queue

    def start(self) -> None:
        threading.Thread(target=self.run, args=(self.paths,), daemon=True, name="names").start()

    def run(self, paths: Iterable[bytes]) -> None:
        try:
            for path in paths:
                with self.lock:
                    self.pending.append(path)
                    if len(self.pending) < FEED_BATCH:
                        continue
                    batch, self.pending = self.pending, []
                    self.in_transit += 1
                self._put(batch)
        except BaseException as e:  # handed to the main thread, raised there
            with self.lock:
                self.pending.append(_FeedError(e))
        with self.lock:
            self.pending.append(_END)
            batch, self.pending = self.pending, []
            self.in_transit += 1
        self._put(batch)

    def _put(self, batch: list) -> None:
        self.queue.put(batch)  # may wait for room (never under the lock)
        with self.lock:
            self.in_transit -= 1

    def get(self, timeout: float) -> list:
        """The next batch; a partial one when none came within TIMEOUT; [] if none."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            pass
        with self.lock:
            if self.in_transit or not self.queue.empty():
                return []  # a full batch is on its way: it comes first, take it next time
            batch, self.pending = self.pending, []
        return batch


class _LocalFeed:
    """Names of a walk (walk.Walk), produced by the main thread itself when it asks for the
    next batch. A walk only makes local filesystem calls, so it never stalls the way a pipe
    does; without a helper thread the main thread never waits for the GIL after its own
    lstat and stat calls (an unchanged re-save of mixed spent ~0.45 s of its 0.95 s in
    Saver.run waiting for it)."""

    def __init__(self, paths: Iterable[bytes]) -> None:
        self.names = iter(paths)

    def start(self) -> None:
        pass

    def get(self, timeout: float) -> list:
        batch = list(itertools.islice(self.names, FEED_BATCH))
        if len(batch) < FEED_BATCH:
            batch.append(_END)
        return batch


class _Unchanged:
    """A re-save's feed: the names Saver.borrow_unchanged records (unchanged since the
    latest save) are taken out of each batch, so the main loop only sees the others (its
    per-name steps cost as much again as the fast path itself). Batches of nothing but
    unchanged names are not handed on: the commits and progress are done here meanwhile."""

    def __init__(self, saver: Saver, feed: _Feed | _LocalFeed) -> None:
        self.saver = saver
        self.feed = feed

    def start(self) -> None:
        self.feed.start()

    def get(self, timeout: float) -> list:
        saver = self.saver
        unchanged = saver.borrow_unchanged
        lstat = os.lstat
        while True:
            batch = self.feed.get(timeout)
            rest = []
            for path in batch:
                if path.__class__ is bytes:  # not _END or a _FeedError
                    try:
                        if unchanged(path, lstat(path)):
                            continue
                    except OSError:
                        pass  # add() says what it is
                rest.append(path)
            if rest or not batch or saver.stop_signal is not None:
                return rest
            saver.drain(block=False)
            saver.maybe_commit()
            saver.report_progress()


_early_signals: list[int] = []


def catch_stop_signals() -> Callable[[], None]:
    """Remember SIGINT/SIGTERM from now until a save handles them (its first moments:
    forking readers, opening the repository); returns what restores the old handlers."""
    _early_signals.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, lambda signum, frame: _early_signals.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _early_signals.clear()
    return restore


def _notice(msg: str) -> None:
    os.write(2, msg.encode("utf-8", "replace") + b"\n")  # safe inside a signal handler


class _graceful_signals:
    """First SIGINT/SIGTERM: finish the current file, commit, stop. Second: hard stop."""

    def __init__(self, saver: Saver) -> None:
        self.saver = saver
        self.old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.handle)
            if _early_signals:  # came before this save could handle it (catch_stop_signals)
                self.handle(_early_signals.pop(0), None)
                _early_signals.clear()
        return self

    def handle(self, signum, frame):
        if self.saver.stop_signal is not None:
            self.saver.hard_stop()
            return
        self.saver.stop_signal = signum
        _reset_shared(stop=True)  # the readers stop at their next chunk
        name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "it"
        self.saver.notice(f"backshift: {name}: stopping; committing what is saved so far "
                          f"(send {again} again to stop at once)")

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


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
