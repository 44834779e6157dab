"""`python -m bench.memory`: peak RSS of `check --read-data` and `expire` on a catalog of
`many`'s scale (1,000,000 files), the row of issue 19 item 16 (every command under 250 MB).

The repository is built directly (SQL and chunk files, no save: a save of 1M files takes
long on a shared machine), into bench/cache/memory<N>-v<VERSION>/ and reused: N files of a
few dozen bytes each in 1,000 directories, each its own content and chunk (a real chunk
file, raw encoded), in two complete saves of one series; the second has 1% of the files
changed, so `expire --keep-last 1` removes the first save and frees those chunks. Each
command runs in a fresh process timed by bench's timer (peak RSS of the process).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys

import xxhash

from . import __main__ as bench

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = 1
LIMIT_MB = 250
PER_DIR = 1000
START_NS = 1_735_689_600 * 1_000_000_000


def _data(n: int, generation: int) -> bytes:
    return b"file %d generation %d\n" % (n, generation)


def build(root: str, files: int) -> None:
    """A repository at ROOT with FILES files in two saves (see the module's text)."""
    from backshift.catalog import CATALOG_NAME, Catalog
    from backshift.chunkcodec import HEADER_RAW

    subprocess.run([sys.executable, "-m", "backshift", "-q", "-r", root, "init"], check=True)
    cat = Catalog.open(os.path.join(os.fsencode(root), CATALOG_NAME))
    conn = cat.conn
    conn.execute("PRAGMA synchronous = OFF")
    chunks = os.path.join(root, "chunks")
    made: set[str] = set(os.listdir(chunks))
    ids = {"path": 1, "version": 1, "content": 1, "chunk": 1}

    def new_content(data: bytes) -> int:
        sha = hashlib.sha256(data).digest()
        kid, cid = ids["chunk"], ids["content"]
        ids["chunk"] += 1
        ids["content"] += 1
        conn.execute("INSERT INTO chunk VALUES (?, ?, ?, ?)", (kid, sha, len(data),
                                                                len(data) + 2))
        conn.execute("INSERT INTO content VALUES (?, ?, ?, 1)",
                     (cid, len(data), xxhash.xxh3_128_digest(data)))
        conn.execute("INSERT INTO content_chunk VALUES (?, 0, ?)", (cid, kid))
        sub = sha[:1].hex()
        if sub not in made:
            os.makedirs(os.path.join(chunks, sub), exist_ok=True)
            made.add(sub)
        with open(os.path.join(chunks, sub, sha.hex()), "wb") as f:
            f.write(HEADER_RAW + data)
        return cid

    def new_path(parent: int | None, path: bytes) -> int:
        pid = ids["path"]
        ids["path"] += 1
        conn.execute("INSERT INTO path VALUES (?, ?, ?, ?)",
                     (pid, parent, path.replace(b"/", b"\0"), path.rsplit(b"/", 1)[-1]))
        return pid

    def new_version(pid: int, mode: int, size: int, cid: int | None) -> int:
        vid = ids["version"]
        ids["version"] += 1
        conn.execute("INSERT INTO version (id, path_id, mode, uid, gid, user, grp, size, "
                     "mtime_ns, ctime_ns, dev, ino, nlink, rdev, link_target, content_id) "
                     "VALUES (?, ?, ?, 0, 0, X'', X'', ?, ?, ?, 1, ?, 1, 0, NULL, ?)",
                     (vid, pid, mode, size, START_NS, START_NS, pid, cid))
        return vid

    conn.execute("BEGIN")
    live: dict[int, int] = {}
    files_of: dict[int, int] = {}  # path id -> file number
    top = new_path(None, b"m")
    live[top] = new_version(top, 0o040755, 0, None)
    for d in range((files + PER_DIR - 1) // PER_DIR):
        dpath = b"m/d%04d" % d
        did = new_path(top, dpath)
        live[did] = new_version(did, 0o040755, 0, None)
        for n in range(d * PER_DIR, min(files, (d + 1) * PER_DIR)):
            pid = new_path(did, dpath + b"/f%07d" % n)
            data = _data(n, 0)
            live[pid] = new_version(pid, 0o100644, len(data), new_content(data))
            files_of[pid] = n
    for generation in (0, 1):
        if generation:
            for pid, n in files_of.items():
                if n % 100 == 0:
                    data = _data(n, 1)
                    live[pid] = new_version(pid, 0o100644, len(data), new_content(data))
        started = START_NS + generation * 86_400 * 10**9
        conn.execute("INSERT INTO save (hostname, subset, started_ns, finished_ns, status, "
                     "files, tool_version, writer_host, writer_pid) VALUES ('bench', "
                     "'memory', ?, ?, 'complete', ?, 'bench.memory', 'bench', 1)",
                     (started, started + 10**9, len(live)))
        sid = conn.last_insert_rowid()
        conn.executemany("INSERT INTO member VALUES (?, ?, ?)",
                         ((sid, pid, vid) for pid, vid in sorted(live.items())))
        cat.record_save_digest(sid)  # as a save's final commit does: check verifies it
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    cat.close()


def ensure(files: int, cache: str = os.path.join(HERE, "cache")) -> str:
    """The built repository for FILES files in CACHE (made when missing or half made)."""
    root = os.path.join(cache, f"memory{files}-v{VERSION}")
    stamp = os.path.join(root, ".complete")
    if not os.path.exists(stamp):
        shutil.rmtree(root, ignore_errors=True)
        build(root, files)
        open(stamp, "w").close()
    return root


def measure(root: str, work: str, log: str) -> dict[str, dict]:
    """check --read-data on ROOT, then expire --keep-last 1 on a copy (ROOT stays)."""
    env = dict(os.environ)
    bs = [sys.executable, "-m", "backshift", "-q"]
    out = {"check": bench.run_timed([*bs, "-r", root, "check", "--read-data"], env, log)}
    copy = os.path.join(work, "memory-expire")
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", root, copy], check=True)  # hard links: chunk files shared
    for name in os.listdir(copy):  # the catalog is rewritten: its own copy
        if name.startswith("catalog"):
            p = os.path.join(copy, name)
            os.unlink(p)
            shutil.copyfile(os.path.join(root, name), p)
    out["expire"] = bench.run_timed([*bs, "-r", copy, "expire", "--keep-last", "1"], env, log)
    shutil.rmtree(copy, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--work", default=os.path.join(HERE, "cache", "work"))
    ap.add_argument("--cache", default=os.path.join(HERE, "cache"),
                    help="where the built repository is kept for the next run")
    args = ap.parse_args(argv)
    print(f"building or reusing a repository of {args.files:,} files", file=sys.stderr)
    root = ensure(args.files, args.cache)
    os.makedirs(args.work, exist_ok=True)
    log = os.path.join(args.work, "memory.log")
    res = measure(root, args.work, log)
    print(f"{'step':28} {'s':>8} {'peak RSS MB':>12} {'limit':>6}  exit")
    worst = 0
    for step, label in (("check", "check --read-data"), ("expire", "expire --keep-last 1")):
        r = res[step]
        mb = r["rss_kb"] / 1024
        worst = max(worst, mb)
        print(f"{label + f' ({args.files:,} files)':28} {r['s']:8.1f} {mb:12.0f} "
              f"{LIMIT_MB:6}  {r['rc']}")
    return 0 if worst < LIMIT_MB and all(r["rc"] in (0, 1) for r in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
