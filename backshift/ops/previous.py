"""What earlier saves hold, for a re-save: one directory's entries at a time, a few kept.

A re-save asks for each name's entry in an earlier save. It fetches a whole directory's
entries at once (one query per directory, not per file) as plain tuples, and keeps a few
directories' worth: at most PREFETCH_ENTRIES entries in memory, whatever the tree size.
A directory with more than PREFETCH_MAX_ROWS entries or chunks is looked up file by file.
"""

from __future__ import annotations

import collections

from ..catalog import Catalog
from ..chunkstore import ChunkStore
from ..model import Version

PREFETCH_MAX_ROWS = 16384
PREFETCH_ENTRIES = 16384  # ~725 bytes each: ~12 MB

# An entry: a row of Catalog.entries_under: (path id, name, version id, mode, uid, gid,
# user, group, size, mtime_ns, ctime_ns, dev, ino, nlink, rdev, link target, content id,
# chunks, stored lengths, xattrs id). entry[3:15] is in Version's order, so a tuple of
# lstat's fields compares equal to it when nothing changed, without building a Version.
# chunks: the chunks' sha256s in lowercase hex (their file names): "" for none, one name, or
# a list of names; stored lengths: their files' sizes, None, one int or a list alike.
Entry = tuple


def entry_version(entry: Entry) -> Version:
    return Version(*entry[3:17], entry[19])


def entry_chunks(entry: Entry) -> tuple[list[str], list[int]]:
    """The entry's chunk names (sha256 in hex) and their stored lengths, in order."""
    chunks = entry[17]
    if not chunks:
        return [], []
    if isinstance(chunks, str):
        return [chunks], [entry[18]]
    return chunks, entry[18]


class PreviousEntries:
    """Entries of the directories in use, per earlier save; least recently used dropped."""

    def __init__(self, cat: Catalog) -> None:
        self.cat = cat
        # (save id, parent path id) -> {name: Entry}, or None for a directory too big
        self._cache: collections.OrderedDict[tuple[int, int], dict | None] = \
            collections.OrderedDict()
        self._entries = 0

    def directory(self, sid: int, parent_id: int) -> dict[bytes, Entry] | None:
        """The entries of directory PARENT_ID in save SID by name; None when too big."""
        key = (sid, parent_id)
        cache = self._cache
        try:
            entries = cache[key]
        except KeyError:
            pass
        else:
            cache.move_to_end(key)
            return entries
        entries = self.cat.entries_under(sid, parent_id, PREFETCH_MAX_ROWS)
        cache[key] = entries
        if entries is not None:
            self._entries += len(entries)
            while self._entries > PREFETCH_ENTRIES and len(cache) > 1:
                _key, old = cache.popitem(last=False)
                if old is not None:
                    self._entries -= len(old)
        return entries


# Contents found whole on disk during this save are remembered (a content shared by many
# files is checked once); the set is emptied when it reaches this size.
KNOWN_CONTENTS = 65536


class ContentPresence:
    """Whether every chunk of a content has a sound file on disk (a regular file of its
    recorded stored length), as the store finds it during this save (Store.chunk_test: one
    lstat per chunk)."""

    def __init__(self, store: ChunkStore) -> None:
        self.chunk_on_disk = store.chunk_test()
        self._known: set[int] = set()

    def whole(self, content_id: int, chunks: str | list[str] | None,
              stored: int | list[int] | None) -> bool:
        """CHUNKS: the content's chunk names (sha256 in hex), one name alone, or "" or None
        for none; STORED: their recorded stored lengths, in the same shape."""
        known = self._known
        if content_id in known:
            return True
        if chunks:
            on_disk = self.chunk_on_disk
            if chunks.__class__ is str:
                if not on_disk(chunks, stored):
                    return False
            else:
                for name, size in zip(chunks, stored, strict=True):
                    if not on_disk(name, size):
                        return False
        if len(known) >= KNOWN_CONTENTS:
            known.clear()
        known.add(content_id)
        return True
