"""The tar producer: members from the plan, their data from the chunk store, verified, in
stream order; large chunks read in a small thread pool beside the main thread."""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Iterable
from queue import Empty, SimpleQueue

from .. import pathcodec
from ..errors import ChunkCorrupt, ChunkMissing
from ..xattrs import pax_items
from .tarsparse import SparsePlan, sparse_plan
from .tarstream import (
    BLOCK,
    LNKTYPE,
    REGTYPE,
    ZERO_BLOCK,
    ZEROS,
    TarWriter,
    encode_header,
    encode_header_general,
    encode_sparse_header,
)

LARGE_CHUNK = 256 << 10  # chunks from this length are read in the pool, beside the writing
POOL_CHUNKS = 4  # large chunks handed to the pool and not written yet, at most
HELD_BYTES = 48 << 20  # data (and pool chunks) waiting behind the oldest pool chunk, at most
HELD_ITEMS = 65536  # stream pieces and chunks not yet read that wait, at most
# Why that much: the main thread should not stop while the pool verifies big files, so it
# holds enough small members to stay busy meanwhile, at the cost of a higher peak RSS.


class _Chunks:
    """The chunk rows of the selection's key ranges, taken member by member in key order.

    The plan emits every member that carries data in increasing key order (parents that
    come first are directories), so one streaming query beside it serves them all.
    """

    def __init__(self, catalog, save_id: int, ranges) -> None:
        self.catalog = catalog
        self.save_id = save_id
        self._rows = itertools.chain.from_iterable(
            catalog.chunks_in_key_range(save_id, lo, hi) for lo, hi in ranges)
        self._head = next(self._rows, None)

    def of(self, key: bytes) -> list[tuple[bytes, bytes, int, int]]:
        """(key, sha256, length, stored_length) of KEY's chunks, in order."""
        head = self._head
        rows = self._rows
        while head is not None and head[0] < key:
            head = next(rows, None)
        out = []
        while head is not None and head[0] == key:
            out.append(head)
            head = next(rows, None)
        self._head = head
        return out


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


class _XattrRecords:
    """The pax records of members' extended attribute sets (xattrs.pax_items), a few sets
    kept: most members share a handful of sets."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.sets: dict[int, list] = {}
        self.names: dict = {}  # ACL user and group names, looked up once

    def of(self, set_id: int) -> list[tuple[bytes, bytes]]:
        items = self.sets.get(set_id)
        if items is None:
            items = pax_items(self.catalog.xattrs_of_set(set_id), self.names)
            if len(self.sets) >= 1024:
                self.sets.clear()
            self.sets[set_id] = items
        return items


def write_members(members: Iterable, writer: TarWriter, chunks: _Chunks, store, problems,
                  workers: int = 0, sparse: bool = True,
                  xattrs: _XattrRecords | None = None, digest=None) -> int:
    """Write each planned member (select.Planned) with its data; return the member count.

    A chunk that is missing or damaged is replaced by zeros of its length, so the stream
    stays valid and every member has exactly the size its header declares; each case is
    reported with path and offset. A regular file whose size, content size and chunk
    lengths disagree is catalog damage: the stream stops there with CatalogDamaged (a crafted
    size must not stream zeros until the disk fills). SPARSE: a file with long runs of
    zeros goes out as a GNU sparse 1.0 member (sparse_plan). XATTRS: extended attributes go
    out in pax records, as GNU tar writes them; a hard-link member carries none (its group's
    first member does, as with GNU tar). DIGEST (select.DigestCheck): verified before the
    end-of-archive blocks, which a damaged save's stream never gets.
    """
    count = 0
    producer = Producer(writer, store, problems, workers)
    try:
        for e, h in members:
            extra = None
            if xattrs is not None and e.xattrs_id is not None and h.typeflag != LNKTYPE:
                extra = xattrs.of(e.xattrs_id)
            if h.typeflag == REGTYPE and (h.size or e.content_size):
                rows = chunks.of(e.key) if e.content_id else []
                if not (e.content_size == h.size == (rows[0][2] if len(rows) == 1 else
                                                     sum(row[2] for row in rows))):
                    _check_size(e, h.size, rows, chunks)
                plan = sparse_plan(h.size, rows) if sparse else None
                if plan is not None:
                    producer.put(encode_sparse_header(h._replace(size=plan.stored), h.size,
                                                      extra))
                    producer.sparse(e.key, h.size, rows, plan)
                else:
                    producer.put(encode_header_general(h, None, extra) if extra
                                 else encode_header(h))
                    producer.data(e.key, h.size, rows)
            else:
                producer.put(encode_header_general(h, None, extra) if extra
                             else encode_header(h))
            count += 1
        producer.finish()
    finally:
        producer.close()
    if digest is not None:
        digest.verify()
    writer.finish()
    return count


def _check_size(e, size: int, rows: list, chunks: _Chunks) -> None:
    """CatalogDamaged unless the member's SIZE is its content's and its chunks' (saves
    record them equal: a regular file's size is what was read)."""
    chunk_bytes = sum(row[2] for row in rows)
    if e.content_id is not None and e.content_size == size == chunk_bytes:
        return
    from .select import catalog_damaged

    what = (f"{pathcodec.escape(pathcodec.from_key(e.key))} has size {size:,} but its content "
            + ("is missing" if e.content_id is None else
               f"records {e.content_size:,} bytes in chunks of {chunk_bytes:,} bytes"))
    raise catalog_damaged(chunks.catalog, chunks.save_id, what)


def read_workers() -> int:
    """Threads that read large chunks: two (measured on 2 cores: the main thread plans and
    reads small chunks meanwhile); none on one core, where they could only add switches."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def tar_save(repo, save_id: int, sel, open_out, report, sparse: bool = True,
             xattrs: bool = True) -> object:
    """Write the selection of a save as one pax tar stream; return its Problems.
    XATTRS: with the members' extended attributes and POSIX ACLs (--no-xattrs: without).

    OPEN_OUT() gives the binary file to write to; it is called only once the selection is
    known to be valid (paths in the save, --where accepted), so an error leaves no output.
    """
    from .select import (
        Planner,
        Problems,
        catalog_damaged,
        check_paths_exist,
        digest_check,
        key_ranges,
        literal_globs,
    )

    sel = literal_globs(repo.catalog, save_id, sel)
    check_paths_exist(repo.catalog, save_id, sel.paths)
    problems = Problems(report)
    digest = digest_check(repo.catalog, save_id, sel)
    planner = Planner(repo.catalog, save_id, sel, problems, digest)
    try:
        writer = TarWriter(open_out())
        chunks = _Chunks(repo.catalog, save_id, key_ranges(repo.catalog, sel))
        write_members(planner.members(), writer, chunks, repo.store, problems, read_workers(),
                      sparse, _XattrRecords(repo.catalog) if xattrs else None, digest)
        problems.unmatched = planner.unmatched_globs()
    except (TypeError, OverflowError) as e:
        # a damaged page can hand back a value of another type (NULL or text where an
        # integer belongs): damage, named as such, never a traceback or a wrong member
        raise catalog_damaged(repo.catalog, save_id,
                              f"a member row holds a value of the wrong type ({e})") from e
    finally:
        planner.close()
    return problems
