"""Chunk reads ahead of a reader that goes through rows in order (check --read-data): a
window of store.read_ahead reads in flight in threads, so an object store's GETs overlap;
memory holds at most that many chunks. A store that reads ahead none is read inline."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ..model import ChunkRef


def read_ahead(store, rows: Iterable, chunk_of: Callable[[tuple], ChunkRef | None]
               ) -> Iterator[tuple[tuple, Future | None]]:
    """Each row of ROWS with the read of its chunk started (CHUNK_OF(row); None: no read),
    or None when the store reads inline. Its result() is the verified data, or raises what
    store.read raises."""
    n = store.read_ahead
    if not n:
        for row in rows:
            yield row, None
        return
    window: deque[tuple[tuple, Future | None]] = deque()
    with ThreadPoolExecutor(n, thread_name_prefix="read-ahead") as pool:
        try:
            for row in rows:
                ref = chunk_of(row)
                window.append((row, pool.submit(store.read, ref) if ref is not None else None))
                if len(window) > n:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:
            for _row, future in window:  # the caller stopped early: drop what is unread
                if future is not None:
                    future.cancel()
