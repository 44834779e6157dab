"""Connections to the catalog: opening, the one configuration, errors, transactions.

Every connection to a catalog (writer, reader, the sql command's guarded one) is opened
and configured here; so are read snapshots, checkpoints and the user-facing SQLite errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import apsw

from ..crashpoints import crashpoint
from ..errors import (
    BackshiftError,
    CatalogTooNew,
    NotACatalog,
    RepositoryIOError,
    RepositoryLocked,
    RepositoryNotFound,
)
from .migrate import schema_version, stand_in_for_migrations


def _without_memory_statistics() -> None:
    """Turn off SQLite's memory statistics (SQLITE_CONFIG_MEMSTATUS), before any connection.

    With them on, every allocation SQLite makes takes one process-wide mutex to count it,
    so connections on several threads (`list -v`'s fetchers) queue on it. backshift reads
    none of those statistics, nor sets a soft or hard heap limit, which need them. The
    library must be shut down to be configured: only when no connection is open yet (at
    import, as the CLI imports this module), else it stays as it is."""
    if apsw.connections():
        return
    apsw.shutdown()
    try:
        apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0)
    finally:
        apsw.initialize()


_without_memory_statistics()

APPLICATION_ID = 0x42534854  # 'BSHT'
CATALOG_NAME = b"catalog.sqlite3"
WRITER_BUSY_MS = 60_000
READER_BUSY_MS = 5_000
CHECKPOINT_BUSY_MS = 200


def on_read_only_media(path: bytes) -> bool:
    """Whether PATH (a file or directory) is on a filesystem mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# statfs(2) f_type of filesystems whose locks and shared memory do not work across hosts
# (SQLite: "WAL does not work over a network filesystem"); FUSE covers sshfs.
NETWORK_FS_TYPES = {0x6969: "NFS", 0xFF534D42: "CIFS/SMB", 0xFE534D42: "SMB2", 0x517B: "SMB",
                    0x65735546: "FUSE", 0x5346414F: "AFS", 0x00C36400: "Ceph",
                    0x01021997: "9P"}


def network_filesystem(path: bytes) -> str | None:
    """The name of the network or FUSE filesystem PATH is on (statfs f_type), else None."""
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return NETWORK_FS_TYPES.get(f_type)


def _wal_holds_frames(path: bytes) -> bool:
    """Whether the catalog at PATH has a write-ahead log with transactions in it (one not
    checkpointed into the file: the last writer was killed, or the media went away)."""
    try:
        return os.path.getsize(path + b"-wal") > 0
    except OSError:
        return False


def read_only_uri(path: bytes) -> str:
    """The URI that opens the catalog at PATH read-only (SQLITE_OPEN_URI).

    A WAL catalog opens read-only only with a -shm file SQLite may create or write, which
    read-only media (a backup disk mounted ro for a restore) do not allow. There nothing can
    change the file, and with no log beside it the file is the whole catalog: immutable=1
    reads it without -shm or locks. A log with transactions in it must not be ignored:
    then the plain read-only open is tried, and open_error explains a failure."""
    uri = "file:" + _uri_quote(os.fsdecode(path)) + "?mode=ro"
    if on_read_only_media(path) and not _wal_holds_frames(path):
        uri += "&immutable=1"
    return uri


def open_error(e: apsw.Error, path: bytes, readonly: bool) -> BackshiftError:
    """The user-facing error for a failure to open the catalog at PATH."""
    if readonly and isinstance(e, apsw.CantOpenError):
        if on_read_only_media(path):
            return RepositoryIOError(os.fsdecode(path), (
                "cannot read the catalog on read-only media: its write-ahead log (-wal) "
                "holds transactions not yet in the file, and SQLite cannot read them without "
                "a -shm file, which it cannot create here; copy the repository to writable "
                "storage, or mount the media read-write once (the next save or expire folds "
                "the log into the file)"))
        if not os.access(os.path.dirname(path) or b".", os.W_OK):
            return RepositoryIOError(os.fsdecode(path), (
                "cannot open the catalog read-only: SQLite needs to create its -shm file "
                "beside it and this user may not write in that directory"))
    return NotACatalog(os.fsdecode(path), _root_cause(e))


def _uri_quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def catalog_damage(error: BaseException | None) -> bool:
    """Whether ERROR says the catalog file is damaged (then nothing more is written)."""
    return isinstance(error, apsw.CorruptError | apsw.NotADBError | NotACatalog)


def translate_error(e: apsw.Error, path: bytes) -> Exception:
    """The user-facing error for an SQLite failure met while using the catalog at PATH."""
    if isinstance(e, apsw.CorruptError | apsw.NotADBError):
        return NotACatalog(os.fsdecode(path), f"damaged ({_root_cause(e)}); see 'backshift check'")
    return RepositoryIOError(os.fsdecode(path), _root_cause(e))


def _root_cause(e: BaseException) -> str:
    """The first error of a chain: apsw may mask 'disk I/O error' behind a rollback error."""
    while e.__context__ is not None and isinstance(e.__context__, apsw.Error):
        e = e.__context__
    return str(e)


# -- connections: the one place that opens and configures a connection to a catalog --

WRITER, READER, USER_SQL = "writer", "reader", "user SQL"  # the roles of a connection


def configure(conn: apsw.Connection, role: str) -> None:
    """Set up CONN for ROLE: busy timeout, SQLite's defensive settings, pragmas, page cache.
    A USER_SQL connection (the sql command, --where) also gets no extension loading, temp
    data in memory when SQLite's heap is capped (sqlguard.cap_memory), and once its
    stand-ins exist, query_only (seal_user_sql); sqlguard.harden then puts its policy
    (authorizer, limits, deadline) on it."""
    writer = role == WRITER
    conn.set_busy_timeout(WRITER_BUSY_MS if writer else READER_BUSY_MS)
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA trusted_schema = OFF")
    if writer:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache
    if role == USER_SQL:
        if apsw.hard_heap_limit(-1):  # sqlguard.cap_memory: temp data in memory, under it
            conn.execute("PRAGMA temp_store = MEMORY")  # before any temp object exists
        if hasattr(apsw, "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION"):
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)


def seal_user_sql(conn: apsw.Connection) -> None:
    """The last setting of a USER_SQL connection: query_only, after the stand-ins for
    migrations (temp objects, which it would refuse to create)."""
    conn.execute("PRAGMA query_only = ON")


def open_connection(path: bytes, role: str, create: bool = False) -> apsw.Connection:
    """A connection to the catalog file PATH for ROLE, configured. A writer's opens the file
    read-write (CREATE: creates it, init only); the others read-only (read_only_uri). A
    failure to open is open_error's message (SQLite opens the file on first use: while
    configuring), except when creating."""
    readonly = role != WRITER
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        name = read_only_uri(path)
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
        name = os.fsdecode(path)
    flags |= apsw.SQLITE_OPEN_EXRESCODE
    conn = None
    try:
        conn = apsw.Connection(name, flags=flags)
        if not readonly and network_filesystem(os.path.dirname(path) or b"."):
            # before the first read: the WAL index then lives in this process's memory,
            # not in a -shm file other hosts would map incoherently; the file locks are
            # held until the connection closes: one writer, and no reader meanwhile
            conn.execute("PRAGMA locking_mode = EXCLUSIVE").fetchall()
        configure(conn, role)
    except apsw.Error as e:
        if conn is not None:
            conn.close()
        if create:
            raise
        raise open_error(e, path, readonly) from None
    return conn


def open_user_sql(path: bytes) -> apsw.Connection:
    """A USER_SQL connection to the catalog at PATH for the sql command: read-only, the
    stand-ins of the migrations it lacks, and one read transaction for its whole life (a
    consistent snapshot; begun here, before sqlguard's authorizer, which refuses
    transaction control; closing the connection ends it)."""
    conn = open_connection(path, USER_SQL)
    try:
        stand_in_for_migrations(conn)
        seal_user_sql(conn)
        conn.execute("BEGIN DEFERRED")
    except apsw.Error as e:
        conn.close()
        raise open_error(e, path, readonly=True) from None
    return conn


def quick_check_problem(conn: apsw.Connection, errors_are_problems: bool = True
                        ) -> str | None:
    """The first problem SQLite's quick_check finds in CONN's catalog, or None (the probe of
    Connection.probe_integrity; ops/session.py's IntegrityProbe runs it in a thread, where
    an error is raised, not taken for damage: ERRORS_ARE_PROBLEMS False)."""
    try:
        problems = [p for (p,) in conn.execute("PRAGMA quick_check(1)") if p != "ok"]
    except apsw.Error as e:
        if not errors_are_problems:
            raise
        problems = [_root_cause(e)]
    if not problems:
        return None
    return "; ".join(line for line in problems[0].splitlines()
                     if line and not line.startswith("***"))  # "*** in database main"


def damaged_catalog(path: bytes, problem: str) -> NotACatalog:
    """The error of a save that found PROBLEM (quick_check's) in the catalog at PATH."""
    copies = os.path.join(os.path.dirname(path), b"catalog-copies", b"")
    return NotACatalog(os.fsdecode(path), (
        f"damaged (quick_check: {problem}); nothing was written: restore it from "
        f"a copy in {os.fsdecode(copies)} (README: 'Restoring the catalog from its copy')"))


class Connection:
    """Opening and closing, identity checks, transactions, snapshots, checkpoints, meta."""

    def __init__(self, conn: apsw.Connection, path: bytes, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.schema = schema_version()  # what an older catalog opened read-only holds

    @classmethod
    def create(cls, path: bytes) -> Self:
        """Create a new catalog file with every migration applied (init only)."""
        conn = open_connection(path, WRITER, create=True)
        cat = cls(conn, path, readonly=False)
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        cat.migrate()
        return cat

    @classmethod
    def open(cls, path: bytes, readonly: bool = False, user_sql: bool = False) -> Self:
        """Open an existing catalog. Never creates a file; refuses foreign or newer catalogs.
        USER_SQL (read-only): a connection for user-written SQL, to put sqlguard on."""
        if not os.path.isfile(path):
            raise RepositoryNotFound(os.fsdecode(os.path.dirname(path) or b"."))
        conn = open_connection(path, WRITER if not readonly else USER_SQL if user_sql else READER)
        try:
            cat = cls(conn, path, readonly=readonly)
            cat._check_identity()
            if readonly:
                stand_in_for_migrations(conn)
            if user_sql:
                seal_user_sql(conn)
        except apsw.Error as e:
            raise open_error(e, path, readonly) from None
        if not readonly:
            cat.migrate()
        return cat

    def limit_cache(self, kib: int) -> None:
        """A page cache of KIB KiB for this connection instead of the 64 MiB default (a
        helper connection that reads each page about once)."""
        self.conn.execute(f"PRAGMA cache_size = -{int(kib)}")

    def _check_identity(self) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchall()[0][0]
        version = self.schema = self.user_version()
        if app_id != APPLICATION_ID:
            raise NotACatalog(os.fsdecode(self.path), "application_id does not match")
        if version > schema_version():
            raise CatalogTooNew(os.fsdecode(self.path), version, schema_version())

    def user_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchall()[0][0]

    def close(self) -> None:
        try:
            self.conn.close()
        except apsw.Error:
            # SQLite checkpoints the WAL when the last connection closes; if that write
            # fails (disk full, I/O error) every commit is still safe in the WAL and the
            # next open recovers it. Close anyway, and let the original outcome stand.
            self.conn.close(True)

    def begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            raise RepositoryLocked(
                os.fsdecode(self.path),
                f"another writer held the catalog for {WRITER_BUSY_MS // 1000} s") from None

    def commit(self) -> None:
        crashpoint("before_catalog_commit")
        try:
            self.conn.execute("COMMIT")
        except apsw.Error as e:
            self.rollback_quietly()
            raise translate_error(e, self.path) from None
        crashpoint("after_catalog_commit")

    def probe_integrity(self) -> None:
        """NotACatalog, before a save writes anything, when SQLite's quick_check finds a
        malformed page. quick_check reads every page of every table and index, the pages
        a save may write included, and checks their structure and record formats (not the
        indexes against the tables, which integrity_check does): ~2.5 ms per MB of catalog
        where integrity_check takes ~6. It stops at the first problem. A save that still
        meets damage later stops there and writes nothing more (Saver.fail).
        Not chosen: the checksum VFS (cksumvfs) is not built into apsw's SQLite and needs
        8 reserved bytes a page, i.e. a rewrite of existing catalogs; cell_size_check only
        catches damaged cell layouts, which quick_check finds too."""
        problem = quick_check_problem(self.conn)
        if problem is not None:
            raise damaged_catalog(self.path, problem)

    def rollback_quietly(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except apsw.Error:
                pass

    @contextmanager
    def savepoint(self, name: str) -> Iterator[None]:
        """A nested transaction NAME: released at the end, rolled back and released on an
        error (which may have ended the whole transaction, the savepoint with it). Inside,
        `ROLLBACK TO NAME` undoes what the block did so far and keeps the savepoint."""
        c = self.conn
        c.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            try:
                c.execute(f"ROLLBACK TO {name}")
                c.execute(f"RELEASE {name}")
            except apsw.Error:
                pass
            raise
        c.execute(f"RELEASE {name}")

    def begin_read(self) -> None:
        """Begin a read transaction: until it ends (rollback, close), every query sees the
        catalog as it was at the first read, whatever writers commit meanwhile."""
        self.conn.execute("BEGIN")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction around the block (begin_read), so that a listing cut into many
        queries sees one state; inside an open transaction, that one. Ends with a rollback:
        a reader has nothing to keep."""
        own = not self.conn.in_transaction
        if own:
            self.begin_read()
        try:
            yield
        finally:
            if own and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def checkpoint(self) -> str | None:
        """Fold the WAL back into the catalog file (end of save/expire); None, or why that
        failed (disk full): every commit is safe in the WAL already, so a failure loses
        nothing (the next checkpoint folds it), and callers report it as a warning."""
        # Short busy wait only: a TRUNCATE checkpoint holds the writer lock while it waits
        # for readers, and another save waiting in BEGIN IMMEDIATE holds a read mark, so
        # with the long writer timeout two concurrent saves stalled each other for 60 s.
        self.conn.set_busy_timeout(CHECKPOINT_BUSY_MS)
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except apsw.BusyError:
            pass  # a reader holds the WAL; the automatic checkpoint will catch up
        except apsw.Error as e:
            return _root_cause(e)
        finally:
            self.conn.set_busy_timeout(WRITER_BUSY_MS if not self.readonly else READER_BUSY_MS)
        return None

    def get_meta(self, key: str) -> str | None:
        rows = self.conn.execute("SELECT value FROM meta WHERE key = :key", {"key": key})
        row = rows.fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (:key, :value) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            {"key": key, "value": value},
        )
