"""Matrix rows D1-D19 of docs/reliability.md: bad input while saving."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import tarfile
import zlib  # noqa: F401  (documents: chunks are zstd or raw, never zlib)
from pathlib import Path

import pytest
from harness.consistency import assert_repo_consistent, open_readonly
from harness.oracle import assert_save_matches, manifest
from harness.scenario import save, save_status, save_unprivileged, small_tree

from backshift.ops import reader as reader_mod
from backshift.store import Store
from conftest import BACKSHIFT, find0, run_bin


def _warnings(res: dict) -> list[str]:
    text = res["stderr"]
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("warning:")]


def _member(repo: bytes, path: bytes, save_id: int):
    """(mode, size, rdev, link_target, content_id) of PATH in SAVE_ID, None when absent."""
    from backshift.pathcodec import sort_key
    conn = open_readonly(repo)
    try:
        return conn.execute(
            "SELECT v.mode, v.size, v.rdev, v.link_target, v.content_id FROM member AS m "
            "JOIN path AS p ON p.id = m.path_id JOIN version AS v ON v.id = m.version_id "
            "WHERE m.save_id = ? AND p.key = ?", (save_id, sort_key(path))).fetchone()
    finally:
        conn.close()


def _swap_on_open(monkeypatch, target: bytes, replace_with):
    """Just before backshift opens TARGET (after its lstat), REPLACE_WITH(target) runs."""
    real = reader_mod.open_for_reading

    def opener(path):
        if path == target:
            replace_with(path)
        return real(path)

    monkeypatch.setattr(reader_mod, "open_for_reading", opener)


def test_D1_file_vanishes_between_find_and_save(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    names = find0(src)
    gone = [os.fsencode(src / "text.txt"), os.fsencode(src / "d" / "e" / "hard")]  # a link
    for path in gone:
        os.unlink(path)
    res = save(repo, src, names=names, exit_code=1)
    warnings = _warnings(res)
    assert len(warnings) == 2 and res["warnings"] == 2, warnings
    for path, warning in zip(gone, sorted(warnings, reverse=True), strict=True):
        assert os.fsdecode(path) in warning and "vanished" in warning
    assert res["status"] == "complete"
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)
    assert_repo_consistent(repo)


def test_D2_file_swapped_between_lstat_and_open_is_skipped(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    target = os.fsencode(src / "text.txt")

    def swap(path):
        (src / "other").write_bytes(b"a different file\n")
        os.rename(src / "other", path)

    _swap_on_open(monkeypatch, target, swap)
    expected = manifest(src, skip={target})
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "replaced by another file" in warning
    assert _member(repo, target, res["save_id"]) is None
    assert_save_matches(repo, res["save_id"], expected, src, tmp_path)


@pytest.mark.timeout(30)
def test_D3_fifo_in_input_never_blocks(tmp_path, repo):
    src = small_tree(tmp_path / "src")  # holds d/fifo; nobody ever writes to it
    proc = run_bin("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(src),
                   timeout=25)
    assert proc.returncode == 0, proc.stderr
    fifo = os.fsencode(src / "d" / "fifo")
    mode, size, *_ = _member(repo, fifo, 1)
    assert stat.S_ISFIFO(mode) and size == 0
    assert_save_matches(repo, 1, manifest(src), src, tmp_path)


@pytest.mark.timeout(30)
def test_D3_file_replaced_by_fifo_after_listing_never_blocks(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    target = os.fsencode(src / "text.txt")

    def to_fifo(path):
        os.unlink(path)
        os.mkfifo(path)

    _swap_on_open(monkeypatch, target, to_fifo)
    expected = manifest(src, skip={target})
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "replaced" in warning
    assert_save_matches(repo, res["save_id"], expected, src)


def test_D4_file_replaced_by_symlink_to_a_secret_is_not_followed(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    secret = tmp_path / "secret"
    marker = b"TOP-SECRET-MARKER-" + os.urandom(8).hex().encode()
    secret.write_bytes(marker * 100)
    target = os.fsencode(src / "text.txt")

    def to_symlink(path):
        os.unlink(path)
        os.symlink(secret, path)

    _swap_on_open(monkeypatch, target, to_symlink)
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "symlink" in warning
    store = Store(repo)
    for sha, _size in store.iter_chunk_files():
        if sha is not None:
            with open(store.path_for(sha), "rb") as f:
                assert marker not in store.codec.decode(f.read())


@pytest.mark.parametrize("growth", ["a line", "far past a small file"])
def test_D5_file_changing_while_read_is_flagged_and_read_again(tmp_path, repo, monkeypatch,
                                                               no_racy_margin, growth):
    src = small_tree(tmp_path / "src")
    target = os.fsencode(src / "text.txt")
    real = reader_mod.open_for_reading
    block = os.urandom(1 << 20)

    def grows(path):
        fd = real(path)
        if path == target:
            with open(path, "ab") as f:
                if growth == "a line":
                    f.write(b"appended while being read\n")
                else:  # read through the streaming window, not whole (test_save: memory)
                    for _ in range(3 * reader_mod.SMALL_FILE // len(block)):
                        f.write(block)
        return fd

    monkeypatch.setattr(reader_mod, "open_for_reading", grows)
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "changed while being read" in warning
    monkeypatch.undo()
    again = save(repo, src)
    assert again["files_read"] >= 1  # the suspect file is not borrowed
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)


def test_D6_same_size_rewrite_with_restored_mtime_is_detected(tmp_path, repo, no_racy_margin):
    src = small_tree(tmp_path / "src")
    first = save(repo, src)
    target = src / "d" / "small"
    st = target.stat()
    target.write_bytes(b"SMALL FILE\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_mtime_ns == st.st_mtime_ns and target.stat().st_size == st.st_size
    again = save(repo, src)
    assert again["files_read"] == 1
    assert_save_matches(repo, again["save_id"], manifest(src), src, tmp_path)
    assert _member(repo, os.fsencode(target), again["save_id"])[4] != _member(
        repo, os.fsencode(target), first["save_id"])[4]


def test_D6_files_modified_just_before_a_save_are_not_trusted(tmp_path, repo):
    src = small_tree(tmp_path / "src")  # everything was written just now: racy
    save(repo, src)
    again = save(repo, src)
    assert again["files_borrowed"] == 0 and again["files_read"] >= 5


def test_D7_permission_denied_is_a_warning(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    target = os.fsencode(src / "big.bin")

    def deny(path):
        raise PermissionError(13, "Permission denied", path)

    _swap_on_open(monkeypatch, target, deny)
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "permission denied" in warning.lower()
    assert res["status"] == "complete"
    assert_save_matches(repo, res["save_id"], manifest(src, skip={target}), src, tmp_path)


def test_D7_permission_denied_real_chmod(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    os.chmod(src / "big.bin", 0)
    res = save_unprivileged(repo, src, exit_code=1)  # as root: a child that dropped to nobody
    assert any("big.bin" in w for w in _warnings(res))


def test_D8_o_noatime_refused_is_retried_silently(tmp_path, repo, monkeypatch):
    if not reader_mod.O_NOATIME:
        pytest.skip("no O_NOATIME on this platform")
    src = small_tree(tmp_path / "src")
    real_open = os.open
    refused = tmp_path / "refused"  # a file: the readers are other processes

    def no_noatime(path, flags, *args, **kw):
        if flags & reader_mod.O_NOATIME:
            with open(refused, "ab") as f:
                f.write(path + b"\0")
            raise PermissionError(1, "Operation not permitted", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(reader_mod.os, "open", no_noatime)
    res = save(repo, src)
    monkeypatch.undo()
    assert refused.read_bytes() and _warnings(res) == []
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)


def test_D9_hostile_names_round_trip_as_bytes(tmp_path, repo, tree):
    raw = os.fsencode(tree)
    deep = raw
    for i in range(15):  # a path of almost 4 KiB (PATH_MAX is 4096)
        deep = os.path.join(deep, b"%03d-" % i + b"d" * 250)
    os.makedirs(deep)
    with open(os.path.join(deep, b"\x1b[31mred\r\n"), "wb") as f:
        f.write(b"escape sequence in the name\n")
    assert len(deep) > 3800
    res = save(repo, tree)
    assert_save_matches(repo, res["save_id"], manifest(tree), tree, tmp_path)


def test_D10_duplicate_input_paths_are_stored_once(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    names = find0(src) + find0(src) + os.fsencode(src / "d" / "small") + b"\0"
    res = save(repo, src, names=names, exit_code=1)
    warnings = _warnings(res)  # one a name given again
    assert len(warnings) == len(manifest(src)) + 1, res["stderr"]
    assert all("given more than once; saved once" in w for w in warnings), warnings
    assert res["files"] == len(manifest(src))
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)


def test_D11_malformed_input_is_normalised_or_warned(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    monkeypatch.chdir(src)
    s = os.fsencode(src)
    names = (b"\0\0" + s + b"\0" + s + b"//d\0" + s + b"/./d/small\0" + s + b"/d/../big.bin\0"
             + b"./text.txt\0" + s + b"/does-not-exist\0" + s + b"/d/e")  # no final NUL
    res = save(repo, src, names=names, exit_code=1)
    warnings = _warnings(res)
    assert any("'..'" in w for w in warnings), warnings
    assert any("does-not-exist" in w and "vanished" in w for w in warnings), warnings
    conn = open_readonly(repo)
    keys = {k for (k,) in conn.execute("SELECT p.key FROM member AS m JOIN path AS p "
                                        "ON p.id = m.path_id")}
    conn.close()
    got = {k.replace(b"\0", b"/") for k in keys}
    assert got == {s, s + b"/d", s + b"/d/small", s + b"/text.txt", s + b"/d/e"}


@pytest.mark.timeout(30)
def test_D12_symlink_loops_and_dangling_links_are_saved_as_links(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("b", src / "a")
    os.symlink("a", src / "b")
    os.symlink("missing/target", src / "c")
    os.symlink(".", src / "self")
    res = save(repo, src)
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)


@pytest.mark.timeout(30)
def test_D13_special_files_are_metadata_only(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.fsdecode(src / "sock"))
    try:
        names = find0(src) + b"/dev/null\0"
        res = save(repo, src, names=names, exit_code=0)
    finally:
        sock.close()
    assert "Traceback" not in res["stderr"]
    mode, size, rdev, _, content = _member(repo, b"/dev/null", res["save_id"])
    assert stat.S_ISCHR(mode) and rdev == os.stat("/dev/null").st_rdev and content is None
    mode, *_ = _member(repo, os.fsencode(src / "fifo"), res["save_id"])
    assert stat.S_ISFIFO(mode)
    sock_row = _member(repo, os.fsencode(src / "sock"), res["save_id"])
    assert sock_row is None or stat.S_ISSOCK(sock_row[0])


def test_D14_hardlink_group_with_unreadable_first_member(tmp_path, repo, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a1").write_bytes(b"shared content\n" * 1000)
    os.link(src / "a1", src / "a2")
    os.link(src / "a1", src / "a3")
    first = [n for n in find0(src).split(b"\0") if n and n != os.fsencode(src)][0]

    def deny(path):
        raise PermissionError(13, "Permission denied", path)

    _swap_on_open(monkeypatch, first, deny)
    res = save(repo, src, exit_code=1)
    (warning,) = _warnings(res)
    assert os.fsdecode(first) in warning
    assert _member(repo, first, res["save_id"]) is None
    others = [_member(repo, os.fsencode(src / n), res["save_id"]) for n in ("a1", "a2", "a3")
              if os.fsencode(src / n) != first]
    assert len(others) == 2 and others[0][4] is not None and others[0][4] == others[1][4]
    assert_save_matches(repo, res["save_id"], manifest(src, skip={first}), src, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_D15_file_over_8_gib(tmp_path):
    from backshift.model import ChunkerParams
    from backshift.repo import init_repository
    repo = os.fsencode(tmp_path / "bigrepo")
    init_repository(repo, ChunkerParams())  # default (large) chunks
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.truncate(9 << 30)
        f.seek(5 << 30)
        f.write(b"a few data bytes in the middle")
    res = save(repo, src)
    huge = os.fsencode(src / "huge")
    assert _member(repo, huge, res["save_id"])[1] == 9 << 30
    expected = manifest(src)
    assert_save_matches(repo, res["save_id"], expected, src)  # catalog + store, chunk by chunk
    # the tar stream, hashed as it flows (9 GiB neither in memory nor on disk)
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
        member = tf.next()
        while not member.isreg():
            member = tf.next()
        assert member.size == 9 << 30
        digest = hashlib.sha256()
        f = tf.extractfile(member)
        while block := f.read(1 << 20):
            digest.update(block)
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0
    assert digest.digest() == expected[huge].sha256


def test_D16_sparse_file_with_data_islands(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
        for offset in (0, 20 << 20, (64 << 20) - 5000):
            f.seek(offset)
            f.write(os.urandom(5000))
    res = save(repo, src)
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)


# Three 4 MiB chunks of data, each of which may start and end inside a filesystem block (the
# cut points depend on the random bytes): two more blocks each.
THREE_CHUNKS = 3 * ((4 << 20) + 2 * 4096)


def test_D16_sparse_file_restores_sparse(tmp_path):
    """`find -print0 | backshift save`, then `backshift tar | tar -x` (GNU tar, bsdtar) and
    tarfile: the same bytes, and the holes stay holes (default chunking: 4 MiB chunks)."""
    from backshift.model import ChunkerParams
    from backshift.repo import init_repository

    repo = os.fsencode(tmp_path / "repo")
    init_repository(repo, ChunkerParams())
    src = tmp_path / "src"
    src.mkdir()
    size = 64 << 20
    fd = os.open(src / "sparse", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.truncate(fd, size)
        for offset in (0, 20 << 20, size - 5000):
            os.pwrite(fd, os.urandom(5000), offset)
    finally:
        os.close(fd)
    want = hashlib.sha256((src / "sparse").read_bytes()).digest()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    saved = subprocess.run(f"find '{src}' -print0 | '{BACKSHIFT}' -r '{tmp_path}/repo' save "
                           "--subset s",
                           shell=True, capture_output=True, env=env, timeout=300)
    assert saved.returncode == 0, saved.stderr
    tools = {"gnu": ["tar", "-xf", "-"], "bsd": ["bsdtar", "-xf", "-"]}
    for tool, cmd in tools.items():
        dest = tmp_path / tool
        dest.mkdir()
        p1 = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        p2 = subprocess.run([*cmd, "-C", str(dest)], stdin=p1.stdout, capture_output=True,
                            timeout=300)
        p1.stdout.close()
        assert p1.wait(timeout=300) == 0, p1.stderr.read()
        assert p2.returncode == 0, p2.stderr
        got = dest / str(src).lstrip("/") / "sparse"
        assert os.stat(got).st_size == size
        assert hashlib.sha256(got.read_bytes()).digest() == want, tool
        # three 4 MiB data chunks at most, against 64 MiB for a restore without holes
        assert os.stat(got).st_blocks * 512 <= THREE_CHUNKS, tool
    stream = run_bin("-r", repo, "tar", "--backup", "latest", timeout=300)
    assert stream.returncode == 0 and len(stream.stdout) < 16 << 20
    dest = tmp_path / "python"
    with tarfile.open(fileobj=io.BytesIO(stream.stdout), mode="r:") as tf:
        tf.extractall(dest, filter="tar")
    got = dest / str(src).lstrip("/") / "sparse"
    assert hashlib.sha256(got.read_bytes()).digest() == want
    assert os.stat(got).st_blocks * 512 <= THREE_CHUNKS


def test_D17_extreme_timestamps_are_exact(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    stamps = {"negative": -1_234_567_890_123_456_789, "far-future": (2**33 + 5) * 10**9 + 7,
              "nanos": 1_700_000_000_123_456_789}
    for name, ns in stamps.items():
        (src / name).write_bytes(name.encode())
        os.utime(src / name, ns=(ns, ns))
    res = save(repo, src)
    for name, ns in stamps.items():
        assert manifest(src)[os.fsencode(src / name)].mtime_ns == ns
    assert_save_matches(repo, res["save_id"], manifest(src), src, tmp_path)


def test_D18_stat_size_that_lies_reads_until_eof(tmp_path, repo, monkeypatch):
    src = small_tree(tmp_path / "src")
    target = os.fsencode(src / "text.txt")
    real_lstat = os.lstat

    class Lie:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return 0 if name == "st_size" else getattr(self.st, name)

    def lying_lstat(path, *a, **kw):
        st = real_lstat(path, *a, **kw)
        return Lie(st) if path == target else st

    monkeypatch.setattr(os, "lstat", lying_lstat)
    res = save(repo, src, exit_code=1)  # a warning: the size changed while being read
    monkeypatch.undo()
    (warning,) = _warnings(res)
    assert os.fsdecode(target) in warning and "size changed" in warning, warning
    assert _member(repo, target, res["save_id"])[1] == os.path.getsize(target)
    assert_save_matches(repo, res["save_id"], manifest(src), src)


def test_D19_many_files_and_a_deep_tree(tmp_path, repo):
    src = tmp_path / "src"
    deep = src
    for i in range(200):
        deep = deep / f"{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"at depth 200\n")
    for d in range(20):
        sub = src / f"many{d:02d}"
        sub.mkdir()
        for i in range(1000):
            (sub / f"f{i:04d}").write_bytes(b"%d/%d\n" % (d, i))
    res = save(repo, src)
    assert res["files"] == 20_000 + 20 + 200 + 2
    sample = {p: e for p, e in manifest(src).items()
              if b"many00" not in p or p.endswith(b"7")}
    got_all = manifest(src)
    assert all(sample[p] == got_all[p] for p in sample)
    assert_save_matches(repo, res["save_id"], got_all, src)
    assert save_status(repo) == {res["save_id"]: "complete"}


def test_D19_paths_from_a_file_list_are_fine_too(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    listing = tmp_path / "names.0"
    listing.write_bytes(find0(src))
    res = save(repo, src, "--filelist", str(listing), names=b"")
    assert_save_matches(repo, res["save_id"], manifest(Path(src)), src)
