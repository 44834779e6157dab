"""The chunk body codec: encoding (zstd or raw, verified by decoding back) and decoding.
A leaf: it imports nothing of backshift (a store turns RoundTripFailed into ChunkCorrupt).

A body (shared with backshift 1.x) is a 2-byte header naming the codec, then data:
b"8\\n" + one zstd frame, b"1\\n" + raw bytes; readers also accept b"7\\n" (xz) and
b"5\\n" (bz2). The 1.x per-directory metadata files use the same bodies.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import threading

import xxhash
import zstandard

HEADER_ZSTD = b"8\n"
HEADER_RAW = b"1\n"
HEADER_XZ = b"7\n"
HEADER_BZ2 = b"5\n"
HEADER_SIZE = 2
# A big chunk whose first 64 KiB does not shrink by 3% is stored raw without compressing the
# rest (borg's "auto" compression does the same): the probe costs ~6% of finding it out.
PROBE_MIN = 256 << 10
PROBE_BYTES = 64 << 10
PROBE_RATIO = 0.97


def max_body(length: int) -> int:
    """The most bytes a chunk file body of a LENGTH-byte chunk can hold, whatever its codec;
    a longer file is damage (readers then read no further than this plus one byte).

    The 2-byte header, plus LENGTH + LENGTH/8 + 64 KiB, which covers every codec the readers
    accept with room to spare: raw is LENGTH; zstd's worst case (ZSTD_COMPRESSBOUND) is
    LENGTH + LENGTH/256 + 64 (+ < 64 under 128 KiB); xz's (lzma_stream_buffer_bound) is
    LENGTH + 3 bytes per 64 KiB + ~100 bytes of headers and index; bz2's is LENGTH + 1% + 600.
    """
    length = max(length, 0)
    return HEADER_SIZE + length + (length >> 3) + (64 << 10)


def too_long(size: int, length: int) -> str:
    """Why a chunk file of SIZE bytes cannot hold a LENGTH-byte chunk (above max_body)."""
    return f"chunk file is {size} bytes, longer than any body of a {length}-byte chunk"


class BodyError(ValueError):
    """A body that cannot be decoded: unknown header, damaged or truncated data, too big."""


class WrongSize(BodyError):
    """A zstd frame whose recorded content size is not the expected one (in .size)."""

    def __init__(self, size: int) -> None:
        # args is (size,), not the message: unpickling (a reader process raises it) calls
        # WrongSize(*args), which must rebuild the same exception
        super().__init__(size)
        self.size = size

    def __str__(self) -> str:
        return f"the frame holds {self.size} bytes"


class RoundTripFailed(Exception):
    """A body the compressor made does not decompress back to its data (a compressor bug or
    bad memory): nothing is stored. args: (sha256 hex of the data, the reason)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(name, why)
        self.name = name
        self.why = why

    def __str__(self) -> str:
        return self.why


class Codec:
    """Encodes and decodes chunk bodies at one zstd level; thread-safe (one compressor and
    decompressor per thread, made on first use)."""

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._local = threading.local()

    def zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        """This thread's (compressor, decompressor)."""
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (
                zstandard.ZstdCompressor(level=self.level),
                zstandard.ZstdDecompressor(),
            )
            self._local.zstd = pair
        return pair

    def decompressor(self) -> zstandard.ZstdDecompressor:
        return self.zstd()[1]

    def encode(self, data: bytes | memoryview, xxh: bytes | None = None) -> bytes:
        """The chunk body for DATA, verified: what is written decodes back to DATA
        (RoundTripFailed otherwise).

        XXH, when given, is xxh3_128_digest(DATA) (the caller often has it already).
        """
        comp, decomp = self.zstd()
        if len(data) >= PROBE_MIN and \
                len(comp.compress(memoryview(data)[:PROBE_BYTES])) > PROBE_BYTES * PROBE_RATIO:
            return HEADER_RAW + bytes(data)  # its start does not compress: random data
        packed = comp.compress(data)
        if len(packed) >= len(data):
            return HEADER_RAW + bytes(data)
        try:
            back = decomp.decompress(packed, max_output_size=len(data))
        except zstandard.ZstdError:
            back = b""
        _verify(data, back, xxh)
        return HEADER_ZSTD + packed

    def encode_many(self, datas: list[bytes], xxhs: list[bytes]) -> list[bytes]:
        """encode() for many chunks (small files): one compressor call and one decompressor
        call for all of them, each releasing the GIL once instead of once per chunk.

        XXHS[i] is xxh3_128_digest(DATAS[i]). A compressor without the batch calls (or a
        batch the decompressor refuses) is handled chunk by chunk, which names the culprit.
        """
        comp, decomp = self.zstd()
        multi = getattr(comp, "multi_compress_to_buffer", None)
        if multi is None or len(datas) < 2 or not all(datas):
            return [self.encode(d, x) for d, x in zip(datas, xxhs, strict=True)]
        frames = multi(datas)
        packed = [frames[i] for i in range(len(datas))]
        shrunk = [i for i, d in enumerate(datas) if len(packed[i]) < len(d)]
        backs: dict[int, object] = {}
        if shrunk:
            try:
                out = decomp.multi_decompress_to_buffer([packed[i] for i in shrunk])
            except zstandard.ZstdError:
                return [self.encode(d, x) for d, x in zip(datas, xxhs, strict=True)]
            backs = {i: out[n] for n, i in enumerate(shrunk)}
        bodies = []
        for i, data in enumerate(datas):
            back = backs.get(i)
            if back is None:
                bodies.append(HEADER_RAW + data)
                continue
            _verify(data, back, xxhs[i])
            bodies.append(HEADER_ZSTD + packed[i])
        return bodies

    def decode(self, body: bytes) -> bytes:
        """The data of a chunk body; BodyError when it cannot be decoded."""
        return decode(body, decompressor=self.zstd()[1])


def _verify(data, back, xxh: bytes | None) -> None:
    """RoundTripFailed unless BACK (the decompressed body) equals DATA.

    xxh3-128 of both sides instead of `back != data`: comparing bytes with a memoryview goes
    byte by byte (~1 GB/s, 3% of a first save in perf); the hashes run at ~20 GB/s.
    """
    if xxh is None:
        xxh = xxhash.xxh3_128_digest(data)
    if len(back) != len(data) or xxhash.xxh3_128_digest(back) != xxh:
        raise RoundTripFailed(hashlib.sha256(data).hexdigest(),
                              "compressor output does not decompress back")


def decode(body: bytes, max_size: int | None = None,
           decompressor: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The data of a chunk body; BodyError when it is not a valid body (never another error)."""
    head, payload = body[:2], memoryview(body)[2:]
    try:
        if head == HEADER_ZSTD:
            out = _zstd(payload, decompressor or zstandard.ZstdDecompressor(), max_size)
        elif head == HEADER_RAW:
            out = bytes(payload)
        elif head == HEADER_XZ:
            out = _bounded(lzma.LZMADecompressor(), payload, max_size)
        elif head == HEADER_BZ2:
            out = _bounded(bz2.BZ2Decompressor(), payload, max_size)
        else:
            raise BodyError(f"unknown header {bytes(head)!r}")
    except (zstandard.ZstdError, lzma.LZMAError, OSError, EOFError, ValueError) as e:
        if isinstance(e, BodyError):
            raise
        raise BodyError(f"cannot decompress: {e}") from None
    if max_size is not None and len(out) > max_size:
        raise BodyError("decompressed body is too large")
    return out


def decode_sized(body: bytes, size: int,
                 decompressor: zstandard.ZstdDecompressor) -> bytes | memoryview:
    """The data of a chunk body whose data should be SIZE bytes long: bytes, or for a raw
    body a view of BODY (no copy). BodyError when it cannot be decoded.

    A zstd frame that records a content size other than SIZE is not decompressed: its
    data could not be the chunk's, and a damaged size field must not allocate gigabytes.
    """
    if body[:2] == HEADER_RAW:
        return memoryview(body)[2:]
    if body[:2] == HEADER_ZSTD:
        payload = memoryview(body)[2:]
        try:
            recorded = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            recorded = -1  # no readable frame header: decode() says what is wrong
        if recorded >= 0 and recorded != size:
            raise WrongSize(recorded)
    return decode(body, max_size=size, decompressor=decompressor)


def _zstd(payload: memoryview, d: zstandard.ZstdDecompressor, max_size: int | None) -> bytes:
    if max_size is not None:
        try:
            recorded = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            recorded = -1  # no readable frame header: decompress() says what is wrong
        if recorded > max_size:
            raise BodyError("decompressed body is too large")
    try:  # one shot when the frame records its size (what zstandard's compress() writes)
        return d.decompress(payload)
    except zstandard.ZstdError as e:
        if "content size" not in str(e):
            raise
    if max_size is not None:
        # A frame without its size (damaged, or not written by us): never more than the
        # chunk can hold, so a few bytes of hostile frame cannot ask for gigabytes.
        return d.decompress(payload, max_output_size=max(max_size, 1))
    dobj = d.decompressobj()  # no bound known: stream it, and demand its end
    out = dobj.decompress(payload)
    if not dobj.eof:
        raise BodyError("truncated zstd frame")
    return out


def _bounded(dec, payload: memoryview, max_size: int | None) -> bytes:
    """All of an xz or bz2 stream, or at most MAX_SIZE + 1 bytes of it (then too large)."""
    out = dec.decompress(payload, -1 if max_size is None else max_size + 1)
    if not dec.eof and (max_size is None or len(out) <= max_size):
        raise EOFError("compressed data ended before the end-of-stream marker")
    return out
