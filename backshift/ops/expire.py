"""Expire: remove the saves a retention policy lets go, then collect garbage exactly.

Order (invariant I3): under the exclusive repository lock, in ONE catalog transaction,
delete the save rows (members cascade), then versions, contents, chunks and paths that
nothing references; verify that every chunk still referenced is on disk (else roll back
and stop: nothing deleted); commit; only then unlink chunk files that no catalog row names
(the ones just freed and orphans left by crashes) and stale temp files. A crash anywhere
leaves at worst orphan files, which the next expire removes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..crashpoints import crashpoint
from ..errors import ReferencedChunksMissing
from ..repo import Repository
from ..retention import Decision, Policy, decide
from ..store import TEMP_MARK

TEMP_GRACE_S = 3600  # temp chunk files younger than this may belong to a live writer

Echo = Callable[[str], None]


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


def expire(repo: Repository, policy: Policy, now_ns: int | None = None,
           hostname: str | None = None, subset: str | None = None, dry_run: bool = False,
           tz=None) -> ExpireResult:
    """Apply POLICY to the saves (narrowed by HOSTNAME/SUBSET); remove and collect garbage."""
    cat, store = repo.catalog, repo.store
    now_ns = time.time_ns() if now_ns is None else now_ns
    saves = cat.list_saves(hostname, subset)
    kwargs = {"tz": tz} if tz is not None else {}
    decisions = decide(saves, policy, now_ns, **kwargs)
    result = ExpireResult(decisions, dry_run)
    on_disk, temps = _list_store(store)
    cat.begin()
    try:
        for d in decisions:
            if not d.keep:
                cat.delete_save(d.save.id)
                result.saves_removed += 1
        freed = cat.sweep_unreferenced()
        remaining = {sha: n for sha, n in cat.all_chunks()}
        missing = [sha for sha in remaining if sha not in on_disk]
        if missing:
            raise ReferencedChunksMissing(len(missing), missing[0].hex())
        result.chunks_freed = len(freed)
        result.bytes_freed = sum(on_disk.get(sha, 0) for sha, _ in freed)
    except BaseException:
        cat.rollback_quietly()
        raise
    freed_set = {sha for sha, _ in freed}
    garbage = [sha for sha in on_disk if sha not in remaining]
    result.orphans_removed = sum(1 for sha in garbage if sha not in freed_set)
    result.orphan_bytes = sum(on_disk[sha] for sha in garbage if sha not in freed_set)
    old_temps = [p for p, mtime in temps if mtime < now_ns / 1e9 - TEMP_GRACE_S]
    result.temps_removed = len(old_temps)
    if dry_run:
        cat.rollback_quietly()
        return result
    cat.commit()
    crashpoint("gc_after_catalog_delete")
    for sha in garbage:
        try:
            store.remove(sha)
        except OSError as e:
            result.unlink_errors.append(f"{sha.hex()}: {e.strerror or e}")
        crashpoint("gc_mid_unlink")
    for path in old_temps:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            result.unlink_errors.append(f"{os.fsdecode(path)}: {e.strerror or e}")
    cat.checkpoint()
    return result


def _list_store(store) -> tuple[dict[bytes, int], list[tuple[bytes, float]]]:
    """Every chunk file (sha256 -> size) and every other file (path, mtime) in the store."""
    on_disk: dict[bytes, int] = {}
    temps: list[tuple[bytes, float]] = []
    for sha, info in store.iter_chunk_files():
        if sha is not None:
            on_disk[sha] = info
            continue
        if TEMP_MARK not in os.path.basename(info):
            continue  # not ours: left alone (check counts it)
        try:
            temps.append((info, os.lstat(info).st_mtime))
        except FileNotFoundError:
            pass
    return on_disk, temps


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
