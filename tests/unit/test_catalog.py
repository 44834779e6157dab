"""Unit: catalog creation, migrations, identity checks and the settings RELIABILITY asks for."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import apsw
import pytest

from backshift import catalog as catalog_mod
from backshift.catalog import APPLICATION_ID, Catalog, migrations, schema_version
from backshift.errors import CatalogTooNew, NotACatalog, RepositoryNotFound
from conftest import run

ROOT = Path(__file__).parents[2]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrations_are_numbered_from_one_without_gaps():
    files = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    numbers = [int(name.split("_", 1)[0]) for name in files]
    assert numbers == list(range(1, len(files) + 1))
    for p in (ROOT / "migrations").glob("*.sql"):
        assert p.read_text().startswith("-- "), f"{p.name} must open with a -- comment"


def test_packaged_migrations_equal_the_folder():
    packaged = [(name, sql) for _n, name, sql in migrations()]
    folder = [(p.name, p.read_text()) for p in sorted((ROOT / "migrations").glob("*.sql"))]
    assert packaged == folder


def test_catalog_created_with_every_migration_and_settings(tmp_path):
    cat = Catalog.create(os.fsencode(tmp_path / "c.sqlite3"))
    assert cat.user_version() == schema_version()
    conn = cat.conn
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='view'")}
    assert {"saves", "files", "contents", "chunks"} <= names
    cat.close()


def test_catalog_migrates_an_older_catalog(tmp_path):
    path = os.fsencode(tmp_path / "c.sqlite3")
    conn = apsw.Connection(os.fsdecode(path))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    first = migrations()[0]
    conn.execute(first[2])
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    cat = Catalog.open(path)
    assert cat.user_version() == schema_version()
    assert cat.conn.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    cat.close()


def test_catalog_newer_than_program_is_refused_before_any_write(tmp_path, repo):
    path = Path(os.fsdecode(repo)) / "catalog.sqlite3"
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version = {schema_version() + 1}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = digest(path)
    with pytest.raises(CatalogTooNew):
        Catalog.open(os.fsencode(path))
    res = run("-r", repo, "save", str(tmp_path), exit_code=6)
    assert "newer than this backshift" in res.stderr
    assert digest(path) == before
    wal = path.with_name("catalog.sqlite3-wal")
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.mark.parametrize("kind", ["text", "empty", "other_sqlite"])
def test_catalog_refuses_a_file_that_is_not_ours(tmp_path, kind):
    repo = tmp_path / "r"
    repo.mkdir()
    path = repo / "catalog.sqlite3"
    if kind == "text":
        path.write_text("this is not a database\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        conn = apsw.Connection(str(path))
        conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        conn.close()
    before = path.read_bytes()
    with pytest.raises(NotACatalog):
        Catalog.open(os.fsencode(path))
    res = run("-r", str(repo), "saves", exit_code=7)
    assert "not a usable backshift catalog" in res.stderr and "Traceback" not in res.stderr
    assert path.read_bytes() == before


def test_catalog_open_never_creates_a_file(tmp_path):
    with pytest.raises(RepositoryNotFound):
        Catalog.open(os.fsencode(tmp_path / "nope" / "catalog.sqlite3"))
    assert not (tmp_path / "nope").exists()


def test_catalog_readonly_connection_cannot_write(repo):
    cat = Catalog.open(os.path.join(repo, catalog_mod.CATALOG_NAME), readonly=True)
    with pytest.raises(apsw.ReadOnlyError):
        cat.conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    cat.close()


def test_subtree_is_one_key_range(repo):
    """A directory's subtree must be [key+NUL, key+0x01) in the path index order."""
    from backshift.pathcodec import sort_key, subtree_range
    paths = [b"/", b"/a", b"/a/b", b"/a/b/c", b"/a!", b"/a-b", b"/a/\xff", b"/ab", b"/a/b!"]
    keys = sorted(sort_key(p) for p in paths)
    lo, hi = subtree_range(sort_key(b"/a"))
    inside = [k for k in keys if lo <= k < hi]
    assert sorted(inside) == sorted(sort_key(p) for p in (b"/a/b", b"/a/b/c", b"/a/\xff",
                                                          b"/a/b!"))
    # depth-first: /a, then its subtree, then /a!
    order = [k for k in keys]
    assert order.index(sort_key(b"/a/b/c")) < order.index(sort_key(b"/a/b!"))
    assert order.index(sort_key(b"/a/\xff")) < order.index(sort_key(b"/a!"))


def test_catalog_previous_entries_of_a_directory_are_index_lookups(repo):
    """A re-save asks for each directory's entries in the previous save: never a scan."""
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        details = cat.explain(catalog_mod.PREVIOUS_UNDER_PARENT,
                              {"save_id": 1, "parent_id": 1, "limit": 10})
    finally:
        cat.close()
    text = "\n".join(details)
    assert not any(d.startswith("SCAN") for d in details), text
    assert "TEMP B-TREE" not in text, text
    assert "SEARCH p USING INDEX path_by_parent (parent_id=?)" in text, text
    assert "SEARCH m USING PRIMARY KEY (save_id=? AND path_id=?)" in text, text


def test_contents_of_finds_and_inserts_as_the_per_file_calls_do(tmp_path):
    from backshift.model import ChunkRef
    cat = Catalog.create(os.fsencode(tmp_path / "c.sqlite3"))

    def ref(n: int) -> ChunkRef:
        return ChunkRef(hashlib.sha256(b"%d" % n).digest(), 100 + n)

    d1, d2, d3 = (bytes([i]) * 16 for i in (1, 2, 3))
    cat.begin()
    old = cat.insert_content(d1, 101, [(ref(1), 50)])
    ids = cat.contents_of([
        (d1, 101, [(ref(1), 50, False)]),  # exactly the existing content
        (d1, 101, [(ref(9), 60, True)]),  # same digest and size, other chunks: new content
        (d2, 205, [(ref(2), 70, True), (ref(3), 80, True)]),  # new, two new chunks
        (d2, 205, [(ref(2), 70, False), (ref(3), 80, False)]),  # the same again
        (d3, 101, [(ref(1), 55, True)]),  # new content of a known chunk, stored anew
    ])
    assert ids[0] == old and ids[2] == ids[3]
    assert len(set(ids)) == 4
    assert cat.chunks_of_content(ids[1]) == [ref(9)]
    assert cat.chunks_of_content(ids[2]) == [ref(2), ref(3)]
    assert cat.content_id(d2, 205, [ref(2), ref(3)]) == ids[2]
    stored = dict(cat.conn.execute("SELECT sha256, stored_length FROM chunk").fetchall())
    assert stored == {ref(1).sha256: 55, ref(9).sha256: 60, ref(2).sha256: 70,
                      ref(3).sha256: 80}
    healed = cat.contents_of([(d1, 101, [(ref(1), 57, True)])])  # found, chunk rewritten
    assert healed == [old]
    assert cat.conn.execute("SELECT stored_length FROM chunk WHERE sha256 = ?",
                            (ref(1).sha256,)).fetchone()[0] == 57
    assert cat.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    cat.commit()
    cat.close()


def test_contents_of_empty_files_only(tmp_path):
    cat = Catalog.create(os.fsencode(tmp_path / "c.sqlite3"))
    cat.begin()
    empty = bytes(16)
    first = cat.contents_of([(empty, 0, []), (empty, 0, [])])
    assert first[0] == first[1] and cat.chunks_of_content(first[0]) == []
    assert cat.contents_of([(empty, 0, [])]) == first[:1]
    cat.commit()
    cat.close()


def test_sqlite_keeps_no_memory_statistics_once_the_catalog_module_loads():
    """SQLITE_CONFIG_MEMSTATUS off (catalog._without_memory_statistics): with it on, the
    listing's fetcher threads queued on SQLite's allocation mutex. A fresh interpreter, as
    the CLI starts: SQLite then counts no memory, where it counts ~100 KB by default."""
    import subprocess
    import sys
    code = ("import apsw{}\n"
            "c = apsw.Connection(':memory:')\n"
            "c.execute('CREATE TABLE t(x)')\n"
            "c.execute('INSERT INTO t VALUES (randomblob(10000))')\n"
            "print(apsw.status(apsw.SQLITE_STATUS_MEMORY_USED)[0])")
    used = {}
    for name, extra in [("plain", ""), ("backshift", ", backshift.catalog")]:
        out = subprocess.run([sys.executable, "-c", code.format(extra)], check=True,
                             capture_output=True, text=True).stdout
        used[name] = int(out)
    assert used["plain"] > 10_000 and used["backshift"] == 0, used


@pytest.mark.parametrize("key, value, why", [
    ("chunker", "garbage", "not a JSON object"),
    ("chunker", '{"min_size": 4096, "avg_size": 1024, "max_size": 65536}',
     "are not chunker parameters"),
    ("chunker", '{"min_size": 4096, "avg_size": 16384, "max_size": 1e9}',
     "are not chunker parameters"),
    ("chunker", '{"nonsense": 1}', "are not chunker parameters"),
    ("compression", '{"algorithm": "zstd", "level": "high"}', "is not a zstd level"),
])
def test_damaged_settings_stop_what_needs_them_in_one_line(repo, tmp_path, key, value, why):
    """The chunker and compression settings (meta, JSON, written by init): damaged, a save
    stops with one line naming the catalog and the setting (exit 7), where every command
    printed a JSONDecodeError traceback; commands that need neither still work."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    run("-r", repo, "save", os.fsencode(src))
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()
    assert b"/f" in run("-r", repo, "list", "--backup", "latest").stdout_bytes
    assert b"data\n" in run("-r", repo, "tar", "--backup", "latest").stdout_bytes
    run("-r", repo, "check", "--read-data")
    run("-r", repo, "saves")
    (src / "g").write_bytes(b"new data\n")
    res = run("-r", repo, "save", os.fsencode(src), exit_code=7)
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert f"catalog.sqlite3 is not a usable backshift catalog: its {key} settings " \
        f"(meta '{key}') are damaged: " in res.stderr and why in res.stderr, res.stderr


def _saves(cat: Catalog) -> int:
    return len(cat.list_saves())


def test_catalog_snapshot_sees_one_state_until_it_ends(tmp_path):
    path = os.fsencode(tmp_path / "c.sqlite3")
    writer = Catalog.create(path)
    reader = Catalog.open(path, readonly=True)
    try:
        with reader.snapshot():
            assert _saves(reader) == 0
            writer.begin()
            writer.insert_save("h", "s", 1, "t", "h", 1)
            writer.commit()
            assert _saves(reader) == 0  # still the state of the first read
        assert not reader.conn.in_transaction
        assert _saves(reader) == 1
        reader.begin_read()  # an enclosing read transaction: snapshot() keeps it open
        with reader.snapshot():
            pass
        assert reader.conn.in_transaction
    finally:
        reader.close()
        writer.close()


def test_catalog_user_sql_connections_are_configured_query_only(repo):
    path = os.path.join(repo, catalog_mod.CATALOG_NAME)

    def query_only(conn: apsw.Connection) -> int:
        return conn.execute("PRAGMA query_only").fetchall()[0][0]

    conn = catalog_mod.open_user_sql(path)
    try:
        assert query_only(conn) == 1 and conn.in_transaction  # the sql command's snapshot
        assert conn.execute("PRAGMA trusted_schema").fetchall()[0][0] == 0
    finally:
        conn.close()
    guarded = Catalog.open(path, readonly=True, user_sql=True)  # --where's connection
    plain = Catalog.open(path, readonly=True)
    try:
        assert query_only(guarded.conn) == 1
        assert query_only(plain.conn) == 0
    finally:
        guarded.close()
        plain.close()
