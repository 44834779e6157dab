"""The ssh:// pieces without ssh: URL parsing, framing, handshake, pipelining, serve policy.

The server runs in a thread over os.pipe pairs (transport.PipeTransport); its commands are
stand-ins that write to the streams they are given, so these tests need no repository.
"""

from __future__ import annotations

import io
import os
import select

import pytest

from backshift.errors import (
    EXIT_ERROR,
    RemoteConnectionLost,
    RemoteError,
    RemoteProtocolError,
    RemoteRefused,
    RemoteVersionMismatch,
    UsageError,
)
from backshift.remote import protocol
from backshift.remote.client import Session, check_remote, run_over, without_option
from backshift.remote.protocol import STREAM_FRAME, FrameReader, FrameWriter
from backshift.remote.server import Policy, serve
from backshift.remote.transport import PipeTransport, ssh_argv
from backshift.remote.url import SshUrl, parse
from conftest import run

# -- URLs -------------------------------------------------------------------------------


def test_url_parses_user_host_port_and_path():
    assert parse("ssh://ann@backup.example:2222/srv/repo") == SshUrl(
        user="ann", host="backup.example", port=2222, path="/srv/repo")
    assert parse("ssh://host/srv/repo") == SshUrl(None, "host", None, "/srv/repo")
    assert parse("ssh://[::1]:22/r") == SshUrl(None, "::1", 22, "/r")
    assert str(parse("ssh://ann@[::1]:22/r")) == "ssh://ann@[::1]:22/r"


@pytest.mark.parametrize(("url", "why"), [
    ("ssh://host", "no repository path"),
    ("ssh://host/", "must be absolute"),
    ("ssh://host/~/repo", "must be absolute"),
    ("ssh://host/./repo", "must be absolute"),
    ("ssh:///srv/repo", "no host name"),
    ("ssh://ann@/srv/repo", "no host name"),
    ("ssh://host:0/srv/repo", "bad port"),
    ("ssh://host:70000/srv/repo", "bad port"),
    ("ssh://host:ssh/srv/repo", "bad port"),
    ("ssh://host:/srv/repo", "bad port"),
    ("ssh://-oProxyCommand=x/srv/repo", "is not a host name"),
])
def test_url_refuses_bad_urls_with_the_cause(url, why):
    with pytest.raises(UsageError, match=why):
        parse(url)


def test_url_errors_reach_the_cli_as_one_line_exit_2():
    res = run("-r", "ssh://backup.example/~/repo", "saves", exit_code=EXIT_ERROR)
    assert res.stderr == ("backshift: error: ssh://backup.example/~/repo: the repository path "
                          "must be absolute, as in ssh://backup.example/srv/backups/repo\n")


def test_remote_usage_errors_stay_local_before_any_connection():
    """Port 1 has no server: these fail on this host, with the local command's message."""
    res = run("-r", "ssh://127.0.0.1:1/srv/repo", "list", exit_code=EXIT_ERROR)
    assert "Missing option '--backup'" in res.stderr
    res = run("-r", "ssh://127.0.0.1:1/srv/repo", "list", "--help")
    assert "--backup ID|latest" in res.stdout


def test_serve_runs_here_even_when_the_repository_is_remote(monkeypatch):
    monkeypatch.setenv("BACKSHIFT_REPO", "ssh://127.0.0.1:1/srv/repo")
    res = run("serve", "--help")
    assert "--restrict-to-path PATH" in res.stdout


def test_ssh_argv_splits_rsh_like_a_shell_and_adds_port_and_command():
    argv = ssh_argv(parse("ssh://ann@h:2222/r"), "/opt/bs/bin/backshift",
                    "ssh -i '/keys/my key' -o BatchMode=yes")
    assert argv == ["ssh", "-i", "/keys/my key", "-o", "BatchMode=yes", "-p", "2222", "ann@h",
                    "/opt/bs/bin/backshift", "serve"]
    assert ssh_argv(parse("ssh://h/r"), "backshift", "ssh") == ["ssh", "h", "backshift", "serve"]
    with pytest.raises(UsageError, match="BACKSHIFT_RSH is empty"):
        ssh_argv(parse("ssh://h/r"), "backshift", "  ")


def test_without_option_drops_output_in_every_spelling():
    for args in (["-o", "f", "--backup", "1"], ["--output", "f", "--backup", "1"],
                 ["--output=f", "--backup", "1"], ["-of", "--backup", "1"]):
        assert without_option(args, "-o", "--output") == ["--backup", "1"], args
    assert without_option(["--", "-o"], "-o", "--output") == ["--", "-o"]


def test_check_remote_refuses_local_only_and_unknown_commands():
    check_remote("list")
    with pytest.raises(Exception, match="run it on the repository host"):
        check_remote("import-legacy")
    with pytest.raises(Exception, match="does not run on ssh:// repositories yet"):
        check_remote("frobnicate")


# -- framing ------------------------------------------------------------------------------


def frames_of(data: bytes, peer: str = "peer") -> list:
    reader = FrameReader(io.BytesIO(data), peer)
    out = []
    while (frame := reader.read()) is not None:
        out.append(frame)
    return out


def test_frames_round_trip_header_and_payload():
    buf = io.BytesIO()
    w = FrameWriter(buf)
    big = os.urandom(STREAM_FRAME * 3 + 17)
    w.send({"id": 1, "kind": "result", "name": "caf\u00e9 \udcff"})
    w.send({"id": 2, "kind": "stdout"}, big)
    got = frames_of(buf.getvalue())
    assert [f.header for f in got] == [{"id": 1, "kind": "result", "name": "caf\u00e9 \udcff"},
                                       {"id": 2, "kind": "stdout"}]
    assert got[0].payload == b"" and got[1].payload == big


def test_frames_written_in_parts_read_as_one_payload():
    buf = io.BytesIO()
    parts = [os.urandom(n) for n in (5, 0, 70_000, 1)]
    FrameWriter(buf).send({"id": 3, "op": "save.put"}, parts)
    got = frames_of(buf.getvalue())
    assert [(f.header, f.payload) for f in got] == [({"id": 3, "op": "save.put"},
                                                     b"".join(parts))]
    with pytest.raises(ValueError, match="frame too large"):  # the parts' sum counts
        FrameWriter(io.BytesIO()).send({}, [b"x" * (protocol.MAX_PAYLOAD // 2 + 1)] * 2)


def test_frame_reader_names_a_cut_frame_a_lost_connection():
    buf = io.BytesIO()
    FrameWriter(buf).send({"id": 1}, b"x" * 1000)
    with pytest.raises(RemoteConnectionLost, match="middle of a frame"):
        frames_of(buf.getvalue()[:-1])


def test_frame_reader_refuses_a_huge_frame():
    data = protocol.HEAD.pack(protocol.MAGIC, 10, protocol.MAX_PAYLOAD + 1)
    with pytest.raises(RemoteProtocolError, match="not the backshift protocol"):
        frames_of(data + b"x" * 100)


def test_frame_reader_shows_what_a_non_backshift_peer_said():
    with pytest.raises(RemoteVersionMismatch,
                       match=r"does not speak the backshift protocol \(it said b'Welcome to "
                             r"host!'\)"):
        frames_of(b"Welcome to host!\nLast login: yesterday\n", "h")


def test_stream_output_cuts_big_writes_into_bounded_frames():
    buf = io.BytesIO()
    out = protocol.StreamOutput(FrameWriter(buf), 7, "stdout")
    data = os.urandom(STREAM_FRAME * 2 + 5)
    assert out.write(data) == len(data)
    with pytest.raises(OSError):
        out.fileno()  # no descriptor: the tar writer writes through it, not around it
    got = frames_of(buf.getvalue())
    assert [len(f.payload) for f in got] == [STREAM_FRAME, STREAM_FRAME, 5]
    assert b"".join(f.payload for f in got) == data


# -- sessions over the in-process pipe transport ---------------------------------------------


def no_inspect(argv):
    return argv[0], {}


def pipe_server(execute=None, policy=Policy(), inspect=no_inspect, log=None):
    logged: list[str] = []

    def serve_side(inp, out):
        return serve(inp, out, policy, inspect, execute or (lambda *a: 0),
                     log or logged.append)

    transport = PipeTransport(serve_side)
    transport.logged = logged
    return transport


def test_session_handshake_agrees_on_a_version(tmp_path):
    transport = pipe_server()
    session = Session(transport)
    reply = session.hello(str(tmp_path))
    assert reply["version"] == protocol.VERSIONS[1] == session.version
    transport.close()
    assert transport.result == [0]


def test_session_handshake_refuses_versions_that_cannot_talk(tmp_path, monkeypatch):
    transport = pipe_server()
    session = Session(transport)
    monkeypatch.setattr(protocol, "VERSIONS", (5, 6))  # the server is newer than the client
    with pytest.raises(RemoteError, match=r"the client speaks \[?1..1.*the server 5..6") as e:
        session.call({"op": "hello", "versions": [1, 1], "repo": str(tmp_path)})
    assert e.value.exit_code == RemoteVersionMismatch.exit_code
    transport.close()


def test_session_echo_carries_large_payloads_intact(tmp_path):
    transport = pipe_server()
    session = Session(transport)
    session.hello(str(tmp_path))
    for size in (0, 1, 65537, 20 << 20):
        data = os.urandom(size)
        assert session.call({"op": "echo"}, data).payload == data
    transport.close()


def test_session_pipelines_many_requests_answered_in_order(tmp_path):
    """Far more in flight than the pipes hold: the writer thread keeps both sides moving."""
    transport = pipe_server()
    session = Session(transport)
    session.hello(str(tmp_path))
    payloads = [os.urandom(200_000) + i.to_bytes(4, "big") for i in range(120)]
    answers = list(session.pipeline((({"op": "echo"}, p) for p in payloads), window=16))
    assert [a[-1].payload for a in answers] == payloads
    assert [a[-1].header["id"] for a in answers] == list(range(2, 122))
    transport.close()


def test_session_run_streams_output_and_forwards_the_exit_code(tmp_path):
    seen = {}

    def execute(repo, argv, debug, out, err, encoding, errors):
        seen.update(repo=repo, argv=argv, encoding=encoding)
        for _ in range(40):
            out.write(b"y" * 100_000)
        err.write(b"backshift: error: no save 99\n")
        return 8

    transport = pipe_server(execute)
    out, err = io.BytesIO(), io.BytesIO()
    code = run_over(transport, str(tmp_path), ["list", "--backup", "99"], out, err,
                    debug=False, encoding="utf-8", errors="strict")
    assert code == 8
    assert out.getvalue() == b"y" * 4_000_000
    assert err.getvalue() == b"backshift: error: no save 99\n"
    assert seen == {"repo": os.path.realpath(tmp_path), "argv": ["list", "--backup", "99"],
                    "encoding": "utf-8"}


def test_serve_falls_back_to_utf8_for_an_encoding_it_cannot_use(tmp_path):
    seen = []
    transport = pipe_server(lambda *a: seen.append(a[-2:]) or 0)
    session = Session(transport)
    session.hello(str(tmp_path))
    for encoding in ("rot13", "no-such-codec", None, "latin-1"):
        session.run(["saves"], io.BytesIO(), io.BytesIO(), debug=False, encoding=encoding,
                    errors="strict")
    transport.close()
    assert seen == [("utf-8", "surrogateescape")] * 3 + [("latin-1", "strict")]


def test_run_over_sends_the_run_with_the_hello():
    """No round trip before the first byte: the run is on the wire before the hello's answer."""
    seen: list[bool] = []

    def server(inp, out):
        raw = open(inp.fileno(), "rb", buffering=0, closefd=False)  # reads no further ahead
        reader, frames = FrameReader(raw, "the client"), FrameWriter(out)
        hello = reader.read()
        seen.append(bool(select.select([raw], [], [], 10)[0]))
        frames.send({"id": hello.header["id"], "kind": "result", "version": 1})
        rid = reader.read().header["id"]
        frames.send({"id": rid, "kind": "stdout"}, b"listing")
        frames.send({"id": rid, "kind": "exit", "code": 0})
        return reader.read()  # None: the client closed

    out = io.BytesIO()
    code = run_over(PipeTransport(server), "/repo", ["saves"], out, io.BytesIO(), debug=False,
                    encoding="utf-8", errors="strict")
    assert (code, out.getvalue(), seen) == (0, b"listing", [True])


def test_run_over_reports_a_server_that_dies_mid_stream(tmp_path):
    def execute(repo, argv, debug, out, err, encoding, errors):
        out.write(b"partial")
        raise SystemExit(9)  # the server process is gone without a final frame

    transport = pipe_server(execute)
    with pytest.raises(RemoteConnectionLost, match="pipe lost: the server closed"):
        run_over(transport, str(tmp_path), ["tar", "--backup", "1"], io.BytesIO(),
                 io.BytesIO(), debug=False, encoding="utf-8", errors="strict")


def test_serve_refuses_a_client_that_speaks_nonsense():
    logged: list[str] = []
    transport = PipeTransport(lambda i, o: serve(i, o, Policy(), no_inspect, None,
                                                 logged.append))
    transport.writer.write(b"GET / HTTP/1.1\r\n\r\n")
    transport.close()
    assert transport.result == [RemoteVersionMismatch.exit_code]
    assert logged and "does not speak the backshift protocol" in logged[0]


def test_serve_refuses_run_requests_it_must_not_run(tmp_path):
    ran = []
    transport = pipe_server(lambda *a: ran.append(a) or 0,
                            inspect=lambda argv: (argv[0], {"output": "/etc/passwd"}))
    session = Session(transport)
    session.hello(str(tmp_path))
    for argv, why in ((["-r", "/elsewhere", "list"], "needs argv"),
                      (["save"], "cannot run through backshift serve"),
                      (["tar", "-o", "/etc/passwd"], "writes only to the connection")):
        with pytest.raises(RemoteError, match=why):
            session.run(argv, io.BytesIO(), io.BytesIO(), debug=False, encoding="utf-8",
                        errors="strict")
    assert ran == []
    transport.close()


# -- policy ---------------------------------------------------------------------------------


def test_policy_restrict_resolves_symlinks_and_dotdot(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "web1").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "other")
    policy = Policy(restrict_to=(str(allowed),))
    assert policy.repository(str(allowed / "web1")) == str(allowed / "web1")
    assert policy.repository(str(allowed / "new" / "repo")) == str(allowed / "new" / "repo")
    for bad in (str(allowed / "escape"), f"{allowed}/../other", str(tmp_path / "allowedx"),
                "relative/path", f"{allowed}/web1\0/x", None):
        with pytest.raises(RemoteRefused):
            policy.repository(bad)


def test_policy_append_only_refuses_what_deletes_or_rewrites():
    policy = Policy(append_only=True)
    for name, params in (("list", {}), ("check", {"repair": False}), ("saves", None),
                         ("init", {}), ("tar", {"output": "-"})):
        policy.command(name, params or {})
    for name, params in (("expire", {}), ("break-lock", {}), ("check", {"repair": True})):
        with pytest.raises(RemoteRefused, match="--append-only"):
            policy.command(name, params)
    Policy().command("expire", {})


def test_pipe_transport_server_thread_ends_with_the_client():
    transport = pipe_server()
    transport.close()
    assert not transport.thread.is_alive()
