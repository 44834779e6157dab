"""Chunk bodies of the object-store chunk backend, both ways verified: encode() before a PUT
decompresses what it made back and compares, and every body a GET brings is decoded and its
sha256 compared with its name. A mixin of objstore.ObjectStore (its zstd_level, and _local:
one compressor and decompressor per thread).
"""

from __future__ import annotations

import hashlib
from binascii import hexlify

import zstandard

from . import chunkcodec
from .chunkcodec import HEADER_RAW, HEADER_ZSTD
from .errors import ChunkCorrupt
from .model import MAX_CHUNK_LENGTH


class VerifiedBodies:
    """encode(), _verified() and _orphan_data() for objstore.ObjectStore."""

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self.zstd_level),
                    zstandard.ZstdDecompressor())
            self._local.zstd = pair
        return pair

    def encode(self, data: bytes | memoryview) -> bytes:
        """The chunk body for DATA, verified: what is sent decodes back to DATA."""
        data = bytes(data)
        comp, decomp = self._zstd()
        packed = comp.compress(data)
        if len(packed) >= len(data):
            return HEADER_RAW + data
        try:
            back = decomp.decompress(packed, max_output_size=len(data))
        except zstandard.ZstdError:
            back = b""
        if back != data:
            raise ChunkCorrupt(hashlib.sha256(data).hexdigest(),
                               "compressor output does not decompress back")
        return HEADER_ZSTD + packed

    def _verified(self, sha256: bytes, length: int, body: bytes) -> bytes:
        """The data of BODY, the object of chunk SHA256 (LENGTH bytes), verified."""
        name = hexlify(sha256).decode()
        try:
            data = chunkcodec.decode_sized(body, length, self._zstd()[1])
        except chunkcodec.WrongSize as e:
            raise ChunkCorrupt(name, f"length {e.size}, expected {length}") from None
        except Exception as e:  # any decoder error means damage, never a crash
            raise ChunkCorrupt(name, f"cannot decompress ({e})") from None
        if len(data) != length:
            raise ChunkCorrupt(name, f"length {len(data)}, expected {length}")
        if hashlib.sha256(data).digest() != sha256:
            raise ChunkCorrupt(name, "content does not match its name (sha256)")
        return data

    def _orphan_data(self, sha256: bytes, body: bytes) -> bytes:
        name = hexlify(sha256).decode()
        try:
            data = chunkcodec.decode(body, MAX_CHUNK_LENGTH, self._zstd()[1])
        except Exception as e:
            raise ChunkCorrupt(name, f"cannot decompress ({e})") from None
        if hashlib.sha256(data).digest() != sha256:
            raise ChunkCorrupt(name, "content does not match its name (sha256)")
        return data
