"""The names a save is given, handed to its main loop in batches: from a pipe or file
(a helper thread reads them), from a walk, and on a re-save less those borrowed unchanged.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterable
from typing import Any, Protocol


class Offering(Protocol):
    """What the unchanged-file feed needs of the save it feeds (ops/save.py's Saver)."""

    session: Any
    owners: Any
    stop_signal: int | None

    def drain(self, block: bool) -> None: ...

    def checkpoint(self, force: bool = False) -> None: ...

    def report_progress(self, final: bool = False) -> None: ...

END = object()


class FeedError:
    def __init__(self, error: BaseException) -> None:
        self.error = error


FEED_BATCH = 256  # names per queue item: a queue hand-off per name cost ~25% of a re-save


class Feed:
    """Input names handed from the reader thread to the main thread in batches. A batch
    still filling is taken early by get() when input stalls, so names written
    before a pause are saved during the pause. Order is kept: every hand-off, queued or
    taken, is counted under one lock; a partial take happens only with none in transit."""

    def __init__(self, paths: Iterable[bytes]) -> None:
        self.paths = paths
        self.queue: queue.Queue = queue.Queue(maxsize=4096 // FEED_BATCH)
        self.lock = threading.Lock()
        self.pending: list = []
        self.in_transit = 0  # batches taken from pending and not yet in the queue

    def start(self) -> None:
        threading.Thread(target=self.run, args=(self.paths,), daemon=True, name="names").start()

    def run(self, paths: Iterable[bytes]) -> None:
        try:
            for path in paths:
                with self.lock:
                    self.pending.append(path)
                    if len(self.pending) < FEED_BATCH:
                        continue
                    batch, self.pending = self.pending, []
                    self.in_transit += 1
                self._put(batch)
        except BaseException as e:  # handed to the main thread, raised there
            with self.lock:
                self.pending.append(FeedError(e))
        with self.lock:
            self.pending.append(END)
            batch, self.pending = self.pending, []
            self.in_transit += 1
        self._put(batch)

    def _put(self, batch: list) -> None:
        self.queue.put(batch)  # may wait for room (never under the lock)
        with self.lock:
            self.in_transit -= 1

    def get(self, timeout: float) -> list:
        """The next batch; a partial one when none came within TIMEOUT; [] if none."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            pass
        with self.lock:
            if self.in_transit or not self.queue.empty():
                return []  # a full batch is on its way: it comes first, take it next time
            batch, self.pending = self.pending, []
        return batch


class LocalFeed:
    """Names of a walk (walk.Walk), produced by the main thread itself when it asks for the
    next batch. A walk only makes local filesystem calls, so it never stalls the way a pipe
    does; without a helper thread the main thread never waits for the GIL after its own
    lstat and stat calls."""

    def __init__(self, paths: Iterable[bytes]) -> None:
        self.names = iter(paths)

    def start(self) -> None:
        pass

    def get(self, timeout: float) -> list:
        batch = list(itertools.islice(self.names, FEED_BATCH))
        if len(batch) < FEED_BATCH:
            batch.append(END)
        return batch


class Unchanged:
    """A re-save's feed: each batch of names is lstat'ed and offered to the session
    (SaveSession.offer), which records those unchanged since the latest save; the main
    loop only sees the others (its per-name steps cost as much again as the fast path
    itself). Batches of nothing but unchanged names are not handed on: the commits and
    progress are done here meanwhile."""

    def __init__(self, saver: Offering, feed: Feed | LocalFeed) -> None:
        self.saver = saver
        self.feed = feed

    def start(self) -> None:
        self.feed.start()

    def get(self, timeout: float) -> list:
        saver = self.saver
        offer = saver.session.offer
        owner_names = saver.owners.names
        lstat = os.lstat
        while True:
            batch = self.feed.get(timeout)
            offered = []  # (path, lstat, user, group)
            at = []  # their places in BATCH
            for i, path in enumerate(batch):
                if path.__class__ is bytes:  # not END or a FeedError
                    try:
                        st = lstat(path)
                    except OSError:
                        continue  # add() says what it is
                    user, group = owner_names(st.st_uid, st.st_gid)
                    offered.append((path, st, user, group))
                    at.append(i)
            if offered:
                keep = [True] * len(batch)
                for i, borrowed in zip(at, offer(offered), strict=True):
                    if borrowed:
                        keep[i] = False
                rest = list(itertools.compress(batch, keep))
            else:
                rest = batch
            if rest or not batch or saver.stop_signal is not None:
                return rest
            saver.drain(block=False)
            saver.checkpoint()
            saver.report_progress()
