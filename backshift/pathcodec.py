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


def member_name(path: bytes) -> bytes:
    """The tar member name of an absolute path: GNU tar strips the leading '/'."""
    return path.lstrip(SEP) or b"."


def escape(raw: bytes) -> str:
    """Printable, lossless text for bytes: backslash escapes for controls, '\\' and non-UTF-8.

    Valid UTF-8 printable characters stay as they are; anything else becomes \\xNN (or
    \\n, \\t, \\r, \\\\), so a name can never smuggle terminal escapes into output.
    """
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or (0x80 <= code < 0xA0):
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> bytes:
    """Inverse of escape()."""
    out = bytearray()
    i = 0
    n = len(text)
    simple = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
            if nxt == "x" and i + 3 < n:
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            if nxt == "u":
                out += chr(int(text[i + 2 : i + 6], 16)).encode("utf-8")
                i += 6
                continue
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)
