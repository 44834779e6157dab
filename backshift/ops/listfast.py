"""The fast road of `list` text (listing.write_lines): the catalog builds the lines of a
whole save or one subtree (catalog.LISTING_BLOCK_VERBOSE), checked and written here a block
at a time, built ahead on threads with their own read-only connections in one snapshot.

The bytes are listformat.TarLister's: a row out of the ordinary (a hard link, a wider owner
or size, a name tar quotes) is formatted by the planner and TarLister, and at the first row
the planner would refuse or warn about, FastLines.run gives the listing back to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from itertools import chain, islice
from queue import Empty, SimpleQueue

from ..catalog import Catalog
from .digestcheck import DigestCheck
from .listformat import TarLister, permission_strings
from .select import Entry, Planned, Planner, key_problem, member_name_of_key

BATCH_ROWS = 8192  # lines fetched, checked and written together (~1 MiB of -v text)
CHUNK_PATHS = 4096  # paths (of any save) per query of a long listing (~700 KiB of -v text)
FETCHERS = 2  # threads (and read-only connections) building the next chunks meanwhile
AHEAD = 2  # chunks given to each of them ahead of the one written
FETCHER_CACHE_KIB = 8192
# Bytes a plain line may hold: printable ASCII but backslash (what GNU tar's quoting leaves
# alone), newline, and NUL (the catalog's component separator, still in the name).
PLAIN_LINE_BYTES = bytes([0, 10, *range(0x20, 0x5C), *range(0x5D, 0x7F)])


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


class FastLines:
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
