"""Operation depth: a re-save of a big file with bytes inserted in its middle (the bench's
resave_mod step) does the least work that keeps every guarantee: each byte is hashed with
SHA-256 once, and only the chunks the store lacks are compressed and written."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from backshift import chunkcodec, pathcodec
from backshift.ops import save as save_mod
from backshift.ops.save import SaveOptions
from backshift.repo import WRITE, open_repository
from conftest import find0

BIG = 3 << 20  # > reader.SMALL_FILE: streamed through the store threads, ~190 chunks here
INSERT = b"inserted by the test\n" * 40


def _save(repo: bytes, root: Path):
    names = [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("host", "t"), warnings.append)
    assert warnings == []
    return stats


def _chunk_names(repo: bytes) -> set[str]:
    return {name for _d, _s, files in os.walk(os.path.join(repo, b"chunks"))
            for name in map(os.fsdecode, files)}


def test_save_resave_with_an_insert_hashes_each_byte_once_and_encodes_only_new_chunks(
        repo, tmp_path, monkeypatch, no_racy_margin):
    root = tmp_path / "src"
    root.mkdir()
    big = root / "big.bin"
    data = random.Random(7).randbytes(BIG)
    big.write_bytes(data)
    _save(repo, root)
    before = _chunk_names(repo)
    mid = BIG // 2
    big.write_bytes(data[:mid] + INSERT + data[mid:])

    hashed: list[int] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(buf=b"", *args, **kwargs):
        hashed.append(len(buf))
        return real_sha256(buf, *args, **kwargs)

    encoded: list[bytes] = []
    real_encode, real_encode_many = chunkcodec.Codec.encode, chunkcodec.Codec.encode_many

    def counting_encode(self, buf, xxh=None):
        encoded.append(bytes(buf))
        return real_encode(self, buf, xxh)

    def counting_encode_many(self, datas, xxhs):
        encoded.extend(bytes(d) for d in datas)
        return real_encode_many(self, datas, xxhs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    monkeypatch.setattr(chunkcodec.Codec, "encode", counting_encode)
    monkeypatch.setattr(chunkcodec.Codec, "encode_many", counting_encode_many)
    stats = _save(repo, root)
    monkeypatch.undo()

    assert stats.files_read == 1
    # the file's bytes went through SHA-256 once (a chunk is named by it, never re-hashed
    # to vet a chunk file the catalog records with that very size)
    assert sum(n for n in hashed if n >= 1024) == BIG + len(INSERT)
    new = _chunk_names(repo) - before
    assert 1 <= len(new) <= 3, new  # the chunks around the insert
    # compressed: exactly the chunks the store lacked, each once (the others, found on
    # disk under their names, are never encoded again)
    assert sorted(real_sha256(e).hexdigest() for e in encoded) == sorted(new)
