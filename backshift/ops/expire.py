"""Expire: remove the saves a retention policy lets go, then collect garbage exactly.

Order (invariant I3): under the exclusive repository lock, in ONE catalog transaction,
delete the save rows (members cascade), then versions, contents, chunks and paths that
nothing references; verify that every chunk still referenced is on disk (else roll back
and stop: nothing deleted); commit; only then unlink chunk files that no catalog row names
(the ones just freed and orphans left by crashes) and stale temp files. A crash anywhere
leaves at worst orphan files, which the next expire removes.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..crashpoints import crashpoint
from ..errors import NoSuchSave, ReferencedChunksMissing
from ..lock import remove_dead_save_lock, save_alive
from ..repo import Repository
from ..retention import Decision, Policy, decide
from ..store import TEMP_MARK
from .catalog_copy import temp_copies

Echo = Callable[[str], None]
Progress = Callable[[str, int, int, int], None]


def _no_progress(step: str, done: int, total: int, removed: int) -> None:
    pass


@dataclass
class ExpireResult:
    decisions: list[Decision]
    dry_run: bool
    saves_removed: int = 0
    chunks_freed: int = 0
    bytes_freed: int = 0
    orphans_removed: int = 0
    orphan_bytes: int = 0
    temps_removed: int = 0
    unlink_errors: list[str] = field(default_factory=list)
    checkpoint_error: str | None = None  # all committed; only the WAL was not folded back


def expire(repo: Repository, policy: Policy, now_ns: int | None = None,
           hostname: str | None = None, subset: str | None = None, dry_run: bool = False,
           tz=None, progress: Progress | None = None) -> ExpireResult:
    """Apply POLICY to the saves (narrowed by HOSTNAME/SUBSET); remove and collect garbage.
    A save POLICY names (remove_ids) that is not among them is NoSuchSave, before anything
    is removed. PROGRESS(step, done, total, removed), when given: 'catalog' before the
    catalog's sweep, 'scan' and 'unlink' after each chunks/ directory."""
    progress = progress or _no_progress
    cat, store = repo.catalog, repo.store
    now_ns = time.time_ns() if now_ns is None else now_ns
    saves = cat.list_saves(hostname, subset)
    # A 'running' save of this host whose process is gone (its save lock is free, even when
    # the process is a zombie) was interrupted: judged as such, and marked so below.
    here = socket.gethostname()
    dead = {s.id for s in saves if s.status == "running" and s.writer_host == here
            and not save_alive(repo.path, s.id, s.writer_pid)}
    saves = [dataclasses.replace(s, status="interrupted") if s.id in dead else s
             for s in saves]
    unknown = sorted(policy.remove_ids - {s.id for s in saves})
    if unknown:
        narrowed = " of " + "/".join(x or "*" for x in (hostname, subset)) \
            if hostname or subset else ""
        raise NoSuchSave(f"{unknown[0]}{narrowed}")
    kwargs = {"tz": tz} if tz is not None else {}
    decisions = decide(saves, policy, now_ns, **kwargs)
    result = ExpireResult(decisions, dry_run)
    old_temps: list[bytes] = []
    progress("catalog", 0, 0, 0)
    cat.begin()
    try:
        for sid in dead:
            cat.mark_save_interrupted(sid)
        for d in decisions:
            if not d.keep:
                cat.delete_save(d.save.id)
                result.saves_removed += 1
        cat.sweep_unreferenced_versions()
        missing = 0
        first_missing = b""
        for fanout in range(256):  # one store directory at a time: memory stays flat
            entries = store.chunk_dir(fanout)
            on_disk = {sha: e for sha, e in entries if sha is not None}
            freed = dict(cat.unreferenced_chunks_in(fanout))
            named = set()
            for sha, _stored in cat.chunks_in(fanout):  # the freed rows are still there
                named.add(sha)
                if sha not in freed and sha not in on_disk:
                    missing += 1
                    first_missing = first_missing or sha
            result.chunks_freed += len(freed)
            for sha, entry in on_disk.items():
                if sha in freed:
                    result.bytes_freed += _size(entry)
                elif sha not in named:
                    result.orphans_removed += 1
                    result.orphan_bytes += _size(entry)
            old_temps += _temps(entries)
            progress("scan", fanout + 1, 256, 0)
        if missing:
            raise ReferencedChunksMissing(missing, first_missing.hex())
        old_temps += temp_copies(repo.path)
        cat.sweep_unreferenced_chunks()
    except BaseException:
        cat.rollback_quietly()
        raise
    result.temps_removed = len(old_temps)
    if dry_run:
        cat.rollback_quietly()
        return result
    cat.commit()
    for sid in dead:
        remove_dead_save_lock(repo.path, sid)
    crashpoint("gc_after_catalog_delete")
    # Unlink what no catalog row names, one directory at a time: the chunks just freed and
    # orphans a crash left. The exclusive lock keeps saves out, so the catalog is final.
    removed = 0
    for fanout in range(256):
        named = {sha for sha, _ in cat.chunks_in(fanout)}
        gone = [sha for sha, _entry in store.chunk_dir(fanout)
                if sha is not None and sha not in named]
        for i in range(0, len(gone), store.remove_batch):  # a DELETE takes 1,000 objects
            try:
                store.remove_many(gone[i:i + store.remove_batch])
                removed += len(gone[i:i + store.remove_batch])
            except OSError as e:
                result.unlink_errors.append(f"{gone[i].hex()}: {e.strerror or e}")
            crashpoint("gc_mid_unlink")
        progress("unlink", fanout + 1, 256, removed)
    for path in old_temps:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            result.unlink_errors.append(f"{os.fsdecode(path)}: {e.strerror or e}")
    result.checkpoint_error = cat.checkpoint()
    return result


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _temps(entries: list) -> list[bytes]:
    """Our temp files (TEMP_MARK in the name), whatever their age; others are left alone.

    Every one is a leftover, because expire holds the repository lock exclusively: the only
    writers of temp files (saves, their reader processes, catalog copies, import-legacy)
    hold it shared for as long as they write, and the flock goes with its process, so no
    live process of this host owns one; a save on another host sharing the repository
    holds a lock record, which makes the exclusive lock refuse to start. A reader process
    outliving a killed save (until PR_SET_PDEATHSIG ends it) may still write one, but no
    save will ever adopt it. Deciding by the lock rather than by the pid in the name: pids
    are reused (a stranger would keep a leftover forever), a zombie's pid looks alive, and
    another host's pids cannot be probed at all."""
    return [entry.path for sha, entry in entries
            if sha is None and TEMP_MARK in entry.name]


def decision_lines(decisions: Iterable[Decision], fmt_time: Callable[[int], str]) -> list[str]:
    """One line per save: keep/remove, id, series, start time, status, reasons.

    The same lines for --dry-run and the real run, so a dry run shows exactly what will go.
    """
    lines = []
    for d in decisions:
        s = d.save
        verb = "keep" if d.keep else "remove"
        lines.append(f"{verb:<12} save {s.id} {s.hostname}/{s.subset} "
                     f"{fmt_time(s.started_ns)} {s.status}: {'; '.join(d.reasons)}")
    return lines
