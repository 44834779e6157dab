"""The index queries behind `backshift mount` (ops/mount.py).

Every lookup, getattr and directory listing is one of these, never a scan of a save."""

from __future__ import annotations

import json

from .sqltext import _sql


class Mount:
    """Hosts, series, saves and directory entries as the mounted tree shows them."""

    MOUNT_HOSTS = _sql("""
        SELECT DISTINCT hostname
        FROM save
        ORDER BY hostname
    """)

    MOUNT_SUBSETS = _sql("""
        SELECT DISTINCT subset
        FROM save
        WHERE hostname = :hostname
        ORDER BY subset
    """)

    MOUNT_SAVES_OF_SERIES = _sql("""
        SELECT id, started_ns
        FROM save
        WHERE hostname = :hostname
          AND subset = :subset
        ORDER BY id
    """)

    # The symlink `latest` of a series: its newest complete save (a running or interrupted
    # one is never what `latest` points at).
    MOUNT_NEWEST_COMPLETE = _sql("""
        SELECT id
        FROM save
        WHERE hostname = :hostname
          AND subset = :subset
          AND status = 'complete'
        ORDER BY started_ns DESC, id DESC
        LIMIT 1
    """)

    MOUNT_SAVE_SERIES = _sql("""
        SELECT hostname, subset, started_ns
        FROM save
        WHERE id = :save_id
    """)

    MOUNT_SAVE_COMPLETE = _sql("""
        SELECT status = 'complete'
        FROM save
        WHERE id = :save_id
    """)

    MOUNT_ENTRY_COLUMNS = _sql("""
        p.id, p.key, p.name, v.mode, v.uid, v.gid, v.size, v.mtime_ns, v.ctime_ns, v.dev,
        v.ino, v.nlink, v.rdev, v.link_target, v.content_id, v.xattrs_id
    """)

    # A path of the save: its version, or NULL columns when the save does not hold it but
    # holds something beneath it (a directory the save passed through: /, /home for a save
    # of /home/ann); no row when neither. The subtree is the key range [key\0, key\1).
    MOUNT_HELD_BENEATH = _sql("""
        EXISTS (
            SELECT 1
            FROM path AS q
            CROSS JOIN member AS n
            WHERE q.key > CAST(p.key || x'00' AS BLOB)
              AND q.key < CAST(p.key || x'01' AS BLOB)
              AND n.save_id = :save_id
              AND n.path_id = q.id)
    """)

    # One page of a directory's entries, in path id order from just above :after (the
    # index path_by_parent holds them in that order): a huge directory is listed a page at
    # a time, never all at once.
    MOUNT_CHILDREN = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.parent_id = :parent_id
          AND p.id > :after
          AND (m.version_id IS NOT NULL OR {MOUNT_HELD_BENEATH})
        ORDER BY p.id
        LIMIT :limit
    """)

    MOUNT_CHILD = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.key = CAST((SELECT key FROM path WHERE id = :parent_id) || x'00' || :name
                           AS BLOB)
          AND (m.version_id IS NOT NULL OR {MOUNT_HELD_BENEATH})
    """)

    MOUNT_ENTRY = _sql(f"""
        SELECT {MOUNT_ENTRY_COLUMNS}
        FROM path AS p
        LEFT JOIN member AS m ON m.save_id = :save_id AND m.path_id = p.id
        LEFT JOIN version AS v ON v.id = m.version_id
        WHERE p.id = :path_id
    """)

    MOUNT_CHUNKS_OF_CONTENT = _sql("""
        SELECT k.sha256, k.length, k.stored_length
        FROM content_chunk AS cc
        JOIN chunk AS k ON k.id = cc.chunk_id
        WHERE cc.content_id = :content_id
        ORDER BY cc.seq
    """)

    # The chunk lists of many contents at once (a page of a directory's files), so that
    # opening each of them asks nothing more.
    MOUNT_CHUNKS_OF_CONTENTS = _sql("""
        SELECT cc.content_id, k.sha256, k.length, k.stored_length
        FROM json_each(:content_ids) AS j
        CROSS JOIN content_chunk AS cc ON cc.content_id = j.value
        JOIN chunk AS k ON k.id = cc.chunk_id
        ORDER BY cc.content_id, cc.seq
    """)

    MOUNT_HAS_XATTRS = _sql("""
        SELECT EXISTS (SELECT 1 FROM xattr_set)
    """)

    def mount_has_xattrs(self) -> bool:
        """Whether any save recorded extended attributes."""
        return bool(self.conn.execute(self.MOUNT_HAS_XATTRS).fetchall()[0][0])

    def mount_hosts(self) -> list[str]:
        return [r[0] for r in self.conn.execute(self.MOUNT_HOSTS).fetchall()]

    def mount_subsets(self, hostname: str) -> list[str]:
        return [r[0] for r in self.conn.execute(self.MOUNT_SUBSETS,
                                                {"hostname": hostname}).fetchall()]

    def mount_saves_of_series(self, hostname: str, subset: str) -> list[tuple[int, int]]:
        """(id, started_ns) of every save of the series, running and interrupted ones too."""
        return self.conn.execute(self.MOUNT_SAVES_OF_SERIES,
                                 {"hostname": hostname, "subset": subset}).fetchall()

    def mount_newest_complete(self, hostname: str, subset: str) -> int | None:
        rows = self.conn.execute(self.MOUNT_NEWEST_COMPLETE,
                                 {"hostname": hostname, "subset": subset}).fetchall()
        return rows[0][0] if rows else None

    def mount_save_series(self, save_id: int) -> tuple[str, str, int] | None:
        """(hostname, subset, started_ns) of a save, None when there is no such save."""
        rows = self.conn.execute(self.MOUNT_SAVE_SERIES, {"save_id": save_id}).fetchall()
        return rows[0] if rows else None

    def mount_save_complete(self, save_id: int) -> bool:
        """Whether the save is complete (its entries change no more)."""
        rows = self.conn.execute(self.MOUNT_SAVE_COMPLETE, {"save_id": save_id}).fetchall()
        return bool(rows and rows[0][0])

    def mount_children(self, save_id: int, parent_id: int, after: int,
                       limit: int) -> list[tuple]:
        """MOUNT_ENTRY_COLUMNS of at most LIMIT entries of directory PARENT_ID in the save
        whose path id is above AFTER, by path id (version columns NULL for a directory the
        save only passes through)."""
        return self.conn.execute(self.MOUNT_CHILDREN, {
            "save_id": save_id, "parent_id": parent_id, "after": after,
            "limit": limit}).fetchall()

    def mount_child(self, save_id: int, parent_id: int, name: bytes) -> tuple | None:
        rows = self.conn.execute(self.MOUNT_CHILD, {
            "save_id": save_id, "parent_id": parent_id, "name": name}).fetchall()
        return rows[0] if rows else None

    def mount_entry(self, save_id: int, path_id: int) -> tuple | None:
        rows = self.conn.execute(self.MOUNT_ENTRY,
                                 {"save_id": save_id, "path_id": path_id}).fetchall()
        return rows[0] if rows else None

    def mount_chunks_of_content(self, content_id: int) -> list[tuple[bytes, int, int]]:
        """(sha256, length, stored_length) of a content's chunks, in order."""
        return self.conn.execute(self.MOUNT_CHUNKS_OF_CONTENT,
                                 {"content_id": content_id}).fetchall()

    def mount_chunks_of_contents(self, content_ids: list[int]) -> dict[int, list[tuple]]:
        """Content id -> its (sha256, length, stored_length) chunks in order."""
        out: dict[int, list[tuple]] = {c: [] for c in content_ids}
        rows = self.conn.execute(self.MOUNT_CHUNKS_OF_CONTENTS,
                                 {"content_ids": json.dumps(content_ids)}).fetchall()
        for content_id, sha, length, stored in rows:
            out[content_id].append((sha, length, stored))
        return out
