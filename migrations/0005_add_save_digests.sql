-- Adds save_digest: for each complete save, the xxh3-128 digest of its member rows in key
-- order (the fields that make its listing and tar stream: catalog.DIGEST_RECORD) and how
-- many there are, written in the transaction that marks the save complete. `list` and
-- `tar` of a whole save and `check` compute it again, so a damaged catalog page shows as
-- an error instead of a silently different listing or restore. Saves that were never
-- complete (running, interrupted) have no row, nor do saves completed before this
-- migration: those are not verified (check says how many). `scheme` names the record
-- layout, so that a later release can add fields for new saves and still verify old ones.

CREATE TABLE save_digest (
    save_id INTEGER PRIMARY KEY REFERENCES save (id) ON DELETE CASCADE,
    scheme  INTEGER NOT NULL,
    members INTEGER NOT NULL,
    digest  BLOB    NOT NULL CHECK (length(digest) = 16)
) STRICT;
