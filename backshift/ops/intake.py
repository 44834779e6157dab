"""Chunk files taken into the repository during a save: the readers' temp files adopted
into the store's durable batch, and chunk files found on disk vetted before they are used.

Locally the readers write chunk bodies into the store themselves (the chunk sink); a
remote save's uploaded bodies would land here the same way (see ops/session.py).
"""

from __future__ import annotations

from collections.abc import Callable

from ..catalog import Catalog
from ..errors import ChunkCorrupt, ChunkMissing
from ..model import StoredChunk
from ..store import Store
from .reader import ReadResult

REREAD = object()  # in place of a read result that met a damaged chunk file (take)
VETTED_MAX = 65536  # found chunk files verified in this save, remembered so none is read twice


def _not_new(result, again: set[bytes]):
    """RESULT (a ReadResult, or a read_batch's list) with the chunks of AGAIN marked not
    new: another reader stored the same bytes first (Store.adopt kept its temp file)."""
    def fix(r):
        if isinstance(r, ReadResult) and any(c.ref.sha256 in again for c in r.chunks):
            r.chunks[:] = [c._replace(new=False) if c.new and c.ref.sha256 in again else c
                           for c in r.chunks]
    if isinstance(result, list):
        for r in result:
            fix(r)
    else:
        fix(result)
    return result


class ChunkIntake:
    """The chunk files of one save's reads: adopted (take), found ones vetted (vet_found).
    ENSURE_TXN opens the session's write transaction (a stored length to correct)."""

    def __init__(self, cat: Catalog, store: Store, ensure_txn: Callable[[], None]) -> None:
        self.cat = cat
        self.store = store
        self.ensure_txn = ensure_txn
        self._vetted: set[bytes] = set()  # found chunk files verified sound (vet_found)

    def take(self, result, pending: list, seen_existing: bool):
        """A reader task's RESULT (a ReadResult, or a read_batch's list) once the temp files
        it wrote (PENDING) are adopted into the store's durable batch; each file that met
        a damaged chunk file replaced by REREAD (the client reads it again, storing that
        chunk afresh: see vet_found)."""
        again = self.store.adopt(pending, seen_existing)
        if again:
            result = _not_new(result, again)
        one = not isinstance(result, list)
        bad = self.vet_found([result] if one else result)
        if not bad:
            return result
        if one:
            return REREAD
        for i, r in enumerate(result):
            if isinstance(r, ReadResult) and any(c.ref.sha256 in bad for c in r.chunks):
                result[i] = REREAD
        return result

    def vet_found(self, results: list) -> set[bytes]:
        """The chunk files readers took as stored (found on disk, not written) that fail
        verification. A found file is trusted when the catalog records it with that very
        size (the borrow path's test); one the catalog does not know (an orphan: an
        interrupted save's leftover) or records with another size (another valid encoding,
        or damage) is decoded and hashed first. A sound one in another encoding gets its
        size recorded; a damaged one is stored again by the next put() (replace_files):
        never is it taken into this save. Their sha256s."""
        found: dict[bytes, StoredChunk] = {}
        vetted = self._vetted
        for r in results:
            if isinstance(r, ReadResult):
                for c in r.chunks:
                    if c.found and c.ref.sha256 not in vetted:
                        found[c.ref.sha256] = c
        if not found:
            return set()
        store = self.store
        rows = self.cat.chunk_sizes(list(found))
        bad: set[bytes] = set()
        for sha, c in found.items():
            row = rows.get(sha)
            if row is not None and row[1] == c.stored_length or store.is_pending(sha):
                continue
            try:
                size = store.verify_file(sha, c.ref.length)
            except (ChunkCorrupt, ChunkMissing):
                bad.add(sha)
                continue
            if row is not None and row[1] != size:
                self.ensure_txn()  # the session's write transaction
                self.cat.set_stored_length(sha, size)
            if len(vetted) >= VETTED_MAX:
                vetted.clear()
            vetted.add(sha)
        if bad:
            store.replace_files(bad)
        return bad
