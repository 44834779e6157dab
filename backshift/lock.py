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
import time

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

    def __init__(self, repo: bytes, exclusive: bool, operation: str) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.operation = operation
        self.fd: int | None = None
        self.record: bytes | None = None

    def acquire(self, wait_s: float = 0.0) -> None:
        path = os.path.join(self.repo, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holders = self.describe_holders()
                    raise RepositoryLocked(os.fsdecode(self.repo), holders) from None
                time.sleep(0.1)
        self.fd = fd
        self._write_record()

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
        name = os.path.join(locks, f"{host}.{pid}.json".encode())
        with open(name, "w", encoding="utf-8") as f:
            json.dump(record, f)
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
        parts = []
        for rec in read_records(self.repo):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("since", 0)))
            kind = "exclusively" if rec.get("exclusive") else "shared"
            parts.append(
                f"held {kind} by host {rec.get('host')} pid {rec.get('pid')} "
                f"({rec.get('operation')}, since {since})"
            )
        return "; ".join(parts) or "held by another process"


def read_records(repo: bytes) -> list[dict]:
    """Lock records of processes still alive; records of dead local processes are removed."""
    out = []
    locks = os.path.join(repo, LOCKS_DIR)
    try:
        names = os.listdir(locks)
    except FileNotFoundError:
        return out
    here = socket.gethostname()
    for name in names:
        full = os.path.join(locks, name)
        try:
            with open(full, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if rec.get("host") == here and not pid_alive(rec.get("pid", 0), rec.get("start_time")):
            try:
                os.unlink(full)
            except OSError:
                pass
            continue
        out.append(rec)
    return out
