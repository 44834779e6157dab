"""Contents, chunks and extended-attribute sets: found by digest, inserted in batches.

A content is the same only when its SHA-256 chunk list is too (the digest only narrows)."""

from __future__ import annotations

from ..model import ChunkRef
from .sqltext import _slices, _sql

CONTENT_BY_DIGEST = _sql("""
    SELECT id
    FROM content
    WHERE digest = :digest
      AND size = :size
""")

INSERT_CONTENT = _sql("""
    INSERT INTO content (size, digest, chunk_count)
    VALUES (:size, :digest, :chunk_count)
""")

CHUNK_ID_BY_SHA = _sql("""
    SELECT id
    FROM chunk
    WHERE sha256 = :sha256
""")

INSERT_CHUNK = _sql("""
    INSERT INTO chunk (sha256, length, stored_length)
    VALUES (:sha256, :length, :stored_length)
""")

UPSERT_CHUNK = _sql("""
    INSERT INTO chunk (sha256, length, stored_length)
    VALUES (:sha256, :length, :stored_length)
    ON CONFLICT (sha256) DO UPDATE
    SET stored_length = excluded.stored_length
    WHERE chunk.stored_length != excluded.stored_length
    RETURNING id
""")

UPDATE_CHUNK_STORED_LENGTH = _sql("""
    UPDATE chunk
    SET stored_length = :stored_length
    WHERE id = :chunk_id
      AND stored_length != :stored_length
""")

INSERT_CONTENT_CHUNK = _sql("""
    INSERT INTO content_chunk (content_id, seq, chunk_id)
    VALUES (:content_id, :seq, :chunk_id)
""")

CONTENTS_BY_DIGESTS = _sql("""
    SELECT id, digest, size
    FROM content
    WHERE digest IN ({marks})
""")

CHUNKS_BY_SHAS = _sql("""
    SELECT sha256, id, stored_length
    FROM chunk
    WHERE sha256 IN ({marks})
""")

CHUNKS_BY_SHAS_WITH_LENGTH = _sql("""
    SELECT sha256, length, stored_length
    FROM chunk
    WHERE sha256 IN ({marks})
""")

LAST_CONTENT_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM content
""")

LAST_CHUNK_ID = _sql("""
    SELECT coalesce(max(id), 0)
    FROM chunk
""")

INSERT_CONTENTS = _sql("""
    INSERT INTO content (id, size, digest, chunk_count)
    VALUES {rows}
""")

INSERT_CHUNKS = _sql("""
    INSERT INTO chunk (id, sha256, length, stored_length)
    VALUES {rows}
""")

INSERT_CONTENT_CHUNKS = _sql("""
    INSERT INTO content_chunk (content_id, seq, chunk_id)
    VALUES {rows}
""")

CHUNK_FILES_OF_CONTENT = _sql("""
    SELECT lower(hex(k.sha256)), k.stored_length
    FROM content_chunk AS cc
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE cc.content_id = :content_id
    ORDER BY cc.seq
""")

SET_CHUNK_STORED_LENGTH = _sql("""
    UPDATE chunk
    SET stored_length = :stored_length
    WHERE sha256 = :sha256
      AND stored_length != :stored_length
""")

CHUNK_LENGTH_BY_SHA = _sql("""
    SELECT length
    FROM chunk
    WHERE sha256 = :sha256
""")

CHUNKS_OF_CONTENT = _sql("""
    SELECT k.sha256, k.length
    FROM content_chunk AS cc
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE cc.content_id = :content_id
    ORDER BY cc.seq
""")

CONTENTS_STARTING_WITH_CHUNK = _sql("""
    SELECT c.id
    FROM chunk AS k
    JOIN content_chunk AS cc ON cc.chunk_id = k.id AND cc.seq = 0
    JOIN content AS c ON c.id = cc.content_id
    WHERE k.sha256 = :sha256
      AND c.chunk_count = :chunk_count
      AND c.size = :size
""")

# -- extended attributes --
# A distinct attribute set is stored once under its digest (xattrs.set_digest); versions
# name it by xattrs_id. Sets are few: a lookup per new set, a cache in the caller.

XATTR_SET_BY_DIGEST = _sql("""
    SELECT id
    FROM xattr_set
    WHERE digest = :digest
""")

INSERT_XATTR_SET = _sql("""
    INSERT INTO xattr_set (digest)
    VALUES (:digest)
""")

INSERT_XATTR = _sql("""
    INSERT INTO xattr (set_id, name, value, is_text)
    VALUES (:set_id, :name, :value, :is_text)
""")

XATTRS_OF_SET = _sql("""
    SELECT name, value
    FROM xattr
    WHERE set_id = :set_id
    ORDER BY name
""")


class Contents:
    """Contents and their chunks, chunk lengths, attribute sets."""

    def content_id(self, digest: bytes, size: int, refs: list[ChunkRef]) -> int | None:
        """The content with this digest and size AND exactly this chunk list, if any.

        The digest (xxh3-128) only narrows the search: it is not collision resistant, so a
        content is the same only when its SHA-256 chunk list is too.
        """
        rows = self.conn.execute(CONTENT_BY_DIGEST, {"digest": digest, "size": size})
        for (content_id,) in rows.fetchall():
            if self.chunks_of_content(content_id) == refs:
                return content_id
        return None

    def insert_content(self, digest: bytes, size: int,
                       chunks: list[tuple[ChunkRef, int]]) -> int:
        """A content with its ordered chunks (ref, stored length; 0 = unknown, keep old)."""
        self.conn.execute(INSERT_CONTENT, {
            "size": size, "digest": digest, "chunk_count": len(chunks),
        })
        content_id = self.conn.last_insert_rowid()
        for seq, (ref, stored_length) in enumerate(chunks):
            chunk_id = self.chunk_id(ref, stored_length)
            self.conn.execute(INSERT_CONTENT_CHUNK, {
                "content_id": content_id, "seq": seq, "chunk_id": chunk_id,
            })
        return content_id

    def chunk_id(self, ref: ChunkRef, stored_length: int) -> int:
        if stored_length:  # a chunk file just written: its row is most likely new too
            row = self.conn.execute(UPSERT_CHUNK, {
                "sha256": ref.sha256, "length": ref.length, "stored_length": stored_length,
            }).fetchone()
            if row is not None:
                return row[0]
        row = self.conn.execute(CHUNK_ID_BY_SHA, {"sha256": ref.sha256}).fetchone()
        if row is not None:
            if stored_length:
                self.conn.execute(UPDATE_CHUNK_STORED_LENGTH, {
                    "chunk_id": row[0], "stored_length": stored_length,
                })
            return row[0]
        self.conn.execute(INSERT_CHUNK, {
            "sha256": ref.sha256, "length": ref.length, "stored_length": stored_length,
        })
        return self.conn.last_insert_rowid()

    def contents_of(self, files: list[tuple[bytes, int, list[tuple[ChunkRef, int, bool]]]]
                    ) -> list[int]:
        """content_id-or-insert_content for many files at once (inside a write transaction).

        FILES: (digest, size, [(chunk ref, stored length, whether the chunk file was just
        written)]) per file, as read. Each gets the content with that digest, size and chunk
        list, inserted when there is none (the same rules as content_id and insert_content,
        chunk rows upserted the same way; a found content's chunks that were just written
        again get their new stored length, as in healing). Returns the ids in FILES' order.
        """
        c = self.conn
        keys = [(digest, size, tuple(ch[0] for ch in chunks)) for digest, size, chunks in files]
        found: dict[tuple, int] = {}
        digests = list({k[0] for k in keys})
        candidates: dict[tuple[bytes, int], list[int]] = {}
        for part in _slices(digests):
            sql = CONTENTS_BY_DIGESTS.format(marks=",".join("?" * len(part)))
            for cid, digest, size in c.execute(sql, part):
                candidates.setdefault((digest, size), []).append(cid)
        for key in keys:
            if key in found:
                continue
            for cid in candidates.get((key[0], key[1]), ()):
                if tuple(self.chunks_of_content(cid)) == key[2]:
                    found[key] = cid
                    break
        # chunk rows to write: every chunk of a new content, the rewritten ones of found ones
        new_keys: dict[tuple, list[tuple[ChunkRef, int, bool]]] = {}
        wanted: dict[bytes, tuple[ChunkRef, int]] = {}
        for key, (_d, _s, chunks) in zip(keys, files, strict=True):
            if key in found:
                chunks = [ch for ch in chunks if ch[2]]
            elif key not in new_keys:
                new_keys[key] = chunks
            for ref, stored_length, _new in chunks:
                if stored_length or ref.sha256 not in wanted:
                    wanted[ref.sha256] = (ref, stored_length)
        chunk_ids: dict[bytes, int] = {}
        shas = list(wanted)
        for part in _slices(shas):
            sql = CHUNKS_BY_SHAS.format(marks=",".join("?" * len(part)))
            for sha, kid, stored_length in c.execute(sql, part):
                chunk_ids[sha] = kid
                want = wanted[sha][1]
                if want and want != stored_length:
                    c.execute(UPDATE_CHUNK_STORED_LENGTH, {"chunk_id": kid, "stored_length": want})
        missing = [wanted[sha] for sha in shas if sha not in chunk_ids]
        if missing:
            next_id = c.execute(LAST_CHUNK_ID).fetchone()[0] + 1
            rows = []
            for ref, stored_length in missing:
                chunk_ids[ref.sha256] = next_id
                rows.append((next_id, ref.sha256, ref.length, stored_length))
                next_id += 1
            self._insert_rows(INSERT_CHUNKS, rows)
        if new_keys:
            next_id = c.execute(LAST_CONTENT_ID).fetchone()[0] + 1
            rows, links = [], []
            for key, chunks in new_keys.items():
                found[key] = next_id
                rows.append((next_id, key[1], key[0], len(chunks)))
                links.extend((next_id, seq, chunk_ids[ch[0].sha256])
                             for seq, ch in enumerate(chunks))
                next_id += 1
            self._insert_rows(INSERT_CONTENTS, rows)
            self._insert_rows(INSERT_CONTENT_CHUNKS, links)
        return [found[key] for key in keys]

    def chunks_of_content(self, content_id: int) -> list[ChunkRef]:
        rows = self.conn.execute(CHUNKS_OF_CONTENT, {"content_id": content_id})
        return [ChunkRef(sha, length) for sha, length in rows]

    def chunk_files_of_content(self, content_id: int) -> tuple[list[str], list[int]]:
        """The content's chunk file names (sha256 in lowercase hex) and their recorded
        stored lengths, in order."""
        rows = self.conn.execute(CHUNK_FILES_OF_CONTENT, {"content_id": content_id}).fetchall()
        return [name for name, _ in rows], [stored for _, stored in rows]

    def chunk_sizes(self, shas: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """(length, stored length) of those of SHAS the catalog has a chunk row for."""
        found: dict[bytes, tuple[int, int]] = {}
        for part in _slices(shas):
            sql = CHUNKS_BY_SHAS_WITH_LENGTH.format(marks=",".join("?" * len(part)))
            for sha, length, stored_length in self.conn.execute(sql, part):
                found[sha] = (length, stored_length)
        return found

    def chunk_length(self, sha256: bytes) -> int | None:
        """The data length the catalog records for chunk SHA256 (None: no row)."""
        row = self.conn.execute(CHUNK_LENGTH_BY_SHA, {"sha256": sha256}).fetchone()
        return None if row is None else row[0]

    def set_stored_length(self, sha256: bytes, stored_length: int) -> None:
        """Record the size of a chunk file verified in another valid encoding than the one
        recorded (raw or zstd: both decode to the same bytes). In a write transaction."""
        self.conn.execute(SET_CHUNK_STORED_LENGTH,
                          {"sha256": sha256, "stored_length": stored_length})

    def content_by_chunk_list(self, refs: list[ChunkRef]) -> int | None:
        """A content made of exactly these chunks, in this order (so of the same bytes)."""
        rows = self.conn.execute(CONTENTS_STARTING_WITH_CHUNK, {
            "sha256": refs[0].sha256, "chunk_count": len(refs),
            "size": sum(r.length for r in refs),
        }).fetchall()
        for (content_id,) in rows:
            if self.chunks_of_content(content_id) == refs:
                return content_id
        return None

    # -- extended attributes --
    def xattr_set_id(self, digest: bytes, xattrs: list[tuple[bytes, bytes, bool]]) -> int:
        """The id of the attribute set with DIGEST (xattrs.set_digest of XATTRS: (name,
        value, is_text) triples), inserted when new (inside a write transaction)."""
        row = self.conn.execute(XATTR_SET_BY_DIGEST, {"digest": digest}).fetchone()
        if row is not None:
            return row[0]
        self.conn.execute(INSERT_XATTR_SET, {"digest": digest})
        set_id = self.conn.last_insert_rowid()
        for name, value, text in xattrs:
            self.conn.execute(INSERT_XATTR, {
                "set_id": set_id, "name": name, "value": value, "is_text": int(text),
            })
        return set_id

    def xattrs_of_set(self, set_id: int) -> tuple[tuple[bytes, bytes], ...]:
        """The (name, value) pairs of an attribute set, sorted by name."""
        return tuple(self.conn.execute(XATTRS_OF_SET, {"set_id": set_id}).fetchall())
