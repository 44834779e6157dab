"""The directory chunk store: one file per chunk under REPO/chunks/xx/, named by its sha256.
It owns the layout (fan-out directories, quarantine), presence, verified reads, maintenance.

The directory backend of chunkstore.ChunkStore (objstore.ObjectStore is the bucket one);
a little over 400 lines because the protocol is one interface, kept whole. A chunk file
is a chunkcodec body (the original backshift's format, so its chunk stores can be imported
unread); a new one is a temp file beside its final name until a chunkbatch.ChunkBatch
makes it durable (the durability invariant: never a referenced chunk that is not on disk).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from binascii import hexlify
from collections.abc import Callable, Iterable

from . import chunkcodec, diskio
from .chunkbatch import TEMP_MARK, ChunkBatch, Handed
from .diskio import read_whole
from .errors import ChunkCorrupt, ChunkMissing
from .model import MAX_CHUNK_LENGTH, ChunkRef, StoredChunk

CHUNKS_DIR = b"chunks"
READ_HINT_MAX = 64 << 20  # a stored-length hint above this is not believed for one read
# O_NONBLOCK: no effect on a regular file, but a FIFO planted as a chunk file is then
# damage (an empty read) instead of a restore that waits forever for a writer
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def sha256_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


QUARANTINE_DIR = b"quarantine"  # damaged chunk files moved aside (check --repair, a save)
_S_IFMT = 0o170000  # stat.S_IFMT's mask and S_IFREG, compared inline: no call per chunk
_S_IFREG = 0o100000


class Store:
    """Reads and writes chunk files under REPO/chunks/xx/ (chunkstore.ChunkStore)."""

    read_ahead = 0  # a local read is cheaper inline (tar reads large chunks in its pool)
    remove_batch = 1  # one unlink at a time

    def __init__(self, repo: bytes, zstd_level: int = 3, detached: bool = False) -> None:
        self.repo = repo
        # A detached store (in a reader process) only writes temp files: the saving process
        # takes them over (take_pending -> adopt) and makes them durable; it never flushes.
        self.detached = detached
        self.pid = os.getpid()  # its temp names carry it
        self.root = os.path.join(repo, CHUNKS_DIR)
        self._root_slash = os.path.join(self.root, b"")
        self._root_text = os.fsdecode(self.root)
        self.zstd_level = zstd_level
        self.codec = chunkcodec.Codec(zstd_level)
        self.batch = ChunkBatch(self.root, self._set_aside, detached)
        self._lock = threading.Lock()
        # chunks whose file on disk failed verification: put() stores them again whatever
        # is under their name (the flush's rename replaces it), see replace_files()
        self._replace: set[bytes] = set()

    # -- layout ---------------------------------------------------------------------------

    @staticmethod
    def create_layout(repo: bytes) -> None:
        """Make chunks/00 .. chunks/ff (at init, so that saving never needs a mkdir)."""
        root = os.path.join(repo, CHUNKS_DIR)
        os.mkdir(root, 0o700)
        for i in range(256):
            os.mkdir(os.path.join(root, b"%02x" % i), 0o700)

    def path_for(self, sha256: bytes) -> bytes:
        hexname = sha256.hex().encode()
        return os.path.join(self.root, hexname[:2], hexname)

    # -- reading --------------------------------------------------------------------------

    def stored_size(self, sha256: bytes) -> int | None:
        """Size of the chunk file, None when it is absent."""
        try:
            return os.stat(self.path_for(sha256)).st_size
        except FileNotFoundError:
            return None

    def found_size(self, sha256: bytes) -> int | None:
        """Size of the chunk file when it is a regular file (lstat: a symlink is never
        followed, a FIFO never opened); None when absent or anything else (a FIFO, a
        directory, a symlink: damage, which a new chunk file replaces)."""
        try:
            st = os.lstat(self.path_for(sha256))
        except OSError:
            return None
        return st.st_size if st.st_mode & _S_IFMT == _S_IFREG else None

    def chunk_test(self) -> Callable[[str, int], bool]:
        """A test of whether a chunk, named by its sha256 in lowercase hex, has a sound file
        under its final name: a regular file (not a symlink) of its recorded stored length
        (0: unknown, any size). One lstat per call: truncated files, garbage of another
        size, FIFOs, directories and symlinks all fail it, and the caller reads the source
        again (a listing of the store, cheaper per name, could not see sizes)."""
        root = self._root_text

        def sound(name: str, stored_length: int) -> bool:
            try:
                st = os.lstat(f"{root}/{name[:2]}/{name}")
            except OSError:
                return False
            return st.st_mode & _S_IFMT == _S_IFREG and (
                not stored_length or st.st_size == stored_length)
        return sound

    def read(self, ref: ChunkRef, stored_length: int | None = None) -> bytes:
        """The verified bytes of a chunk; ChunkMissing or ChunkCorrupt otherwise."""
        data = self.read_verified(ref.sha256, ref.length, stored_length)
        return data if type(data) is bytes else bytes(data)

    def read_verified(self, sha256: bytes, length: int,
                      stored_length: int | None = None) -> bytes | memoryview:
        """The data of chunk SHA256, verified: decoded, LENGTH bytes, and its sha256 is its
        name; ChunkMissing or ChunkCorrupt otherwise. A raw body's data comes as a view of
        the file's bytes (no copy). Thread-safe.

        STORED_LENGTH, the catalog's size of the chunk file, is only a hint: with it the
        whole file is one open, one read and one close. No more than the longest body a
        LENGTH-byte chunk can have (chunkcodec.max_body) is ever read: a longer file is
        damage, found without reading it (a 4 GiB file must not fill the memory).
        """
        hexname = hexlify(sha256)
        if length > MAX_CHUNK_LENGTH:  # a damaged or hostile catalog: nothing is read
            raise ChunkCorrupt(hexname.decode(), f"the catalog gives it {length} bytes, more "
                               f"than any chunk holds ({MAX_CHUNK_LENGTH})")
        return self._verified(sha256, hexname, self._read_body(hexname, length, stored_length),
                              length)

    def _verified(self, sha256: bytes, hexname: bytes, body: bytes,
                  length: int) -> bytes | memoryview:
        """The data of BODY, the chunk file of SHA256 (LENGTH bytes), verified."""
        try:
            data = chunkcodec.decode_sized(body, length, self.codec.decompressor())
        except chunkcodec.WrongSize as e:
            raise ChunkCorrupt(hexname.decode(), f"length {e.size}, expected {length}") from None
        except Exception as e:  # any decoder error means damage, never a crash
            raise ChunkCorrupt(hexname.decode(), f"cannot decompress ({e})") from None
        if len(data) != length:
            raise ChunkCorrupt(hexname.decode(), f"length {len(data)}, expected {length}")
        if sha256_digest(data) != sha256:
            raise ChunkCorrupt(hexname.decode(), "content does not match its name (sha256)")
        return data

    def _read_body(self, hexname: bytes, length: int, stored_length: int | None,
                   regular_only: bool = False) -> bytes:
        """The body of chunk file HEXNAME, of a chunk of at most LENGTH bytes: one open, one
        read, one close, never more than chunkcodec.max_body(LENGTH) bytes (STORED_LENGTH:
        see read_verified). ChunkMissing or ChunkCorrupt otherwise.

        REGULAR_ONLY: anything but a regular file is damage, found by lstat before any
        open (a FIFO is never opened, a symlink never followed)."""
        path = self._root_slash + hexname[:2] + b"/" + hexname
        flags = _O_READ
        if regular_only:
            flags |= os.O_NOFOLLOW
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise ChunkMissing(hexname.decode()) from None
            except OSError as e:
                raise ChunkCorrupt(hexname.decode(), e.strerror or str(e)) from None
            if st.st_mode & _S_IFMT != _S_IFREG:
                raise ChunkCorrupt(hexname.decode(), "not a regular file")
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise ChunkMissing(hexname.decode()) from None
        except OSError as e:
            raise ChunkCorrupt(hexname.decode(), e.strerror or str(e)) from None
        bound = chunkcodec.max_body(length)
        try:
            if regular_only and os.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
                raise ChunkCorrupt(hexname.decode(), "not a regular file")  # swapped since
            if stored_length is None or not 0 <= stored_length <= READ_HINT_MAX \
                    or stored_length > bound:
                stored_length = os.fstat(fd).st_size  # no hint, or one not to be believed
            body = read_whole(fd, stored_length, bound) if stored_length <= bound else None
            if body is None or len(body) > bound:
                raise ChunkCorrupt(hexname.decode(), chunkcodec.too_long(
                    max(os.fstat(fd).st_size, bound + 1), length))
        except OSError as e:
            raise ChunkCorrupt(hexname.decode(), e.strerror or str(e)) from None
        finally:
            os.close(fd)
        return body

    def verify_file(self, sha256: bytes, length: int | None) -> int:
        """Verify chunk file SHA256 in place, as a hint requires (its size differs from the
        catalog's, or no catalog row names it): a regular file (lstat first: a FIFO is never
        opened, a symlink never followed) whose body decodes to LENGTH bytes (None: unknown,
        an orphan's) and whose sha256 is its name. The size of its body; ChunkMissing or
        ChunkCorrupt otherwise."""
        if length is None:
            body = self._read_body(hexlify(sha256), MAX_CHUNK_LENGTH, None, regular_only=True)
            self._verified_orphan(sha256, body)
            return len(body)
        if length > MAX_CHUNK_LENGTH:
            raise ChunkCorrupt(sha256.hex(), f"the catalog gives it {length} bytes, more "
                               f"than any chunk holds ({MAX_CHUNK_LENGTH})")
        hexname = hexlify(sha256)
        body = self._read_body(hexname, length, None, regular_only=True)
        self._verified(sha256, hexname, body, length)
        return len(body)

    def read_orphan(self, sha256: bytes, regular_only: bool = False) -> bytes:
        """The verified data of chunk file SHA256 when no catalog row gives its length (an
        orphan: an interrupted save's leftover): at most max_body(MAX_CHUNK_LENGTH) bytes
        read, decoded, and its sha256 must be its name. ChunkMissing or ChunkCorrupt."""
        body = self._read_body(hexlify(sha256), MAX_CHUNK_LENGTH, None, regular_only)
        return self._verified_orphan(sha256, body)

    def _verified_orphan(self, sha256: bytes, body: bytes) -> bytes:
        hexname = hexlify(sha256)
        try:
            data = chunkcodec.decode(bytes(body), MAX_CHUNK_LENGTH, self.codec.decompressor())
        except Exception as e:  # any decoder error means damage, never a crash
            raise ChunkCorrupt(hexname.decode(), f"cannot decompress ({e})") from None
        if sha256_digest(data) != sha256:
            raise ChunkCorrupt(hexname.decode(), "content does not match its name (sha256)")
        return data

    # -- writing --------------------------------------------------------------------------

    def _encode(self, data: bytes | memoryview) -> bytes:
        try:
            return self.codec.encode(data)
        except chunkcodec.RoundTripFailed as e:  # damage: nothing of it is stored
            raise ChunkCorrupt(e.name, e.why) from None

    def put(self, data: bytes | memoryview, sha256: bytes) -> StoredChunk:
        """Store DATA under SHA256 unless it is there already (or pending in this batch).

        Thread-safe. A new chunk is only a temp file until flush() makes it durable.
        """
        ref = ChunkRef(sha256, len(data))
        pending = self.batch.size_of(sha256)
        if pending is not None:
            return StoredChunk(ref, pending, False)
        replace = False
        if self._replace:  # empty but after a vet found damage: no lock taken per chunk
            with self._lock:
                replace = sha256 in self._replace
        # lstat: a regular file is taken as stored (found: the caller vets it against the
        # catalog); a FIFO, directory or symlink there is damage, replaced by a new file
        size = None if replace else self.found_size(sha256)
        if size is not None:
            # Another process may have renamed it in without its directory entry being
            # durable yet: the next flush syncs once before our catalog names it.
            self.batch.note_existing()
            return StoredChunk(ref, size, False, True)
        return self._add_new(ref, self._encode(data))

    def put_many(self, chunks: list[tuple[bytes, bytes, bytes]]) -> list[StoredChunk]:
        """put() for a batch of (data, sha256, xxh3_128_digest(data)): what each did.

        The new ones are compressed and verified together (encode_many); a chunk that
        appears twice is stored once. Thread-safe like put().
        """
        out: list[StoredChunk | None] = [None] * len(chunks)
        for i, size in enumerate(self.batch.sizes_of([sha for _d, sha, _x in chunks])):
            if size is not None:
                out[i] = StoredChunk(ChunkRef(chunks[i][1], len(chunks[i][0])), size, False)
        replace: set[bytes] | tuple = ()
        if self._replace:  # see put()
            with self._lock:
                replace = set(self._replace)
        first: dict[bytes, int] = {}  # sha -> index of the chunk that stores it
        for i, (data, sha, _x) in enumerate(chunks):
            if out[i] is not None or sha in first:
                continue
            size = None if sha in replace else self.found_size(sha)  # see put()
            if size is not None:
                self.batch.note_existing()  # see put()
                out[i] = StoredChunk(ChunkRef(sha, len(data)), size, False, True)
                continue
            first[sha] = i
        todo = list(first.values())
        try:
            bodies = self.codec.encode_many([chunks[i][0] for i in todo],
                                            [chunks[i][2] for i in todo])
        except chunkcodec.RoundTripFailed as e:  # see _encode
            raise ChunkCorrupt(e.name, e.why) from None
        for i, body in zip(todo, bodies, strict=True):
            data, sha, _x = chunks[i]
            out[i] = self._add_new(ChunkRef(sha, len(data)), body)
        for i, (data, sha, _x) in enumerate(chunks):
            if out[i] is None:  # the same bytes earlier in this batch
                out[i] = StoredChunk(ChunkRef(sha, len(data)), out[first[sha]].stored_length,
                                     False)
        return out  # type: ignore[return-value]

    def _add_new(self, ref: ChunkRef, body: bytes) -> StoredChunk:
        """Write BODY to a temp file and add it to the pending batch (or drop it when
        another thread added the same chunk meanwhile)."""
        sha256 = ref.sha256
        size = self.batch.add(sha256, self.path_for(sha256), body)
        if size is not None:  # another thread stored it meanwhile
            return StoredChunk(ref, size, False)
        with self._lock:
            self._replace.discard(sha256)
        return StoredChunk(ref, len(body), True)

    def put_body(self, sha256: bytes, body: bytes, link_from: bytes | None = None) -> bool:
        """Add an encoded chunk body the caller has verified (decoded, sha256 = its name)
        to the pending batch; flush() then places it like any other chunk.

        With LINK_FROM (a chunk file of another store with this body), the temp file is a
        hard link to it instead of a copy; where linking is refused (another filesystem,
        protected hardlinks) the body is written. True when it was linked.
        """
        return self.batch.add_link(sha256, self.path_for(sha256), body, link_from)

    def replace_files(self, shas: Iterable[bytes]) -> None:
        """Have put() store these chunks again, though a file is under their names: it
        failed verification (Saver.vet_found). The new file replaces it through the usual
        temp + rename, so the name never stops holding a file meanwhile."""
        with self._lock:
            self._replace.update(shas)

    def is_pending(self, sha256: bytes) -> bool:
        """Placed since the last flush (pending, or renamed ahead)."""
        return self.batch.size_of(sha256) is not None

    def present(self, sha256: bytes) -> bool:
        """On disk under its final name, or pending in this batch."""
        if self.batch.size_of(sha256) is not None:
            return True
        return self.stored_size(sha256) is not None

    # -- the batch (chunkbatch.ChunkBatch: temp files, flush-ahead, handing over) ---------

    def flush(self) -> int:
        """Make every pending chunk durable under its final name (before each catalog
        commit that may name them); how many."""
        return self.batch.flush()

    def abandon(self) -> None:
        """Drop pending temp files (a save that stops with an error)."""
        self.batch.abandon()

    def take_pending(self) -> tuple[list[Handed], bool]:
        """Hand over the temp files written since the last call (ChunkBatch.take): what a
        reader process returns with its results, for the saving process to adopt."""
        return self.batch.take()

    def adopt(self, pending: list[Handed], seen_existing: bool) -> set[bytes]:
        """Take over temp files another store wrote (take_pending); the sha256s pending
        here already, whose second temp file is removed (ChunkBatch.adopt)."""
        return self.batch.adopt(pending, seen_existing)

    def discard(self, pending: list[Handed]) -> None:
        """Remove temp files another store wrote that will not be adopted (take_pending)."""
        self.batch.discard(pending)

    def discard_temps_of(self, pids: Iterable[int]) -> int:
        """Remove the temp files of PIDS, processes of this host that died without handing
        them over (a reader process killed mid-task); how many. Scans every chunk directory:
        for an error path only. The caller leaves out pids alive again (reused):
        lock.pid_alive, which this leaf module may not import."""
        tags = self.batch.temp_tags_of(pids)
        removed = 0
        if not tags:
            return removed
        for i in range(256):
            for sha, entry in self.chunk_dir(i):
                if sha is None and any(tag in entry.name for tag in tags):
                    self.batch.discard_file(entry.path)
                    removed += 1
        return removed

    def _set_aside(self, path: bytes) -> None:
        """Move what is at PATH (a damaged chunk file, or a directory where one belongs) to
        REPO/quarantine/, never deleting it: it may be someone's data put there by mistake."""
        qdir = os.path.join(self.repo, QUARANTINE_DIR)
        os.makedirs(qdir, mode=0o700, exist_ok=True)
        os.rename(path, os.path.join(qdir, b"%s.%d" % (os.path.basename(path), time.time_ns())))

    # -- maintenance ----------------------------------------------------------------------

    def iter_chunk_files(self):
        """(sha256, size) of every final-name chunk file, and temp files as (None, path)."""
        for i in range(256):
            for sha, entry in self.chunk_dir(i):
                if sha is None:
                    yield None, entry.path
                else:
                    yield sha, entry.stat(follow_symlinks=False).st_size

    def chunk_dir(self, fanout: int) -> list[tuple[bytes | None, os.DirEntry]]:
        """The entries of chunks/%02x: (sha256, entry) for a chunk file, (None, entry) for
        anything else (temp files, strays). No stat: callers stat what they need.

        A chunk file is a name path_for() gives: lowercase hex starting with this
        directory's byte. Anything else (a copy in the wrong directory, upper case) is a
        stray: taken for a chunk, expire unlinked path_for(its sha256), the real chunk."""
        out = []
        prefix = b"%02x" % fanout
        try:
            entries = os.scandir(os.path.join(self.root, prefix))
        except FileNotFoundError:
            return out
        with entries:
            for e in entries:
                name = e.name
                sha = None
                if len(name) == 64 and name.startswith(prefix) and TEMP_MARK not in name:
                    try:
                        sha = bytes.fromhex(name.decode())
                    except ValueError:
                        pass
                    else:
                        if sha.hex().encode() != name:
                            sha = None  # upper case: not a name path_for() gives
                out.append((sha, e))
        return out

    def quarantine(self, sha256: bytes) -> bool:
        """Move chunk file SHA256 to REPO/quarantine/ (check --repair): the next save of the
        same data stores it afresh. False when there was no file to move."""
        try:
            self._set_aside(self.path_for(sha256))
        except FileNotFoundError:
            return False
        return True

    def remove(self, sha256: bytes) -> None:
        try:
            diskio.unlink(self.path_for(sha256))
        except FileNotFoundError:
            pass

    def remove_many(self, shas: list[bytes]) -> None:
        for sha in shas:
            self.remove(sha)
