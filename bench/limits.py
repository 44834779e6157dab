"""What the machine can do at best: the floor each backshift step is compared with."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time

import zstandard
from pyfastcdc import FastCDC

from .datasets import Dataset, text_bytes

BUF_BYTES = 32 << 20


def _rate(fn, nbytes: int, repeat: int = 3) -> float:
    """Best-of-REPEAT bytes per second of fn()."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def _file_names(root: str) -> list[bytes]:
    out = subprocess.run(["find", root, "-print0"], check=True, capture_output=True).stdout
    return [n for n in out.split(b"\0") if n]


def sequential_read(root: str, names: list[bytes]) -> float:
    """Seconds to read every regular file once, 1 MiB at a time (warm cache after the first)."""
    t = time.perf_counter()
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # symlinks and the like
        try:
            while os.read(fd, 1 << 20):
                pass
        except IsADirectoryError:
            pass
        finally:
            os.close(fd)
    return time.perf_counter() - t


STORE_PROBE_FILES = 4000


def chunk_file_seconds(work: str, trash: str) -> tuple[float, float]:
    """Seconds per chunk file on the benchmark's filesystem: to make one (create a temp
    file, write 4 KiB, rename it to its final name in one of 256 fan-out directories, and a
    share of one syncfs, as the chunk store does for every new chunk: the design is one file
    per chunk), and to read one back (open, read, close, as check --read-data does for every
    chunk; from the page cache, so a floor). The probe directory goes to TRASH afterwards
    (deleting it now would slow the next file creations nearby: ext4's recently_deleted)."""
    root = os.path.join(work, f"store-probe-{time.time_ns()}")
    for i in range(256):
        os.makedirs(os.path.join(root, f"{i:02x}"))
    body = os.urandom(4096)
    os.sync()
    t = time.perf_counter()
    for n in range(STORE_PROBE_FILES):
        name = hashlib.sha256(b"%d" % n).hexdigest()
        final = os.path.join(root, name[:2], name)
        fd = os.open(final + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, body)
        os.close(fd)
        os.rename(final + ".tmp", final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.sync()
    finally:
        os.close(fd)
    make_s = (time.perf_counter() - t) / STORE_PROBE_FILES
    t = time.perf_counter()
    for n in range(STORE_PROBE_FILES):
        name = hashlib.sha256(b"%d" % n).hexdigest()
        fd = os.open(os.path.join(root, name[:2], name), os.O_RDONLY)
        try:
            while os.read(fd, 1 << 20):
                pass
        finally:
            os.close(fd)
    read_s = (time.perf_counter() - t) / STORE_PROBE_FILES
    os.makedirs(trash, exist_ok=True)
    os.rename(root, os.path.join(trash, os.path.basename(root)))
    return make_s, read_s


def measure(ds: Dataset, work: str | None = None, trash: str | None = None) -> dict:
    """Throughputs (bytes/s) and rates (files/s) on this machine, with the dataset's floor times.

    With WORK (and TRASH), also the cost of making and of reading one chunk file on that
    filesystem: the floors of the first save and of check then count a chunk file per
    regular file of the dataset."""
    rng = random.Random(9)
    rand = rng.randbytes(BUF_BYTES)
    text = text_bytes(rng, BUF_BYTES)
    half = rand[: BUF_BYTES // 2] + text[: BUF_BYTES // 2]
    cdc = FastCDC(avg_size=(1 << 20) - (256 << 10), min_size=256 << 10, max_size=4 << 20)
    comp = zstandard.ZstdCompressor(level=3)
    r = {
        "sha256_Bps": _rate(lambda: hashlib.sha256(half).digest(), len(half)),
        "zstd3_random_Bps": _rate(lambda: comp.compress(rand), len(rand)),
        "zstd3_text_Bps": _rate(lambda: comp.compress(text), len(text)),
        "fastcdc_Bps": _rate(lambda: sum(1 for _ in cdc.cut_buf(half)), len(half)),
    }
    t = time.perf_counter()
    subprocess.run(["find", ds.root, "-printf", ""], check=True)
    r["find_s"] = time.perf_counter() - t
    names = _file_names(ds.root)
    t = time.perf_counter()
    for n in names:
        os.lstat(n)
    r["lstat_s"] = time.perf_counter() - t
    r["entries"] = len(names)
    sequential_read(ds.root, names)  # warm the cache, as the benchmark's saves see it
    r["read_s"] = sequential_read(ds.root, names)
    r["read_Bps"] = ds.bytes / r["read_s"] if r["read_s"] else 0.0
    if work is not None:
        r["chunk_file_s"], r["chunk_read_s"] = chunk_file_seconds(
            work, trash or os.path.join(work, ".trash"))
    r["floor"] = floors(r, ds, os.cpu_count() or 1)
    return r


def floors(r: dict, ds: Dataset, cores: int) -> dict[str, float]:
    """The floor of each step (seconds) from the measurements R of measure()."""
    # Hash + chunk + compress are CPU work that two cores can share; reading and walking
    # cannot go faster than the measured passes.
    zstd_bps = (r["zstd3_random_Bps"] + r["zstd3_text_Bps"]) / 2
    cpu = ds.bytes / r["sha256_Bps"] + ds.bytes / r["fastcdc_Bps"] + ds.bytes / zstd_bps
    if "chunk_file_s" in r:
        cpu += ds.files * r["chunk_file_s"]
    # check --read-data (one thread) opens, reads and hashes a chunk file per chunk: on
    # `many`, 1M opens of chunk files dominate, which hashing 218 MB (0.1 s) does not show
    check = ds.bytes / r["sha256_Bps"] + ds.files * r.get("chunk_read_s", 0.0)
    walk = r["find_s"] + r["lstat_s"]
    return {
        "save1": max(r["read_s"], cpu / min(cores, 2)) + walk,
        "resave": walk,
        "resave_mod": walk,
        "list": r["find_s"],
        "tar": r["read_s"],
        # at least what reading the dataset's files takes, too (it opens each once)
        "check": max(r["read_s"], check),
    }
