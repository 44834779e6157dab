"""Path bytes: normalisation, the depth-first sort key, and lossless display escapes."""

from __future__ import annotations

SEP = b"/"
KEY_SEP = b"\x00"


class BadPath(ValueError):
    """A name that cannot be stored: empty, with NUL, or with '..' components."""


def normalize(name: bytes, cwd: bytes) -> bytes:
    """Make NAME absolute and normal: no '//', no '.' components, no trailing '/'.

    '..' is refused rather than folded: folding it lexically is wrong when a component is
    a symlink, and resolving it would store a path the user did not give.
    """
    if not name:
        raise BadPath("empty name")
    if b"\x00" in name:
        raise BadPath("name contains a NUL byte")
    if not name.startswith(SEP):
        name = cwd.rstrip(SEP) + SEP + name
    parts = [p for p in name.split(SEP) if p and p != b"."]
    if b".." in parts:
        raise BadPath("name contains a '..' component; give absolute names or run find from ./")
    return SEP + SEP.join(parts)


def sort_key(path: bytes) -> bytes:
    """The catalog key of an absolute normal PATH: '/' becomes NUL, root is empty.

    NUL sorts below every byte a name can hold, so a directory's whole subtree is the
    contiguous key range [key + NUL, key + 0x01) and ORDER BY key is depth-first order.
    """
    if path == SEP:
        return b""
    return path.replace(SEP, KEY_SEP)


def from_key(key: bytes) -> bytes:
    """The absolute path of a catalog key (inverse of sort_key)."""
    return key.replace(KEY_SEP, SEP) if key else SEP


def subtree_range(key: bytes) -> tuple[bytes, bytes]:
    """Half-open key range holding everything strictly below the directory with KEY."""
    return key + b"\x00", key + b"\x01"


def parent(path: bytes) -> bytes | None:
    """The parent of an absolute normal path, None for the root."""
    if path == SEP:
        return None
    head = path.rsplit(SEP, 1)[0]
    return head or SEP


def basename(path: bytes) -> bytes:
    return path.rsplit(SEP, 1)[-1] if path != SEP else b""


# gnulib quotearg's escape style, as GNU tar prints member names (tar -tf, -tvf)
C_ESCAPES = {7: b"\\a", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t",
             11: b"\\v", 92: b"\\\\"}
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)).replace(b"\\", b"")
_iswprint = None


def _printable(code: int) -> bool:
    """libc's iswprint in this process's LC_CTYPE (loaded only for names that need it)."""
    global _iswprint
    if _iswprint is None:
        import ctypes
        _iswprint = ctypes.CDLL(None).iswprint
    return bool(_iswprint(code))


def gnu_quote(raw: bytes, utf8: bool) -> bytes:
    """RAW as GNU tar prints a name: C escapes (\\n, \\t, \\\\ ...), octal \\ooo for other
    bytes, and, in a UTF-8 locale (UTF8), printable multibyte characters as they are."""
    if not raw.translate(None, _PRINTABLE_ASCII):
        return raw
    out = bytearray()
    for ch in raw.decode("utf-8" if utf8 else "ascii", "surrogateescape"):
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
            if utf8 and _printable(code):
                out += enc
            else:
                out += b"".join(b"\\%03o" % b for b in enc)
    return bytes(out)


_locale_utf8: bool | None = None


def locale_is_utf8() -> bool:
    """Whether the user's LC_CTYPE is UTF-8, as GNU tar (a C program) would find it.

    Python coerces a C or POSIX locale to C.UTF-8 at start-up (PEP 538) and puts
    LC_CTYPE=C.UTF-8 into its environment: under cron's empty environment it would then
    print names raw where tar prints octal. The environment the process started with
    (/proc/self/environ) tells the coercion apart from a C.UTF-8 the user chose."""
    global _locale_utf8
    if _locale_utf8 is None:
        import locale
        import os

        codeset = locale.nl_langinfo(locale.CODESET).upper().replace("-", "")
        _locale_utf8 = codeset == "UTF8"
        try:
            with open("/proc/self/environ", "rb") as f:
                start = dict(item.split(b"=", 1) for item in f.read().split(b"\0")
                             if b"=" in item)
        except OSError:
            start = None
        if start is not None and os.environ.get("LC_CTYPE") == "C.UTF-8" \
                and start.get(b"LC_CTYPE") != b"C.UTF-8" and not os.environ.get("LC_ALL"):
            # coerced: what would setlocale(LC_CTYPE, "") have given without it?
            real = start.get(b"LC_CTYPE") or start.get(b"LANG") or b""
            _locale_utf8 = _utf8_locale_name(real.decode("ascii", "replace"))
    return _locale_utf8


def use_locale_utf8(utf8: bool) -> None:
    """Escape as a UTF-8 locale would (or not) whatever this process's own locale says:
    `serve` prints names for a client, whose locale decides (as it would locally)."""
    global _locale_utf8
    _locale_utf8 = utf8


def _utf8_locale_name(name: str) -> bool:
    import locale

    if name in ("", "C", "POSIX"):
        return False
    current = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        return locale.nl_langinfo(locale.CODESET).upper().replace("-", "") == "UTF8"
    except locale.Error:
        return False  # a locale that does not exist: the C locale, for tar too
    finally:
        locale.setlocale(locale.LC_CTYPE, current)


def escape(raw: bytes, utf8: bool | None = None) -> str:
    """Printable, lossless text for bytes, as GNU tar prints names: C escapes for controls
    and '\\', octal \\ooo for other bytes; printable characters of a UTF-8 locale as they are.

    UTF8 None means the user's locale (locale_is_utf8); machine formats pass True so
    their text does not depend on it. A name can never smuggle terminal escapes into
    output (C1 controls are not printable either).
    """
    if utf8 is None:
        utf8 = locale_is_utf8()
    return gnu_quote(raw, utf8).decode("utf-8", "surrogateescape")


def unescape(text: str) -> bytes:
    """Inverse of escape()."""
    out = bytearray()
    i = 0
    n = len(text)
    simple = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b",
              "f": b"\f", "v": b"\v"}
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
            digits = text[i + 1:i + 4]
            if len(digits) == 3 and all(c in "01234567" for c in digits):
                out.append(int(digits, 8) & 0xFF)
                i += 4
                continue
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)
