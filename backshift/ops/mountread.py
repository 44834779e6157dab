"""Reading files of `backshift mount`: chunks fetched, verified and decompressed through a
bounded cache, the next chunks of a sequential reader fetched ahead by worker threads.

A damaged or missing chunk makes the read that needs it fail (EIO, and a line on stderr):
never zeros or other wrong bytes. Chunks of zeros (the holes of a sparse file, as the tar
producer finds them: tarsparse) are never read.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import DataDamaged
from ..model import MAX_CHUNK_LENGTH
from ..store import Store
from .tarsparse import HOLE_STORED_SHIFT, zero_sha

CACHE_BYTES = 64 << 20  # decompressed chunks kept (16 chunks of the 4 MiB maximum)
PREFETCH_CHUNKS = 2  # chunks a sequential reader gets ahead of its reads
PREFETCH_WORKERS = 2
BLOCK = 512
ZEROS = bytes(MAX_CHUNK_LENGTH)


class ChunkCache:
    """Verified chunk data by sha256, at most CACHE_BYTES of it, least recently used out.
    Thread-safe: reads run in worker threads."""

    def __init__(self, store: Store, limit: int = CACHE_BYTES,
                 workers: int = PREFETCH_WORKERS) -> None:
        self.store = store
        self.limit = limit
        self.lock = threading.Lock()
        self.data: OrderedDict[bytes, bytes] = OrderedDict()
        self.size = 0
        self.pending: dict[bytes, Future] = {}
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="prefetch")
        self.reads = 0  # chunk files read (tests count them)
        self.pooled = 0  # ... of them handed to a worker thread

    def get(self, sha: bytes, length: int, stored: int) -> bytes:
        """The chunk's data; ChunkMissing / ChunkCorrupt when it cannot be had."""
        with self.lock:
            data = self.data.get(sha)
            if data is not None:
                self.data.move_to_end(sha)
                return data
            fut = self.pending.get(sha)
        if fut is not None:
            try:
                return fut.result()
            except DataDamaged:
                pass  # read it again here: the error is this read's to report
        return self._load(sha, length, stored)

    def prefetch(self, refs: list[tuple[bytes, int, int]]) -> None:
        started = []
        with self.lock:
            for sha, length, stored in refs:
                if sha not in self.data and sha not in self.pending:
                    fut = self.pool.submit(self._load, sha, length, stored)
                    self.pending[sha] = fut
                    self.pooled += 1
                    started.append((sha, fut))
        for sha, fut in started:  # outside the lock: a done future calls back at once
            fut.add_done_callback(lambda _f, sha=sha: self._done(sha))

    def load_quietly(self, sha: bytes, length: int, stored: int) -> None:
        """Have the chunk in the cache if it can be had; a damaged or missing one is left
        out (the read that needs it fails, and says why)."""
        if sha in self.data or sha in self.pending:
            return
        try:
            self._load(sha, length, stored)
        except DataDamaged:
            pass

    def _done(self, sha: bytes) -> None:
        with self.lock:
            self.pending.pop(sha, None)

    def _load(self, sha: bytes, length: int, stored: int) -> bytes:
        data = self.store.read_verified(sha, length, stored)
        data = data if type(data) is bytes else bytes(data)
        with self.lock:
            self.reads += 1
            if sha not in self.data and length <= self.limit:
                self.data[sha] = data
                self.size += length
                while self.size > self.limit:
                    _, old = self.data.popitem(last=False)
                    self.size -= len(old)
        return data

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class OpenFile:
    """One open regular file: its chunk list and where each chunk starts."""

    def __init__(self, cache: ChunkCache, key: bytes, size: int,
                 chunks: list[tuple[bytes, int, int]], ino: int = 0) -> None:
        self.cache = cache
        self.ino = ino  # its inode in the mount
        self.key = key  # the saved path's key, for messages
        self.size = size
        self.chunks = chunks
        self.starts = []
        offset = 0
        for _sha, length, _stored in chunks:
            self.starts.append(offset)
            offset += length
        self.total = offset  # the chunks' bytes: SIZE unless the catalog is damaged
        self.next_offset = 0  # where a sequential reader reads next

    def read(self, offset: int, size: int) -> bytes:
        """SIZE bytes from OFFSET (fewer at the end of the file); DataDamaged when a chunk
        they need is missing or damaged, or the chunks end before the file does."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if end > self.total:
            raise DataDamaged(f"its chunks hold {self.total} of its {self.size} bytes")
        first = bisect.bisect_right(self.starts, offset) - 1
        pieces = []
        i = first
        while i < len(self.chunks) and self.starts[i] < end:
            data = self._chunk(i)
            lo = max(offset - self.starts[i], 0)
            hi = min(end - self.starts[i], len(data))
            pieces.append(data[lo:hi])
            i += 1
        if (offset == self.next_offset or offset == 0) and i < len(self.chunks):
            self.cache.prefetch([c for c in self.chunks[i:i + PREFETCH_CHUNKS]
                                 if not is_hole(*c)])
        self.next_offset = end
        return pieces[0] if len(pieces) == 1 and type(pieces[0]) is bytes else b"".join(pieces)

    def ready(self, offset: int, size: int) -> bool:
        """Whether the chunks a read needs are all in the cache (or holes): then it costs
        no more than a copy."""
        end = min(offset + size, self.size, self.total)
        i = bisect.bisect_right(self.starts, offset) - 1
        data = self.cache.data
        while 0 <= i < len(self.chunks) and self.starts[i] < end:
            ref = self.chunks[i]
            if ref[0] not in data and not is_hole(*ref):
                return False
            i += 1
        return True

    def _chunk(self, i: int) -> bytes | memoryview:
        sha, length, stored = self.chunks[i]
        if is_hole(sha, length, stored):
            return memoryview(ZEROS)[:length]
        return self.cache.get(sha, length, stored)


def is_hole(sha: bytes, length: int, stored: int) -> bool:
    """A chunk of zeros, known from the catalog alone (as tarsparse decides it)."""
    return (BLOCK <= length <= MAX_CHUNK_LENGTH and stored <= (length >> HOLE_STORED_SHIFT) + 64
            and sha == zero_sha(length))
