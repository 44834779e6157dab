"""Extended attributes: reading a file's, a set's canonical digest, POSIX ACL values as text,
and the pax records GNU tar and bsdtar restore them from."""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import struct

# A set of attributes: (name, value) pairs as raw bytes, sorted by name.
XattrSet = tuple[tuple[bytes, bytes], ...]

class XattrError(Exception):
    """Why a file's attributes could not be read (the save warns with it)."""


def read_xattrs(path: bytes) -> XattrSet:
    """Every extended attribute of PATH (never following a symlink) that this process can
    list and read, sorted by name; () when it has none. An attribute removed between the
    listing and the read is left out. XattrError when they cannot be read (EPERM, ENOTSUP);
    FileNotFoundError when the file is gone."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        raise XattrError(f"cannot list extended attributes: {e.strerror}") from None
    if not names:
        return ()
    out = []
    for name in sorted(os.fsencode(n) for n in names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue  # removed since the listing
            if e.errno == errno.ENOENT:
                raise
            raise XattrError(f"cannot read extended attribute "
                             f"{os.fsdecode(name)}: {e.strerror}") from None
        out.append((name, value))
    return tuple(out)


def set_digest(xattrs: XattrSet) -> bytes:
    """SHA-256 of the canonical encoding of a set: each name and value, sorted by name, as
    a 4-byte big-endian length and the bytes (a set is stored once under this digest)."""
    h = hashlib.sha256()
    for name, value in sorted(xattrs):
        h.update(struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value)
    return h.digest()


def is_text(value: bytes) -> bool:
    """Whether the xattrs view shows VALUE as text: UTF-8 without NUL."""
    if b"\0" in value:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- POSIX ACLs ------------------------------------------------------------------------------
# The kernel's binary form of system.posix_acl_access / _default (linux/posix_acl_xattr.h):
# a little-endian u32 version (2), then entries of u16 tag, u16 permissions, u32 id.

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
_ACL_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")
_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask",
         0x20: "other"}
_NAMED = {0x02, 0x08}


def acl_text(value: bytes, names: dict | None = None) -> bytes | None:
    """The text form of a binary POSIX ACL, as getfacl prints it and GNU tar writes it in
    SCHILY.acl.*: one `tag:qualifier:rwx` line per entry, users and groups by name (their
    number when the name is unknown here). None when VALUE is not a valid ACL."""
    if len(value) < 4 or (len(value) - 4) % _ACL_ENTRY.size:
        return None
    if struct.unpack_from("<I", value)[0] != _ACL_VERSION:
        return None
    cache = names if names is not None else {}
    lines = []
    for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[4:]):
        kind = _TAGS.get(tag)
        if kind is None:
            return None
        qualifier = _id_name(tag, ident, cache) if tag in _NAMED else ""
        rwx = ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")
        lines.append(f"{kind}:{qualifier}:{rwx}\n")
    return os.fsencode("".join(lines))


def _id_name(tag: int, ident: int, cache: dict) -> str:
    key = (tag, ident)
    name = cache.get(key)
    if name is None:
        try:
            name = (pwd.getpwuid(ident).pw_name if tag == 0x02 else grp.getgrgid(ident).gr_name)
        except (KeyError, OverflowError):
            name = str(ident)
        cache[key] = name
    return name


# -- pax records -----------------------------------------------------------------------------


def pax_keyword(name: bytes) -> bytes:
    """SCHILY.xattr.NAME with '%' and '=' escaped as GNU tar does (%25, %3D): a keyword
    ends at the first '='."""
    return b"SCHILY.xattr." + name.replace(b"%", b"%25").replace(b"=", b"%3D")


def pax_items(xattrs: XattrSet, names: dict | None = None) -> list[tuple[bytes, bytes]]:
    """The (keyword, value) pax records of a set, as GNU tar --xattrs --acls writes them:
    SCHILY.acl.access / .default (text) for the POSIX ACLs, then SCHILY.xattr.NAME for
    every attribute, the ACLs too, values as raw bytes."""
    out = []
    attrs = dict(xattrs)
    for name, keyword in ((ACL_ACCESS, b"SCHILY.acl.access"),
                          (ACL_DEFAULT, b"SCHILY.acl.default")):
        if name in attrs:
            text = acl_text(attrs[name], names)
            if text is not None:
                out.append((keyword, text))
    out += [(pax_keyword(name), value) for name, value in xattrs]
    return out
