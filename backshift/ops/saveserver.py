"""The repository half of a remote save: SessionServer runs the real SaveSession in
`backshift serve` for a SessionProxy (ops/saveproxy.py); the wire is ops/savewire.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from collections.abc import Callable

from .. import chunkcodec
from ..errors import (
    BackshiftError,
    ChunkRejected,
    RemoteProtocolError,
)
from ..model import StoredChunk, Version
from .reader import ReadBatch, ReadResult
from .savewire import (
    bytes_of,
    dec_result,
    dec_stat,
    dec_version,
    enc_version,
    entry_version,
    stats_dict,
)
from .session import SaveSession


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
        # the client's content tokens -> content ids, each retired by the call that uses
        # it last (flat in the number of files): a read batch's by the store of its file,
        # a store's by the record of its file unless more hard links may name it later
        self.tokens: dict[int, int] = {}
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
            answer["stats"] = stats_dict(self.session.stats)
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
        roots = None if roots is None else [bytes_of(r) for r in roots]
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
        entries = [(path.encode("latin-1"), dec_stat(st), bytes_of(user), bytes_of(group))
                   for path, st, user, group in json.loads(p)]
        borrowed = self.session.offer(entries)
        return {"borrowed": borrowed, "ahead": self._ahead(entries, borrowed)}, b""

    def _ahead(self, entries: list, borrowed: list[bool]) -> list:
        """For each of ENTRIES not BORROWED: [its place, locate's answer, kept_xattrs', and
        borrow's (a file; uncounted) or reusable_version's (neither a file nor a symlink,
        whose target the client reads) or False], as the client's Saver.add asks them for
        the same lstat (savewire.entry_version) when the file has no attributes of its own."""
        s = self.session
        if not s.borrowing:
            return []
        borrower = s.borrower
        out = []
        for i, (path, st, user, group) in enumerate(entries):
            if borrowed[i]:
                continue
            path_id, parent_id = s.locate(path)
            v = entry_version(st, user, group)
            kept, xattrs_id = borrower.kept_xattrs(path, path_id, parent_id, v)
            v = v._replace(xattrs_id=xattrs_id)
            answer: object = False
            if stat.S_ISREG(st.st_mode):
                found = borrower.borrow(path, path_id, parent_id, v)
                answer = None if found is None else [enc_version(found[0]), found[1]]
            elif not stat.S_ISLNK(st.st_mode):
                answer = borrower.reusable_version(path, path_id, parent_id, v)
            out.append([i, path_id, parent_id, kept, xattrs_id, answer])
        return out

    def _name_args(self, row: list):
        path, path_id, parent_id, v = row
        return bytes_of(path), path_id, parent_id, dec_version(v)

    def op_ask(self, h: dict, _p: bytes) -> tuple[dict, bytes]:
        """One per-name question of the general path (a re-save's changed names)."""
        s = self.session
        what, args = h["what"], h["args"]
        if what == "locate":
            return {"answer": list(s.locate(bytes_of(args[0])))}, b""
        if what == "kept_xattrs":
            return {"answer": list(s.kept_xattrs(*self._name_args(args)))}, b""
        if what == "borrow":
            found = s.borrow(*self._name_args(args))
            return {"answer": None if found is None
                    else [enc_version(found[0]), found[1]]}, b""
        if what == "reusable_version":
            return {"answer": s.reusable_version(*self._name_args(args))}, b""
        if what == "xattr_set_id":
            return {"answer": s.xattr_set_id([(bytes_of(n), bytes_of(x)) for n, x in args])}, b""
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
            # a file of one link is named once; another link of a group is recorded with
            # its first member's content (ops/save.py: Saver.record): kept for it
            real = self.tokens.pop(cid, None) if v.nlink <= 1 else self.tokens.get(cid)
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
                s.record(bytes_of(path), path_id, parent_id, self._content(dec_version(v)),
                         version_id)
            elif name == "store":
                token, v, result = call[1], dec_version(call[2]), dec_result(call[3])
                if result.content_id is not None:  # its read batch's: used once
                    result.content_id = self.tokens.pop(result.content_id)
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
            elif name == "counted":  # a borrow answered ahead (op_offer), used: its size
                s.stats.files_borrowed += 1
                s.stats.bytes_borrowed += int(call[1])
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
        stats = stats_dict(s.stats)
        warnings, self.warnings = self.warnings, []
        self.close()
        return {"stats": stats, "warnings": warnings, "copied": copied}, b""

    def op_abandon(self, _h: dict, _p: bytes) -> tuple[dict, bytes]:
        self.close()
        return {}, b""


