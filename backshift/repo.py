"""Opening a repository: find it, lock it, open catalog and store, close in reverse order.

Read-only commands take no lock and need no chunk store, so the lock and store modules
(and what they import: hashing, compression, ctypes) load only when a command uses them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import apsw

from . import __version__
from .catalog import (
    CATALOG_NAME,
    Catalog,
    network_filesystem,
    on_read_only_media,
    translate_error,
)
from .errors import (
    NotACatalog,
    RepositoryExists,
    RepositoryIOError,
    RepositoryNotFound,
    UsageError,
)
from .model import MAX_CHUNK_LENGTH, ChunkerParams

if TYPE_CHECKING:
    from .chunkstore import ChunkStore

READ = "read"  # no lock: WAL readers never block writers; catalog opened read-only
WRITE = "write"  # shared lock: saves may run side by side
EXCLUSIVE = "exclusive"  # exclusive lock: expire, GC, repair
READ_LOCKED = "read-locked"  # shared lock, catalog read-only: check (no expire meanwhile)
READ_CHUNKS = "read-chunks"  # shared flock only (no record, nothing written): restores


SETTINGS = ("chunker", "compression")  # meta keys holding init's settings, as JSON


@dataclass
class Repository:
    path: bytes
    catalog: Catalog
    mode: str
    settings: dict[str, str | None]  # SETTINGS' meta values as read at open, not parsed yet

    @cached_property
    def chunker(self) -> ChunkerParams:
        """The chunking parameters recorded at init (read when a command needs them)."""
        settings = self._settings("chunker")
        try:
            params = ChunkerParams(**settings)
        except TypeError:
            params = None
        if params is None or params.algorithm != ChunkerParams.algorithm or not all(
                type(v) is int for v in (params.min_size, params.avg_size, params.max_size,
                                         params.seed)) \
                or not 64 <= params.min_size < params.avg_size < params.max_size \
                <= MAX_CHUNK_LENGTH:
            raise self._bad_settings("chunker", f"{settings} are not chunker parameters")
        return params

    @cached_property
    def zstd_level(self) -> int:
        """The zstd level of new chunks, recorded at init."""
        level = self._settings("compression").get("level", 3)
        if type(level) is not int or not 1 <= level <= 22:
            raise self._bad_settings("compression", f"level {level!r} is not a zstd level")
        return level

    def _settings(self, key: str) -> dict:
        """The JSON object stored under meta KEY ({} when there is none)."""
        import json  # only commands that chunk or compress need it

        text = self.settings.get(key)
        try:
            value = json.loads(text) if text is not None else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self._bad_settings(key, "not a JSON object")
        return value

    def _bad_settings(self, key: str, why: str) -> NotACatalog:
        return NotACatalog(os.fsdecode(self.catalog.path), f"its {key} settings (meta "
                           f"'{key}') are damaged: {why}")

    @cached_property
    def store(self) -> ChunkStore:
        """The chunk store, made on first use. Only a save writes chunks: other commands
        never read the compression setting (a damaged one must not stop a restore)."""
        from .store import Store
        return Store(self.path, zstd_level=self.zstd_level if self.mode == WRITE else 3)


def init_repository(path: bytes, params: ChunkerParams, zstd_level: int = 3) -> None:
    """Create REPO (mode 0700) with its chunk directories and a fully migrated catalog."""
    import json
    import uuid

    from .lock import LOCK_FILE
    from .store import Store

    path = os.path.abspath(path)
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        # SQLite takes file names as UTF-8 text: refuse before anything is created
        from .pathcodec import escape
        raise UsageError(f"cannot init {escape(path)}: the repository path must be UTF-8 "
                         "(SQLite cannot open a catalog under another name)") from None
    try:
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise RepositoryExists(os.fsdecode(path), "it exists and is not a directory")
            if os.listdir(path):
                raise RepositoryExists(os.fsdecode(path), "directory exists and is not empty")
            os.chmod(path, 0o700)
        else:
            os.makedirs(path, mode=0o700)
        Store.create_layout(path)
        os.close(os.open(os.path.join(path, LOCK_FILE), os.O_WRONLY | os.O_CREAT, 0o600))
        cat = Catalog.create(os.path.join(path, CATALOG_NAME))
    except OSError as e:
        raise RepositoryIOError(os.fsdecode(e.filename or path), e.strerror or str(e)) from None
    try:
        cat.begin()
        cat.set_meta("repository_id", str(uuid.uuid4()))
        cat.set_meta("created_ns", str(time.time_ns()))
        cat.set_meta("created_by", f"backshift {__version__}")
        cat.set_meta("chunker", json.dumps(asdict(params), sort_keys=True))
        cat.set_meta("compression", json.dumps({"algorithm": "zstd", "level": zstd_level}))
        cat.commit()
    finally:
        cat.close()


@contextmanager
def open_repository(path: bytes, mode: str = READ, operation: str = "",
                    lock_wait_s: float = 0.0) -> Iterator[Repository]:
    """Yield an open Repository; the one place that acquires and releases its resources."""
    path = os.path.abspath(path)
    catalog_path = os.path.join(path, CATALOG_NAME)
    if not os.path.isfile(catalog_path):
        raise RepositoryNotFound(os.fsdecode(path))
    lock = None
    if mode == READ_LOCKED and on_read_only_media(path):
        mode_lock = READ_CHUNKS  # read-only media: no lock record can be written, and no
        # expire can run there while check reads; the shared flock still works
    else:
        mode_lock = mode
    exclusive = mode == EXCLUSIVE
    if mode == WRITE and (network := network_filesystem(path)) is not None:
        from .lock import _notice
        exclusive = True  # the catalog is opened in exclusive locking mode: one writer
        _notice(f"notice: {os.fsdecode(path)} is on a network filesystem ({network}): one "
                "writer at a time; for many hosts, serve it over ssh:// (README)")
    if mode_lock in (WRITE, EXCLUSIVE, READ_LOCKED):
        from .lock import RepoLock
        lock = RepoLock(path, exclusive=exclusive, operation=operation or mode)
        try:
            lock.acquire(lock_wait_s)
        except OSError as e:  # permission denied, read-only media, disk full
            where = os.fsdecode(e.filename) if e.filename else os.fsdecode(path)
            raise RepositoryIOError(where, e.strerror or str(e)) from None
    elif mode_lock == READ_CHUNKS:
        from .lock import ReaderLock
        lock = ReaderLock(path)
        lock.acquire(lock_wait_s)
    try:
        catalog = Catalog.open(catalog_path, readonly=(mode in (READ, READ_LOCKED, READ_CHUNKS)))
        try:
            # read at open (a damaged catalog page fails every command here, as before),
            # parsed when a command needs them: json loads only then
            yield Repository(path, catalog, mode, {k: catalog.get_meta(k) for k in SETTINGS})
        except apsw.Error as e:  # damage or I/O errors met mid-command: one line, no traceback
            raise translate_error(e, catalog_path) from None
        finally:
            catalog.close()
    finally:
        if lock is not None:
            lock.release()
