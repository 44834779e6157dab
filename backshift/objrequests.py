"""The S3 request layer of the object-store chunk backend: every request objstore.ObjectStore
makes goes through _call (a LIST through _list), which retries transient failures (throttling,
5xx, timeouts, dropped or refused connections) with exponential backoff and jitter, and turns
the last failure into the errors.py error that names the operation, the object and the
attempts. A mixin: it uses the store's client (s3client.ObstoreClient or a test's wrapper),
location, retries and backoff_s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

from .errors import (
    ObjectStoreBucketMissing,
    ObjectStoreDenied,
    ObjectStoreFailed,
    ObjectStoreUnreachable,
)
from .s3client import (
    DENIED,
    NO_BUCKET,
    NOT_FOUND,
    RETRYABLE,
    UNREACHABLE,
    RequestFailed,
    endpoint_shown,
)

# Retries with exponential backoff and jitter (AWS's "equal jitter": half to all of the step,
# so that parallel PUTs spread out): 0.2 s doubling up to 5 s, 6 retries: 6-11 s of a
# service that throttles or restarts before giving up (boto3's standard mode tries 3 times).
RETRIES = 6
BACKOFF_S = 0.2
BACKOFF_MAX_S = 5.0


class RetryingRequests:
    """_call and _list for objstore.ObjectStore (its client, location, retries, backoff_s)."""

    def _call(self, op: str, key: str, fn: Callable, *args):
        """FN(*ARGS) with retries and backoff on transient failures; a user-facing error
        naming OP and KEY after the last one. NOT_FOUND comes back as RequestFailed (the
        caller knows what a missing object means)."""
        attempt = 0
        while True:
            try:
                return fn(*args)
            except RequestFailed as e:
                attempt += 1
                if e.kind in RETRYABLE and attempt <= self.retries:
                    self._sleep(attempt)
                    continue
                raise self._error(op, key, e, attempt) from None

    def _sleep(self, attempt: int) -> None:
        time.sleep(random.uniform(0.5, 1.0) * min(BACKOFF_MAX_S,
                                                    self.backoff_s * 2 ** (attempt - 1)))

    def _error(self, op: str, key: str, e: RequestFailed, attempts: int) -> Exception:
        where = self.location.show(key)
        if e.kind == NOT_FOUND:
            return e
        if e.kind == NO_BUCKET:
            return ObjectStoreBucketMissing(self.location.bucket, endpoint_shown())
        if e.kind == DENIED:
            return ObjectStoreDenied(f"{op} {where}", e.detail)
        if e.kind == UNREACHABLE:
            return ObjectStoreUnreachable(endpoint_shown(), f"{op} {where}", e.detail, attempts)
        return ObjectStoreFailed(where, op, attempts, e.detail)

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        last: str | None = None
        attempt = 0
        while True:
            try:
                for batch in self.client.list(prefix, last):
                    for key, size in batch:
                        if key.startswith(prefix):
                            last = key
                            yield key, size
                    attempt = 0
                return
            except RequestFailed as e:
                attempt += 1
                if e.kind in RETRYABLE and attempt <= self.retries:
                    self._sleep(attempt)
                    continue
                raise self._error("LIST", prefix, e, attempt) from None
