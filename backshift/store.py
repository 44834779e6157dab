"""The chunk store: one file per chunk, named by the SHA-256 of its uncompressed bytes.

File format (the original backshift's, so its chunk stores can be imported unread):
b"8\\n" + one zstd frame, or b"1\\n" + the raw bytes when zstd does not shrink the chunk.
Readers also accept b"7\\n" (xz) and b"5\\n" (bz2).

Write protocol (invariant I1 of RELIABILITY.md): a new chunk is compressed, verified by
decompressing it, and written to a temp file beside its final name. Temp files of a batch
are made durable together (syncfs), then renamed, then the directory entries are made
durable, and only then may the catalog commit rows that name them. A crash therefore
leaves temp files or unreferenced chunks, never a referenced chunk that is not on disk.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import secrets
import socket
import threading
import time
from binascii import hexlify
from collections.abc import Callable, Iterable

import xxhash
import zstandard

from . import chunkcodec, diskio
from .chunkcodec import HEADER_RAW, HEADER_ZSTD
from .crashpoints import crashpoint
from .errors import ChunkCorrupt, ChunkMissing, RepositoryIOError
from .model import MAX_CHUNK_LENGTH, ChunkRef, StoredChunk

TEMP_MARK = b".tmp."
CHUNKS_DIR = b"chunks"
RENAME_SPLIT = 256  # a flush with this many new chunks renames them in two threads
READ_HINT_MAX = 64 << 20  # a stored-length hint above this is not believed for one read
# O_NONBLOCK: no effect on a regular file, but a FIFO planted as a chunk file is then
# damage (an empty read) instead of a restore that waits forever for a writer
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def sha256_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def read_whole(fd: int, expected: int, limit: int | None = None) -> bytes:
    """All bytes of the open file FD, which should be EXPECTED bytes long: one read() when
    it is (asking for one byte more and getting exactly EXPECTED means the end is reached);
    a short read is confirmed at EOF by one more read, and a longer file is read on.

    With LIMIT, never more than LIMIT + 1 bytes are read (nor asked for): a result longer
    than LIMIT means the file is, and the caller decides what that means."""
    if limit is not None and expected > limit:
        expected = limit
    data = os.read(fd, expected + 1)
    if len(data) <= expected:
        more = os.read(fd, 1) if len(data) < expected else b""
        if not more:
            return data
        data += more
    parts = [data]
    have = len(data)
    while limit is None or have <= limit:
        block = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit + 1 - have))
        if not block:
            break
        parts.append(block)
        have += len(block)
    return b"".join(parts)


QUARANTINE_DIR = b"quarantine"  # damaged chunk files moved aside (check --repair, a save)
_S_IFMT = 0o170000  # stat.S_IFMT's mask and S_IFREG, compared inline: no call per chunk
_S_IFREG = 0o100000
# With this many chunks pending, a helper thread syncs and renames them ahead of the next
# flush(), which then only waits for it and handles the rest: the renames (~20 us each) and
# syncfs waits of a commit no longer stop the catalog's thread. 256 rather than 1024: the
# catalog's thread then waited 0.35 s instead of 0.6 s in the 12 flushes of mixed.
FLUSH_AHEAD = 256
# A big chunk whose first 64 KiB does not shrink by 3% is stored raw without compressing the
# rest (borg's "auto" compression does the same): zstd spends ~1 ms per MiB of random data
# to find out that it does not compress, the probe ~6% of that. A chunk that starts random
# and compresses further on is stored raw too: a little space for ~0.15 s of mixed's save.
PROBE_MIN = 256 << 10
PROBE_BYTES = 64 << 10
PROBE_RATIO = 0.97


def _collect(errors: list[BaseException], fn, *args) -> None:
    """Run fn in a helper thread, keeping its error for the calling thread to raise."""
    try:
        fn(*args)
    except BaseException as e:
        errors.append(e)


class Store:
    """Reads and writes chunk files under REPO/chunks/xx/."""

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
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pending: dict[bytes, tuple[bytes, bytes]] = {}  # sha -> (temp, final)
        # sha -> bytes of its chunk file, for every chunk placed since the last flush():
        # pending, or renamed ahead (not yet durable under its name until flush's syncfs)
        self._pending_sizes: dict[bytes, int] = {}
        self._ahead: threading.Thread | None = None  # the flush-ahead thread, if one ran
        self._ahead_running = False
        self._in_flush = False  # flush() or abandon() runs: no new flush-ahead meanwhile
        self._ahead_done = 0  # chunks it renamed
        self._ahead_error: RepositoryIOError | None = None
        self._seen_existing = False
        self._linked: set[bytes] = set()  # pending temps that are hard links (import)
        # chunks whose file on disk failed verification: put() stores them again whatever
        # is under their name (the flush's rename replaces it), see replace_files()
        self._replace: set[bytes] = set()
        host = socket.gethostname().encode("ascii", "replace").replace(b"/", b"_")[:32]
        self._temp_tag = TEMP_MARK + host + b"." + str(self.pid).encode() + b"."
        # Temp names end in 8 hex digits: a random start (one getrandom per store, not per
        # chunk: 20,000 of them were 1% of a first save) counting up; see _new_temp.
        self._temp_base = int.from_bytes(secrets.token_bytes(4), "big")
        self._temp_count = itertools.count()

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

    # -- codec ----------------------------------------------------------------------------

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (
                zstandard.ZstdCompressor(level=self.zstd_level),
                zstandard.ZstdDecompressor(),
            )
            self._local.zstd = pair
        return pair

    def encode(self, data: bytes | memoryview, xxh: bytes | None = None) -> bytes:
        """The chunk file body for DATA, verified: what is written decodes back to DATA.

        XXH, when given, is xxh3_128_digest(DATA) (the caller often has it already).
        """
        comp, decomp = self._zstd()
        if len(data) >= PROBE_MIN and \
                len(comp.compress(memoryview(data)[:PROBE_BYTES])) > PROBE_BYTES * PROBE_RATIO:
            return HEADER_RAW + bytes(data)  # its start does not compress: random data
        packed = comp.compress(data)
        if len(packed) >= len(data):
            return HEADER_RAW + bytes(data)
        try:
            back = decomp.decompress(packed, max_output_size=len(data))
        except zstandard.ZstdError:
            back = b""
        _verify(data, back, xxh)
        return HEADER_ZSTD + packed

    def encode_many(self, datas: list[bytes], xxhs: list[bytes]) -> list[bytes]:
        """encode() for many chunks (small files): one compressor call and one decompressor
        call for all of them, each releasing the GIL once instead of once per chunk.

        XXHS[i] is xxh3_128_digest(DATAS[i]). A compressor without the batch calls (or a
        batch the decompressor refuses) is handled chunk by chunk, which names the culprit.
        """
        comp, decomp = self._zstd()
        multi = getattr(comp, "multi_compress_to_buffer", None)
        if multi is None or len(datas) < 2 or not all(datas):
            return [self.encode(d, x) for d, x in zip(datas, xxhs, strict=True)]
        frames = multi(datas)
        packed = [frames[i] for i in range(len(datas))]
        shrunk = [i for i, d in enumerate(datas) if len(packed[i]) < len(d)]
        backs: dict[int, object] = {}
        if shrunk:
            try:
                out = decomp.multi_decompress_to_buffer([packed[i] for i in shrunk])
            except zstandard.ZstdError:
                return [self.encode(d, x) for d, x in zip(datas, xxhs, strict=True)]
            backs = {i: out[n] for n, i in enumerate(shrunk)}
        bodies = []
        for i, data in enumerate(datas):
            back = backs.get(i)
            if back is None:
                bodies.append(HEADER_RAW + data)
                continue
            _verify(data, back, xxhs[i])
            bodies.append(HEADER_ZSTD + packed[i])
        return bodies

    def decode(self, body: bytes) -> bytes:
        """The data of a chunk body; chunkcodec.BodyError when it cannot be decoded."""
        return chunkcodec.decode(body, decompressor=self._zstd()[1])

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
            data = chunkcodec.decode_sized(body, length, self._zstd()[1])
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
            data = chunkcodec.decode(bytes(body), MAX_CHUNK_LENGTH, self._zstd()[1])
        except Exception as e:  # any decoder error means damage, never a crash
            raise ChunkCorrupt(hexname.decode(), f"cannot decompress ({e})") from None
        if sha256_digest(data) != sha256:
            raise ChunkCorrupt(hexname.decode(), "content does not match its name (sha256)")
        return data

    # -- writing --------------------------------------------------------------------------

    def put(self, data: bytes | memoryview, sha256: bytes) -> StoredChunk:
        """Store DATA under SHA256 unless it is there already (or pending in this batch).

        Thread-safe. A new chunk is only a temp file until flush() makes it durable.
        """
        ref = ChunkRef(sha256, len(data))
        with self._lock:
            if sha256 in self._pending_sizes:
                return StoredChunk(ref, self._pending_sizes[sha256], False)
            replace = sha256 in self._replace
        # lstat: a regular file is taken as stored (found: the caller vets it against the
        # catalog); a FIFO, directory or symlink there is damage, replaced by a new file
        size = None if replace else self.found_size(sha256)
        if size is not None:
            # Another process may have renamed it in without its directory entry being
            # durable yet: the next flush syncs once before our catalog names it.
            self._seen_existing = True
            return StoredChunk(ref, size, False, True)
        body = self.encode(data)
        return self._add_new(ref, body)

    def put_many(self, chunks: list[tuple[bytes, bytes, bytes]]) -> list[StoredChunk]:
        """put() for a batch of (data, sha256, xxh3_128_digest(data)): what each did.

        The new ones are compressed and verified together (encode_many); a chunk that
        appears twice is stored once. Thread-safe like put().
        """
        out: list[StoredChunk | None] = [None] * len(chunks)
        with self._lock:
            pending = self._pending_sizes
            for i, (data, sha, _x) in enumerate(chunks):
                size = pending.get(sha)
                if size is not None:
                    out[i] = StoredChunk(ChunkRef(sha, len(data)), size, False)
            replace = set(self._replace) if self._replace else ()
        first: dict[bytes, int] = {}  # sha -> index of the chunk that stores it
        for i, (data, sha, _x) in enumerate(chunks):
            if out[i] is not None or sha in first:
                continue
            size = None if sha in replace else self.found_size(sha)  # see put()
            if size is not None:
                self._seen_existing = True  # see put()
                out[i] = StoredChunk(ChunkRef(sha, len(data)), size, False, True)
                continue
            first[sha] = i
        todo = list(first.values())
        bodies = self.encode_many([chunks[i][0] for i in todo], [chunks[i][2] for i in todo])
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
        final = self.path_for(sha256)
        temp = self._write_new_temp(final, body)
        try:
            crashpoint("after_chunk_tmp_write")
        except BaseException:  # an interrupt before the batch knows the file
            self._discard(temp)
            raise
        with self._lock:
            if sha256 in self._pending_sizes:  # another thread stored it meanwhile
                self._discard(temp)
                return StoredChunk(ref, self._pending_sizes[sha256], False)
            self._pending[sha256] = (temp, final)
            self._pending_sizes[sha256] = len(body)
            self._replace.discard(sha256)
            self._start_ahead()
        return StoredChunk(ref, len(body), True)

    def _temp_name(self, final: bytes) -> bytes:
        """FINAL.tmp.HOST.PID.8HEX: unique in this process (a counter from a random start);
        another process differs in host or pid, and create_temp's O_EXCL catches the rest."""
        n = (self._temp_base + next(self._temp_count)) & 0xFFFFFFFF
        return final + self._temp_tag + b"%08x" % n

    def _write_new_temp(self, final: bytes, body: bytes) -> bytes:
        """A new temp file beside FINAL holding BODY; its name."""
        for _attempt in range(8):
            temp = self._temp_name(final)
            try:
                self._write_temp(temp, body)
            except FileExistsError:  # a name another process took: draw a new start
                self._temp_base = int.from_bytes(secrets.token_bytes(4), "big")
                continue
            return temp
        raise RepositoryIOError(os.fsdecode(final), "cannot find a free temp file name")

    def _write_temp(self, temp: bytes, body: bytes) -> None:
        try:
            fd = diskio.create_temp(temp)
        except FileExistsError:
            raise
        except OSError as e:
            raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
        try:
            diskio.write_all(fd, body)
        except OSError as e:
            diskio.close(fd)
            self._discard(temp)
            raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
        except BaseException:  # an interrupt: nobody else knows the file
            diskio.close(fd)
            self._discard(temp)
            raise
        try:
            diskio.close(fd)
        except BaseException as e:
            self._discard(temp)
            if isinstance(e, OSError):
                raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
            raise

    def _discard(self, temp: bytes) -> None:
        """Remove a temp file; on a full disk where unlink fails, at least free its blocks."""
        try:
            diskio.unlink(temp)
        except OSError:
            try:
                os.truncate(temp, 0)
            except OSError:
                pass

    def replace_files(self, shas: Iterable[bytes]) -> None:
        """Have put() store these chunks again, though a file is under their names: it
        failed verification (Saver.vet_found). The new file replaces it through the usual
        temp + rename, so the name never stops holding a file meanwhile."""
        with self._lock:
            self._replace.update(shas)

    def is_pending(self, sha256: bytes) -> bool:
        """Placed since the last flush (pending, or renamed ahead)."""
        with self._lock:
            return sha256 in self._pending_sizes

    def present(self, sha256: bytes) -> bool:
        """On disk under its final name, or pending in this batch."""
        with self._lock:
            if sha256 in self._pending_sizes:
                return True
        return self.stored_size(sha256) is not None

    def put_body(self, sha256: bytes, body: bytes, link_from: bytes | None = None) -> bool:
        """Add an encoded chunk body the caller has verified (decoded, sha256 = its name)
        to the pending batch; flush() then places it like any other chunk.

        With LINK_FROM (a chunk file of another store with this body), the temp file is a
        hard link to it instead of a copy; where linking is refused (another filesystem,
        protected hardlinks) the body is written. True when it was linked.
        """
        final = self.path_for(sha256)
        temp = self._temp_name(final)
        linked = False
        if link_from is not None:
            try:
                diskio.link(link_from, temp)
                linked = True
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                    raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
        if not linked:
            temp = self._write_new_temp(final, body)
        with self._lock:
            self._pending[sha256] = (temp, final)
            self._pending_sizes[sha256] = len(body)
            if linked:
                self._linked.add(temp)
            self._start_ahead()
        return linked

    def _start_ahead(self) -> None:
        """With the lock held: hand the pending chunks to a flush-ahead thread when there
        are FLUSH_AHEAD of them and none is running. Started here, under the lock, so that
        flush() never sees a thread it cannot join yet (the thread takes the lock only at
        its end)."""
        if len(self._pending) < FLUSH_AHEAD or self._ahead_running or self._ahead_error \
                or self._in_flush or self.detached:
            return
        batch, self._pending = self._pending, {}
        linked, self._linked = self._linked, set()
        self._ahead_running = True
        self._ahead = threading.Thread(target=self._flush_ahead, args=(batch, linked),
                                       name="flush-ahead", daemon=True)
        self._ahead.start()

    def _flush_ahead(self, batch: dict[bytes, tuple[bytes, bytes]], linked: set[bytes]) -> None:
        """Sync, then rename, a batch of temp files (the names are made durable by the
        syncfs of the next flush(), before any commit may name them)."""
        error = None
        try:
            diskio.syncfs(self.root)
            self._rename_all(list(batch.values()), linked)
        except OSError as e:
            self._discard_temps(batch)
            error = RepositoryIOError(os.fsdecode(self.root), e.strerror or str(e))
        except BaseException as e:  # noqa: BLE001 - handed to the thread that flushes
            self._discard_temps(batch)
            error = RepositoryIOError(os.fsdecode(self.root), str(e))
        with self._lock:
            self._ahead_running = False
            self._ahead_error = error
            if error is None:
                self._ahead_done += len(batch)

    def _wait_ahead(self) -> int:
        """Wait for the flush-ahead thread; how many chunks it renamed since the last call.
        Its error, if it failed, is raised here (its temp files are gone already).
        Only with _in_flush set, so that no other flush-ahead starts meanwhile."""
        with self._lock:
            ahead = self._ahead
        if ahead is not None:
            ahead.join()
        with self._lock:
            self._ahead = None
            done, self._ahead_done = self._ahead_done, 0
            error, self._ahead_error = self._ahead_error, None
        if error is not None:
            raise error
        return done

    def _discard_temps(self, batch: dict[bytes, tuple[bytes, bytes]]) -> None:
        for temp, _final in batch.values():
            if os.path.exists(temp):
                self._discard(temp)

    def take_pending(self) -> tuple[list[tuple[bytes, bytes, bytes, int]], bool]:
        """Hand over the temp files written since the last call, as (sha256, temp, final,
        size), and whether a chunk was found on disk meanwhile (see put()): what a reader
        process returns with its results, for the saving process to adopt."""
        with self._lock:
            pending, self._pending = self._pending, {}
            sizes, self._pending_sizes = self._pending_sizes, {}
            seen, self._seen_existing = self._seen_existing, False
            self._linked = set()
        return [(sha, temp, final, sizes[sha]) for sha, (temp, final) in pending.items()], seen

    def adopt(self, pending: list[tuple[bytes, bytes, bytes, int]], seen_existing: bool
              ) -> set[bytes]:
        """Take over temp files another store wrote (take_pending): the next flush() makes
        them durable like this store's own. A chunk pending here already (another reader
        stored the same bytes meanwhile) keeps its first temp file and the second is
        removed; their sha256s are returned."""
        again = []
        with self._lock:
            if seen_existing:
                self._seen_existing = True
            for sha, temp, final, size in pending:
                if sha in self._pending_sizes:
                    again.append((sha, temp))
                    continue
                self._pending[sha] = (temp, final)
                self._pending_sizes[sha] = size
            self._start_ahead()
        for _sha, temp in again:
            self._discard(temp)
        return {sha for sha, _temp in again}

    def discard(self, pending: list[tuple[bytes, bytes, bytes, int]]) -> None:
        """Remove temp files another store wrote that will not be adopted (take_pending)."""
        for _sha, temp, _final, _size in pending:
            self._discard(temp)

    def discard_temps_of(self, pids: Iterable[int]) -> int:
        """Remove the temp files of PIDS, processes of this host that died without handing
        them over (a reader process killed mid-task); how many. Scans every chunk directory:
        for an error path only. The caller leaves out pids alive again (reused):
        lock.pid_alive, which this leaf module may not import."""
        tags = [self._temp_tag[:-len(b"%d." % self.pid)] + b"%d." % pid for pid in pids]
        removed = 0
        if not tags:
            return removed
        for i in range(256):
            for sha, entry in self.chunk_dir(i):
                if sha is None and any(tag in entry.name for tag in tags):
                    self._discard(entry.path)
                    removed += 1
        return removed

    def flush(self) -> int:
        """Make every pending chunk durable under its final name; returns how many.

        Called before each catalog commit that may name these chunks.
        """
        with self._lock:
            self._in_flush = True
        try:
            return self._flush()
        finally:
            with self._lock:
                self._in_flush = False

    def _flush(self) -> int:
        ahead = self._wait_ahead()
        with self._lock:
            batch, self._pending = self._pending, {}
            self._pending_sizes = {}
            linked, self._linked = self._linked, set()
            seen_existing, self._seen_existing = self._seen_existing, False
        if not batch:
            if seen_existing or ahead:
                try:
                    diskio.syncfs(self.root)
                except OSError as e:
                    raise RepositoryIOError(os.fsdecode(self.root), e.strerror or str(e)) from None
            return ahead
        try:
            diskio.syncfs(self.root)
            pairs = list(batch.values())
            if len(pairs) >= RENAME_SPLIT:
                # thousands of renames (small files) cost ~40 us each in the kernel and block
                # the catalog's thread: two threads do them in half the time
                half = len(pairs) // 2
                errors: list[BaseException] = []
                helper = threading.Thread(target=_collect, name="rename", daemon=True,
                                          args=(errors, self._rename_all, pairs[half:], linked))
                helper.start()
                try:
                    self._rename_all(pairs[:half], linked)
                finally:
                    helper.join()
                if errors:
                    raise errors[0]
            else:
                self._rename_all(pairs, linked)
            diskio.syncfs(self.root)
        except OSError as e:
            self._discard_temps(batch)
            raise RepositoryIOError(os.fsdecode(self.root), e.strerror or str(e)) from None
        except BaseException:  # a hard stop (second Ctrl-C): abandon() no longer sees BATCH
            self._discard_temps(batch)
            raise
        return ahead + len(batch)

    def _rename_all(self, pairs: list[tuple[bytes, bytes]], linked: set[bytes]) -> None:
        for temp, final in pairs:
            try:
                diskio.rename(temp, final)
            except IsADirectoryError:  # damage: a directory under a chunk's name
                self._set_aside(final)
                diskio.rename(temp, final)
            crashpoint("after_chunk_rename")
            if temp in linked and os.path.lexists(temp):
                # rename onto another link of the same inode does nothing: drop the temp
                diskio.unlink(temp)

    def abandon(self) -> None:
        """Drop pending temp files (a save that stops with an error)."""
        with self._lock:
            self._in_flush = True
        try:
            try:
                self._wait_ahead()
            except RepositoryIOError:
                pass  # the error that stops the save was (or will be) reported by flush()
            with self._lock:
                batch, self._pending = self._pending, {}
                self._pending_sizes = {}
                self._linked = set()
            for temp, _final in batch.values():
                self._discard(temp)
        finally:
            with self._lock:
                self._in_flush = False

    def _set_aside(self, path: bytes) -> None:
        """Move what is at PATH (a directory where a chunk file belongs) to REPO/quarantine/,
        never deleting it: it may be someone's data put there by mistake."""
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

    def remove(self, sha256: bytes) -> None:
        try:
            diskio.unlink(self.path_for(sha256))
        except FileNotFoundError:
            pass


def _verify(data, back, xxh: bytes | None) -> None:
    """ChunkCorrupt unless BACK (the decompressed body) equals DATA.

    xxh3-128 of both sides instead of `back != data`: comparing bytes with a memoryview goes
    byte by byte (~1 GB/s, 3% of a first save in perf); the hashes run at ~20 GB/s.
    """
    if xxh is None:
        xxh = xxhash.xxh3_128_digest(data)
    if len(back) != len(data) or xxhash.xxh3_128_digest(back) != xxh:
        raise ChunkCorrupt(
            hashlib.sha256(data).hexdigest(), "compressor output does not decompress back"
        )
