"""`backshift mount`: serve the repository (or one save) as a read-only FUSE filesystem in
the foreground until it is unmounted (fusermount3 -u, umount) or the process is signalled.

The caller holds the repository open with the shared lock for the whole mount, so expire
cannot delete chunks under it; saves go on meanwhile and appear without remounting."""

from __future__ import annotations

import gc
import os
import re
import signal
from collections.abc import Callable

from ..errors import MountFailed, MountUnavailable
from ..repo import Repository
from .mountread import ChunkCache
from .mounttree import Tree

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STATS_ENV = "BACKSHIFT_MOUNT_STATS"  # set: the requests answered, by type, printed at the end
GC_EVERY = 50_000  # more live objects between collections (Python's default: 700; the
# caches grow by a few an entry, each collection looked at all of them, and next to
# nothing the requests make forms a cycle)
READ_AHEAD_KB = 1024  # the kernel's READ requests for a sequential reader (its default: 128)


def check_fuse() -> None:
    """MountUnavailable unless the optional pyfuse3 and trio are importable."""
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as e:
        raise MountUnavailable(str(e)) from None


def check_mountpoint(mountpoint: bytes) -> None:
    if not os.path.isdir(mountpoint):
        why = "not a directory" if os.path.exists(mountpoint) else "no such directory"
        raise MountFailed(os.fsdecode(mountpoint), why)
    if os.path.ismount(mountpoint):
        raise MountFailed(os.fsdecode(mountpoint), "something is mounted there already")


def mount_device(mountpoint: bytes, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """MAJOR:MINOR of what is mounted at MOUNTPOINT (the last mount there), from the mount
    table: a stat of the mountpoint would ask the filesystem, which is not served yet."""
    found = None
    try:
        with open(mountinfo, "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                    found = fields[2].decode()
    except OSError:
        return None
    return found


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: space, tab, newline and backslash written as octal escapes."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def widen_read_ahead(mountpoint: bytes, sys_bdi: str = "/sys/class/bdi") -> bool:
    """Let the kernel read ahead READ_AHEAD_KB of a file a reader goes through in order: one
    READ request of a MiB instead of eight of 128 KiB (each a round trip through pyfuse3).
    Only root may: for others the kernel's default stays (False)."""
    device = mount_device(mountpoint)
    if device is None:
        return False
    try:
        with open(os.path.join(sys_bdi, device, "read_ahead_kb"), "w") as f:
            f.write(f"{READ_AHEAD_KB}\n")
    except OSError:
        return False
    return True


def mount_repository(repo: Repository, mountpoint: bytes, save_id: int | None,
                     notice: Callable[[str], None]) -> None:
    """Mount and serve until unmounted or signalled (SIGINT, SIGTERM, SIGHUP: then the
    filesystem is unmounted here); returns normally either way."""
    import pyfuse3
    import trio

    from .fusefs import Filesystem, count_requests, fuse_fds, serve_inline

    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    cache = ChunkCache(repo.store)
    tree = Tree(repo.catalog, save_id, lambda msg: notice(f"backshift: warning: {msg}"))
    fs = Filesystem(tree, cache, lambda msg: notice(f"backshift: error: {msg}"))
    counts = count_requests(fs) if os.environ.get(STATS_ENV) else None
    options = {"ro", "fsname=backshift", "subtype=backshift"}
    fds_before = fuse_fds()
    try:
        pyfuse3.init(fs, os.fsdecode(mountpoint), options)
    except RuntimeError as e:
        cache.close()
        raise MountFailed(os.fsdecode(mountpoint), str(e)) from None
    inline = serve_inline(fuse_fds() - fds_before)
    fs.after_init = lambda: widen_read_ahead(mountpoint)  # the kernel's INIT sets it first
    what = f"save {save_id}" if save_id is not None else "repository"
    notice(f"backshift: {what} mounted at {os.fsdecode(mountpoint)}; "
           f"unmount with: fusermount3 -u {os.fsdecode(mountpoint)}")
    stopped, unmounted = [], []

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            # the signals are this task's before a request is served (serve_inline's wait
            # for the next request does not let other tasks run)
            await nursery.start(watch_signals, nursery.cancel_scope)
            await pyfuse3.main(max_tasks=1 if inline else 99)
            if not stopped:
                unmounted.append(True)  # from outside: fusermount3 -u, umount
            nursery.cancel_scope.cancel()

    async def watch_signals(scope: trio.CancelScope, task_status=trio.TASK_STATUS_IGNORED
                            ) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for _signum in signals:
                stopped.append(True)
                pyfuse3.terminate()  # main() returns once the requests in flight are done
                return

    gc.freeze()  # what is there now lives as long as the mount: no collection looks at it
    gc.set_threshold(GC_EVERY)
    collections = sum(g["collections"] for g in gc.get_stats())
    try:
        trio.run(serve)
    except KeyboardInterrupt:  # before the signal receiver was set up
        stopped.append(True)
    finally:
        pyfuse3.close(unmount=not unmounted)
        cache.close()
        if counts is not None:
            collected = sum(g["collections"] for g in gc.get_stats()) - collections
            notice("backshift: mount requests: " + ", ".join(
                f"{name} {n}" for name, n in counts.items() if n)
                + f"; chunk files read {cache.reads} ({cache.pooled} by worker threads)"
                + f"; garbage collections {collected}")
