"""The lines GNU tar -tf / -tvf print for a member, byte for byte (GNU tar 1.34, src/list.c,
simple_print_header), for `list`.

The mode string with s/S/t/T, `user/group` from the recorded names or numeric ids, a
`user/group size` field whose width only grows (it starts at 19), `major,minor` for
devices, local `%Y-%m-%d %H:%M`, and names quoted as gnulib's quotearg escape style does it
in the current locale (C escapes, octal for the rest).
"""

from __future__ import annotations

import re
import time

from .. import pathcodec
from . import tarstream as ts

TYPE_LETTERS = {
    ts.REGTYPE: b"-", ts.LNKTYPE: b"h", ts.SYMTYPE: b"l", ts.CHRTYPE: b"c",
    ts.BLKTYPE: b"b", ts.DIRTYPE: b"d", ts.FIFOTYPE: b"p",
}
PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but backslash
DATE_WIDTH = 16  # len("YYYY-MM-DD HH:MM")


class Quoter:
    """gnulib quotearg's escape style (pathcodec.gnu_quote) in the user's real locale."""

    def __init__(self) -> None:
        self.utf8 = pathcodec.locale_is_utf8()

    def __call__(self, raw: bytes) -> bytes:
        if PLAIN.fullmatch(raw):
            return raw
        return pathcodec.gnu_quote(raw, self.utf8)


def permission_strings() -> bytes:
    """mode_string's nine letters for every mode & 0o7777, 9 bytes each, in mode order
    (the catalog cuts long lines' mode strings from it)."""
    def triplets(letter: bytes) -> tuple[list[bytes], list[bytes]]:
        rw = [(b"r" if b & 4 else b"-") + (b"w" if b & 2 else b"-") for b in range(8)]
        plain = [rw[b] + (b"x" if b & 1 else b"-") for b in range(8)]
        special = [rw[b] + (letter if b & 1 else letter.upper()) for b in range(8)]
        return plain, special

    user, group, other = triplets(b"s"), triplets(b"s"), triplets(b"t")
    return b"".join(user[s >> 2][u] + group[(s >> 1) & 1][g] + other[s & 1][o]
                    for s in range(8) for u in range(8) for g in range(8) for o in range(8))


def mode_string(typeflag: bytes, mode: int) -> bytes:
    """'drwxr-xr-x' with s/S for setuid/setgid and t/T for sticky, as ls and tar print."""
    chars = bytearray(TYPE_LETTERS.get(typeflag, b"?"))
    for shift, special, letter in ((6, 0o4000, b"s"), (3, 0o2000, b"s"), (0, 0o1000, b"t")):
        bits = (mode >> shift) & 7
        chars += b"r" if bits & 4 else b"-"
        chars += b"w" if bits & 2 else b"-"
        if mode & special:
            chars += letter if bits & 1 else letter.upper()
        else:
            chars += b"x" if bits & 1 else b"-"
    return bytes(chars)


class TarLister:
    """Formats members as `tar -tf` (verbose=False) or `tar -tvf` lines."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.quote = Quoter()
        self.ugswidth = 19  # GNU tar's initial width; grows with the widest line so far

    def line(self, h: ts.Header) -> bytes:
        name = self.quote(h.name)
        if not self.verbose:
            return name + b"\n"
        user = h.uname or b"%d" % h.uid
        group = h.gname or b"%d" % h.gid
        if h.typeflag in (ts.CHRTYPE, ts.BLKTYPE):
            size = b"%d,%d" % (h.devmajor, h.devminor)
        else:
            size = b"%d" % h.size
        pad = len(user) + 1 + len(group) + 1 + len(size)
        self.ugswidth = max(self.ugswidth, pad)
        # whole seconds toward zero, as GNU tar takes them from the pax mtime (-0.5 s is 0)
        sec = h.mtime_ns // 1_000_000_000 if h.mtime_ns >= 0 else -(-h.mtime_ns // 1_000_000_000)
        try:
            date = time.strftime("%Y-%m-%d %H:%M", time.localtime(sec)).encode()
        except (OverflowError, OSError, ValueError):
            date = b"%d" % sec
        out = (mode_string(h.typeflag, h.mode) + b" " + user + b"/" + group + b" "
               + size.rjust(self.ugswidth - pad + len(size)) + b" "
               + date.ljust(DATE_WIDTH) + b" " + name)
        if h.typeflag == ts.SYMTYPE:
            out += b" -> " + self.quote(h.linkname)
        elif h.typeflag == ts.LNKTYPE:
            out += b" link to " + self.quote(h.linkname)
        return out + b"\n"
