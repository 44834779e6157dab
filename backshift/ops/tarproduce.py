"""The tar producer: members from the plan, each with its header (pax records for its
extended attributes, GNU sparse 1.0 for long runs of zeros) and its data (tardata.Producer:
verified chunks in stream order), sizes checked against the catalog's."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable

from .. import pathcodec
from ..xattrs import pax_items
from .tardata import Producer
from .tarsparse import sparse_plan
from .tarstream import (
    LNKTYPE,
    REGTYPE,
    TarWriter,
    encode_header,
    encode_header_general,
    encode_sparse_header,
)


class _Chunks:
    """The chunk rows of the selection's key ranges, taken member by member in key order.

    The plan emits every member that carries data in increasing key order (parents that
    come first are directories), so one streaming query beside it serves them all.
    """

    def __init__(self, catalog, save_id: int, ranges) -> None:
        self.catalog = catalog
        self.save_id = save_id
        self._rows = itertools.chain.from_iterable(
            catalog.chunks_in_key_range(save_id, lo, hi) for lo, hi in ranges)
        self._head = next(self._rows, None)

    def of(self, key: bytes) -> list[tuple[bytes, bytes, int, int]]:
        """(key, sha256, length, stored_length) of KEY's chunks, in order."""
        head = self._head
        rows = self._rows
        while head is not None and head[0] < key:
            head = next(rows, None)
        out = []
        while head is not None and head[0] == key:
            out.append(head)
            head = next(rows, None)
        self._head = head
        return out


class _XattrRecords:
    """The pax records of members' extended attribute sets (xattrs.pax_items), a few sets
    kept: most members share a handful of sets."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.sets: dict[int, list] = {}
        self.names: dict = {}  # ACL user and group names, looked up once

    def of(self, set_id: int) -> list[tuple[bytes, bytes]]:
        items = self.sets.get(set_id)
        if items is None:
            items = pax_items(self.catalog.xattrs_of_set(set_id), self.names)
            if len(self.sets) >= 1024:
                self.sets.clear()
            self.sets[set_id] = items
        return items


def write_members(members: Iterable, writer: TarWriter, chunks: _Chunks, store, problems,
                  workers: int = 0, sparse: bool = True,
                  xattrs: _XattrRecords | None = None, digest=None) -> int:
    """Write each planned member (select.Planned) with its data; return the member count.

    A chunk that is missing or damaged is replaced by zeros of its length, so the stream
    stays valid and every member has exactly the size its header declares; each case is
    reported with path and offset. A regular file whose size, content size and chunk
    lengths disagree is catalog damage: the stream stops there with CatalogDamaged (a crafted
    size must not stream zeros until the disk fills). SPARSE: a file with long runs of
    zeros goes out as a GNU sparse 1.0 member (sparse_plan). XATTRS: extended attributes go
    out in pax records, as GNU tar writes them; a hard-link member carries none (its group's
    first member does, as with GNU tar). DIGEST (digestcheck.DigestCheck): verified before the
    end-of-archive blocks, which a damaged save's stream never gets.
    """
    count = 0
    producer = Producer(writer, store, problems, workers)
    try:
        for e, h in members:
            extra = None
            if xattrs is not None and e.xattrs_id is not None and h.typeflag != LNKTYPE:
                extra = xattrs.of(e.xattrs_id)
            if h.typeflag == REGTYPE and (h.size or e.content_size):
                rows = chunks.of(e.key) if e.content_id else []
                if not (e.content_size == h.size == (rows[0][2] if len(rows) == 1 else
                                                     sum(row[2] for row in rows))):
                    _check_size(e, h.size, rows, chunks)
                plan = sparse_plan(h.size, rows) if sparse else None
                if plan is not None:
                    producer.put(encode_sparse_header(h._replace(size=plan.stored), h.size,
                                                      extra))
                    producer.sparse(e.key, h.size, rows, plan)
                else:
                    producer.put(encode_header_general(h, None, extra) if extra
                                 else encode_header(h))
                    producer.data(e.key, h.size, rows)
            else:
                producer.put(encode_header_general(h, None, extra) if extra
                             else encode_header(h))
            count += 1
        producer.finish()
    finally:
        producer.close()
    if digest is not None:
        digest.verify()
    writer.finish()
    return count


def _check_size(e, size: int, rows: list, chunks: _Chunks) -> None:
    """CatalogDamaged unless the member's SIZE is its content's and its chunks' (saves
    record them equal: a regular file's size is what was read)."""
    chunk_bytes = sum(row[2] for row in rows)
    if e.content_id is not None and e.content_size == size == chunk_bytes:
        return
    from .digestcheck import catalog_damaged

    what = (f"{pathcodec.escape(pathcodec.from_key(e.key))} has size {size:,} but its content "
            + ("is missing" if e.content_id is None else
               f"records {e.content_size:,} bytes in chunks of {chunk_bytes:,} bytes"))
    raise catalog_damaged(chunks.catalog, chunks.save_id, what)


def read_workers() -> int:
    """Threads that read large chunks: two (measured on 2 cores: the main thread plans and
    reads small chunks meanwhile); none on one core, where they could only add switches."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def tar_save(repo, save_id: int, sel, open_out, report, sparse: bool = True,
             xattrs: bool = True, progress=None) -> object:
    """Write the selection of a save as one pax tar stream; return its Problems.
    XATTRS: with the members' extended attributes and POSIX ACLs (--no-xattrs: without).
    PROGRESS(bytes written so far), when given, is called after each write (~1 MiB).

    OPEN_OUT() gives the binary file to write to; it is called only once the selection is
    known to be valid (paths in the save, --where accepted), so an error leaves no output.
    """
    from .digestcheck import catalog_damaged
    from .select import (
        Planner,
        Problems,
        check_paths_exist,
        digest_check,
        key_ranges,
        literal_globs,
    )

    sel = literal_globs(repo.catalog, save_id, sel)
    check_paths_exist(repo.catalog, save_id, sel.paths)
    problems = Problems(report)
    digest = digest_check(repo.catalog, save_id, sel)
    planner = Planner(repo.catalog, save_id, sel, problems, digest)
    try:
        writer = TarWriter(open_out())
        writer.on_flush = progress
        chunks = _Chunks(repo.catalog, save_id, key_ranges(repo.catalog, sel))
        write_members(planner.members(), writer, chunks, repo.store, problems, read_workers(),
                      sparse, _XattrRecords(repo.catalog) if xattrs else None, digest)
        problems.unmatched = planner.unmatched_globs()
    except (TypeError, OverflowError) as e:
        # a damaged page can hand back a value of another type (NULL or text where an
        # integer belongs): damage, named as such, never a traceback or a wrong member
        raise catalog_damaged(repo.catalog, save_id,
                              f"a member row holds a value of the wrong type ({e})") from e
    finally:
        planner.close()
    return problems
