"""Listing a save: the lines GNU tar -tf / -tvf print for the stream `backshift tar` makes.

The members come from the same planner as the tar stream (select.Planner), so the names,
hardlinks and refusals are the stream's. The text follows GNU tar 1.34 (src/list.c,
simple_print_header) byte for byte: the mode string with s/S/t/T, `user/group` from the
recorded names or numeric ids, a `user/group size` field whose width only grows (it starts
at 19), `major,minor` for devices, local `%Y-%m-%d %H:%M`, and names quoted as gnulib's
quotearg escape style does it in the current locale (C escapes, octal for the rest).

Text output of a whole save or one subtree takes a faster road to the same bytes
(write_lines): the catalog builds the lines (catalog.LISTING_BLOCK_VERBOSE), this module
checks and writes them a block at a time, and hands a row to the planner and TarLister
only when it is out of the ordinary; at the first row the planner would refuse or warn
about, the planner takes over the whole listing.
"""

from __future__ import annotations

import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from itertools import chain, islice
from queue import Empty, SimpleQueue

from .. import pathcodec
from ..catalog import Catalog
from ..model import TYPE_NAMES, type_of_mode
from . import tarstream as ts
from .select import (
    WHOLE_SAVE,
    DigestCheck,
    Entry,
    Planned,
    Planner,
    Problems,
    Selection,
    check_paths_exist,
    digest_check,
    key_problem,
    member_name_of_key,
)

TYPE_LETTERS = {
    ts.REGTYPE: b"-", ts.LNKTYPE: b"h", ts.SYMTYPE: b"l", ts.CHRTYPE: b"c",
    ts.BLKTYPE: b"b", ts.DIRTYPE: b"d", ts.FIFOTYPE: b"p",
}
C_ESCAPES = {7: b"\\a", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v",
             92: b"\\\\"}
PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but backslash
DATE_WIDTH = 16  # len("YYYY-MM-DD HH:MM")
COLUMNS = ["path", "type", "mode", "uid", "gid", "user", "group", "size", "mtime_ns",
           "link_target", "hardlink_to", "digest", "dev", "ino", "nlink", "rdev"]


def list_save(catalog: Catalog, save_id: int, sel: Selection,
              problems: Problems) -> Iterator[Planned]:
    """The members of the selection, as the tar stream would hold them, streaming; of a
    whole save, verified against its members digest at the end (CatalogDamaged)."""
    check_paths_exist(catalog, save_id, sel.paths)
    digest = digest_check(catalog, save_id, sel)
    planner = Planner(catalog, save_id, sel, problems, digest)
    try:
        yield from planner.members()
    finally:
        planner.close()
    if digest is not None:
        digest.verify()


# -- text ----------------------------------------------------------------------------------


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


# -- the fast road for text ----------------------------------------------------------------

BATCH_ROWS = 8192  # lines fetched, checked and written together (~1 MiB of -v text)
CHUNK_PATHS = 4096  # paths (of any save) per query of a long listing (~700 KiB of -v text)
FETCHERS = 2  # threads (and read-only connections) building the next chunks meanwhile
AHEAD = 2  # chunks given to each of them ahead of the one written
FETCHER_CACHE_KIB = 8192
# Bytes a plain line may hold: printable ASCII but backslash (what GNU tar's quoting leaves
# alone), newline, and NUL (the catalog's component separator, still in the name).
PLAIN_LINE_BYTES = bytes([0, 10, *range(0x20, 0x5C), *range(0x5D, 0x7F)])


def _fast_range(sel: Selection) -> tuple[bytes, bytes] | None:
    """The one key range a selection reads, when write_lines can take it."""
    if sel.globs or sel.excludes or sel.where is not None or not sel.recursive:
        return None
    if not sel.paths:
        return WHOLE_SAVE
    if len(sel.paths) == 1:
        key = pathcodec.sort_key(sel.paths[0])
        return key, key + b"\x01"
    return None


def write_lines(catalog: Catalog, save_id: int, sel: Selection, problems: Problems,
                verbose: bool, write: Callable[[bytes], object]) -> None:
    """Write what `tar -tf` (or -tvf) prints for the selection, in blocks of lines.

    One read transaction: `list` takes no lock, and the listing is cut into several
    queries, so without it an expire committing meanwhile would end it early, silently.
    A whole save's listing is verified against its members digest at the end."""
    with catalog.snapshot():
        digest = digest_check(catalog, save_id, sel)
        _write_lines(catalog, save_id, sel, problems, verbose, write, digest)
        if digest is not None:
            digest.verify()


def _write_lines(catalog: Catalog, save_id: int, sel: Selection, problems: Problems,
                 verbose: bool, write: Callable[[bytes], object],
                 digest: DigestCheck | None) -> None:
    check_paths_exist(catalog, save_id, sel.paths)
    lister = TarLister(verbose)
    planner = Planner(catalog, save_id, sel, problems, digest)
    try:
        members = planner.members()
        key_range = _fast_range(sel)
        if key_range is None:
            _write_members(members, lister, write)
            return
        # The planner emits the first row (for --dir: the path's parents and the path), so
        # the catalog's lines start below a member whose ancestors are checked.
        lo, hi = key_range
        first = None
        emitted = 0
        for m in members:
            write(lister.line(m.header))
            emitted += 1
            if lo == WHOLE_SAVE[0] or m.entry.key == lo:
                first = m
                break
        if first is None:
            return  # the planner listed everything
        if problems.warnings or problems.refused or not stat.S_ISDIR(first.entry.mode):
            _write_members(members, lister, write)
            return
        members.close()
        fast = _FastLines(catalog, save_id, planner, lister, verbose, write, digest)
        if not fast.run(first.entry.key + b"\0", hi, emitted):
            # a row the planner refuses or warns about: it lists again from the start,
            # and what is written already is skipped
            if digest is not None:
                digest.restart()
            again = Planner(catalog, save_id, sel, problems, digest)
            try:
                _write_members(again.members(), TarLister(verbose), write, skip=fast.emitted)
            finally:
                again.close()
    finally:
        planner.close()


def _write_members(members: Iterator[Planned], lister: TarLister,
                   write: Callable[[bytes], object], skip: int = 0) -> None:
    block = []
    for m in members:
        line = lister.line(m.header)
        if skip:
            skip -= 1
            continue
        block.append(line)
        if len(block) >= BATCH_ROWS:
            write(b"".join(block))
            block.clear()
    if block:
        write(b"".join(block))


class _Fetcher(threading.Thread):
    """Builds blocks (catalog.listing_block) on its own thread and read-only connection:
    SQLite runs the query without the GIL. The fetchers of a listing share one queue of
    jobs, (seq, lo, hi, width), and one of results, (seq, job, block, error): a fetcher
    takes the next job as soon as it is free, so a slow chunk does not hold up the others."""

    def __init__(self, catalog: Catalog, save_id: int, modes: bytes | None, records: bool,
                 jobs: SimpleQueue, results: SimpleQueue) -> None:
        super().__init__(name="list-chunk", daemon=True)
        self.catalog = catalog
        self.save_id = save_id
        self.modes = modes
        self.records = records
        self.jobs = jobs
        self.results = results
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            seq, lo, hi, width = job
            try:
                block = _with_entries(self.catalog, self.save_id, self.catalog.listing_block(
                    self.save_id, lo, hi, width, self.modes, self.records))
            except BaseException as e:  # noqa: BLE001 - handed to the listing thread
                self.results.put((seq, (lo, hi, width), None, e))
                return
            self.results.put((seq, (lo, hi, width), block, None))


def _with_entries(catalog: Catalog, save_id: int, block: tuple) -> tuple:
    """BLOCK (listing_block) as (lines, marks, rows, entries, records): with the entries of
    its flagged rows, {path_id: row}, fetched with the block, in one query, on the thread
    that fetched it (one query per flagged row on the listing thread cost ~0.2 ms each on
    a cold connection: 100 hard links, 20 ms); records None unless asked for."""
    marks = block[1]
    ids = [int(mark[1:]) for mark in marks.split(",")] if marks else []
    records = block[3] if len(block) > 3 else None
    return (*block[:3], catalog.entries_of_path_ids(save_id, ids) if ids else {}, records)


class _PlannerNeeded(Exception):
    """A row on the fast road that only the planner may list."""


class _FastLines:
    """Lines from the catalog; the planner's _plan and TarLister for the rare rows."""

    def __init__(self, catalog: Catalog, save_id: int, planner: Planner, lister: TarLister,
                 verbose: bool, write: Callable[[bytes], object],
                 digest: DigestCheck | None = None) -> None:
        self.catalog = catalog
        self.save_id = save_id
        self.planner = planner
        self.lister = lister
        self.verbose = verbose
        self.write = write
        self.digest = digest  # fed the records of every chunk's first block

    def run(self, lo: bytes, hi: bytes, emitted: int) -> bool:
        """Write every member in [lo, hi); False (and self.emitted) when the planner
        must take over.

        The range is cut into chunks of CHUNK_PATHS paths, each listed by one query that
        returns its lines as one block. FETCHERS threads, each with its own read-only
        connection in the same snapshot, build the next chunks while this thread writes
        the current one: a long listing uses every core. A chunk is built at the width
        known when it starts; should the width grow before its turn comes, it is built
        again. The blocks are written in order."""
        self.emitted = emitted
        self.modes = permission_strings() if self.verbose else None
        chunks = self._chunks(lo, hi)
        first = next(chunks, None)
        second = next(chunks, None)
        if second is None:  # short: one query, one thread
            return first is None or self._range(*first)
        others: list[Catalog] = []
        fetchers: list[_Fetcher] = []
        jobs: SimpleQueue = SimpleQueue()
        results: SimpleQueue = SimpleQueue()
        try:
            for _ in range(FETCHERS):
                others.append(Catalog.open(self.catalog.path, readonly=True))
                # a fetcher reads each page of its chunks about once: with 64 MiB of cache
                # each, list -v of 1,000,000 files peaked at 226 MB
                others[-1].limit_cache(FETCHER_CACHE_KIB)
            if not all(self._same_snapshot(other) for other in others):
                # a commit came in between: one thread, one snapshot
                return all(self._range(*chunk) for chunk in chain((first, second), chunks))
            todo = enumerate(chain((first, second), chunks))
            given = 0
            for seq, (c_lo, c_hi) in islice(todo, AHEAD * FETCHERS):
                jobs.put((seq, c_lo, c_hi, self.lister.ugswidth))
                given += 1
            fetchers = [_Fetcher(other, self.save_id, self.modes, self.digest is not None,
                                 jobs, results) for other in others]
            done: dict[int, tuple] = {}
            for seq in range(1 << 62):
                if seq == given:
                    return True
                while seq not in done:
                    got, job, block, error = results.get()
                    if error is not None:
                        raise error
                    done[got] = (job, block)
                (c_lo, c_hi, width), block = done.pop(seq)
                nxt = next(todo, None)
                if nxt is not None:
                    jobs.put((nxt[0], *nxt[1], self.lister.ugswidth))
                    given += 1
                if width != self.lister.ugswidth:
                    block = None  # built at a narrower width: build it again here
                if not self._range(c_lo, c_hi, block):
                    return False
            raise AssertionError("unreachable")
        finally:
            while True:  # drop the jobs not started (the listing may end early)
                try:
                    jobs.get_nowait()
                except Empty:
                    break
            for _ in fetchers:
                jobs.put(None)
            for fetcher in fetchers:
                fetcher.join()
            for other in others:
                other.close()

    def _same_snapshot(self, other: Catalog) -> bool:
        """Open a read transaction on OTHER; True when it sees this save as this thread's
        snapshot does, members included: the save is there and not running in both (a
        finished save's members never change; an expire removes the save row with them)."""
        other.begin_read()
        mine = self.catalog.get_save(self.save_id)
        theirs = other.get_save(self.save_id)
        return mine is not None and mine == theirs and mine.status != "running"

    def _chunks(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """[lo, hi) cut into chunks; the first ones smaller, so that writing starts sooner
        (CHUNK_PATHS / 4, / 2, then CHUNK_PATHS each)."""
        size = max(1, CHUNK_PATHS // 4)
        while lo is not None:
            cut = self.catalog.path_key_after(lo, hi, size)
            yield lo, (cut if cut is not None else hi)
            lo = cut
            size = min(size * 2, CHUNK_PATHS)

    def _range(self, lo: bytes, hi: bytes, block: tuple | None = None) -> bool:
        """Write the members in [lo, hi), from BLOCK (listing_block) when fetched already.
        The digest takes the records of the first block: the whole of [lo, hi)."""
        digest = self.digest
        while True:
            width = self.lister.ugswidth
            if block is None:
                block = _with_entries(self.catalog, self.save_id, self.catalog.listing_block(
                    self.save_id, lo, hi, width, self.modes, digest is not None))
            if digest is not None:
                digest.computed.block(block[4], block[2])
                digest = None
            restart = self._block(block, lo, hi, width)
            block = None
            if restart is True or restart is False:
                return restart
            lo = restart + b"\0"  # the width grew: on with the next key, at the new width

    def _block(self, block: tuple, lo: bytes, hi: bytes, width: int) -> bytes | bool:
        """Write one block; True when done, False (planner), or the key to go on after
        (the width grew)."""
        lines, marks, count, entries, _records = block
        if not count:
            return True
        if lines.translate(None, PLAIN_LINE_BYTES) or lines.count(b"\n") != count:
            return self._rows(lo, hi)  # a name tar quotes, or with a newline: row by row
        text = lines.replace(b"\0", b"/")
        if marks is None:
            self.write(text)
            self.emitted += count
            return True
        # Every block has a few flagged rows (hard links, a wider owner or size): their
        # places, empty lines, are found with find() and the plain lines between them go
        # out as slices of TEXT (splitting the block into its lines cost ~1 ms a block).
        out: list[bytes] = []
        start = 0  # where the next line not written yet begins in TEXT
        try:
            for mark in marks.split(","):
                # the next flagged row's place: the empty line at START, or after the
                # newline that ends a plain line
                stop = start if text.startswith(b"\n", start) \
                    else text.index(b"\n\n", start) + 1
                if stop > start:
                    out.append(text[start:stop])
                    self.emitted += text.count(b"\n", start, stop)
                path_id = int(mark[1:])
                stopped = self._flagged(out, path_id, mark[0], width, entries.get(path_id))
                if stopped is not None:
                    return stopped
                start = stop + 1
            if start < len(text):
                out.append(text[start:])
                self.emitted += text.count(b"\n", start)
            return True
        finally:
            self.write(b"".join(out))

    def _rows(self, lo: bytes, hi: bytes) -> bool:
        """Write the members in [lo, hi) from a query of one row each (listing_lines), for
        a block with lines Python must check one by one."""
        while True:
            width = self.lister.ugswidth
            cursor = self.catalog.listing_lines(self.save_id, lo, hi, width, self.modes)
            try:
                while batch := list(islice(cursor, BATCH_ROWS)):
                    restart = self._batch(batch, width)
                    if restart is not None:
                        break
                else:
                    return True
            except _PlannerNeeded:
                return False
            finally:
                cursor.close()
            if restart is False:
                return False
            lo = restart + b"\0"  # the width grew: on with the next key, at the new width

    def _batch(self, batch: list[tuple], width: int) -> bytes | bool | None:
        """Write one batch; the key to restart after (width grew), False (planner), None."""
        lines = [row[0] for row in batch]
        out: list[bytes] = []
        start = 0
        try:
            while start < len(lines):
                try:
                    stop = lines.index(None, start)  # the next row Python formats
                except ValueError:
                    stop = len(lines)
                if stop > start:  # plain rows: checked and converted as one block
                    block = b"".join(lines[start:stop])
                    if (block.translate(None, PLAIN_LINE_BYTES)
                            or block.count(b"\n") != stop - start):
                        block = b"".join(self._checked(batch[start:stop]))
                    else:
                        block = block.replace(b"\0", b"/")
                    out.append(block)
                    self.emitted += stop - start
                if stop == len(lines):
                    break
                _line, path_id, flag = batch[stop]
                stopped = self._flagged(out, path_id, flag, width)
                if stopped is not None:
                    return stopped
                start = stop + 1
            return None
        finally:
            self.write(b"".join(out))

    def _flagged(self, out: list[bytes], path_id: int, flag: str | None, width: int,
                 row: tuple | None = None) -> bytes | bool | None:
        """Append the line of a flagged row to OUT. False when the planner must list, the
        row's key when the width grew (what follows must be built again), else None."""
        planned = self._plan(path_id, flag, row)
        if planned is None:
            return False
        out.append(self.lister.line(planned.header))
        self.emitted += 1
        if self.lister.ugswidth != width:
            return planned.entry.key
        return None

    def _checked(self, rows: list[tuple]) -> Iterator[bytes]:
        """Lines of plain rows one by one: those GNU tar would quote, Python makes."""
        for line, path_id, _flag in rows:
            if line.count(b"\n") == 1 and not line.translate(None, PLAIN_LINE_BYTES):
                yield line.replace(b"\0", b"/")
            else:
                planned = self._plan(path_id, "p")
                if planned is None:
                    raise _PlannerNeeded
                yield self.lister.line(planned.header)

    def _plan(self, path_id: int, flag: str | None, row: tuple | None = None
              ) -> Planned | None:
        """The member of a row Python formats, or None when the planner must list. ROW:
        its entry, when fetched already."""
        if flag == "a":
            return None
        if row is None:
            row = self.catalog.entry_of_path_id(self.save_id, path_id)
        if row is None:
            return None
        e = Entry(*row)
        if flag == "d" and self._member_below(e.key):
            return None  # members beneath a non-directory: refused by the planner
        if key_problem(e.key) is not None:
            return None
        counts = self.problems_seen()
        planned = self.planner._plan(e, member_name_of_key(e.key))
        if planned is None or self.problems_seen() != counts:
            return None
        return planned

    def _member_below(self, key: bytes) -> bool:
        rows = self.catalog.entries_in_key_range(self.save_id, key + b"\0", key + b"\x01")
        try:
            return next(rows, None) is not None
        finally:
            rows.close()

    def problems_seen(self) -> tuple[int, int, int]:
        p = self.planner.problems
        return p.warnings, p.refused, p.damaged


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
        e.dev,
        e.ino,
        e.nlink,
        e.rdev,
    ]
