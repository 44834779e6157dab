"""check: make damage visible. Catalog integrity, chunk presence and size, optional re-read.

Fast mode: quick_check, foreign_key_check, the undeclared references by anti-join, every
referenced chunk present with its recorded stored length (a file of another size, or not a
regular file, is decoded and hashed: the same bytes have two valid encodings), dead
'running' saves, orphan chunk files and temp files counted (those no live process owns are
a warning), age of the newest catalog copy. --read-data also
decompresses and re-hashes chunks (all, or the n-th of t parts by sha256 prefix) and
verifies each content's xxh3-128 digest. Problems are grouped: each bad chunk once, with
the saves and paths that reference it. --repair moves damaged chunk files to
REPO/quarantine/ (never deletes them) so that the next save of the same data stores them
afresh, and records the size of sound chunk files in another encoding; nothing else.
(A little over 400 lines: one pass per kind of damage, each short, read in order.)
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from ..catalog import DIGEST_SCHEME
from ..errors import ChunkCorrupt, ChunkMissing, NotACatalog
from ..lock import pid_alive, read_records, remove_dead_save_lock, save_alive
from ..model import ChunkRef
from ..pathcodec import escape, from_key
from ..repo import Repository
from ..store import TEMP_MARK
from .catalog_copy import copy_temp_pid, newest_copy_age_s, temp_copies
from .readahead import read_ahead

USERS_SHOWN = 20


class IdSet:
    """A set of row ids as a bitmap: the ids of a million chunks take 128 KB where a set
    of their digests took ~100 MB (check --read-data's memory must not grow with the store)."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def add(self, i: int) -> None:
        byte, bit = divmod(i, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + len(self._bits) // 2))
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self._count += 1

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int):
            return False
        byte, bit = divmod(i, 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for byte, value in enumerate(self._bits):
            if value:
                for bit in range(8):
                    if value >> bit & 1:
                        yield byte * 8 + bit


@dataclass
class ChunkProblem:
    sha256: bytes
    what: str
    users: list[tuple[int, bytes]] = field(default_factory=list)  # (save id, path)


@dataclass
class CheckResult:
    catalog_problems: list[str] = field(default_factory=list)
    chunk_problems: dict[bytes, ChunkProblem] = field(default_factory=dict)
    content_problems: list[str] = field(default_factory=list)
    dead_saves: list[str] = field(default_factory=list)
    chunks_referenced: int = 0
    chunks_verified: IdSet = field(default_factory=lambda: IdSet())  # chunk row ids
    contents_verified: int = 0
    bytes_read: int = 0
    orphans_read: int = 0  # orphan chunk files verified (--read-data)
    orphans: int = 0
    orphan_bytes: int = 0
    temps: int = 0
    copy_age_s: float | None = None
    quarantined: list[bytes] = field(default_factory=list)
    repaired_saves: list[int] = field(default_factory=list)
    # sound chunk files in another encoding than recorded: (sha256, recorded, actual size)
    other_encodings: list[tuple[bytes, int, int]] = field(default_factory=list)
    lengths_recorded: bool = False  # --repair recorded their actual sizes
    leftover_temps: int = 0  # temp files in chunks/ that no live process owns
    leftover_copy_temps: int = 0  # the same in catalog-copies/
    saves_unverified: int = 0  # complete saves without a members digest (older ones)

    def problem_count(self) -> int:
        return (len(self.catalog_problems) + len(self.chunk_problems)
                + len(self.content_problems))

    def warning_count(self) -> int:
        """Not damage, a warning (exit 1): dead 'running' saves not marked yet, and leftovers
        of dead processes (expire removes them)."""
        return (len(self.dead_saves) - len(self.repaired_saves)
                + int(bool(self.leftover_temps)) + int(bool(self.leftover_copy_temps)))


class Leftovers:
    """Temp files no live process owns, as check (holding the lock shared) can tell: saves
    may run meanwhile. A chunk temp is named FINAL.tmp.HOST.PID.N (ChunkBatch._temp_name): one
    of this host is owned while its pid lives (a pid reused since keeps it, conservatively);
    one of another host while that host holds a lock record (its pids cannot be probed).
    A catalog copy's temp names only a pid: owned while it lives here, or while any other
    host holds a record. Expire, holding the lock exclusively, needs none of this."""

    def __init__(self, repo_path: bytes, here: str) -> None:
        self.repo_path = repo_path
        self.here = here.encode("ascii", "replace").replace(b"/", b"_")[:32]
        self._temps: list[bytes] = []

    def note(self, entry: os.DirEntry) -> None:
        if TEMP_MARK in entry.name:
            self._temps.append(entry.name)

    def unowned(self) -> tuple[int, int]:
        """(chunk temps, catalog-copy temps) that no live process owns."""
        hosts = {str(rec.get("host", "")).encode("ascii", "replace").replace(b"/", b"_")[:32]
                 for rec in read_records(self.repo_path)}
        others = bool(hosts - {self.here})
        chunks = 0
        for name in self._temps:
            tail = name.rsplit(TEMP_MARK, 1)[1].rsplit(b".", 2)  # HOST, PID, N
            if len(tail) != 3 or not tail[1].isdigit():
                chunks += 1  # not a name a store gives: nobody's
            elif tail[0] == self.here:
                chunks += not pid_alive(int(tail[1]), None)
            else:
                chunks += tail[0] not in hosts
        copies = 0
        for path in temp_copies(self.repo_path):
            pid = copy_temp_pid(path)
            copies += not others and (pid is None or not pid_alive(pid, None))
        return chunks, copies


def in_part(sha256: bytes, part: tuple[int, int] | None) -> bool:
    """Whether a chunk (or content digest) falls in part n of t: by its first 8 bytes."""
    if part is None:
        return True
    n, t = part
    return int.from_bytes(sha256[:8], "big") % t == n - 1


def check(repo: Repository, read_data: bool = False, part: tuple[int, int] | None = None,
          repair: bool = False, progress: Callable[..., None] | None = None) -> CheckResult:
    """PROGRESS(step, done, total, r), when given: 'list' after each chunks/ directory,
    'read' after each content re-read (done: chunks read, total: about those of the part)."""
    cat, store = repo.catalog, repo.store
    r = CheckResult()
    try:
        r.catalog_problems += [f"integrity_check: {p}"
                               for p in cat.integrity_problems(quick=not read_data)]
        r.catalog_problems += [f"foreign_key_check: table {t} row {rowid} -> {parent}"
                               for t, rowid, parent, _fk in cat.foreign_key_problems()]
        r.catalog_problems += cat.dangling_references()
        r.catalog_problems += _save_digest_problems(cat, r)
        here = socket.gethostname()
        leftovers = Leftovers(repo.path, here)
        for sid, host, subset, _started, writer_host, pid in cat.running_saves():
            if writer_host == here and not save_alive(repo.path, sid, pid):
                r.dead_saves.append(f"save {sid} ({host}/{subset}) is 'running' but its process "
                                    f"{pid} is gone: not damage, it keeps what it committed; "
                                    "the next save or expire on this host marks it "
                                    "interrupted (check --repair does it now)")
                if repair:
                    r.repaired_saves.append(sid)
        # Catalog first, then the disk: a save commits rows only after its files are durable,
        # so a chunk committed before a directory's rows are read is on disk by the time
        # that directory is listed. One fan-out directory at a time: memory stays flat.
        for fanout in range(256):
            referenced = dict(cat.chunks_in(fanout))
            r.chunks_referenced += len(referenced)
            on_disk: dict[bytes, int] = {}
            for sha, entry in store.chunk_dir(fanout):
                if sha is None:
                    r.temps += 1
                    leftovers.note(entry)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since listed (a concurrent expire): as if absent
                # anything but a regular file (a FIFO, directory, symlink) gets size -1: it
                # never matches, and verifying it says what it is without opening it
                on_disk[sha] = st.st_size if stat.S_ISREG(st.st_mode) else -1
            for sha, stored_length in referenced.items():
                size = on_disk.get(sha)
                if size is None:
                    r.chunk_problems[sha] = ChunkProblem(sha, "missing")
                elif (stored_length and size != stored_length) or size < 0:
                    _verify_mismatch(cat, store, r, sha, size, stored_length)
            for sha, size in on_disk.items():
                if sha not in referenced:
                    r.orphans += 1
                    r.orphan_bytes += max(size, 0)
                    if read_data and in_part(sha, part):
                        _read_orphan(store, r, sha)
            if progress is not None:
                progress("list", fanout + 1, 256, r)
        r.leftover_temps, r.leftover_copy_temps = leftovers.unowned()
        if read_data:
            _read_data(repo, r, part, progress)
        for problem in r.chunk_problems.values():
            problem.users = [(sid, from_key(key))
                             for sid, key in cat.chunk_users(problem.sha256, USERS_SHOWN + 1)]
    except NotACatalog as e:  # the catalog cannot be read: say so, and what to do
        r.catalog_problems.append(f"{e.args[1]}: the catalog is damaged; restore it from "
                                  "REPO/catalog-copies/ (README: restoring the catalog)")
        r.copy_age_s = newest_copy_age_s(repo.path)
        return r
    r.copy_age_s = newest_copy_age_s(repo.path)
    if repair:
        _repair(repo, r)
    return r


def _verify_mismatch(cat, store, r: CheckResult, sha: bytes, size: int,
                     stored_length: int) -> None:
    """A chunk file whose size is not the catalog's: a hint, never a verdict. The same
    bytes have two valid encodings (raw or zstd, as a batch happened to be compressed), and
    two saves may each write one. Decode and hash it: a sound one is kept (--repair records
    its size); only one that fails is reported damaged."""
    try:
        found = store.verify_file(sha, cat.chunk_length(sha))
    except ChunkMissing:
        r.chunk_problems[sha] = ChunkProblem(sha, "missing")
        return
    except ChunkCorrupt as e:
        why = e.args[1] if len(e.args) > 1 else str(e)
        if size >= 0:
            why = f"size {size} bytes, catalog says {stored_length}; {why}"
        r.chunk_problems[sha] = ChunkProblem(sha, why)
        return
    r.other_encodings.append((sha, stored_length, found))


def _save_digest_problems(cat, r: CheckResult) -> list[str]:
    """Each complete save's members digest computed again and compared with the one
    recorded when it completed; saves without one (older) are counted, not verified."""
    out = []
    for sid, scheme, members, digest in cat.complete_saves_digests():
        if scheme != DIGEST_SCHEME:
            r.saves_unverified += 1
            continue
        got = cat.members_digest(sid)
        if (got.members, got.digest()) != (members, digest):
            out.append(f"save {sid}: its members do not give the digest recorded when it "
                       f"completed ({got.members:,} rows, {members:,} recorded): the catalog "
                       "is damaged; restore it from REPO/catalog-copies/ (README: restoring "
                       "the catalog)")
    return out


def _read_data(repo: Repository, r: CheckResult, part: tuple[int, int] | None,
               progress: Callable[..., None] | None) -> None:
    """Re-read chunks of the part; verify digests of contents whose digest is in the part."""
    store = repo.store
    total = r.chunks_referenced // (part[1] if part else 1)
    current: int | None = None
    rows: list[tuple] = []

    def finish_content() -> None:
        if not rows:
            return
        content_id, size, digest = rows[0][0][0], rows[0][0][1], rows[0][0][2]
        verify_digest = in_part(digest, part)
        h = xxhash.xxh3_128() if verify_digest else None
        total = 0
        intact = True
        for (_cid, _size, _digest, sha, length, chunk_id), fetched in rows:
            if not (verify_digest or in_part(sha, part)):
                continue
            if sha in r.chunk_problems and chunk_id not in r.chunks_verified:
                intact = False  # already known bad: not read again
                continue
            data = _read_chunk(store, r, sha, length, chunk_id, part, fetched)
            if data is None:
                intact = False
                continue
            total += len(data)
            if h is not None:
                h.update(data)
        if h is not None and intact:
            r.contents_verified += 1
            if total != size or h.digest() != digest:
                r.content_problems.append(
                    f"content {content_id}: its chunks give {total} bytes with another "
                    f"xxh3-128 digest than recorded ({size} bytes)")

    def chunk_of(row: tuple) -> ChunkRef | None:  # what finish_content reads (ahead)
        return ChunkRef(row[3], row[4]) if in_part(row[2], part) or in_part(row[3], part) \
            else None

    for row, fetched in read_ahead(store, repo.catalog.content_chunks_in_order(), chunk_of):
        if row[0] != current:
            finish_content()
            if progress is not None:
                progress("read", len(r.chunks_verified), total, r)
            rows = []
            current = row[0]
        rows.append((row, fetched))
    finish_content()
    if progress is not None:
        progress("read", len(r.chunks_verified), total, r)


def _read_chunk(store, r: CheckResult, sha: bytes, length: int, chunk_id: int,
                part: tuple[int, int] | None, fetched=None) -> bytes | None:
    if in_part(sha, part):
        r.chunks_verified.add(chunk_id)
    try:
        data = fetched.result() if fetched is not None else store.read(ChunkRef(sha, length))
    except ChunkMissing:
        r.chunk_problems.setdefault(sha, ChunkProblem(sha, "missing"))
        return None
    except ChunkCorrupt as e:
        r.chunk_problems[sha] = ChunkProblem(sha, e.args[1] if len(e.args) > 1 else str(e))
        return None
    r.bytes_read += len(data)
    return data


def _read_orphan(store, r: CheckResult, sha: bytes) -> None:
    """Verify an orphan chunk file: no save uses it, but the next save that meets the same
    data takes it as stored (it only checks that a chunk file exists), so a damaged one
    would spoil that save. --repair quarantines it like any damaged chunk."""
    try:
        data = store.read_orphan(sha, regular_only=True)
    except ChunkMissing:
        return  # removed since listed (a concurrent expire)
    except ChunkCorrupt as e:
        r.chunk_problems[sha] = ChunkProblem(sha, e.args[1] if len(e.args) > 1 else str(e))
        return
    r.orphans_read += 1
    r.bytes_read += len(data)


def _repair(repo: Repository, r: CheckResult) -> None:
    """Quarantine damaged chunk files; mark dead running saves interrupted. Nothing else."""
    for sha, problem in r.chunk_problems.items():
        if problem.what == "missing":
            continue
        if repo.store.quarantine(sha):
            r.quarantined.append(sha)
    if r.repaired_saves or r.other_encodings or r.quarantined:
        cat = repo.catalog
        cat.begin()
        for sid in r.repaired_saves:
            cat.mark_save_interrupted(sid)
        for sha, _recorded, size in r.other_encodings:
            cat.set_stored_length(sha, size)
        for sha in r.quarantined:  # size unknown: the next save of its data stores it anew
            cat.set_stored_length(sha, 0)  # (an object store takes the catalog's word)
        cat.commit()
        r.lengths_recorded = bool(r.other_encodings)
        for sid in r.repaired_saves:
            remove_dead_save_lock(repo.path, sid)


def report_lines(r: CheckResult, read_data: bool) -> list[str]:
    """The human report: problems grouped by chunk, then counts."""
    out = []
    for p in r.catalog_problems:
        out.append(f"catalog: {p}")
    for p in r.dead_saves:
        out.append(f"warning: save: {p}")
    for problem in sorted(r.chunk_problems.values(), key=lambda p: p.sha256):
        out.append(f"chunk {problem.sha256.hex()}: {problem.what}")
        for sid, path in problem.users[:USERS_SHOWN]:
            out.append(f"    used by save {sid}: {escape(path)}")
        if len(problem.users) > USERS_SHOWN:
            out.append("    ... and more")
        if not problem.users:
            out.append("    used by no save (an interrupted save's leftover), but a save of "
                       "the same data would take it as stored: --repair quarantines it")
    for p in r.content_problems:
        out.append(f"content: {p}")
    for sha in r.quarantined:
        out.append(f"quarantined chunk {sha.hex()} (REPO/quarantine/); "
                   "save the same data again to re-create it")
    for sid in r.repaired_saves:
        out.append(f"marked save {sid} interrupted")
    for sha, recorded, size in r.other_encodings:
        done = "recorded its size" if r.lengths_recorded else "--repair records its size"
        out.append(f"note: chunk {sha.hex()} is {size} bytes, the catalog says {recorded}: "
                   f"it verifies (the same bytes in another encoding), kept; {done}")
    if r.leftover_temps:
        out.append(f"warning: {r.leftover_temps:,} temp file(s) in chunks/ left by processes "
                   "that are gone (expire removes them)")
    if r.leftover_copy_temps:
        out.append(f"warning: {r.leftover_copy_temps:,} temp file(s) in catalog-copies/ left "
                   "by a catalog copy that was stopped (expire removes them)")
    out.append(f"{r.chunks_referenced:,} chunks referenced, {r.orphans:,} orphan chunk files "
               f"({r.orphan_bytes:,} bytes), {r.temps:,} temp/other files in chunks/ "
               "(expire removes orphans and leftover temp files)")
    if read_data:
        out.append(f"read {len(r.chunks_verified):,} chunks and {r.orphans_read:,} orphan "
                   f"chunk files ({r.bytes_read:,} bytes), verified {r.contents_verified:,} "
                   "file contents")
    if r.saves_unverified:
        out.append(f"{r.saves_unverified:,} complete save(s) have no members digest (completed "
                   "before backshift recorded them): their catalog rows are not verified")
    if r.copy_age_s is None:
        out.append("catalog copy: none yet (made after each save and expire)")
    else:
        out.append(f"catalog copy: newest is {_age(r.copy_age_s)} old")
    n = r.problem_count()
    if n == 0 and r.warning_count():
        out.append(f"no damage found; {r.warning_count()} warning(s) above")
    else:
        out.append("no problems found" if n == 0 else f"{n} problem(s) found")
    return out


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"
