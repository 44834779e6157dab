"""Test oracle: what a save holds, read back through the store, compared with file digests.

This reads each regular file's chunks via Store.read (which verifies them) and compares
the bytes with file_digests taken from the source when it was saved; restore_with_tar
checks the same through `backshift tar | tar -x`.
"""

from __future__ import annotations

import hashlib
import os
import stat

from backshift.catalog import Catalog
from backshift.model import ChunkRef
from backshift.pathcodec import from_key
from backshift.store import Store

SAVE_FILES = """
    SELECT p.key, v.mode, v.size, v.content_id
    FROM member AS m
    JOIN version AS v ON v.id = m.version_id
    JOIN path AS p ON p.id = m.path_id
    WHERE m.save_id = :save_id
"""


def file_digests(root) -> dict[bytes, str]:
    """sha256 of every regular file under ROOT (absolute bytes path -> hex)."""
    out = {}
    root = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[full] = hashlib.sha256(f.read()).hexdigest()
    return out


def save_contents(repo: bytes, save_id: int) -> dict[bytes, str]:
    """sha256 of every regular file of a save, each chunk read and verified via the store."""
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    store = Store(repo)
    out = {}
    try:
        rows = cat.conn.execute(SAVE_FILES, {"save_id": save_id}).fetchall()
        for key, mode, _size, content_id in rows:
            if not stat.S_ISREG(mode):
                continue
            h = hashlib.sha256()
            if content_id is not None:
                for ref in cat.chunks_of_content(content_id):
                    h.update(store.read(ChunkRef(ref.sha256, ref.length)))
            out[from_key(key)] = h.hexdigest()
    finally:
        cat.close()
    return out


def assert_save_matches(repo: bytes, save_id: int, expected: dict[bytes, str]) -> None:
    got = save_contents(repo, save_id)
    assert got == expected, f"save {save_id} differs from its source"


def restore_with_tar(repo: bytes, save_id: int, dest) -> dict[bytes, str]:
    """Restore a save through `backshift tar | tar -x` into DEST; the file_digests of what came
    out, keyed by the original absolute paths (GNU tar strips the leading '/')."""
    import subprocess

    from conftest import BACKSHIFT

    os.makedirs(dest, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    producer = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", str(save_id)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    extract = subprocess.run(["tar", "-xf", "-", "-C", os.fsencode(dest)],
                             stdin=producer.stdout, capture_output=True, timeout=120)
    producer.stdout.close()
    err = producer.stderr.read()
    producer.stderr.close()
    assert producer.wait(timeout=120) == 0, err
    assert extract.returncode == 0, extract.stderr
    dest_b = os.fsencode(dest)
    return {b"/" + os.path.relpath(path, dest_b): digest
            for path, digest in file_digests(dest).items()}
