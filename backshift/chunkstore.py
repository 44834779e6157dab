"""The chunk store interface: what the operations call on a repository's chunk store,
as a typing.Protocol (ChunkStore); no code of a backend lives here.

Two backends: store.Store (chunk files in REPO/chunks/) and objstore.ObjectStore (chunk
objects in an S3 bucket; repo.py picks it when init --chunks recorded one).
tests/unit/test_architecture.py checks that every call the operations make on a store is listed
here, and nothing more, and that both backends have each with the same parameters.

Contract of every backend (the durability invariant): a chunk put since the last
flush() may be read back by no one else, and flush() returns only once every such chunk is
durable under its name, so the catalog commits rows naming chunks only after it; abandon()
drops what was not flushed. Every read is verified (decoded, LENGTH bytes, its sha256 is its
name) and fails with ChunkMissing or ChunkCorrupt, never with another error (but an object
store's service may fail to answer at all: errors.ObjectStore*, exit codes 40-43).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Protocol

from .model import ChunkRef, StoredChunk

# What a detached store (a reader process's) hands over for the saving store to adopt:
# (sha256, temp, final, size) for chunk files. A backend whose put() is durable by the
# time a reader returns (objstore: the reader flushes) hands over nothing.
Handed = tuple[bytes, bytes, bytes, int]


class ChunkEntry(Protocol):
    """One name in a fan-out group of the store (os.DirEntry for chunk files)."""

    name: bytes
    path: bytes

    def stat(self, *, follow_symlinks: bool = ...) -> os.stat_result: ...


class ChunkStore(Protocol):
    """The chunk store of a repository, as ops/ uses it.

    An object store maps it so: put() starts a PUT and flush() waits for every PUT of the
    batch; take_pending/adopt/discard/discard_temps_of hand over nothing (a save's readers
    are threads putting into the saving store); chunk_test and present answer from the
    catalog (no request);
    chunk_dir(fanout) is one LIST of chunks/xx/; quarantine is COPY then DELETE;
    remove_many is one DELETE request of up to 1,000 keys."""

    repo: bytes  # the repository's path: what a reader process opens its own store with
    root: bytes  # the directory of chunk files (import-legacy links into it when it can)
    zstd_level: int  # the compression level of new chunks (a reader's store uses the same)
    read_ahead: int  # chunks a reader (tar, check) should fetch ahead in parallel; 0: inline
    remove_batch: int  # chunks remove_many() takes at once (a DELETE request takes 1,000)

    # -- presence -------------------------------------------------------------------------

    def present(self, sha256: bytes) -> bool:
        """Stored under its name, or pending in this batch."""

    def stored_size(self, sha256: bytes) -> int | None:
        """The size of the stored chunk body; None when it is absent."""

    def is_pending(self, sha256: bytes) -> bool:
        """Put since the last flush()."""

    def chunk_test(self) -> Callable[[str, int], bool]:
        """A test (sha256 in lowercase hex, recorded stored length or 0) -> whether a sound
        body is stored under that name: what a re-save's borrowing asks per chunk."""

    # -- writing: a batch, durable at flush() ---------------------------------------------

    def put(self, data: bytes | memoryview, sha256: bytes) -> StoredChunk:
        """Store DATA under SHA256 unless it is there already; durable after flush()."""

    def put_many(self, chunks: list[tuple[bytes, bytes, bytes]]) -> list[StoredChunk]:
        """put() for a batch of (data, sha256, xxh3_128_digest(data))."""

    def put_body(self, sha256: bytes, body: bytes, link_from: bytes | None = None) -> bool:
        """Add an encoded body the caller has verified; True when LINK_FROM was linked."""

    def replace_files(self, shas: Iterable[bytes]) -> None:
        """Have put() store these chunks again: what is under their names failed to verify."""

    def flush(self) -> int:
        """Make every chunk put since the last flush() durable; how many."""

    def abandon(self) -> None:
        """Drop what was put since the last flush() (a save that stops with an error)."""

    def take_pending(self) -> tuple[list[Handed], bool]:
        """A detached (reader) store's pending chunks, handed over to be adopted."""

    def adopt(self, pending: list[Handed], seen_existing: bool) -> set[bytes]:
        """Take over what another store handed over; the sha256s pending here already."""

    def discard(self, pending: list[Handed]) -> None:
        """Remove what another store handed over that will not be adopted."""

    def discard_temps_of(self, pids: Iterable[int]) -> int:
        """Remove what dead reader processes PIDS of this host left unflushed; how many."""

    # -- reading, verified ----------------------------------------------------------------

    def read(self, ref: ChunkRef, stored_length: int | None = None) -> bytes:
        """The verified bytes of chunk REF."""

    def read_verified(self, sha256: bytes, length: int,
                      stored_length: int | None = None) -> bytes | memoryview:
        """The verified data of chunk SHA256 (LENGTH bytes); thread-safe."""

    def read_orphan(self, sha256: bytes, regular_only: bool = False) -> bytes:
        """The verified data of a chunk no catalog row gives a length."""

    def verify_file(self, sha256: bytes, length: int | None) -> int:
        """Verify the stored chunk SHA256 in place; the size of its body."""

    # -- maintenance ----------------------------------------------------------------------

    def chunk_dir(self, fanout: int) -> list[tuple[bytes | None, ChunkEntry]]:
        """The names of fan-out group FANOUT (sha256[0]): (sha256, entry) for a chunk,
        (None, entry) for anything else (temp files, strays). Groups keep memory flat."""

    def remove_many(self, shas: list[bytes]) -> None:
        """Delete chunks SHAS (at most remove_batch); absent ones are no error."""

    def quarantine(self, sha256: bytes) -> object:
        """Move a damaged chunk aside (never delete it); falsy when it was not there."""
