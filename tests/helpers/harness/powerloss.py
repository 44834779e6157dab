"""H3: a power-loss simulator: record a command's chunk-store operations, rebuild the
repository as a power loss after any one of them could leave it, and check each such state.

ALICE's method (Pillai et al., OSDI 2014) for the chunk store:
a recording shim over backshift.diskio logs every create, write, rename, link, unlink,
fsync, fsync_dir and syncfs under REPO/chunks, in the order they happened, and
Catalog.commit adds a commit marker carrying a snapshot of the catalog just committed.

The filesystem model is POSIX without data journaling (ext4 data=writeback, and weaker):
after a power loss that follows op N, every op done before a syncfs that returned by N
began is durable (fsync: that file's data; fsync_dir: that directory's entries; a syncfs
runs while other threads go on, and what they do meanwhile is not covered); every later op
survives or not on its own, by a seeded RNG. A rename is atomic (the file is under its old
name or its new one), but it may survive while the data written before it did not: the
file is then empty, cut short or zeros (ALICE's "rename before data" state).

The catalog is not simulated: SQLite with synchronous=FULL promises that a COMMIT that
returned survives a power loss and one that did not is rolled back (sqlite.org:
atomiccommit, lockingv3, pragma synchronous), and that is trusted here. A crash state's
catalog is the snapshot of the last commit marker at or before N. Snapshots are made with
the backup API from the committing connection: copying the open catalog's files in this
process would drop SQLite's POSIX locks (howtocorrupt section 2.2).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apsw

from backshift import diskio
from backshift.catalog import CATALOG_NAME, Catalog
from backshift.model import ChunkRef
from backshift.store import CHUNKS_DIR, TEMP_MARK, Store
from conftest import run

from .consistency import assert_repo_consistent, open_readonly
from .oracle import assert_save_matches
from .scenario import save_status

SYNCS = ("syncfs_begin", "syncfs", "fsync", "fsync_dir")
FATES = ("full", "lost", "zeros", "prefix")  # of a write that was not synced


@dataclass(frozen=True)
class Op:
    kind: str  # create write rename link unlink fsync fsync_dir syncfs_begin syncfs commit
    path: bytes = b""  # the name (rename, link: the source); commit: the snapshot file
    dst: bytes = b""  # rename, link: the new name
    ino: int = -1  # the file the op concerns (create, write, rename, link, unlink, fsync)
    offset: int = 0  # write: where in the file
    data: bytes = b""  # write: what
    thread: str = field(default_factory=lambda: threading.current_thread().name)

    def __str__(self) -> str:
        name = os.path.basename(self.dst or self.path).decode(errors="replace")
        extra = f" {len(self.data)} bytes at {self.offset}" if self.kind == "write" else ""
        return f"{self.kind} {name}{extra}"


class Recorder:
    """Records REPO's chunk-store operations and catalog commits while active (a context
    manager). In this process only: a save must read in threads (BACKSHIFT_READERS=threads),
    reader processes would write temp files the shim never sees."""

    def __init__(self, repo: bytes, work: bytes) -> None:
        self.repo = os.path.abspath(repo)
        self.root = os.path.join(self.repo, CHUNKS_DIR)
        self.catalog = os.path.join(self.repo, CATALOG_NAME)
        self.work = work
        self.base = os.path.join(work, b"base")  # the repository when recording began
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.names: dict[bytes, int] = {}  # chunk store name -> inode, as it is now
        self.base_files: dict[int, bytes] = {}  # inode -> its file in the base copy
        self._fds: dict[int, int] = {}  # open fd -> inode
        self._sizes: dict[int, int] = {}  # inode -> bytes written so far
        self._next_ino = 0
        self._saved: list[tuple[object, str, object]] = []

    # -- the base state and the hooks ------------------------------------------------------

    def __enter__(self) -> Recorder:
        os.makedirs(self.work, exist_ok=True)
        shutil.copytree(self.repo, self.base, ignore=_catalog_files)
        snapshot = os.path.join(self.work, b"catalog-0.sqlite3")
        conn = apsw.Connection(os.fsdecode(self.catalog), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            _backup(conn, snapshot)
        finally:
            conn.close()
        self.initial_catalog = snapshot
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(dirpath, name)
                ino = self._new_ino()
                self.names[path] = ino
                self.base_files[ino] = os.path.join(self.base, os.path.relpath(path, self.repo))
        self.names_at_start = dict(self.names)
        for name in ("create_temp", "write_all", "close", "fsync", "rename", "link", "unlink",
                     "fsync_dir", "syncfs"):
            self._patch(diskio, name, getattr(self, "_" + name))
        self._patch(Catalog, "commit", self._commit)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, real in reversed(self._saved):
            setattr(owner, name, real)
        self._saved = []

    def _patch(self, owner, name: str, wrap: Callable) -> None:
        """Replace OWNER.NAME by WRAP(the real one) until __exit__."""
        real = getattr(owner, name)
        self._saved.append((owner, name, real))
        setattr(owner, name, wrap(real))

    def _new_ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    def _ours(self, path: bytes) -> bytes | None:
        """PATH made absolute when it is in the chunk store, else None."""
        path = os.path.abspath(path)
        return path if path.startswith(self.root + b"/") or path == self.root else None

    # -- the shim: each does the real call, then logs it, under one lock --------------------

    def _create_temp(self, real):
        def create_temp(path):
            with self.lock:
                fd = real(path)
                if path := self._ours(path):
                    ino = self._new_ino()
                    self._fds[fd] = ino
                    self._sizes[ino] = 0
                    self.names[path] = ino
                    self.ops.append(Op("create", path, ino=ino))
                return fd
        return create_temp

    def _write_all(self, real):
        def write_all(fd, data):
            with self.lock:
                real(fd, data)
                ino = self._fds.get(fd)
                if ino is not None:
                    data = bytes(data)
                    self.ops.append(Op("write", ino=ino, offset=self._sizes[ino], data=data))
                    self._sizes[ino] += len(data)
        return write_all

    def _close(self, real):
        def close(fd):
            with self.lock:
                self._fds.pop(fd, None)
                real(fd)
        return close

    def _fsync(self, real):
        def fsync(fd):
            with self.lock:
                real(fd)
                if fd in self._fds:
                    self.ops.append(Op("fsync", ino=self._fds[fd]))
        return fsync

    def _rename(self, real):
        def rename(src, dst):
            with self.lock:
                real(src, dst)
                if (src := self._ours(src)) and (dst := self._ours(dst)):
                    ino = self.names.pop(src)
                    self.names[dst] = ino
                    self.ops.append(Op("rename", src, dst, ino=ino))
        return rename

    def _link(self, real):
        def link(src, dst):
            with self.lock:
                real(src, dst)
                if dst := self._ours(dst):
                    src = os.path.abspath(src)
                    # a link from outside the store (import): a file that was durable there
                    ino = self.names.get(src)
                    if ino is None:
                        ino = self._new_ino()
                        self.base_files[ino] = src
                    self.names[dst] = ino
                    self.ops.append(Op("link", src, dst, ino=ino))
        return link

    def _unlink(self, real):
        def unlink(path):
            with self.lock:
                real(path)
                if path := self._ours(path):
                    self.ops.append(Op("unlink", path, ino=self.names.pop(path)))
        return unlink

    def _fsync_dir(self, real):
        def fsync_dir(path):
            with self.lock:
                real(path)
                if path := self._ours(path):
                    self.ops.append(Op("fsync_dir", path))
        return fsync_dir

    def _syncfs(self, real):
        def syncfs(path):
            # Not under the lock: other threads' ops go on meanwhile, as they do for real.
            # It makes durable what was done before it began (offset: that op's index).
            with self.lock:
                begin = len(self.ops)
                if ours := self._ours(path):
                    self.ops.append(Op("syncfs_begin", ours))
            real(path)
            if ours:
                with self.lock:
                    self.ops.append(Op("syncfs", ours, offset=begin))
        return syncfs

    def _commit(self, real):
        recorder = self

        def commit(cat):
            with recorder.lock:
                real(cat)
                if os.path.realpath(cat.path) == os.path.realpath(recorder.catalog):
                    n = sum(op.kind == "commit" for op in recorder.ops) + 1
                    snapshot = os.path.join(recorder.work, b"catalog-%d.sqlite3" % n)
                    _backup(cat.conn, snapshot)
                    recorder.ops.append(Op("commit", snapshot))
        return commit


def _catalog_files(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if os.fsencode(n).startswith(CATALOG_NAME)]


def _backup(conn: apsw.Connection, dest: bytes) -> None:
    """A consistent copy of CONN's database in DEST (a new file), in WAL mode like the
    catalog it stands for."""
    out = apsw.Connection(os.fsdecode(dest))
    try:
        with out.backup("main", conn, "main") as b:
            b.step(-1)
        out.execute("PRAGMA journal_mode = WAL").fetchall()
    finally:
        out.close()


# -- crash states ---------------------------------------------------------------------------


@dataclass
class CrashState:
    after: int  # the index of the last op that happened (-1: none)
    seed: int
    catalog: bytes  # the catalog snapshot this state has
    files: dict[bytes, bytes]  # chunk store name -> content (base files included)
    unsynced: int = 0  # ops that were not durable and left to chance

    def signature(self) -> tuple:
        """What the checks can tell apart: the catalog and every final-name file with its
        content; temp files only by how many there are (nothing reads them)."""
        finals = tuple(sorted((n, hashlib.sha256(c).digest()) for n, c in self.files.items()
                              if TEMP_MARK not in os.path.basename(n)))
        return self.catalog, finals, len(self.files) - len(finals)


def _durable(ops: list[Op], dir_of: Callable[[bytes], bytes]) -> list[bool]:
    """For each op, whether a sync completed in OPS made it durable: a syncfs everything
    done before it began, an fsync its file's data, an fsync_dir its directory's entries."""
    out = [False] * len(ops)
    everything_below, inodes, dirs = 0, set(), set()
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.kind == "syncfs":
            everything_below = max(everything_below, op.offset)
        elif op.kind == "fsync":
            inodes.add(op.ino)
        elif op.kind == "fsync_dir":
            dirs.add(op.path)
        elif op.kind == "write":
            out[i] = i < everything_below or op.ino in inodes
        elif op.kind in ("create", "unlink", "rename", "link"):
            touched = {dir_of(op.path)} | ({dir_of(op.dst)} if op.dst else set())
            out[i] = i < everything_below or touched <= dirs
    return out


def crash_state(rec: Recorder, after: int, seed: int, p_meta: float = 0.5) -> CrashState:
    """The repository a power loss right after op AFTER leaves, unsynced ops decided by
    SEED: each metadata op survives with probability P_META, each write has a fate."""
    rng = random.Random(after * 1000 + seed)
    ops = rec.ops[:after + 1]
    durable = _durable(ops, os.path.dirname)
    names = dict(rec.names_at_start)
    pieces: dict[int, list[tuple[int, bytes]]] = {}
    catalog = rec.initial_catalog
    unsynced = 0
    for op, sure in zip(ops, durable, strict=True):
        if op.kind == "commit":
            catalog = op.path
            continue
        if op.kind in SYNCS:
            continue
        unsynced += not sure
        if op.kind == "write":
            fate = "full" if sure else rng.choice(FATES)
            data = {"full": op.data, "lost": b"", "zeros": bytes(len(op.data)),
                    "prefix": op.data[:rng.randrange(len(op.data) + 1)]}[fate]
            pieces.setdefault(op.ino, []).append((op.offset, data))
            continue
        if not sure and rng.random() >= p_meta:
            continue  # this directory change did not reach the disk
        if op.kind == "create":
            names[op.path] = op.ino
        elif op.kind == "rename":
            if names.get(op.path) == op.ino:
                del names[op.path]
            names[op.dst] = op.ino
        elif op.kind == "link":
            names[op.dst] = op.ino
        elif op.kind == "unlink" and names.get(op.path) == op.ino:
            del names[op.path]
    files = {n: _content(rec, ino, pieces.get(ino, [])) for n, ino in names.items()}
    return CrashState(after, seed, catalog, files, unsynced)


def _content(rec: Recorder, ino: int, pieces: list[tuple[int, bytes]]) -> bytes:
    if ino in rec.base_files:
        with open(rec.base_files[ino], "rb") as f:
            return f.read()
    out = bytearray()
    for offset, data in pieces:
        if not data:
            continue
        if len(out) < offset + len(data):
            out.extend(bytes(offset + len(data) - len(out)))
        out[offset:offset + len(data)] = data
    return bytes(out)


def crash_states(rec: Recorder, seeds: int = 3) -> Iterator[CrashState]:
    """Every distinct state: a power loss before the first op and after each op, SEEDS
    draws each (a state whose every op was durable is the same for all seeds)."""
    seen = set()
    for after in range(-1, len(rec.ops)):
        for seed in range(seeds):
            state = crash_state(rec, after, seed)
            key = state.signature()
            if key not in seen:
                seen.add(key)
                yield state
            if not state.unsynced:
                break


def materialize(rec: Recorder, state: CrashState, dest: bytes, dead_pid: int) -> bytes:
    """Build STATE as a repository at DEST: the base copy's other files, the chunk files,
    and the catalog snapshot. DEST is reused from one state to the next (its 256 chunk
    directories cost more to make than everything else). The machine rebooted: a save left
    `running` names DEAD_PID as its writer (its process is gone), as after a real power loss.
    """
    chunks = os.path.join(dest, CHUNKS_DIR)
    if os.path.isdir(chunks):
        _clear(dest)
    else:
        for i in range(256):
            os.makedirs(os.path.join(chunks, b"%02x" % i))
    for entry in os.scandir(rec.base):
        if entry.name == CHUNKS_DIR:
            continue
        copy = shutil.copytree if entry.is_dir(follow_symlinks=False) else shutil.copyfile
        copy(entry.path, os.path.join(dest, entry.name))
    for name, content in state.files.items():
        with open(os.path.join(dest, os.path.relpath(name, rec.repo)), "wb") as f:
            f.write(content)
    catalog = os.path.join(dest, CATALOG_NAME)
    shutil.copyfile(state.catalog, catalog)
    conn = apsw.Connection(os.fsdecode(catalog))
    try:
        conn.execute("UPDATE save SET writer_pid = ? WHERE status = 'running'", (dead_pid,))
    finally:
        conn.close()
    return dest


def _clear(dest: bytes) -> None:
    """Remove everything in DEST but its (emptied) chunk directories."""
    for entry in os.scandir(dest):
        if entry.name == CHUNKS_DIR:
            for sub in os.scandir(entry.path):
                for f in os.scandir(sub.path):
                    os.unlink(f.path)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- checking a state -----------------------------------------------------------------------


def chunk_rows_on_disk(repo: bytes) -> list[str]:
    """Invariant I1: every chunk row of the catalog, whatever the status of the save that
    wrote it, names a chunk file that is there and re-hashes to its name."""
    conn = open_readonly(repo)
    try:
        rows = conn.execute("SELECT sha256, length FROM chunk").fetchall()
    finally:
        conn.close()
    store, problems = Store(repo), []
    for sha, length in rows:
        try:
            store.read(ChunkRef(sha, length))
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            problems.append(f"catalog names chunk {sha.hex()[:16]}: {type(e).__name__} {e}")
    return problems


# -- checking every state -------------------------------------------------------------------

Saves = dict[int, tuple[dict, bytes]]  # save id -> (H5 manifest, saved root)


@dataclass
class Report:
    ops: list[Op]
    states: int = 0  # distinct crash states checked
    deep: int = 0  # of which the next save ran on
    unsynced_max: int = 0  # the most ops a state left to chance
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = {k: sum(op.kind == k for op in self.ops) for k in
                 ("create", "write", "rename", "unlink", "syncfs", "commit")}
        return (f"{len(self.ops)} ops {kinds}, {self.states} distinct crash states, "
                f"{self.deep} with a next save, {len(self.violations)} violations")


def simulate(rec: Recorder, saves: Saves, next_save: Callable[[bytes], tuple[int, int, str]],
             tree: tuple[dict, bytes], work: bytes, tmp_path, seeds: int = 3,
             deep_sample: int = 12, max_violations: int = 20) -> Report:
    """Check every distinct crash state of REC's log (SEEDS draws per op).

    In each: invariant I1 (chunk_rows_on_disk), H4, and H5 of every save the state's
    catalog calls complete (SAVES says what each must hold). In DEEP_SAMPLE of them (seeded),
    the last one and the first states found broken, also NEXT_SAVE(repo) -> (exit code,
    save id, stderr) of TREE (manifest, root): it must complete, then H4 with no save left
    running, H5 of it through GNU tar, and H5 of the older complete saves again."""
    states = list(crash_states(rec, seeds))
    report = Report(rec.ops, unsynced_max=max(s.unsynced for s in states))
    deep = set(random.Random(len(states)).sample(range(len(states) - 1),
                                                 min(deep_sample, len(states) - 1)))
    deep.add(len(states) - 1)
    broken_deep = 0
    pid = dead_pid()
    for i, state in enumerate(states):
        dest = materialize(rec, state, os.path.join(work, b"state"), pid)
        problems = check_state(dest, saves)
        go_deep = i in deep or (problems and broken_deep < 3)
        if go_deep:
            broken_deep += bool(problems)
            report.deep += 1
            problems += check_next_save(dest, saves, next_save, tree, tmp_path / f"state-{i}")
        report.states += 1
        where = (f"power loss after op {state.after} "
                 f"({rec.ops[state.after] if state.after >= 0 else 'none'}), seed {state.seed}")
        report.violations += [f"{where}: {p}" for p in problems]
        if len(report.violations) >= max_violations:
            break
    return report


def check_state(repo: bytes, saves: Saves) -> list[str]:
    """I1, H4 and H5 (through the catalog) of a crash state as a power loss left it."""
    problems = chunk_rows_on_disk(repo)
    try:
        assert_repo_consistent(repo, allow_dead_running=True)
    except AssertionError as e:
        problems.append(str(e))
    for sid, status in save_status(repo).items():
        if status == "complete":
            problems += _restores(repo, sid, saves)
    return problems


def check_next_save(repo: bytes, saves: Saves, next_save, tree, tmp_path) -> list[str]:
    """The next save of the tree on a crash state completes, and then all is well."""
    problems = []
    # check --read-data finds nothing but the save the power loss left 'running' (which
    # --repair or the next save marks interrupted)
    checked = run("-r", repo, "check", "--read-data", exit_code=None)
    found = [line for line in checked.stdout.splitlines()
             if line.startswith(("catalog:", "chunk ", "content:", "save:"))
             and "is 'running' but its process" not in line]
    warned = any(line.startswith("warning:") for line in checked.stdout.splitlines())
    if found or checked.code != (1 if warned else 0):  # 1: a dead 'running' save, leftovers
        problems.append(f"check --read-data (exit {checked.code}): {found or checked.stderr}")
    code, sid, stderr = next_save(repo)
    if code != 0:
        return problems + [f"the next save failed (exit {code}): {stderr.strip()}"]
    try:
        assert_repo_consistent(repo)
    except AssertionError as e:
        problems.append(f"after the next save: {e}")
    tmp_path.mkdir(parents=True)
    problems += [f"the next save: {p}" for p in _restores(repo, sid, {sid: tree}, tmp_path)]
    for old, status in save_status(repo).items():
        if status == "complete" and old != sid:
            problems += [f"after the next save: {p}" for p in _restores(repo, old, saves)]
    return problems


def _restores(repo: bytes, sid: int, saves: Saves, tmp_path=None) -> list[str]:
    if sid not in saves:
        return [f"save {sid} is complete but no save was expected to be"]
    expected, root = saves[sid]
    try:
        assert_save_matches(repo, sid, expected, root, tmp_path)
    except Exception as e:  # noqa: BLE001 - ChunkCorrupt, ChunkMissing, a diff: all findings
        return [f"save {sid} does not restore: {type(e).__name__}: {e}"]
    return []
