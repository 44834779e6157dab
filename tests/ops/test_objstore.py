"""The object-store chunk backend against a real SeaweedFS (tests/helpers/seaweed.py); faults the
server rarely produces (throttling, timeouts, lost responses) through a thin wrapper of the
client, and obstore's own errors from a stub HTTP server and a port that never answers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import apsw
import pytest
from seaweed import throttling_endpoint

from backshift import objcopies, s3client
from backshift.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ObjectStoreBucketMissing,
    ObjectStoreDenied,
    ObjectStoreFailed,
    ObjectStoreUnreachable,
    UsageError,
)
from backshift.model import ChunkRef
from backshift.objstore import ObjectStore, key_for
from backshift.s3client import TRANSIENT, ObstoreClient, RequestFailed, parse_url

FAST = {"backoff_s": 0.005}  # retries without the production backoff's seconds


def text_chunk(n: int, size: int = 20_000) -> bytes:
    return b"".join(b"chunk %d line %d\n" % (n, i) for i in range(size // 16))[:size]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def raw_object(store: ObjectStore, key: str) -> bytes:
    """The bytes of object KEY, read without the store's verification."""
    return store.client.get(key, 1 << 30)[1]


def keys_of(store: ObjectStore, prefix: str) -> dict[str, int]:
    return {k: size for batch in store.client.list(prefix) for k, size in batch}


@pytest.fixture
def store(s3_url):
    with ObjectStore(s3_url, **FAST) as s:
        yield s


# -- URLs ------------------------------------------------------------------------------------


def test_objstore_url_gives_bucket_and_prefix():
    assert parse_url("s3://my-bucket") == s3client.Location("my-bucket", "")
    assert parse_url("s3://my-bucket/a/b/") == s3client.Location("my-bucket", "a/b")
    assert parse_url("s3://my-bucket/a/b").show("chunks/ab/x") == "s3://my-bucket/a/b/chunks/ab/x"


@pytest.mark.parametrize("url", ["/local/dir", "s3://", "s3://Upper", "s3://ab",
                                 "s3://bucket/a//b", "s3://bucket/a/../b"])
def test_objstore_url_refuses_bad_forms(url):
    with pytest.raises(UsageError) as e:
        parse_url(url)
    assert url in str(e.value) and e.value.exit_code == 2


# -- writing and reading -----------------------------------------------------------------------


def test_objstore_round_trips_compressed_and_raw_chunks(store):
    text, noise = text_chunk(1, 64_000), os.urandom(40_000)
    put = [store.put(text, sha(text)), store.put(noise, sha(noise))]
    assert all(p.new for p in put)
    assert store.flush() == 2
    assert store.read(ChunkRef(sha(text), len(text))) == text
    assert store.read(ChunkRef(sha(noise), len(noise))) == noise
    # the chunk-file format, under PREFIX/chunks/ab/<sha256>
    zbody, rbody = raw_object(store, key_for(sha(text))), raw_object(store, key_for(sha(noise)))
    assert zbody[:2] == b"8\n" and len(zbody) == put[0].stored_length < len(text)
    assert rbody == b"1\n" + noise and put[1].stored_length == len(noise) + 2
    assert key_for(sha(text)) == f"chunks/{sha(text).hex()[:2]}/{sha(text).hex()}"


def test_objstore_put_of_a_pending_chunk_sends_it_once(store, s3_env):
    data = text_chunk(2)
    before = s3_env.request_counts().get("PUT", 0)
    first, second = store.put(data, sha(data)), store.put(data, sha(data))
    assert (first.new, second.new) == (True, False)
    assert store.flush() == 1
    assert s3_env.request_counts().get("PUT", 0) - before == 1


def test_objstore_flush_returns_when_every_put_is_acknowledged(store, s3_env):
    """The batch is durable when flush() returns: every object is listed with its size,
    and the server counted exactly one PUT per chunk (no HEAD, no GET)."""
    datas = [text_chunk(i, 8_000 + 97 * i) for i in range(200)]
    before = s3_env.request_counts()
    stored = store.put_many([(d, sha(d), b"") for d in datas])
    assert store.flush() == 200
    listed = keys_of(store, "chunks/")
    assert listed == {key_for(sha(d)): s.stored_length for d, s in zip(datas, stored, strict=True)}
    after = s3_env.request_counts()
    assert after.get("PUT", 0) - before.get("PUT", 0) == 200
    assert after.get("GET", 0) == before.get("GET", 0)
    assert after.get("HEAD", 0) == before.get("HEAD", 0)


def test_objstore_read_makes_one_get_per_chunk(store, s3_env):
    datas = [text_chunk(i) for i in range(5)]
    for d in datas:
        store.put(d, sha(d))
    store.flush()
    before = s3_env.request_counts().get("GET", 0)
    for d in datas:
        assert store.read(ChunkRef(sha(d), len(d))) == d
    assert s3_env.request_counts().get("GET", 0) - before == 5


def test_objstore_read_reports_a_flipped_byte(store):
    data = text_chunk(3)
    store.put(data, sha(data))
    store.flush()
    key = key_for(sha(data))
    body = bytearray(raw_object(store, key))
    body[len(body) // 2] ^= 0x01
    store.client.put(key, bytes(body))
    with pytest.raises(ChunkCorrupt) as e:
        store.read(ChunkRef(sha(data), len(data)))
    assert sha(data).hex() in str(e.value) and e.value.exit_code == 10
    with pytest.raises(ChunkCorrupt):
        store.read_orphan(sha(data))


def test_objstore_read_reports_a_raw_body_with_other_content(store):
    """A raw body decodes whatever its bytes: only the sha256 tells the damage."""
    data = os.urandom(30_000)
    store.put(data, sha(data))
    store.flush()
    store.client.put(key_for(sha(data)), b"1\n" + bytes(reversed(data)))
    with pytest.raises(ChunkCorrupt, match="does not match its name"):
        store.read(ChunkRef(sha(data), len(data)))


def test_objstore_read_refuses_an_object_longer_than_any_body(store):
    data = b"x" * 1000
    store.client.put(key_for(sha(data)), b"1\n" + os.urandom(200_000))
    with pytest.raises(ChunkCorrupt, match="longer than any body"):
        store.read(ChunkRef(sha(data), len(data)))


def test_objstore_read_reports_a_missing_object(store):
    data = text_chunk(4)
    with pytest.raises(ChunkMissing) as e:
        store.read(ChunkRef(sha(data), len(data)))
    assert sha(data).hex() in str(e.value) and e.value.exit_code == 10
    assert not store.present(sha(data))


def test_objstore_read_orphan_verifies_without_a_length(store):
    data = text_chunk(5)
    store.put(data, sha(data))
    store.flush()
    assert store.read_orphan(sha(data)) == data
    # an orphan (no catalog row names it) is stored but not taken as present: a save PUTs
    # a body verified there over it rather than trust it unverified
    assert store.stored_size(sha(data)) is not None and not store.present(sha(data))


def test_objstore_put_body_stores_an_encoded_body(store):
    data = text_chunk(6)
    body = store.encode(data)
    store.put_body(sha(data), body)
    assert store.flush() == 1
    assert raw_object(store, key_for(sha(data))) == body


# -- maintenance -------------------------------------------------------------------------------


def test_objstore_iterate_lists_chunks_and_strays(store):
    datas = [text_chunk(i) for i in range(3)]
    stored = [store.put(d, sha(d)) for d in datas]
    store.flush()
    store.client.put("chunks/zz/not-a-chunk", b"junk")
    store.client.put(f"chunks/00/{sha(datas[0]).hex()}", b"in the wrong fan-out directory")
    found = list(store.iter_chunk_files())
    chunks = {s: size for s, size in found if s is not None}
    strays = {size for s, size in found if s is None}
    assert chunks == {sha(d): st.stored_length for d, st in zip(datas, stored, strict=True)}
    assert strays == {"chunks/zz/not-a-chunk", f"chunks/00/{sha(datas[0]).hex()}"}


def test_objstore_remove_many_deletes_exactly_those(store):
    datas = [text_chunk(i) for i in range(4)]
    for d in datas:
        store.put(d, sha(d))
    store.flush()
    store.remove_many([sha(datas[0]), sha(datas[2]), sha(b"never stored")])
    store.remove(sha(datas[3]))
    assert {s for s, _size in store.iter_chunk_files()} == {sha(datas[1])}


def test_objstore_quarantine_moves_the_object_aside(store):
    data = text_chunk(7)
    store.put(data, sha(data))
    store.flush()
    body = raw_object(store, key_for(sha(data)))
    key = store.quarantine(sha(data))
    assert key.startswith(f"quarantine/{sha(data).hex()}.")
    assert raw_object(store, key) == body
    assert keys_of(store, "chunks/") == {}
    assert store.quarantine(sha(data)) is None  # gone already


# -- probe and configuration errors ------------------------------------------------------------


def test_objstore_probe_passes_and_leaves_nothing(store, s3_env):
    before = s3_env.request_counts()
    store.probe()
    assert keys_of(store, "") == {}
    after = s3_env.request_counts()
    for kind in ("PUT", "GET", "LIST", "DELETE"):
        assert after.get(kind, 0) - before.get(kind, 0) >= 1, kind


def test_objstore_probe_reports_a_wrong_secret_key(s3_url, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    with ObjectStore(s3_url, **FAST) as s, pytest.raises(ObjectStoreDenied) as e:
        s.probe()
    message = str(e.value)
    assert e.value.exit_code == 41 and "\n" not in message
    assert "probe PUT" in message and "SignatureDoesNotMatch" in message
    assert "not-the-secret" not in message


def test_objstore_probe_reports_an_unknown_access_key(s3_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with ObjectStore(s3_url, **FAST) as s, pytest.raises(ObjectStoreDenied) as e:
        s.probe()
    assert e.value.exit_code == 41 and "InvalidAccessKeyId" in str(e.value)


def test_objstore_probe_reports_a_missing_bucket(s3_env):
    with ObjectStore("s3://no-such-bucket-here/x", **FAST) as s, \
            pytest.raises(ObjectStoreBucketMissing) as e:
        s.probe()
    assert e.value.exit_code == 42
    assert "no-such-bucket-here" in str(e.value) and s3_env.endpoint in str(e.value)


def test_objstore_probe_reports_an_endpoint_that_is_down(s3_url, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:pw@127.0.0.1:{closed}")
    with ObjectStore(s3_url, retries=2, **FAST) as s, \
            pytest.raises(ObjectStoreUnreachable) as e:
        s.probe()
    message = str(e.value)
    assert e.value.exit_code == 40 and "\n" not in message
    assert f"http://127.0.0.1:{closed}" in message and "pw" not in message
    assert "probe PUT" in message and "3 attempt(s)" in message


def test_objstore_reports_timeouts_after_its_retries(s3_url, monkeypatch):
    """A server that accepts connections and never answers: obstore's timeout is retried,
    then a clear error."""
    monkeypatch.setattr(s3client, "TIMEOUT", "300ms")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        with ObjectStore(s3_url, retries=1, **FAST) as s, \
                pytest.raises(ObjectStoreFailed) as e:
            s.read(ChunkRef(sha(b"a"), 1))
    assert e.value.exit_code == 43
    assert "timed out" in str(e.value) and "GET" in str(e.value) and "2 attempt(s)" in str(e.value)


def test_objstore_retries_throttling_then_reports_it(s3_url, monkeypatch):
    data = text_chunk(8)
    with throttling_endpoint() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        with ObjectStore(s3_url, retries=3, **FAST) as s:
            s.put(data, sha(data))
            with pytest.raises(ObjectStoreFailed) as e:
                s.flush()
    assert e.value.exit_code == 43 and server.seen == 4
    assert "HTTP 503 SlowDown" in str(e.value) and "4 attempt(s)" in str(e.value)
    assert key_for(sha(data)) in str(e.value)


# -- fault injection through a wrapper of the client ----------------------------------------


class FaultyClient:
    """The real client with planned faults: FAULTS[op] is a list consumed one per call of
    op: "throttle" and "timeout" fail before the request is sent, "lost" sends it (the
    server stores the object) and then loses the response; None passes."""

    def __init__(self, inner: ObstoreClient, **faults: list) -> None:
        self.inner = inner
        self.faults = faults
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _fault(self, op: str):
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            plan = self.faults.get(op)
            return plan.pop(0) if plan else None

    def _do(self, op: str, fn, *args):
        fault = self._fault(op)
        if fault == "throttle":
            raise RequestFailed(TRANSIENT, "HTTP 503 SlowDown")
        if fault == "timeout":
            raise RequestFailed(TRANSIENT, "timed out")
        result = fn(*args)
        if fault == "lost":
            raise RequestFailed(TRANSIENT, "connection dropped")
        return result

    def put(self, key, body):
        return self._do("put", self.inner.put, key, body)

    def get(self, key, max_size):
        return self._do("get", self.inner.get, key, max_size)

    def list(self, prefix, offset=None):
        self._fault("list") and self._raise_list()
        return self.inner.list(prefix, offset)

    @staticmethod
    def _raise_list():
        raise RequestFailed(TRANSIENT, "HTTP 503 SlowDown")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def faulty_store(url: str, retries: int = 3, **faults) -> ObjectStore:
    inner = ObstoreClient(parse_url(url))
    return ObjectStore(url, client=FaultyClient(inner, **faults), retries=retries, **FAST)


def test_objstore_retries_throttled_and_timed_out_puts(s3_url, s3_env):
    datas = [text_chunk(i) for i in range(4)]
    before = s3_env.request_counts().get("PUT", 0)
    with faulty_store(s3_url, put=["throttle", "timeout", "throttle"]) as s:
        for d in datas:
            s.put(d, sha(d))
        assert s.flush() == 4
        assert s.client.calls["put"] == 7
        for d in datas:
            assert s.read(ChunkRef(sha(d), len(d))) == d
    assert s3_env.request_counts().get("PUT", 0) - before == 4  # the faults sent nothing


def test_objstore_put_whose_response_is_lost_is_sent_again(s3_url, s3_env):
    data = text_chunk(9)
    before = s3_env.request_counts().get("PUT", 0)
    with faulty_store(s3_url, put=["lost"]) as s:
        s.put(data, sha(data))
        assert s.flush() == 1
        assert s.read(ChunkRef(sha(data), len(data))) == data
    assert s3_env.request_counts().get("PUT", 0) - before == 2  # the same body twice


def test_objstore_flush_raises_when_a_put_exhausts_its_retries(s3_url):
    ok, bad = text_chunk(10), text_chunk(11)
    with faulty_store(s3_url, retries=2, put=[None] + ["throttle"] * 3) as s:
        s.put(ok, sha(ok))
        time.sleep(0.2)  # its PUT takes the None
        s.put(bad, sha(bad))
        with pytest.raises(ObjectStoreFailed) as e:
            s.flush()
        assert e.value.exit_code == 43
        assert key_for(sha(bad)) in str(e.value) and "3 attempt(s)" in str(e.value)
        assert "HTTP 503 SlowDown" in str(e.value)
        assert not s.present(sha(bad))
        assert s.flush() == 0  # the failed batch is gone: the next starts afresh


def test_objstore_retries_timed_out_gets_and_lists(s3_url):
    data = text_chunk(12)
    with faulty_store(s3_url, get=["timeout", "throttle"], list=["throttle"]) as s:
        s.put(data, sha(data))
        s.flush()
        assert s.read(ChunkRef(sha(data), len(data))) == data
        assert [c for c, _size in s.iter_chunk_files()] == [sha(data)]
        assert s.client.calls == {"put": 1, "get": 3, "list": 2}


def test_objstore_keeps_many_puts_in_flight_within_its_bound(s3_url):
    class Slow(FaultyClient):
        active = peak = 0

        def put(self, key, body):
            with self.lock:
                Slow.active += 1
                Slow.peak = max(Slow.peak, Slow.active)
            time.sleep(0.05)
            try:
                return self.inner.put(key, body)
            finally:
                with self.lock:
                    Slow.active -= 1

    inner = ObstoreClient(parse_url(s3_url))
    with ObjectStore(s3_url, client=Slow(inner), threads=4, **FAST) as s:
        for i in range(40):
            d = text_chunk(i, 8_000)
            s.put(d, sha(d))
        assert s.flush() == 40
    assert Slow.peak == 4


def test_objstore_abandon_drops_the_pending_batch(s3_url):
    data = text_chunk(13)
    with faulty_store(s3_url) as s:
        s.put(data, sha(data))
        s.abandon()
        assert s.flush() == 0


# -- catalog copies ---------------------------------------------------------------------------


def make_catalog_copy(dirpath, ns: int, rows: int, blob: str = "randomblob(1000)") -> bytes:
    path = os.path.join(os.fsencode(dirpath), b"catalog-%d-%d.sqlite3" % (ns, 4242))
    con = apsw.Connection(os.fsdecode(path))
    con.execute("CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                f"FROM n WHERE i < ?) INSERT INTO t SELECT {blob} FROM n", (rows,))
    con.close()
    return path


def test_objstore_catalog_copies_keep_the_newest_and_download_it(store, tmp_path):
    assert store.download_newest_catalog_copy(tmp_path / "none.sqlite3") is None
    paths = [make_catalog_copy(tmp_path, 1_700_000_000_000_000_000 + i, 5 + i)
             for i in range(4)]
    for p in paths:
        store.upload_catalog_copy(p, keep=3)
    names = [k for k, _size in store.catalog_copies()]
    assert names == [f"catalog-copies/{os.path.basename(p).decode()}.zst"
                     for p in paths[:0:-1]]
    dest = tmp_path / "recovered.sqlite3"
    assert store.download_newest_catalog_copy(dest) == names[0]
    assert dest.read_bytes() == open(paths[-1], "rb").read()
    assert not (tmp_path / "recovered.sqlite3.tmp").exists()
    con = apsw.Connection(str(dest))
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(8,)]


def test_objstore_catalog_copy_download_retries_a_dropped_stream(s3_url, tmp_path):
    path = make_catalog_copy(tmp_path, 1_700_000_000_000_000_000, 50)

    class Drops(FaultyClient):
        def get_to_file(self, key, f):
            if self._fault("get_to_file") == "lost":  # the first bytes came, then none
                f.write(self.inner.get(key, 1 << 30)[1][:100])
                raise RequestFailed(TRANSIENT, "connection dropped")
            return self.inner.get_to_file(key, f)

    client = Drops(ObstoreClient(parse_url(s3_url)), get_to_file=["lost"])
    with ObjectStore(s3_url, client=client, **FAST) as s:
        s.upload_catalog_copy(path)
        dest = tmp_path / "recovered.sqlite3"
        s.download_newest_catalog_copy(dest)
    assert dest.read_bytes() == open(path, "rb").read()


def test_objstore_catalog_copy_refuses_other_names(store, tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a catalog copy name"):
        store.upload_catalog_copy(tmp_path / "notes.txt")


def test_objstore_catalog_copy_of_many_megabytes_round_trips(
        store, tmp_path, s3_env, monkeypatch):
    """Compressed beyond SINGLE_PUT_MAX the upload is a streamed multipart one; the
    download is streamed through the decompressor."""
    monkeypatch.setattr(objcopies, "SINGLE_PUT_MAX", 1 << 20)
    path = make_catalog_copy(tmp_path, 1_700_000_000_000_000_000, 12_000)
    assert os.path.getsize(path) > 10 << 20
    before = s3_env.request_counts()
    key = store.upload_catalog_copy(path)
    delta = {k: v - before.get(k, 0) for k, v in s3_env.request_counts().items()}
    parts = -(-keys_of(store, "catalog-copies/")[key] // (5 << 20))
    assert parts >= 2
    assert (delta["POST"], delta["PUT"]) == (2, parts)  # initiate, parts, complete
    dest = tmp_path / "recovered.sqlite3"
    store.download_newest_catalog_copy(dest)
    assert dest.read_bytes() == open(path, "rb").read()


def test_objstore_catalog_copy_goes_up_compressed_in_one_put(store, tmp_path, s3_env):
    path = make_catalog_copy(tmp_path, 1_700_000_000_000_000_000, 3_000,
                             "printf('/home/user/file-%08d.txt', i)")
    before = s3_env.request_counts()
    key = store.upload_catalog_copy(path)
    delta = {k: v - before.get(k, 0) for k, v in s3_env.request_counts().items()}
    assert delta.get("PUT") == 1 and not delta.get("POST"), delta
    assert key.endswith(".sqlite3.zst")
    assert keys_of(store, "catalog-copies/")[key] < os.path.getsize(path) // 2
    dest = tmp_path / "recovered.sqlite3"
    assert store.download_newest_catalog_copy(dest) == key
    assert dest.read_bytes() == open(path, "rb").read()


def test_objstore_catalog_copy_of_the_plain_form_is_still_recovered(store, tmp_path):
    """Copies uploaded before they were compressed (catalog-NS-PID.sqlite3) count as
    copies: the newest of either form is the one recovered."""
    old = make_catalog_copy(tmp_path, 1_700_000_000_000_000_001, 20)
    store.client.put("catalog-copies/" + os.path.basename(old).decode(),
                     open(old, "rb").read())
    (tmp_path / "x").mkdir()
    older = make_catalog_copy(tmp_path / "x", 1_700_000_000_000_000_000, 5)
    store.upload_catalog_copy(older)
    dest = tmp_path / "recovered.sqlite3"
    assert store.download_newest_catalog_copy(dest).endswith("-4242.sqlite3")
    assert dest.read_bytes() == open(old, "rb").read()


def test_objstore_catalog_copy_cut_short_is_refused_on_recovery(store, tmp_path):
    path = make_catalog_copy(tmp_path, 1_700_000_000_000_000_000, 50)
    key = store.upload_catalog_copy(path)
    body = raw_object(store, key)
    store.client.put(key, body[:len(body) // 2])
    dest = tmp_path / "recovered.sqlite3"
    with pytest.raises(ObjectStoreFailed, match="not one whole zstd frame"):
        store.download_newest_catalog_copy(dest)
    assert not dest.exists() and not (tmp_path / "recovered.sqlite3.tmp").exists()
