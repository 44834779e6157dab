"""Matrix rows B1-B10 of docs/reliability.md: crashes and I/O faults in the chunk store."""

from __future__ import annotations

import os
import subprocess

import pytest
from harness import crash
from harness.consistency import assert_repo_consistent, temp_files
from harness.faults import EACCES, EIO, ENOSPC, Fault, inject
from harness.oracle import assert_save_matches, manifest
from harness.scenario import (
    change_tree,
    one_line_error,
    save,
    save_status,
    save_unprivileged,
    small_tree,
)

from backshift.chunkcodec import Codec
from backshift.errors import ChunkMissing
from backshift.model import ChunkerParams
from backshift.repo import init_repository
from backshift.store import Store
from conftest import find0, run


def _save_args(repo: bytes) -> tuple:
    return ("-r", repo, "save", "--hostname", "h", "--subset", "s")


def _prepare(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    change_tree(src)
    return src, first, before


def test_B1_crash_after_temp_write_leaves_only_unreferenced_temps(tmp_path, repo):
    src, first, before = _prepare(tmp_path, repo)
    proc = crash.backshift(*_save_args(repo), input=find0(src), crash_at="after_chunk_tmp_write:3")
    crash.assert_killed(proc)
    temps = temp_files(repo)
    assert temps, "the killed save should have left its temp files"
    assert_repo_consistent(repo, allow_dead_running=True)  # temps never final, never referenced
    assert_save_matches(repo, first["save_id"], before, src)
    again = save(repo, src)
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)
    assert_repo_consistent(repo)


def test_B2_crash_after_rename_leaves_orphans_the_next_save_reuses(tmp_path, repo):
    src, first, before = _prepare(tmp_path, repo)
    chunks_before = {sha for sha, _ in Store(repo).iter_chunk_files() if sha}
    proc = crash.backshift(*_save_args(repo), input=find0(src), crash_at="after_chunk_rename:4")
    crash.assert_killed(proc)
    orphans = {sha for sha, _ in Store(repo).iter_chunk_files() if sha} - chunks_before
    assert len(orphans) >= 4
    assert_repo_consistent(repo, allow_dead_running=True)
    again = save(repo, src)
    # The orphans were reused (dedup), not written again.
    assert again["new_chunks"] <= len(
        {sha for sha, _ in Store(repo).iter_chunk_files() if sha} - chunks_before) - len(orphans)
    assert_save_matches(repo, first["save_id"], before, src)
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)
    assert_repo_consistent(repo)


def test_B5_deleted_chunk_is_recreated_by_the_next_save(tmp_path, repo, no_racy_margin):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    store = Store(repo)
    victim = next(sha for sha, _ in store.iter_chunk_files() if sha)
    os.unlink(store.path_for(victim))
    with pytest.raises(ChunkMissing):
        assert_save_matches(repo, first["save_id"], before, src)
    again = save(repo, src)  # unchanged files would be borrowed, but their chunk is gone
    assert os.path.exists(store.path_for(victim))
    assert_save_matches(repo, first["save_id"], before, src)  # healed
    assert_save_matches(repo, again["save_id"], before, src, tmp_path)
    assert_repo_consistent(repo)


class _BadCompressor:
    """Emits a damaged zstd frame for one chunk (a compressor bug or a RAM flip)."""

    def __init__(self, real, how):
        self.real = real
        self.how = how

    def compress(self, data):
        out = bytearray(self.real.compress(data))
        if self.how == "truncated":
            return bytes(out[: len(out) // 2])  # the decompressor raises
        out[len(out) // 2] ^= 0x40
        return bytes(out)


@pytest.mark.parametrize("how", ["bit_flip", "truncated"])
def test_B7_compressor_bug_is_caught_before_the_chunk_is_stored(tmp_path, repo, monkeypatch, how):
    src, first, before = _prepare(tmp_path, repo)
    real_zstd = Codec.zstd

    def bad_zstd(self):
        comp, decomp = real_zstd(self)
        return _BadCompressor(comp, how), decomp

    monkeypatch.setattr(Codec, "zstd", bad_zstd)
    res = save(repo, src, exit_code=10)
    line = one_line_error(res["stderr"])
    assert "damaged" in line and "compressor" in line, line
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)
    assert_save_matches(repo, first["save_id"], before, src)
    assert list(save_status(repo).values()) == ["complete", "interrupted"]


@pytest.mark.parametrize("after_bytes", [0, 30_000, 100_000])
def test_B8_disk_full_while_writing_chunks(tmp_path, repo, monkeypatch, after_bytes):
    src, first, before = _prepare(tmp_path, repo)
    fault = inject(monkeypatch, "write_all", Fault(ENOSPC, after_bytes=after_bytes))
    res = save(repo, src, exit_code=12)
    line = one_line_error(res["stderr"])
    assert "No space left on device" in line and os.fsdecode(repo) in line, line
    # ENOSPC is permanent: each reading thread meets it at most once, nothing is retried.
    assert 1 <= fault.raised <= 4, fault
    assert save_status(repo)[max(save_status(repo))] == "interrupted"
    assert temp_files(repo) == []
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)
    assert_save_matches(repo, first["save_id"], before, src)
    again = save(repo, src)  # space freed: the next save works
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)
    assert_repo_consistent(repo, allow_temps=False)


@pytest.mark.parametrize("call", ["syncfs", "rename"])
def test_B9_sync_or_rename_failure_stops_before_the_catalog_commit(tmp_path, repo, monkeypatch,
                                                                    call):
    src, first, before = _prepare(tmp_path, repo)
    inject(monkeypatch, call, Fault(EIO, after_calls=0))
    res = save(repo, src, exit_code=12)
    line = one_line_error(res["stderr"])
    assert "Input/output error" in line and os.fsdecode(repo) in line, line
    monkeypatch.undo()
    # No committed row names a chunk that is not durably on disk.
    assert save_status(repo)[max(save_status(repo))] == "interrupted"
    assert temp_files(repo) == []
    assert_repo_consistent(repo, allow_temps=False)
    assert_save_matches(repo, first["save_id"], before, src)


def test_B10_repository_unwritable_is_an_error(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    inject(monkeypatch, "create_temp", Fault(EACCES, after_calls=0))
    res = save(repo, src, exit_code=12)
    line = one_line_error(res["stderr"])
    assert "Permission denied" in line and os.fsdecode(repo) in line, line
    monkeypatch.undo()
    assert_repo_consistent(repo, allow_temps=False)


def test_B10_repository_unwritable_real_chmod(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    os.chmod(repo, 0o500)
    try:  # as root: a child that dropped to nobody, so the mode binds
        res = save_unprivileged(repo, src, exit_code=12)
    finally:
        os.chmod(repo, 0o700)
    one_line_error(res["stderr"])


def test_B10_missing_repository_has_its_own_exit_code(tmp_path):
    res = run("-r", str(tmp_path / "nowhere"), "save", "--subset", "t",
              "--hostname", "h", input=b"/etc\0",
              exit_code=3)
    line = one_line_error(res.stderr)
    assert "no repository at" in line and str(tmp_path / "nowhere") in line
    assert not (tmp_path / "nowhere").exists()



@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (H2d: a real ENOSPC); skipped where mounting is not allowed."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.timeout(120)
def test_B8_real_disk_full_on_a_small_filesystem(tmp_path, small_fs):
    repo = os.fsencode(small_fs / "repo")
    init_repository(repo, ChunkerParams(min_size=4096, avg_size=16384, max_size=65536))
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    before = manifest(src)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(8):
        (big / f"r{i}").write_bytes(os.urandom(1 << 20))
    res = save(repo, big, exit_code=12)
    line = one_line_error(res["stderr"])
    assert "No space left on device" in line and os.fsdecode(repo) in line, line
    assert temp_files(repo) == []
    status = save_status(repo)
    assert status[first["save_id"]] == "complete"
    assert all(s in ("interrupted", "running") for sid, s in status.items() if sid > 1)
    assert_repo_consistent(repo, allow_temps=False, allow_dead_running=True)
    assert_save_matches(repo, first["save_id"], before, src, tmp_path)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True, timeout=30)
    again = save(repo, big)  # space freed: the next save works
    assert_save_matches(repo, again["save_id"], manifest(big), big, tmp_path)
    assert_repo_consistent(repo, allow_temps=False)
