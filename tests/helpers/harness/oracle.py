"""H5: a manifest of the source as it was at save time, compared with what the repository holds.

Two ways to read a save back: through the catalog and Store.read (always available), and
through `backshift tar` extracted by GNU tar into an empty directory (when the tar command
exists). "Nothing lost" means every save completed before a fault still matches its manifest.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from backshift.catalog import CATALOG_NAME  # noqa: F401  (documents where the data lives)
from backshift.model import ChunkRef, type_of_mode
from backshift.pathcodec import from_key
from backshift.store import Store

from .consistency import open_readonly


@dataclass(frozen=True)
class Entry:
    type: str
    mode: int  # permission bits, setuid/setgid/sticky included
    size: int
    sha256: bytes | None
    mtime_ns: int
    link_target: bytes | None
    group: frozenset | None = None  # the other names of its hardlink group, itself included


Manifest = dict[bytes, Entry]


def _sha(data_iter) -> bytes:
    h = hashlib.sha256()
    for block in data_iter:
        h.update(block)
    return h.digest()


def _read_blocks(path: bytes):
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


def _entry(path: bytes, st: os.stat_result) -> Entry:
    kind = type_of_mode(st.st_mode)
    size = st.st_size if kind == "-" else 0
    digest = _sha(_read_blocks(path)) if kind == "-" else None
    target = os.readlink(path) if kind == "l" else None
    return Entry(kind, stat.S_IMODE(st.st_mode), size, digest, st.st_mtime_ns, target)


def _with_groups(entries: Manifest, inodes: dict[bytes, tuple[int, int]]) -> Manifest:
    groups: dict[tuple[int, int], set[bytes]] = {}
    for path, key in inodes.items():
        groups.setdefault(key, set()).add(path)
    out = {}
    for path, e in entries.items():
        members = groups.get(inodes.get(path))
        out[path] = replace(e, group=frozenset(members)) if members and len(members) > 1 else e
    return out


def manifest(root: Path | bytes, skip: set[bytes] = frozenset()) -> Manifest:
    """Every name at and below ROOT (absolute bytes) with what a restore must give back."""
    root = os.path.abspath(os.fsencode(root))
    entries: Manifest = {}
    inodes: dict[bytes, tuple[int, int]] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        if path in skip:
            continue
        st = os.lstat(path)
        entries[path] = _entry(path, st)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes[path] = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(path, n) for n in os.listdir(path))
    return _with_groups(entries, inodes)


SAVE_MEMBERS = """
    SELECT p.key, v.mode, v.size, v.mtime_ns, v.link_target, v.content_id, v.dev, v.ino,
           v.nlink
    FROM member AS m
    JOIN path AS p ON p.id = m.path_id
    JOIN version AS v ON v.id = m.version_id
    WHERE m.save_id = :save_id
"""

CONTENT_CHUNKS = """
    SELECT k.sha256, k.length
    FROM content_chunk AS cc
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE cc.content_id = :content_id
    ORDER BY cc.seq
"""


def from_catalog(repo: bytes, save_id: int, under: bytes | None = None) -> Manifest:
    """The manifest a save holds, read through the catalog and Store.read (which verifies)."""
    store = Store(repo)
    conn = open_readonly(repo)
    entries: Manifest = {}
    inodes: dict[bytes, tuple[int, int]] = {}
    try:
        rows = conn.execute(SAVE_MEMBERS, {"save_id": save_id}).fetchall()
        for key, mode, size, mtime_ns, target, content_id, dev, ino, nlink in rows:
            path = from_key(key)
            if under is not None and path != under and not path.startswith(under + b"/"):
                continue
            kind = type_of_mode(mode)
            digest = None
            if kind == "-":
                refs = [ChunkRef(s, n) for s, n in
                        conn.execute(CONTENT_CHUNKS, {"content_id": content_id})]
                digest = _sha(store.read(r) for r in refs)
                if nlink > 1:
                    inodes[path] = (dev, ino)
            entries[path] = Entry(kind, stat.S_IMODE(mode), size if kind == "-" else 0,
                                  digest, mtime_ns, target)
    finally:
        conn.close()
    return _with_groups(entries, inodes)


def tar_available() -> bool:
    from backshift import cli
    return "tar" in cli.cli.commands


def from_tar(repo: bytes, save_id: int, dest: Path, prefix: bytes) -> Manifest:
    """Restore SAVE_ID with `backshift tar`, extract it with GNU tar into DEST (empty), and
    return the manifest of what was extracted, keyed by the original absolute paths.
    PREFIX is the saved root (absolute): only it and what is below it is compared."""
    from conftest import BACKSHIFT

    dest.mkdir(parents=True, exist_ok=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    stream = os.fsdecode(dest) + ".tar"  # on disk, not in memory: saves can be large
    made = subprocess.run([BACKSHIFT, "-r", repo, "tar", "--backup", str(save_id),
                           "-o", stream], capture_output=True, env=env, timeout=600)
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    from tarlint import lint_tar  # H6, from the listing engineer's branch (issue 3)
    lint_tar(stream)
    ext = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", stream, "-C", str(dest)],
                         capture_output=True, timeout=600)
    assert ext.returncode == 0, ext.stderr.decode(errors="replace")
    os.unlink(stream)
    base = os.fsencode(dest)
    got = manifest(base + prefix)
    return {path[len(base):]: e for path, e in
            ((p, _rebase_group(e, len(base))) for p, e in got.items())}


def from_stream(stream: bytes, dest: Path, prefix: bytes) -> Manifest:
    """Extract an already-made tar STREAM with GNU tar into DEST; manifest by original path."""
    dest.mkdir(parents=True, exist_ok=False)
    ext = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", "-", "-C", str(dest)],
                         input=stream, capture_output=True, timeout=600)
    assert ext.returncode == 0, ext.stderr.decode(errors="replace")
    base = os.fsencode(dest)
    return {path[len(base):]: _rebase_group(e, len(base))
            for path, e in manifest(base + prefix).items()}


def _rebase_group(e: Entry, cut: int) -> Entry:
    if e.group is None:
        return e
    return replace(e, group=frozenset(p[cut:] for p in e.group))


def diff(expected: Manifest, got: Manifest, symlink_mtime: bool = True) -> list[str]:
    """Human-readable differences (empty when the restore is faithful)."""
    out = []
    for path in sorted(set(expected) | set(got)):
        a, b = expected.get(path), got.get(path)
        if a is None:
            out.append(f"{path!r}: extra in restore")
            continue
        if b is None:
            out.append(f"{path!r}: missing from restore")
            continue
        if a.type == "l" and not symlink_mtime:
            b = replace(b, mtime_ns=a.mtime_ns, mode=a.mode)
        if a != b:
            fields = [f for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)]
            detail = ", ".join(f"{f} {getattr(a, f)!r} != {getattr(b, f)!r}" for f in fields)
            out.append(f"{path!r}: {detail}")
    return out


def assert_save_matches(repo: bytes, save_id: int, expected: Manifest, root: bytes,
                        tmp_path: Path | None = None) -> None:
    """H5 for one save: the catalog + store hold exactly EXPECTED (and tar, when it exists)."""
    root = os.path.abspath(os.fsencode(root))
    problems = diff(expected, from_catalog(repo, save_id, under=root))
    assert not problems, f"save {save_id} differs from its source:\n  " + "\n  ".join(problems)
    if tmp_path is not None and tar_available():
        dest = tmp_path / f"restore-{save_id}-{os.urandom(3).hex()}"
        problems = diff(expected, from_tar(repo, save_id, dest, root), symlink_mtime=False)
        assert not problems, f"tar of save {save_id} differs:\n  " + "\n  ".join(problems)
