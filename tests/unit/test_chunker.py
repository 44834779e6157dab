"""Unit: content-defined chunking is deterministic and local."""

from __future__ import annotations

import io
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from backshift.chunker import Chunker
from backshift.model import ChunkerParams

SMALL = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_chunker_is_deterministic_and_covers_input():
    data = _data(2_000_000)
    a = [bytes(c) for c in Chunker(SMALL).cut_buffer(data)]
    b = [bytes(c) for c in Chunker(SMALL).cut_buffer(data)]
    assert a == b
    assert b"".join(a) == data
    assert all(len(c) <= SMALL.max_size for c in a)
    assert all(len(c) >= SMALL.min_size for c in a[:-1])


def test_chunker_stream_equals_buffer():
    data = _data(1_500_000, seed=2)
    chunker = Chunker(SMALL)
    from_buf = [bytes(c) for c in chunker.cut_buffer(data)]
    from_stream = [bytes(c) for c in chunker.cut_stream(io.BytesIO(data))]
    assert from_stream == from_buf


def test_chunker_insert_in_middle_changes_only_nearby_chunks():
    data = _data(4_000_000, seed=3)
    middle = len(data) // 2
    edited = data[:middle] + b"INSERTED BYTES" + data[middle:]
    before = [bytes(c) for c in Chunker(SMALL).cut_buffer(data)]
    after = [bytes(c) for c in Chunker(SMALL).cut_buffer(edited)]
    changed = set(after) - set(before)
    assert len(before) > 100
    assert 1 <= len(changed) <= 3, len(changed)
    assert sum(map(len, changed)) < 3 * SMALL.max_size


def test_chunker_default_average_is_about_one_mib():
    data = _data(64 << 20, seed=4)
    sizes = [len(c) for c in Chunker(ChunkerParams()).cut_buffer(data)]
    mean = sum(sizes) / len(sizes)
    assert 700_000 < mean < 1_500_000, mean
    assert min(sizes[:-1]) >= 256 * 1024 and max(sizes) <= 4 << 20


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=0, max_size=200_000))
def test_chunker_concatenation_is_identity(data):
    chunks = [bytes(c) for c in Chunker(SMALL).cut_buffer(data)]
    assert b"".join(chunks) == data
    assert all(chunks)
