"""The pax (POSIX.1-2001) tar format: member headers, data padding and the stream writer.
A leaf: it imports nothing of backshift (tarproduce decides what to write, and tar_save).

Written by hand rather than with `tarfile` because every field must be exact: mtimes in
nanoseconds built from integers (tarfile goes through a float), names and owners as the raw
bytes recorded, and nothing re-resolved on the restoring host. A ustar header carries what
fits; a preceding 'x' extended header carries the rest:
- `path` / `linkpath` for names longer than 100 bytes or not plain ASCII;
- `hdrcharset=BINARY` when a name or owner is not valid UTF-8 (the bytes pass verbatim);
- `size` from 8 GiB, `uid` / `gid` above 2097151, `uname` / `gname` beyond ustar;
- `mtime` as `SECONDS.NNNNNNNNN` whenever the time has a fraction or does not fit;
- `GNU.sparse.*` for a GNU sparse 1.0 member (encode_sparse_header; tarproduce decides);
- `SCHILY.acl.*` and `SCHILY.xattr.*` for extended attributes (the EXTRA records given).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from typing import NamedTuple

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


class Header(NamedTuple):
    """Everything a tar header says about one member (names as raw bytes).

    A named tuple (immutable, built in one step): one is made per member of every stream.
    """

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
    """The header block(s) of member H: an optional pax 'x' header, then the ustar block.

    The common member (ASCII names, an owner that fits, a size and time in range, not a
    device) is built from cached pieces with its checksum summed field by field;
    the rest goes through encode_header_general. Both give the same bytes (a test checks).
    """
    name, typeflag, mode, uid, gid, uname, gname, size, mtime_ns, link = h[:10]
    owner = _OWNERS.get((mode, uid, gid, uname, gname), _NEW)
    if owner is _NEW:
        owner = _owner_fields(h)
    sec, frac = divmod(mtime_ns, 1_000_000_000)
    if (owner is None or not name.isascii() or not link.isascii()
            or not 0 <= sec <= MAX_OCTAL_11 or not 0 <= size <= MAX_OCTAL_11
            or typeflag == CHRTYPE or typeflag == BLKTYPE):
        return encode_header_general(h)
    records = b""
    if len(name) > 100:
        records = _pax_path(b"path", name)
        name = name[:100]
    if len(link) > 100:
        records += _pax_path(b"linkpath", link)
        link = link[:100]
    front, back, owner_sum = owner
    size_f = b"%011o\0" % size
    mtime_f = b"%011o\0" % sec
    mtime_sum = sum(mtime_f)
    ustar = _USTAR_FAST.pack(name, front, size_f, mtime_f, b"%06o\0 " % (
        sum(name) + sum(link) + owner_sum + sum(size_f) + mtime_sum + typeflag[0]),
        typeflag, link, back)
    if frac:
        records += _pax_mtime((b"%d.%09d" % (sec, frac)).rstrip(b"0"))
    elif not records:
        return ustar
    rsize_f = b"%011o\0" % len(records)
    return b"".join((_PAX_FRONT, rsize_f, mtime_f,
                     b"%06o\0 " % (_PAX_SUM + sum(rsize_f) + mtime_sum), _PAX_BACK, records,
                     bytes(-len(records) % BLOCK), ustar))


# name(100) front(24: mode uid gid) size(12) mtime(12) chksum(8) typeflag(1) linkname(100)
# back(255: magic, version, uname, gname, devmajor, devminor, prefix, padding); 's' pads
# with NULs
_USTAR_FAST = struct.Struct("100s24s12s12s8s1s100s255s")


def _pax_path(key: bytes, value: bytes) -> bytes:
    """pax_record for a path of up to ~9,990 bytes, without the search for LEN."""
    n = len(key) + len(value) + 3  # ' ' key '=' value '\n'
    if n <= 8:
        return b"%d %s=%s\n" % (n + 1, key, value)
    if n <= 97:
        return b"%d %s=%s\n" % (n + 2, key, value)
    if n <= 996:
        return b"%d %s=%s\n" % (n + 3, key, value)
    if n <= 9995:
        return b"%d %s=%s\n" % (n + 4, key, value)
    return pax_record(key, value)


def _pax_mtime(value: bytes) -> bytes:
    """The pax 'mtime' record of VALUE (at most 22 bytes: LEN has two digits)."""
    return b"%d mtime=%s\n" % (len(value) + 10, value)


_NEW = object()
_OWNERS: dict[tuple, tuple[bytes, bytes, int] | None] = {}


def _owner_fields(h: Header) -> tuple[bytes, bytes, int] | None:
    """The ustar fields that depend on mode and owner: mode, uid, gid (24 bytes), magic,
    uname, gname and the device and prefix fields (255 bytes), and the sum of their bytes
    plus the checksum field's spaces; None when the owner needs pax records."""
    key = (h.mode, h.uid, h.gid, h.uname, h.gname)
    fields = None
    if (0 <= h.uid <= MAX_OCTAL_7 and 0 <= h.gid <= MAX_OCTAL_7 and _fits_ascii(h.uname, 31)
            and _fits_ascii(h.gname, 31)):
        front = b"%07o\0%07o\0%07o\0" % (h.mode & 0o7777, h.uid, h.gid)
        back = (b"ustar\x0000" + h.uname.ljust(32, b"\0") + h.gname.ljust(32, b"\0")
                + bytes(8 + 8 + 155 + 12))
        fields = (front, back, sum(front) + sum(back) + 8 * 32)
    if len(_OWNERS) < 4096:
        _OWNERS[key] = fields
    return fields


def sparse_name(name: bytes) -> bytes:
    """The header name GNU tar gives a sparse 1.0 member, `%d/GNUSparseFile.%p/%f`, with 0
    for the pid (the stream stays reproducible): what a reader that ignores sparse sees."""
    head, sep, base = name.rpartition(b"/")
    return head + b"/GNUSparseFile.0/" + base if sep else b"GNUSparseFile.0/" + base


def encode_sparse_header(h: Header, realsize: int,
                         extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """The header blocks of a GNU sparse 1.0 member: H as for a regular file, but H.size
    counts the bytes that follow (the map, then the data regions) and REALSIZE is the file's.

    pax records GNU.sparse.major=1, minor=0, name (the real name) and realsize; the ustar
    name (or `path`) is sparse_name's. GNU.sparse.name comes after `path`, as tarfile
    wants it (the later of the two names the member); GNU tar and libarchive take the
    sparse name in this order too (tests/ops/test_tar_sparse.py restores long names in all
    three)."""
    return encode_header_general(h._replace(name=sparse_name(h.name)), (h.name, realsize),
                                 extra)


def encode_header_general(h: Header, sparse: tuple[bytes, int] | None = None,
                          extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """encode_header for any member: every field checked, pax records where needed.
    SPARSE: (real name, real size) of a GNU sparse 1.0 member (encode_sparse_header).
    EXTRA: more (keyword, value) pax records, last (extended attributes); their values are
    bytes as GNU tar writes them, which never makes the header hdrcharset=BINARY."""
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
    if sparse is not None:
        real_name, realsize = sparse
        records += [pax_record(b"GNU.sparse.major", b"1"),
                    pax_record(b"GNU.sparse.minor", b"0"),
                    pax_record(b"GNU.sparse.name", real_name),
                    pax_record(b"GNU.sparse.realsize", b"%d" % realsize)]
        binary |= not _is_utf8(real_name)
    if extra:
        records += [pax_record(key, value) for key, value in extra]
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


_PAX_BLOCK = bytes(_ustar(PAX_HEADER_NAME, XHDTYPE, 0o644, 0, 0, b"", b"", 0, 0, b"", 0, 0))
_PAX_FRONT = _PAX_BLOCK[:124]  # name, mode, uid, gid; then size and mtime (12 bytes each)
_PAX_BACK = _PAX_BLOCK[156:]  # after the checksum field
_PAX_SUM = sum(_PAX_FRONT) + sum(_PAX_BACK) + 8 * 32


def padding(size: int) -> bytes:
    """Zero bytes that complete a member's data to a whole block."""
    return bytes(-size % BLOCK)


class TarWriter:
    """Writes a tar stream to a binary file in large writes.

    Pieces are gathered as they come (headers, chunk data, padding: no copying) and go out
    in one writev(2) per ~1 MiB when the file has a descriptor, else joined in one write.
    """

    FLUSH_AT = 1 << 20
    MAX_PARTS = 512  # well under IOV_MAX (1024)

    def __init__(self, out) -> None:
        self.out = out
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.written = 0
        self.on_flush = None  # called with `written` after each write (a progress line)
        try:
            self.fd: int | None = out.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        if self.fd is not None:
            out.flush()  # whatever it holds goes first; from here on, only the descriptor
            _widen_pipe(self.fd, self.FLUSH_AT)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= self.FLUSH_AT or len(self.parts) >= self.MAX_PARTS:
            self.flush()

    def write_zeros(self, n: int) -> None:
        while n > 0:
            piece = min(n, len(ZEROS))
            self.write(ZEROS[:piece])
            n -= piece

    def flush(self) -> None:
        parts, size = self.parts, self.size
        if not parts:
            return
        self.parts, self.size = [], 0
        if self.fd is None:
            self.out.write(b"".join(parts))
        else:
            _writev_all(self.fd, parts, size)
        self.written += size
        if self.on_flush is not None:
            self.on_flush(self.written)

    def finish(self) -> None:
        """The end-of-archive marker (two zero blocks), then everything out."""
        self.write(END_OF_ARCHIVE)
        self.flush()
        self.out.flush()


ZEROS = memoryview(bytes(1 << 20))


def _widen_pipe(fd: int, size: int) -> None:
    """Let a pipe hold SIZE bytes (Linux: 64 KiB by default, 1 MiB allowed to anyone), so
    that one batch is one wake-up of the reader instead of sixteen. Best effort."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and hasattr(fcntl, "F_SETPIPE_SZ"):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass


def _writev_all(fd: int, parts: list, size: int) -> None:
    """writev PARTS (SIZE bytes in all) to FD, going on after a partial write."""
    n = os.writev(fd, parts)
    while n < size:
        if n <= 0:  # a blocking descriptor never takes nothing; do not spin on one that does
            raise OSError(errno.EIO, "write to the output took no bytes")
        size -= n
        i = 0
        while n >= len(parts[i]):  # drop the parts written whole, cut the partial one
            n -= len(parts[i])
            i += 1
        parts = [memoryview(parts[i])[n:], *parts[i + 1:]]
        n = os.writev(fd, parts)
