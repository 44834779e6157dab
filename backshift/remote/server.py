"""`backshift serve`: answer one client's requests on stdin/stdout, within the serve policy.

The repository path comes in the hello, so a forced command in authorized_keys decides what
a key may reach (--restrict-to-path) and do (--append-only), as with `borg serve`. Commands
run in this process through the CLI (INSPECT parses an argv, EXECUTE runs it with its output
sent as frames): cli/serve.py hands both in, so nothing here imports click.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_OK, BackshiftError, RemoteProtocolError, RemoteRefused
from ..pathcodec import use_locale_utf8
from .protocol import FrameReader, FrameWriter, StreamOutput, negotiate

# The commands a client may run remotely. save, import-legacy and mount read the client's
# files: they wait for the remote save (its client half on the client, repository half here).
REMOTE_COMMANDS = frozenset({"init", "saves", "list", "tar", "find", "history", "diff", "stats",
                             "sql", "check", "expire", "break-lock"})

Inspect = Callable[[list[str]], "tuple[str, dict]"]
Execute = Callable[..., int]
SaveHandler = Callable[[str], "object"]


@dataclass(frozen=True)
class Policy:
    """What this server lets a client reach and do (its command-line flags)."""

    restrict_to: tuple[str, ...] = ()
    append_only: bool = False

    def repository(self, path: object) -> str:
        """The real path of the repository a client asks for; RemoteRefused outside the rules."""
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise RemoteRefused(f"repository path {path!r} is not an absolute path")
        real = os.path.realpath(os.fsencode(path))
        if self.restrict_to and not any(_within(real, os.path.realpath(os.fsencode(p)))
                                        for p in self.restrict_to):
            raise RemoteRefused(f"repository {path} is outside the paths this server allows "
                                "(--restrict-to-path)")
        return os.fsdecode(real)

    def command(self, name: str, params: dict | None) -> None:
        """RemoteRefused unless the client may run command NAME with PARAMS here.

        PARAMS is None when the arguments do not parse; the command then stops at parsing.
        """
        params = params or {}
        if name not in REMOTE_COMMANDS:
            raise RemoteRefused(f"'{name}' cannot run through backshift serve")
        if name == "tar" and params.get("output", "-") != "-":
            raise RemoteRefused("tar -o names a file on the client; the server writes only "
                                "to the connection")
        if self.append_only and (name in ("expire", "break-lock")
                                 or (name == "check" and params.get("repair"))):
            what = "check --repair" if name == "check" else name
            raise RemoteRefused(f"{what} deletes or rewrites, and this repository is served "
                                "--append-only")


def _within(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix.rstrip(b"/") + b"/")


def serve(inp, out, policy: Policy, inspect: Inspect, execute: Execute,
          log: Callable[[str], None], saves: SaveHandler | None = None) -> int:
    """Answer requests from INP on OUT until the client closes; return the exit status.

    SAVES(repo) makes the handler of a remote save's requests ("save.*": its repository
    half, ops/saveserver.py's SessionServer); the save it runs is abandoned (marked
    interrupted) when the client goes away before finishing it."""
    reader = FrameReader(inp, "the client")
    frames = FrameWriter(out)
    handler = None
    error: BaseException | None = None
    try:
        hello = reader.read()
        if hello is None:
            return EXIT_OK
        repo = _hello(hello, frames, policy)
        if repo is None:
            return EXIT_OK
        while (frame := reader.read()) is not None:
            if str(frame.header.get("op", "")).startswith("save.") and saves is not None:
                if handler is None:
                    handler = saves(repo)
                _save_request(frame, frames, handler)
                continue
            _answer(frame, frames, repo, policy, inspect, execute)
    except BackshiftError as e:  # the client broke the protocol or went away mid-frame
        error = e
        log(f"backshift serve: {e.message()}")
        return e.exit_code
    except (BrokenPipeError, ConnectionResetError) as e:
        error = e
        log("backshift serve: the client went away")
        return EXIT_ERROR
    finally:
        if handler is not None:
            handler.close(error)
    return EXIT_OK


def _save_request(frame, frames: FrameWriter, handler) -> None:
    rid = frame.header.get("id")
    try:
        header, payload = handler.handle(str(frame.header["op"]), frame.header, frame.payload)
    except BackshiftError as e:
        _error(frames, rid, e)
        return
    frames.send({**header, "id": rid, "kind": "result"}, payload)


def _hello(frame, frames: FrameWriter, policy: Policy) -> str | None:
    """Negotiate the version and open the repository path; None when refused (told why)."""
    rid = frame.header.get("id")
    try:
        if frame.header.get("op") != "hello":
            raise RemoteProtocolError("the client did not open with a hello")
        version = negotiate(frame.header.get("versions"), "the client")
        repo = policy.repository(frame.header.get("repo"))
    except BackshiftError as e:
        _error(frames, rid, e)
        return None
    frames.send({"id": rid, "kind": "result", "version": version, "server": __version__})
    return repo


def _answer(frame, frames: FrameWriter, repo: str, policy: Policy, inspect: Inspect,
            execute: Execute) -> None:
    header = frame.header
    rid = header.get("id")
    op = header.get("op")
    try:
        if op == "echo":  # a round trip: latency probes and protocol tests
            frames.send({"id": rid, "kind": "result"}, frame.payload)
        elif op == "run":
            code = _run(header, frames, repo, policy, inspect, execute)
            frames.send({"id": rid, "kind": "exit", "code": code})
        else:
            raise RemoteProtocolError(f"unknown request {op!r}: the client is newer than "
                                      f"this server ({__version__})?")
    except BackshiftError as e:
        _error(frames, rid, e)


def _run(header: dict, frames: FrameWriter, repo: str, policy: Policy, inspect: Inspect,
         execute: Execute) -> int:
    argv = header.get("argv")
    if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
            or argv[0].startswith("-")):
        raise RemoteProtocolError("a run request needs argv: a command name and its arguments")
    name, params = inspect(argv)
    policy.command(name, params)
    encoding, errors = header.get("encoding"), header.get("errors")
    try:  # the client's stdout encoding, so the bytes are those a local run would print
        "x".encode(encoding, errors)  # LookupError for a codec that is no text encoding
        codecs.lookup_error(errors)
    except (LookupError, TypeError, ValueError):
        encoding, errors = "utf-8", "surrogateescape"
    utf8 = header.get("utf8")
    if isinstance(utf8, bool):  # names escaped as GNU tar would in the client's locale
        use_locale_utf8(utf8)
    tz = header.get("tz")
    if isinstance(tz, str) and tz:  # times render in the client's zone, as they would locally
        os.environ["TZ"] = tz
        time.tzset()
    rid = header.get("id")
    return execute(repo, argv, bool(header.get("debug")), StreamOutput(frames, rid, "stdout"),
                   StreamOutput(frames, rid, "stderr"), encoding, errors)


def _error(frames: FrameWriter, rid: object, e: BackshiftError) -> None:
    frames.send({"id": rid, "kind": "error", "message": e.message(), "exit": e.exit_code})


def serve_stdio(policy: Policy, inspect: Inspect, execute: Execute,
                saves: SaveHandler | None = None) -> int:
    """serve() on this process's stdin/stdout, which nothing else may touch meanwhile.

    The protocol keeps private copies of fds 0 and 1; fd 0 becomes /dev/null and fd 1 a copy
    of stderr, so a stray print or child process cannot corrupt the frame stream.
    """
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        return serve(inp, out, policy, inspect, execute, log, saves)
    finally:
        for stream in (inp, out):
            try:
                stream.close()
            except OSError:
                pass
