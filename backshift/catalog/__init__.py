"""The SQLite catalog: every SQL statement backshift runs, behind methods named by intent.

One `Catalog` object per connection, assembled from mixins, one module per job, each with
its SQL constants right above the mixin whose methods run them (module-level constants,
because tests and EXPLAIN checks import them by name):

    sqltext      dedenting SQL constants, batches of rows (no SQL of its own)
    conn         opening, configuring (the one place: writers, readers, user SQL), errors,
                 transactions, read snapshots, checkpoints
    migrate      the packaged migrations, and stand-ins for a catalog read before migrating
    saves        save rows: insert, finish, mark, list, latest, series, roots, digests
    recording    paths, versions and members of a save (the batch API the save uses)
    borrowing    a re-save's unchanged entries, a batch matched and recorded in SQL
    contents     contents, chunks and extended-attribute sets
    members      a save's members by key range: entries, listing lines and blocks, find
    mount        the index queries behind `backshift mount`
    maintenance  expire's sweeps, check's probes, catalog copies
    reports      totals, diff, history

Mixins rather than plain modules of functions: every caller holds one `Catalog` (one
connection, one transaction state) and calls its methods by intent; mixins keep that API
unchanged while each module owns one job. The modules import only the leaves of the package
(model, errors, crashpoints) and each other, never store or ops."""

from __future__ import annotations

from .borrowing import MATCH_OFFER, STAGE_ROW_VALUES, Borrowing
from .conn import (
    APPLICATION_ID,
    CATALOG_NAME,
    READER,
    READER_BUSY_MS,
    USER_SQL,
    WRITER_BUSY_MS,
    Connection,
    catalog_damage,
    configure,
    damaged_catalog,
    network_filesystem,
    on_read_only_media,
    open_connection,
    open_error,
    open_user_sql,
    quick_check_problem,
    read_only_uri,
    translate_error,
)
from .contents import Contents
from .maintenance import (
    CHUNKS_IN_RANGE,
    DELETE_UNREFERENCED_CHUNKS,
    DELETE_UNREFERENCED_CONTENTS,
    DELETE_UNREFERENCED_PATHS,
    DELETE_UNREFERENCED_VERSIONS,
    UNREFERENCED_CHUNKS_IN_RANGE,
    Maintenance,
)
from .members import (
    CHUNKS_IN_KEY_RANGE,
    ENTRIES_IN_KEY_RANGE,
    ENTRIES_IN_KEY_RANGE_RECORDS,
    ENTRIES_OF_PATH_IDS,
    ENTRY_AT_KEY,
    FIND_PATHS,
    FIRST_PATH_IN_KEY_RANGE,
    LISTING_BLOCK_NAMES,
    LISTING_BLOCK_NAMES_RECORDS,
    LISTING_BLOCK_VERBOSE,
    LISTING_BLOCK_VERBOSE_RECORDS,
    LISTING_LINES_NAMES,
    LISTING_LINES_VERBOSE,
    PATH_KEY_AFTER,
    WHERE_PREDICATE_MATCHES,
    Members,
)
from .migrate import Migrating, migrations, schema_version, stand_in_for_migrations
from .mount import Mount
from .recording import PREVIOUS_UNDER_PARENT, Recording
from .reports import DIFF_SAVES, PATH_HISTORY, Reports
from .saves import DIGEST_SCHEME, MEMBER_RECORDS_IN_KEY_RANGE, MembersDigest, Saves

__all__ = [
    "APPLICATION_ID", "CATALOG_NAME", "CHUNKS_IN_KEY_RANGE", "CHUNKS_IN_RANGE",
    "DELETE_UNREFERENCED_CHUNKS", "DELETE_UNREFERENCED_CONTENTS", "DELETE_UNREFERENCED_PATHS",
    "DELETE_UNREFERENCED_VERSIONS", "DIFF_SAVES", "DIGEST_SCHEME", "ENTRIES_IN_KEY_RANGE",
    "ENTRIES_IN_KEY_RANGE_RECORDS", "ENTRIES_OF_PATH_IDS", "ENTRY_AT_KEY", "FIND_PATHS",
    "FIRST_PATH_IN_KEY_RANGE", "LISTING_BLOCK_NAMES", "LISTING_BLOCK_NAMES_RECORDS",
    "LISTING_BLOCK_VERBOSE", "LISTING_BLOCK_VERBOSE_RECORDS", "LISTING_LINES_NAMES",
    "LISTING_LINES_VERBOSE", "MATCH_OFFER", "MEMBER_RECORDS_IN_KEY_RANGE", "PATH_HISTORY",
    "PATH_KEY_AFTER",
    "PREVIOUS_UNDER_PARENT", "READER_BUSY_MS", "STAGE_ROW_VALUES", "UNREFERENCED_CHUNKS_IN_RANGE",
    "WHERE_PREDICATE_MATCHES", "WRITER_BUSY_MS", "Catalog", "MembersDigest", "catalog_damage",
    "USER_SQL", "configure", "open_connection", "open_user_sql", "migrations",
    "network_filesystem", "on_read_only_media", "open_error", "read_only_uri",
    "READER", "damaged_catalog", "quick_check_problem", "schema_version",
    "stand_in_for_migrations", "translate_error",
]


class Catalog(Connection, Migrating, Saves, Recording, Borrowing, Contents, Members, Mount,
              Maintenance, Reports):
    """One apsw connection to REPO/catalog.sqlite3, opened for writing or read-only."""
