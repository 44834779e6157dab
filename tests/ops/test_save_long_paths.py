"""Paths longer than PATH_MAX (4,096 bytes): saved through `*at` calls relative to a directory
fd (issue 19 item 8), listed, and restored by GNU tar and bsdtar from the tar stream's long
names.

Neither tar extracts a single member name longer than PATH_MAX (each hands the whole name to
one mkdirat/openat), so the restores strip the leading components of the long names and
extract into a destination whose own path is long: the restored files sit at paths beyond
4,096 bytes, and the stream's full names are compared by listing them (tar -t) and reading a
member by its full name (tar -xO).
"""

from __future__ import annotations

import os
import stat
import subprocess

from conftest import find0, run, run_bin

NAME = 200  # bytes of each directory name: PATH_MAX is passed after ~20 levels
PREFIX = 12  # levels above the part that is restored
DEEP = 12  # levels of the restored part
CONTENT = b"deep content\n" * 5000  # 65 KB: several chunks of the test repository's


def _chain(top: bytes, tag: bytes, levels: int) -> bytes:
    """Create LEVELS nested directories of NAME-byte names below TOP through dir fds (a
    plain mkdir refuses past PATH_MAX); the deepest one's path."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = top
    try:
        for i in range(levels):
            name = tag + b"%02d" % i
            name += b"x" * (NAME - len(name))
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
            path += b"/" + name
        return path
    finally:
        os.close(fd)


def _write_at(parent: bytes, files: dict[bytes, bytes], links: dict[bytes, bytes]) -> None:
    """Files and symlinks in the directory PARENT (a long path: opened component by
    component through dir fds)."""
    fd = _open_long_dir(parent)
    try:
        for name, data in files.items():
            f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=fd)
            os.write(f, data)
            os.close(f)
        for name, target in links.items():
            os.symlink(target, name, dir_fd=fd)
    finally:
        os.close(fd)


def _open_long_dir(path: bytes) -> int:
    fd = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
    for comp in path.split(b"/"):
        if comp:
            new = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
    return fd


def _snapshot(top: bytes) -> dict[bytes, tuple]:
    """Every entry below TOP (relative name -> type, mode, content or target, mtime of a
    file in whole seconds), read through dir fds (os.fwalk), so that long paths work."""
    out: dict[bytes, tuple] = {}
    for dirpath, dirnames, filenames, dfd in os.fwalk(top):
        rel = dirpath[len(top):]
        for name in dirnames + filenames:
            st = os.lstat(name, dir_fd=dfd)
            key = rel + b"/" + name
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("l", os.readlink(name, dir_fd=dfd))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                with os.fdopen(fd, "rb") as f:
                    out[key] = ("f", stat.S_IMODE(st.st_mode), f.read(), int(st.st_mtime))
            else:
                out[key] = ("d", stat.S_IMODE(st.st_mode))
    return out


def test_save_long_paths_saved_listed_and_restored_by_gnu_tar_and_bsdtar(repo, tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    top = _chain(src, b"p", PREFIX)
    deep = _chain(top, b"d", DEEP)
    assert len(deep) > 4096
    _write_at(deep, {b"f" * NAME: CONTENT, b"empty": b""}, {b"l" * NAME: b"../target"})
    long_file = deep + b"/" + b"f" * NAME
    assert len(long_file) > 4096 + NAME
    dfd = _open_long_dir(deep)
    try:
        f = os.open(b"f" * NAME, os.O_RDONLY, dir_fd=dfd)
        os.setxattr(f, b"user.deep", b"saved too")  # read back through the directory's fd
        os.close(f)
    finally:
        os.close(dfd)

    # saved from the real find -print0, then from a walk of the PATH: no warnings
    names = find0(src)
    proc = run_bin("-r", repo, "save", "--subset", "find", input=names)
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    assert b"warning" not in proc.stderr, proc.stderr.decode()[-800:]
    proc = run_bin("-r", repo, "save", "--subset", "walk", src)
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    assert b"warning" not in proc.stderr, proc.stderr.decode()[-800:]
    expected = {n for n in names.split(b"\0") if n}
    assert len(expected) == 1 + PREFIX + DEEP + 3

    # list shows every path (and their parent directories), the long ones whole
    members = {n.lstrip(b"/") for n in expected}
    for sid in ("1", "2"):
        listed = {line.rstrip(b"/") for line in
                  run("-r", repo, "list", "--backup", sid).stdout_bytes.splitlines()}
        assert members <= listed and all(n.startswith(src.lstrip(b"/")) or
                                         src.lstrip(b"/").startswith(n) for n in listed)
    verbose = run("-r", repo, "list", "--backup", "1", "-v").stdout_bytes
    assert verbose.count(long_file.lstrip(b"/")) == 1
    xattrs = run("-r", repo, "sql", "SELECT save_id, length(path), name, value FROM xattrs",
                 "--format", "csv").stdout.splitlines()
    assert xattrs[1:] == [f"{sid},{len(long_file)},user.deep,saved too" for sid in (1, 2)]

    archive = tmp_path / "out.tar"
    run("-r", repo, "tar", "--backup", "1", "-o", str(archive))
    for tool in ("tar", "bsdtar"):
        listing = subprocess.run([tool, "-tf", archive], capture_output=True, check=True)
        assert {n.rstrip(b"/") for n in listing.stdout.splitlines()} == listed, tool
        one = subprocess.run([tool, "-xOf", archive, long_file.lstrip(b"/")],
                             capture_output=True, check=True)
        assert one.stdout == CONTENT, tool

    # restored below a long destination: the files land at paths beyond PATH_MAX
    strip = top.lstrip(b"/").count(b"/") + 1
    want = _snapshot(top)
    for tool in ("tar", "bsdtar"):
        os.mkdir(tmp_path / f"dest-{tool}")
        dest = _chain(os.fsencode(tmp_path / f"dest-{tool}"), b"r", PREFIX)
        subprocess.run([tool, "-xpf", archive, "-C", dest, f"--strip-components={strip}"],
                       check=True, capture_output=True)
        assert len(dest + deep[len(top):] + b"/" + b"f" * NAME) > 4096 + NAME
        assert _snapshot(dest) == want, tool
