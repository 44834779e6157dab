-- Creates the reporting views users query with `backshift sql`: saves, files, contents,
-- chunks. Paths and names are text here ('/' separated, root is '/'); times are given both
-- as UTC text 'YYYY-MM-DD HH:MM:SS' (compare with '2026-01-01') and as integer ns.
-- These names and columns are a stable interface: later migrations may add columns, never
-- rename or remove one (docs/schema.md documents them).
--
-- Path text: keys hold NUL where paths hold '/', and SQLite's replace() cannot search for
-- NUL (it stops at it). So the key goes through json_quote, which spells NUL as \u0000
-- and every backslash as \\; the escaped backslashes are parked on char(1) (json_quote
-- never emits a raw control character), \u0000 becomes '/', and ->> '$' unquotes. Bytes
-- that are not UTF-8 pass through unchanged.

CREATE VIEW saves AS
SELECT
    s.id,
    s.hostname,
    s.subset,
    strftime('%Y-%m-%d %H:%M:%S', s.started_ns / 1000000000, 'unixepoch') AS started,
    CASE WHEN s.finished_ns IS NOT NULL
         THEN strftime('%Y-%m-%d %H:%M:%S', s.finished_ns / 1000000000, 'unixepoch') END
        AS finished,
    s.started_ns,
    s.finished_ns,
    s.status,
    s.files,
    s.bytes,
    s.bytes_read,
    s.bytes_borrowed,
    s.new_chunks,
    s.new_bytes_stored,
    s.warnings,
    s.tool_version
FROM save AS s;

CREATE VIEW files AS
SELECT
    m.save_id,
    CASE WHEN p.key = x'' THEN '/'
         ELSE replace(replace(replace(json_quote(CAST(p.key AS TEXT)), '\\', char(1)),
                  '\u0000', '/'), char(1), '\\') ->> '$' END AS path,
    CAST(p.name AS TEXT) AS name,
    CASE WHEN p.key = x'' THEN NULL
         WHEN length(p.key) = length(p.name) + 1 THEN '/'
         ELSE replace(replace(replace(json_quote(CAST(
                  substr(p.key, 1, length(p.key) - length(p.name) - 1) AS TEXT)), '\\', char(1)),
                  '\u0000', '/'), char(1), '\\') ->> '$' END AS dir,
    CASE (v.mode & 61440)
        WHEN 32768 THEN 'file' WHEN 16384 THEN 'dir' WHEN 40960 THEN 'symlink'
        WHEN 4096 THEN 'fifo' WHEN 8192 THEN 'chardev' WHEN 24576 THEN 'blockdev'
        WHEN 49152 THEN 'socket' ELSE 'unknown' END AS type,
    v.mode & 4095 AS mode,
    v.uid,
    v.gid,
    CAST(v.user AS TEXT) AS user,
    CAST(v.grp AS TEXT) AS "group",
    v.size,
    strftime('%Y-%m-%d %H:%M:%S', v.mtime_ns / 1000000000, 'unixepoch') AS mtime,
    v.mtime_ns,
    v.ctime_ns,
    CAST(v.link_target AS TEXT) AS link_target,
    lower(hex(c.digest)) AS digest,
    c.chunk_count AS chunks,
    v.nlink,
    v.dev,
    v.ino,
    p.id AS path_id,
    v.id AS version_id,
    v.content_id,
    strftime('%Y-%m-%d %H:%M:%S', v.ctime_ns / 1000000000, 'unixepoch') AS ctime
FROM member AS m
JOIN version AS v ON v.id = m.version_id
JOIN path AS p ON p.id = m.path_id
LEFT JOIN content AS c ON c.id = v.content_id;

CREATE VIEW contents AS
SELECT
    c.id,
    c.size,
    lower(hex(c.digest)) AS digest,
    c.chunk_count AS chunks
FROM content AS c;

CREATE VIEW chunks AS
SELECT
    k.id,
    lower(hex(k.sha256)) AS sha256,
    k.length,
    k.stored_length
FROM chunk AS k;
