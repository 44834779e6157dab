"""Listing a save: the lines GNU tar -tf / -tvf print for the stream `backshift tar` makes.

The members come from the same planner as the tar stream (select.Planner), so the names,
hardlinks and refusals are the stream's. The text follows GNU tar 1.34 (src/list.c,
simple_print_header) byte for byte: the mode string with s/S/t/T, `user/group` from the
recorded names or numeric ids, a `user/group size` field whose width only grows (it starts
at 19), `major,minor` for devices, local `%Y-%m-%d %H:%M`, and names quoted as gnulib's
quotearg escape style does it in the current locale (C escapes, octal for the rest).
"""

from __future__ import annotations

import ctypes
import locale
import re
import time
from collections.abc import Iterator

from ..catalog import Catalog
from ..model import TYPE_NAMES, type_of_mode
from . import tarstream as ts
from .select import Planned, Planner, Problems, Selection, check_paths_exist

TYPE_LETTERS = {
    ts.REGTYPE: b"-", ts.LNKTYPE: b"h", ts.SYMTYPE: b"l", ts.CHRTYPE: b"c",
    ts.BLKTYPE: b"b", ts.DIRTYPE: b"d", ts.FIFOTYPE: b"p",
}
C_ESCAPES = {7: b"\\a", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v",
             92: b"\\\\"}
PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but backslash
DATE_WIDTH = 16  # len("YYYY-MM-DD HH:MM")
COLUMNS = ["path", "type", "mode", "uid", "gid", "user", "group", "size", "mtime_ns",
           "link_target", "hardlink_to", "digest"]


def list_save(catalog: Catalog, save_id: int, sel: Selection,
              problems: Problems) -> Iterator[Planned]:
    """The members of the selection, as the tar stream would hold them, streaming."""
    check_paths_exist(catalog, save_id, sel.paths)
    planner = Planner(catalog, save_id, sel, problems)
    try:
        yield from planner.members()
    finally:
        planner.close()


# -- text ----------------------------------------------------------------------------------


class Quoter:
    """gnulib quotearg's escape style, for the LC_CTYPE this process runs under."""

    def __init__(self) -> None:
        self.utf8 = locale.nl_langinfo(locale.CODESET).upper().replace("-", "") == "UTF8"
        self.iswprint = ctypes.CDLL(None).iswprint if self.utf8 else None

    def __call__(self, raw: bytes) -> bytes:
        if PLAIN.fullmatch(raw):
            return raw
        out = bytearray()
        for ch in raw.decode("utf-8" if self.utf8 else "ascii", "surrogateescape"):
            code = ord(ch)
            if code < 0x80:
                if code in C_ESCAPES:
                    out += C_ESCAPES[code]
                elif 0x20 <= code < 0x7F:
                    out.append(code)
                else:
                    out += b"\\%03o" % code
            elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
                out += b"\\%03o" % (code - 0xDC00)
            else:
                enc = ch.encode("utf-8")
                if self.iswprint is not None and self.iswprint(code):
                    out += enc
                else:
                    out += b"".join(b"\\%03o" % b for b in enc)
        return bytes(out)


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
        sec = h.mtime_ns // 1_000_000_000
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


# -- json / csv ------------------------------------------------------------------------------


def record(m: Planned) -> list:
    """Every column of a member for json/csv (bytes are escaped losslessly by render)."""
    e, h = m.entry, m.header
    return [
        e.path,
        TYPE_NAMES.get(type_of_mode(e.mode) or "", "unknown"),
        e.mode & 0o7777,
        e.uid,
        e.gid,
        e.user,
        e.group,
        e.size,
        e.mtime_ns,
        e.link_target,
        b"/" + h.linkname.rstrip(b"/") if h.typeflag == ts.LNKTYPE else None,
        e.digest.hex() if e.digest is not None else None,
    ]
