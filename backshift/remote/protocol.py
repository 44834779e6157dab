"""The wire format between a client and `backshift serve`: framed, versioned, pipelined.

A frame is  b"BS" | header length (u32, big-endian) | payload length (u32) | header | payload.
The header is a UTF-8 JSON object, the payload raw bytes (command output now, chunk bodies
later). The framing never changes between versions: the first request ("hello") carries the
range of protocol versions the client speaks and the server picks the newest both know, or
answers with an error both sides can still read.

Requests carry increasing ids and the server answers them strictly in order: each request
gets zero or more stream frames ("stdout"/"stderr", payload only) and exactly one final frame
("result", "exit" or "error"). A client may so keep several requests in flight (pipelining:
see client.Session.pipeline) and match answers by order; a bulk stream is many bounded
frames, so memory stays flat on both ends (borg's RPC and git's pkt-line do the same).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from dataclasses import dataclass, field

from ..errors import RemoteConnectionLost, RemoteProtocolError, RemoteVersionMismatch

MAGIC = b"BS"
HEAD = struct.Struct(">2sII")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20  # a 16 MiB chunk body with room to spare; more is a garbled stream
STREAM_FRAME = 1 << 20  # output bytes per frame: large writes, bounded memory

# (oldest, newest) protocol version this code speaks. 1: hello, run, echo.
VERSIONS = (1, 1)

FINAL_KINDS = frozenset({"result", "exit", "error"})


@dataclass
class Frame:
    header: dict
    payload: bytes = field(default=b"", repr=False)

    @property
    def kind(self) -> str:
        return str(self.header.get("kind", ""))


class FrameWriter:
    """Writes whole frames to a binary stream, one writer at a time, flushed at once."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, header: dict, payload: bytes | memoryview | list[bytes] = b"") -> None:
        """One frame; a PAYLOAD given as a list of parts is written part by part (chunk
        bodies: never joined into one copy)."""
        head = json.dumps(header, separators=(",", ":")).encode("utf-8")
        parts = payload if isinstance(payload, list) else [payload]
        size = sum(len(part) for part in parts)
        if len(head) > MAX_HEADER or size > MAX_PAYLOAD:
            raise ValueError(f"frame too large: header {len(head)}, payload {size}")
        with self.lock:
            self.stream.write(HEAD.pack(MAGIC, len(head), size) + head)
            for part in parts:
                if part:
                    self.stream.write(part)
            self.stream.flush()


class FrameReader:
    """Reads frames from a binary stream; PEER names the other end in error messages."""

    def __init__(self, stream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.frames = 0

    def read(self) -> Frame | None:
        """The next frame, or None at a clean end of stream (between frames)."""
        head = self._exact(HEAD.size, allow_eof=True)
        if head is None:
            return None
        magic, hlen, plen = HEAD.unpack(head)
        if magic != MAGIC:
            self._garbled(head)
        if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            raise RemoteProtocolError(f"{self.peer} sent a frame of {hlen} + {plen} bytes: "
                                      "not the backshift protocol")
        try:
            header = json.loads(self._exact(hlen))
        except (UnicodeDecodeError, ValueError):
            raise RemoteProtocolError(f"{self.peer} sent a garbled frame header") from None
        if not isinstance(header, dict):
            raise RemoteProtocolError(f"{self.peer} sent a frame header that is no object")
        payload = self._exact(plen) if plen else b""
        self.frames += 1
        return Frame(header, payload)

    def _exact(self, n: int, allow_eof: bool = False) -> bytes | None:
        parts, got = [], 0
        while got < n:
            more = self.stream.read(n - got)
            if not more:
                if allow_eof and got == 0:
                    return None
                raise RemoteConnectionLost(self.peer, "the stream ended in the middle of a frame")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _garbled(self, head: bytes) -> None:
        if self.frames == 0:
            try:
                more = self.stream.read1(70) if hasattr(self.stream, "read1") else b""
            except (OSError, ValueError):
                more = b""
            said = (head + more).split(b"\n")[0][:80]
            raise RemoteVersionMismatch(
                f"{self.peer} does not speak the backshift protocol (it said {said!r}); "
                "does a login script print text, or is the remote command not backshift?")
        raise RemoteProtocolError(f"{self.peer} sent a garbled frame (bad magic {head[:2]!r})")


def negotiate(theirs: object, peer: str) -> int:
    """The newest version in both ranges (THEIRS from PEER, the client); else an error."""
    lo, hi = VERSIONS
    if (not isinstance(theirs, list) or len(theirs) != 2
            or not all(isinstance(v, int) for v in theirs)):
        raise RemoteProtocolError(f"{peer} sent a hello without a version range")
    best = min(hi, theirs[1])
    if best < max(lo, theirs[0]):
        raise RemoteVersionMismatch(
            f"protocol versions cannot talk: the client speaks {theirs[0]}..{theirs[1]}, "
            f"the server {lo}..{hi}; install the same backshift release on both hosts")
    return best


class StreamOutput(io.RawIOBase):
    """A writable raw stream whose every write becomes STREAM_FRAME-sized frames of KIND.

    It has no file descriptor (fileno raises), so writers that would write(2) around it
    (the tar writer's writev) write through it instead.
    """

    def __init__(self, frames: FrameWriter, rid: int, kind: str) -> None:
        super().__init__()
        self.frames = frames
        self.rid = rid
        self.kind = kind

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), STREAM_FRAME):
            self.frames.send({"id": self.rid, "kind": self.kind},
                             bytes(view[start:start + STREAM_FRAME]))
        return len(view)
