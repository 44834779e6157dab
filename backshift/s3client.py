"""The requests of the object-store chunk backend: one thin layer over obstore's S3 client.

It reads endpoint and credentials from the standard environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) and never shows or
stores the secrets; each failed request becomes one RequestFailed of a known kind, which
objstore.ObjectStore retries or turns into an errors.py error. Tests replace the client with
a wrapper that injects faults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import ObjectStoreFailed, UsageError

TIMEOUT = "60s"  # one request, body included (a 4 MiB chunk at a slow 100 KB/s is 40 s)
CONNECT_TIMEOUT = "5s"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Kinds of a failed request (RequestFailed.kind)
NOT_FOUND = "not_found"
NO_BUCKET = "no_bucket"
DENIED = "denied"
UNREACHABLE = "unreachable"  # connection refused, DNS: retried, then ObjectStoreUnreachable
TRANSIENT = "transient"  # 5xx, throttling, timeouts, dropped connections: retried
OTHER = "other"
RETRYABLE = {UNREACHABLE, TRANSIENT}


class RequestFailed(Exception):
    """One request that failed, as the client saw it: KIND (above) and a one-line DETAIL.
    Internal to this module and its clients; users see the errors.py classes."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def show(self, key: str) -> str:
        """The full s3:// name of KEY (relative to the prefix), for messages."""
        return f"{self.url}/{key}"


def parse_url(url: str) -> Location:
    """s3://BUCKET[/PREFIX] -> Location; UsageError naming what is wrong."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url}: not an object store URL (expected s3://BUCKET[/PREFIX])")
    bucket, _, prefix = url[5:].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(f"{url}: {bucket!r} is not a valid bucket name "
                         "(3-63 characters: a-z, 0-9, '.', '-')")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in prefix):
        raise UsageError(f"{url}: the prefix {prefix!r} has an empty, '.' or '..' segment "
                         "or a control character")
    return Location(bucket, prefix)


def endpoint_shown() -> str:
    """The endpoint from the environment, without any user:password@ part."""
    url = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
    if not url:
        return "AWS S3 (no AWS_ENDPOINT_URL)"
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return scheme + sep + host.rpartition("@")[2] + slash + path


# -- the client: one thin layer over obstore, replaceable in tests (fault injection) -----------

_STATUS = re.compile(r"status:\s*(\d{3})|status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                   "TooManyRequests", "RequestTimeout", "InternalError", "ServiceUnavailable"}
_DENIED_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied",
                 "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


def classify(error: BaseException) -> RequestFailed:
    """What kind of failure an obstore exception is, from its type and its text (obstore
    gives the HTTP status, the S3 error code and the reqwest error kind only as text)."""
    text = str(error)
    first = text.split("\n\nDebug source")[0].strip().splitlines()
    line = first[0] if first else type(error).__name__
    code_m = _CODE.search(text)
    code = code_m.group(1) if code_m else ""
    status_m = _STATUS.search(text)
    status = int(status_m.group(1) or status_m.group(2)) if status_m else 0
    why = f"HTTP {status} {code}".strip() if status else ""
    if code == "NoSuchBucket":
        return RequestFailed(NO_BUCKET, why)
    if code in _DENIED_CODES or status in (401, 403):
        return RequestFailed(DENIED, why)
    if isinstance(error, FileNotFoundError) or status == 404:
        return RequestFailed(NOT_FOUND, why)
    if code in _THROTTLE_CODES or status == 429 or status >= 500:
        return RequestFailed(TRANSIENT, why)
    if "ConnectionRefused" in text:
        return RequestFailed(UNREACHABLE, "connection refused")
    if "tcp connect error" in text or "dns error" in text or "kind: Connect" in text:
        return RequestFailed(UNREACHABLE, "cannot connect" + (
            " (timed out)" if "TimedOut" in text else ""))
    if "kind: Timeout" in text or "TimedOut" in text or "timed out" in text.lower():
        return RequestFailed(TRANSIENT, "timed out")
    if "error sending request" in text or "connection" in text.lower():
        return RequestFailed(TRANSIENT, "connection dropped")
    return RequestFailed(OTHER, why or line[:200])


class ObstoreClient:
    """The requests the chunk store makes, over one obstore S3Store. Each raises
    RequestFailed (classified) and nothing else; no retries here (ObjectStore retries, so
    that a PUT, idempotent for content-addressed keys, is retried after a timeout too)."""

    def __init__(self, location: Location) -> None:
        from obstore.store import S3Store  # ~16 ms: only commands that use a bucket pay it

        allow_http = os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
        # client_options replace obstore's client settings from the environment: carry
        # AWS_ALLOW_HTTP over by hand
        options = {"timeout": TIMEOUT, "connect_timeout": CONNECT_TIMEOUT,
                   "allow_http": allow_http}
        try:
            self.store = S3Store(location.bucket, prefix=location.prefix or None,
                                 client_options=options, retry_config={"max_retries": 0})
        except Exception as e:  # bad AWS_* configuration: say so, never echo values
            raise ObjectStoreFailed(location.url, "configure", 1,
                                    str(e).splitlines()[0][:200]) from None

    def _run(self, fn: Callable, *args, **kw):
        try:
            return fn(*args, **kw)
        except RequestFailed:
            raise
        except Exception as e:  # obstore's errors: one family, told apart by classify()
            raise classify(e) from None

    def put(self, key: str, body: bytes) -> None:
        import obstore
        self._run(obstore.put, self.store, key, body)

    def put_stream(self, key: str, blocks: Iterator[bytes]) -> None:
        """PUT the concatenation of BLOCKS as a multipart upload (parts of 5 MB, sent as
        the iterator yields them)."""
        import obstore
        self._run(obstore.put, self.store, key, blocks, use_multipart=True)

    def get(self, key: str, max_size: int) -> tuple[int, bytes | None]:
        """(size, body) of KEY; body None when size is above MAX_SIZE (not read)."""
        import obstore

        def fetch():
            result = obstore.get(self.store, key)
            size = result.meta["size"]
            if size > max_size:
                return size, None
            return size, bytes(result.bytes())
        return self._run(fetch)

    def get_to_file(self, key: str, fileobj) -> int:
        """Stream KEY into FILEOBJ; bytes written."""
        import obstore

        def fetch():
            n = 0
            for block in obstore.get(self.store, key).stream(min_chunk_size=1 << 20):
                n += fileobj.write(memoryview(block))
            return n
        return self._run(fetch)

    def head(self, key: str) -> int | None:
        import obstore
        try:
            return self._run(obstore.head, self.store, key)["size"]
        except RequestFailed as e:
            if e.kind == NOT_FOUND:
                return None
            raise

    def list(self, prefix: str, offset: str | None = None) -> Iterator[list[tuple[str, int]]]:
        """Batches of (key, size) under PREFIX, in key order, after OFFSET when given."""
        import obstore
        stream = self._run(obstore.list, self.store, prefix, offset=offset, chunk_size=1000)
        while True:
            batch = self._run(next, stream, None)
            if batch is None:
                return
            yield [(m["path"], m["size"]) for m in batch]

    def delete(self, keys: list[str]) -> None:
        import obstore
        self._run(obstore.delete, self.store, keys)

    def copy(self, src: str, dst: str) -> None:
        import obstore
        self._run(obstore.copy, self.store, src, dst)
