"""Small trees and save helpers shared by the fault tests (kept small: crash loops rerun them)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from conftest import find0, run

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
