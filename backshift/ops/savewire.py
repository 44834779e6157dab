"""A save into an ssh:// repository: the session calls of ops/session.py carried as
requests, so the one Saver (ops/save.py) drives a SaveSession running in `backshift serve`.

SessionProxy (client) stands in for SaveSession in the Saver; SessionServer (server) runs
the real SaveSession on the repository host. Between them a Channel (remote/client.py):
call() waits for its answer, post() does not (answers come back in order; an error of a
posted request is raised by the next call). What crosses the wire:

- offer(entries): a batch of lstats per request, the borrow decisions come back per batch.
- record/store_content/contents_of_batch/warn/checkpoint: no answer needed. They are
  gathered and posted a batch at a time ("save.ops"), in order; a content id the server
  has not chosen yet travels as a token (a negative id) the server maps to its own.
- chunks: the readers write compressed bodies into a staging store on the client (a temp
  directory, never flushed); take() asks which chunks the repository lacks ("save.missing",
  one request per reader task) and goes on: the answers are settled later, in order (before
  the gathered calls that name those chunks are posted), and only the missing bodies are
  posted ("save.put", binary payloads). So the readers' results do not wait a round trip
  each behind the calls the server is still recording.
  The server decodes each body and checks its SHA-256 against its name before it is added
  to the store's durable batch: a bad body fails the save (ChunkRejected), nothing of it
  is named. The server decides every stored length and whether a chunk is new; a chunk a
  record names that it neither has nor received fails the save too.
- a first save (no earlier save to borrow from) answers locate/kept_xattrs/borrow/
  reusable_version here without asking; a re-save asks per name for the names offer() did
  not borrow (the changed ones: few).

Arguments are encoded as JSON (bytes as latin-1 text, sha256s as hex): never pickled, a
hostile client must not run code on the repository host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from .. import chunkcodec
from ..errors import (
    BackshiftError,
    ChunkRejected,
    RemoteProtocolError,
)
from ..model import ChunkerParams, ChunkRef, SaveStats, StoredChunk, Version
from ..store import Store
from .reader import ReadBatch, ReadResult
from .session import SaveSession, Warn

OPS_BATCH = 512  # session calls gathered into one posted request
PUT_BYTES = 8 << 20  # chunk bodies per upload request, at most
FLUSH_S = 0.5  # gathered session calls wait this long at most (a checkpoint is due)
ASKED_TASKS = 8  # reader tasks whose chunk question is in flight, at most, before the
ASKED_BYTES = 64 << 20  # oldest is settled; and their compressed bodies waiting here


class Channel(Protocol):
    def call(self, op: str, header: dict, payload: bytes = b"") -> tuple[dict, bytes]: ...

    def ask(self, op: str, header: dict, payload: bytes = b"") -> Future: ...

    def answer(self, future: Future) -> tuple[dict, bytes]: ...

    def post(self, op: str, header: dict, payload: bytes = b"") -> None: ...

    def take_notes(self) -> list[dict]: ...


# -- encoding -------------------------------------------------------------------------------


def _b(data: bytes | None) -> str | None:
    return None if data is None else data.decode("latin-1")


def _u(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1")


def enc_version(v: Version) -> list:
    return [v.mode, v.uid, v.gid, _b(v.user), _b(v.group), v.size, v.mtime_ns, v.ctime_ns,
            v.dev, v.ino, v.nlink, v.rdev, _b(v.link_target), v.content_id, v.xattrs_id]


def dec_version(row: list) -> Version:
    if not isinstance(row, list) or len(row) != 15:
        raise RemoteProtocolError("the client sent a malformed version")
    return Version(row[0], row[1], row[2], _u(row[3]), _u(row[4]), row[5], row[6], row[7],
                   row[8], row[9], row[10], row[11], _u(row[12]), row[13], row[14])


def enc_stat(st: os.stat_result) -> list:
    return [st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


def dec_stat(row: list) -> os.stat_result:
    mode, ino, dev, nlink, uid, gid, size, mtime_ns, ctime_ns, rdev = row
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, 0, mtime_ns // 10**9,
                           ctime_ns // 10**9),
                          {"st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns, "st_rdev": rdev})


def enc_result(r: ReadResult) -> list:
    return [r.size, r.digest.hex(), [[c.ref.sha256.hex(), c.ref.length, c.stored_length,
                                      c.new] for c in r.chunks], r.changed, r.content_id]


def dec_result(row: list) -> ReadResult:
    size, digest, chunks, changed, content_id = row
    return ReadResult(size, bytes.fromhex(digest),
                      [StoredChunk(ChunkRef(bytes.fromhex(sha), length), stored, bool(new))
                       for sha, length, stored, new in chunks], changed, content_id)


_ASKED = ["asked"]  # the place of a chunk question among the gathered calls (not sent)


def _encode_op(call: list) -> list:
    """A gathered session call as it is posted: its read results encoded now."""
    if call[0] == "store":
        return [*call[:3], enc_result(call[3])]
    if call[0] == "contents":
        return ["contents", [[token, enc_result(r)] for token, r in call[1]]]
    return call


def _stats_dict(stats: SaveStats) -> dict:
    return dataclasses.asdict(stats)


# -- the server half ------------------------------------------------------------------------


class SessionServer:
    """Runs one remote save's SaveSession on the repository host (in `backshift serve`).

    OPEN(hostname, subset, roots, batch options, lock_wait) -> (Repository context manager)
    opens the repository for writing; AFTER_COMPLETE(repo) runs after a complete save (the
    catalog copy), as a local save does."""

    def __init__(self, open_repo: Callable, after_complete: Callable | None = None) -> None:
        self.open_repo = open_repo
        self.after_complete = after_complete
        self.context = None
        self.repo = None
        self.session: SaveSession | None = None
        self.failed: BackshiftError | None = None
        self.done = False
        self.warnings: list[str] = []
        self.tokens: dict[int, int] = {}  # the client's content tokens -> content ids
        self.known: dict[bytes, tuple[int, bool]] = {}  # sha -> (stored length, new) since
        # the last commit: answered by missing() or uploaded

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def handle(self, op: str, header: dict, payload: bytes) -> tuple[dict, bytes]:
        """Answer one save request; any error fails the whole save (abandoned, interrupted)."""
        if self.failed is not None:
            raise self.failed
        if op != "save.open" and self.session is None:
            raise RemoteProtocolError(f"{op} before save.open")
        try:
            result = getattr(self, "op_" + op.removeprefix("save."))(header, payload)
        except AttributeError:
            raise RemoteProtocolError(f"unknown request {op!r}") from None
        except BackshiftError as e:
            self.fail(e)
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            error = RemoteProtocolError(f"the client sent a malformed {op} ({e})")
            self.fail(error)
            raise error from None
        except BaseException as e:
            self.fail(e)
            raise
        answer = {"warnings": self.warnings} if self.warnings else {}
        self.warnings = []
        if self.session is not None:
            answer["stats"] = _stats_dict(self.session.stats)
        answer.update(result[0])
        return answer, result[1]

    def fail(self, error: BaseException | None) -> None:
        """The save cannot go on: abandon it (interrupted), release the repository."""
        if isinstance(error, BackshiftError) and self.failed is None:
            self.failed = error
        elif self.failed is None:
            self.failed = RemoteProtocolError("the save failed on the server")
        self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        """The client went away or the save ended: abandon an unfinished save, release."""
        session, self.session = self.session, None
        if session is not None:
            try:
                if not self.done and session.stats.save_id:
                    session.abandon(error)
            finally:
                session.close()
        context, self.context = self.context, None
        if context is not None:
            context.__exit__(None, None, None)

    # -- the calls --

    def op_open(self, h: dict, _p: bytes) -> tuple[dict, bytes]:
        if self.context is not None:
            raise RemoteProtocolError("save.open twice")
        hostname, subset = h["hostname"], h["subset"]
        if not isinstance(hostname, str) or not isinstance(subset, str):
            raise RemoteProtocolError("save.open needs a hostname and a subset")
        roots = h.get("roots")
        roots = None if roots is None else [_u(r) for r in roots]
        self.context = self.open_repo(float(h.get("lock_wait") or 0.0))
        self.repo = repo = self.context.__enter__()
        session = SaveSession(repo, hostname, subset, roots, self._warn,
                              batch_files=int(h["batch_files"]),
                              batch_seconds=float(h["batch_seconds"]))
        session.open()
        self.session = session
        borrower = session.borrower
        return {"save_id": session.stats.save_id, "candidates": len(borrower.candidates),
                "fast": borrower.fast, "estimate": session.estimate,
                "chunker": dataclasses.asdict(repo.chunker),
                "zstd_level": repo.store.zstd_level}, b""

    def op_offer(self, _h: dict, p: bytes) -> tuple[dict, bytes]:
        entries = [(_u(path), dec_stat(st), _u(user), _u(group))
                   for path, st, user, group in json.loads(p)]
        return {"borrowed": self.session.offer(entries)}, b""

    def _name_args(self, row: list):
        path, path_id, parent_id, v = row
        return _u(path), path_id, parent_id, dec_version(v)

    def op_ask(self, h: dict, _p: bytes) -> tuple[dict, bytes]:
        """One per-name question of the general path (a re-save's changed names)."""
        s = self.session
        what, args = h["what"], h["args"]
        if what == "locate":
            return {"answer": list(s.locate(_u(args[0])))}, b""
        if what == "kept_xattrs":
            return {"answer": list(s.kept_xattrs(*self._name_args(args)))}, b""
        if what == "borrow":
            found = s.borrow(*self._name_args(args))
            return {"answer": None if found is None
                    else [enc_version(found[0]), found[1]]}, b""
        if what == "reusable_version":
            return {"answer": s.reusable_version(*self._name_args(args))}, b""
        if what == "xattr_set_id":
            return {"answer": s.xattr_set_id([(_u(n), _u(x)) for n, x in args])}, b""
        raise RemoteProtocolError(f"unknown question {what!r}")

    def op_missing(self, _h: dict, p: bytes) -> tuple[dict, bytes]:
        """For each sha256 (hex), the stored length of its chunk here, None when the client
        must upload it: pending in this save's batch, or a file on disk that is sound (the
        catalog's size, else decoded and hashed; a damaged one is replaced by the upload)."""
        store = self.repo.store
        hexes = json.loads(p)
        shas = [bytes.fromhex(s) for s in hexes]
        rows = self.repo.catalog.chunk_sizes(shas)
        sound = store.chunk_test()  # a bucket: the catalog's word, no request per chunk
        out: list[int | None] = []
        for hexsha, sha in zip(hexes, shas, strict=True):
            known = self.known.get(sha)
            if known is not None:
                out.append(known[0])
                continue
            row = rows.get(sha)
            if row is not None and row[1] and sound(hexsha.lower(), row[1]):
                self.known[sha] = (row[1], False)
                out.append(row[1])
                continue
            if not store.present(sha):  # a bucket never trusts an object no row names
                out.append(None)
                continue
            size = store.stored_size(sha)
            if size is not None:
                row = rows.get(sha)
                if size is not None and not (row is not None and row[1] == size):
                    try:
                        size = store.verify_file(sha, row[0] if row is not None else None)
                    except BackshiftError:
                        store.replace_files([sha])
                        size = None
                    if size is not None and row is not None and row[1] != size:
                        self.session.ensure_txn()
                        self.repo.catalog.set_stored_length(sha, size)
            if size is not None:
                self.known.setdefault(sha, (size, False))
            out.append(size)
        return {"sizes": out}, b""

    def op_put(self, h: dict, p: bytes) -> tuple[dict, bytes]:
        """Chunk bodies the client uploads: each verified before it joins the batch."""
        store = self.repo.store
        view = memoryview(p)
        at = 0
        shas, lengths, sizes = h["shas"], h["lengths"], h["sizes"]
        if not len(shas) == len(lengths) == len(sizes) or sum(sizes) != len(p):
            raise RemoteProtocolError("a chunk upload whose sizes do not add up")
        decompressor = chunkcodec.Codec(3).decompressor()
        for hexsha, length, size in zip(shas, lengths, sizes, strict=True):
            sha = bytes.fromhex(hexsha)
            body = bytes(view[at:at + size])
            at += size
            try:
                data = chunkcodec.decode_sized(body, length, decompressor)
                sound = len(data) == length and hashlib.sha256(data).digest() == sha
            except Exception:  # noqa: BLE001 - any decoder error: a bad body
                sound = False
            if not sound:
                raise ChunkRejected(hexsha)
            if sha not in self.known and not store.is_pending(sha):
                store.put_body(sha, body)
                self.known[sha] = (size, True)
        return {}, b""

    def _chunks_here(self, r: ReadResult) -> ReadResult:
        """R with each chunk's stored length and newness as this repository knows them; a
        chunk it neither has nor received fails the save."""
        store = self.repo.store
        chunks = []
        for c in r.chunks:
            sha = c.ref.sha256
            known = self.known.get(sha)
            if known is None:
                size = store.stored_size(sha)
                if size is None:
                    raise RemoteProtocolError(f"the client recorded chunk {sha.hex()}, which "
                                              "it never uploaded and the repository lacks")
                known = (size, False)
            chunks.append(StoredChunk(c.ref, known[0], known[1] and c.new))
        r.chunks = chunks
        return r

    def _content(self, v: Version) -> Version:
        cid = v.content_id
        if cid is not None and cid < 0:
            real = self.tokens.get(cid)
            if real is None:
                raise RemoteProtocolError(f"content token {cid} is unknown")
            return v._replace(content_id=real)
        return v

    def op_ops(self, _h: dict, p: bytes) -> tuple[dict, bytes]:
        s = self.session
        for call in json.loads(p):
            name = call[0]
            if name == "record":
                path, path_id, parent_id, v, version_id = call[1:]
                s.record(_u(path), path_id, parent_id, self._content(dec_version(v)),
                         version_id)
            elif name == "store":
                token, v, result = call[1], dec_version(call[2]), dec_result(call[3])
                if result.content_id is not None:
                    result.content_id = self.tokens[result.content_id]
                v = s.store_content(v, self._chunks_here(result))
                self.tokens[token] = v.content_id
            elif name == "contents":
                batch = ReadBatch()
                tokens = []
                for token, row in call[1]:
                    tokens.append(token)
                    batch.append(self._chunks_here(dec_result(row)))
                s.contents_of_batch(batch)
                for token, r in zip(tokens, batch, strict=True):
                    self.tokens[token] = r.content_id
            elif name == "warn":
                s.stats.warnings += call[1]
            elif name == "checkpoint":
                before = s._txn
                s.checkpoint(bool(call[1]))
                if before and not s._txn:  # committed: what was known is durable now
                    self.known.clear()
            else:
                raise RemoteProtocolError(f"unknown session call {name!r}")
        return {}, b""

    def op_finish(self, h: dict, _p: bytes) -> tuple[dict, bytes]:
        s = self.session
        status = h["status"]
        if status not in ("complete", "interrupted"):
            raise RemoteProtocolError(f"a save cannot finish as {status!r}")
        if h.get("empty"):
            self.done = True
            try:
                s.discard_empty(int(h.get("names_seen") or 0))
            except BackshiftError:
                self.done = True
                raise
        s.finish(status)
        self.done = True
        copied = True
        if status == "complete" and self.after_complete is not None:
            copied = self.after_complete(self.repo)
        stats = _stats_dict(s.stats)
        warnings, self.warnings = self.warnings, []
        self.close()
        return {"stats": stats, "warnings": warnings, "copied": copied}, b""

    def op_abandon(self, _h: dict, _p: bytes) -> tuple[dict, bytes]:
        self.close()
        return {}, b""


# -- the client half ------------------------------------------------------------------------


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
        self._ops: list = []
        self._next_token = -1
        self._open = False
        self._checkpoint_due = 0
        self._flushed = time.monotonic()
        # take()'s chunk questions in flight: (answer, shas asked, results, temp files)
        self._asked: deque[tuple[Future, list[bytes], list, list]] = deque()
        self._asked_bytes = 0
        self._uploaded: dict[bytes, int] = {}  # sha -> size, posted while questions were out

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
            ops, self._ops = [_encode_op(op) for op in self._ops], []
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
            "roots": None if self.roots is None else [_b(r) for r in self.roots],
            "batch_files": self.batch_files, "batch_seconds": self.batch_seconds,
            "lock_wait": self.lock_wait_s})
        self._open = True
        self.stats.save_id = answer["save_id"]
        self.estimate = answer.get("estimate")
        self.borrower = _Borrowing(int(answer["candidates"]), bool(answer["fast"]))
        self.chunker = ChunkerParams(**answer["chunker"])
        parent = _staging_parent()
        _remove_dead_staging(parent)
        self.staging = os.fsencode(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-",
                                                    dir=parent))
        Store.create_layout(self.staging)
        self._sink = Store(self.staging, zstd_level=int(answer["zstd_level"]), detached=True)

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def offer(self, entries: list[tuple[bytes, os.stat_result, str, str]]) -> list[bool]:
        payload = json.dumps([[_b(p), enc_stat(st), _b(u), _b(g)] for p, st, u, g in entries],
                             separators=(",", ":")).encode()
        borrowed = self._call("save.offer", {}, payload)["borrowed"]
        if len(borrowed) != len(entries):
            raise RemoteProtocolError("the server answered an offer for another batch")
        return borrowed

    def _ask(self, what: str, args) -> object:
        return self._call("save.ask", {"what": what, "args": args})["answer"]

    def locate(self, path: bytes) -> tuple[int | None, int | None]:
        path_id, parent_id = self._ask("locate", [_b(path)])
        return path_id, parent_id

    def _name(self, path, path_id, parent_id, v) -> list:
        return [_b(path), path_id, parent_id, enc_version(v)]

    def kept_xattrs(self, path: bytes, path_id: int | None, parent_id: int | None,
                    v: Version) -> tuple[bool, int | None]:
        if not self.borrowing:
            return False, None
        kept, xattrs_id = self._ask("kept_xattrs", self._name(path, path_id, parent_id, v))
        return bool(kept), xattrs_id

    def xattr_set_id(self, xattrs) -> int:
        return self._ask("xattr_set_id", [[_b(n), _b(x)] for n, x in xattrs])

    def borrow(self, path: bytes, path_id: int | None, parent_id: int | None, v: Version
               ) -> tuple[Version, int | None] | None:
        if not self.borrowing:
            return None
        found = self._ask("borrow", self._name(path, path_id, parent_id, v))
        return None if found is None else (dec_version(found[0]), found[1])

    def reusable_version(self, path: bytes, path_id: int | None, parent_id: int | None,
                         v: Version) -> int | None:
        if not self.borrowing:
            return None
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
            self._sink.discard(pending)
            return result
        try:
            future = self.channel.ask("save.missing", {},
                                      json.dumps([s.hex() for s in shas]).encode())
        except BaseException:
            self._sink.discard(pending)
            raise
        self._asked.append((future, shas, results, pending))
        self._ops.append(_ASKED)  # its uploads go out here, between the calls around it
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
        at = next(i for i, op in enumerate(self._ops) if op is _ASKED)
        before, self._ops = self._ops[:at], self._ops[at + 1:]
        if before:
            self.channel.post("save.ops", {}, json.dumps(
                [_encode_op(op) for op in before], separators=(",", ":")).encode())
        future, shas, results, pending = self._asked.popleft()
        self._asked_bytes -= sum(p[3] for p in pending)
        try:
            answer, _ = self.channel.answer(future)
            self._take_answer(answer)
            self._upload(shas, answer["sizes"], results, pending)
        finally:
            self._sink.discard(pending)
            if not self._asked:  # every later question saw those uploads: answered by size
                self._uploaded.clear()

    def vet_found(self, results: list) -> set[bytes]:
        """read_here's reads (into the sink, in this thread): uploaded like take()'s."""
        pending, _seen = self._sink.take_pending()
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
            with open(temps[sha][0], "rb") as f:
                body = f.read()
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
                          b"".join(b for _, b in batch))

    def discard(self, pending: list) -> None:
        self._sink.discard(pending)

    def discard_temps_of(self, pids: list[int]) -> None:
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
        self._post(["record", _b(path), path_id, parent_id, enc_version(v), version_id])
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


def run_remote_save(connect: Callable[[], Channel], opts, warn: Warn, *, cwd: bytes,
                    paths=(), stream=None, one_file_system: bool = False, excludes=(),
                    exclude_caches: bool = False, exclude_if_present=(),
                    lock_wait_s: float = 0.0, progress=None, notice=None):
    """ops/save.run_save for a repository behind CONNECT() (a Channel to its server): the
    readers are forked first, then the connection opens, then the same Saver runs with a
    SessionProxy as its repository half. A SaveRun."""
    import signal

    from .readers import reader_pool
    from .save import Saver, SaveRun, input_names
    from .stopping import catch_stop_signals

    restore_signals = catch_stop_signals()
    try:
        readers = reader_pool(opts.workers)  # before the ssh process and its threads
    except BaseException:
        restore_signals()
        raise
    saver = None
    try:
        session = SessionProxy(connect(), opts.hostname, opts.subset, opts.roots, warn,
                               batch_files=opts.batch_files, batch_seconds=opts.batch_seconds,
                               lock_wait_s=lock_wait_s)
        saver = Saver(None, opts, warn, progress, readers, session=session)
        if notice is not None:
            saver.notice = notice
        names = input_names(saver.warn, cwd=cwd, paths=paths, stream=stream,
                            one_file_system=one_file_system, excludes=excludes,
                            exclude_caches=exclude_caches,
                            exclude_if_present=exclude_if_present)
        stats = saver.run(names)
    except KeyboardInterrupt:  # a second signal: stopped at once, marked interrupted
        if saver is None or saver.stop_signal != signal.SIGTERM:
            raise
        return SaveRun(None, saver.stop_signal, terminated=True)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        restore_signals()
    return SaveRun(stats, saver.stop_signal, getattr(session, "copied", True))
