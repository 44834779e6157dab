"""The pax (POSIX.1-2001) tar format: member headers, data padding and the stream writer.

Written by hand rather than with `tarfile` because every field must be exact: mtimes in
nanoseconds built from integers (tarfile goes through a float), names and owners as the raw
bytes recorded, and nothing re-resolved on the restoring host. A ustar header carries what
fits; a preceding 'x' extended header carries the rest:
- `path` / `linkpath` for names longer than 100 bytes or not plain ASCII;
- `hdrcharset=BINARY` when a name or owner is not valid UTF-8 (the bytes pass verbatim);
- `size` from 8 GiB, `uid` / `gid` above 2097151, `uname` / `gname` beyond ustar;
- `mtime` as `SECONDS.NNNNNNNNN` whenever the time has a fraction or does not fit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ChunkCorrupt, ChunkMissing

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
XHDTYPE = b"x"

PAX_HEADER_NAME = b"././@PaxHeader"
MAX_OCTAL_7 = 0o7777777  # 2097151: uid, gid, devmajor, devminor in 8-byte fields
MAX_OCTAL_11 = 0o77777777777  # 8 GiB - 1: size and mtime in 12-byte fields


@dataclass(frozen=True)
class Header:
    """Everything a tar header says about one member (names as raw bytes)."""

    name: bytes
    typeflag: bytes
    mode: int  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int
    gid: int
    uname: bytes
    gname: bytes
    size: int  # bytes of data that follow (0 for all but regular files)
    mtime_ns: int
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0


def pax_record(key: bytes, value: bytes) -> bytes:
    """One 'LEN key=value\\n' record; LEN counts the whole record, itself included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode("ascii") + body


def pax_time(ns: int) -> bytes:
    """Integer nanoseconds as pax decimal seconds, exactly: 1600000000.123456789."""
    sign = b"-" if ns < 0 else b""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    if frac == 0:
        return sign + b"%d" % sec
    return sign + (b"%d.%09d" % (sec, frac)).rstrip(b"0")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fits_ascii(raw: bytes, limit: int) -> bool:
    return len(raw) <= limit and raw.isascii()


def encode_header(h: Header) -> bytes:
    """The header block(s) of member H: an optional pax 'x' header, then the ustar block."""
    records: list[bytes] = []
    binary = False
    name_field = h.name
    if not _fits_ascii(h.name, 100):
        records.append(pax_record(b"path", h.name))
        binary |= not _is_utf8(h.name)
        name_field = h.name[:100]
    link_field = h.linkname
    if not _fits_ascii(h.linkname, 100):
        records.append(pax_record(b"linkpath", h.linkname))
        binary |= not _is_utf8(h.linkname)
        link_field = h.linkname[:100]
    uname_field, gname_field = h.uname, h.gname
    if not _fits_ascii(h.uname, 31):
        records.append(pax_record(b"uname", h.uname))
        binary |= not _is_utf8(h.uname)
        uname_field = b""
    if not _fits_ascii(h.gname, 31):
        records.append(pax_record(b"gname", h.gname))
        binary |= not _is_utf8(h.gname)
        gname_field = b""
    uid_field, gid_field = h.uid, h.gid
    if not 0 <= h.uid <= MAX_OCTAL_7:
        records.append(pax_record(b"uid", b"%d" % h.uid))
        uid_field = 0
    if not 0 <= h.gid <= MAX_OCTAL_7:
        records.append(pax_record(b"gid", b"%d" % h.gid))
        gid_field = 0
    size_field = h.size
    if h.size > MAX_OCTAL_11:
        records.append(pax_record(b"size", b"%d" % h.size))
        size_field = 0
    sec = h.mtime_ns // 1_000_000_000
    mtime_field = sec
    if h.mtime_ns % 1_000_000_000 or not 0 <= sec <= MAX_OCTAL_11:
        records.append(pax_record(b"mtime", pax_time(h.mtime_ns)))
        mtime_field = min(max(sec, 0), MAX_OCTAL_11)
    out = bytearray()
    if records:
        if binary:
            records.insert(0, pax_record(b"hdrcharset", b"BINARY"))
        data = b"".join(records)
        out += _ustar(PAX_HEADER_NAME, XHDTYPE, 0o644, 0, 0, b"", b"", len(data),
                      mtime_field, b"", 0, 0)
        out += data + padding(len(data))
    out += _ustar(name_field, h.typeflag, h.mode & 0o7777, uid_field, gid_field, uname_field,
                  gname_field, size_field, mtime_field, link_field,
                  min(h.devmajor, MAX_OCTAL_7), min(h.devminor, MAX_OCTAL_7))
    return bytes(out)


USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")  # NUL-padded fields


def _ustar(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, uname: bytes,
           gname: bytes, size: int, mtime: int, linkname: bytes, devmajor: int,
           devminor: int) -> bytes:
    dev = typeflag in (CHRTYPE, BLKTYPE)
    block = bytearray(USTAR.pack(
        name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid, b"%011o\0" % size,
        b"%011o\0" % mtime,
        b" " * 8,  # checksum: computed with this field as spaces
        typeflag, linkname, b"ustar\x0000", uname, gname,
        b"%07o\0" % devmajor if dev else b"", b"%07o\0" % devminor if dev else b"",
        b"",  # prefix: unused, long names go in pax 'path'
        b"",
    ))
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padding(size: int) -> bytes:
    """Zero bytes that complete a member's data to a whole block."""
    return bytes(-size % BLOCK)


class TarWriter:
    """Writes a tar stream to a binary file with large writes (a 1 MiB buffer)."""

    FLUSH_AT = 1 << 20

    def __init__(self, out) -> None:
        self.out = out
        self.buf = bytearray()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= self.FLUSH_AT:
            self.flush()
            self.out.write(data)
            self.written += len(data)
            return
        self.buf += data
        if len(self.buf) >= self.FLUSH_AT:
            self.flush()

    def write_all(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            self.write(part)

    def flush(self) -> None:
        if self.buf:
            self.out.write(self.buf)
            self.written += len(self.buf)
            self.buf = bytearray()

    def finish(self) -> None:
        """The end-of-archive marker (two zero blocks), then everything out."""
        self.write(END_OF_ARCHIVE)
        self.flush()
        self.out.flush()


# -- the producer ------------------------------------------------------------------------


def write_members(members: Iterable, writer: TarWriter, catalog, store, problems) -> int:
    """Write each planned member (select.Planned) with its data; return the member count.

    A chunk that is missing or damaged is replaced by zeros of its length, and a content
    shorter than its declared size is padded, so the stream stays valid and every member
    has exactly the size its header declares; each case is reported with path and offset.
    """
    count = 0
    for m in members:
        writer.write(encode_header(m.header))
        if m.header.typeflag == REGTYPE and m.header.size:
            _write_data(m, writer, catalog, store, problems)
        count += 1
    writer.finish()
    return count


def _write_data(m, writer: TarWriter, catalog, store, problems) -> None:
    size = m.header.size
    path = m.entry.path
    refs = catalog.chunks_of_content(m.entry.content_id) if m.entry.content_id else []
    done = 0
    for ref in refs:
        if done >= size:
            break
        try:
            data = store.read(ref)
        except (ChunkMissing, ChunkCorrupt) as e:
            # the recorded length is catalog data: never trust it beyond the member's size
            pad = min(max(ref.length, 0), size - done)
            problems.damage(path, f"{e.message()}; {pad} zero bytes at offset {done}")
            data = bytes(pad)
        if done + len(data) > size:
            problems.damage(path, f"content longer than its declared size {size}; cut")
            data = data[: size - done]
        writer.write(data)
        done += len(data)
    if done < size:
        problems.damage(path, f"content ends at {done} of {size} bytes; padded with zeros")
        while done < size:
            n = min(size - done, TarWriter.FLUSH_AT)
            writer.write(bytes(n))
            done += n
    writer.write(padding(size))


def tar_save(repo, save_id: int, sel, open_out, report) -> object:
    """Write the selection of a save as one pax tar stream; return its Problems.

    OPEN_OUT() gives the binary file to write to; it is called only once the selection is
    known to be valid (paths in the save, --where accepted), so an error leaves no output.
    """
    from .select import Planner, Problems, check_paths_exist

    check_paths_exist(repo.catalog, save_id, sel.paths)
    problems = Problems(report)
    planner = Planner(repo.catalog, save_id, sel, problems)
    try:
        writer = TarWriter(open_out())
        write_members(planner.members(), writer, repo.catalog, repo.store, problems)
    finally:
        planner.close()
    return problems
