"""What the object-store chunk backend keeps in the bucket besides chunks: the catalog
copies (PREFIX/catalog-copies/, uploaded after each save and expire, the newest downloaded by
`init --recover`) and the probe object `init` PUTs, GETs, LISTs and DELETEs. A mixin of
objstore.ObjectStore (its requests: objrequests.RetryingRequests).

A copy goes up as one zstd frame with its content checksum (catalog-NS-PID.sqlite3.zst):
a catalog is mostly text and small integers, about a third of its size compressed, and a
re-save's time is that of its copy's upload (the server hashes and stores every byte).
Compressed in memory up to SINGLE_PUT_MAX (one PUT), streamed as a multipart upload beyond.
Recovery reads both forms (copies made before are plain .sqlite3 files).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading

from .errors import ObjectStoreFailed, UsageError
from .s3client import RequestFailed

CATALOG_COPIES = "catalog-copies"
PROBE = "probe"
KEEP_COPIES = 3  # catalog copies kept in the bucket, as ops/catalog_copy.py keeps locally
_COPY_NAME = re.compile(r"^catalog-(\d+)-(\d+)\.sqlite3$")  # the local copy's name
_KEY_NAME = re.compile(r"^catalog-(\d+)-(\d+)\.sqlite3(\.zst)?$")  # its object's
ZST = ".zst"
# zstd level -1: 21 ms for the 14 MB catalog of `mixed` (5.1 MB out), level 1 the same
# size in 38 ms, level 3 3.9 MB in 43 ms; the upload costs ~10 ms per MB here.
COPY_LEVEL = -1
# Compressed bytes held for one PUT; beyond, a multipart upload whose 5 MB parts go up while
# the rest is compressed (the 14 MB catalog of `mixed`: 215-258 ms one PUT, 163-206 ms so)
SINGLE_PUT_MAX = 5 << 20
_BLOCK = 1 << 20


class BucketCopies:
    """probe() and the catalog copies for objstore.ObjectStore."""

    def probe(self) -> None:
        """Check that a probe object can be PUT, read back, LISTed and DELETEd; the error
        of the first step that fails (bucket missing, credentials refused, endpoint down,
        a step that misbehaves) names that step."""
        host = socket.gethostname().replace("/", "_")[:32]
        key = f"{PROBE}/{host}-{os.getpid()}-{secrets.token_hex(8)}"
        body = secrets.token_bytes(32)
        self._call("probe PUT", key, self.client.put, key, body)
        try:
            _size, back = self._call("probe GET", key, self.client.get, key, 1 << 10)
        except RequestFailed as e:
            raise ObjectStoreFailed(self.location.show(key), "probe GET", 1,
                                    "an object just PUT is not found " + e.detail) from None
        if back != body:
            raise ObjectStoreFailed(self.location.show(key), "probe GET", 1,
                                    "the object read back differs from what was PUT")
        if key not in (k for k, _size in self._list(PROBE + "/")):
            raise ObjectStoreFailed(self.location.show(PROBE + "/"), "probe LIST", 1,
                                    "the object just PUT is not listed")
        self._call("probe DELETE", key, self.client.delete, [key])

    def upload_catalog_copy(self, path: bytes | str, keep: int = KEEP_COPIES,
                            source=None) -> str:
        """PUT the catalog copy file PATH (named catalog-<ns>-<pid>.sqlite3, as
        ops/catalog_copy.py makes them) zstd-compressed to PREFIX/catalog-copies/<name>.zst,
        then delete all but the newest KEEP copies there; its key. SOURCE: the copy's bytes
        as an open binary file (PATH then only names it: the file may be renamed meanwhile).
        Acknowledged means complete: S3 makes an object visible only when its upload
        finished."""
        name = os.path.basename(os.fsdecode(path))
        if not _COPY_NAME.match(name):
            raise UsageError(f"{name}: not a catalog copy name (catalog-NS-PID.sqlite3)")
        key = f"{CATALOG_COPIES}/{name}{ZST}"
        if self._client is None:  # set up the client (import obstore) while compressing
            threading.Thread(target=_touch_client, args=(self,), daemon=True).start()
        with open(os.fsdecode(path), "rb") if source is None else contextlib.nullcontext(
                source) as f:
            self._call("PUT", key, self._put_compressed, key, f)
        old = [k for k, _size in self.catalog_copies()[keep:]]
        if old:
            self._call("DELETE", old[0], self.client.delete, old)
        return key

    def catalog_copies(self) -> list[tuple[str, int]]:
        """(key, size) of the catalog copies in the bucket, newest first (by the time in
        their names)."""
        found = []
        for key, size in self._list(CATALOG_COPIES + "/"):
            m = _KEY_NAME.match(key[len(CATALOG_COPIES) + 1:])
            if m:
                found.append((int(m.group(1)), key, size))
        found.sort(reverse=True)
        return [(key, size) for _ns, key, size in found]

    def download_newest_catalog_copy(self, dest: bytes | str) -> str | None:
        """Write the newest catalog copy of the bucket to DEST (through DEST.tmp, fsynced,
        renamed: DEST is whole or absent); its key, None when there is none."""
        copies = self.catalog_copies()
        if not copies:
            return None
        key, size = copies[0]
        dest = os.fsdecode(dest)
        temp = dest + ".tmp"
        try:
            with open(temp, "wb") as f:
                got = self._call("GET", key, self._download, key, f)
                f.flush()
                os.fsync(f.fileno())
            if got != size:
                raise ObjectStoreFailed(self.location.show(key), "GET", 1,
                                        f"got {got} bytes of {size}")
            os.rename(temp, dest)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        return key

    def _download(self, key: str, f) -> int:
        f.seek(0)
        f.truncate()  # a retry starts the file over
        if not key.endswith(ZST):
            return self.client.get_to_file(key, f)
        out = _Decompressing(f)
        got = self.client.get_to_file(key, out)
        out.finish(self.location.show(key))
        return got

    def _put_compressed(self, key: str, f) -> None:
        """One attempt at PUTting the zstd frame of F's bytes under KEY (from F's start)."""
        import zstandard

        f.seek(0)
        z = zstandard.ZstdCompressor(level=COPY_LEVEL, write_checksum=True).compressobj()
        held: list[bytes] = []
        size = 0
        while size <= SINGLE_PUT_MAX:
            block = f.read(_BLOCK)
            if not block:
                held.append(z.flush())
                self.client.put(key, b"".join(held))
                return
            out = z.compress(block)
            if out:
                held.append(out)
                size += len(out)

        def rest():  # bigger than one PUT should hold: the rest as it is compressed
            yield from held
            held.clear()
            while block := f.read(_BLOCK):
                out = z.compress(block)
                if out:
                    yield out
            yield z.flush()
        self.client.put_stream(key, rest())


def _touch_client(store) -> None:
    try:
        _ = store.client  # made once, kept by the store
    except Exception:  # noqa: BLE001 - the upload's own first request reports it
        pass


class _Decompressing:
    """A file to get_to_file() into that writes the decompressed bytes to F; finish()
    raises unless one whole frame came (zstd checks its content checksum at its end)."""

    def __init__(self, f) -> None:
        import zstandard
        self.f = f
        self.z = zstandard.ZstdDecompressor().decompressobj()

    def write(self, block) -> int:
        import zstandard
        try:
            self.f.write(self.z.decompress(block))
        except zstandard.ZstdError as e:
            raise RequestFailed("other", f"not a whole zstd frame: {e}") from None
        return len(block)

    def finish(self, where: str) -> None:
        if not self.z.eof or self.z.unused_data:
            raise ObjectStoreFailed(where, "GET", 1, "the catalog copy is not one whole zstd "
                                    "frame (cut short or with bytes after it)")
