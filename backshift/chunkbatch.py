"""The durable batch: files written under temp names, then synced, renamed, synced again.

It knows only (temp, final) path pairs and the syscalls (through diskio): no chunk naming,
no layout. The durability invariant: the temp files of a batch are made durable
together (syncfs), then renamed to their final names, then the names are made durable, and
only then may the caller commit anything that names them. A crash therefore leaves temp
files or unreferenced final files, never a committed name without its file.

Each entry carries a KEY (the store uses the chunk's sha256; the batch never interprets it)
so that a caller can ask whether something is in the batch, and a size (the file's bytes).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable

from . import diskio
from .crashpoints import crashpoint
from .errors import RepositoryIOError

TEMP_MARK = b".tmp."
RENAME_SPLIT = 256  # a flush with this many new files renames them in two threads
# With this many files pending, a helper thread syncs and renames them ahead of the next
# flush(), which then only waits for it and handles the rest: the renames (~20 us each) and
# syncfs waits of a commit no longer stop the catalog's thread. 256 rather than 1024: the
# catalog's thread then waited 0.35 s instead of 0.6 s in the 12 flushes of mixed.
FLUSH_AHEAD = 256

# (key, temp, final, size): a temp file handed from one batch to another (take -> adopt)
Handed = tuple[bytes, bytes, bytes, int]


def _collect(errors: list[BaseException], fn, *args) -> None:
    """Run fn in a helper thread, keeping its error for the calling thread to raise."""
    try:
        fn(*args)
    except BaseException as e:
        errors.append(e)


class ChunkBatch:
    """Temp files pending since the last flush(), made durable under their final names by it.

    SYNC_ROOT: a directory on the filesystem of every final name (syncfs target, and the
    path errors of a flush name). ON_DIRECTORY(final): called when a rename finds a
    directory under a final name (damage), to move it aside; the rename is then retried.
    A DETACHED batch (in a reader process) only writes temp files: another batch takes them
    over (take -> adopt) and makes them durable; it never flushes ahead.
    """

    def __init__(self, sync_root: bytes, on_directory: Callable[[bytes], None],
                 detached: bool = False) -> None:
        self.sync_root = sync_root
        self._on_directory = on_directory
        self.detached = detached
        self.pid = os.getpid()  # temp names carry it
        self._lock = threading.Lock()
        self._pending: dict[bytes, tuple[bytes, bytes]] = {}  # key -> (temp, final)
        # key -> bytes of its file, for every entry placed since the last flush(): pending,
        # or renamed ahead (not yet durable under its name until flush's syncfs)
        self._sizes: dict[bytes, int] = {}
        self._ahead: threading.Thread | None = None  # the flush-ahead thread, if one ran
        self._ahead_running = False
        self._in_flush = False  # flush() or abandon() runs: no new flush-ahead meanwhile
        self._ahead_done = 0  # entries it renamed
        self._ahead_error: RepositoryIOError | None = None
        self._seen_existing = False
        self._linked: set[bytes] = set()  # pending temps that are hard links (import)
        host = socket.gethostname().encode("ascii", "replace").replace(b"/", b"_")[:32]
        self._temp_tag = TEMP_MARK + host + b"." + str(self.pid).encode() + b"."
        # Temp names end in 8 hex digits: a random start (one getrandom per batch, not per
        # file: 20,000 of them were 1% of a first save) counting up; see _temp_name.
        self._temp_base = int.from_bytes(secrets.token_bytes(4), "big")
        self._temp_count = itertools.count()

    # -- what is in the batch -------------------------------------------------------------

    def size_of(self, key: bytes) -> int | None:
        """The size of KEY's file when placed since the last flush(), else None."""
        with self._lock:
            return self._sizes.get(key)

    def sizes_of(self, keys: Iterable[bytes]) -> list[int | None]:
        """size_of() for many keys, under one lock."""
        with self._lock:
            get = self._sizes.get
            return [get(key) for key in keys]

    def note_existing(self) -> None:
        """A final name was found on disk that another process may have renamed in without
        its directory entry being durable yet: the next flush syncs once before the caller
        commits anything naming it."""
        self._seen_existing = True

    # -- writing temp files ---------------------------------------------------------------

    def add(self, key: bytes, final: bytes, body: bytes) -> int | None:
        """Write BODY to a new temp file beside FINAL and add it to the batch: None when
        added; the size already recorded when another thread added KEY meanwhile (the new
        temp file is dropped then)."""
        temp = self.write_new_temp(final, body)
        try:
            crashpoint("after_chunk_tmp_write")
        except BaseException:  # an interrupt before the batch knows the file
            self.discard_file(temp)
            raise
        with self._lock:
            size = self._sizes.get(key)
            if size is not None:  # another thread stored it meanwhile
                self.discard_file(temp)
                return size
            self._pending[key] = (temp, final)
            self._sizes[key] = len(body)
            self._start_ahead()
        return None

    def add_link(self, key: bytes, final: bytes, body: bytes, link_from: bytes | None) -> bool:
        """Add BODY for FINAL to the batch; with LINK_FROM (a file holding BODY), the temp
        file is a hard link to it instead of a copy; where linking is refused (another
        filesystem, protected hardlinks) the body is written. True when it was linked."""
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
            temp = self.write_new_temp(final, body)
        with self._lock:
            self._pending[key] = (temp, final)
            self._sizes[key] = len(body)
            if linked:
                self._linked.add(temp)
            self._start_ahead()
        return linked

    def _temp_name(self, final: bytes) -> bytes:
        """FINAL.tmp.HOST.PID.8HEX: unique in this process (a counter from a random start);
        another process differs in host or pid, and create_temp's O_EXCL catches the rest."""
        n = (self._temp_base + next(self._temp_count)) & 0xFFFFFFFF
        return final + self._temp_tag + b"%08x" % n

    def write_new_temp(self, final: bytes, body: bytes) -> bytes:
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
            self.discard_file(temp)
            raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
        except BaseException:  # an interrupt: nobody else knows the file
            diskio.close(fd)
            self.discard_file(temp)
            raise
        try:
            diskio.close(fd)
        except BaseException as e:
            self.discard_file(temp)
            if isinstance(e, OSError):
                raise RepositoryIOError(os.fsdecode(temp), e.strerror or str(e)) from None
            raise

    @staticmethod
    def discard_file(temp: bytes) -> None:
        """Remove a temp file; on a full disk where unlink fails, at least free its blocks."""
        try:
            diskio.unlink(temp)
        except OSError:
            try:
                os.truncate(temp, 0)
            except OSError:
                pass

    def temp_tags_of(self, pids: Iterable[int]) -> list[bytes]:
        """The parts of temp names that processes PIDS of this host give their files."""
        return [self._temp_tag[:-len(b"%d." % self.pid)] + b"%d." % pid for pid in pids]

    # -- flushing ahead -------------------------------------------------------------------

    def _start_ahead(self) -> None:
        """With the lock held: hand the pending files to a flush-ahead thread when there
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
            diskio.syncfs(self.sync_root)
            self._rename_all(list(batch.values()), linked)
        except OSError as e:
            self._discard_temps(batch)
            error = RepositoryIOError(os.fsdecode(self.sync_root), e.strerror or str(e))
        except BaseException as e:  # noqa: BLE001 - handed to the thread that flushes
            self._discard_temps(batch)
            error = RepositoryIOError(os.fsdecode(self.sync_root), str(e))
        with self._lock:
            self._ahead_running = False
            self._ahead_error = error
            if error is None:
                self._ahead_done += len(batch)

    def _wait_ahead(self) -> int:
        """Wait for the flush-ahead thread; how many files it renamed since the last call.
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
                self.discard_file(temp)

    # -- handing over between batches (reader processes) ---------------------------------

    def take(self) -> tuple[list[Handed], bool]:
        """Hand over the temp files written since the last call, as (key, temp, final,
        size), and whether a final name was found on disk meanwhile (note_existing): what a
        reader process returns with its results, for the saving process to adopt."""
        with self._lock:
            pending, self._pending = self._pending, {}
            sizes, self._sizes = self._sizes, {}
            seen, self._seen_existing = self._seen_existing, False
            self._linked = set()
        return [(key, temp, final, sizes[key]) for key, (temp, final) in pending.items()], seen

    def adopt(self, pending: list[Handed], seen_existing: bool) -> set[bytes]:
        """Take over temp files another batch wrote (take): the next flush() makes them
        durable like this batch's own. A key pending here already (another reader stored
        the same bytes meanwhile) keeps its first temp file and the second is removed;
        their keys are returned."""
        again = []
        with self._lock:
            if seen_existing:
                self._seen_existing = True
            for key, temp, final, size in pending:
                if key in self._sizes:
                    again.append((key, temp))
                    continue
                self._pending[key] = (temp, final)
                self._sizes[key] = size
            self._start_ahead()
        for _key, temp in again:
            self.discard_file(temp)
        return {key for key, _temp in again}

    def discard(self, pending: list[Handed]) -> None:
        """Remove temp files another batch wrote that will not be adopted (take)."""
        for _key, temp, _final, _size in pending:
            self.discard_file(temp)

    # -- making it durable ----------------------------------------------------------------

    def flush(self) -> int:
        """Make every pending file durable under its final name; returns how many.

        Called before each commit that may name these files.
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
            self._sizes = {}
            linked, self._linked = self._linked, set()
            seen_existing, self._seen_existing = self._seen_existing, False
        if not batch:
            if seen_existing or ahead:
                try:
                    diskio.syncfs(self.sync_root)
                except OSError as e:
                    raise RepositoryIOError(os.fsdecode(self.sync_root),
                                            e.strerror or str(e)) from None
            return ahead
        try:
            diskio.syncfs(self.sync_root)
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
            diskio.syncfs(self.sync_root)
        except OSError as e:
            self._discard_temps(batch)
            raise RepositoryIOError(os.fsdecode(self.sync_root), e.strerror or str(e)) from None
        except BaseException:  # a hard stop (second Ctrl-C): abandon() no longer sees BATCH
            self._discard_temps(batch)
            raise
        return ahead + len(batch)

    def _rename_all(self, pairs: list[tuple[bytes, bytes]], linked: set[bytes]) -> None:
        for temp, final in pairs:
            try:
                diskio.rename(temp, final)
            except IsADirectoryError:  # damage: a directory under a final name
                self._on_directory(final)
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
                self._sizes = {}
                self._linked = set()
            for temp, _final in batch.values():
                self.discard_file(temp)
        finally:
            with self._lock:
                self._in_flush = False
