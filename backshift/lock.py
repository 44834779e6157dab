"""The repository lock: shared for saves, exclusive for expire and other rewriting commands.

An flock(2) on REPO/lock does the exclusion: the kernel drops it when its process dies, so
a lock can never outlive its holder on this host. Each holder also leaves a small record
in REPO/locks/ (host, pid, process start time, operation, since) so that a conflict can say
who holds the repository, and so that records left by dead processes are noticed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable

from .errors import RepositoryLocked

LOCK_FILE = b"lock"
LOCKS_DIR = b"locks"


def process_start_time(pid: int) -> int | None:
    """Start time of PID in clock ticks since boot (defeats pid reuse); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def pid_alive(pid: int, start_time: int | None) -> bool:
    now_start = process_start_time(pid)
    if now_start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return start_time is None or now_start == start_time


class RepoLock:
    """Holds REPO/lock shared or exclusive until release()."""

    def __init__(self, repo: bytes, exclusive: bool, operation: str,
                 notice: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        self.notice = notice or _notice
        self.exclusive = exclusive
        self.operation = operation
        self.fd: int | None = None
        self.record: bytes | None = None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to WAIT_S seconds; RepositoryLocked when it stays taken.

        The flock excludes processes on this host. Records of other hosts (a repository on
        a shared filesystem) that conflict with this lock also refuse it: they are never
        assumed dead, only `backshift break-lock` removes them. Records left by dead
        processes of this host are removed, with a notice.
        """
        path = os.path.join(self.repo, LOCK_FILE)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + wait_s
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holders = self.describe_holders()
            else:
                self.fd = fd
                self._write_record()
                foreign = self._conflicting_foreign_records()
                if not foreign:
                    return
                self.release()
                holders = "; ".join(describe(r) for r in foreign) + \
                    " (if that process is gone: backshift break-lock)"
            if time.monotonic() >= deadline:
                raise RepositoryLocked(os.fsdecode(self.repo), holders)
            time.sleep(0.1)

    def _conflicting_foreign_records(self) -> list[dict]:
        here = socket.gethostname()
        out = []
        for rec in read_records(self.repo, self.notice):
            if rec.get("host") == here:
                continue
            if self.exclusive or rec.get("exclusive"):
                out.append(rec)
        return out

    def _write_record(self) -> None:
        locks = os.path.join(self.repo, LOCKS_DIR)
        os.makedirs(locks, mode=0o700, exist_ok=True)
        pid = os.getpid()
        host = socket.gethostname()
        record = {
            "host": host,
            "pid": pid,
            "start_time": process_start_time(pid),
            "exclusive": self.exclusive,
            "operation": self.operation,
            "since": time.time(),
        }
        token = os.urandom(4).hex()  # as secrets.token_hex(4), without importing hashlib
        name = os.path.join(locks, f"{host}.{pid}.{token}.json".encode())
        temp = name + b".tmp"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(temp, name)  # readers never see half a record
        self.record = name

    def release(self) -> None:
        if self.record is not None:
            try:
                os.unlink(self.record)
            except FileNotFoundError:
                pass
            self.record = None
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def describe_holders(self) -> str:
        """'held by host H pid P (operation, since T)' for each live record, for messages."""
        parts = [describe(rec) for rec in read_records(self.repo, self.notice)]
        return "; ".join(parts) or "held by another process"


class ReaderLock:
    """A shared flock without a record, for restores: expire cannot delete chunks while a
    restore reads them, and a repository on read-only media (no writable lock file) is
    still restorable (the lock is then skipped: nothing can expire there anyway)."""

    def __init__(self, repo: bytes) -> None:
        self.repo = repo
        self.fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> None:
        try:
            fd = os.open(os.path.join(self.repo, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self.fd = fd
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    return
            if time.monotonic() >= deadline:
                os.close(fd)
                holders = RepoLock(self.repo, False, "").describe_holders()
                raise RepositoryLocked(os.fsdecode(self.repo), holders)
            time.sleep(0.1)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _notice(msg: str) -> None:
    print(f"backshift: {msg}", file=sys.stderr, flush=True)


def describe(rec: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("since", 0)))
    kind = "exclusively" if rec.get("exclusive") else "shared"
    return (f"held {kind} by host {rec.get('host')} pid {rec.get('pid')} "
            f"({rec.get('operation')}, since {since})")


def _load_records(repo: bytes) -> list[tuple[bytes, dict]]:
    locks = os.path.join(repo, LOCKS_DIR)
    try:
        names = os.listdir(locks)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(b".json"):
            continue
        full = os.path.join(locks, name)
        try:
            with open(full, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            out.append((full, rec))
    return out


def _is_dead_local(rec: dict) -> bool:
    return rec.get("host") == socket.gethostname() and \
        not pid_alive(int(rec.get("pid", 0) or 0), rec.get("start_time"))


def read_records(repo: bytes, notice: Callable[[str], None] | None = None) -> list[dict]:
    """Lock records of processes still alive (or of other hosts, which cannot be probed).

    Records of dead processes of this host are removed and, with NOTICE, reported as taken
    over: the kernel already dropped their flock, only the record outlived them.
    """
    out = []
    for full, rec in _load_records(repo):
        if _is_dead_local(rec):
            try:
                os.unlink(full)
            except OSError:
                continue
            if notice is not None:
                notice(f"taking over a stale lock record: process {rec.get('pid')} "
                       f"({rec.get('operation')}) is gone")
            continue
        out.append(rec)
    return out


def break_lock(repo: bytes) -> tuple[list[dict], list[dict]]:
    """Remove every lock record except those of live processes on this host.

    Returns (removed, kept). Safe to run at any time: a live local holder keeps its record
    and its flock (which no record removal can break); other hosts' records are removed,
    so only run it when those processes are known to be gone.
    """
    removed, kept = [], []
    for full, rec in _load_records(repo):
        if rec.get("host") == socket.gethostname() and not _is_dead_local(rec):
            kept.append(rec)
            continue
        try:
            os.unlink(full)
        except FileNotFoundError:
            continue
        removed.append(rec)
    return removed, kept


# -- a save's own lock: whether a 'running' save still has a live process ----------------
# A pid says nothing once its process is a zombie (/proc/PID stays until it is reaped) or
# the pid is reused. Each save holds an flock on REPO/locks/save-ID from before its row is
# committed until after its final status is: the kernel drops the flock when the process
# exits, reaped or not, so a lock that can be taken means a dead save.


def _save_lock_path(repo: bytes, save_id: int) -> bytes:
    return os.path.join(repo, LOCKS_DIR, b"save-%d" % save_id)


def hold_save_lock(repo: bytes, save_id: int) -> int:
    """Create and flock REPO/locks/save-SAVE_ID for this process; the fd (keep it open)."""
    os.makedirs(os.path.join(repo, LOCKS_DIR), mode=0o700, exist_ok=True)
    fd = os.open(_save_lock_path(repo, save_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_save_lock(repo: bytes, save_id: int, fd: int | None) -> None:
    """Drop the lock of a save whose final status is committed (removing its file first)."""
    try:
        os.unlink(_save_lock_path(repo, save_id))
    except OSError:
        pass
    if fd is not None:
        os.close(fd)


def save_alive(repo: bytes, save_id: int, pid: int) -> bool:
    """Whether the process of 'running' save SAVE_ID (of this host) still runs: its save
    lock is held. A save without a lock file (written by an older backshift) falls back to
    its PID."""
    try:
        fd = os.open(_save_lock_path(repo, save_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return pid_alive(pid, None)
    except OSError:
        return True  # cannot tell: never declare a save dead on a guess
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # held (EWOULDBLOCK), or cannot tell
    finally:
        os.close(fd)
    return False


def remove_dead_save_lock(repo: bytes, save_id: int) -> None:
    """Remove the lock file a dead save left (after its row was marked interrupted)."""
    path = _save_lock_path(repo, save_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
