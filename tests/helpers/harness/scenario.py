"""Small trees and save helpers shared by the fault tests (kept small: crash loops rerun them)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

from conftest import BACKSHIFT, find0, run

from .consistency import open_readonly


def small_tree(root: Path, seed: int = 7) -> Path:
    """A few files of every type; ~200 KiB of incompressible data gives a dozen chunks."""
    rnd = random.Random(seed)
    root = Path(root)
    (root / "d" / "e").mkdir(parents=True)
    (root / "big.bin").write_bytes(rnd.randbytes(200_000))
    (root / "text.txt").write_bytes(b"".join(b"row %d\n" % i for i in range(5000)))
    (root / "d" / "small").write_bytes(b"small file\n")
    (root / "d" / "e" / "empty").write_bytes(b"")
    os.link(root / "d" / "small", root / "d" / "e" / "hard")
    os.symlink("../big.bin", root / "d" / "link")
    os.mkfifo(root / "d" / "fifo")
    with open(os.path.join(os.fsencode(root), b"d", b"odd-\xff\n"), "wb") as f:
        f.write(b"odd\n")
    return root


def change_tree(root: Path, seed: int = 8) -> None:
    """New and rewritten content, so the next save writes new chunks."""
    rnd = random.Random(seed)
    (root / "new.bin").write_bytes(rnd.randbytes(120_000))
    (root / "new.txt").write_bytes(b"".join(b"entry %d %d\n" % (i, seed) for i in range(8000)))
    (root / "d" / "small").write_bytes(b"small file, changed\n")


def save(repo: bytes, root: Path | bytes, *extra: str, exit_code: int | None = 0,
         subset: str = "s", names: bytes | None = None) -> dict:
    """In-process `save --json` of ROOT (via real find -print0); the summary, plus stderr."""
    res = run("-r", repo, "save", "--hostname", "h", "--subset", subset, "--json", *extra,
              input=find0(root) if names is None else names, exit_code=exit_code)
    out = json.loads(res.stdout) if res.stdout.strip() else {}
    out["stderr"] = res.stderr
    out["code"] = res.code
    return out


NOBODY = 65534


def save_unprivileged(repo: bytes, root: Path | bytes, exit_code: int) -> dict:
    """`save --json` of ROOT as a real process that cannot override permissions.

    As root the child drops to uid/gid 65534 (setpriv), so mode-000 files and read-only
    directories refuse it as they refuse any user; REPO is handed to that user and the
    0700 parents of the test's tmp dir are made traversable while it runs.
    """
    prefix: list[str] = []
    opened: list[tuple[bytes, int]] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        for dirpath, dirs, files in os.walk(repo):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
                os.lchown(name, NOBODY, NOBODY)
        for path in (os.fsencode(repo), os.fsencode(root)):
            parent = os.path.dirname(os.path.abspath(path))
            while parent != b"/":
                mode = os.stat(parent).st_mode
                if not mode & 0o001 and all(p != parent for p, _m in opened):
                    opened.append((parent, mode))
                    os.chmod(parent, mode | 0o001)
                parent = os.path.dirname(parent)
    try:
        res = subprocess.run(
            [*prefix, BACKSHIFT, "-r", os.fsdecode(repo), "save", "--hostname", "h",
             "--subset", "s", "--json"], input=find0(root), capture_output=True, cwd="/",
            env={k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")},
            timeout=120)
    finally:
        for parent, mode in reversed(opened):
            os.chmod(parent, mode)
    stderr = res.stderr.decode("utf-8", "replace")
    assert res.returncode == exit_code, f"exit {res.returncode}, expected {exit_code}\n{stderr}"
    out = json.loads(res.stdout) if res.stdout.strip() else {}
    out["stderr"] = stderr
    out["code"] = res.returncode
    return out


def save_status(repo: bytes) -> dict[int, str]:
    conn = open_readonly(repo)
    try:
        return dict(conn.execute("SELECT id, status FROM save ORDER BY id").fetchall())
    finally:
        conn.close()


def one_line_error(stderr: str | bytes) -> str:
    """The stderr of a failed command: exactly one 'backshift: error:' line, no traceback."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("backshift: error:")]
    assert len(errors) == 1, text
    return errors[0]


def snapshot(repo: bytes) -> dict[bytes, bytes]:
    """Every file of the repository with its bytes (for 'nothing was written' checks)."""
    out = {}
    for dirpath, _dirs, files in os.walk(repo):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[path] = f.read()
    return out
