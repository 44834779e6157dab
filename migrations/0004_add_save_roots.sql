-- Adds save.roots: the root PATHs a save walked (absolute, normalised, sorted, joined by
-- NUL; NULL for names from find or a file list). A series named after its paths (the
-- default subset of `save PATH...`) warns when its roots change between saves, since
-- expire's policy would then judge two trees as one series.

ALTER TABLE save ADD COLUMN roots BLOB;
