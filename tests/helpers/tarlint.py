"""A tar-stream lint for tests: the tar producer's invariants, checked.

    from tarlint import lint_tar
    members = lint_tar(stream_bytes)   # or lint_tar("out.tar"); AssertionError names
                                       # the first violation

Checks: the stream parses with tarfile in streaming mode ('r|'); every name is relative and
normal (no empty, '.' or '..' component, no leading '/'); names are unique; nothing sits
beneath an earlier non-directory; a hardlink points to a member already seen that carries
data; the data of each member has exactly its declared size; the stream ends with two zero
blocks and is 512-aligned. Returns the TarInfo list (name, type, size...) for more asserts.
"""

from __future__ import annotations

import io
import os
import tarfile

BLOCK = 512


def _check_name(name: str, what: str) -> None:
    raw = name.encode("utf-8", "surrogateescape")
    assert raw, f"empty {what}"
    assert not raw.startswith(b"/"), f"absolute {what}: {raw!r}"
    parts = raw.rstrip(b"/").split(b"/")
    if parts == [b"."]:
        return
    for part in parts:
        assert part not in (b"", b".", b".."), f"{what} not normal: {raw!r}"


def lint_tar(source: bytes | str | os.PathLike) -> list[tarfile.TarInfo]:
    """Lint a whole stream given as bytes or as the path of a file holding it."""
    if isinstance(source, bytes | bytearray):
        return _lint(io.BytesIO(source), len(source))
    with open(source, "rb") as f:
        return _lint(f, os.fstat(f.fileno()).st_size)


def _lint(fileobj, length: int) -> list[tarfile.TarInfo]:
    assert length % BLOCK == 0, f"stream length {length} is not a multiple of 512"
    assert length >= 2 * BLOCK, "stream shorter than the end-of-archive marker"
    fileobj.seek(length - 2 * BLOCK)
    assert fileobj.read(2 * BLOCK) == bytes(2 * BLOCK), "stream does not end with two zero blocks"
    fileobj.seek(0)
    seen: dict[str, tarfile.TarInfo] = {}
    nondirs: set[str] = set()
    out = []
    with tarfile.open(fileobj=fileobj, mode="r|", encoding="utf-8",
                      errors="surrogateescape") as tf:
        for ti in tf:
            name = ti.name.rstrip("/") or ti.name
            _check_name(ti.name, "member name")
            assert name not in seen, f"duplicate member {name!r}"
            parts = name.split("/")
            for i in range(1, len(parts)):
                above = "/".join(parts[:i])
                assert above not in nondirs, f"{name!r} is beneath non-directory {above!r}"
            if ti.islnk():
                _check_name(ti.linkname, "hardlink target")
                target = seen.get(ti.linkname)
                assert target is not None, f"hardlink {name!r} -> {ti.linkname!r} not seen yet"
                assert target.isreg(), f"hardlink {name!r} -> non-regular {ti.linkname!r}"
                assert ti.size == 0, f"hardlink {name!r} carries data"
            if ti.isreg():
                f = tf.extractfile(ti)
                got = 0
                while chunk := f.read(1 << 20):
                    got += len(chunk)
                assert got == ti.size, f"{name!r}: {got} data bytes, header says {ti.size}"
            if not ti.isdir():
                nondirs.add(name)
            seen[name] = ti
            out.append(ti)
    return out
