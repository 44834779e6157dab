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
  not borrow (the changed ones, hard links: few). The offer's answer carries those
  answers ahead ("ahead": locate, kept_xattrs, and borrow for a file or reusable_version
  for a directory or special file, as the server found them for the offered lstat); the
  client uses one only for the same path, ids and version, else it asks (a round trip per
  question was a third of an unchanged re-save with 100 hard links). A borrow answered
  ahead is counted when the client uses it ("counted").

Arguments are encoded as JSON (bytes as latin-1 text, sha256s as hex): never pickled, a
hostile client must not run code on the repository host.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from concurrent.futures import Future
from typing import NamedTuple, Protocol

from ..errors import (
    RemoteProtocolError,
)
from ..model import ChunkRef, SaveStats, StoredChunk, Version
from .reader import ReadResult

OPS_BATCH = 512  # session calls gathered into one posted request
PUT_BYTES = 8 << 20  # chunk bodies per upload request, at most
FLUSH_S = 0.5  # gathered session calls wait this long at most (a checkpoint is due)
ASKED_TASKS = 8  # reader tasks whose chunk question is in flight, at most, before the
ASKED_BYTES = 64 << 20  # oldest is settled; and their compressed bodies waiting here
AHEAD_KEPT = 4096  # the offers' answers ahead the client keeps at most (names not asked)


class Channel(Protocol):
    def call(self, op: str, header: dict, payload: bytes = b"") -> tuple[dict, bytes]: ...

    def ask(self, op: str, header: dict, payload: bytes = b"") -> Future: ...

    def answer(self, future: Future) -> tuple[dict, bytes]: ...

    def post(self, op: str, header: dict, payload: bytes | list[bytes] = b"") -> None: ...

    def take_notes(self) -> list[dict]: ...


# -- encoding -------------------------------------------------------------------------------


def text_of(data: bytes | None) -> str | None:
    return None if data is None else data.decode("latin-1")


def bytes_of(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1")


def enc_version(v: Version) -> list:
    return [v.mode, v.uid, v.gid, text_of(v.user), text_of(v.group), v.size, v.mtime_ns, v.ctime_ns,
            v.dev, v.ino, v.nlink, v.rdev, text_of(v.link_target), v.content_id, v.xattrs_id]


def dec_version(row: list) -> Version:
    if not isinstance(row, list) or len(row) != 15:
        raise RemoteProtocolError("the client sent a malformed version")
    return Version(row[0], row[1], row[2], bytes_of(row[3]), bytes_of(row[4]), row[5], row[6],
                   row[7], row[8], row[9], row[10], row[11], bytes_of(row[12]), row[13],
                   row[14])


def enc_stat(st: os.stat_result) -> list:
    return [st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


class WireStat(NamedTuple):
    """An lstat as an offer carries it: what the server reads of one (os.stat_result's
    names), made from its row six times faster than an os.stat_result."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int


dec_stat = WireStat._make  # a row of enc_stat's (a wrong length raises TypeError)


def entry_version(st: os.stat_result, user: bytes | None, group: bytes | None,
                  xattrs_id: int | None = None) -> Version:
    """The version ops/save.py's Saver.add makes of lstat ST (a symlink's target and a
    file's content not known yet): what a re-save's offer answers ahead for."""
    return Version(st.st_mode, st.st_uid, st.st_gid, user, group,
                   st.st_size if stat.S_ISREG(st.st_mode) else 0, st.st_mtime_ns,
                   st.st_ctime_ns, st.st_dev, st.st_ino, st.st_nlink, st.st_rdev, None, None,
                   xattrs_id)


def enc_result(r: ReadResult) -> list:
    return [r.size, r.digest.hex(), [[c.ref.sha256.hex(), c.ref.length, c.stored_length,
                                      c.new] for c in r.chunks], r.changed, r.content_id]


def dec_result(row: list) -> ReadResult:
    size, digest, chunks, changed, content_id = row
    return ReadResult(size, bytes.fromhex(digest),
                      [StoredChunk(ChunkRef(bytes.fromhex(sha), length), stored, bool(new))
                       for sha, length, stored, new in chunks], changed, content_id)


ASKED = ["asked"]  # the place of a chunk question among the gathered calls (not sent)


def encode_op(call: list) -> list:
    """A gathered session call as it is posted: its read results encoded now."""
    if call[0] == "store":
        return [*call[:3], enc_result(call[3])]
    if call[0] == "contents":
        return ["contents", [[token, enc_result(r)] for token, r in call[1]]]
    return call


def stats_dict(stats: SaveStats) -> dict:
    return dataclasses.asdict(stats)
