"""Ways to damage a chunk file in place, shared by the check, tar and mount tests.

Each damage takes the chunk file's PATH and OTHER, another chunk file of the same repository;
chunk_file_of finds the chunk file of a saved file, leaf_pages the catalog pages of a table.
"""

from __future__ import annotations

import os
import shutil

import apsw

from backshift import pathcodec
from backshift.catalog import CATALOG_NAME, Catalog
from backshift.ops.select import Entry


def truncate(path: str | bytes, _other: str | bytes) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def flip_bit(path: str | bytes, _other: str | bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def delete(path: str | bytes, _other: str | bytes) -> None:
    os.unlink(path)


def other_chunks_bytes(path: str | bytes, other: str | bytes) -> None:
    shutil.copyfile(other, path)


def chunk_file_of(repo: bytes, path: str | bytes, which: int = 1, save_id: int = 1) -> bytes:
    """The chunk file holding chunk WHICH of the content PATH has in save SAVE_ID."""
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    try:
        row = cat.entry_at_key(save_id, pathcodec.sort_key(os.fsencode(path)))
        refs = cat.chunks_of_content(Entry(*row).content_id)
    finally:
        cat.close()
    assert len(refs) > which, f"{path!r} has {len(refs)} chunk(s)"
    sha = refs[which].sha256.hex().encode()
    return os.path.join(repo, b"chunks", sha[:2], sha)


def garble(path: str | bytes, _other: str | bytes = b"") -> None:
    """Overwrite 8 bytes near the start: the file keeps its size, its content is wrong."""
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"garbage!")


def leaf_pages(catalog: str | bytes, table: str) -> list[int]:
    """The leaf pages (1-based, in order) of TABLE in the catalog file, from SQLite's dbstat."""
    conn = apsw.Connection(os.fsdecode(catalog), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [p for (p,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,))]
    finally:
        conn.close()
