"""Reading an original backshift 1.x save directory for import-legacy: its saves, their
entries directory by directory, and its chunk files, each read bounded and never through a
symlink (the directory is untrusted input; legacy.py parses what is read here)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from .. import chunkcodec
from .. import legacy as lg
from ..diskio import read_whole
from ..errors import LegacyDirInvalid
from ..model import MAX_CHUNK_LENGTH

Warn = Callable[[str], None]
MAX_SUMMARY_BYTES = 64 << 10  # a summary is three short lines; a longer file is damage


def list_legacy_ids(savedir: bytes, warn: Warn) -> list[lg.LegacyId]:
    """Backup ids with a summary, oldest first; unparsable names are warned about."""
    sums = os.path.join(savedir, b"summaries")
    if not os.path.isdir(sums) or not os.path.isdir(os.path.join(savedir, b"files")):
        raise LegacyDirInvalid(os.fsdecode(savedir))
    out = []
    for name in sorted(os.listdir(sums)):
        if name.endswith(b".temp"):
            continue
        try:
            out.append(lg.parse_id(name.decode("ascii")))
        except (UnicodeDecodeError, lg.LegacyFormatError) as e:
            warn(f"summaries/{os.fsdecode(name)}: skipped: {e}")
    out.sort(key=lambda i: (lg.time_ns(i.started), i.text))
    return out


def iter_entries(savedir: bytes, lid: str, warn: Warn) -> Iterator[tuple[bytes, lg.Record]]:
    """(absolute source path, record) of every entry of one legacy save, directory by
    directory (os.walk order; each DB is read, decoded and dropped in turn)."""
    top = os.path.join(savedir, b"files", os.fsencode(lid))
    for dirpath, dirnames, filenames in os.walk(top, onerror=None):
        dirnames.sort()
        if lg.ENTRIES not in filenames:
            continue
        rel = os.path.relpath(dirpath, top)
        comps = [] if rel == b"." else rel.split(b"/")
        directory = lg.db_dir_to_path(comps)
        db = os.path.join(dirpath, lg.ENTRIES)
        where = f"files/{lid}/{os.fsdecode(os.path.relpath(db, top))}"
        if directory is None:
            warn(f"{where}: skipped: directory names do not follow the dir- layout")
            continue
        try:
            body = _read_db(db)
            pairs = lg.parse_dohdbm(lg.decode_body(body) if body else b"")
        except (OSError, lg.LegacyFormatError) as e:
            warn(f"{where}: skipped (its entries are lost): {e}")
            continue
        for key, value in pairs:
            path = lg.join(directory, key)
            if not lg.valid_name(key):
                warn(f"{where}: entry {key!r} skipped: not a valid file name")
                continue
            try:
                rec = lg.parse_record(value)
            except lg.LegacyFormatError as e:
                warn(f"{os.fsdecode(path)}: skipped: {e}")
                continue
            yield path, rec


def read_legacy_chunk(source: bytes, length: int) -> tuple[bytes, str | None]:
    """(body, None) of the legacy chunk file SOURCE of a LENGTH-byte chunk, or (b"", why it
    cannot be used). Never through a symlink (the file itself is what gets linked), only a
    regular file, and never more than the longest body such a chunk can have."""
    if length > MAX_CHUNK_LENGTH:  # hostile metadata: a 4 GiB "chunk" is never read
        return b"", f"is damaged (its save gives it {length} bytes, more than any chunk holds)"
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", "is missing"
    except OSError as e:
        return b"", f"cannot be read ({e.strerror})"
    bound = chunkcodec.max_body(length)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", "is damaged (not a regular file)"
        body = read_whole(fd, st.st_size, bound) if st.st_size <= bound else None
        if body is None or len(body) > bound:
            size = max(os.fstat(fd).st_size, bound + 1)
            return b"", f"is damaged ({chunkcodec.too_long(size, length)})"
        return body, None
    except OSError as e:
        return b"", f"cannot be read ({e.strerror})"
    finally:
        os.close(fd)


def read_summary(savedir: bytes, lid: lg.LegacyId) -> lg.Summary:
    """The summary of the legacy save LID (OSError, LegacyFormatError)."""
    path = os.path.join(savedir, b"summaries", os.fsencode(lid.text))
    return lg.parse_summary(_read_bounded(path, MAX_SUMMARY_BYTES, "summary"))


def _read_db(path: bytes) -> bytes:
    """The body of a per-directory DB file, which decodes to at most MAX_DB_BYTES."""
    return _read_bounded(path, chunkcodec.max_body(lg.MAX_DB_BYTES),
                         f"database of at most {lg.MAX_DB_BYTES} bytes")


def _read_bounded(path: bytes, bound: int, what: str) -> bytes:
    """The bytes of the file PATH, at most BOUND of them: a longer file is LegacyFormatError
    ('longer than any WHAT'), found without reading more than BOUND + 1 bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = read_whole(fd, size, bound) if size <= bound else None
        if data is None or len(data) > bound:
            raise lg.LegacyFormatError(f"file is {max(size, bound + 1)} bytes, longer than "
                                       f"any {what}")
        return data
    finally:
        os.close(fd)
