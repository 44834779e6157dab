"""Opening a repository: find it, lock it, open catalog and store, close in reverse order.

Read-only commands take no lock and need no chunk store, so the lock and store modules
(and what they import: hashing, compression, ctypes) load only when a command uses them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

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
    from .objstore import ObjectStore

READ = "read"  # no lock: WAL readers never block writers; catalog opened read-only
WRITE = "write"  # shared lock: saves may run side by side
EXCLUSIVE = "exclusive"  # exclusive lock: expire, GC, repair
READ_LOCKED = "read-locked"  # shared lock, catalog read-only: check (no expire meanwhile)
READ_CHUNKS = "read-chunks"  # shared flock only (no record, nothing written): restores


SETTINGS = ("chunker", "compression", "chunks")  # meta keys holding init's settings, as JSON


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
    def chunks_url(self) -> str | None:
        """s3://BUCKET[/PREFIX] when the chunks are in an object store (init --chunks)."""
        url = self._settings("chunks").get("url")
        if url is not None and (type(url) is not str or not url.startswith("s3://")):
            raise self._bad_settings("chunks", f"{url!r} is not an s3:// URL")
        return url

    @cached_property
    def store(self) -> ChunkStore:
        """The chunk store, made on first use. Only a save writes chunks: other commands
        never read the compression setting (a damaged one must not stop a restore)."""
        level = self.zstd_level if self.mode == WRITE else 3
        if self.chunks_url is not None:
            return self.objects  # type: ignore[return-value]
        from .store import Store
        return Store(self.path, zstd_level=level)

    @cached_property
    def objects(self) -> ObjectStore | None:
        """The object store of the chunks (None: they are files in REPO/chunks/)."""
        if self.chunks_url is None:
            return None
        from .objstore import ObjectStore
        level = self.zstd_level if self.mode == WRITE else 3
        known = _CatalogLengths(self.catalog.path) if self.mode == WRITE else None
        objects = ObjectStore(self.chunks_url, zstd_level=level, repo=self.path, known=known)
        self._closing.append(objects.close)
        if known is not None:
            self._closing.append(known.close)
        return objects

    @cached_property
    def _closing(self) -> list:
        return []

    def close_stores(self) -> None:
        """Close what the stores opened (an object store's threads), last opened first."""
        while self._closing:
            self._closing.pop()()

    def copy_to_bucket(self, copy_path: bytes, source: BinaryIO | None = None) -> None:
        """Upload a catalog copy beside the chunks when they are in a bucket (SOURCE: its
        bytes as an open file, read instead of COPY_PATH, which only names it)."""
        if self.objects is not None:
            self.objects.upload_catalog_copy(copy_path, source=source)

    @property
    def copy_upload(self) -> Callable[[bytes, BinaryIO], None] | None:
        """What catalog_copy.make_copy runs beside the local copy (None: nothing, the
        chunks are not in a bucket)."""
        return self.copy_to_bucket if self.chunks_url is not None else None


class _CatalogLengths:
    """The stored lengths the catalog records for chunks, asked from any thread (a save's
    reader threads): one read-only connection per thread, which sees committed rows only.
    A row commits after its chunk's PUT was acknowledged, so a chunk it names is stored."""

    def __init__(self, catalog_path: bytes) -> None:
        import threading
        self.path = catalog_path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Catalog] = []

    def __call__(self, shas: list[bytes]) -> dict[bytes, int]:
        cat = getattr(self._local, "cat", None)
        if cat is None:
            cat = self._local.cat = Catalog.open(self.path, readonly=True)
            cat.limit_cache(2048)
            with self._lock:
                self._opened.append(cat)
        return {sha: stored for sha, (_length, stored) in cat.chunk_sizes(shas).items()}

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for cat in opened:
            cat.close()


def chunks_in_bucket(path: bytes) -> bool:
    """Whether the repository at PATH keeps its chunks in an object store (False when it
    cannot tell: opening it then reports what is wrong). A directory of chunk files says
    no at the cost of one stat."""
    if os.path.isdir(os.path.join(os.fsencode(path), b"chunks")):
        return False
    try:
        cat = Catalog.open(os.path.join(os.path.abspath(path), CATALOG_NAME), readonly=True)
    except Exception:  # noqa: BLE001 - the command's own open says what is wrong
        return False
    try:
        return cat.get_meta("chunks") is not None
    except Exception:  # noqa: BLE001 - as above
        return False
    finally:
        cat.close()


def init_repository(path: bytes, params: ChunkerParams, zstd_level: int = 3,
                    chunks_url: str | None = None) -> None:
    """Create REPO (mode 0700) with its chunk directories and a fully migrated catalog.
    CHUNKS_URL (s3://BUCKET[/PREFIX]): the chunks go to that object store instead, which
    is probed first (PUT, GET, LIST, DELETE) and must hold no repository yet."""
    import json
    import uuid

    from .lock import LOCK_FILE
    from .store import Store

    path = _new_repository_path(path)
    if chunks_url is not None:
        chunks_url = _probe_bucket(chunks_url)
    try:
        _make_directory(path)
        if chunks_url is None:
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
        if chunks_url is not None:  # where, never how to log in: no credential is stored
            cat.set_meta("chunks", json.dumps({"url": chunks_url}))
        cat.commit()
    finally:
        cat.close()


def _probe_bucket(url: str) -> str:
    """URL in its normal form, once a probe object could be PUT, read, LISTed and DELETEd
    there and no repository's chunks or catalog copies are under it yet (two catalogs
    sharing one prefix would each take the other's chunks for orphans)."""
    from .errors import RepositoryExists
    from .objstore import ObjectStore
    with ObjectStore(url, threads=1) as objects:
        objects.probe()
        used = objects.holds_repository()
        if used:
            raise RepositoryExists(objects.location.url, f"it holds {used} already "
                                   "(init --recover rebuilds a repository from it)")
        return objects.location.url


def recover_repository(path: bytes, url: str) -> str:
    """Make REPO anew from the newest catalog copy in the bucket at URL (init --recover):
    the catalog, its lock file, and its chunk location set to URL. The key of the copy."""
    import json

    from .errors import ObjectStoreFailed
    from .lock import LOCK_FILE
    from .objstore import ObjectStore

    path = _new_repository_path(path)
    made = not os.path.exists(path)
    with ObjectStore(url, threads=1) as objects:
        if not objects.catalog_copies():  # nothing is created here before this answers
            raise ObjectStoreFailed(objects.location.show("catalog-copies/"), "recover", 1,
                                    "no catalog copy there (made after each save and expire)")
        lock = os.path.join(path, LOCK_FILE)
        catalog = os.path.join(path, CATALOG_NAME)
        try:
            _make_directory(path)
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600))
            key = objects.download_newest_catalog_copy(catalog)
        except BaseException as e:
            for leftover in (catalog, lock):  # a failed recovery leaves what was there
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            if isinstance(e, OSError):
                raise RepositoryIOError(os.fsdecode(e.filename or path),
                                        e.strerror or str(e)) from None
            raise
        normal = objects.location.url
        shown = objects.location.show(key or "")
    cat = Catalog.open(os.path.join(path, CATALOG_NAME))
    try:
        cat.begin()
        cat.set_meta("chunks", json.dumps({"url": normal}))
        cat.commit()
    finally:
        cat.close()
    return shown


def _new_repository_path(path: bytes) -> bytes:
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
    except OSError as e:
        raise RepositoryIOError(os.fsdecode(e.filename or path), e.strerror or str(e)) from None
    return path


def _make_directory(path: bytes) -> None:
    if os.path.exists(path):
        os.chmod(path, 0o700)
    else:
        os.makedirs(path, mode=0o700)


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
        repo = None
        try:
            # read at open (a damaged catalog page fails every command here, as before),
            # parsed when a command needs them: json loads only then
            repo = Repository(path, catalog, mode, {k: catalog.get_meta(k) for k in SETTINGS})
            yield repo
        except apsw.Error as e:  # damage or I/O errors met mid-command: one line, no traceback
            raise translate_error(e, catalog_path) from None
        finally:
            if repo is not None:
                repo.close_stores()
            catalog.close()
    finally:
        if lock is not None:
            lock.release()
