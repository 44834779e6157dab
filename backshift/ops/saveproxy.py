"""The client half of a remote save: SessionProxy stands in for SaveSession in the one
Saver and carries its calls to a SessionServer (ops/saveserver.py); the wire: ops/savewire.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from ..errors import (
    BackshiftError,
    RemoteProtocolError,
)
from ..model import ChunkerParams, SaveStats, StoredChunk, Version
from ..store import Store
from .reader import ReadBatch, ReadResult
from .savewire import (
    AHEAD_KEPT,
    ASKED,
    ASKED_BYTES,
    ASKED_TASKS,
    FLUSH_S,
    OPS_BATCH,
    PUT_BYTES,
    Channel,
    dec_version,
    enc_stat,
    enc_version,
    encode_op,
    entry_version,
    text_of,
)
from .session import Warn


def _staging_parent() -> str | None:
    """Where the readers' compressed bodies wait for their upload (each removed once sent,
    at most about max_in_flight_bytes in all): a memory filesystem when there is one (a
    disk's create and unlink cost more than the upload), else the temp directory."""
    for where in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if where and os.path.isdir(where) and os.access(where, os.W_OK | os.X_OK):
            return where
    return None


STAGING = "backshift-upload-"


def _remove_dead_staging(parent: str | None) -> None:
    """Remove the staging directories of remote saves whose process died (SIGKILL)."""
    where = parent or tempfile.gettempdir()
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        pid = name[len(STAGING):].partition("-")[0]
        if name.startswith(STAGING) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(where, name), ignore_errors=True)


def _read_temp(path: bytes, size: int) -> bytes:
    """The SIZE bytes of a reader's temp file (one read: no buffered file object)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        body = os.read(fd, size)
        while len(body) < size and (more := os.read(fd, size - len(body))):
            body += more
    finally:
        os.close(fd)
    if len(body) != size:
        raise RemoteProtocolError(f"the staged chunk {os.fsdecode(path)} holds {len(body)} "
                                  f"bytes, not {size}")
    return body


class _Borrowing:
    """What the Saver asks of session.borrower: whether there are candidates, the fast path."""

    def __init__(self, candidates: int, fast: bool) -> None:
        self.candidates = [None] * candidates
        self.fast = fast


class SessionProxy:
    """SaveSession's interface in the client, carried over CHANNEL to a SessionServer."""

    def __init__(self, channel: Channel, hostname: str, subset: str,
                 roots: list[bytes] | None, warn: Warn, batch_files: int = 20_000,
                 batch_seconds: float = 10.0, lock_wait_s: float = 0.0) -> None:
        self.channel = channel
        self.hostname = hostname
        self.subset = subset
        self.roots = roots
        self._warn_cb = warn
        self.batch_files = batch_files
        self.batch_seconds = batch_seconds
        self.lock_wait_s = lock_wait_s
        self.stats = SaveStats()
        self.estimate: int | None = None
        self.borrower = _Borrowing(0, False)
        self.chunker: ChunkerParams | None = None
        self.staging: bytes | None = None
        self._sink: Store | None = None
        self._zstd_level = 3
        self._ops: list = []
        self._next_token = -1
        self._open = False
        self._checkpoint_due = 0
        self._flushed = time.monotonic()
        # take()'s chunk questions in flight: (answer, shas asked, results, temp files)
        self._asked: deque[tuple[Future, list[bytes], list, list]] = deque()
        self._asked_bytes = 0
        self._uploaded: dict[bytes, int] = {}  # sha -> size, posted while questions were out
        self._stats_of = 0  # the request whose answer's stats were taken last
        # offered names not borrowed -> (path id, parent id, the version asked about, kept,
        # xattrs id, borrow's or reusable_version's answer or False): the offer's answers
        # ahead to Saver.add's questions
        self._ahead: dict[bytes, tuple] = {}

    # -- plumbing --

    def _call(self, op: str, header: dict, payload: bytes = b"") -> dict:
        self._flush_ops()
        answer, _ = self.channel.call(op, header, payload)
        self._take_answer(answer)
        return answer

    def _take_answer(self, answer: dict) -> None:
        for note in self.channel.take_notes():  # posted requests' warnings, older
            self._absorb(note)
        self._absorb(answer)

    def _absorb(self, answer: dict) -> None:
        for msg in answer.get("warnings") or ():
            self._warn_cb(msg)
        stats = answer.get("stats")
        rid = answer.get("id")
        if isinstance(rid, int):  # an offer's answer taken after later ones: older stats
            if rid < self._stats_of:
                stats = None
            else:
                self._stats_of = rid
        if isinstance(stats, dict):
            for name, value in stats.items():
                if name not in ("elapsed_s", "status") and hasattr(self.stats, name):
                    setattr(self.stats, name, value)

    def _post(self, call: list) -> None:
        self._ops.append(call)
        if len(self._ops) >= OPS_BATCH:
            self._flush_ops()

    def _flush_ops(self) -> None:
        self._settle()  # the chunks the calls name are uploaded first, their sizes known
        self._flushed = time.monotonic()
        if self._ops:
            ops, self._ops = [encode_op(op) for op in self._ops], []
            self.channel.post("save.ops", {}, json.dumps(ops, separators=(",", ":")).encode())

    def _token(self) -> int:
        token = self._next_token
        self._next_token -= 1
        return token

    # -- SaveSession's interface --

    @property
    def borrowing(self) -> bool:
        return bool(self.borrower.candidates)

    @property
    def sink(self) -> Store:
        """The staging store the readers write into, made when the first file is read (256
        directories made and removed: ~6 ms an unchanged re-save does not need)."""
        if self._sink is None:
            self.staging = os.fsencode(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-",
                                                        dir=_staging_parent()))
            Store.create_layout(self.staging)
            self._sink = Store(self.staging, zstd_level=self._zstd_level, detached=True)
        return self._sink

    def warn(self, msg: str) -> None:
        self.stats.warnings += 1
        self._warn_cb(msg)
        if self._open:
            self._post(["warn", 1])

    def ensure_txn(self) -> None:
        pass

    def open(self) -> None:
        answer = self._call("save.open", {
            "hostname": self.hostname, "subset": self.subset,
            "roots": None if self.roots is None else [text_of(r) for r in self.roots],
            "batch_files": self.batch_files, "batch_seconds": self.batch_seconds,
            "lock_wait": self.lock_wait_s})
        self._open = True
        self.stats.save_id = answer["save_id"]
        self.estimate = answer.get("estimate")
        self.borrower = _Borrowing(int(answer["candidates"]), bool(answer["fast"]))
        self.chunker = ChunkerParams(**answer["chunker"])
        self._zstd_level = int(answer["zstd_level"])
        _remove_dead_staging(_staging_parent())

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def offer(self, entries: list[tuple[bytes, os.stat_result, str, str]]) -> list[bool]:
        return self.offer_ahead(entries)()

    def offer_ahead(self, entries: list[tuple[bytes, os.stat_result, str, str]]
                    ) -> Callable[[], list[bool]]:
        """offer() sent now and answered later (ops/feed.py: Unchanged keeps several in
        flight, taken in order): the answer's getter. The gathered calls go out first."""
        payload = json.dumps([[text_of(p), enc_stat(st), text_of(u), text_of(g)]
                              for p, st, u, g in entries], separators=(",", ":")).encode()
        self._flush_ops()
        future = self.channel.ask("save.offer", {}, payload)

        def answer() -> list[bool]:
            reply, _ = self.channel.answer(future)
            self._take_answer(reply)
            borrowed = reply["borrowed"]
            if len(borrowed) != len(entries):
                raise RemoteProtocolError("the server answered an offer for another batch")
            ahead = self._ahead
            while len(ahead) > AHEAD_KEPT:  # names never asked about (vanished, skipped)
                del ahead[next(iter(ahead))]
            for i, path_id, parent_id, kept, xattrs_id, found in reply.get("ahead") or ():
                path, st, user, group = entries[i]
                ahead[path] = (path_id, parent_id, entry_version(st, user, group, xattrs_id),
                               kept, xattrs_id, found)
            return borrowed
        return answer

    def _ask(self, what: str, args) -> object:
        return self._call("save.ask", {"what": what, "args": args})["answer"]

    def locate(self, path: bytes) -> tuple[int | None, int | None]:
        known = self._ahead.get(path)
        if known is not None:
            return known[0], known[1]
        path_id, parent_id = self._ask("locate", [text_of(path)])
        return path_id, parent_id

    def _known_ahead(self, path: bytes, path_id, parent_id) -> tuple | None:
        known = self._ahead.get(path)
        return known if known is not None and known[:2] == (path_id, parent_id) else None

    def _name(self, path, path_id, parent_id, v) -> list:
        return [text_of(path), path_id, parent_id, enc_version(v)]

    def kept_xattrs(self, path: bytes, path_id: int | None, parent_id: int | None,
                    v: Version) -> tuple[bool, int | None]:
        if not self.borrowing:
            return False, None
        known = self._known_ahead(path, path_id, parent_id)
        if known is not None and (v.ino, v.ctime_ns) == (known[2].ino, known[2].ctime_ns):
            return known[3], known[4]  # what kept_xattrs looks at: the same
        kept, xattrs_id = self._ask("kept_xattrs", self._name(path, path_id, parent_id, v))
        return bool(kept), xattrs_id

    def xattr_set_id(self, xattrs) -> int:
        return self._ask("xattr_set_id", [[text_of(n), text_of(x)] for n, x in xattrs])

    def borrow(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version
               ) -> tuple[Version, int | None] | None:
        if not self.borrowing:
            return None
        known = self._known_ahead(path, path_id, parent_id)
        if known is not None and known[5] is not False and v == known[2]:
            del self._ahead[path]
            found = known[5]
            if found is not None:
                self._post(["counted", v.size])
                return dec_version(found[0]), found[1]
            return None
        found = self._ask("borrow", self._name(path, path_id, parent_id, v))
        return None if found is None else (dec_version(found[0]), found[1])

    def reusable_version(self, path: bytes, path_id: int | None, parent_id: int | None,
                         v: Version) -> int | None:
        if not self.borrowing:
            return None
        known = self._known_ahead(path, path_id, parent_id)
        if known is not None and known[5] is not False and v == known[2]:
            del self._ahead[path]
            return known[5]
        return self._ask("reusable_version", self._name(path, path_id, parent_id, v))

    # -- chunks --

    def take(self, result, pending: list, seen_existing: bool):
        """A reader task's RESULT, the question which of its chunks the repository lacks
        sent; the answer is settled (missing bodies uploaded, stored lengths set, its temp
        files here removed) before any session call naming them is posted."""
        results = [result] if not isinstance(result, list) else result
        shas = list(dict.fromkeys(c.ref.sha256 for r in results if isinstance(r, ReadResult)
                                  for c in r.chunks))
        if not shas:
            self.sink.discard(pending)
            return result
        try:
            future = self.channel.ask("save.missing", {},
                                      json.dumps([s.hex() for s in shas]).encode())
        except BaseException:
            self.sink.discard(pending)
            raise
        self._asked.append((future, shas, results, pending))
        self._ops.append(ASKED)  # its uploads go out here, between the calls around it
        self._asked_bytes += sum(p[3] for p in pending)
        while len(self._asked) > ASKED_TASKS or (self._asked_bytes > ASKED_BYTES
                                                 and len(self._asked) > 1):
            self._settle_one()
        return result

    def _settle(self) -> None:
        while self._asked:
            self._settle_one()

    def _settle_one(self) -> None:
        """The oldest question: the calls gathered before it posted, its answer awaited, the
        missing bodies posted. So uploads keep their place among the calls (a checkpoint
        between an upload and the record naming its chunk would lose the chunk's newness)."""
        at = next(i for i, op in enumerate(self._ops) if op is ASKED)
        before, self._ops = self._ops[:at], self._ops[at + 1:]
        if before:
            self.channel.post("save.ops", {}, json.dumps(
                [encode_op(op) for op in before], separators=(",", ":")).encode())
        future, shas, results, pending = self._asked.popleft()
        self._asked_bytes -= sum(p[3] for p in pending)
        try:
            answer, _ = self.channel.answer(future)
            self._take_answer(answer)
            self._upload(shas, answer["sizes"], results, pending)
        finally:
            self.sink.discard(pending)
            if not self._asked:  # every later question saw those uploads: answered by size
                self._uploaded.clear()

    def vet_found(self, results: list) -> set[bytes]:
        """read_here's reads (into the sink, in this thread): uploaded like take()'s."""
        pending, _seen = self.sink.take_pending()
        self.take(results if len(results) != 1 else results[0], pending, False)
        return set()

    def _upload(self, order: list[bytes], sizes: list, results: list, pending: list) -> None:
        """Post the bodies of ORDER's chunks the server lacks (SIZES None), a chunk posted
        for an earlier question that was in flight with this one once; RESULTS' chunks get
        their stored lengths, new for the first upload of each."""
        if len(sizes) != len(order):
            raise RemoteProtocolError("the server answered a chunk query for another batch")
        temps = {key: (temp, size) for key, temp, _final, size in pending}
        stored: dict[bytes, int] = {}
        lengths = {c.ref.sha256: c.ref.length for r in results if isinstance(r, ReadResult)
                   for c in r.chunks}
        batch: list[tuple[bytes, bytes]] = []
        batch_bytes = 0
        for sha, size in zip(order, sizes, strict=True):
            if size is None:
                size = self._uploaded.get(sha)  # the server had not seen it when it answered
            if size is not None:
                stored[sha] = size
                continue
            if sha not in temps:
                raise RemoteProtocolError(f"the repository lacks chunk {sha.hex()} and this "
                                          "client holds no body for it")
            body = _read_temp(*temps[sha])
            stored[sha] = -len(body)  # negative: uploaded now (new)
            self._uploaded[sha] = len(body)
            batch.append((sha, body))
            batch_bytes += len(body)
            if batch_bytes >= PUT_BYTES:
                self._put(batch, lengths)
                batch, batch_bytes = [], 0
        if batch:
            self._put(batch, lengths)
        for r in results:
            if isinstance(r, ReadResult):
                chunks = []
                for c in r.chunks:
                    size = stored[c.ref.sha256]
                    if size < 0:
                        stored[c.ref.sha256] = -size  # new once
                        chunks.append(StoredChunk(c.ref, -size, True))
                    else:
                        chunks.append(StoredChunk(c.ref, size, False))
                r.chunks[:] = chunks

    def _put(self, batch: list[tuple[bytes, bytes]], lengths: dict[bytes, int]) -> None:
        self.channel.post("save.put", {"shas": [s.hex() for s, _ in batch],
                                       "lengths": [lengths[s] for s, _ in batch],
                                       "sizes": [len(b) for _, b in batch]},
                          [b for _, b in batch])  # written one after the other, not joined

    def discard(self, pending: list) -> None:
        if self._sink is not None:
            self._sink.discard(pending)

    def discard_temps_of(self, pids: list[int]) -> None:
        if self._sink is not None:
            self._sink.discard_temps_of(pids)

    # -- recording --

    def contents_of_batch(self, batch: ReadBatch) -> None:
        rows = []
        for r in batch:
            if isinstance(r, ReadResult):
                r.content_id = self._token()
                rows.append([r.content_id, r])  # encoded when posted: sizes settled
        if rows:
            self._post(["contents", rows])
        batch.contents_known = True

    def store_content(self, v: Version, result: ReadResult) -> Version:
        token = result.content_id if result.content_id is not None else self._token()
        self._post(["store", token, enc_version(v), result])  # encoded when posted
        self.stats.files_read += 1
        self.stats.bytes_read += result.size
        return v._replace(size=result.size, content_id=token)

    def record(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version,
               version_id: int | None) -> None:
        self._ahead.pop(path, None)
        self._post(["record", text_of(path), path_id, parent_id, enc_version(v), version_id])
        self.stats.files += 1
        self._checkpoint_due += 1

    def checkpoint(self, force: bool = False) -> None:
        """The server decides when a batch is due; asked every OPS_BATCH calls or FORCEd."""
        if force or self._checkpoint_due >= 64:
            self._checkpoint_due = 0
            self._post(["checkpoint", force])
            now = time.monotonic()
            if force or now - self._flushed > FLUSH_S:  # the server sees it soon
                self._flush_ops()

    def finish(self, status: str) -> None:
        answer = self._call("save.finish", {"status": status})
        self.stats.status = status
        self.copied = answer.get("copied", True)

    def discard_empty(self, names_seen: int) -> None:
        self._call("save.finish", {"status": "complete", "empty": True,
                                   "names_seen": names_seen})

    def abandon(self, error: BaseException | None = None) -> None:
        """After an error: the server abandons the save (marks it interrupted) when told,
        or when the connection ends."""
        self._ops = []
        self._asked.clear()  # their temp files go with the staging directory
        self.stats.status = "interrupted"
        try:
            self.channel.call("save.abandon", {})
        except BackshiftError:
            pass


def run_remote_save(connect: Callable[[], Channel], opts, warn: Warn, *,
                    lock_wait_s: float = 0.0, progress=None, notice=None, **names_from):
    """ops/saverun.run_save for a repository behind CONNECT() (a Channel to its server): the
    connection opens, then the same Saver runs with a SessionProxy as its repository half;
    the reader processes are forked when the first file is read (no catalog lives in this
    process, and an unchanged re-save reads nothing). A SaveRun."""
    from .save import Saver
    from .saverun import drive_save

    @contextmanager
    def saver_in(readers) -> Iterator[Saver]:
        session = SessionProxy(connect(), opts.hostname, opts.subset, opts.roots, warn,
                               batch_files=opts.batch_files, batch_seconds=opts.batch_seconds,
                               lock_wait_s=lock_wait_s)
        saver = Saver(None, opts, warn, progress, readers, session=session)
        yield saver
        saver.copied = getattr(session, "copied", True)

    return drive_save(saver_in, None, opts, notice, names_from, lazy=True)
