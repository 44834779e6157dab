"""Unit: the chunk store writes atomically and detects every kind of damage on read."""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import tracemalloc

import pytest
import zstandard

from backshift import chunkbatch, chunkcodec, diskio
from backshift.chunkcodec import HEADER_RAW, HEADER_ZSTD, PROBE_BYTES, PROBE_MIN
from backshift.diskio import read_whole
from backshift.errors import ChunkCorrupt, ChunkMissing, RepositoryIOError
from backshift.model import ChunkRef
from backshift.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    repo = os.fsencode(tmp_path)
    Store.create_layout(repo)
    return Store(repo)


def put(store: Store, data: bytes) -> ChunkRef:
    sha = hashlib.sha256(data).digest()
    store.put(data, sha)
    return ChunkRef(sha, len(data))


def temp_files(store: Store) -> list[bytes]:
    return [p for sha, p in store.iter_chunk_files() if sha is None]


def test_store_chunk_invisible_until_flush(store):
    ref = put(store, b"text " * 1000)
    assert store.stored_size(ref.sha256) is None
    assert len(temp_files(store)) == 1
    assert store.flush() == 1
    assert store.stored_size(ref.sha256) is not None
    assert temp_files(store) == []
    assert store.read(ref) == b"text " * 1000


def test_store_chunk_test_sees_sound_final_names_only(store):
    placed = put(store, b"placed " * 100)
    gone = put(store, b"gone " * 100)
    short = put(store, b"short " * 100)
    store.flush()
    os.unlink(store.path_for(gone.sha256))
    size = os.path.getsize(store.path_for(placed.sha256))
    os.truncate(store.path_for(short.sha256), 3)
    pending = put(store, b"pending " * 100)  # a temp file only
    sound = store.chunk_test()
    assert sound(placed.sha256.hex(), size)
    assert sound(placed.sha256.hex(), 0)  # stored length unknown: any regular file
    assert not sound(placed.sha256.hex(), size + 1)
    assert not sound(short.sha256.hex(), size)
    assert not sound(pending.sha256.hex(), 0)
    assert not sound(gone.sha256.hex(), 0)
    assert not sound(hashlib.sha256(b"never stored").hexdigest(), 0)


def test_store_compresses_text_and_keeps_random_raw(store):
    text = put(store, b"abc" * 10000)
    rnd = put(store, os.urandom(10000))
    store.flush()
    with open(store.path_for(text.sha256), "rb") as f:
        assert f.read(2) == HEADER_ZSTD
    with open(store.path_for(rnd.sha256), "rb") as f:
        body = f.read()
    assert body[:2] == HEADER_RAW and len(body) == 10002


def test_store_writes_each_chunk_once(store):
    data = b"same" * 5000
    sha = hashlib.sha256(data).digest()
    first = store.put(data, sha)
    again = store.put(data, sha)  # pending in this batch
    store.flush()
    later = store.put(data, sha)  # on disk already
    assert (first.new, again.new, later.new) == (True, False, False)
    # the catalog records stored_length from whichever put it sees: all must be the real one
    assert first.stored_length == again.stored_length == later.stored_length > 0
    assert store.flush() == 0


def test_store_flush_syncs_once_when_a_chunk_was_found_on_disk(store, monkeypatch):
    """A chunk another process renamed in may not be durable yet: before our catalog names
    it, flush() syncs the filesystem even with nothing of its own pending."""
    data = b"made by another process" * 100
    sha = hashlib.sha256(data).digest()
    other = Store(os.path.dirname(store.root))
    other.put(data, sha)
    other.flush()
    calls = []
    monkeypatch.setattr(diskio, "syncfs", lambda path: calls.append(path))
    assert store.flush() == 0 and calls == []  # nothing seen, nothing to sync
    assert store.put(data, sha).new is False
    assert store.flush() == 0 and calls == [store.root]


def test_store_abandon_removes_temps(store):
    put(store, b"x" * 100)
    store.abandon()
    assert temp_files(store) == []


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "other_chunk", "delete", "garbage"])
def test_store_read_detects_damaged_chunk(store, damage):
    ref = put(store, b"payload " * 4000)
    other = put(store, b"another " * 4000)
    store.flush()
    path = store.path_for(ref.sha256)
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "bitflip":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x10]))
    elif damage == "other_chunk":
        with open(store.path_for(other.sha256), "rb") as f:
            body = f.read()
        with open(path, "wb") as f:
            f.write(body)
    elif damage == "delete":
        os.unlink(path)
    else:
        with open(path, "wb") as f:
            f.write(b"Q\nnot a chunk")
    expected = ChunkMissing if damage == "delete" else ChunkCorrupt
    with pytest.raises(expected) as info:
        store.read(ref)
    assert ref.sha256.hex() in str(info.value)


def test_store_reads_legacy_xz_and_bz2_chunks(store):
    for header, packed in ((b"7\n", lzma.compress(b"legacy xz")), (b"5\n", bz2.compress(b"bz"))):
        data = b"legacy xz" if header == b"7\n" else b"bz"
        sha = hashlib.sha256(data).digest()
        with open(store.path_for(sha), "wb") as f:
            f.write(header + packed)
        assert store.read(ChunkRef(sha, len(data))) == data


def test_store_refuses_corrupt_compressor_output(store, monkeypatch):
    class BadCompressor:
        def compress(self, data):
            import zstandard
            good = zstandard.ZstdCompressor().compress(b"something else entirely" * 100)
            return good

    monkeypatch.setattr(store.codec, "zstd", lambda: (BadCompressor(), __import__(
        "zstandard").ZstdDecompressor()))
    with pytest.raises(ChunkCorrupt, match="does not decompress back"):
        put(store, b"z" * 100000)
    assert temp_files(store) == []


def test_store_disk_full_is_reported_and_leaves_no_temp(store, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diskio, "write_all", full)
    with pytest.raises(RepositoryIOError, match="No space left on device"):
        put(store, b"a" * 1000)
    assert temp_files(store) == []


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def batch(*datas: bytes) -> list[tuple[bytes, bytes, bytes]]:
    import xxhash
    return [(d, sha(d), xxhash.xxh3_128_digest(d)) for d in datas]


def test_store_put_many_stores_each_chunk_once_and_knows_what_is_there(store):
    on_disk, pending, a, b = b"disk " * 300, b"pending " * 300, b"a " * 500, os.urandom(900)
    store.put(on_disk, sha(on_disk))
    store.flush()
    store.put(pending, sha(pending))
    got = store.put_many(batch(a, on_disk, b, a, pending))
    assert [c.new for c in got] == [True, False, True, False, False]
    assert got[3].stored_length == got[0].stored_length
    assert got[1].stored_length == store.stored_size(sha(on_disk))
    assert [c.ref for c in got] == [ChunkRef(sha(d), len(d)) for d in (a, on_disk, b, a, pending)]
    assert store.stored_size(sha(a)) is None  # a temp file until the flush
    assert store.flush() == 3
    for data, c in zip((a, on_disk, b, a, pending), got, strict=True):
        assert store.read(c.ref) == data
        assert store.stored_size(c.ref.sha256) == c.stored_length
    assert temp_files(store) == []


class _BatchCompressor:
    """A compressor with the batch call whose output is damaged for one chunk."""

    def __init__(self, victim: bytes, how: str):
        import zstandard
        self.real = zstandard.ZstdCompressor()
        self.victim, self.how = victim, how

    def compress(self, data):
        out = bytearray(self.real.compress(data))
        if bytes(data) == self.victim:
            if self.how == "truncated":
                return bytes(out[: len(out) // 2])
            out[len(out) // 2] ^= 0x40
        return bytes(out)

    def multi_compress_to_buffer(self, datas):
        return [self.compress(d) for d in datas]


@pytest.mark.parametrize("how", ["bit_flip", "truncated"])
def test_store_put_many_refuses_corrupt_compressor_output(store, monkeypatch, how):
    import zstandard
    victim = b"the victim chunk " * 400
    bad = _BatchCompressor(victim, how)
    monkeypatch.setattr(store.codec, "zstd", lambda: (bad, zstandard.ZstdDecompressor()))
    with pytest.raises(ChunkCorrupt, match="does not decompress back"):
        store.put_many(batch(b"fine " * 400, victim, b"also fine " * 400))
    assert temp_files(store) == [] and store.flush() == 0


def test_store_temp_names_draw_randomness_once_and_skip_taken_names(store, monkeypatch):
    import secrets

    from harness.consistency import TEMP_NAME
    calls = []
    real = secrets.token_bytes
    monkeypatch.setattr(secrets, "token_bytes", lambda n: calls.append(n) or real(n))
    batch = store.batch
    taken = batch._temp_name(store.path_for(sha(b"x" * 64)))  # the name the next put takes
    batch._temp_count = __import__("itertools").count()
    batch._temp_base = int(taken[-8:], 16)
    with open(taken, "wb") as f:  # another process (same host and pid) has it
        f.write(b"theirs")
    for data in [b"x" * 64] + [b"%d" % i * 64 for i in range(1, 20)]:
        store.put(data, sha(data))
    assert calls == [4]  # one new random start, after the clash; none per chunk
    names = [os.path.basename(p) for p in temp_files(store)]
    assert len(names) == 21 and all(TEMP_NAME.match(n) for n in names), names
    assert open(taken, "rb").read() == b"theirs"


def test_store_flush_ahead_renames_early_and_flush_still_syncs_last(store, monkeypatch):
    monkeypatch.setattr(chunkbatch, "FLUSH_AHEAD", 4)
    events = []
    real_sync, real_rename = diskio.syncfs, diskio.rename
    monkeypatch.setattr(diskio, "syncfs", lambda p: events.append("sync") or real_sync(p))
    monkeypatch.setattr(diskio, "rename",
                        lambda a, b: events.append("rename") or real_rename(a, b))
    datas = [b"chunk %d " % i * 100 for i in range(10)]
    for d in datas:
        store.put(d, sha(d))
    assert store.put(datas[0], sha(datas[0])).new is False  # renamed ahead: still known
    assert store.flush() == 10
    assert events[0] == "sync" and events[-1] == "sync" and events.count("rename") == 10
    first_rename = events.index("rename")
    assert "sync" in events[:first_rename]  # data synced before any name appears
    for d in datas:
        assert store.read(ChunkRef(sha(d), len(d))) == d
    assert temp_files(store) == [] and store.flush() == 0


def test_store_flush_ahead_failure_is_raised_by_flush_and_leaves_no_temp(store, monkeypatch):
    import errno

    monkeypatch.setattr(chunkbatch, "FLUSH_AHEAD", 3)

    def broken(a, b):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(diskio, "rename", broken)
    for i in range(5):
        d = b"doomed %d " % i * 50
        store.put(d, sha(d))
    with pytest.raises(RepositoryIOError, match="Input/output error"):
        store.flush()
    store.abandon()
    assert temp_files(store) == []


def test_store_big_chunk_that_starts_random_is_stored_raw_without_compressing(store,
                                                                             monkeypatch):
    text = b"".join(b"line %d of some text\n" % i for i in range(20000))
    noise = os.urandom(PROBE_MIN)
    sizes = []
    real = store.codec.zstd()[0]

    class Counting:
        def compress(self, data):
            sizes.append(len(data))
            return real.compress(data)

    decomp = zstandard.ZstdDecompressor()
    monkeypatch.setattr(store.codec, "zstd", lambda: (Counting(), decomp))
    assert store.codec.encode(noise)[:2] == HEADER_RAW
    assert sizes == [PROBE_BYTES]  # only the probe was compressed
    body = store.codec.encode(text)
    assert body[:2] == HEADER_ZSTD and len(body) < len(text) // 3
    assert store.codec.decode(store.codec.encode(noise)) == noise
    assert store.codec.decode(body) == text


# -- decompression bombs: a damaged or hostile chunk body never allocates beyond the chunk --

BOMB = 256 << 20  # what the hostile bodies below expand to


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except chunkcodec.BodyError:
        pass
    else:
        raise AssertionError("a body bigger than its chunk was accepted")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("codec", ["zstd-sized", "zstd-unsized", "xz", "bz2"])
def test_store_bounds_decompression_to_the_chunk_length(store, codec):
    zeros = bytes(BOMB)
    if codec.startswith("zstd"):
        c = zstandard.ZstdCompressor(write_content_size=codec == "zstd-sized")
        body = HEADER_ZSTD + c.compress(zeros)
    elif codec == "xz":
        body = b"7\n" + lzma.compress(zeros)
    else:
        body = b"5\n" + bz2.compress(zeros)
    del zeros
    limit = 1 << 20
    peak = _peak_bytes(lambda: chunkcodec.decode(body, max_size=limit))
    assert peak < 16 << 20, f"{codec}: {peak} bytes allocated for a {limit}-byte chunk"
    # through the store: a chunk file holding the bomb is damage, named, not an allocation
    data = b"x" * limit
    sha = hashlib.sha256(data).digest()
    path = store.path_for(sha)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)
    with pytest.raises(ChunkCorrupt):
        store.read(ChunkRef(sha, limit))


@pytest.mark.parametrize("length", [0, 1, 1000, 65536, 1 << 20, 4 << 20])
def test_chunkcodec_max_body_covers_every_codec_on_incompressible_data(length):
    data = os.urandom(length)
    bodies = {
        "raw": HEADER_RAW + data,
        "zstd": HEADER_ZSTD + zstandard.ZstdCompressor(level=19).compress(data),
        "xz": b"7\n" + lzma.compress(data),
        "bz2": b"5\n" + bz2.compress(data, 9),
    }
    for codec, body in bodies.items():
        assert len(body) <= chunkcodec.max_body(length), (codec, len(body), length)


@pytest.mark.parametrize("hint", [None, "real", "huge"])
def test_store_read_refuses_a_chunk_file_longer_than_any_body(store, hint):
    ref = put(store, b"payload " * 4000)
    store.flush()
    path = store.path_for(ref.sha256)
    stored = os.path.getsize(path)
    size = chunkcodec.max_body(ref.length) + 1
    os.truncate(path, size)
    hints = {None: None, "real": stored, "huge": size}
    with pytest.raises(ChunkCorrupt) as info:
        store.read(ref, hints[hint])
    assert str(info.value) == (f"chunk {ref.sha256.hex()} is damaged: chunk file is {size} "
                               f"bytes, longer than any body of a {ref.length}-byte chunk")


def test_store_read_whole_reads_no_more_than_its_limit(tmp_path):
    path = tmp_path / "grown"
    path.write_bytes(b"x" * (3 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(read_whole(fd, 10, limit=100)) == 101  # one more than the limit: too long
        os.lseek(fd, 0, os.SEEK_SET)
        assert len(read_whole(fd, 3 << 20, limit=(2 << 20) + 5)) == (2 << 20) + 6
        os.lseek(fd, 0, os.SEEK_SET)
        assert len(read_whole(fd, 10, limit=3 << 20)) == 3 << 20  # all of it: not too long
        os.lseek(fd, 0, os.SEEK_SET)
        assert len(read_whole(fd, 10)) == 3 << 20  # no limit: read on to EOF
    finally:
        os.close(fd)


def test_store_adopts_a_detached_stores_temps_and_keeps_the_first_of_two(store):
    """A reader process's store only writes temp files; the saving store adopts them and
    makes them durable. The same chunk written by two readers is kept once."""
    readers = [Store(store.repo, detached=True) for _ in range(2)]
    shared, own = b"the same bytes" * 100, b"only one reader has these" * 50
    put(readers[0], shared)
    put(readers[0], own)
    put(readers[1], shared)
    first, seen0 = readers[0].take_pending()
    second, seen1 = readers[1].take_pending()
    assert readers[0].take_pending() == ([], False)  # handed over once
    assert store.adopt(first, seen0) == set()
    assert store.adopt(second, seen1) == {hashlib.sha256(shared).digest()}
    assert len(temp_files(store)) == 2  # the second temp of `shared` is gone already
    assert not store.present(hashlib.sha256(b"never stored").digest())
    assert store.flush() == 2
    assert temp_files(store) == []
    for data in (shared, own):
        assert store.read(ChunkRef(hashlib.sha256(data).digest(), len(data))) == data


def test_store_discard_removes_temps_nobody_adopts(store):
    reader = Store(store.repo, detached=True)
    put(reader, b"y" * 300)
    pending, _seen = reader.take_pending()
    store.discard(pending)
    assert temp_files(store) == []
    assert store.flush() == 0


@pytest.mark.parametrize("call", ["write_all", "close", "crashpoint"])
def test_store_interrupted_while_writing_a_chunk_leaves_no_temp(store, monkeypatch, call):
    """A KeyboardInterrupt (a save's hard stop, in its own thread: the rare chunk the saving
    process writes itself) while a temp file is written, or before it joins the pending
    batch (at the crash point between): nobody else knows the file, so the store removes
    it before passing the interrupt on, as it does for an I/O error."""
    module = chunkbatch if call == "crashpoint" else diskio
    real = getattr(module, call)

    def interrupted(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, call, interrupted)
    with pytest.raises(KeyboardInterrupt):
        put(store, b"a" * 1000)
    store.abandon()
    assert temp_files(store) == []
