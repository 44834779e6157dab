"""`backshift tar`: round trips through GNU tar, bsdtar and tarfile; partial restores;
damaged chunks; hostile catalog rows; read-only restore; pipes and terminals."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import apsw
import pytest
from harness import damage as chunk_damage
from harness.scenario import one_line_error as one_line
from hypothesis import given, settings
from hypothesis import strategies as st
from restorehelp import (
    compare_trees,
    enrich_tree,
    extract,
    hash_dir,
    insert_raw_member,
    reseal_digest,
    save_tree,
    tar_stream,
)
from tarlint import lint_tar

from backshift import pathcodec
from conftest import BACKSHIFT, have, make_tree, run, run_bin


def names_in(data: bytes) -> list[str]:
    """Member names as GNU tar lists them (tarfile drops the '/' that ends directories)."""
    return [ti.name + "/" if ti.isdir() else ti.name for ti in lint_tar(data)]


def rel(tree: Path) -> str:
    """The member name of TREE (absolute path without its leading '/')."""
    return str(tree).lstrip("/")


@pytest.fixture
def full_tree(tree):
    return enrich_tree(tree)


@pytest.mark.parametrize("tool", ["gnu", "bsd", "python"])
def test_tar_round_trip_restores_every_type(repo, full_tree, tmp_path, tool):
    if tool == "bsd" and not have("bsdtar"):
        pytest.skip("bsdtar not installed")
    save_tree(repo, full_tree)
    data, _ = tar_stream(repo)
    dest = tmp_path / "dest"
    extract(tool, data, dest)
    if tool == "python":  # the 'tar' filter drops setuid/sticky and group/other write;
        # tarfile sets times through a float, so only microseconds survive
        compare_trees(full_tree, dest / rel(full_tree), mode_mask=0o755, mtime_exact=False)
    else:
        compare_trees(full_tree, dest / rel(full_tree))


def test_tar_emits_hardlink_after_its_target(repo, full_tree):
    save_tree(repo, full_tree)
    data, _ = tar_stream(repo)
    infos = lint_tar(data)
    big = [ti for ti in infos if ti.name.endswith(("deeper/big", "big-link1", "big-link2"))]
    assert [ti.type for ti in big] == [tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.LNKTYPE]
    assert big[0].name.endswith("big-link1")  # key order: first emitted carries the data
    assert big[1].linkname == big[0].name and big[2].linkname == big[0].name


def test_tar_pax_headers_are_exact(repo, full_tree):
    save_tree(repo, full_tree)
    data, _ = tar_stream(repo)
    by_name = {ti.name: ti for ti in lint_tar(data)}
    a = by_name[rel(full_tree) + "/a.txt"]
    assert a.pax_headers["mtime"] == "1600000000.123456789"
    bad = [n for n in by_name if "bad-" in n][0]
    assert bad.encode("utf-8", "surrogateescape").endswith(b"bad-\xff\xfe-name")
    assert by_name[bad].pax_headers.get("hdrcharset") == "BINARY"
    assert any(len(n.encode("utf-8", "surrogateescape")) > 255 for n in by_name)
    root = by_name[rel(full_tree)]
    assert root.pax_headers["mtime"] == "1400000000.000000001"
    if os.geteuid() == 0:
        dev = by_name[rel(full_tree) + "/null-dev"]
        assert (dev.type, dev.devmajor, dev.devminor) == (tarfile.CHRTYPE, 1, 3)
        assert by_name[rel(full_tree) + "/empty"].gid == 2097152 + 5


def test_tar_header_encodes_large_size_and_ids():
    from backshift.ops import tarstream as ts

    h = ts.Header(name=b"d/" + b"\xe9" * 120, typeflag=ts.REGTYPE, mode=0o4755, uid=3_000_000,
                  gid=7, uname=b"a" * 40, gname=b"g\xff", size=9 << 30,
                  mtime_ns=-1_500_000_000, linkname=b"")
    raw = ts.encode_header(h)
    assert len(raw) % 512 == 0
    ti = tarfile.TarInfo.fromtarfile(_Fake(raw + bytes(1024)))
    assert ti.size == 9 << 30 and ti.uid == 3_000_000 and ti.mode == 0o4755
    assert ti.pax_headers["mtime"] == "-1.5"
    assert ti.pax_headers["hdrcharset"] == "BINARY"
    assert ti.name.encode("utf-8", "surrogateescape") == b"d/" + b"\xe9" * 120
    assert ti.uname == "a" * 40


class _Fake:
    """Just enough of a TarFile for TarInfo.fromtarfile to parse headers."""

    def __init__(self, data: bytes) -> None:
        self.fileobj = io.BytesIO(data)
        self.encoding, self.errors = "utf-8", "surrogateescape"
        self.pax_headers: dict = {}
        self.offset = 0

    def _load(self) -> None:
        pass


def test_tar_subtree_leaves_out_first_hardlink_member(repo, full_tree, tmp_path):
    save_tree(repo, full_tree)
    data, _ = tar_stream(repo, str(full_tree / "sub"))  # a.txt and big-link1 are outside
    names = names_in(data)
    top = rel(full_tree)
    assert names[:2] == [top + "/", top + "/sub/"]  # the saved parent comes first
    assert top + "/a.txt" not in names and top + "/sub/hardlink" in names
    by = {ti.name: ti for ti in lint_tar(data)}
    assert by[top + "/sub/hardlink"].isreg() and by[top + "/sub/hardlink"].size == 6
    assert by[top + "/sub/big-link2"].isreg()
    assert by[top + "/sub/deeper/big"].islnk()
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    compare_trees(full_tree / "sub", dest / top / "sub")
    # the parent was emitted first, so its mode and mtime are the saved ones
    assert os.stat(dest / top).st_mtime_ns == os.stat(full_tree).st_mtime_ns


def test_tar_path_selector_without_leading_slash(repo, tree):
    save_tree(repo, tree)
    a, _ = tar_stream(repo, str(tree / "sub"))
    b, _ = tar_stream(repo, rel(tree / "sub"))
    assert a == b


def test_tar_glob_selects_whole_member_names(repo, tree):
    save_tree(repo, tree)
    data, _ = tar_stream(repo, "*.txt")
    top = rel(tree)
    files = [n for n in names_in(data) if not n.endswith("/")]
    assert sorted(files) == sorted([top + "/a.txt", top + "/text.txt",
                                    top + "/sub/caf\u00e9.txt"])
    data, _ = tar_stream(repo, "/" + top + "/*/deeper")
    assert names_in(data)[-2:] == [top + "/sub/deeper/", top + "/sub/deeper/setuid"]


def test_tar_where_and_exclude(repo, tree, tmp_path):
    save_tree(repo, tree)
    data, _ = tar_stream(repo, "--where", "type = 'file' AND size > 100000")
    files = [n for n in names_in(data) if not n.endswith("/")]
    assert sorted(files) == [rel(tree) + "/random.bin", rel(tree) + "/text.txt"]
    data, _ = tar_stream(repo, str(tree), "--exclude", "sub", "--exclude", "*.bin")
    names = names_in(data)
    assert not any("/sub" in n or n.endswith(".bin") for n in names)
    assert rel(tree) + "/a.txt" in names


def test_tar_where_cannot_write(repo, tree):
    save_tree(repo, tree)
    res = run("-r", repo, "tar", "--backup", "latest", "--where",
              "1) UNION SELECT 1 FROM pragma_user_version WHERE (SELECT writefile('x', 'y')",
              exit_code=11)
    assert res.stdout_bytes == b""
    assert not os.path.exists("x")


def test_tar_path_not_in_save_is_an_error(repo, tree):
    save_tree(repo, tree)
    res = run("-r", repo, "tar", "--backup", "latest", "/no/such/dir", exit_code=9)
    assert "/no/such/dir" in res.stderr and res.stdout_bytes == b""


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_tar_pads_damaged_chunk_and_exits_10(repo, tree, tmp_path, damage):
    save_tree(repo, tree)
    chunk = chunk_damage.chunk_file_of(repo, tree / "random.bin")
    if damage == "missing":
        os.unlink(chunk)
    else:
        chunk_damage.garble(chunk)
    data, err = tar_stream(repo, exit_code=10)
    assert "random.bin" in err and "at offset " in err and "Traceback" not in err
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    got = (dest / rel(tree) / "random.bin").read_bytes()
    want = (tree / "random.bin").read_bytes()
    assert len(got) == len(want) and got != want
    offset = int(err.split("at offset ")[1].split()[0])
    assert got[:offset] == want[:offset]
    (dest / rel(tree) / "random.bin").write_bytes(want)  # everything else is intact
    mtime = (tree / "random.bin").stat().st_mtime_ns
    os.utime(dest / rel(tree) / "random.bin", ns=(mtime, mtime))
    compare_trees(tree, dest / rel(tree), mtime_exact=False)


def _insert_member(repo: bytes, path: bytes, mode: int, target: bytes | None = None, *,
                   key: bytes | None = None, ino: int = 0, nlink: int = 1) -> None:
    """A raw member row named by PATH (its key unless KEY is given)."""
    insert_raw_member(repo, path.replace(b"/", b"\0") if key is None else key, mode, target,
                      name=path.rsplit(b"/", 1)[-1], ino=ino, nlink=nlink)


def test_tar_refuses_hostile_catalog_rows(repo, tree, tmp_path):
    save_tree(repo, tree)
    raw = os.fsencode(tree)
    _insert_member(repo, raw + b"/sub/../../escape", stat.S_IFREG | 0o644)
    _insert_member(repo, raw + b"/trap", stat.S_IFLNK | 0o777, b"/etc")
    _insert_member(repo, raw + b"/trap/passwd", stat.S_IFREG | 0o644)
    _insert_member(repo, raw + b"/sock", stat.S_IFSOCK | 0o755)
    _insert_member(repo, raw + b"/slash", stat.S_IFREG | 0o644,  # '/' inside a component
                   key=pathcodec.sort_key(raw) + b"\0sub/a.txt")
    _insert_member(repo, b"relative", stat.S_IFREG | 0o644, key=b"relative\0x")  # no range
    # a hardlink group whose first member is refused: the next one must carry the data
    _insert_member(repo, raw + b"/hl/../hl-a", stat.S_IFREG | 0o644, ino=424242, nlink=2)
    _insert_member(repo, raw + b"/hl-b", stat.S_IFREG | 0o644, ino=424242, nlink=2)
    data, err = tar_stream(repo, exit_code=10)
    names = names_in(data)
    assert not any(".." in n.split("/") for n in names)
    assert rel(tree) + "/trap" in names and rel(tree) + "/trap/passwd" not in names
    assert "escape" in err and "trap/passwd" in err and "not a directory" in err
    assert "socket skipped" in err
    assert "'/' inside the component 'sub/a.txt'" in err and "hl-a" in err
    assert names.count(rel(tree) + "/sub/a.txt") == 0 and not any("relative" in n for n in names)
    hl_b = [ti for ti in lint_tar(data) if ti.name == rel(tree) + "/hl-b"]
    assert len(hl_b) == 1 and hl_b[0].isreg()
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    assert sorted(os.listdir(tmp_path)) == sorted(["dest", "repo", "src"])


def test_tar_socket_only_is_a_warning(repo, tree):
    save_tree(repo, tree)
    _insert_member(repo, os.fsencode(tree) + b"/sock", stat.S_IFSOCK | 0o755)
    _, err = tar_stream(repo, exit_code=1)
    assert "sock: socket skipped" in err


def test_tar_writes_nothing_to_the_repository(repo, tree):
    save_tree(repo, tree)
    before = hash_dir(repo)
    tar_stream(repo)
    run("-r", repo, "list", "--backup", "latest", "-v")
    after = hash_dir(repo)
    # a WAL reader may create SQLite's empty -wal and shared-memory -shm beside the catalog
    for name in (b"catalog.sqlite3-wal", b"catalog.sqlite3-shm"):
        if name not in before and name in after:
            assert name.endswith(b"-shm") or after[name] == hash_dir_empty()
            del after[name]
    assert after == before


def hash_dir_empty() -> str:
    return "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 b""


def test_tar_broken_pipe_exits_141_quietly(repo, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    block = os.urandom(65536)
    (src / "f").write_bytes(block * 1600)  # 100 MiB of stream, some 64 KiB stored: more
    save_tree(repo, src)  # than any pipe buffer holds, so the writer must see EPIPE
    p1 = subprocess.Popen([BACKSHIFT, "-r", repo, "tar", "--backup", "latest"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.Popen(["head", "-c", "1000"], stdin=p1.stdout, stdout=subprocess.DEVNULL)
    p1.stdout.close()
    p2.wait(timeout=60)
    err = p1.stderr.read().decode()
    assert p1.wait(timeout=60) == 141  # as a shell reports SIGPIPE, like GNU tar
    assert err == ""


def test_tar_output_file(repo, tree, tmp_path):
    save_tree(repo, tree)
    res = run_bin("-r", repo, "tar", "--backup", "latest", "-o", str(tmp_path / "out.tar"))
    assert res.returncode == 0, res.stderr
    data, _ = tar_stream(repo)
    assert (tmp_path / "out.tar").read_bytes() == data


def test_tar_of_fresh_tree_twice_is_identical(repo, tmp_path):
    src = make_tree(tmp_path / "other")
    save_tree(repo, src)
    assert tar_stream(repo)[0] == tar_stream(repo)[0]


def test_tar_output_file_not_created_on_error(repo, tree, tmp_path):
    save_tree(repo, tree)
    out = tmp_path / "out.tar"
    run("-r", repo, "tar", "--backup", "latest", "/no/such", "-o", str(out), exit_code=9)
    run("-r", repo, "tar", "--backup", "latest", "--where", "nosuchcolumn = 1",
        "-o", str(out), exit_code=11)
    assert not out.exists()


@pytest.mark.parametrize("delta", [-1000, 1000, 10**15])
@pytest.mark.parametrize("sealed", [False, True])
def test_tar_size_disagreeing_with_content_stops_as_catalog_damage(repo, tree, tmp_path,
                                                                   delta, sealed):
    """A version's size that its content does not hold is catalog damage: tar stops before
    that member's header (no padding: 10^15 crafted bytes streamed zeros until the disk
    filled) and leaves the stream without its end, so the tar reading it fails too. Sealed:
    a forged catalog with a digest to match; content size forged as well."""
    save_tree(repo, tree)
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    key = pathcodec.sort_key(os.fsencode(tree / "random.bin"))
    conn.execute("UPDATE version SET size = size + ? WHERE path_id = "
                 "(SELECT id FROM path WHERE key = ?)", (delta, key))
    if sealed:
        conn.execute("UPDATE content SET size = size + ? WHERE id = (SELECT content_id "
                     "FROM version WHERE path_id = (SELECT id FROM path WHERE key = ?))",
                     (delta, key))
    conn.close()
    if sealed:
        reseal_digest(repo, 1)
    res = run("-r", repo, "tar", "--backup", "latest", exit_code=7)
    line = one_line(res.stderr)
    assert "save 1: the catalog is damaged" in line and "random.bin has size" in line, line
    assert f"in chunks of {300_000:,} bytes" in line and "catalog-copies/" in line, line
    assert len(res.stdout_bytes) < 400_000  # nothing of random.bin's data, nor zeros
    assert res.stdout_bytes[-1024:] != bytes(1024)  # no end of archive
    got = subprocess.run(["tar", "-tf", "-"], input=res.stdout_bytes, capture_output=True)
    assert got.returncode == 2  # GNU tar: a fatal error (the archive ends early)


@settings(max_examples=200, deadline=None)
@given(name=st.binary(min_size=1, max_size=300).filter(  # tarfile drops a trailing '/'
           lambda b: b"\0" not in b and not b.endswith(b"/")),
       link=st.binary(max_size=200).filter(lambda b: b"\0" not in b),
       uid=st.integers(0, 2**40), size=st.integers(0, 2**40),
       mtime_ns=st.integers(-(2**62), 2**62), user=st.binary(max_size=40))
def test_tar_header_round_trips_through_tarfile(name, link, uid, size, mtime_ns, user):
    from backshift.ops import tarstream as ts

    user = user.replace(b"\0", b"")
    h = ts.Header(name=name, typeflag=ts.REGTYPE, mode=0o7777, uid=uid, gid=5, uname=user,
                  gname=b"g", size=size, mtime_ns=mtime_ns, linkname=link)
    ti = tarfile.TarInfo.fromtarfile(_Fake(ts.encode_header(h) + bytes(1024)))
    assert ti.name.encode("utf-8", "surrogateescape") == name
    assert ti.linkname.encode("utf-8", "surrogateescape") == link
    assert (ti.uid, ti.size, ti.mode) == (uid, size, 0o7777)
    assert ti.uname.encode("utf-8", "surrogateescape") == user
    text = ti.pax_headers.get("mtime")
    if text is None:
        assert ti.mtime * 10**9 == mtime_ns
    else:
        sign = -1 if text.startswith("-") else 1
        sec, _, frac = text.lstrip("-").partition(".")
        assert sign * (int(sec) * 10**9 + int(frac.ljust(9, "0"))) == mtime_ns


_ascii_names = st.one_of(st.binary(max_size=300).map(lambda b: bytes(c & 0x7F for c in b)),
                         st.binary(max_size=300))


@settings(max_examples=400, deadline=None)
@given(name=_ascii_names.filter(lambda b: b), link=_ascii_names,
       typeflag=st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"6"]),
       mode=st.integers(0, 0o177777), uid=st.sampled_from([0, 1000, 2097151, 2097152, -1]),
       gid=st.integers(-2, 2**22), uname=st.binary(max_size=40), gname=st.binary(max_size=40),
       size=st.sampled_from([0, 1, 511, 512, 8**11 - 1, 8**11, 2**40]),
       mtime_ns=st.one_of(st.integers(-(2**40), 2**63), st.integers(0, 2**34).map(
           lambda s: s * 10**9)),
       dev=st.integers(0, 2**22))
def test_tar_header_fast_path_equals_the_general_encoder(name, link, typeflag, mode, uid, gid,
                                                          uname, gname, size, mtime_ns, dev):
    """encode_header's cached pieces give exactly the bytes of the field-by-field encoder."""
    from backshift.ops import tarstream as ts

    h = ts.Header(name=name, typeflag=typeflag, mode=mode, uid=uid, gid=gid, uname=uname,
                  gname=gname, size=size, mtime_ns=mtime_ns, linkname=link, devmajor=dev,
                  devminor=dev // 3)
    assert ts.encode_header(h) == ts.encode_header_general(h)
    assert ts.encode_header(h) == ts.encode_header_general(h)  # again, from the cache


def test_tar_pax_record_shortcuts_equal_pax_record():
    from backshift.ops import tarstream as ts

    for n in range(0, 10_050):
        value = b"p" * n
        assert ts._pax_path(b"path", value) == ts.pax_record(b"path", value)
        assert ts._pax_path(b"linkpath", value) == ts.pax_record(b"linkpath", value)
    for ns in (1, 10**9 + 1, 8**11 * 10**9 - 1, 123_456_789_000):
        value = ts.pax_time(ns)
        assert ts._pax_mtime(value) == ts.pax_record(b"mtime", value)


@pytest.mark.parametrize("selector", [["*.txt"], ["--where", "type = 'file' AND size < 100"]])
def test_tar_partial_restore_keeps_parent_metadata(repo, full_tree, tmp_path, selector):
    save_tree(repo, full_tree)
    data, _ = tar_stream(repo, *selector)
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    top = dest / rel(full_tree)
    restored = [p for p in top.rglob("*") if p.is_file() and not p.is_symlink()]
    assert restored
    for p in restored:
        src = full_tree / p.relative_to(top)
        assert p.read_bytes() == src.read_bytes()
        assert p.stat().st_mtime_ns == src.stat().st_mtime_ns
    for d in [top, top / "sub"]:
        src = full_tree / d.relative_to(top)
        assert d.stat().st_mtime_ns == src.stat().st_mtime_ns
        assert d.stat().st_mode == src.stat().st_mode


def test_tar_hostile_chunk_length_is_damage_not_a_crash(repo, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(os.urandom(5000))
    run("-r", repo, "save", str(f))
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    sha = conn.execute("SELECT sha256 FROM chunk").fetchone()[0]
    conn.execute("UPDATE chunk SET length = -5")
    conn.close()
    os.unlink(os.path.join(repo, b"chunks", sha.hex()[:2].encode(), sha.hex().encode()))
    out = tmp_path / "o.tar"
    res = run("-r", repo, "tar", "--backup", "latest", "-o", str(out), exit_code=7)
    assert "Traceback" not in res.stderr
    assert "the catalog is damaged" in one_line(res.stderr)
    assert "in chunks of -5 bytes" in res.stderr
