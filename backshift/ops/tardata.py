"""The data of tar members: every chunk read from the store and verified, damage replaced
by zeros and reported, in stream order; large chunks read in a small thread pool beside the
main thread."""

from __future__ import annotations

import threading
from collections import deque
from queue import Empty, SimpleQueue

from .. import pathcodec
from ..errors import ChunkCorrupt, ChunkMissing
from .tarsparse import SparsePlan
from .tarstream import BLOCK, ZERO_BLOCK, ZEROS, TarWriter

LARGE_CHUNK = 256 << 10  # chunks from this length are read in the pool, beside the writing
POOL_CHUNKS = 4  # large chunks handed to the pool and not written yet, at most
HELD_BYTES = 48 << 20  # data (and pool chunks) waiting behind the oldest pool chunk, at most
HELD_ITEMS = 65536  # stream pieces and chunks not yet read that wait, at most
# Why that much: the main thread should not stop while the pool verifies big files, so it
# holds enough small members to stay busy meanwhile, at the cost of a higher peak RSS.


class _Job:
    """One call of the pool's function: its result or error once `done()`."""

    __slots__ = ("args", "value", "error", "lock")

    def __init__(self, args: tuple) -> None:
        self.args = args
        self.value = None
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.lock.acquire()  # released by the worker when done

    def done(self) -> bool:
        return not self.lock.locked()

    def result(self):
        with self.lock:
            pass
        if self.error is not None:
            raise self.error
        return self.value


class _ReadPool:
    """A few threads that call FN on jobs in order of submission.

    Not concurrent.futures: that imports logging (~2 ms of every `tar` start) and does
    more per job than needed here.
    """

    def __init__(self, fn, workers: int) -> None:
        self.fn = fn
        self.jobs: SimpleQueue = SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"chunk-read-{i}",
                                         daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, args: tuple) -> _Job:
        job = _Job(args)
        self.jobs.put(job)
        return job

    def _work(self) -> None:
        fn = self.fn
        while (job := self.jobs.get()) is not None:
            try:
                job.value = fn(*job.args)
            except BaseException as e:
                job.error = e
            job.lock.release()

    def close(self) -> None:
        """Drop the jobs not started, let the running ones end, stop the threads."""
        try:
            while True:
                self.jobs.get_nowait()
        except Empty:
            pass
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


class _Pending:
    """A chunk's place in the stream: where its data comes from (the chunk to read in the
    pool, then its _Job; or the data, or the damage found), and how much goes there."""

    __slots__ = ("source", "chunk", "key", "offset", "take", "size")

    def __init__(self, source, chunk, key: bytes, offset: int, take: int, size: int) -> None:
        self.source = source  # None until handed to the pool
        self.chunk = chunk  # (sha256, length, stored_length)
        self.key = key  # the member's (pathcodec.from_key names it in reports)
        self.offset = offset
        self.take = take  # bytes of the member this chunk fills: its data, or zeros
        self.size = size


class Producer:
    """Writes the data of members: every chunk verified, damage replaced by zeros.

    Large chunks are read, decompressed and hashed in a small thread pool (os.read, zstd
    and sha256 release the GIL) while the main thread goes on planning, encoding, reading
    small chunks (cheaper inline than handed over) and writing. What comes after a chunk
    still in the pool waits in `pending`, in stream order, so the stream and the damage
    reports come out exactly as if everything ran in order. Memory stays bounded: at most
    POOL_CHUNKS chunks are in the pool, and the main thread stops to wait for the oldest
    once HELD_BYTES or HELD_ITEMS wait behind it; past a big file's chunks (each waiting
    its turn for the pool, no data yet) it goes on with the members after it.
    """

    def __init__(self, writer: TarWriter, store, problems, workers: int) -> None:
        self.writer = writer
        self.store = store
        self.problems = problems
        self.workers = workers
        # a store that reads ahead (an object store: each read a GET) has every chunk
        # read in the pool, that many at a time
        self.large = 0 if store.read_ahead else LARGE_CHUNK
        self.pool_chunks = store.read_ahead or POOL_CHUNKS
        if store.read_ahead:
            self.workers = store.read_ahead
        self.pool: _ReadPool | None = None
        self.pending: deque = deque()  # stream pieces in order, behind a pool chunk
        self.unsent: deque[_Pending] = deque()  # pool chunks not handed over yet, in order
        self.held = 0  # bytes in pending, counting pool chunks handed over
        self.in_pool = 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def put(self, data: bytes | memoryview) -> None:
        """Stream bytes, after whatever still waits."""
        if self.pending:
            self.pending.append(data)
            self.held += len(data)
            if self.held >= HELD_BYTES or len(self.pending) >= HELD_ITEMS:
                self._drain(False)
        else:
            self.writer.write(data)

    def data(self, key: bytes, size: int, chunks: list) -> None:
        """The SIZE bytes of data of the member at KEY from its CHUNKS, then the padding."""
        self._content(key, size, chunks, None)
        pad = -size % BLOCK
        if pad:
            self.put(ZERO_BLOCK[:pad])

    def sparse(self, key: bytes, size: int, chunks: list, plan: SparsePlan) -> None:
        """The data of a GNU sparse 1.0 member (SIZE: the file's): the map, the data
        regions of the chunks PLAN does not call holes (holes are never read), the padding.
        A damaged data chunk is zeros and a report, as in a plain member."""
        self.put(plan.sparse_map)
        self._content(key, size, chunks, plan.layout)
        pad = -plan.stored % BLOCK
        if pad:
            self.put(ZERO_BLOCK[:pad])

    def _content(self, key: bytes, size: int, chunks: list, layout: list[int] | None) -> None:
        """The SIZE bytes of content of the member at KEY from its CHUNKS; with a LAYOUT
        (SparsePlan.layout), only those of its data regions."""
        done = 0
        read = self.store.read_verified
        for i, (_key, sha, length, stored) in enumerate(chunks):
            if done >= size:
                break
            take = min(max(length, 0), size - done)
            after = 0  # zeros that follow (a data region ends in whole blocks)
            if layout is not None:
                after = layout[i]
                if after < 0:  # a hole: neither read nor written
                    done += take
                    continue
            if length >= self.large and self.workers:
                item = _Pending(None, (sha, length, stored), key, done, take, size)
                self.pending.append(item)
                self.unsent.append(item)
                self._feed()
            else:
                try:
                    source = read(sha, length, stored)
                except (ChunkMissing, ChunkCorrupt) as e:
                    source = e.with_traceback(None)  # no frame cycles held
                else:
                    if not self.pending and len(source) == take:
                        self.writer.write(source)  # the usual case: straight out
                        done += take
                        if after:
                            self.writer.write(ZEROS[:after])
                        continue
                self.pending.append(_Pending(source, None, key, done, take, size))
                self.held += take
            done += take
            if after:
                self.put(ZEROS[:after])
            self._drain(False)
        if done < size:
            self._note(key, f"content ends at {done} of {size} bytes; padded with zeros")
            self._zeros(size - done)

    def finish(self) -> None:
        self._drain(True)

    # -- in stream order --

    def _feed(self) -> None:
        """Hand chunks to the pool, oldest first, while it holds fewer than POOL_CHUNKS."""
        while self.unsent and self.in_pool < self.pool_chunks:
            item = self.unsent.popleft()
            if self.pool is None:
                self.pool = _ReadPool(self.store.read_verified, self.workers)
            item.source = self.pool.submit(item.chunk)
            self.in_pool += 1
            self.held += item.take

    def _note(self, key: bytes, msg: str) -> None:
        if self.pending:
            self.pending.append((key, msg))
        else:
            self._damage(key, msg)

    def _damage(self, key: bytes, msg: str) -> None:
        self.problems.damage(pathcodec.from_key(key), msg)

    def _zeros(self, n: int) -> None:
        while n > 0:
            piece = min(n, len(ZEROS))
            self.put(ZEROS[:piece])
            n -= piece

    def _drain(self, everything: bool) -> None:
        """Write what is ready in front. Wait for the oldest pool chunk when told to, or
        when too much waits behind it."""
        pending, writer = self.pending, self.writer
        while pending:
            item = pending[0]
            if type(item) is _Pending:
                source = item.source
                if source is None:  # not handed over yet (the pool was full): now
                    self._feed()
                    source = item.source
                if type(source) is _Job:
                    if not (everything or source.done() or self.held >= HELD_BYTES
                            or len(pending) >= HELD_ITEMS):
                        return
                    try:
                        source = source.result()
                    except (ChunkMissing, ChunkCorrupt) as e:
                        source = e.with_traceback(None)
                    self.in_pool -= 1
                    pending.popleft()
                    self.held -= item.take
                    self._settle(source, item)
                    self._feed()
                    continue
                pending.popleft()
                self.held -= item.take
                self._settle(source, item)
            elif type(item) is tuple:
                pending.popleft()
                self._damage(*item)
            else:
                pending.popleft()
                self.held -= len(item)
                writer.write(item)

    def _settle(self, source, item: _Pending) -> None:
        if isinstance(source, (ChunkMissing, ChunkCorrupt)):
            # the recorded length is catalog data: never trust it beyond the member's size
            self._damage(item.key, f"{source.message()}; {item.take} zero bytes at "
                                   f"offset {item.offset}")
            self.writer.write_zeros(item.take)
            return
        if len(source) > item.take:
            self._damage(item.key, f"content longer than its declared size {item.size}; cut")
            source = memoryview(source)[:item.take]
        self.writer.write(source)
