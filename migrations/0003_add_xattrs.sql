-- Adds extended attributes (POSIX ACLs, file capabilities, SELinux labels, user.*) to file
-- versions. A distinct set of (name, value) pairs is stored once, named by the SHA-256 of
-- its canonical encoding (xattrs.set_digest): files sharing an ACL share one set. A version
-- refers to its set by version.xattrs_id; NULL means none, so a file without attributes
-- costs no row here (old versions, and those import-legacy makes, have none). The reference
-- is not declared (see 0001): `backshift check` looks for dangling ones, expire drops sets
-- no version names. The view `xattrs` shows them to SQL (docs/schema.md).

CREATE TABLE xattr_set (
    id     INTEGER PRIMARY KEY,
    digest BLOB    NOT NULL UNIQUE CHECK (length(digest) = 32)
) STRICT;

-- Names and values are BLOBs: bytes as the filesystem gave them. is_text: the value is
-- UTF-8 without NUL (SQLite cannot tell; the view shows such a value as text, others in hex).
CREATE TABLE xattr (
    set_id  INTEGER NOT NULL REFERENCES xattr_set (id) ON DELETE CASCADE,
    name    BLOB    NOT NULL,
    value   BLOB    NOT NULL,
    is_text INTEGER NOT NULL,
    PRIMARY KEY (set_id, name)
) STRICT, WITHOUT ROWID;

ALTER TABLE version ADD COLUMN xattrs_id INTEGER;

-- The saves made before this migration recorded no attributes: a save borrowing from one
-- of them reads every entry's attributes (once) instead of taking its version unread.
INSERT OR REPLACE INTO meta (key, value)
SELECT 'last_save_without_xattrs', CAST(coalesce(max(id), 0) AS TEXT)
FROM save;

-- Partial: the versions without attributes (nearly all) are not in it.
CREATE INDEX version_by_xattrs ON version (xattrs_id) WHERE xattrs_id IS NOT NULL;

CREATE VIEW xattrs AS
SELECT
    m.save_id,
    CASE WHEN p.key = x'' THEN '/'
         ELSE replace(replace(replace(json_quote(CAST(p.key AS TEXT)), '\\', char(1)),
                  '\u0000', '/'), char(1), '\\') ->> '$' END AS path,
    CAST(x.name AS TEXT) AS name,
    CASE WHEN x.is_text THEN CAST(x.value AS TEXT) ELSE lower(hex(x.value)) END AS value,
    length(x.value) AS size,
    m.path_id,
    m.version_id
FROM member AS m
JOIN version AS v ON v.id = m.version_id
JOIN xattr AS x ON x.set_id = v.xattrs_id
JOIN path AS p ON p.id = m.path_id;
