"""The FUSE side of `backshift mount`: pyfuse3 requests answered from the Tree (catalog) and
OpenFile (chunks). Read-only: every request that would change something fails with EROFS.

Imported only when pyfuse3 is installed (ops/mount.py checks first)."""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable

import pyfuse3
import trio

from ..errors import DataDamaged
from .mountread import ChunkCache, OpenFile
from .mounttree import Attr, NotFound, Tree

SAVE_TIMEOUT_S = 300.0  # a save's entries never change: the kernel may cache them long
SERIES_TIMEOUT_S = 1.0  # hosts, series and `latest` change as saves are made
INLINE_READ_MAX = 64 * 1024  # files this small are read in the FUSE loop, not a thread
BLKSIZE = 128 * 1024  # the I/O size stat suggests (cp, tar read this much at a time)


async def _rofs(*_args, **_kw):
    raise pyfuse3.FUSEError(errno.EROFS)


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
        self.dirs: dict[int, list[tuple[bytes, Attr]]] = {}

    # -- metadata -------------------------------------------------------------------------

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = e.attr_timeout = SAVE_TIMEOUT_S if attr.immutable else SERIES_TIMEOUT_S
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLKSIZE
        e.st_blocks = (attr.size + 511) // 512 if stat.S_ISREG(attr.mode) else 0
        e.st_atime_ns = e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
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
            entries = self.tree.children(inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        fh = next(self.handles)
        self.dirs[fh] = entries  # one query per listing; readdir serves it in parts
        return fh

    async def readdir(self, fh, start_id, token):
        entries = self.dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, attr = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), i + 1):
                return

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

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
        chunks = []
        if attr.content_id is not None:
            chunks = self.tree.catalog.mount_chunks_of_content(attr.content_id)
        fh = next(self.handles)
        self.files[fh] = OpenFile(self.cache, attr.key, attr.size, chunks)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        f = self.files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            if f.size <= INLINE_READ_MAX:  # a worker thread costs more than the read
                return f.read(off, size)
            return await trio.to_thread.run_sync(f.read, off, size)
        except DataDamaged as e:
            self.report(f"{self.tree.path_of(f.key)}: {e.message()}; read of {size} bytes "
                        f"at offset {off} "
                        "failed (EIO)")
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh):
        self.files.pop(fh, None)

    # -- writes: none ---------------------------------------------------------------------

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _rofs
    write = create = setxattr = removexattr = _rofs

    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True
