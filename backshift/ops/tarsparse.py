"""Sparse members: which chunks of a file are holes (from the catalog alone), and the GNU
sparse 1.0 layout that leaves them out of the tar stream."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from ..model import MAX_CHUNK_LENGTH
from .tarstream import BLOCK, MAX_OCTAL_11, ZEROS, padding

# The saver cuts a run of zeros into chunks of zeros (there is no content-defined cut point
# in zeros: they are chunks of the chunker's max size, 4 MiB by default), so the holes of a
# file are its chunks whose name is the sha256 of zeros of their length.
SPARSE_MIN_HOLES = 1 << 20  # a member is sparse with at least this many bytes of holes
SPARSE_MIN_HOLE_CHUNK = 64 << 10  # ... and at least one hole chunk this long
HOLE_STORED_SHIFT = 8  # a chunk of zeros is stored in 64 bytes + 1/256 of its length at
# most (zstd takes 22 bytes for 64 KiB, 149 for 4 MiB; xz 142 and 746; bz2 45 and 50): only
# such chunks are compared with the sha256 of zeros, which is then computed once per length
_ZERO_SHA: dict[int, bytes] = {}  # length -> sha256 of that many zero bytes


def zero_sha(length: int) -> bytes:
    """The sha256 of LENGTH zero bytes (0 < LENGTH <= MAX_CHUNK_LENGTH), cached per length."""
    sha = _ZERO_SHA.get(length)
    if sha is None:
        h = hashlib.sha256()
        for start in range(0, length, len(ZEROS)):
            h.update(ZEROS[:min(len(ZEROS), length - start)])
        if len(_ZERO_SHA) >= 1024:
            _ZERO_SHA.clear()
        sha = _ZERO_SHA[length] = h.digest()
    return sha


class SparsePlan(NamedTuple):
    """How a member goes out as GNU sparse 1.0: which chunks are holes, the map, the size."""

    layout: list[int]  # per chunk: -1 for a hole (not written), else the zero bytes that
    # follow its data (to round a data region up to whole blocks; 0 mostly)
    regions: list[tuple[int, int]]  # the data regions (offset, length) in the file; a file
    # that ends in a hole ends with (realsize, 0), which GNU tar needs to make the file whole
    sparse_map: bytes  # the map as the member's data begins with it, padded to a block
    stored: int  # the member's declared size: the map and the data regions


def sparse_plan(size: int, chunks: list) -> SparsePlan | None:
    """The sparse layout of a SIZE-byte member made of CHUNKS (rows of _Chunks.of: key,
    sha256, length, stored_length), or None when it goes out as a plain member.

    Only the catalog decides (no chunk is read): a hole is a chunk of at least one block
    whose sha256 is that of zeros of its length. Plain when the holes are fewer than
    SPARSE_MIN_HOLES bytes or none is SPARSE_MIN_HOLE_CHUNK long; when the chunk lengths do
    not add up to SIZE (a damaged catalog: the plain member's padding and reports apply);
    and when the data would need a pax `size` (8 GiB or more), which tarfile misreads for a
    sparse member."""
    if size < SPARSE_MIN_HOLES:
        return None
    layout = _holes(size, chunks)
    if layout is None:
        return None
    regions = _regions(size, chunks, layout)
    text = b"%d\n" % len(regions) + b"".join(b"%d\n%d\n" % r for r in regions)
    sparse_map = text + padding(len(text))
    stored = len(sparse_map) + sum(n for _, n in regions)
    if stored > MAX_OCTAL_11:
        return None
    return SparsePlan(layout, regions, sparse_map, stored)


def _holes(size: int, chunks: list) -> list[int] | None:
    """-1 for each chunk that is a hole, 0 for the others; None when the lengths do not
    add up to SIZE or the holes are too few to make the member sparse."""
    layout = []
    total = hole_bytes = longest = 0
    for _key, sha, length, stored in chunks:
        if length <= 0:
            return None
        if (BLOCK <= length <= MAX_CHUNK_LENGTH and stored <= (length >> HOLE_STORED_SHIFT) + 64
                and sha == zero_sha(length)):
            hole_bytes += length
            longest = max(longest, length)
            layout.append(-1)
        else:
            layout.append(0)
        total += length
    if total != size or hole_bytes < SPARSE_MIN_HOLES or longest < SPARSE_MIN_HOLE_CHUNK:
        return None
    return layout


def _regions(size: int, chunks: list, layout: list[int]) -> list[tuple[int, int]]:
    """The data regions (offset, length) of the map, and (SIZE, 0) after a final hole.

    Every data region but one that ends the file is a whole number of blocks: GNU tar
    reads each region in whole blocks, tarfile and libarchive read them back to back, and
    only so do they all find the same bytes. The region takes the zeros it needs (< 512)
    from the hole after it, which is longer (a hole chunk is at least a block); LAYOUT
    records them on the region's last chunk."""
    regions: list[tuple[int, int]] = []
    offset = 0
    last = -1  # the index of the current region's last chunk
    for i, row in enumerate(chunks):
        length = row[2]
        if layout[i] < 0:
            if last >= 0:  # a hole ends the region before it
                start, n = regions[-1]
                layout[last] = -n % BLOCK
                regions[-1] = (start, n + layout[last])
                last = -1
        elif last >= 0:
            regions[-1] = (regions[-1][0], regions[-1][1] + length)
            last = i
        else:
            regions.append((offset, length))
            last = i
        offset += length
    if layout[-1] < 0:
        regions.append((size, 0))
    return regions
