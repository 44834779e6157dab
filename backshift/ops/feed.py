"""The names a save is given, handed to its main loop in batches: from a pipe or file
(a helper thread reads them), from a walk, and on a re-save less those borrowed unchanged.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable
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
OFFERS_AHEAD = 4  # a remote re-save's offers in flight (Unchanged)


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
    progress are done here meanwhile. A session that answers offers later (a remote one's
    offer_ahead) has up to OFFERS_AHEAD batches offered, settled in order: the round
    trips overlap with the lstats of the next batches."""

    def __init__(self, saver: Offering, feed: Feed | LocalFeed) -> None:
        self.saver = saver
        self.feed = feed
        self.offered: collections.deque = collections.deque()  # (batch, places, answer)
        self.ended = False  # END or an error was fetched: nothing more to offer

    def start(self) -> None:
        self.feed.start()

    def _offer(self, batch: list, ask) -> None:
        owner_names = self.saver.owners.names
        lstat = os.lstat
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
            else:
                self.ended = True
        self.offered.append((batch, at, ask(offered) if offered else None))

    def get(self, timeout: float) -> list:
        saver = self.saver
        session = saver.session
        offer_ahead = getattr(session, "offer_ahead", None)  # a remote session's
        ask, ahead = ((offer_ahead, OFFERS_AHEAD) if offer_ahead is not None
                      else (_answered_now(session.offer), 1))
        while True:
            while len(self.offered) < ahead and not self.ended:
                batch = self.feed.get(timeout if not self.offered else 0.01)
                if not batch:
                    break
                self._offer(batch, ask)
            if not self.offered:
                return []  # the input is slow
            batch, at, answer = self.offered.popleft()
            if answer is not None:
                keep = [True] * len(batch)
                for i, borrowed in zip(at, answer(), strict=True):
                    if borrowed:
                        keep[i] = False
                rest = list(itertools.compress(batch, keep))
            else:
                rest = batch
            if rest or saver.stop_signal is not None:
                return rest
            saver.drain(block=False)
            saver.checkpoint()
            saver.report_progress()


def _answered_now(offer):
    """A session's OFFER (answered at once) as offer_ahead: the answer's getter."""
    def ask(entries: list) -> Callable[[], list[bool]]:
        out = offer(entries)
        return lambda: out
    return ask
