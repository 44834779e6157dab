"""The tools the benchmark runs: backshift itself and its peers, as command lines per step.

Each tool answers `command(step, ctx)` with an argv (a list, or a str run by sh -c), or None
when it has no such step. Every tool works in its own directory under the run's work dir.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

from .datasets import FROM_FIND

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGINAL_BIN = os.path.join(HERE, ".peers", "original", "bin", "backshift")
if not os.access(ORIGINAL_BIN, os.X_OK):  # the test suite's copy (make .venv-legacy) will do
    _LEGACY = os.path.join(os.path.dirname(HERE), ".venv-legacy", "bin", "backshift")
    ORIGINAL_BIN = _LEGACY if os.access(_LEGACY, os.X_OK) else ORIGINAL_BIN


def trash_dir(work: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(work)), ".trash")


def empty_trash(work_root: str) -> None:
    """Delete the working directories that reset() set aside."""
    shutil.rmtree(os.path.join(os.path.abspath(work_root), ".trash"), ignore_errors=True)


class Tool:
    name = ""

    def __init__(self, work: str) -> None:
        self.work = os.path.join(work, self.name)
        self.repo = os.path.join(self.work, "repo")

    def available(self) -> bool:
        return True

    def reset(self) -> None:
        """A fresh, empty working directory (no repository yet).

        The previous run's directory is moved to the trash, not deleted: on ext4, creating
        files shortly after tens of thousands were deleted nearby is several times slower
        (the inode allocator skips recently freed inodes, ext4/ialloc.c recently_deleted),
        which would charge the benchmark's own clean-up to whichever tool writes one file
        per chunk. `empty_trash()` deletes it all once the run is over.
        """
        if os.path.exists(self.work):
            os.makedirs(trash_dir(self.work), exist_ok=True)
            os.rename(self.work, os.path.join(trash_dir(self.work),
                                              f"{self.name}-{time.time_ns()}"))
        os.makedirs(self.work)
        os.sync()
        time.sleep(1)

    def env(self) -> dict:
        return dict(os.environ)

    def command(self, step: str, ds, save_no: int):
        raise NotImplementedError

    def repo_bytes(self) -> dict:
        return {"repo": _du(self.repo)}


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


class Backshift(Tool):
    name = "backshift"

    def __init__(self, work: str) -> None:
        super().__init__(work)
        self.bin = os.path.join(os.path.dirname(sys.executable), "backshift")
        self._has: dict[str, bool] = {}

    def has(self, command: str) -> bool:
        if command not in self._has:
            r = subprocess.run([self.bin, command, "--help"], capture_output=True)
            self._has[command] = r.returncode == 0
        return self._has[command]

    def command(self, step, ds, save_no):
        b = [self.bin, "-r", self.repo]
        if step == "init":
            return b + ["init"]
        if step in ("save1", "resave", "resave_mod"):
            cmd = b + ["save", "--hostname", "bench", "--subset", "bench", "--no-progress"]
            if ds.name in FROM_FIND:
                return f"find {shlex.quote(ds.root)} -print0 | {shlex.join(cmd)}"
            return cmd + [ds.root]
        need = {"list": "list", "list1dir": "list", "tar": "tar", "tarsub": "tar",
                "expire": "expire", "check": "check", "find": "find", "history": "history",
                "sql": "sql"}
        if not self.has(need[step]):
            return None
        if step == "list":
            return b + ["list", "--backup", "latest", "-v"]
        if step == "list1dir":
            return b + ["list", "--backup", "latest", "--dir", ds.one_dir, "--no-recursive", "-v"]
        if step == "tar":
            return b + ["tar", "--backup", "latest", "-o", "-"]
        if step == "tarsub":
            return b + ["tar", "--backup", "latest", "-o", "-", ds.subtree]
        if step == "expire":
            cmd = b + ["expire", "--keep-last", "1"]
            if self.has("gc"):
                return " ".join(cmd) + " && " + " ".join(b + ["gc"])
            return cmd
        if step == "check":
            return b + ["check", "--read-data"]
        if step == "find":
            return b + ["find", "*/f0999.txt"]
        if step == "history":
            return b + ["history", os.path.join(ds.one_dir, os.listdir(ds.one_dir)[0])]
        if step == "sql":
            return b + ["sql", "SELECT type, count(*), sum(size) FROM files WHERE save_id = "
                        "(SELECT max(id) FROM saves) GROUP BY type"]
        return None

    def repo_bytes(self) -> dict:
        cat = sum(os.path.getsize(os.path.join(self.repo, n)) for n in os.listdir(self.repo)
                  if n.startswith("catalog.sqlite3"))
        return {"repo": _du(self.repo), "catalog": cat}


class BackshiftSsh(Backshift):
    """backshift into an ssh:// repository on this host (the remote column): save, list -v
    and tar through `backshift serve` over ssh to localhost, init and the rest n/a.
    BACKSHIFT_BENCH_SSH names the host part (default ssh://localhost), BACKSHIFT_BENCH_RSH
    the ssh command (default ssh); the key must log in without a prompt."""

    name = "ssh"

    def __init__(self, work: str) -> None:
        super().__init__(work)
        self.url = os.environ.get("BACKSHIFT_BENCH_SSH", "ssh://localhost").rstrip("/") \
            + self.repo

    def env(self) -> dict:
        e = dict(os.environ)
        e["BACKSHIFT_REMOTE_PATH"] = self.bin
        if os.environ.get("BACKSHIFT_BENCH_RSH"):
            e["BACKSHIFT_RSH"] = os.environ["BACKSHIFT_BENCH_RSH"]
        return e

    def available(self) -> bool:
        probe = [self.bin, "-r", os.environ.get("BACKSHIFT_BENCH_SSH", "ssh://localhost")
                 + "/nonexistent-bench-probe", "saves"]
        r = subprocess.run(probe, capture_output=True, env=self.env(), timeout=60)
        return r.returncode == 3  # reached serve, which found no repository there

    def command(self, step, ds, save_no):
        if step == "init":
            return [self.bin, "-r", self.repo, "init"]
        b = [self.bin, "-r", self.url]
        if step in ("save1", "resave", "resave_mod"):
            return b + ["save", "--hostname", "bench", "--subset", "bench", "--no-progress",
                        ds.root]
        if step == "list":
            return b + ["list", "--backup", "latest", "-v"]
        if step == "tar":
            return b + ["tar", "--backup", "latest", "-o", "-"]
        return None


class Borg(Tool):
    name = "borg"

    def available(self) -> bool:
        return shutil.which("borg") is not None

    def env(self) -> dict:
        e = dict(os.environ)
        e.update(BORG_BASE_DIR=os.path.join(self.work, "base"),
                 BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                 BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_REPO=self.repo)
        return e

    def command(self, step, ds, save_no):
        rel = lambda p: p.lstrip("/")  # noqa: E731 - borg stores paths without the leading /
        if step == "init":
            return ["borg", "init", "-e", "none"]
        if step in ("save1", "resave", "resave_mod"):
            return ["borg", "create", "--compression", "lz4", f"::s{save_no}", ds.root]
        last = f"::s{save_no}"
        if step == "list":
            return ["borg", "list", last]
        if step == "list1dir":  # the chosen directory has no subdirectories: same entries
            return ["borg", "list", last, rel(ds.one_dir)]
        if step == "tar":
            return ["borg", "export-tar", last, "-"]
        if step == "tarsub":
            return ["borg", "export-tar", last, "-", rel(ds.subtree)]
        if step == "expire":
            return "borg prune --keep-last 1 && borg compact"
        if step == "check":
            return ["borg", "check", "--verify-data"]
        return None


class Restic(Tool):
    name = "restic"

    def available(self) -> bool:
        return shutil.which("restic") is not None

    def env(self) -> dict:
        e = dict(os.environ)
        e.update(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=self.repo,
                 RESTIC_CACHE_DIR=os.path.join(self.work, "cache"))
        return e

    def command(self, step, ds, save_no):
        if step == "init":
            return ["restic", "init", "-q"]
        if step in ("save1", "resave", "resave_mod"):
            return ["restic", "backup", "-q", "--host", "bench", ds.root]
        if step == "list":
            return ["restic", "ls", "-l", "latest"]
        if step == "list1dir":
            return ["restic", "ls", "-l", "latest", ds.one_dir]
        if step == "tar":
            return ["restic", "dump", "latest", "/"]
        if step == "tarsub":
            return ["restic", "dump", "latest", ds.subtree]
        if step == "expire":
            return ["restic", "forget", "-q", "--keep-last", "1", "--prune"]
        if step == "check":
            return ["restic", "check", "-q", "--read-data"]
        return None


class Original(Tool):
    """backshift 1.62 from PyPI, in its own venv (tools/install-peers.sh)."""

    name = "original"

    def available(self) -> bool:
        return os.access(ORIGINAL_BIN, os.X_OK)

    def _backup_id(self) -> str:
        out = subprocess.run([ORIGINAL_BIN, "--save-directory", self.repo, "--list-backups"],
                             capture_output=True, text=True).stdout
        ids = [line.split()[0] for line in out.splitlines() if line[:1].isdigit()]
        return ids[-1]

    def command(self, step, ds, save_no):
        b = [ORIGINAL_BIN, "--save-directory", self.repo]
        if step in ("save1", "resave", "resave_mod"):
            init = "--init-savedir" if step == "save1" else ""
            return (f"find {ds.root} -print0 | {ORIGINAL_BIN} --save-directory {self.repo} "
                    f"{init} --backup --subset bench --progress-report none")
        if step in ("list", "list1dir", "tar", "tarsub"):
            b += ["--backup-id", self._backup_id()]
        if step == "list":
            return b + ["--list-backup"]
        if step == "list1dir":
            return b + ["--list-backup", "--starting-directory", ds.one_dir, "--nonrecursive"]
        if step == "tar":
            return b + ["--produce-tar"]
        if step == "tarsub":
            return b + ["--produce-tar", "--starting-directory", ds.subtree]
        return None  # init is part of the first save; expire asks on stdin; no check


TOOLS = {"backshift": Backshift, "borg": Borg, "restic": Restic, "original": Original,
         "ssh": BackshiftSsh}
