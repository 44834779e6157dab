"""Chunks in an S3-compatible object store (obstore): the object-store twin of store.Store.

Layout under s3://BUCKET[/PREFIX]: PREFIX/chunks/ab/<sha256 hex> holds a chunk body in the
chunk-file format (chunkcodec), PREFIX/quarantine/<hex>.<ns> a damaged one moved aside,
PREFIX/catalog-copies/<name> the catalog copies. Endpoint and credentials come only from
the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ALLOW_HTTP=true); nothing of them is written anywhere.

Write protocol (the object-store analogue of store.py's sync-then-rename): put() encodes and
verifies a chunk and starts its PUT at once in a bounded pool; flush() waits until every
PUT of the batch is acknowledged and raises if one was not, so the catalog commits rows
only for chunks the service has acknowledged. A PUT is idempotent (the key is the hash of
the content), so a retry after a lost response, or a PUT over an orphan, is harmless.
Every GET is verified: decoded, its sha256 must be its name.

Presence comes from the catalog (the KNOWN callback repo.py gives a writing store), never
from a HEAD: a chunk a committed row names is not sent again, and one no row names (an
orphan of a killed save) is PUT again with a body verified here, never trusted as found.
A save's reader threads put through the saving process's store (live_store).

This module is the chunk store's semantics; its parts live beside it, as mixins of
ObjectStore: objrequests (each request with retries, backoff and error translation),
objcodec (bodies encoded and decoded, both ways verified), objcopies (the catalog copies
and init's probe); s3client is the obstore client under them.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from . import chunkcodec
from .errors import ChunkCorrupt, ChunkMissing
from .model import MAX_CHUNK_LENGTH, ChunkRef, StoredChunk
from .objcodec import VerifiedBodies
from .objcopies import CATALOG_COPIES, BucketCopies
from .objrequests import BACKOFF_S, RETRIES, RetryingRequests
from .s3client import ObstoreClient, RequestFailed, parse_url

CHUNKS = "chunks"
QUARANTINE = "quarantine"
# 16 PUTs in flight, as issue 16 measured (2,000 8 KB PUTs in 0.77 s against SeaweedFS); 4
# and 32 were within noise of it here (docs/objstore.md), a remote service gains more. A
# put() waits while IN_FLIGHT_PER_THREAD x threads are queued: memory stays bounded.
THREADS = 16
IN_FLIGHT_PER_THREAD = 4
# GETs a reader (tar, check --read-data) keeps in flight ahead of its stream: requests wait
# on the network, not the CPU, so many overlap; memory is bounded by this many chunks.
READ_AHEAD = 32
DELETE_BATCH = 1000  # keys in one DeleteObjects request (S3's limit)


# -- the store -----------------------------------------------------------------------------------


def key_for(sha256: bytes) -> str:
    h = sha256.hex()
    return f"{CHUNKS}/{h[:2]}/{h}"


def _sha_of_key(key: str) -> bytes | None:
    """The sha256 a chunk key names, None for anything else (a stray)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != CHUNKS:
        return None
    name = parts[2]
    if len(name) != 64 or not name.startswith(parts[1]) or len(parts[1]) != 2:
        return None
    try:
        sha = bytes.fromhex(name)
    except ValueError:
        return None
    return sha if sha.hex() == name else None


class ObjectEntry:
    """One object of a LIST, as chunkstore.ChunkEntry: NAME (the last part of its key),
    PATH (its key), stat() a regular file of its size."""

    __slots__ = ("name", "path", "size")

    def __init__(self, name: bytes, path: bytes, size: int) -> None:
        self.name = name
        self.path = path
        self.size = size

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat_result((stat.S_IFREG | 0o600, 0, 0, 1, 0, 0, self.size, 0, 0, 0))


_live: dict[tuple[bytes, int], ObjectStore] = {}
_live_lock = threading.Lock()


def live_store(repo: bytes) -> SharedSink | None:
    """The reader's view of the object store this process opened for REPO (a save's), or
    None when the chunks of REPO are not in a bucket here."""
    with _live_lock:
        store = _live.get((repo, os.getpid()))
    return None if store is None else SharedSink(store)


class SharedSink:
    """What a save's reader thread puts chunks through: the saving process's own
    ObjectStore, whose flush() before each commit covers them. A failed reader task must
    not drop the batch of the others: abandon() here does nothing (the save's own error
    handling abandons the whole batch)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.repo = store.repo
        self.zstd_level = store.zstd_level
        self.pid = store.pid

    def put(self, data: bytes | memoryview, sha256: bytes) -> StoredChunk:
        return self.store.put(data, sha256)

    def put_many(self, chunks: list[tuple[bytes, bytes, bytes]]) -> list[StoredChunk]:
        return self.store.put_many(chunks)

    def take_pending(self) -> tuple[list, bool]:
        return [], False

    def abandon(self) -> None:
        pass


class ObjectStore(RetryingRequests, VerifiedBodies, BucketCopies):
    """Reads and writes chunk objects under s3://BUCKET/PREFIX/chunks/xx/ (see the module
    docstring); the same operations as store.Store."""

    read_ahead = READ_AHEAD  # chunks worth reading ahead in parallel (chunkstore)
    remove_batch = DELETE_BATCH

    def __init__(self, url: str, client=None, threads: int = THREADS,
                 retries: int | None = None, backoff_s: float | None = None,
                 zstd_level: int = 3, repo: bytes = b"",
                 known: Callable[[list[bytes]], dict[bytes, int]] | None = None) -> None:
        self.location = parse_url(url)
        # REPO: the local repository (catalog, locks) whose chunks these are; a save's
        # reader threads find this store by it (live_store). KNOWN(shas) -> the stored
        # lengths the catalog records for those of SHAS it names: presence comes from the
        # catalog, never from a HEAD (an unchanged re-save makes no request).
        self.repo = repo
        self.root = os.path.join(repo, b"chunks")  # no such directory: nothing links into it
        self.pid = os.getpid()
        self.known = known
        self._replace: set[bytes] = set()
        self._client = client  # None: made at the first request (the client property)
        self.retries = RETRIES if retries is None else retries  # (read now: tests lower them)
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self.zstd_level = zstd_level
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="put")
        self._slots = threading.BoundedSemaphore(threads * IN_FLIGHT_PER_THREAD)
        self._pending: dict[bytes, tuple[Future, int]] = {}  # sha -> (its PUT, body size)

        if repo:
            with _live_lock:
                _live[(repo, self.pid)] = self

    @property
    def client(self):
        """The obstore client, made at the first request: a save that stores no chunk
        needs it only for its catalog copy, uploaded in a thread beside the local copy's
        fsync (ops/catalog_copy.make_copy), so importing obstore and setting up the client
        (10-40 ms) is no longer on its way."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = ObstoreClient(self.location)
                client = self._client
        return client

    def close(self) -> None:
        with _live_lock:
            if _live.get((self.repo, self.pid)) is self:
                del _live[(self.repo, self.pid)]
        self.abandon()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------

    def put(self, data: bytes | memoryview, sha256: bytes) -> StoredChunk:
        """Start storing DATA under SHA256 (unless pending in this batch already); durable
        only after flush(). No HEAD first: presence comes from the catalog, and a PUT over
        an existing object (an orphan) replaces it with a body verified here."""
        return self._put(data, sha256, None)

    def _put(self, data: bytes | memoryview, sha256: bytes,
             known: dict[bytes, int] | None) -> StoredChunk:
        ref = ChunkRef(sha256, len(data))
        with self._lock:
            pending = self._pending.get(sha256)
        if pending is not None:
            return StoredChunk(ref, pending[1], False)
        if known is None:
            known = self._known([sha256])
        stored = known.get(sha256)
        if stored is not None:  # the catalog names it: stored before that row committed
            return StoredChunk(ref, stored, False)
        return self._submit(ref, self.encode(data))

    def _known(self, shas: list[bytes]) -> dict[bytes, int]:
        """The stored lengths the catalog records for those of SHAS it names ({} without
        a catalog, or for chunks replace_files() named: they are PUT again)."""
        if self.known is None or not shas:
            return {}
        # a stored length of 0: check --repair moved the object aside, store it again
        found = {sha: stored for sha, stored in self.known(shas).items() if stored}
        if self._replace:
            with self._lock:
                for sha in self._replace.intersection(found):
                    del found[sha]
        return found

    def put_many(self, chunks: list[tuple[bytes, bytes, bytes]]) -> list[StoredChunk]:
        """put() for a batch of (data, sha256, xxh3_128(data)), as store.Store.put_many:
        one catalog question for the batch."""
        known = self._known([sha for _data, sha, _xxh in chunks])
        return [self._put(data, sha, known) for data, sha, _xxh in chunks]

    def put_body(self, sha256: bytes, body: bytes, link_from: bytes | None = None) -> bool:
        """Start storing a chunk body the caller has verified (import of chunk files);
        nothing can be linked into a bucket: always False (copied)."""
        with self._lock:
            if sha256 in self._pending:
                return False
        self._submit(ChunkRef(sha256, -1), body)
        return False

    def replace_files(self, shas: Iterable[bytes]) -> None:
        """Have put() store these chunks again though the catalog names them (what is under
        their names failed to verify)."""
        with self._lock:
            self._replace.update(shas)

    def is_pending(self, sha256: bytes) -> bool:
        with self._lock:
            return sha256 in self._pending

    def chunk_test(self) -> Callable[[str, int], bool]:
        """Borrowing asks this of chunks the catalog names: in a bucket that is enough
        (rows commit only after their PUTs were acknowledged); no request per chunk.
        check finds objects lost or damaged since; check --repair records a stored length
        of 0 for one it moved aside, which fails this test (the file is read again)."""
        return lambda _name, stored_length: stored_length != 0  # 0: moved aside (repair)

    # A reader puts straight into the saving store (its threads share this process): no
    # temp files to hand over, and flush() before each commit covers the readers' PUTs.

    def take_pending(self) -> tuple[list, bool]:
        return [], False

    def adopt(self, pending: list, seen_existing: bool) -> set[bytes]:
        return set()

    def discard(self, pending: list) -> None:
        pass

    def discard_temps_of(self, pids: Iterable[int]) -> int:
        return 0

    def _submit(self, ref: ChunkRef, body: bytes) -> StoredChunk:
        self._slots.acquire()  # back-pressure: at most threads x IN_FLIGHT_PER_THREAD queued
        with self._lock:
            pending = self._pending.get(ref.sha256)
            if pending is not None:  # another thread submitted it meanwhile
                self._slots.release()
                return StoredChunk(ref, pending[1], False)
            key = key_for(ref.sha256)
            future = self._pool.submit(self._put_one, key, body)
            self._pending[ref.sha256] = (future, len(body))
        return StoredChunk(ref, len(body), True)

    def _put_one(self, key: str, body: bytes) -> None:
        try:
            self._call("PUT", key, self.client.put, key, body)
        finally:
            self._slots.release()

    def flush(self) -> int:
        """Wait until every PUT since the last flush() is acknowledged; how many. Raises
        the first failure (after its retries): then the batch is not durable and the caller
        must not commit rows that name its chunks. Called before each catalog commit."""
        with self._lock:
            batch, self._pending = self._pending, {}
        error: BaseException | None = None
        for future, _size in batch.values():
            try:
                future.result()
            except BaseException as e:  # wait for all: none may be in flight after a raise
                if error is None:
                    error = e
        if error is not None:
            raise error
        return len(batch)

    def abandon(self) -> None:
        """Drop the pending batch (a save that stops with an error): PUTs not started are
        cancelled, running ones finish (their objects are orphans, harmless)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        for future, _size in batch.values():
            if future.cancel():
                self._slots.release()
        for future, _size in batch.values():
            if not future.cancelled():
                try:
                    future.result()
                except BaseException:  # noqa: BLE001 - the save's own error is reported
                    pass

    # -- reading --------------------------------------------------------------------------------

    def read(self, ref: ChunkRef, stored_length: int | None = None) -> bytes:
        """The verified bytes of a chunk; ChunkMissing or ChunkCorrupt otherwise."""
        data = self.read_verified(ref.sha256, ref.length, stored_length)
        return data if type(data) is bytes else bytes(data)

    def read_verified(self, sha256: bytes, length: int,
                      stored_length: int | None = None) -> bytes | memoryview:
        """The data of chunk SHA256, verified: decoded, LENGTH bytes, and its sha256 is its
        name; ChunkMissing or ChunkCorrupt otherwise. STORED_LENGTH is unused (the GET
        reports the size); accepted for store.Store's signature. Thread-safe."""
        if length > MAX_CHUNK_LENGTH:
            raise ChunkCorrupt(sha256.hex(), f"the catalog gives it {length} bytes, more "
                               f"than any chunk holds ({MAX_CHUNK_LENGTH})")
        return self._verified(sha256, length, self._get_body(sha256, length))

    def read_orphan(self, sha256: bytes, regular_only: bool = False) -> bytes:
        """The verified data of chunk object SHA256 when no catalog row gives its length
        (REGULAR_ONLY: for store.Store's signature; an object is never a FIFO)."""
        return self._orphan_data(sha256, self._get_body(sha256, MAX_CHUNK_LENGTH))

    def verify_file(self, sha256: bytes, length: int | None) -> int:
        """GET and verify chunk object SHA256 (of LENGTH bytes; None: unknown, an
        orphan's); the size of its body. ChunkMissing or ChunkCorrupt otherwise."""
        if length is None:
            body = self._get_body(sha256, MAX_CHUNK_LENGTH)
            self._orphan_data(sha256, body)
            return len(body)
        if length > MAX_CHUNK_LENGTH:
            raise ChunkCorrupt(sha256.hex(), f"the catalog gives it {length} bytes, more "
                               f"than any chunk holds ({MAX_CHUNK_LENGTH})")
        body = self._get_body(sha256, length)
        self._verified(sha256, length, body)
        return len(body)

    def _get_body(self, sha256: bytes, length: int) -> bytes:
        key = key_for(sha256)
        bound = chunkcodec.max_body(length)
        try:
            size, body = self._call("GET", key, self.client.get, key, bound)
        except RequestFailed:  # NOT_FOUND
            raise ChunkMissing(sha256.hex()) from None
        if body is None:
            raise ChunkCorrupt(sha256.hex(), chunkcodec.too_long(size, length))
        return body

    def stored_size(self, sha256: bytes) -> int | None:
        """Size of the chunk object (one HEAD), None when it is absent."""
        key = key_for(sha256)
        return self._call("HEAD", key, self.client.head, key)

    def present(self, sha256: bytes) -> bool:
        """Pending in this batch, or named by the catalog. An object no catalog row names
        (an orphan) is not taken as present: it is PUT again, with a body verified here,
        so an orphan is never trusted unverified."""
        with self._lock:
            if sha256 in self._pending:
                return True
        return sha256 in self._known([sha256])

    # -- maintenance ----------------------------------------------------------------------------

    def iter_chunk_files(self) -> Iterator[tuple[bytes | None, int | str]]:
        """(sha256, size) of every chunk object, from a LIST of PREFIX/chunks/; anything
        else there comes as (None, key). Resumes after the last key on a transient error."""
        for key, size in self._list(CHUNKS + "/"):
            sha = _sha_of_key(key)
            yield (sha, size) if sha is not None else (None, key)

    def chunk_dir(self, fanout: int) -> list[tuple[bytes | None, ObjectEntry]]:
        """The objects under PREFIX/chunks/%02x/ (one LIST): (sha256, entry) for a chunk,
        (None, entry) for anything else (strays); as store.Store.chunk_dir."""
        out: list[tuple[bytes | None, ObjectEntry]] = []
        for key, size in self._list(f"{CHUNKS}/{fanout:02x}/"):
            sha = _sha_of_key(key)
            out.append((sha, ObjectEntry(key.rpartition("/")[2].encode(), key.encode(), size)))
        return out

    def remove(self, sha256: bytes) -> None:
        self.remove_many([sha256])

    def remove_many(self, shas: list[bytes]) -> None:
        """DELETE chunk objects, up to 1,000 a request (S3's DeleteObjects); absent ones
        are no error (S3 answers a DELETE of a missing key with success)."""
        keys = [key_for(s) for s in shas]
        for i in range(0, len(keys), DELETE_BATCH):
            part = keys[i:i + DELETE_BATCH]
            self._call("DELETE", part[0], self.client.delete, part)

    def quarantine(self, sha256: bytes) -> str | None:
        """Move a damaged chunk object to PREFIX/quarantine/<hex>.<ns> (copy, then delete);
        its new key, None when it was not there."""
        src = key_for(sha256)
        dst = f"{QUARANTINE}/{sha256.hex()}.{time.time_ns()}"
        try:
            self._call("COPY", src, self.client.copy, src, dst)
        except RequestFailed:  # NOT_FOUND
            return None
        self._call("DELETE", src, self.client.delete, [src])
        return dst

    def holds_repository(self) -> str:
        """What of a repository is under the prefix already ("chunk objects", "catalog
        copies"), "" when nothing is: one LIST of at most one key each."""
        for prefix, what in ((CHUNKS + "/", "chunk objects"),
                             (CATALOG_COPIES + "/", "catalog copies")):
            for _key in self._list(prefix):
                return what
        return ""
