"""Issue 19, items 1, 4 and 7: a chunk file is judged by its content, never by its size alone;
damaged chunk files do not spread into new saves; leftover temp files are reported and
removed."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from harness import crash
from repo_oracle import file_digests, restore_with_tar

from backshift.catalog import Catalog
from backshift.chunkcodec import HEADER_RAW, HEADER_ZSTD
from conftest import find0, run

# -- helpers ------------------------------------------------------------------------------


def chunk_path(repo: bytes, sha_hex: str) -> Path:
    return Path(os.fsdecode(repo), "chunks", sha_hex[:2], sha_hex)


def stored_length(repo: bytes, sha_hex: str) -> int:
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        return cat.conn.execute("SELECT stored_length FROM chunk WHERE sha256 = ?",
                                (bytes.fromhex(sha_hex),)).fetchone()[0]
    finally:
        cat.close()


def save_json(repo: bytes, src: Path, exit_code: int = 0) -> dict:
    import json
    res = run("-r", repo, "save", "--subset", "t", "--json", input=find0(src), exit_code=exit_code)
    return json.loads(res.stdout)


def make_source(root: Path) -> Path:
    root.mkdir()
    (root / "text.txt").write_bytes(b"".join(b"line %d of a text file\n" % i
                                             for i in range(8000)))
    (root / "random.bin").write_bytes(os.urandom(150_000))
    (root / "small.txt").write_bytes(b"a small file\n" * 50)
    return root


def data_of(sha_hex: str, repo: bytes) -> bytes:
    from backshift.store import Store
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        length = cat.chunk_length(bytes.fromhex(sha_hex))
    finally:
        cat.close()
    from backshift.model import ChunkRef
    return Store(repo).read(ChunkRef(bytes.fromhex(sha_hex), length))


def first_chunk(repo: bytes, name: bytes) -> str:
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        return cat.conn.execute(
            "SELECT lower(hex(k.sha256)) FROM version v JOIN path p ON p.id = v.path_id "
            "JOIN content_chunk cc ON cc.content_id = v.content_id "
            "JOIN chunk k ON k.id = cc.chunk_id WHERE p.name = ? ORDER BY cc.seq LIMIT 1",
            (name,)).fetchone()[0]
    finally:
        cat.close()


# -- item 1: a size mismatch is a hint ------------------------------------------------------


@pytest.mark.parametrize("name", [b"text.txt", b"random.bin"], ids=["zstd-to-raw", "raw-to-zstd"])
def test_check_repair_keeps_a_chunk_stored_in_the_other_encoding(tmp_path, repo, name):
    """The same bytes stored raw (1\\n) or zstd (8\\n) are the same chunk: check verifies the
    file instead of taking its size for damage, --repair keeps it and records its size, and
    the save still restores exactly through GNU tar."""
    src = make_source(tmp_path / "src")
    first = save_json(repo, src)
    sha = first_chunk(repo, name)
    path = chunk_path(repo, sha)
    body = path.read_bytes()
    data = data_of(sha, repo)
    other = HEADER_RAW + data if body.startswith(HEADER_ZSTD) else \
        HEADER_ZSTD + zstandard.ZstdCompressor(level=1).compress(data)
    assert len(other) != len(body)
    path.write_bytes(other)
    res = run("-r", repo, "check", "--read-data")
    assert f"chunk {sha} is {len(other)} bytes, the catalog says {len(body)}" in res.stdout
    assert "--repair records its size" in res.stdout and "no problems found" in res.stdout
    res = run("-r", repo, "check", "--read-data", "--repair")
    assert "recorded its size" in res.stdout and "quarantined" not in res.stdout
    assert path.read_bytes() == other
    assert stored_length(repo, sha) == len(other)
    res = run("-r", repo, "check", "--read-data")
    assert sha not in res.stdout and "no problems found" in res.stdout
    assert restore_with_tar(repo, first["save_id"], tmp_path / "out") == file_digests(src)


def test_check_repair_quarantines_a_chunk_of_another_size_that_fails(tmp_path, repo):
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    sha = first_chunk(repo, b"text.txt")
    path = chunk_path(repo, sha)
    path.write_bytes(HEADER_RAW + b"not the chunk's bytes")
    res = run("-r", repo, "check", exit_code=10)  # the fast check verifies mismatches too
    assert f"chunk {sha}: size 23 bytes, catalog says" in res.stdout
    res = run("-r", repo, "check", "--read-data", "--repair", exit_code=10)
    assert f"quarantined chunk {sha}" in res.stdout and not path.exists()


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_check_reports_a_chunk_that_is_not_a_regular_file_without_opening_it(
        tmp_path, repo, kind):
    """A FIFO is never opened (check would hang on it), a symlink never followed (to a sound
    copy of the chunk it would pass)."""
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    sha = first_chunk(repo, b"text.txt")
    path = chunk_path(repo, sha)
    if kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        copy = tmp_path / "sound-copy"
        path.rename(copy)
        path.symlink_to(copy)
    res = run("-r", repo, "check", "--read-data", exit_code=10)
    assert f"chunk {sha}: " in res.stdout and "not a regular file" in res.stdout


# -- item 4: damaged chunk files do not spread into new saves -------------------------------

DAMAGE = ["truncated", "garbage", "empty", "fifo", "directory", "symlink", "missing"]


def damage(path: Path, kind: str) -> None:
    body = path.read_bytes()
    path.unlink()
    if kind == "truncated":
        path.write_bytes(body[:len(body) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(len(body) + 17))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    elif kind == "symlink":
        path.symlink_to("/dev/zero")
    else:
        assert kind == "missing"


def assert_healed(tmp_path, repo: bytes, src: Path, new_save: dict, before: dict) -> None:
    res = run("-r", repo, "check", "--read-data")
    assert "no problems found" in res.stdout
    assert restore_with_tar(repo, new_save["save_id"], tmp_path / "new") == file_digests(src)
    # the earlier save names the same chunk: whole again too
    assert restore_with_tar(repo, 1, tmp_path / "old") == before


@pytest.mark.parametrize("kind", DAMAGE)
def test_save_stores_again_a_borrowed_chunk_whose_file_is_damaged(tmp_path, repo, kind,
                                                                  no_racy_margin):
    """An unchanged file (the re-save's fast path) whose chunk file is damaged is read
    again and its chunk stored under the same name, replacing the bad file."""
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    before = file_digests(src)
    sha = first_chunk(repo, b"text.txt")
    damage(chunk_path(repo, sha), kind)
    second = save_json(repo, src)
    assert second["files_read"] == 1
    assert chunk_path(repo, sha).is_file() and not chunk_path(repo, sha).is_symlink()
    assert_healed(tmp_path, repo, src, second, before)


@pytest.mark.parametrize("kind", ["truncated", "fifo", "directory", "symlink"])
def test_save_stores_again_a_hard_linked_chunk_whose_file_is_damaged(tmp_path, repo, kind,
                                                                    no_racy_margin):
    """The general borrow path (hard links skip the fast path) checks the files too."""
    src = make_source(tmp_path / "src")
    os.link(src / "text.txt", src / "link.txt")
    save_json(repo, src)
    before = file_digests(src)
    sha = first_chunk(repo, b"text.txt")
    damage(chunk_path(repo, sha), kind)
    second = save_json(repo, src)
    assert second["files_read"] >= 1
    assert_healed(tmp_path, repo, src, second, before)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_save_does_not_take_a_damaged_chunk_file_for_a_new_files_chunk(tmp_path, repo, kind):
    """A new file made of a damaged chunk's bytes (a copy) finds the chunk file on disk: the
    catalog records another size, so it is verified and stored again, and the catalog is
    not told the damaged size."""
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    before = file_digests(src)
    sha = first_chunk(repo, b"small.txt")
    damage(chunk_path(repo, sha), kind)
    (src / "copy.txt").write_bytes((src / "small.txt").read_bytes())
    os.utime(src / "small.txt")  # not borrowed: read again, as the copy is
    second = save_json(repo, src)
    assert_healed(tmp_path, repo, src, second, before)


@pytest.mark.parametrize("kind", ["garbage", "truncated-raw", "fifo", "symlink"])
def test_save_verifies_an_orphan_chunk_file_before_trusting_it(tmp_path, repo, kind):
    """A chunk file the catalog does not know (an interrupted save's leftover) is decoded
    and hashed before a save takes it as stored; a bad one is replaced."""
    src = tmp_path / "src"
    src.mkdir()
    data = b"the bytes of a file saved for the first time\n" * 40
    (src / "new.txt").write_bytes(data)
    big = os.urandom(40_000)
    (src / "big.bin").write_bytes(big)
    sha = hashlib.sha256(data).hexdigest()
    path = chunk_path(repo, sha)
    if kind == "garbage":
        path.write_bytes(HEADER_RAW + os.urandom(len(data)))  # the right size, other bytes
    elif kind == "truncated-raw":
        path.write_bytes((HEADER_RAW + data)[:100])
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    first = save_json(repo, src)
    assert path.is_file() and not path.is_symlink()
    res = run("-r", repo, "check", "--read-data")
    assert "no problems found" in res.stdout
    assert restore_with_tar(repo, first["save_id"], tmp_path / "out") == file_digests(src)


def test_save_reuses_a_sound_orphan_chunk_file(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    data = b"the bytes of a file saved for the first time\n" * 40
    (src / "new.txt").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    path = chunk_path(repo, sha)
    orphan = HEADER_RAW + data
    path.write_bytes(orphan)
    first = save_json(repo, src)
    assert first["new_chunks"] == 0
    assert path.read_bytes() == orphan and stored_length(repo, sha) == len(orphan)
    assert restore_with_tar(repo, first["save_id"], tmp_path / "out") == file_digests(src)


def test_save_borrows_a_chunk_in_the_other_encoding_and_records_its_size(
        tmp_path, repo, no_racy_margin):
    """A sound chunk file in the other encoding is not damage: the re-save reads the file
    again (its size is not the recorded one), keeps the chunk file and records its size, so
    the next re-save borrows it."""
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    sha = first_chunk(repo, b"text.txt")
    path = chunk_path(repo, sha)
    raw = HEADER_RAW + data_of(sha, repo)
    path.write_bytes(raw)
    second = save_json(repo, src)
    assert second["new_chunks"] == 0 and path.read_bytes() == raw
    assert stored_length(repo, sha) == len(raw)
    third = save_json(repo, src)
    assert third["files_read"] == 0
    assert restore_with_tar(repo, third["save_id"], tmp_path / "out") == file_digests(src)


# -- item 7: leftover temp files ------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def host_tag() -> str:
    return socket.gethostname().encode("ascii", "replace").replace(b"/", b"_")[:32].decode()


def temp_name(sha_hex: str, host: str, pid: int) -> Path:
    return Path(f"{sha_hex}.tmp.{host}.{pid}.0000abcd")


def test_check_warns_of_temp_files_no_live_process_owns(tmp_path, repo):
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    d = Path(os.fsdecode(repo), "chunks", "ab")
    dead = d / temp_name("ab" + "1" * 62, host_tag(), dead_pid())
    live = d / temp_name("ab" + "2" * 62, host_tag(), os.getpid())
    foreign = d / temp_name("ab" + "3" * 62, "elsewhere", 1)  # no lock record of that host
    for p in (dead, live, foreign):
        p.write_bytes(b"x")
    res = run("-r", repo, "check", exit_code=1)
    assert "warning: 2 temp file(s) in chunks/ left by processes that are gone" in res.stdout
    assert res.stdout.splitlines()[-1] == "no damage found; 1 warning(s) above"
    live.unlink()
    run("-r", repo, "expire", "--keep-last", "5")
    assert not dead.exists() and not foreign.exists()
    res = run("-r", repo, "check")
    assert "warning" not in res.stdout


def test_check_keeps_quiet_about_temp_files_of_a_live_process(tmp_path, repo):
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    live = Path(os.fsdecode(repo), "chunks", "cd", temp_name("cd" + "2" * 62, host_tag(),
                                                               os.getpid()))
    live.write_bytes(b"x")
    copies = Path(os.fsdecode(repo), "catalog-copies")
    (copies / f"catalog-1-{os.getpid()}.sqlite3.tmp").write_bytes(b"x")
    res = run("-r", repo, "check")
    assert "warning" not in res.stdout


def test_temp_files_of_a_killed_save_are_reported_then_removed_by_expire(tmp_path, repo):
    """A real save killed (SIGKILL) after writing temp files: check says so as a warning
    (exit 1, once the dead save itself is marked), and expire removes them at once, not
    only after an hour."""
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    (src / "more.bin").write_bytes(os.urandom(100_000))
    proc = crash.backshift("-r", repo, "save", "--subset", "t", input=find0(src),
                           crash_at="after_chunk_tmp_write:3")
    crash.assert_killed(proc)
    temps = list(Path(os.fsdecode(repo), "chunks").glob("*/*.tmp.*"))
    assert temps
    # --repair marks the dead save; the temps stay a warning
    run("-r", repo, "check", "--repair", exit_code=1)
    res = run("-r", repo, "check", exit_code=1)
    assert f"warning: {len(temps)} temp file(s) in chunks/ left by processes" in res.stdout
    res = run("-r", repo, "expire", "--keep-last", "5")
    assert f"{len(temps)} stale temp file(s)" in res.stdout
    assert not list(Path(os.fsdecode(repo), "chunks").glob("*/*.tmp.*"))
    run("-r", repo, "check")


KILLED_COPY = """
import os, sys
from backshift.catalog import Catalog
from backshift.ops import catalog_copy
repo = os.fsencode(sys.argv[1])
def killed(*args):  # the copy is written: die before it is renamed into place
    os.kill(os.getpid(), 9)
catalog_copy.os.rename = killed
catalog_copy.make_copy(repo, Catalog.open(os.path.join(repo, b"catalog.sqlite3")))
"""


def test_temp_files_of_a_killed_catalog_copy_are_reported_then_removed_by_expire(
        tmp_path, repo):
    src = make_source(tmp_path / "src")
    save_json(repo, src)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_COPY, repo], stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err
    copies = Path(os.fsdecode(repo), "catalog-copies")
    left = sorted(p.name for p in copies.glob("*.tmp*"))
    assert left and all(f"-{proc.pid}.sqlite3.tmp" in n for n in left)
    (copies / f"catalog-2-{dead_pid()}.sqlite3.tmp-journal").write_bytes(b"x")
    res = run("-r", repo, "check", exit_code=1)
    assert (f"warning: {len(left) + 1} temp file(s) in catalog-copies/ left by a catalog copy"
            in res.stdout)
    res = run("-r", repo, "expire", "--keep-last", "5")
    assert f"{len(left) + 1} stale temp file(s)" in res.stdout
    assert not list(copies.glob("*.tmp*"))
    assert len(list(copies.glob("*.sqlite3"))) >= 2  # the copies themselves stay
    run("-r", repo, "check")
