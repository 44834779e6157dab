"""The client of `backshift serve`: a session of ordered requests; running a command there."""

from __future__ import annotations

import collections
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future

from .. import __version__
from ..errors import (
    EXIT_ERROR,
    RemoteConnectionLost,
    RemoteError,
    RemoteNotSupported,
    RemoteProtocolError,
    RemoteVersionMismatch,
)
from ..pathcodec import locale_is_utf8
from .protocol import FINAL_KINDS, VERSIONS, Frame, FrameReader, FrameWriter
from .server import REMOTE_COMMANDS
from .transport import DEFAULT_REMOTE_PATH, DEFAULT_RSH, SshTransport
from .url import parse

# Commands that read this host's files: they cannot run on the server as they are.
LOCAL_ONLY = {
    "import-legacy": "it reads a save directory on this host; run it on the repository host",
    "mount": "mount works on local repositories only; run it on the repository host",
}
PIPELINE_WINDOW = 16  # requests in flight before the first answer must come back


class Session:
    """Requests to one server, answered in the order they were sent."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.peer = transport.host
        self.frames = FrameWriter(transport.writer)
        self.reader = FrameReader(transport.reader, transport.host)
        self.next_id = 1
        self.version: int | None = None

    def send(self, header: dict, payload: bytes | list[bytes] = b"") -> int:
        rid = self.next_id
        self.next_id += 1
        try:
            self.frames.send({**header, "id": rid}, payload)
        except (BrokenPipeError, ConnectionResetError):
            raise RemoteConnectionLost(self.peer, "the server stopped reading") from None
        return rid

    def answers(self, rid: int) -> Iterator[Frame]:
        """The frames answering request RID, its final frame last (an error raises)."""
        while True:
            frame = self.reader.read()
            if frame is None:
                raise RemoteConnectionLost(self.peer, "the server closed the connection")
            if frame.header.get("id") != rid:
                raise RemoteProtocolError(f"{self.peer} answered request "
                                          f"{frame.header.get('id')!r} where {rid} was due")
            if frame.kind == "error":
                raise _server_error(frame.header)
            yield frame
            if frame.kind in FINAL_KINDS:
                return

    def call(self, header: dict, payload: bytes = b"") -> Frame:
        """Send one request and return its final frame."""
        for frame in self.answers(self.send(header, payload)):
            if frame.kind in FINAL_KINDS:
                return frame
        raise AssertionError("answers() ends with a final frame")

    def hello(self, repo: str) -> dict:
        """Agree on a protocol version and name the repository; the server's hello result."""
        return self.hello_answer(self.send_hello(repo))

    def send_hello(self, repo: str) -> int:
        return self.send({"op": "hello", "versions": list(VERSIONS), "repo": repo,
                          "client": __version__})

    def hello_answer(self, rid: int) -> dict:
        """The hello's answer (the requests sent after it wait behind it)."""
        reply = list(self.answers(rid))[-1].header
        version = reply.get("version")
        if not isinstance(version, int) or not VERSIONS[0] <= version <= VERSIONS[1]:
            raise RemoteVersionMismatch(
                f"{self.peer} chose protocol version {version!r}, this backshift speaks "
                f"{VERSIONS[0]}..{VERSIONS[1]}")
        self.version = version
        return reply

    def pipeline(self, requests: Iterable[tuple[dict, bytes]],
                 window: int = PIPELINE_WINDOW) -> Iterator[list[Frame]]:
        """Send REQUESTS from a thread, up to WINDOW ahead; yield each one's frames in order.

        The writer thread keeps requests flowing while answers are read, so neither side
        can block the other with full pipes.
        """
        slots = threading.Semaphore(window)
        sent: queue.Queue = queue.Queue()
        stop = threading.Event()
        failed: list[BaseException] = []

        def write() -> None:
            try:
                for header, payload in requests:
                    slots.acquire()
                    if stop.is_set():
                        return
                    sent.put(self.send(header, payload))
            except BaseException as e:  # noqa: BLE001 - re-raised by the reading side
                failed.append(e)
            finally:
                sent.put(None)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            while (rid := sent.get()) is not None:
                frames = list(self.answers(rid))
                slots.release()
                yield frames
            if failed:
                raise failed[0]
        finally:
            stop.set()
            slots.release()
            writer.join(timeout=5)

    def run(self, argv: list[str], out, err, *, debug: bool, encoding: str,
            errors: str) -> int:
        """Run a CLI command on the server: its stdout to OUT, stderr to ERR; its exit code."""
        return self.run_output(self.send_run(argv, debug=debug, encoding=encoding,
                                             errors=errors), out, err)

    def send_run(self, argv: list[str], *, debug: bool, encoding: str, errors: str) -> int:
        return self.send({"op": "run", "argv": argv, "debug": debug, "encoding": encoding,
                          "errors": errors, "tz": os.environ.get("TZ"),
                          "utf8": locale_is_utf8()})

    def run_output(self, rid: int, out, err) -> int:
        """The run request RID's output to OUT and ERR; its exit code."""
        for frame in self.answers(rid):
            if frame.kind == "stdout":
                out.write(frame.payload)
            elif frame.kind == "stderr":
                err.write(frame.payload)
                err.flush()
            elif frame.kind == "exit":
                code = frame.header.get("code")
                return code if isinstance(code, int) and 0 <= code <= 255 else EXIT_ERROR
            else:
                raise RemoteProtocolError(f"{self.peer} sent a {frame.kind!r} frame to a run")
        raise AssertionError("answers() ends with a final frame")


def _server_error(header: dict) -> RemoteError:
    """The server's error, one line and its exit code, as this side raises it."""
    error = RemoteError(str(header.get("message") or "the server failed"))
    code = header.get("exit")
    error.exit_code = code if isinstance(code, int) and 2 <= code <= 255 else EXIT_ERROR
    return error


def run_over(transport, repo: str, argv: list[str], out, err, *, debug: bool,
             encoding: str, errors: str) -> int:
    """Hello, then run ARGV on REPO through TRANSPORT; the command's exit code."""
    failed = True
    try:
        session = Session(transport)
        try:  # the run goes out with the hello: no round trip before the first byte
            hello = session.send_hello(repo)
            rid = session.send_run(argv, debug=debug, encoding=encoding, errors=errors)
            session.hello_answer(hello)
            transport.connected()
            code = session.run_output(rid, out, err)
        except RemoteConnectionLost as e:
            raise transport.lost(e.args[-1]) from None
        failed = False
        return code
    finally:
        transport.close(failed=failed)


def check_remote(name: str) -> None:
    """RemoteNotSupported unless command NAME can run on an ssh:// repository."""
    if name in LOCAL_ONLY:
        raise RemoteNotSupported(f"{name} on an ssh:// repository: {LOCAL_ONLY[name]}")
    if name not in REMOTE_COMMANDS:
        raise RemoteNotSupported(f"{name} does not run on ssh:// repositories yet")


def without_option(args: list[str], short: str, long: str) -> list[str]:
    """ARGS without option SHORT/LONG and its value (before any `--`)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in (short, long):
            i += 2
            continue
        if not (arg.startswith(long + "=") or (arg.startswith(short) and arg[1] != "-")):
            out.append(arg)
        i += 1
    return out


def run_command(url: str, remote_path: str | None, argv: list[str], out, err, *,
                debug: bool, encoding: str, errors: str) -> int:
    """Run ARGV (a command and its arguments) on the repository at ssh:// URL."""
    target = parse(url)
    rsh = os.environ.get("BACKSHIFT_RSH") or DEFAULT_RSH
    transport = SshTransport(target, remote_path or DEFAULT_REMOTE_PATH, rsh, err)
    return run_over(transport, target.path, argv, out, err, debug=debug, encoding=encoding,
                    errors=errors)



class Channel:
    """A remote save's requests over one Session: call() waits for its answer, post() sends
    and goes on (latency hidden: many requests in flight). A thread reads the answers, in
    order; the first error of a posted request (or of the connection) is raised by the
    next call() or post(). Only one thread sends."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.lock = threading.Lock()
        self.waiting: collections.deque[tuple[int, Future | None]] = collections.deque()
        self.error: BaseException | None = None
        self.notes: list[dict] = []  # answers of posted requests that carry warnings
        self.reader = threading.Thread(target=self._read, daemon=True, name="answers")
        self.reader.start()

    def _read(self) -> None:
        session = self.session
        try:
            while True:
                frame = session.reader.read()
                if frame is None:
                    raise RemoteConnectionLost(session.peer, "the server closed the connection")
                with self.lock:
                    rid, future = self.waiting.popleft() if self.waiting else (None, None)
                if rid is None or frame.header.get("id") != rid:
                    raise RemoteProtocolError(f"{session.peer} answered request "
                                              f"{frame.header.get('id')!r} where {rid} was due")
                if frame.kind == "error":
                    error = _server_error(frame.header)
                    if future is not None:
                        future.set_exception(error)
                    elif self.error is None:
                        self.error = error
                elif frame.kind != "result":
                    raise RemoteProtocolError(f"{session.peer} sent a {frame.kind!r} frame "
                                              "to a save request")
                elif future is not None:
                    future.set_result(frame)
                elif frame.header.get("warnings"):
                    with self.lock:
                        self.notes.append(frame.header)
        except BaseException as e:  # noqa: BLE001 - handed to the sending thread
            if self.error is None:
                self.error = e
            with self.lock:
                waiting, self.waiting = self.waiting, collections.deque()
            for _rid, future in waiting:
                if future is not None:
                    future.set_exception(e)

    def _send(self, header: dict, payload: bytes | list[bytes], future: Future | None) -> None:
        if self.error is not None:
            raise self.error
        with self.lock:
            rid = self.session.next_id
            self.waiting.append((rid, future))
        self.session.send(header, payload)  # takes that same id: one sending thread

    def post(self, op: str, header: dict, payload: bytes | list[bytes] = b"") -> None:
        self._send({**header, "op": op}, payload, None)

    def call(self, op: str, header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        return self.answer(self.ask(op, header, payload))

    def ask(self, op: str, header: dict, payload: bytes = b"") -> Future:
        """Send and go on; answer(the Future) waits for the answer later (pipelining)."""
        future: Future = Future()
        self._send({**header, "op": op}, payload, future)
        return future

    def answer(self, future: Future) -> tuple[dict, bytes]:
        """The (header, payload) answering ask()'s FUTURE, once it has come."""
        frame = future.result()
        if self.error is not None:  # a posted request before it failed
            raise self.error
        return frame.header, frame.payload

    def take_notes(self) -> list[dict]:
        with self.lock:
            notes, self.notes = self.notes, []
        return notes


class SaveConnection:
    """A remote save's connection, started as early as the client can: ssh spawned and the
    hello sent at once, so the handshake overlaps the client's own start-up; channel() waits
    for the hello's answer. Every failure closes the ssh process and raises one line."""

    def __init__(self, url: str, remote_path: str | None, err) -> None:
        target = parse(url)
        rsh = os.environ.get("BACKSHIFT_RSH") or DEFAULT_RSH
        self.transport = SshTransport(target, remote_path or DEFAULT_REMOTE_PATH, rsh, err,
                                      keep_sigint=True)
        self.closed = False
        self.session = Session(self.transport)
        self.hello = self._guarded(self.session.send_hello, target.path)

    def _guarded(self, step, *args):
        try:
            return step(*args)
        except RemoteConnectionLost as e:
            error = self.transport.lost(e.args[-1])
            self.close(failed=True)
            raise error from None
        except BaseException:
            self.close(failed=True)
            raise

    def close(self, failed: bool = False) -> None:
        """End the ssh process (FAILED: at once); a second call does nothing."""
        if not self.closed:
            self.closed = True
            self.transport.close(failed=failed)

    def _answered(self) -> None:
        self.session.hello_answer(self.hello)
        self.transport.connected()

    def channel(self) -> Channel:
        """The Channel of the save, once the server has answered the hello."""
        self._guarded(self._answered)
        return Channel(self.session)


def open_save_channel(url: str, remote_path: str | None, err):
    """(Channel, transport) to the server of the ssh:// URL, the hello done: a remote save."""
    connection = SaveConnection(url, remote_path, err)
    return connection.channel(), connection.transport
