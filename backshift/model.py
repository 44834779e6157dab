"""Plain data shared by every layer: frozen dataclasses, named tuples and small enumerations.

Version, ChunkRef and StoredChunk are named tuples: a save sends tens of thousands between
processes, and they unpickle and build faster than frozen dataclasses. Like a frozen
dataclass they are immutable, compare and hash by value; `_replace` stands for dataclasses.replace.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import NamedTuple

# File types as stored (derived from st_mode; kept as one letter, the tar -tv letter).
TYPE_FILE = "-"
TYPE_DIR = "d"
TYPE_SYMLINK = "l"
TYPE_FIFO = "p"
TYPE_CHAR = "c"
TYPE_BLOCK = "b"
TYPE_SOCKET = "s"

TYPE_NAMES = {
    TYPE_FILE: "file",
    TYPE_DIR: "dir",
    TYPE_SYMLINK: "symlink",
    TYPE_FIFO: "fifo",
    TYPE_CHAR: "chardev",
    TYPE_BLOCK: "blockdev",
    TYPE_SOCKET: "socket",
}


_TYPE_OF_FORMAT = {
    stat.S_IFREG: TYPE_FILE,
    stat.S_IFDIR: TYPE_DIR,
    stat.S_IFLNK: TYPE_SYMLINK,
    stat.S_IFIFO: TYPE_FIFO,
    stat.S_IFCHR: TYPE_CHAR,
    stat.S_IFBLK: TYPE_BLOCK,
    stat.S_IFSOCK: TYPE_SOCKET,
}


def type_of_mode(mode: int) -> str | None:
    """The one-letter type of an st_mode, None for a type backshift does not know."""
    return _TYPE_OF_FORMAT.get(stat.S_IFMT(mode))


# The longest chunk any repository holds: init's --chunk-max may go up to it (backshift 1.x
# made chunks of 4 MiB at most). A catalog that gives a chunk more is damaged or hostile:
# readers call that chunk corrupt instead of reading up to max_body of such a length.
MAX_CHUNK_LENGTH = 16 << 20


@dataclass(frozen=True)
class ChunkerParams:
    """Content-defined chunking parameters, recorded in the catalog at init."""

    algorithm: str = "fastcdc2020"
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    seed: int = 0


class Version(NamedTuple):
    """One metadata state of a path, as stored in the catalog's versions table."""

    mode: int
    uid: int
    gid: int
    user: bytes
    group: bytes
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    nlink: int
    rdev: int
    link_target: bytes | None
    content_id: int | None
    xattrs_id: int | None = None  # its extended attribute set; None: none

    @property
    def type(self) -> str | None:
        return type_of_mode(self.mode)


class ChunkRef(NamedTuple):
    """A chunk as a file content uses it: its sha256 and its uncompressed length."""

    sha256: bytes
    length: int


class StoredChunk(NamedTuple):
    """What storing one chunk did: its reference, its stored size, whether it was new, and
    whether a file found under its name was taken as stored (to be vetted: Saver.vet_found)."""

    ref: ChunkRef
    stored_length: int
    new: bool
    found: bool = False


@dataclass(frozen=True)
class SaveRow:
    """A save as listed by `backshift saves`."""

    id: int
    hostname: str
    subset: str
    started_ns: int
    finished_ns: int | None
    status: str
    files: int
    bytes: int
    bytes_read: int
    bytes_borrowed: int
    new_chunks: int
    new_bytes_stored: int
    warnings: int
    tool_version: str
    writer_host: str = ""
    writer_pid: int = 0


@dataclass
class SaveStats:
    """Counters of a running save; the summary printed at its end."""

    save_id: int = 0
    files: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_borrowed: int = 0
    bytes_borrowed: int = 0
    new_chunks: int = 0
    new_bytes_stored: int = 0
    warnings: int = 0
    elapsed_s: float = 0.0
    status: str = "running"
