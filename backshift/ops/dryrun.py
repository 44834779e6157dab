"""save --dry-run: what a save would read and what it would borrow, writing nothing.

The names come exactly as a save's (ops/saverun.py input_names: the same walk, excludes and
name checks), and each is decided by the repository half of a save opened read-only
(SaveSession(dry_run=True)): the same candidate saves, the same Borrower and its rules
(the fast path's offer(), then borrow() for the rest). Nothing is recorded, stored or
finished; no file's contents are read (lstat only, and the chunk files' lstat that the
borrowing rules make).

The repository is opened READ_CHUNKS: a shared flock without a lock record and the
catalog read-only. Shared, so that saves (which hold it shared too) run alongside and
are never blocked, while an expire (exclusive) waits: it could otherwise remove the
candidate saves or the chunk files the answers are about, mid-run. No record, so that
nothing is left behind in the repository, even after a kill -9.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import NothingToSave
from ..model import TYPE_FILE, Version, type_of_mode
from .owners import Owners
from .save import SaveOptions, Warn, _fits_catalog, long_lstat
from .saverun import input_names
from .session import SaveSession

READ, BORROW, NEW, LINK = "read", "borrow", "new", "link"

Listing = Callable[[str, bytes], None]


@dataclass
class DryRunStats:
    """What a save would do: regular files read (and their bytes), regular files borrowed
    unchanged (and their bytes), other entries (directories, symlinks, devices...), and
    further links of a hard link group (recorded with their first's content: neither read
    nor borrowed, as a save counts them)."""

    files_read: int = 0
    bytes_read: int = 0
    files_borrowed: int = 0
    bytes_borrowed: int = 0
    new_other: int = 0
    hard_links: int = 0
    warnings: int = 0


class DryRun:
    """Decides, per name, what a save of opts.hostname/opts.subset would do with it."""

    def __init__(self, session: SaveSession, listing: Listing | None = None) -> None:
        self.session = session
        self.listing = listing
        self.stats = DryRunStats()
        self.owners = Owners()
        self.hardlinks: set[tuple[int, int]] = set()  # (dev, ino) of groups seen
        self.names_seen = 0

    def run(self, names: Iterable[bytes]) -> DryRunStats:
        session = self.session
        session.open()
        for path in names:
            self.add(path)
        self.stats.warnings = session.stats.warnings
        if not (self.stats.files_read or self.stats.files_borrowed or self.stats.new_other):
            # a save would record nothing and fail: say so as it would
            if self.names_seen:
                why = f"none of the {self.names_seen:,} names given could be saved (see above)"
            elif session.stats.warnings:
                why = "no name could be saved (see above)"
            else:
                why = "no names came in (an empty list; is the find command right?)"
            raise NothingToSave(why)
        return self.stats

    def add(self, path: bytes) -> None:
        """What Saver.add would do with PATH, decided by the session, counted and listed."""
        self.names_seen += 1
        session = self.session
        warn = session.warn
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            warn(f"{os.fsdecode(path)}: vanished before it could be saved")
            return
        except OSError as e:
            st = long_lstat(path, e, warn)
            if st is None:
                return
        ftype = type_of_mode(st.st_mode)
        if ftype is None:
            warn(f"{os.fsdecode(path)}: skipped: unknown file type {st.st_mode:o}")
            return
        if not _fits_catalog(st):
            warn(f"{os.fsdecode(path)}: skipped: a time, size or id beyond what the "
                 "catalog holds (64-bit; times up to 2262)")
            return
        if ftype != TYPE_FILE:
            if session.borrower.fast:  # a directory: its path id helps its children
                user, group = self.owners.names(st.st_uid, st.st_gid)
                session.offer([(path, st, user, group)])
            self.tell(NEW, path, 0)
            return
        if st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.hardlinks:
            # a further link of a group: its content comes with the first's
            self.tell(LINK, path, 0)
            return
        self.tell(self.decide(path, st), path, st.st_size)

    def decide(self, path: bytes, st: os.stat_result) -> str:
        """READ or BORROW for a regular file, by the rules a save applies: the fast path
        (offer), then borrow()."""
        session = self.session
        user, group = self.owners.names(st.st_uid, st.st_gid)
        action = READ
        if session.borrower.fast and session.offer([(path, st, user, group)])[0]:
            action = BORROW
        elif session.borrowing:
            path_id, parent_id = session.locate(path)
            v = Version(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, user=user,
                        group=group, size=st.st_size, mtime_ns=st.st_mtime_ns,
                        ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
                        nlink=st.st_nlink, rdev=st.st_rdev, link_target=None,
                        content_id=None)
            if session.borrow(path, path_id, parent_id, v) is not None:
                action = BORROW
        if st.st_nlink > 1:
            self.hardlinks.add((st.st_dev, st.st_ino))
        return action

    def tell(self, action: str, path: bytes, size: int) -> None:
        s = self.stats
        if action == READ:
            s.files_read += 1
            s.bytes_read += size
        elif action == BORROW:
            s.files_borrowed += 1
            s.bytes_borrowed += size
        elif action == LINK:
            s.hard_links += 1
        else:
            s.new_other += 1
        if self.listing is not None:
            self.listing(action, path)


def run_dry_run(repo_path: bytes, opts: SaveOptions, warn: Warn, *, cwd: bytes,
                paths: Iterable[bytes] = (), stream=None, one_file_system: bool = False,
                excludes: Iterable[str] = (), exclude_caches: bool = False,
                exclude_if_present: Iterable[str] = (), lock_wait_s: float = 0.0,
                listing: Listing | None = None) -> DryRunStats:
    """save --dry-run: the names a save of the same arguments would get, each decided as
    it would be (see the module docstring), LISTING(action, path) called for each."""
    from ..repo import READ_CHUNKS, open_repository

    with open_repository(repo_path, READ_CHUNKS, operation="save --dry-run",
                         lock_wait_s=lock_wait_s) as repo:
        session = SaveSession(repo, opts.hostname, opts.subset, opts.roots, warn,
                              dry_run=True)
        dry = DryRun(session, listing)
        names = input_names(session.warn, cwd=cwd, paths=paths, stream=stream,
                            one_file_system=one_file_system, excludes=excludes,
                            exclude_caches=exclude_caches,
                            exclude_if_present=exclude_if_present)
        return dry.run(names)
