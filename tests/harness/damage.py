"""Ways to damage a chunk file in place, shared by the check tests (test_check, test_faults_check).

Each takes the chunk file's PATH and OTHER, another chunk file of the same repository.
"""

from __future__ import annotations

import os
import shutil


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
