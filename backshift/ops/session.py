"""The repository half of a save: SaveSession, the one interface the client half talks to.
(Longer than ~400 lines on purpose: the whole interface a remote save carries, in one class;
its SQL is in backshift/catalog, the series' helpers in ops/series.py.)

It owns the catalog and the store for the save: the save row and its lock, borrowing
(ops/borrow.py), path ids (ops/interning.py), chunk presence and adoption, recording
versions and members, checkpoints (commits), and the final commit or the abandon.

The calls, in a save's order (Saver in ops/save.py makes them, in this process today):
  open()                        the save row of HOST/SUBSET, its lock, the candidate saves
  offer(entries)                a batch of (path, lstat, user, group): which are borrowed
                                unchanged (matched and recorded in a few statements for the
                                whole batch) and which the client goes on with
  locate / kept_xattrs / xattr_set_id / borrow / reusable_version
                                the general path's questions about one name
  sink                          where readers put chunk bodies (see below)
  take(result, pending, seen)   a reader's result: its chunk files adopted, vetted
  record(...), store_content(...), contents_of_batch(...)
                                a file read or borrowed, recorded (in batches of rows)
  checkpoint(force)             commit what is recorded when a batch is due
  finish(status) / abandon()    the final commit, or keep nothing uncommitted
Arguments and results are plain data (bytes, ints, str, Version and StoredChunk named
tuples, ReadResult dataclasses, os.stat_result): picklable; a remote transport maps them
to its frames.

The chunk sink: locally the readers write chunk files straight into this repository's
store (a detached Store per reader, writing temp files), and the session adopts those temp
files (take, ops/intake.py) before the commit that names them: the store's durable batch.
A remote save (over backshift/remote's framed protocol) plugs in there with two calls of
its own: the client sends the sha256s of the chunks it has cut and gets back those the
repository lacks (missing), uploads only those bodies (put_chunks), and the server side
adopts them into its durable batch as take() does now. The general path's per-name calls
are then sent a batch of names at a time, as offer() is already.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from .. import __version__
from ..catalog import (
    READER,
    catalog_damage,
    damaged_catalog,
    open_connection,
    quick_check_problem,
)
from ..crashpoints import crashpoint
from ..errors import NothingToSave
from ..lock import hold_save_lock, release_save_lock, remove_dead_save_lock, save_alive
from ..model import TYPE_FILE, SaveStats, Version
from ..pathcodec import parent
from ..repo import Repository
from ..xattrs import XattrSet, is_text, set_digest
from .borrow import Borrower
from .intake import ChunkIntake
from .interning import PathInterner
from .reader import ReadBatch, ReadResult
from .series import (  # noqa: F401 - re-exported: callers ask the session module
    SUBSET_NAME_MAX,
    series_exists,
    subset_for_roots,
)

# An unchanged file recorded by the fast path costs next to nothing to redo after an
# interruption, so it counts as 1/UNCHANGED_PER_BATCH_FILE of a file towards a commit batch
# (batch_files): each commit syncs the WAL, ~1 ms quiet, much more under I/O load.
UNCHANGED_PER_BATCH_FILE = 16
RECORD_BATCH = 256  # recorded items whose catalog rows are inserted together (flush_records)
# A catalog file this big or bigger is probed for damage (quick_check, ~2.5 ms per MB: 1.5 s
# for a million files) in a thread while the save goes on (IntegrityProbe); the save row
# and all after it are committed only once the probe passed. A smaller one is probed before
# the save row is written: its probe takes a few ms.
BACKGROUND_PROBE_BYTES = 4 << 20

Warn = Callable[[str], None]


def _with_content(v: Version, size: int, content_id: int) -> Version:
    """v._replace(size=SIZE, content_id=CONTENT_ID), without _replace's per-field loop."""
    return Version(v.mode, v.uid, v.gid, v.user, v.group, size, v.mtime_ns, v.ctime_ns, v.dev,
                   v.ino, v.nlink, v.rdev, v.link_target, content_id, v.xattrs_id)


class IntegrityProbe:
    """quick_check of the catalog at PATH on a read connection of its own, in a thread:
    SQLite runs it without the GIL, so a re-save walks and matches its names meanwhile.
    PROBLEM: the first damage found, if any; FAILED: the probe itself could not run (busy,
    open error): the writer probes again (SaveSession._settle_probe)."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.problem: str | None = None
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="catalog-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = open_connection(self.path, READER)
        except BaseException:  # noqa: BLE001 - the writer probes again
            self.failed = True
            return
        try:
            conn.execute("PRAGMA cache_size = -2048")  # each page is read once
            self.problem = quick_check_problem(conn, errors_are_problems=False)
        except BaseException:  # noqa: BLE001 - the writer probes again
            self.failed = True
        finally:
            conn.close()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()


class SaveSession:
    """One save of HOSTNAME/SUBSET into REPO (see the module docstring for the calls)."""

    def __init__(self, repo: Repository, hostname: str, subset: str,
                 roots: list[bytes] | None, warn: Warn, batch_files: int = 20_000,
                 batch_bytes: int = 256 << 20, batch_seconds: float = 10.0,
                 dry_run: bool = False) -> None:
        self.repo = repo
        # a dry run (save --dry-run) only asks: open() writes no save row and takes no save
        # lock, offer() records nothing, locate() interns nothing; record/store/finish are
        # not called
        self.dry_run = dry_run
        self.cat = repo.catalog
        self.hostname = hostname
        self.subset = subset
        self.roots = roots
        self._warn_cb = warn
        self.batch_files = batch_files
        self.batch_bytes = batch_bytes
        self.batch_seconds = batch_seconds
        self.stats = SaveStats()
        self.estimate: int | None = None  # files expected (the biggest candidate's), if known
        self.borrower: Borrower | None = None
        self.interner = PathInterner(self.cat)
        self._save_lock: int | None = None  # lock.hold_save_lock's fd while the save runs
        self._warn_lock = threading.Lock()
        self._txn = False
        self._batch_files = 0
        self._batch_bytes = 0
        self._batch_started = time.monotonic()
        self._fast_files = 0  # borrowed by the fast path, not yet counted in _batch_files
        # recorded files whose version and member rows are still to be inserted (in one
        # batch by flush_records): [path, path id or None, version, id of a version to
        # reuse or None]
        self._records: list[list] = []
        self._xattr_sets: dict[bytes, int] = {}  # attribute set digest -> id
        self.intake = ChunkIntake(self.cat, repo.store, self.ensure_txn)
        # a catalog probed in a thread (open): its save row is not committed until the probe
        # passed (_settle_probe; then _row_pending until the next commit, after which the
        # lock files of the dead saves it marked interrupted are removed: _dead)
        self._probe: IntegrityProbe | None = None
        self._row_pending = False
        self._dead: list[int] = []

    @property
    def borrowing(self) -> bool:
        """Whether there are earlier saves to borrow from (a re-save)."""
        return bool(self.borrower.candidates)

    @property
    def sink(self):
        """Where chunk bodies go: this repository's store (its durable batch); nothing is
        written there before the catalog's probe passed."""
        if self._probe is not None:
            self._settle_probe()
        return self.repo.store

    def warn(self, msg: str) -> None:
        """Record a per-file problem (thread-safe: the name reader warns from its thread)."""
        with self._warn_lock:
            self.stats.warnings += 1
            self._warn_cb(msg)

    def ensure_txn(self) -> None:
        """Take the catalog's write lock only when there is something to write."""
        if not self._txn:
            self.cat.begin()
            self._txn = True

    # -- opening --------------------------------------------------------------------------

    def open(self) -> None:
        """Insert the save row (running, held by its lock), mark this host's dead running
        saves interrupted, and find the candidate saves to borrow from."""
        if self.dry_run:
            self.find_candidates(0)  # no save row: every save of the series is a candidate
            return
        host = socket.gethostname()
        repo_path = self.repo.path
        probe = self._start_probe()
        if probe is None:
            self.cat.probe_integrity()  # a damaged catalog: refuse before writing anything
        self.cat.begin()
        try:
            dead = [sid for sid, pid in self.cat.running_saves_of_host(host)
                    if not save_alive(repo_path, sid, pid)]
            for sid in dead:
                self.cat.mark_save_interrupted(sid)
            started_ns = time.time_ns()
            self.stats.save_id = self.cat.insert_save(
                self.hostname, self.subset, started_ns, __version__, host, os.getpid())
            self.check_roots()
            # held before the row is visible: a 'running' row with a free lock is dead
            self._save_lock = hold_save_lock(repo_path, self.stats.save_id)
        except BaseException:
            self.cat.rollback_quietly()
            if probe is not None:
                probe.wait()
            raise
        if probe is None:
            self.cat.commit()
            for sid in dead:
                remove_dead_save_lock(repo_path, sid)
        else:  # committed by the first checkpoint after the probe passed
            self._probe, self._dead, self._txn = probe, dead, True
        self.find_candidates(self.stats.save_id)

    def _start_probe(self) -> IntegrityProbe | None:
        """The probe of a big catalog, started in a thread; None for a small one, or when a
        second connection could not read it while this one writes (not WAL: a rollback
        journal, or the exclusive locking of a network filesystem)."""
        try:
            if os.path.getsize(self.cat.path) < BACKGROUND_PROBE_BYTES:
                return None
        except OSError:
            return None
        conn = self.cat.conn
        if conn.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal" or \
                conn.execute("PRAGMA locking_mode").fetchall()[0][0] != "normal":
            return None
        return IntegrityProbe(self.cat.path)

    def _settle_probe(self) -> None:
        """Wait for the catalog's probe; NotACatalog when it found damage (nothing of this
        save is committed then, and nothing more is written)."""
        probe = self._probe
        if probe is None:
            return
        probe.wait()
        self._probe = None
        problem = probe.problem
        if probe.failed:  # it could not run: probe here, in this transaction
            problem = quick_check_problem(self.cat.conn)
        if problem is not None:
            raise damaged_catalog(self.cat.path, problem)
        self._row_pending = True

    def _committed(self) -> None:
        """After a commit: the save row is visible; the dead saves' lock files can go."""
        if self._row_pending:
            self._row_pending = False
            for sid in self._dead:
                remove_dead_save_lock(self.repo.path, sid)
            self._dead = []

    def find_candidates(self, save_id: int) -> None:
        """The earlier saves of the series but SAVE_ID to borrow from, and their Borrower."""
        candidates = self.cat.previous_saves_for_borrowing(self.hostname, self.subset, save_id)
        if candidates:
            biggest = max(self.cat.get_save(sid).files for sid, _ in candidates)
            self.estimate = biggest or None
        legacy = {sid for sid, _ in candidates if self.cat.is_legacy_save(sid)}
        # saves that recorded no extended attributes: imported ones, those made before the
        # catalog had them (migration 0003)
        before = int(self.cat.get_meta("last_save_without_xattrs") or 0)
        attrless = legacy | {sid for sid, _ in candidates if sid <= before}
        interner = self.interner
        self.borrower = Borrower(self.cat, self.repo.store, candidates, legacy, attrless,
                                 interner.remember, interner.known)
        if candidates:
            interner.hint = self.borrower.path_id_hint

    def check_roots(self) -> None:
        """Record the save's root PATHs; warn when they differ from the previous save's of
        the series (two trees in one series: expire's policy would treat them as one)."""
        roots = self.roots
        if roots is None:
            return
        joined = b"\0".join(sorted(roots))
        self.cat.set_save_roots(self.stats.save_id, joined)
        before = self.cat.previous_save_roots(self.hostname, self.subset, self.stats.save_id)
        if before is not None and before != joined:
            def shown(raw: bytes) -> str:
                return " ".join(os.fsdecode(r) for r in raw.split(b"\0"))
            self.warn(f"series {self.hostname}/{self.subset}: the paths saved "
                      f"changed from {shown(before)} to {shown(joined)}; expire treats "
                      "the series as one (give another --subset to keep them apart)")

    def close(self) -> None:
        """Release the save's lock (its final status is committed, or it is dead)."""
        if self._save_lock is not None:
            release_save_lock(self.repo.path, self.stats.save_id, self._save_lock)
            self._save_lock = None

    # -- borrowing ------------------------------------------------------------------------

    def offer(self, entries: list[tuple[bytes, os.stat_result, str, str]]) -> list[bool]:
        """For each (path, lstat, user, group), whether it was borrowed unchanged from the
        latest save and recorded as its member (the fast path, decided for the whole batch
        in a few statements: Borrower.match); the others are the client's to go on with
        (the general path)."""
        if not entries or not self.borrower.fast:
            return [False] * len(entries)
        if not self.dry_run:
            self.ensure_txn()
        try:
            out, places = self.borrower.match(entries)
        except Exception:
            if self._probe is not None:  # damage met here: the probe's one error for it
                self._settle_probe()
            raise
        if self.dry_run or True not in out:
            return out
        cat, stats = self.cat, self.stats
        matched, files, size = cat.matched_totals()
        if not matched:
            return out
        for seq in cat.insert_matched_members(stats.save_id, matched):  # a path given twice
            path, st, _, _ = entries[seq - 1 if places is None else places[seq - 1]]
            self.warn(f"{os.fsdecode(path)}: given more than once; saved once")
            matched -= 1
            if st.st_mode & 0o170000 == 0o100000:
                files -= 1
                size -= st.st_size
        crashpoint("borrow_after_members")
        stats.files += matched
        stats.files_borrowed += files
        stats.bytes_borrowed += size
        stats.bytes += size
        fast = self._fast_files + matched
        self._batch_files += fast // UNCHANGED_PER_BATCH_FILE
        self._fast_files = fast % UNCHANGED_PER_BATCH_FILE
        return out

    def locate(self, path: bytes) -> tuple[int | None, int | None]:
        """(PATH's id, its directory's id or None for /), or None for a path the catalog
        lacks (no earlier save holds it). Nothing is interned here: a new path is interned
        with the batch of records that holds it (flush_records, PathInterner.intern_batch),
        a few statements per batch instead of one per path."""
        if self.borrower is not None:
            found = self.borrower.located(path)  # fetched with its batch's offer
            if found is not None:
                return found
        known = self.interner.known
        up = parent(path)
        return known(path), known(up) if up is not None else None

    def kept_xattrs(self, path: bytes, path_id: int | None, parent_id: int | None,
                    v: Version) -> tuple[bool, int | None]:
        """(True, the earlier attribute set id) when the file's attributes need no reading."""
        return self.borrower.kept_xattrs(path, path_id, parent_id, v)

    def xattr_set_id(self, xattrs: XattrSet) -> int:
        """The catalog's id of an attribute set, stored on first sight (sets are few)."""
        digest = set_digest(xattrs)
        set_id = self._xattr_sets.get(digest)
        if set_id is None:
            self.ensure_txn()
            set_id = self.cat.xattr_set_id(digest, [(n, x, is_text(x)) for n, x in xattrs])
            if len(self._xattr_sets) < 4096:
                self._xattr_sets[digest] = set_id
        return set_id

    def borrow(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version
               ) -> tuple[Version, int | None] | None:
        """Borrower.borrow, counted: (the version to record, a version id to reuse or None),
        or None when the file must be read."""
        found = self.borrower.borrow(path, path_id, parent_id, v)
        if found is not None:
            self.stats.files_borrowed += 1
            self.stats.bytes_borrowed += v.size
        return found

    def reusable_version(self, path: bytes, path_id: int | None, parent_id: int | None,
                         v: Version) -> int | None:
        return self.borrower.reusable_version(path, path_id, parent_id, v)

    # -- chunks ---------------------------------------------------------------------------

    def take(self, result, pending: list, seen_existing: bool):
        """A reader task's RESULT once the chunk files it wrote (PENDING) are adopted
        (ChunkIntake.take): a file that met a damaged chunk file comes back as REREAD."""
        if self._probe is not None:
            self._settle_probe()
        return self.intake.take(result, pending, seen_existing)

    def vet_found(self, results: list) -> set[bytes]:
        """The sha256s of the chunk files RESULTS found on disk that fail verification."""
        if self._probe is not None:
            self._settle_probe()
        return self.intake.vet_found(results)

    def discard(self, pending: list) -> None:
        """Remove temp files written for reads that will not be recorded."""
        self.repo.store.discard(pending)

    def discard_temps_of(self, pids: list[int]) -> None:
        """Remove the temp files of dead reader processes PIDS."""
        self.repo.store.discard_temps_of(pids)

    # -- recording ------------------------------------------------------------------------

    def contents_of_batch(self, batch: ReadBatch) -> None:
        """The content ids of a whole read_batch in a few statements (Catalog.contents_of)."""
        read = [r for r in batch if isinstance(r, ReadResult)]
        if read:
            self.ensure_txn()
            ids = self.cat.contents_of(
                [(r.digest, r.size, [(c.ref, c.stored_length, c.new) for c in r.chunks])
                 for r in read])
            for r, content_id in zip(read, ids, strict=True):
                r.content_id = content_id
        batch.contents_known = True

    def store_content(self, v: Version, result: ReadResult) -> Version:
        """V with the content of a file read (RESULT), recorded in the catalog if new."""
        self.ensure_txn()
        self.stats.files_read += 1
        self.stats.bytes_read += result.size
        self._batch_bytes += result.size
        for c in result.chunks:
            if c.new:
                self.stats.new_chunks += 1
                self.stats.new_bytes_stored += c.stored_length
        if result.content_id is not None:
            return _with_content(v, result.size, result.content_id)
        refs = [c.ref for c in result.chunks]
        content_id = self.cat.content_id(result.digest, result.size, refs)
        if content_id is None:
            content_id = self.cat.insert_content(
                result.digest, result.size, [(c.ref, c.stored_length) for c in result.chunks])
        else:
            for c in result.chunks:  # heal: a re-stored chunk gets its new stored length
                if c.new:
                    self.cat.chunk_id(c.ref, c.stored_length)
        return _with_content(v, result.size, content_id)

    def record(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version,
               version_id: int | None) -> None:
        """PATH is a member of the save as V (VERSION_ID: an identical earlier version's
        row to reuse, if known); rows inserted by the batch (flush_records)."""
        self.ensure_txn()
        is_file = v.type == TYPE_FILE
        if version_id is None and is_file:
            version_id = self.borrower.reusable_version(path, path_id, parent_id, v)
        self._records.append([path, path_id, v, version_id])
        self.stats.files += 1
        if is_file:
            self.stats.bytes += v.size
        self._batch_files += 1
        if len(self._records) >= RECORD_BATCH:
            self.flush_records()

    def flush_records(self) -> None:
        """Insert the paths, versions and members of the files recorded since the last
        flush, a few statements per batch instead of two or three per file (each statement
        hands the GIL to the readers and waits to take it back). Before every commit: the
        rows join the transaction that makes their contents' chunks durable first."""
        records = self._records
        if not records:
            return
        self._records = []
        unknown = [r for r in records if r[1] is None]
        if unknown:
            ids = self.interner.intern_batch([r[0] for r in unknown])
            for r, path_id in zip(unknown, ids, strict=True):
                r[1] = path_id
        versions = self.cat.insert_versions([(r[1], r[2]) for r in records if r[3] is None])
        new_ids = iter(versions)
        save_id = self.stats.save_id
        rows = [(save_id, r[1], next(new_ids) if r[3] is None else r[3]) for r in records]
        for i in self.cat.insert_members(rows):  # a path given twice: saved once
            path, _, v, _ = records[i]
            self.warn(f"{os.fsdecode(path)}: given more than once; saved once")
            self.stats.files -= 1
            if v.type == TYPE_FILE:
                self.stats.bytes -= v.size

    def write_counters(self) -> None:
        s = self.stats
        self.cat.update_save_counters(
            s.save_id, files=s.files, bytes=s.bytes, bytes_read=s.bytes_read,
            bytes_borrowed=s.bytes_borrowed, new_chunks=s.new_chunks,
            new_bytes_stored=s.new_bytes_stored, warnings=s.warnings)

    # -- commits --------------------------------------------------------------------------

    def checkpoint(self, force: bool = False) -> None:
        """Commit what is recorded (its chunk files made durable first) when a batch is due
        (files, bytes or seconds), or now when FORCEd; nothing to do outside a transaction."""
        now = time.monotonic()
        if not self._txn:
            return
        due = force or self._batch_files >= self.batch_files \
            or self._batch_bytes >= self.batch_bytes \
            or now - self._batch_started >= self.batch_seconds
        if self._probe is not None:
            if not due and not self._probe.done():
                return
            self._settle_probe()
        if not due and not self._row_pending:  # the save row: committed once probed
            return
        self.flush_records()
        self.repo.store.flush()
        self.write_counters()
        self.cat.commit()
        self._committed()
        self._txn = False
        self._batch_files = 0
        self._batch_bytes = 0
        self._batch_started = now

    def finish(self, status: str) -> None:
        """The final commit: the save is STATUS (complete or interrupted)."""
        self._settle_probe()
        self.ensure_txn()
        self.flush_records()
        self.repo.store.flush()
        self.write_counters()
        crashpoint("before_save_complete")
        self.cat.finish_save(self.stats.save_id, status, time.time_ns())
        self.cat.commit()
        self._committed()
        self._txn = False
        self.stats.status = status
        problem = self.cat.checkpoint()
        if problem:
            self.warn(f"save {self.stats.save_id} is {status} and restorable; only folding the "
                      f"catalog's write-ahead log into the catalog file failed ({problem}): "
                      "nothing is lost, a later save or expire folds it")

    def discard_empty(self, names_seen: int) -> None:
        """A save that saved nothing is not recorded at all: as the newest complete save
        of its series, an empty save would be what expire's policy keeps."""
        self._settle_probe()
        self.ensure_txn()
        self.cat.delete_save(self.stats.save_id)
        self.cat.commit()
        self._committed()
        self._txn = False
        self.stats.status = "discarded"
        if names_seen:
            why = f"none of the {names_seen:,} names given could be saved (see above)"
        elif self.stats.warnings:
            why = "no name could be saved (see above)"
        else:
            why = "no names came in (an empty list; is the find command right?)"
        raise NothingToSave(why)

    def abandon(self, error: BaseException | None = None) -> None:
        """After an error: keep nothing uncommitted, mark the save interrupted if possible
        (not in a catalog found damaged: nothing more is written there)."""
        self.repo.store.abandon()
        self.cat.rollback_quietly()
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.wait()  # its connection closed before this one
        if catalog_damage(error) or probe is not None or self._row_pending:
            # damaged: nothing more is written; or the save row was never committed (the
            # catalog's probe had not passed, or no commit came since): nothing to mark
            self._row_pending = False
            self.stats.status = "interrupted"
            return
        self._records = []
        self._txn = False
        try:
            self.cat.begin()
            self.write_counters()
            self.cat.finish_save(self.stats.save_id, "interrupted", time.time_ns())
            self.cat.commit()
        except Exception:  # the original error matters more than this one
            self.cat.rollback_quietly()
        self.stats.status = "interrupted"
