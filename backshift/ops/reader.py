"""Reading one file for a save: open it checked, chunk, hash, compress, put its chunks.

The client half's work, done in reader processes or threads (ops/readers.py): the chunks
go to a chunk sink (the Store's put/put_many: locally a detached store writing temp files
the session adopts), never to the catalog. Also the page the readers share with the saving
process (the stop flag and the live bytes-read counters).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mmap
import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from .. import longpath
from ..diskio import read_whole
from ..longpath import PATH_MAX
from ..model import ChunkerParams, StoredChunk, Version
from ..store import Store

if TYPE_CHECKING:
    from ..chunker import Chunker

class SkipFile(Exception):
    """A file that could not be saved; the message says why (becomes a warning)."""


@dataclass
class ReadResult:
    size: int
    digest: bytes
    chunks: list[StoredChunk]
    changed: str | None  # why the file is suspect, if it changed while being read
    content_id: int | None = None  # known already (see SaveSession.contents_of_batch)


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
    """Open without following symlinks, blocking on FIFOs or touching atime (when allowed).
    A path beyond PATH_MAX is opened relative to its directory's fd (openat)."""
    opener = os.open if len(path) < PATH_MAX else longpath.open_file
    if O_NOATIME:
        try:
            return opener(path, OPEN_FLAGS | O_NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership (EPERM): retry without it
    return opener(path, OPEN_FLAGS)


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
