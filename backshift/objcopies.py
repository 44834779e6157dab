"""What the object-store chunk backend keeps in the bucket besides chunks: the catalog
copies (PREFIX/catalog-copies/, uploaded after each save and expire, the newest downloaded by
`init --recover`) and the probe object `init` PUTs, GETs, LISTs and DELETEs. A mixin of
objstore.ObjectStore (its requests: objrequests.RetryingRequests).
"""

from __future__ import annotations

import os
import re
import secrets
import socket

from .errors import ObjectStoreFailed, UsageError
from .s3client import RequestFailed

CATALOG_COPIES = "catalog-copies"
PROBE = "probe"
KEEP_COPIES = 3  # catalog copies kept in the bucket, as ops/catalog_copy.py keeps locally
_COPY_NAME = re.compile(r"^catalog-(\d+)-(\d+)\.sqlite3$")


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

    def upload_catalog_copy(self, path: bytes | str, keep: int = KEEP_COPIES) -> str:
        """PUT the catalog copy file PATH (named catalog-<ns>-<pid>.sqlite3, as
        ops/catalog_copy.py makes them) to PREFIX/catalog-copies/<name>, then delete all but
        the newest KEEP copies there; its key. Acknowledged means complete: S3 makes an
        object visible only when its upload finished."""
        name = os.path.basename(os.fsdecode(path))
        if not _COPY_NAME.match(name):
            raise UsageError(f"{name}: not a catalog copy name (catalog-NS-PID.sqlite3)")
        key = f"{CATALOG_COPIES}/{name}"
        self._call("PUT", key, self.client.put_file, key, os.fsdecode(path))
        old = [k for k, _size in self.catalog_copies()[keep:]]
        if old:
            self._call("DELETE", old[0], self.client.delete, old)
        return key

    def catalog_copies(self) -> list[tuple[str, int]]:
        """(key, size) of the catalog copies in the bucket, newest first (by the time in
        their names)."""
        found = []
        for key, size in self._list(CATALOG_COPIES + "/"):
            m = _COPY_NAME.match(key[len(CATALOG_COPIES) + 1:])
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
        return self.client.get_to_file(key, f)
