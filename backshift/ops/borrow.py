"""Borrowing for a re-save: which earlier saves a file may borrow from, and the rules.

Borrower owns the candidate saves, their directory listings (PreviousEntries, a few kept),
the chunk presence checks and the rules: an unchanged, non-racy file whose chunk files
are sound on disk keeps its earlier content (and version row when nothing changed).
"""

from __future__ import annotations

import collections
import os
from itertools import chain
from typing import NamedTuple

from ..catalog import STAGE_ROW_VALUES, Catalog
from ..chunkstore import ChunkStore
from ..crashpoints import crashpoint
from ..model import Version
from ..pathcodec import basename

# A file whose mtime or ctime is this close to (or after) the start of the save that
# recorded it may have changed again within the filesystem's timestamp granularity after
# it was read: it is not trusted for borrowing (git's racy-git rule, borg's cmtime rule).
RACY_MARGIN_NS = 2_000_000_000

PREFETCH_MAX_ROWS = 16384
# Names the fast path did not borrow whose earlier versions were fetched with their batch
# (Borrower.ahead): the oldest dropped past this many (a name's questions come while its
# batch is handled, and its recording soon after: MAX_QUEUED in ops/save.py).
AHEAD_KEPT = 16384
PREFETCH_ENTRIES = 16384  # ~725 bytes each: ~12 MB


class PreviousEntry(NamedTuple):
    """A name's entry in an earlier save (a row of Catalog.entries_under, named)."""

    path_id: int
    name: bytes
    version_id: int
    # (mode, uid, gid, user, group, size, mtime_ns, ctime_ns, dev, ino, nlink, rdev): in
    # Version's order, so a tuple of lstat's fields compares equal when nothing changed
    stat_key: tuple
    link_target: bytes | None
    content_id: int | None  # None: not a regular file
    # the chunks' sha256s in lowercase hex (their file names): "" or None for none, one
    # name, or a list of names; stored: their files' sizes, None, one int or a list alike
    chunks: str | list[str] | None
    stored: int | list[int] | None
    xattrs_id: int | None

    def version(self) -> Version:
        return Version(*self.stat_key, self.link_target, self.content_id, self.xattrs_id)

    def chunk_lists(self) -> tuple[list[str], list[int]]:
        """The chunk names (sha256 in hex) and their stored lengths, in order."""
        chunks = self.chunks
        if not chunks:
            return [], []
        if isinstance(chunks, str):
            return [chunks], [self.stored]
        return chunks, self.stored


class PreviousEntries:
    """Entries of the directories in use, per earlier save; least recently used dropped."""

    def __init__(self, cat: Catalog) -> None:
        self.cat = cat
        # (save id, parent path id) -> {name: Entry}, or None for a directory too big
        self._cache: collections.OrderedDict[tuple[int, int], dict | None] = \
            collections.OrderedDict()
        self._entries = 0

    def directory(self, sid: int, parent_id: int) -> dict[bytes, PreviousEntry] | None:
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
        new = tuple.__new__  # no NamedTuple.__new__ call per entry
        rows = self.cat.entries_under(sid, parent_id, PREFETCH_MAX_ROWS)
        entries = None if rows is None else {
            name: new(PreviousEntry, (r[0], name, r[2], r[3:15], r[15], r[16], r[17], r[18],
                                      r[19]))
            for name, r in rows.items()}
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


_INT64 = 1 << 63


def _fits(row: list) -> bool:
    """Every number of a staged row fits an SQLite INTEGER (as ops/save.py _fits_catalog)."""
    numbers = row[1:4] + row[6:]
    return -_INT64 <= min(numbers) and max(numbers) < _INT64


def _same_metadata(a: Version, b: Version) -> bool:
    """Equal in everything but content_id (cheaper than dataclasses.replace + ==)."""
    return (a.mode == b.mode and a.mtime_ns == b.mtime_ns and a.ctime_ns == b.ctime_ns
            and a.size == b.size and a.ino == b.ino and a.dev == b.dev and a.uid == b.uid
            and a.gid == b.gid and a.nlink == b.nlink and a.rdev == b.rdev
            and a.user == b.user and a.group == b.group and a.link_target == b.link_target
            and a.xattrs_id == b.xattrs_id)


Found = tuple[int, Version, tuple[list[str], list[int]] | None]


class Borrower:
    """The borrowing rules over CANDIDATES, the earlier saves of the series (save id,
    started ns), newest first. LEGACY: those imported from backshift 1.x; ATTRLESS: those
    that recorded no extended attributes. REMEMBER(path, path id) learns directory ids."""

    def __init__(self, cat: Catalog, store: ChunkStore, candidates: list[tuple[int, int]],
                 legacy: set[int], attrless: set[int], remember, known_path_id) -> None:
        self.cat = cat
        self.candidates = candidates
        self.legacy = legacy
        self.attrless = attrless
        self.remember = remember
        self.known_path_id = known_path_id  # a directory's id, cached or looked up, or None
        self.previous = PreviousEntries(cat)
        self.presence = ContentPresence(store) if candidates else None
        # the fast path (unchanged): against the latest save, when it recorded attributes
        self.fast = bool(candidates) and candidates[0][0] not in attrless
        if candidates:
            self.latest, started_ns = candidates[0]
            self.trusted_before = started_ns - RACY_MARGIN_NS
        self._whole = 0  # contents the catalog's borrow_whole holds (about)
        # path -> (path id, parent id, {save id: Found}) of the names of recent batches the
        # fast path did not borrow, their versions in every candidate fetched with the batch
        # (match): the general path's questions about them take no query of their own
        self.ahead: dict[bytes, tuple[int, int | None, dict[int, Found]]] = {}

    def match(self, entries: list[tuple[bytes, os.stat_result, bytes, bytes]]
              ) -> tuple[list[bool], list[int] | None]:
        """The fast path of a re-save, for a batch of (path, lstat, user, group) at once
        (catalog/borrowing.py): which entries equal the latest save's in every field lstat
        gives, are not racy (but a directory) and have their chunk files sound on disk;
        (a flag per entry, the places in ENTRIES of the rows staged or None for all). The
        matches are left in the catalog's borrow_match table for the session to record;
        the others are left to the general path (which also tries the other candidates)."""
        values = list(chain.from_iterable([(
            b"" if path == b"/" else path.replace(b"/", b"\0"), st.st_mode, st.st_uid,
            st.st_gid, user, group, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev,
            st.st_ino, st.st_nlink, st.st_rdev) for path, st, user, group in entries]))
        cat = self.cat
        places = None
        try:
            cat.stage_offer(values)
        except OverflowError:  # a number beyond SQLite's 64 bits: never recorded, no match
            width = STAGE_ROW_VALUES
            places = [i for i in range(len(entries))
                      if _fits(values[i * width:(i + 1) * width])]
            cat.stage_offer([v for i in places for v in values[i * width:(i + 1) * width]])
        cat.match_offer(self.latest, self.trusted_before)
        chunks = cat.matched_chunks()  # of the contents not yet found whole in this save
        if chunks:
            sound = self.presence.chunk_on_disk
            bad = {cid for cid, name, stored in chunks if not sound(name, stored)}
            if bad:  # missing or unsound: the general path reads it afresh
                cat.drop_matches_of(bad)
        self._whole += cat.remember_whole()
        if self._whole > KNOWN_CONTENTS:
            cat.forget_whole()
            self._whole = 0
        crashpoint("borrow_after_match")
        unmatched = cat.unmatched_offer()
        if places is None:
            out = [True] * len(entries)
            for seq in unmatched:
                out[seq - 1] = False
        else:
            out = [False] * len(entries)
            for i in places:
                out[i] = True
            for seq in unmatched:
                out[places[seq - 1]] = False
        if unmatched:
            self.fetch_ahead(entries, places)
        return out, places

    def fetch_ahead(self, entries: list, places: list[int] | None) -> None:
        """The staged names of ENTRIES (PLACES: where the staged rows are in it, None: all)
        that did not match: their path and parent ids and earlier versions in every
        candidate save, with one query (Catalog.unmatched_previous), into self.ahead."""
        ahead = self.ahead
        while len(ahead) > AHEAD_KEPT:
            del ahead[next(iter(ahead))]
        new = tuple.__new__  # no NamedTuple.__new__ call per row
        for row in self.cat.unmatched_previous([sid for sid, _ in self.candidates]):
            seq = row[0]
            path = entries[seq - 1 if places is None else places[seq - 1]][0]
            known = ahead.get(path)
            if known is None or known[0] != row[1]:
                known = ahead[path] = (row[1], row[2], {})
            if row[3] is not None:
                known[2][row[3]] = (row[4], new(Version, row[5:]), None)

    def located(self, path: bytes) -> tuple[int, int | None] | None:
        """(PATH's id, its directory's) when its batch fetched them ahead, else None."""
        known = self.ahead.get(path)
        return None if known is None else known[:2]

    def path_id_hint(self, parent_id: int, path: bytes) -> int | None:
        """PATH's id from the latest save's listing of its directory, if there."""
        if not self.candidates:
            return None
        entries = self.previous.directory(self.latest, parent_id)
        if entries is not None:
            entry = entries.get(basename(path))
            if entry is not None:
                return entry.path_id
        return None

    def kept_xattrs(self, path: bytes, path_id: int | None, parent_id: int | None,
                    v: Version) -> tuple[bool, int | None]:
        """(True, the earlier version's attribute set id) when ctime is unchanged (setfattr,
        setfacl and setcap update ctime): no need to read them; (False, None) else."""
        for sid, started_ns in self.candidates:
            found = self.previous_version(sid, path, path_id, parent_id)
            if found is None:
                continue
            old = found[1]
            if old.ctime_ns == v.ctime_ns and old.ino == v.ino \
                    and v.ctime_ns < started_ns - RACY_MARGIN_NS and sid not in self.attrless:
                return True, old.xattrs_id
            break
        return False, None

    def borrow(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version
               ) -> tuple[Version, int | None] | None:
        """Reuse an earlier save's content for an unchanged file (size, mtime, ctime,
        inode): (its version, the version id to reuse or None), or None to read it."""
        for sid, started_ns in self.candidates:
            found = self.previous_version(sid, path, path_id, parent_id)
            if found is None:
                continue
            old_id, old, shas = found
            if (old.content_id is None or old.size != v.size or old.ino != v.ino
                    or old.mode != v.mode or not self.same_times(sid, old, v)):
                continue
            if max(v.mtime_ns, v.ctime_ns) >= started_ns - RACY_MARGIN_NS:
                continue  # racy: may have changed within the timestamp granularity
            if shas is None:
                shas = self.cat.chunk_files_of_content(old.content_id)
            if not self.presence.whole(old.content_id, shas[0], shas[1]):
                return None  # missing or unsound: read afresh, which stores it again
            if _same_metadata(v, old):  # the usual case: reuse the old version row as is
                return old, old_id
            return v._replace(content_id=old.content_id), None
        return None

    def same_times(self, sid: int, old: Version, v: Version) -> bool:
        """Equal mtime and ctime. A save imported from backshift 1.x holds the times as the
        original wrote them (repr of the st_mtime float, ~0.2 us resolution): compare the
        current times rounded the same way (legacy.legacy_time_ns), never approximately."""
        if old.mtime_ns == v.mtime_ns and old.ctime_ns == v.ctime_ns:
            return True
        if sid not in self.legacy:
            return False
        from ..legacy import legacy_time_ns  # decimal: only for imported saves
        return old.mtime_ns == legacy_time_ns(v.mtime_ns) and \
            old.ctime_ns == legacy_time_ns(v.ctime_ns)

    def reusable_version(self, path: bytes, path_id: int | None, parent_id: int | None,
                         v: Version) -> int | None:
        """The id of the latest earlier version of PATH when it equals V."""
        for sid, _ in self.candidates:
            found = self.previous_version(sid, path, path_id, parent_id)
            if found is not None:
                return found[0] if found[1] == v else None
        return None

    def previous_version(self, sid: int, path: bytes, path_id: int | None,
                         parent_id: int | None) -> Found | None:
        """(version id, version, its chunks' names (sha256 hex) and stored lengths or None
        if not fetched yet) of PATH in earlier save SID, if that save holds it (a PATH_ID
        of None: the catalog lacks the path, no save holds it)."""
        if path_id is None:
            return None
        known = self.ahead.get(path)
        if known is not None and known[0] == path_id:
            return known[2].get(sid)
        entries = (self.previous.directory(sid, parent_id)
                   if parent_id is not None else None)
        if entries is None:
            found = self.cat.version_in_save(sid, path_id)
            return None if found is None else (found[0], found[1], None)
        entry: PreviousEntry | None = entries.get(basename(path))
        if entry is None:
            return None
        return entry.version_id, entry.version(), entry.chunk_lists()
