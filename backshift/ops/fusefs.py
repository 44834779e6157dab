"""The FUSE side of `backshift mount`: pyfuse3 requests answered from the Tree (catalog) and
OpenFile (chunks). Read-only: every request that would change something fails with EROFS.

Imported only when pyfuse3 is installed (ops/mount.py checks first)."""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import select
import stat
from collections.abc import Callable

import pyfuse3
import trio

from ..errors import DataDamaged
from .mountread import ChunkCache, OpenFile, is_hole
from .mounttree import Attr, NotFound, Tree

SAVE_TIMEOUT_S = 300.0  # a save's entries never change: the kernel may cache them long
SERIES_TIMEOUT_S = 1.0  # hosts, series and `latest` change as saves are made
INLINE_READ_MAX = 64 * 1024  # files this small are read in the FUSE loop, not a thread
INLINE_LOAD_MAX = 64 * 1024  # chunks this small are fetched ahead in the FUSE loop too: a
# worker thread's hand-over (a future, the GIL, a wake-up) costs more than such a fetch
AHEAD_FILES = 16  # files after the one opened whose chunks are fetched ahead (listing order)
AHEAD_BYTES = 8 << 20  # ... and at most this many of their bytes
STORE_MAX = 4 << 20  # files ahead at most this large go into the kernel's page cache whole
STORE_EVERY = 4  # ... looked for at every such open while the next file is stored already
BLKSIZE = 128 * 1024  # the I/O size stat suggests (cp, tar read this much at a time)


YIELD_EVERY = 64  # requests served back to back before the loop lets other tasks run
WAIT_HERE_MS = 20  # ... and how long it waits for the next one before trio waits instead: a
# reader in step with the mount (tar, find: one request after each answer) sends the next
# one within this, and the trip through trio's epoll costs as much as a request


def fuse_fds() -> set[int]:
    """This process's open descriptors of /dev/fuse."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
        except OSError:
            pass
    return found


def serve_inline(fds: set[int]) -> bool:
    """Let pyfuse3's request loop take the next request at once when one is queued or comes
    within WAIT_HERE_MS, instead of a trip through trio's lock and epoll for every request
    (about half of what a request costs). Safe with one request task only
    (main(max_tasks=1)): no other task reads the descriptor between the check and the
    read. False (pyfuse3 as it is) when the session's descriptor is not known or pyfuse3
    lacks the hook."""
    wait = getattr(pyfuse3, "_wait_fuse_readable", None)
    if len(fds) != 1 or wait is None:
        return False
    poller = select.poll()
    poller.register(fds.pop(), select.POLLIN)
    served = 0

    async def wait_readable() -> bool:
        nonlocal served
        served += 1
        # the first wait, after INIT, is trio's: what init() left for trio runs then
        if served % YIELD_EVERY and poller.poll(WAIT_HERE_MS if served > 2 else 0):
            return True
        return await wait()

    pyfuse3._wait_fuse_readable = wait_readable
    return True


REQUESTS = ("lookup", "getattr", "readlink", "opendir", "readdir", "releasedir", "open", "read",
            "flush", "release", "getxattr", "listxattr", "access", "statfs", "forget")


def count_requests(fs: Filesystem) -> dict[str, int]:
    """Count the requests of each type FS answers (BACKSHIFT_MOUNT_STATS: the mount prints
    them at its end), plus "notify_store": the files put in the kernel's page cache."""
    counts = dict.fromkeys((*REQUESTS, "notify_store"), 0)
    for name in REQUESTS:
        method = getattr(fs, name)

        def counted(*args, _name=name, _method=method):
            counts[_name] += 1
            return _method(*args)

        setattr(fs, name, counted)
    fs.counts = counts
    return counts


async def _rofs(*_args, **_kw):
    raise pyfuse3.FUSEError(errno.EROFS)


class Listing:
    """An open directory of a save, read a page of catalog rows at a time (a directory of
    millions of entries is never held whole)."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.start = -1  # the offset the page was asked from (-1: no page yet)
        self.end = 0  # the offset the next page starts after (== start: no more)
        self.page: list[tuple[int, bytes, Attr]] = []
        self.offsets: list[int] = []

    def has(self, start: int) -> bool:
        return 0 <= self.start <= start and (start < self.end or self.end == self.start)


class Filesystem(pyfuse3.Operations):
    """The read-only filesystem of one repository (or one save of it)."""

    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, cache: ChunkCache, report: Callable[[str], None]) -> None:
        super().__init__()
        self.tree = tree
        self.cache = cache
        self.report = report
        self.handles = itertools.count(1)
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, list[tuple[bytes, Attr]] | Listing] = {}
        self.xattrs_served: bool | None = None  # None: not asked yet
        self.ahead: dict[int, None] = {}  # files whose chunks were fetched ahead lately
        self.stored: dict[int, None] = {}  # files put in the kernel's page cache lately
        self.open_inodes: dict[int, int] = {}  # inode -> its open handles
        self.after_init: Callable[[], object] | None = None  # run once INIT is answered
        self.serving = False  # mounted: the kernel takes notify_store
        self.opens = 0
        self.counts: dict[str, int] | None = None  # requests by type (count_requests)

    def init(self) -> None:
        self.serving = True
        if self.after_init is not None:  # called as INIT is answered: run just after
            trio.lowlevel.current_trio_token().run_sync_soon(self.after_init)

    # -- metadata -------------------------------------------------------------------------

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        ino, mode, nlink, uid, gid, rdev, size, mtime_ns, ctime_ns, immutable = attr[:10]
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.entry_timeout = e.attr_timeout = SAVE_TIMEOUT_S if immutable else SERIES_TIMEOUT_S
        e.st_mode = mode
        e.st_nlink = nlink
        e.st_uid = uid
        e.st_gid = gid
        e.st_rdev = rdev
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) >> 9 if mode & 0o170000 == stat.S_IFREG else 0
        e.st_atime_ns = e.st_mtime_ns = mtime_ns
        e.st_ctime_ns = ctime_ns
        return e

    async def getattr(self, inode, ctx=None):
        try:
            return self._entry(self.tree.getattr(inode))
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return self._entry(self.tree.lookup(parent_inode, name))
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def readlink(self, inode, ctx):
        try:
            return self.tree.readlink(inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    async def opendir(self, inode, ctx):
        try:
            if self.tree.is_listed_by_pages(inode):
                self.tree.getattr(inode)
                entries = Listing(inode)
            else:
                entries = self.tree.children(inode)  # a few hosts, series or saves
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        fh = next(self.handles)
        self.dirs[fh] = entries
        return fh

    async def readdir(self, fh, start_id, token):
        d = self.dirs.get(fh)
        if d is None:
            return
        if isinstance(d, list):
            for i in range(start_id, len(d)):
                name, attr = d[i]
                if not pyfuse3.readdir_reply(token, name, self._entry(attr), i + 1):
                    return
            return
        while True:
            if not d.has(start_id):
                d.page, d.end = self.tree.children_page(d.ino, start_id)
                d.start = start_id
                d.offsets = [e[0] for e in d.page]
            for offset, name, attr in d.page[bisect.bisect_right(d.offsets, start_id):]:
                if not pyfuse3.readdir_reply(token, name, self._entry(attr), offset):
                    return
            if d.end == d.start:
                return
            start_id = max(start_id, d.end)

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    # -- extended attributes ----------------------------------------------------------------

    def _xattrs(self, inode) -> tuple[tuple[bytes, bytes], ...]:
        if self.xattrs_served is None:
            # none in the repository: ENOSYS, and the kernel asks no more for the life of
            # the mount (`ls -l` asks two names of every entry)
            self.xattrs_served = self.tree.catalog.mount_has_xattrs()
        if not self.xattrs_served:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        try:
            return self.tree.xattrs(inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def getxattr(self, inode, name, ctx):
        for have, value in self._xattrs(inode):
            if have == name:
                return value
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        return [name for name, _ in self._xattrs(inode)]

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 512
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- data -----------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            attr = self.tree.getattr(inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if not stat.S_ISREG(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        chunks = self.tree.chunks_of(attr)
        fh = next(self.handles)
        self.files[fh] = OpenFile(self.cache, attr.key, attr.size, chunks, inode)
        self.open_inodes[inode] = self.open_inodes.get(inode, 0) + 1
        self._fetch_ahead(inode)
        self.opens += 1
        if self.serving and (self.opens % STORE_EVERY == 0
                             or self.tree.successor.get(inode) not in self.stored):
            self._store_ahead(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _store_ahead(self, inode: int) -> None:
        """Put the whole content of the files listed after INODE whose chunks are in the
        cache already into the kernel's page cache (notify_store): the reader that opens
        them next reads them with no READ request (a round trip through pyfuse3 each).
        Only files nobody has open: a READ of theirs in flight would hold the pages the
        store must lock, and this loop, the one that answers it, would wait forever."""
        ino = inode
        successor, known, stored = self.tree.successor, self.tree.known, self.stored
        for _ in range(AHEAD_FILES):
            ino = successor.get(ino)
            attr = known.get(ino) if ino is not None else None
            if attr is None or ino not in self.ahead:
                return
            if ino in stored or ino in self.open_inodes or not 0 < attr.size <= STORE_MAX:
                continue
            chunks = self.tree.listed_chunks(ino)
            if chunks is None:
                return
            f = OpenFile(self.cache, attr.key, attr.size, chunks)
            if not f.ready(0, attr.size):
                return  # still being fetched: a later open stores it
            try:
                pyfuse3.notify_store(ino, 0, f.read(0, attr.size))
            except (DataDamaged, OSError):
                return  # the reader's READ gets it (or its error)
            if len(stored) >= 10_000:
                stored.clear()
            stored[ino] = None
            if self.counts is not None:
                self.counts["notify_store"] += 1

    def _fetch_ahead(self, inode: int) -> None:
        """Fetch the chunks of the files listed after INODE in worker threads: a reader of a
        directory (tar, cp -r, grep -r) opens them next, in that order."""
        refs = []
        budget = AHEAD_BYTES
        ino = inode
        successor, known, ahead = self.tree.successor, self.tree.known, self.ahead
        for _ in range(AHEAD_FILES):
            ino = successor.get(ino)
            attr = known.get(ino) if ino is not None else None
            if attr is None:
                break
            if ino not in ahead:  # not asked for yet (the others: by an earlier open)
                chunks = self.tree.listed_chunks(ino)
                if chunks is None:
                    break
                for ref in chunks:
                    if is_hole(*ref):
                        continue
                    if ref[1] <= INLINE_LOAD_MAX:
                        self.cache.load_quietly(*ref)
                    else:
                        refs.append(ref)
                if len(ahead) >= 10_000:
                    ahead.clear()
                ahead[ino] = None
            budget -= attr.size
            if budget <= 0:
                break
        if refs:
            self.cache.prefetch(refs)

    async def read(self, fh, off, size):
        f = self.files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            if f.size <= INLINE_READ_MAX or f.ready(off, size):
                return f.read(off, size)  # a worker thread costs more than the read
            return await trio.to_thread.run_sync(f.read, off, size)
        except DataDamaged as e:
            self.report(f"{self.tree.path_of(f.key)}: {e.message()}; read of {size} bytes "
                        f"at offset {off} "
                        "failed (EIO)")
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh):
        f = self.files.pop(fh, None)
        if f is not None:
            left = self.open_inodes.pop(f.ino, 1) - 1
            if left:
                self.open_inodes[f.ino] = left

    # -- writes: none ---------------------------------------------------------------------

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _rofs
    write = create = setxattr = removexattr = _rofs

    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True
