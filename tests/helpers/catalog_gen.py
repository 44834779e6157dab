"""Build a big catalog fast: direct SQL inserts into a real, initialised repository.

`build_catalog(repo, files, saves, seed)` adds, to a freshly initialised repository (the
same SEED gives the same catalog), SAVES complete saves of one series over
files // saves paths (a tree of users, projects and directories), so the catalog holds about
FILES member rows. Between saves a few percent of the files change content, a few change
metadata, a few are added and a few removed, like a home directory from day to day. Chunk
rows are invented (random sha256); no chunk files are written, so the result is for
queries and reports, not for restore.
"""

from __future__ import annotations

import os
import random

import apsw

from backshift.catalog import CATALOG_NAME, Catalog

DAY_NS = 86_400 * 1_000_000_000
EPOCH_NS = 1_735_689_600 * 1_000_000_000  # 2025-01-01 UTC: saves start 300 days later
EXTS = (b".txt", b".py", b".jpg", b".pdf", b".log", b".c", b".h", b".md", b".json", b".tar")


def build_catalog(repo: bytes, files: int, saves: int, seed: int) -> None:
    """Fill REPO's catalog with SAVES saves holding about FILES file rows in all."""
    rng = random.Random(seed)
    if not os.path.isdir(repo):
        raise FileNotFoundError(repo)
    per_save = max(1, files // max(1, saves))
    cat = Catalog.open(os.path.join(repo, CATALOG_NAME))
    conn = cat.conn
    conn.execute("PRAGMA synchronous = OFF")
    try:
        if conn.execute("SELECT count(*) FROM path").fetchone()[0]:
            raise ValueError("build_catalog wants a freshly initialised repository")
        conn.execute("BEGIN IMMEDIATE")
        _Builder(conn, rng, per_save).run(saves)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        cat.close()


class _Builder:
    def __init__(self, conn: apsw.Connection, rng: random.Random, per_save: int) -> None:
        self.conn = conn
        self.rng = rng
        self.per_save = per_save
        self.next_path = self._max("path") + 1
        self.next_version = self._max("version") + 1
        self.next_content = self._max("content") + 1
        self.next_chunk = self._max("chunk") + 1
        self.dirs: dict[bytes, int] = {}  # path -> path id
        self.live: dict[int, int] = {}  # path id -> current version id (the file set)
        self.versions: dict[int, tuple] = {}  # version id -> row (for metadata changes)
        self.paths: list[tuple] = []
        self.new_versions: list[tuple] = []
        self.new_contents: list[tuple] = []
        self.new_content_chunks: list[tuple] = []
        self.new_chunks: list[tuple] = []
        self.file_no = 0
        self.t0 = EPOCH_NS  # fixed, so one seed always gives the same catalog

    def _max(self, table: str) -> int:
        return self.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]

    def run(self, saves: int) -> None:
        for _ in range(self.per_save):
            self.add_file()
        for n in range(saves):
            if n:
                self.churn()
            self.flush()
            self.write_save(n)

    # -- the file set ------------------------------------------------------------------

    def dir_id(self, path: bytes) -> int:
        found = self.dirs.get(path)
        if found is not None:
            return found
        parent = None if path == b"/" else self.dir_id(path.rsplit(b"/", 1)[0] or b"/")
        pid = self.new_path(parent, path)
        self.dirs[path] = pid
        self.live[pid] = self.new_version(pid, 0o040755, 4096, None)
        return pid

    def new_path(self, parent: int | None, path: bytes) -> int:
        pid = self.next_path
        self.next_path += 1
        key = b"" if path == b"/" else path.replace(b"/", b"\0")
        self.paths.append((pid, parent, key, path.rsplit(b"/", 1)[-1]))
        return pid

    def add_file(self) -> None:
        n = self.file_no
        self.file_no += 1
        rng = self.rng
        box = n // 50  # 50 files a directory
        d = b"/home/user%d/project%d/dir%d" % (box % 20, (box // 20) % 50, box // 1000)
        name = b"file%07d%s" % (n, EXTS[n % len(EXTS)])
        pid = self.new_path(self.dir_id(d), d + b"/" + name)
        size = int(rng.expovariate(1 / 20_000))
        self.live[pid] = self.new_version(pid, 0o100644, size, self.new_content(size))

    def churn(self) -> None:
        rng = self.rng
        ids = [pid for pid, vid in self.live.items() if self.versions[vid][2] & 0o170000
               == 0o100000]
        for pid in rng.sample(ids, k=max(1, len(ids) // 50)):  # 2 % new content
            size = int(rng.expovariate(1 / 20_000))
            self.live[pid] = self.new_version(pid, 0o100644, size, self.new_content(size))
        for pid in rng.sample(ids, k=max(1, len(ids) // 200)):  # 0.5 % chmod
            old = self.versions[self.live[pid]]
            self.live[pid] = self.new_version(pid, 0o100600, old[7], old[15])
        for pid in rng.sample(ids, k=max(1, len(ids) // 200)):  # 0.5 % removed
            self.live.pop(pid, None)
        for _ in range(max(1, len(ids) // 100)):  # 1 % added
            self.add_file()

    def new_version(self, pid: int, mode: int, size: int, content_id: int | None) -> int:
        vid = self.next_version
        self.next_version += 1
        mtime = self.t0 + self.rng.randrange(300 * DAY_NS)
        row = (vid, pid, mode, 1000, 1000, b"user", b"users", size, mtime, mtime, 2049,
               pid, 1, 0, None, content_id)
        self.versions[vid] = row
        self.new_versions.append(row)
        return vid

    def new_content(self, size: int) -> int:
        cid = self.next_content
        self.next_content += 1
        count = max(1, size // 65536 + 1) if size else 0
        self.new_contents.append((cid, size, self.rng.randbytes(16), count))
        left = size
        for seq in range(count):
            length = min(left, 65536) if seq < count - 1 else left
            left -= length
            kid = self.next_chunk
            self.next_chunk += 1
            self.new_chunks.append((kid, self.rng.randbytes(32), length, length // 2 + 40))
            self.new_content_chunks.append((cid, seq, kid))
        return cid

    # -- writing -----------------------------------------------------------------------

    def flush(self) -> None:
        c = self.conn
        c.executemany("INSERT INTO path (id, parent_id, key, name) VALUES (?, ?, ?, ?)",
                      self.paths)
        c.executemany("INSERT INTO chunk (id, sha256, length, stored_length) "
                      "VALUES (?, ?, ?, ?)", self.new_chunks)
        c.executemany("INSERT INTO content (id, size, digest, chunk_count) VALUES (?, ?, ?, ?)",
                      self.new_contents)
        c.executemany("INSERT INTO content_chunk (content_id, seq, chunk_id) VALUES (?, ?, ?)",
                      self.new_content_chunks)
        c.executemany("INSERT INTO version (id, path_id, mode, uid, gid, user, grp, size, "
                      "mtime_ns, ctime_ns, dev, ino, nlink, rdev, link_target, content_id) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      self.new_versions)
        self.new_bytes = sum(k[3] for k in self.new_chunks)
        self.new_chunk_count = len(self.new_chunks)
        for batch in (self.paths, self.new_chunks, self.new_contents, self.new_content_chunks,
                      self.new_versions):
            batch.clear()

    def write_save(self, n: int) -> None:
        started = self.t0 + (300 + n) * DAY_NS
        c = self.conn
        c.execute("INSERT INTO save (hostname, subset, started_ns, finished_ns, status, "
                  "tool_version, writer_host, writer_pid) "
                  "VALUES ('genhost', 'home', ?, ?, 'complete', 'catalog_gen', 'genhost', 1)",
                  (started, started + 60 * 1_000_000_000))
        sid = c.last_insert_rowid()
        c.executemany("INSERT INTO member (save_id, path_id, version_id) VALUES (?, ?, ?)",
                      ((sid, pid, vid) for pid, vid in sorted(self.live.items())))
        files = len(self.live)
        size = sum(self.versions[vid][7] for vid in self.live.values()
                   if self.versions[vid][2] & 0o170000 == 0o100000)
        c.execute("UPDATE save SET files = ?, bytes = ?, new_chunks = ?, new_bytes_stored = ? "
                  "WHERE id = ?", (files, size, self.new_chunk_count, self.new_bytes, sid))
