"""The tar producer's pool of chunk readers and its batched writes: whatever the pool and
the write sizes do, the stream and the damage reports are those of the plain in-order
producer."""

from __future__ import annotations

import io
import os
import random

import pytest
from restorehelp import save_tree
from tarlint import lint_tar

from backshift.ops import select, tardata
from backshift.ops import tarproduce as tp
from backshift.ops import tarstream as ts
from backshift.repo import READ_CHUNKS, open_repository
from backshift.store import Store


class _Out(io.BytesIO):
    """A binary output with a descriptor: a pipe drained into memory by a thread."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.r, self.w = os.pipe()
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._drain)
        self.reader.start()

    def _drain(self) -> None:
        while data := os.read(self.r, 1 << 16):
            self.chunks.append(data)

    def fileno(self) -> int:
        return self.w

    def result(self) -> bytes:
        os.close(self.w)
        self.reader.join()
        os.close(self.r)
        return b"".join(self.chunks)


def _stream(repo: bytes, with_fd: bool, sel: select.Selection | None = None
            ) -> tuple[bytes, list[tuple[str, str]]]:
    reports: list[tuple[str, str]] = []
    out = _Out() if with_fd else io.BytesIO()
    with open_repository(repo, READ_CHUNKS) as r:
        tp.tar_save(r, 1, sel or select.Selection(), lambda: out,
                    lambda level, msg: reports.append((level, msg)))
    data = out.result() if with_fd else out.getvalue()
    return data, reports


@pytest.fixture
def damaged_repo(repo, tmp_path):
    """A save with many files of several chunks, some chunks missing or corrupt."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(7)
    for i in range(40):
        size = rnd.choice([0, 10, 511, 512, 5000, 70_000, 200_000])
        (src / f"f{i:02d}").write_bytes(rnd.randbytes(size // 2) + b"t" * (size - size // 2))
    save_tree(repo, src)
    store = Store(repo)
    names = sorted(sha for sha, _ in store.iter_chunk_files() if sha is not None)
    for i, sha in enumerate(names):
        if i % 7 == 0:
            os.unlink(store.path_for(sha))
        elif i % 11 == 3:
            with open(store.path_for(sha), "r+b") as f:
                f.seek(5)
                f.write(b"XXXX")
    return repo


@pytest.mark.parametrize("pool_chunks, held_bytes", [(1, 1), (2, 100_000), (4, 24 << 20)])
def test_tar_pool_gives_the_in_order_stream_and_reports(damaged_repo, monkeypatch,
                                                         pool_chunks, held_bytes):
    monkeypatch.setattr(tp, "read_workers", lambda: 0)
    want, want_reports = _stream(damaged_repo, with_fd=False)
    assert any("zero bytes at offset" in msg for _, msg in want_reports)
    lint_tar(want)
    monkeypatch.setattr(tp, "read_workers", lambda: 2)
    monkeypatch.setattr(tardata, "LARGE_CHUNK", 1)  # every chunk through the pool
    monkeypatch.setattr(tardata, "POOL_CHUNKS", pool_chunks)
    monkeypatch.setattr(tardata, "HELD_BYTES", held_bytes)
    for with_fd in (False, True):
        got, got_reports = _stream(damaged_repo, with_fd)
        assert got == want
        assert got_reports == want_reports


def test_tar_writev_goes_on_after_partial_writes(repo, tree, monkeypatch):
    save_tree(repo, tree)
    want, _ = _stream(repo, with_fd=False)
    real = os.writev
    rnd = random.Random(1)

    def short_writev(fd, parts):
        limit = rnd.choice([1, 511, 4096, 1 << 20])
        cut, left = [], limit
        for p in parts:
            if left <= 0:
                break
            cut.append(memoryview(p)[:left])
            left -= len(cut[-1])
        return real(fd, cut)

    monkeypatch.setattr(ts.os, "writev", short_writev)
    monkeypatch.setattr(ts.TarWriter, "FLUSH_AT", 3000)
    got, _ = _stream(repo, with_fd=True)
    assert got == want


def test_tar_damaged_frame_size_is_damage_not_an_allocation(repo, tmp_path):
    """A zstd frame that records a content size other than the chunk's is not decoded."""
    import hashlib

    import zstandard

    data = b"some text " * 1000
    f = tmp_path / "f"
    f.write_bytes(data)
    save_tree(repo, f)
    store = Store(repo)
    sha = hashlib.sha256(data).digest()
    other = zstandard.ZstdCompressor().compress(b"x" * (1 << 30 >> 4))  # 64 MiB recorded
    with open(store.path_for(sha), "wb") as out:
        out.write(b"8\n" + other)
    got, reports = _stream(repo, with_fd=False)
    assert [lvl for lvl, _ in reports] == ["error"]
    assert f"length {1 << 26}, expected {len(data)}" in reports[0][1]
    assert "zero bytes at offset 0" in reports[0][1]
    lint_tar(got)


def test_tar_writer_widens_a_pipe_to_one_batch():
    import fcntl

    out = _Out()
    try:
        ts.TarWriter(out)
        if hasattr(fcntl, "F_GETPIPE_SZ"):
            assert fcntl.fcntl(out.fileno(), fcntl.F_GETPIPE_SZ) >= ts.TarWriter.FLUSH_AT
    finally:
        out.result()


@pytest.mark.timeout(60)
def test_tar_fifo_in_place_of_a_chunk_is_damage_not_a_hang(repo, tmp_path):
    import hashlib

    data = b"x" * 3000
    f = tmp_path / "f"
    f.write_bytes(data)
    save_tree(repo, f)
    path = Store(repo).path_for(hashlib.sha256(data).digest())
    os.unlink(path)
    os.mkfifo(path)
    got, reports = _stream(repo, with_fd=False)
    assert len(reports) == 1 and "zero bytes at offset 0" in reports[0][1]
    lint_tar(got)


def test_tar_pool_gives_the_in_order_stream_of_sparse_members(repo, tmp_path, monkeypatch):
    """Sparse members (holes skipped, regions rounded up with zeros) through the pool:
    the same stream and reports as in order, with damaged data chunks among them."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    for i in range(4):
        with open(src / f"s{i}", "wb") as f:
            f.truncate(3 << 20)
            for _ in range(3):
                f.seek(rnd.randrange(3 << 20))
                f.write(rnd.randbytes(rnd.randrange(1, 100_000)))
    save_tree(repo, src)
    store = Store(repo)
    names = sorted(sha for sha, _ in store.iter_chunk_files() if sha is not None)
    for sha in names[::5]:
        os.unlink(store.path_for(sha))
    monkeypatch.setattr(tp, "read_workers", lambda: 0)
    want, want_reports = _stream(repo, with_fd=False)
    assert want.count(b"GNU.sparse.major=1") >= 3
    assert any("zero bytes at offset" in msg for _, msg in want_reports)
    lint_tar(want)
    monkeypatch.setattr(tp, "read_workers", lambda: 2)
    monkeypatch.setattr(tardata, "LARGE_CHUNK", 1)
    for pool_chunks, held_bytes in [(1, 1), (4, 100_000)]:
        monkeypatch.setattr(tardata, "POOL_CHUNKS", pool_chunks)
        monkeypatch.setattr(tardata, "HELD_BYTES", held_bytes)
        for with_fd in (False, True):
            got, got_reports = _stream(repo, with_fd)
            assert got == want
            assert got_reports == want_reports
