"""Importing the saves of an original backshift 1.x save directory (`import-legacy`).

Per legacy save, in start-time order, skipping those already imported (save.legacy_id):

1. Contents pass (streams the save's per-directory DBs): every distinct chunk list of a
   regular file that the catalog does not know yet is resolved by reading its legacy chunks
   once: each is decoded and checked against its name (sha256), its bytes feed the xxh3-128
   digest of the content, and it is placed under REPO/chunks by hard link or copy. Chunks
   are made durable (syncfs, rename, syncfs) before the short transaction that inserts the
   contents naming them. Contents no save uses yet are harmless (GC removes them).
2. Save pass: ONE transaction inserts the save (hostname/subset from the id, times from the
   summary, legacy_id), the paths, versions and members, then commits. So a legacy save is
   either fully imported or absent, and running the import again finishes an interrupted one.

A regular file whose legacy chunk is missing or damaged is NOT imported (a restore could only
give wrong bytes): a warning names the chunk and the files that need it, the save gets a
warning count, and the next save of the series reads that file afresh.

Hardlinks are rebuilt from (st_dev, st_ino) among the save's regular files; nlink (not stored
by the original) is the size of that group. The legacy hardlinks/ Bloom-filter file is ignored.
The save directory is read through legacydir.py (bounded reads, never through a symlink).
"""

from __future__ import annotations

import collections
import hashlib
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from .. import __version__
from .. import legacy as lg
from ..crashpoints import crashpoint
from ..model import ChunkRef, Version
from ..repo import Repository
from .interning import PathInterner
from .legacydir import Warn, iter_entries, list_legacy_ids, read_legacy_chunk, read_summary

PROGRESS_EVERY_S = 0.2
LINK = "link"
COPY = "copy"
CONTENT_BATCH = 500
MAX_NAMED_FILES = 5  # files named per damaged chunk in its warning
EMPTY_DIGEST = xxhash.xxh3_128(b"").digest()


@dataclass
class ImportStats:
    saves_found: int = 0
    saves_imported: int = 0
    saves_skipped: int = 0  # already imported earlier
    files: int = 0
    bytes: int = 0
    files_skipped: int = 0  # damaged or unreadable entries
    chunks_linked: int = 0
    chunks_copied: int = 0
    chunks_present: int = 0  # already in the repository
    chunks_bad: int = 0  # missing or damaged in the legacy directory
    warnings: int = 0
    elapsed_s: float = 0.0
    bytes_read: int = 0  # of legacy chunk files
    # for a progress display: the save in work (1-based, of saves_found), its pass, and
    # how many of its entries that pass went through
    save_number: int = 0
    phase: str = ""
    entries: int = 0
    method: str = LINK
    imported: list[tuple[str, int]] = field(default_factory=list)  # (legacy id, save id)


# -- placing chunks -----------------------------------------------------------------------


class Placer:
    """Puts verified legacy chunk files under REPO/chunks through the store's own batch
    protocol (temp, syncfs, rename, syncfs): by hard link where it can, else by copy."""

    def __init__(self, repo: Repository, method: str, stats: ImportStats) -> None:
        self.store = repo.store
        self.method = method
        self.stats = stats

    def place(self, sha: bytes, source: bytes, body: bytes) -> None:
        linked = self.store.put_body(sha, body, source if self.method == LINK else None)
        if linked:
            self.stats.chunks_linked += 1
        else:
            self.stats.chunks_copied += 1
            self.method = COPY  # linking was refused (e.g. protected_hardlinks): copy on

    def flush(self) -> None:
        self.store.flush()

    def abandon(self) -> None:
        self.store.abandon()


# -- the import ---------------------------------------------------------------------------


class Importer:
    def __init__(self, repo: Repository, savedir: bytes, method: str, warn: Warn,
                 progress: Callable[[ImportStats], None] | None = None) -> None:
        self.repo = repo
        self.cat = repo.catalog
        self.savedir = savedir
        self.stats = ImportStats(method=method)
        self._warn = warn
        self.placer = Placer(repo, method, self.stats)
        self.bad_chunks: dict[bytes, str] = {}  # sha -> why it cannot be used
        self.good_chunks: dict[bytes, int] = {}  # sha -> stored length (placed or present)
        self.paths = PathInterner(self.cat, max_depth=1 << 30)  # every path cached
        self.progress = progress
        self.started = time.monotonic()
        self._last_progress = 0.0

    def report_progress(self, final: bool = False) -> None:
        """Call the progress callback at most every PROGRESS_EVERY_S (and when FINAL)."""
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.stats.elapsed_s = now - self.started
            self.progress(self.stats)

    def warn(self, msg: str) -> None:
        self.stats.warnings += 1
        self._warn(msg)

    def run(self) -> ImportStats:
        self.started = time.monotonic()
        ids = list_legacy_ids(self.savedir, self.warn)
        self.stats.saves_found = len(ids)
        done = self.cat.legacy_ids()
        try:
            for number, lid in enumerate(ids, 1):
                if lid.text in done:
                    self.stats.saves_skipped += 1
                    continue
                self.stats.save_number = number
                self.import_save(lid)
                self.report_progress(final=True)
        except BaseException:
            self.placer.abandon()
            self.cat.rollback_quietly()
            raise
        problem = self.cat.checkpoint()
        if problem:  # every save is committed: a warning, as for save and expire
            self.warn(f"the import is committed; only folding the catalog's write-ahead log "
                      f"into the catalog file failed ({problem}): a later command folds it")
        self.stats.method = self.placer.method
        self.stats.elapsed_s = time.monotonic() - self.started
        return self.stats

    # -- one save -------------------------------------------------------------------------

    def import_save(self, lid: lg.LegacyId) -> None:
        try:
            summary = read_summary(self.savedir, lid)
        except (OSError, lg.LegacyFormatError) as e:
            self.warn(f"legacy save {lid.text}: skipped: summary: {e}")
            return
        if not os.path.isdir(os.path.join(self.savedir, b"files", os.fsencode(lid.text))):
            self.warn(f"legacy save {lid.text}: skipped: its files/ metadata is gone "
                      "(expired by the original?)")
            return
        links: collections.Counter[tuple[int, int]] = collections.Counter()
        self.resolve_contents(lid.text, links)
        needers: dict[bytes, list[bytes]] = collections.defaultdict(list)
        self.record_save(lid, summary, links, needers)
        for sha, paths in needers.items():
            names = ", ".join(os.fsdecode(p) for p in paths[:MAX_NAMED_FILES])
            more = f" and {len(paths) - MAX_NAMED_FILES} more" if len(paths) > MAX_NAMED_FILES \
                else ""
            self._warn(f"legacy save {lid.text}: chunk {sha.hex()} {self.bad_chunks[sha]}; "
                       f"not imported: {names}{more}")

    def resolve_contents(self, lid: str, links: collections.Counter) -> None:
        """Pass 1: make every content of the save known to the catalog (or its chunk bad)."""
        pending: dict[tuple, tuple[bytes, int, list]] = {}
        last_commit = time.monotonic()
        self._start_phase("checking chunks")
        for _path, rec in iter_entries(self.savedir, lid, self.warn):
            self.stats.entries += 1
            self.report_progress()
            if not stat.S_ISREG(rec.mode):
                continue
            links[(rec.dev, rec.ino)] += 1
            chunks = rec.chunks
            if chunks in pending or any(sha in self.bad_chunks for sha, _n in chunks):
                continue
            if self.content_for(chunks) is not None:
                continue
            resolved = self.read_content(chunks)
            if resolved is not None:
                pending[chunks] = resolved
            if len(pending) >= CONTENT_BATCH or time.monotonic() - last_commit > 5:
                self.commit_contents(pending)
                last_commit = time.monotonic()
        self.commit_contents(pending)

    def _start_phase(self, phase: str) -> None:
        self.stats.phase = phase
        self.stats.entries = 0
        self.report_progress(final=True)

    def content_for(self, chunks: tuple) -> int | None:
        if not chunks:
            return self.cat.content_id(EMPTY_DIGEST, 0, [])
        return self.cat.content_by_chunk_list([ChunkRef(s, n) for s, n in chunks])

    def read_content(self, chunks: tuple) -> tuple[bytes, int, list] | None:
        """(digest, size, [(ref, stored length)]) read from the legacy chunks, verifying
        and placing each; None when a chunk is missing or damaged (recorded as bad)."""
        digest = xxhash.xxh3_128()
        size = 0
        refs = []
        for sha, length in chunks:
            data, stored = self.read_chunk(sha, length)
            if data is None:
                return None
            digest.update(data)
            size += length
            refs.append((ChunkRef(sha, length), stored))
        return digest.digest(), size, refs

    def read_chunk(self, sha: bytes, length: int) -> tuple[bytes | None, int]:
        h = sha.hex().encode()
        source = os.path.join(self.savedir, b"chunks", h[:5], h[5:11], h[11:])
        body, why = read_legacy_chunk(source, length)
        self.stats.bytes_read += len(body)
        data = None
        if why is None:
            try:
                data = lg.decode_body(body, max_size=max(length, 1) * 2)
            except lg.LegacyFormatError as e:
                why = f"is damaged ({e})"
            else:
                if len(data) != length:
                    why = f"is damaged (length {len(data)}, expected {length})"
                elif hashlib.sha256(data).digest() != sha:
                    why = "is damaged (content does not match its name)"
        if why is not None:
            # the repository may hold a good copy already (an earlier save or import)
            if self.repo.store.stored_size(sha) is not None:
                try:
                    return self.repo.store.read(ChunkRef(sha, length)), 0
                except Exception:  # noqa: BLE001 - damaged there too: fall through
                    pass
            self.bad_chunks[sha] = why
            self.stats.chunks_bad += 1
            return None, 0
        if sha not in self.good_chunks:
            if self.repo.store.present(sha):
                self.stats.chunks_present += 1
                self.good_chunks[sha] = 0
            else:
                self.placer.place(sha, source, body)
                self.good_chunks[sha] = len(body)
        return data, self.good_chunks[sha]

    def commit_contents(self, pending: dict) -> None:
        if not pending:
            return
        self.placer.flush()  # chunks durable before the rows that name them
        self.cat.begin()
        for digest, size, refs in pending.values():
            if self.cat.content_id(digest, size, [ref for ref, _n in refs]) is None:
                self.cat.insert_content(digest, size, refs)
        self.cat.commit()
        pending.clear()

    def record_save(self, lid: lg.LegacyId, summary: lg.Summary,
                    links: collections.Counter, needers: dict) -> None:
        """Pass 2: the save, its paths, versions and members, in one transaction."""
        self.placer.flush()
        status = "complete" if summary.finish_ns is not None else "interrupted"
        self.cat.begin()
        save_id = self.cat.insert_legacy_save(
            lid.hostname, lid.subset, summary.start_ns, f"{__version__} import-legacy",
            lid.text, socket.gethostname())
        files = nbytes = skipped = 0
        self._start_phase("recording")
        for path, rec in iter_entries(self.savedir, lid.text, lambda msg: None):
            self.stats.entries += 1
            self.report_progress()
            content_id = None
            size = 0
            nlink = 1
            if stat.S_ISREG(rec.mode):
                bad = [sha for sha, _n in rec.chunks if sha in self.bad_chunks]
                if bad:
                    needers[bad[0]].append(path)
                    skipped += 1
                    continue
                content_id = self.content_for(rec.chunks)
                if content_id is None:  # resolved in pass 1, so only if the DB changed
                    self.warn(f"{os.fsdecode(path)}: skipped: its content is unknown")
                    skipped += 1
                    continue
                size = sum(n for _s, n in rec.chunks)  # what the original restores
                nlink = links.get((rec.dev, rec.ino), 1) if rec.ino else 1
            v = Version(mode=rec.mode, uid=rec.uid, gid=rec.gid, user=rec.user,
                        group=rec.group, size=size, mtime_ns=rec.mtime_ns,
                        ctime_ns=rec.ctime_ns, dev=rec.dev, ino=rec.ino, nlink=nlink,
                        rdev=rec.rdev, link_target=rec.link_target, content_id=content_id)
            path_id = self.paths.intern(path)
            version_id = self.cat.insert_versions([(path_id, v)])[0]
            if not self.cat.insert_members([(save_id, path_id, version_id)]):
                files += 1
                nbytes += size
        warnings = skipped
        self.cat.update_save_counters(save_id, files=files, bytes=nbytes, bytes_read=0,
                                      bytes_borrowed=0, new_chunks=0, new_bytes_stored=0,
                                      warnings=warnings)
        self.cat.finish_save(save_id, status, summary.finish_ns)
        self.cat.commit()
        crashpoint("import_after_save_commit")
        self.stats.saves_imported += 1
        self.stats.files += files
        self.stats.bytes += nbytes
        self.stats.files_skipped += skipped
        self.stats.warnings += skipped
        self.stats.imported.append((lid.text, save_id))


def choose_method(repo: Repository, savedir: bytes, requested: str | None) -> str:
    """--link / --copy as asked; by default link when both are on one filesystem."""
    if requested is not None:
        return requested
    try:
        same = os.stat(os.path.join(savedir, b"chunks")).st_dev == \
            os.stat(repo.store.root).st_dev
    except OSError:
        same = False
    return LINK if same else COPY


def import_legacy(repo: Repository, savedir: bytes, method: str | None, warn: Warn,
                  progress: Callable[[ImportStats], None] | None = None) -> ImportStats:
    """Import every not yet imported save of the backshift 1.x save directory SAVEDIR;
    PROGRESS, when given, is called with the stats now and then (and after each save)."""
    savedir = os.path.abspath(savedir)
    method = choose_method(repo, savedir, method)
    return Importer(repo, savedir, method, warn, progress).run()
