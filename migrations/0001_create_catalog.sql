-- Creates the catalog: saves, interned paths, file versions, save membership, contents with
-- their ordered chunk lists, and chunks. An unchanged re-save adds one `member` row per file.
-- Tables are singular nouns; the plural names (saves, files, contents, chunks) are the
-- reporting views of 0002, kept stable for users' SQL whatever the tables become.
--
-- Foreign keys are declared only where the child side is indexed by its key's prefix, so
-- that deleting a parent never scans a large child table. The undeclared references
-- (member.path_id, member.version_id, version.path_id) are checked by `backshift check`.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE save (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused after expire
    hostname         TEXT    NOT NULL,
    subset           TEXT    NOT NULL,
    started_ns       INTEGER NOT NULL,
    finished_ns      INTEGER,
    status           TEXT    NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'complete', 'interrupted')),
    files            INTEGER NOT NULL DEFAULT 0,
    bytes            INTEGER NOT NULL DEFAULT 0,  -- logical bytes of regular files
    bytes_read       INTEGER NOT NULL DEFAULT 0,  -- read afresh and chunked
    bytes_borrowed   INTEGER NOT NULL DEFAULT 0,  -- reused from earlier saves unread
    new_chunks       INTEGER NOT NULL DEFAULT 0,
    new_bytes_stored INTEGER NOT NULL DEFAULT 0,  -- bytes of chunk files this save wrote
    warnings         INTEGER NOT NULL DEFAULT 0,
    tool_version     TEXT    NOT NULL,
    writer_host      TEXT    NOT NULL,            -- machine and process that ran the save,
    writer_pid       INTEGER NOT NULL,            -- to tell a dead 'running' save from a live one
    legacy_id        TEXT    UNIQUE               -- backshift 1.x backup id, for import-legacy
) STRICT;

CREATE INDEX save_by_series ON save (hostname, subset, started_ns);

-- Every absolute path ever saved, once. `key` is the path with '/' turned into NUL (root is
-- the empty key): ORDER BY key is depth-first order and a subtree is one key range.
CREATE TABLE path (
    id        INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES path (id),
    key       BLOB    NOT NULL UNIQUE,
    name      BLOB    NOT NULL
) STRICT;

CREATE INDEX path_by_parent ON path (parent_id);

CREATE TABLE chunk (
    id            INTEGER PRIMARY KEY,
    sha256        BLOB    NOT NULL UNIQUE CHECK (length(sha256) = 32),
    length        INTEGER NOT NULL,  -- uncompressed
    stored_length INTEGER NOT NULL   -- bytes of the chunk file, header included
) STRICT;

-- One row per distinct file content; identical files anywhere share it. xxh3-128 is fast
-- but not collision resistant: it only finds candidates, and a content is reused only when
-- its chunk list (SHA-256s) is the same too. So the (digest, size) index is not UNIQUE: two
-- rows may hold the same bytes cut differently (a 1.x import), or colliding bytes.
CREATE TABLE content (
    id     INTEGER PRIMARY KEY,
    size   INTEGER NOT NULL,
    digest BLOB    NOT NULL CHECK (length(digest) = 16),  -- xxh3-128 of the whole content
    chunk_count INTEGER NOT NULL
) STRICT;

CREATE INDEX content_by_digest ON content (digest, size);

CREATE TABLE content_chunk (
    content_id INTEGER NOT NULL REFERENCES content (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    chunk_id   INTEGER NOT NULL REFERENCES chunk (id),
    PRIMARY KEY (content_id, seq)
) STRICT, WITHOUT ROWID;

CREATE INDEX content_chunk_by_chunk ON content_chunk (chunk_id);

-- One row per distinct metadata state of a path. Names are BLOBs: they are bytes on disk.
CREATE TABLE version (
    id          INTEGER PRIMARY KEY,
    path_id     INTEGER NOT NULL,
    mode        INTEGER NOT NULL,  -- full st_mode, type bits included
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    user        BLOB    NOT NULL,  -- empty when the uid had no name at save time
    grp         BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    nlink       INTEGER NOT NULL,
    rdev        INTEGER NOT NULL,
    link_target BLOB,
    content_id  INTEGER REFERENCES content (id)
) STRICT;

CREATE INDEX version_by_content ON version (content_id);

-- Save membership: which version of which path a save holds. Keyed (save, path) so that
-- borrowing and tar/list probes are primary-key lookups; a few bytes per file.
CREATE TABLE member (
    save_id    INTEGER NOT NULL REFERENCES save (id) ON DELETE CASCADE,
    path_id    INTEGER NOT NULL,
    version_id INTEGER NOT NULL,
    PRIMARY KEY (save_id, path_id)
) STRICT, WITHOUT ROWID;
