"""Readers of the original backshift 1.x save directory formats (pure: bytes in, values out).

The formats read here: backup ids, `summaries/<id>`, the per-directory
"dohdbm" databases under `files/<id>/dir-.../entries` (base-255 numbers, compressed like a
chunk), the record format with its escaped owner/group/link_target fields, and chunk files.
Nothing here touches the repository; ops/import_legacy.py turns these values into saves.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from . import chunkcodec

DIR_PREFIX = b"dir-"
ENTRIES = b"entries"
MAX_DB_BYTES = 1 << 30  # a per-directory DB larger than this is refused as damaged

# The bytes the original writes as themselves followed by '_' (everything else is hex).
_PLAIN = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    b"`~!@#$%^&*()-_=+[{]}\\|;:\",<.>/?'"
)
_HEX = frozenset(b"0123456789abcdef")


class LegacyFormatError(ValueError):
    """Bytes that do not follow the original's format; the message says where."""


# -- backup ids and summaries -------------------------------------------------------------


@dataclass(frozen=True)
class LegacyId:
    text: str
    started: str  # "%.2f" start time as written in the id
    hostname: str
    subset: str


def parse_id(text: str) -> LegacyId:
    """Split a backup id: start time, host, subset, human time, random hex (by '_')."""
    fields = text.split("_")
    if len(fields) != 5 or not all(fields):
        raise LegacyFormatError(f"backup id {text!r} does not have 5 '_'-separated fields")
    started, host, subset, _human, rand = fields
    try:
        Decimal(started)
        int(rand, 16)
    except (InvalidOperation, ValueError):
        raise LegacyFormatError(f"backup id {text!r}: bad start time or random part") from None
    if not started[:1].isdigit():
        raise LegacyFormatError(f"backup id {text!r} does not start with a digit")
    return LegacyId(text, started, host, subset)


@dataclass(frozen=True)
class Summary:
    start_ns: int
    number_of_files: int
    finish_ns: int | None  # None: the backup never finished


def parse_summary(data: bytes) -> Summary:
    """`start_time F`, `number_of_files N`, `finish_time F|None` lines."""
    fields: dict[bytes, bytes] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(b" ")
        fields[key] = value.strip()
    try:
        start = time_ns(fields[b"start_time"].decode("ascii"))
        count = int(fields.get(b"number_of_files", b"0"))
        finish_text = fields.get(b"finish_time", b"None").decode("ascii")
        finish = None if finish_text == "None" else time_ns(finish_text)
    except (KeyError, UnicodeDecodeError, ValueError, LegacyFormatError) as e:
        raise LegacyFormatError(f"summary is not readable: {e}") from None
    return Summary(start, count, finish)


# -- numbers and times --------------------------------------------------------------------


def time_ns(text: str) -> int:
    """Seconds as the original wrote them (Python float repr) -> integer nanoseconds, exactly
    from the decimal text (float arithmetic would be off by up to a few hundred ns)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise LegacyFormatError(f"not a time: {text!r}") from None
    if not value.is_finite():
        raise LegacyFormatError(f"not a time: {text!r}")
    return int((value * 1_000_000_000).to_integral_value(ROUND_HALF_EVEN))


def legacy_time_ns(ns: int) -> int:
    """What time_ns() gives for the time the original would have recorded for a file whose
    timestamp is NS: CPython's st_mtime float is `sec + nsec * 1e-9` and the original wrote
    its repr. Borrowing from an imported save compares times through this function."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return time_ns(repr(sec + nsec * 1e-9))


def decode_base255(data: bytes, pos: int) -> tuple[int, int]:
    """One NUL-terminated base-255 number at POS (digit bytes are value + 1): (value, next)."""
    end = data.find(b"\0", pos)
    if end < 0 or end == pos:
        raise LegacyFormatError(f"number at offset {pos} is not NUL-terminated")
    n = 0
    for byte in data[pos:end]:
        n = n * 255 + byte - 1
    return n, end + 1


def encode_base255(n: int) -> bytes:
    """The inverse of decode_base255 (for tests and round trips)."""
    if n < 0:
        raise ValueError("negative")
    digits = []
    while True:
        n, d = divmod(n, 255)
        digits.append(d + 1)
        if n == 0:
            break
    return bytes(reversed(digits)) + b"\0"


# -- compressed bodies (chunks and DBs) ---------------------------------------------------


def decode_body(body: bytes, max_size: int = MAX_DB_BYTES) -> bytes:
    """Uncompress a chunk or DB file body by its 2-byte header; LegacyFormatError if bad."""
    try:
        return chunkcodec.decode(body, max_size=max_size)
    except chunkcodec.BodyError as e:
        raise LegacyFormatError(str(e)) from None


def parse_dohdbm(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of an uncompressed dohdbm database, in stored order."""
    if not data:
        return []  # the empty placeholder a crashed backup leaves
    count, pos = decode_base255(data, 0)
    pairs = []
    for _ in range(count):
        klen, pos = decode_base255(data, pos)
        key = data[pos:pos + klen]
        pos += klen
        vlen, pos = decode_base255(data, pos)
        value = data[pos:pos + vlen]
        pos += vlen
        if len(key) != klen or len(value) != vlen:
            raise LegacyFormatError("database is truncated")
        pairs.append((key, value))
    if pos != len(data):
        raise LegacyFormatError(f"{len(data) - pos} stray bytes after the last pair")
    return pairs


def encode_dohdbm(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The inverse of parse_dohdbm (for tests)."""
    out = [encode_base255(len(pairs))]
    for key, value in pairs:
        out += [encode_base255(len(key)), key, encode_base255(len(value)), value]
    return b"".join(out)


# -- records ------------------------------------------------------------------------------


def unescape(text: bytes) -> bytes:
    """Decode the original's field escape: 'X_' is the byte X, two hex digits any byte."""
    if len(text) % 2:
        raise LegacyFormatError(f"escaped field {text!r} has an odd length")
    out = bytearray()
    for i in range(0, len(text), 2):
        a, b = text[i], text[i + 1]
        if b == 0x5F and a in _PLAIN:  # '_'
            out.append(a)
        elif a in _HEX and b in _HEX:
            out.append(int(text[i:i + 2], 16))
        else:
            raise LegacyFormatError(f"escaped field {text!r}: bad pair at {i}")
    return bytes(out)


def escape(raw: bytes) -> bytes:
    """The original's escape (for tests)."""
    return b"".join(bytes([c]) + b"_" if c in _PLAIN else b"%02x" % c for c in raw)


@dataclass(frozen=True)
class Record:
    """One decoded metadata record (an entry of a per-directory DB)."""

    mode: int
    uid: int
    gid: int
    user: bytes  # b"" when the original stored the id's decimal (no name known)
    group: bytes
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    size: int
    rdev: int
    link_target: bytes | None
    chunks: tuple[tuple[bytes, int], ...]  # (sha256, length) in file order


_TYPE_FLAGS = {
    b"regular_file": stat.S_IFREG,
    b"directory": stat.S_IFDIR,
    b"symlink": stat.S_IFLNK,
    b"fifo": stat.S_IFIFO,
    b"character_device": stat.S_IFCHR,
    b"block_device": stat.S_IFBLK,
}


def parse_record(value: bytes) -> Record:
    """Decode `key value` lines (hash repeated per chunk) into a Record."""
    fields: dict[bytes, bytes] = {}
    chunks = []
    for line in value.split(b"\n"):
        if not line:
            continue
        key, _, val = line.partition(b" ")
        if key == b"hash":
            hexsha, dash, length = val.partition(b"-")
            try:
                sha = bytes.fromhex(hexsha.decode("ascii"))
                n = int(length)
            except ValueError:
                raise LegacyFormatError(f"bad hash line {line!r}") from None
            if len(sha) != 32 or not dash or n < 0:
                raise LegacyFormatError(f"bad hash line {line!r}")
            chunks.append((sha, n))
        else:
            fields[key] = val
    try:
        mode = int(fields[b"st_mode"])
        kind = stat.S_IFMT(mode)
        flagged = [t for f, t in _TYPE_FLAGS.items() if fields.get(f) == b"True"]
        if flagged != [kind]:
            raise LegacyFormatError(f"type flags {flagged} do not match st_mode {mode:o}")
        uid, gid = int(fields[b"st_uid"]), int(fields[b"st_gid"])
        rdev = 0
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            prefix = b"character" if kind == stat.S_IFCHR else b"block"
            rdev = os.makedev(int(fields[prefix + b"_major"]), int(fields[prefix + b"_minor"]))
        link_target = unescape(fields[b"link_target"]) if kind == stat.S_IFLNK else None
        return Record(
            mode=mode, uid=uid, gid=gid,
            user=_owner_name(unescape(fields.get(b"owner", b"")), uid),
            group=_owner_name(unescape(fields.get(b"group", b"")), gid),
            mtime_ns=time_ns(fields[b"st_mtime"].decode("ascii")),
            ctime_ns=time_ns(fields[b"st_ctime"].decode("ascii")),
            dev=int(fields.get(b"st_dev", 0)), ino=int(fields.get(b"st_ino", 0)),
            size=int(fields.get(b"st_size", 0)) if kind == stat.S_IFREG else 0,
            rdev=rdev, link_target=link_target,
            chunks=tuple(chunks) if kind == stat.S_IFREG else (),
        )
    except KeyError as e:
        raise LegacyFormatError(f"record lacks field {e.args[0].decode()!r}") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as e:
        if isinstance(e, LegacyFormatError):
            raise
        raise LegacyFormatError(f"record has a bad number: {e}") from None


def _owner_name(name: bytes, num: int) -> bytes:
    """The original stores an id without a name as its decimal text; we store no name."""
    return b"" if name == str(num).encode() else name


# -- paths --------------------------------------------------------------------------------


def valid_name(name: bytes) -> bool:
    """A single path component that is safe to store (no '/', NUL, '.', '..', empty)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def db_dir_to_path(components: list[bytes]) -> bytes | None:
    """`dir-a`, `dir-b` (below files/<id>) -> b"/a/b"; None if a component is not `dir-X`."""
    names = []
    for c in components:
        if not c.startswith(DIR_PREFIX) or not valid_name(c[len(DIR_PREFIX):]):
            return None
        names.append(c[len(DIR_PREFIX):])
    return b"/" + b"/".join(names)


def join(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name
