"""Extended attributes, POSIX ACLs and file capabilities: saved with real setfattr, setfacl
and setcap, restored by GNU tar and bsdtar, compared with getfattr and getfacl."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import apsw
import pytest
from restorehelp import tar_stream

from backshift import xattrs as xattrs_mod
from backshift.catalog import CATALOG_NAME, migrations
from conftest import BACKSHIFT, find0, run, run_bin

BIG = bytes(range(256)) * 12  # a 3 KB binary value
TRACE_XATTR = "trace=listxattr,llistxattr,flistxattr,getxattr,lgetxattr,fgetxattr"


def sh(*args: str | Path, cwd: Path | None = None) -> str:
    res = subprocess.run([str(a) for a in args], capture_output=True, cwd=cwd, timeout=60)
    assert res.returncode == 0, f"{args}: {res.stderr.decode(errors='replace')}"
    return res.stdout.decode("utf-8", "surrogateescape")


def attributed_tree(root: Path) -> Path:
    """Files and directories with user attributes (text, empty, binary, 3 KB), access and
    default ACLs, a file capability, and attributes on one member of a hardlink group."""
    (root / "dir" / "inner").mkdir(parents=True)
    (root / "plain").mkdir()
    (root / "text").write_bytes(b"text\n")
    sh("setfattr", "-n", "user.comment", "-v", "hello world", root / "text")
    sh("setfattr", "-n", "user.empty", root / "text")
    sh("setfattr", "-n", "user.binary", "-v", "0x00ff0a3d25c3", root / "text")
    (root / "big").write_bytes(b"big\n")
    sh("setfattr", "-n", "user.big", "-v", "0x" + BIG.hex(), root / "big")
    (root / "acl").write_bytes(b"acl\n")
    sh("setfacl", "-m", "u:nobody:rw,g:daemon:r", root / "acl")
    sh("setfacl", "-m", "u:nobody:rwx", root / "dir")
    sh("setfacl", "-d", "-m", "u:nobody:rx,g:daemon:rwx", root / "dir")
    sh("setfattr", "-n", "user.dir", "-v", "on a directory", root / "dir" / "inner")
    (root / "cap").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "cap", 0o755)
    sh("setcap", "cap_net_raw+ep", root / "cap")
    (root / "dir" / "linked").write_bytes(b"linked\n")
    os.link(root / "dir" / "linked", root / "plain" / "link2")
    sh("setfattr", "-n", "user.link", "-v", "one inode", root / "dir" / "linked")
    (root / "none").write_bytes(b"no attributes\n")
    os.symlink("text", root / "symlink")
    return root


def dump(root: Path) -> str:
    """Every attribute and ACL below ROOT, as getfattr and getfacl print them."""
    return (sh("getfattr", "-R", "-h", "-d", "-m", "-", "-e", "hex", ".", cwd=root)
            + sh("getfacl", "-R", "-p", ".", cwd=root))


def restored(dest: Path, src: Path) -> Path:
    return dest / str(src).lstrip("/")


def extract(tool: str, data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if tool == "gnu":
        argv = ["tar", "--xattrs", "--xattrs-include=*", "--acls", "-xpf", "-", "-C", dest]
    else:
        argv = ["bsdtar", "--xattrs", "--acls", "-xpf", "-", "-C", dest]
    res = subprocess.run([str(a) for a in argv], input=data, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stderr == b"", res.stderr.decode(errors="replace")


def gnu_tar_create(root: Path) -> bytes:
    """GNU tar's own stream of ROOT with attributes and ACLs, names as backshift gives them."""
    return subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "-C", "/",
                           "-cf", "-", str(root).lstrip("/")], capture_output=True,
                          check=True, timeout=60).stdout


def pax_of(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tf:
        return {ti.name.rstrip("/"): ti for ti in tf.getmembers()}


def raw_pax(data: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """(member name, its pax records as raw bytes) per member: tarfile decodes values."""
    out, pos, records = [], 0, {}
    while pos + 512 <= len(data):
        block = data[pos:pos + 512]
        if block == bytes(512):
            break
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        body = data[pos + 512:pos + 512 + size]
        if block[156:157] == b"x":
            records = {}
            while body:
                length = int(body.split(b" ", 1)[0])
                key, _, value = body[:length].split(b" ", 1)[1].partition(b"=")
                records[key] = value[:-1]
                body = body[length:]
        else:
            out.append((records.get(b"path", block[:100].rstrip(b"\0")), records))
            records = {}
        pos += 512 + -(-size // 512) * 512 if block[156:157] in (b"x", b"0") else 512
    return out


@pytest.fixture
def src(tmp_path) -> Path:
    return attributed_tree(tmp_path / "src")


@pytest.fixture
def saved(repo, src) -> Path:
    run("-r", repo, "save", "--subset", "x", input=find0(src))
    return src


@pytest.mark.parametrize("tool", ["gnu", "bsd"])
def test_tar_xattrs_and_acls_restore_exactly_with(tool, repo, saved, tmp_path):
    data, err = tar_stream(repo)
    assert err == ""
    extract(tool, data, tmp_path / "out")
    # the reference: GNU tar's own round trip of the same tree
    ref = gnu_tar_create(saved)
    extract("gnu", ref, tmp_path / "ref")
    source = dump(saved)
    assert "user.big=0x" + BIG.hex() in source and "security.capability" in source
    assert "default:user:nobody:r-x" in source and "user:nobody:rw-" in source
    assert dump(restored(tmp_path / "ref", saved)) == source
    assert dump(restored(tmp_path / "out", saved)) == source


def test_tar_acl_text_equals_gnu_tar(repo, saved):
    ours = pax_of(tar_stream(repo)[0])
    ref = pax_of(gnu_tar_create(saved))
    compared = 0
    for name, ti in ours.items():
        for key in ("SCHILY.acl.access", "SCHILY.acl.default"):
            if key in ti.pax_headers:
                assert ti.pax_headers[key] == ref[name].pax_headers[key], (name, key)
                compared += 1
    assert compared == 4  # acl, dir (access and default), dir/linked (dir's default)
    acl = ours[str(saved / "acl").lstrip("/")].pax_headers["SCHILY.acl.access"]
    assert acl == ("user::rw-\nuser:nobody:rw-\ngroup::r--\ngroup:daemon:r--\nmask::rw-\n"
                   "other::r--\n")


def test_tar_binary_values_go_out_raw_as_gnu_tar_writes_them(repo, saved):
    members = dict(raw_pax(tar_stream(repo)[0]))
    text = members[str(saved / "text").lstrip("/").encode()]
    assert text[b"SCHILY.xattr.user.binary"] == bytes.fromhex("00ff0a3d25c3")
    assert text[b"SCHILY.xattr.user.empty"] == b""
    assert text[b"SCHILY.xattr.user.comment"] == b"hello world"
    assert b"hdrcharset" not in text
    assert members[str(saved / "big").lstrip("/").encode()][b"SCHILY.xattr.user.big"] == BIG


def test_tar_hardlink_member_carries_no_xattrs(repo, saved):
    members = pax_of(tar_stream(repo)[0])
    first = members[str(saved / "dir" / "linked").lstrip("/")]
    link = members[str(saved / "plain" / "link2").lstrip("/")]
    assert first.isreg() and first.pax_headers["SCHILY.xattr.user.link"] == "one inode"
    assert link.islnk() and not any(k.startswith("SCHILY.") for k in link.pax_headers)


def test_tar_no_xattrs_leaves_them_out(repo, saved, tmp_path):
    data, _ = tar_stream(repo, "--no-xattrs")
    assert b"SCHILY." not in data
    extract("gnu", data, tmp_path / "out")
    assert "user.comment" not in dump(restored(tmp_path / "out", saved))


def test_tar_selector_keeps_xattrs(repo, saved, tmp_path):
    data, _ = tar_stream(repo, str(saved / "dir"))
    extract("bsd", data, tmp_path / "out")
    assert dump(restored(tmp_path / "out", saved / "dir")) == dump(saved / "dir")
    assert not restored(tmp_path / "out", saved / "text").exists()


def test_list_verbose_equals_gnu_tar_listing_with_xattrs(repo, saved):
    data, _ = tar_stream(repo)
    listed = run("-r", repo, "list", "--backup", "latest", "-v").stdout_bytes
    gnu = subprocess.run(["tar", "-tvf", "-"], input=data, capture_output=True, timeout=60)
    assert gnu.returncode == 0 and gnu.stderr == b"", gnu.stderr
    assert listed == gnu.stdout
    assert b"plain/link2 link to " in listed


def test_sql_xattrs_view_answers_which_files_carry_capabilities(repo, saved):
    res = run("-r", repo, "sql", "--format", "json",
              "SELECT path FROM xattrs WHERE name = 'security.capability' AND save_id = 1")
    assert json.loads(res.stdout) == {"path": str(saved / "cap")}
    res = run("-r", repo, "sql", "--format", "json",
              "SELECT name, value, size FROM xattrs WHERE save_id = 1 AND path = :p "
              "ORDER BY name", "--param", f"p={saved / 'text'}")
    assert [json.loads(line) for line in res.stdout.splitlines()] == [
        {"name": "user.binary", "value": "00ff0a3d25c3", "size": 6},
        {"name": "user.comment", "value": "hello world", "size": 11},
        {"name": "user.empty", "value": "", "size": 0},
    ]


def test_save_stores_a_shared_attribute_set_once(repo, src):
    for i in range(5):
        (src / f"same{i}").write_bytes(b"%d\n" % i)
        sh("setfacl", "-m", "u:nobody:r", src / f"same{i}")
    run("-r", repo, "save", "--subset", "x", input=find0(src))
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, CATALOG_NAME)))
    sets = conn.execute("SELECT v.xattrs_id FROM version AS v JOIN path AS p ON p.id = "
                        "v.path_id WHERE CAST(p.name AS TEXT) LIKE 'same%'").fetchall()
    assert len(sets) == 5 and len(set(sets)) == 1 and sets[0][0] is not None
    none = conn.execute("SELECT v.xattrs_id FROM version AS v JOIN path AS p ON p.id = "
                        "v.path_id WHERE p.name = CAST('none' AS BLOB)").fetchone()
    assert none == (None,)
    # the five files sharing an ACL: one set; text, big, acl, cap, dir, dir/inner and the
    # hardlink group (one inode): seven more
    assert conn.execute("SELECT count(*) FROM xattr_set").fetchone()[0] == 8


def test_save_catches_an_attribute_only_change(repo, saved, no_racy_margin):
    before = os.stat(saved / "text")
    sh("setfattr", "-n", "user.comment", "-v", "changed", saved / "text")
    sh("setfacl", "-m", "u:nobody:r", saved / "none")
    sh("setfattr", "-x", "user.dir", saved / "dir" / "inner")
    after = os.stat(saved / "text")
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_ctime_ns != before.st_ctime_ns
    res = run("-r", repo, "save", "--subset", "x", input=find0(saved))
    assert "borrowed 4 unchanged" in res.stdout  # big, acl, cap, the hardlink group
    assert "new chunks 0" in res.stdout  # the two changed files' contents were stored already
    rows = [json.loads(line) for line in run(
        "-r", repo, "sql", "--format", "json", "SELECT save_id, name, value FROM xattrs "
        "WHERE path = :p ORDER BY save_id, name", "--param",
        f"p={saved / 'text'}").stdout.splitlines()]
    assert [(r["save_id"], r["value"]) for r in rows if r["name"] == "user.comment"] == [
        (1, "hello world"), (2, "changed")]
    diff = run("-r", repo, "diff", "1", "2").stdout.splitlines()
    assert f"M {saved / 'text'}  [xattrs]" in diff
    assert f"M {saved / 'none'}  [xattrs]" in diff  # the mask r-- left the mode 644
    assert f"M {saved / 'dir' / 'inner'}  [xattrs]" in diff
    assert len(diff) == 3


def test_resave_of_unchanged_files_makes_no_attribute_calls(repo, src, tmp_path):
    time.sleep(2.2)  # older than the racy margin of the first save: the fast path takes them
    assert run_bin("-r", repo, "save", "--subset", "x", input=find0(src)).returncode == 0
    trace = tmp_path / "trace"
    res = subprocess.run(["strace", "-f", "-qq", "-e", TRACE_XATTR, "-o", str(trace),
                          BACKSHIFT, "-r", os.fsdecode(repo), "save", "--subset", "x"],
                         input=find0(src), capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert b"borrowed 6 unchanged" in res.stdout, res.stdout  # link2: a hard link
    calls = [line for line in trace.read_text().splitlines() if "xattr" in line]
    assert calls == []
    # a changed ctime: that file's attributes are read again, the others' still not
    sh("setfattr", "-n", "user.comment", "-v", "again", src / "text")
    time.sleep(2.2)
    subprocess.run(["strace", "-f", "-qq", "-e", TRACE_XATTR, "-o", str(trace),
                    BACKSHIFT, "-r", os.fsdecode(repo), "save", "--subset", "x"],
                   input=find0(src), capture_output=True, timeout=120, check=True)
    listed = {line.split('"')[1] for line in trace.read_text().splitlines()
              if "listxattr(" in line}
    assert listed == {str(src / "text")}


def test_save_warns_when_attributes_cannot_be_read(repo, src, monkeypatch):
    real = os.listxattr

    def unsupported(path, *a, **kw):  # what NFS or a FUSE filesystem without xattrs says
        if os.fsencode(path).endswith(b"/text"):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real(path, *a, **kw)

    monkeypatch.setattr(xattrs_mod.os, "listxattr", unsupported)
    res = run("-r", repo, "save", "--subset", "x", input=find0(src), exit_code=1)
    assert (f"{src / 'text'}: cannot list extended attributes: Operation not supported; "
            "saved without them") in res.stderr
    files = run("-r", repo, "sql", "SELECT count(*) FROM files WHERE path = :p",
                "--param", f"p={src / 'text'}", "--format", "csv").stdout
    assert files.splitlines()[1] == "1"


def test_save_warns_when_an_attribute_cannot_be_read(repo, src, monkeypatch):
    real = os.getxattr

    def denied(path, name, *a, **kw):
        if os.fsencode(name) == b"user.big":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return real(path, name, *a, **kw)

    monkeypatch.setattr(xattrs_mod.os, "getxattr", denied)
    res = run("-r", repo, "save", "--subset", "x", input=find0(src), exit_code=1)
    assert (f"{src / 'big'}: cannot read extended attribute user.big: Operation not "
            "permitted; saved without them") in res.stderr


def test_save_on_a_filesystem_without_user_xattrs(repo, tmp_path):
    """ramfs keeps no user.* attributes: setfattr fails there, a save just finds none."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    sh("mount", "-t", "ramfs", "ramfs", mnt)
    try:
        (mnt / "f").write_bytes(b"f\n")
        refused = subprocess.run(["setfattr", "-n", "user.x", "-v", "1", str(mnt / "f")],
                                 capture_output=True)
        assert refused.returncode == 1 and b"not supported" in refused.stderr
        res = run("-r", repo, "save", "--subset", "r", input=find0(mnt))
        assert "warnings 0" in res.stdout
        data, _ = tar_stream(repo)
        assert b"SCHILY.xattr.user" not in data
        dest = tmp_path / "back"
        dest.mkdir()
        sh("mount", "-t", "ramfs", "ramfs", dest)
        try:  # restoring attributes onto it: GNU tar warns, the files are there
            src = attributed_tree(tmp_path / "src2")
            run("-r", repo, "save", "--subset", "a", input=find0(src))
            data, _ = tar_stream(repo)
            res = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xpf", "-",
                                  "-C", str(dest)], input=data, capture_output=True)
            assert b"user.comment" in res.stderr or b"Operation not supported" in res.stderr
            assert (restored(dest, src) / "text").read_bytes() == b"text\n"
        finally:
            sh("umount", dest)
    finally:
        sh("umount", mnt)


def _downgrade_to_schema_2(catalog: bytes) -> None:
    """What a catalog of the release before extended attributes looks like: the objects of
    migrations 0001-0002 only (this code's rows, less the columns later migrations add)."""
    fresh = apsw.Connection(":memory:")
    for _number, _name, sql in migrations()[:2]:
        fresh.execute(sql)
    old = set(fresh.execute("SELECT type, name FROM sqlite_schema").fetchall())
    conn = apsw.Connection(os.fsdecode(catalog))
    with conn:
        for kind, name in conn.execute("SELECT type, name FROM sqlite_schema WHERE name NOT "
                                       "LIKE 'sqlite_%'").fetchall():
            if (kind, name) not in old and kind in ("view", "table", "index"):
                conn.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        for kind, table in old:  # and the columns later migrations added to its tables
            if kind != "table" or table.startswith("sqlite_"):
                continue
            before = {r[1] for r in fresh.execute(f'PRAGMA table_info("{table}")')}
            for r in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if r[1] not in before:
                    conn.execute(f'ALTER TABLE "{table}" DROP COLUMN "{r[1]}"')
        conn.execute("DELETE FROM meta WHERE key = 'last_save_without_xattrs'")
        conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_catalog_of_the_previous_release_upgrades_in_place(repo, src, tmp_path):
    time.sleep(2.2)  # not racy: the re-save below could take every file unread
    run("-r", repo, "save", "--subset", "x", input=find0(src))
    catalog = os.path.join(repo, CATALOG_NAME)
    _downgrade_to_schema_2(catalog)
    # the old save reads and restores as before (no attributes)
    data, _ = tar_stream(repo)
    assert b"SCHILY." not in data
    assert run("-r", repo, "sql", "SELECT count(*) FROM xattrs",
               "--format", "csv").stdout.splitlines()[1] == "0"
    # the next save reads every entry's attributes, while borrowing the unchanged contents
    res = run("-r", repo, "save", "--subset", "x", input=find0(src))
    assert "borrowed 6 unchanged" in res.stdout and "read 0 files" in res.stdout
    extract("gnu", tar_stream(repo)[0], tmp_path / "out")
    assert dump(restored(tmp_path / "out", src)) == dump(src)
    assert "no problems found" in run("-r", repo, "check").stdout


def test_expire_drops_attribute_sets_no_version_names(repo, saved, no_racy_margin):
    sh("setfattr", "-n", "user.comment", "-v", "second", saved / "text")
    run("-r", repo, "save", "--subset", "x", input=find0(saved))
    catalog = os.fsdecode(os.path.join(repo, CATALOG_NAME))

    def sets() -> set[bytes]:
        conn = apsw.Connection(catalog)
        try:
            return {r[0] for r in conn.execute(
                "SELECT value FROM xattr WHERE name = CAST('user.comment' AS BLOB)")}
        finally:
            conn.close()

    assert sets() == {b"hello world", b"second"}
    run("-r", repo, "expire", "--keep-last", "1")
    assert sets() == {b"second"}
    assert "no problems found" in run("-r", repo, "check").stdout
    data, _ = tar_stream(repo)
    assert b"SCHILY.xattr.user.comment=second\n" in data


def test_check_reports_a_version_naming_a_missing_attribute_set(repo, saved):
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, CATALOG_NAME)))
    conn.execute("UPDATE version SET xattrs_id = 999999 WHERE id = (SELECT min(id) FROM version)")
    conn.close()
    res = run("-r", repo, "check", exit_code=10)
    assert "names missing extended attribute set 999999" in res.stdout
