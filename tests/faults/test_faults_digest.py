"""A damaged catalog page never gives a different listing or restore with exit 0: random
bytes in leaf pages of the version and member tables of a real catalog; the save digest."""

from __future__ import annotations

import os
import random
import shutil

import apsw
import pytest
from harness import damage
from harness.scenario import one_line_error, snapshot

from backshift.catalog import CATALOG_NAME, Catalog
from backshift.ops.listformat import permission_strings
from conftest import find0, make_tree, run

PAGE = 4096


def _tree(root):
    make_tree(root)
    for d in range(8):
        sub = root / f"dir{d}"
        sub.mkdir()
        for i in range(60):
            f = sub / f"file-{i:03d}.txt"
            f.write_bytes(b"%d %d\n" % (d, i) * (i + 1))
            os.chmod(f, 0o600 + (i % 8) * 0o10)
            os.utime(f, ns=(1_600_000_000_000_000_000 + i * 7_919, 1_700_000_000_123_456_789 + i))
    return root


@pytest.fixture
def saved(repo, tmp_path):
    """A save of ~500 members, the catalog folded into one file, and what list -v and tar
    give for it."""
    root = _tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(root))
    catalog = os.path.join(repo, CATALOG_NAME)
    for side in (b"-wal", b"-shm"):
        if os.path.exists(catalog + side):
            assert side == b"-shm" or os.path.getsize(catalog + side) == 0
            os.unlink(catalog + side)
    pristine = catalog + b".pristine"
    shutil.copyfile(catalog, pristine)
    listing = run("-r", repo, "list", "--backup", "1", "-v").stdout_bytes
    stream = run("-r", repo, "tar", "--backup", "1").stdout_bytes
    return catalog, pristine, listing, stream


def _flip(catalog: bytes, page: int, rng: random.Random) -> None:
    """Random bytes at 1-3 random places of PAGE (1-based), as a bad sector would."""
    with open(catalog, "r+b") as f:
        for _ in range(rng.randint(1, 3)):
            f.seek((page - 1) * PAGE + rng.randrange(PAGE))
            f.write(bytes([rng.randrange(256)]))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("table", ["version", "member"])
def test_digest_damaged_leaf_page_is_an_error_or_the_exact_output(saved, repo, table):
    catalog, pristine, listing, stream = saved
    pages = damage.leaf_pages(pristine, table)
    assert len(pages) >= 2, pages
    caught_by_digest = same = 0
    for seed in range(24):
        rng = random.Random(f"{table}-{seed}")
        shutil.copyfile(pristine, catalog)
        _flip(catalog, rng.choice(pages), rng)
        for args, want in ((("list", "--backup", "1", "-v"), listing),
                           (("tar", "--backup", "1"), stream)):
            res = run("-r", repo, *args, exit_code=None)
            assert "Traceback" not in res.stderr
            if res.code == 0:
                assert res.stdout_bytes == want, (seed, args, res.stderr)
                assert res.stderr == ""
                same += 1
                continue
            last = res.stderr.splitlines()[-1]
            assert res.code == 7, (seed, args, res.stderr)
            assert last.startswith("backshift: error:") and "damaged" in last, last
            if "do not give the digest" in last:
                assert "save 1: the catalog is damaged" in last
                assert os.fsdecode(os.path.join(repo, b"catalog-copies", b"")) in last
                caught_by_digest += 1
    assert caught_by_digest >= 3, (caught_by_digest, same)  # the digest did the finding


def test_digest_recomputed_three_ways_is_the_recorded_one(saved, repo):
    """The save's digest comes out the same from the rows one by one (tar, json list),
    from the listing's blocks, and as recorded at the save's final commit."""
    catalog, _pristine, _listing, _stream = saved
    cat = Catalog.open(catalog, readonly=True)
    try:
        scheme, members, recorded = cat.save_digest(1)
        blocks = cat.members_digest(1)
        assert (blocks.members, blocks.digest()) == (members, recorded)
        import xxhash
        rows = list(cat.entries_in_key_range(1, b"", b"\x01", records=True))
        assert len(rows) == members
        assert xxhash.xxh3_128(b"".join(r[-1] for r in rows)).digest() == recorded
        block = cat.listing_block(1, b"", b"\x01", 19, permission_strings(), records=True)
        assert block[2] == members and xxhash.xxh3_128(block[3]).digest() == recorded
    finally:
        cat.close()


def test_digest_mismatch_in_list_tar_and_check(saved, repo):
    """One changed field (a mode, as a flipped bit would): list, list --format json and tar
    of the whole save end with the catalog-damage error naming the copies; check reports
    it; part of the save is not verified (only whole saves are)."""
    catalog, _pristine, listing, _stream = saved
    conn = apsw.Connection(os.fsdecode(catalog))
    conn.execute("UPDATE version SET mode = (mode | 2) - (mode & 2) WHERE id = 40")  # o+w flipped
    conn.close()
    for args in (("list", "--backup", "1", "-v"), ("list", "--backup", "latest"),
                 ("list", "--backup", "1", "--format", "json"), ("tar", "--backup", "1"),
                 ("tar", "--backup", "1", "--exclude", "nothing-matches")):
        res = run("-r", repo, *args, exit_code=7)
        line = one_line_error(res.stderr)
        assert line.startswith("backshift: error: save 1: the catalog is damaged: its "), line
        assert "restore it from a copy in " in line and "catalog-copies/" in line, line
        if args[0] == "tar":
            assert res.stdout_bytes[-1024:] != bytes(1024)  # the stream has no end
    res = run("-r", repo, "check", exit_code=10)
    assert ("catalog: save 1: its members do not give the digest recorded when it completed"
            in res.stdout), res.stdout
    sub = next(line.split(b" ")[-1] for line in listing.splitlines() if b"/dir3/" in line)
    run("-r", repo, "list", "--backup", "1", "--dir", "/" + sub.decode().rstrip("/"))


def test_digest_unchanged_resave_reuses_the_earlier_one_so_damage_since_is_found(
        saved, repo, tmp_path, no_racy_margin):
    """An unchanged re-save records the digest of the earlier save whose very members it
    has (not computed afresh from the rows): two files' contents swapped in the catalog
    after save 1 (a change the re-save's lstat cannot see) make tar of save 2 end with the
    catalog-damage error, as of save 1, instead of streaming the swapped bytes with exit 0."""
    catalog, _pristine, _listing, _stream = saved
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(tmp_path / "src"))
    cat = Catalog.open(catalog, readonly=True)
    try:
        assert cat.save_digest(2) == cat.save_digest(1)
        assert (cat.members_digest(2).members, cat.members_digest(2).digest()) == \
            cat.save_digest(2)[1:]
    finally:
        cat.close()
    conn = apsw.Connection(os.fsdecode(catalog))
    # two files of one size and different bytes (file-050 of two directories): no size
    # check can tell their contents apart, only the digest
    a_id, a_content, b_id, b_content = conn.execute(
        "SELECT a.id, a.content_id, b.id, b.content_id FROM version AS a JOIN version AS b "
        "ON b.size = a.size AND b.content_id > a.content_id WHERE a.size > 100 "
        "ORDER BY a.id LIMIT 1").fetchone()
    conn.execute("UPDATE version SET content_id = ? WHERE id = ?", (b_content, a_id))
    conn.execute("UPDATE version SET content_id = ? WHERE id = ?", (a_content, b_id))
    conn.close()
    res = run("-r", repo, "save", "--hostname", "h", "--subset", "s",
              input=find0(tmp_path / "src"))
    assert "read 0 files" in res.stdout, res.stdout  # every file borrowed
    for backup in ("1", "3"):
        res = run("-r", repo, "tar", "--backup", backup, exit_code=7)
        line = one_line_error(res.stderr)
        assert line.startswith(f"backshift: error: save {backup}: the catalog is damaged"), line


def test_save_refuses_a_damaged_catalog_and_writes_nothing(saved, repo, tmp_path):
    """A malformed page (a bad sector in the middle of the version table): the save stops
    before its first commit, exit 7, naming the catalog and the copies; catalog, -wal and
    chunks unchanged. Before, it committed batches into the damaged file until it met the
    page."""
    catalog, _pristine, _listing, _stream = saved
    page = damage.leaf_pages(catalog, "version")[1]
    with open(catalog, "r+b") as f:
        f.seek((page - 1) * PAGE + PAGE // 2)
        f.write(b"\xab" * (PAGE // 4))
    before = snapshot(repo)
    more = tmp_path / "more"
    more.mkdir()
    for i in range(50):
        (more / f"new-{i}").write_bytes(os.urandom(100))
    res = run("-r", repo, "save", "--hostname", "h", "--subset", "other", input=find0(more),
              exit_code=7)
    line = one_line_error(res.stderr)
    assert os.fsdecode(catalog) in line and "damaged (quick_check: " in line, line
    assert "nothing was written" in line and "catalog-copies/" in line, line
    after = snapshot(repo)
    assert not after.get(catalog + b"-wal"), "the save wrote to the catalog's log"
    for files in (before, after):  # SQLite's WAL files come and go with its connections
        files.pop(catalog + b"-wal", None)
        files.pop(catalog + b"-shm", None)
    assert after == before


def test_digest_older_catalog_upgrades_in_place_and_its_saves_are_not_verified(saved, repo,
                                                                               tmp_path):
    """A catalog from before migration 0005 (schema 4): read-only commands work on it as it
    is; the next save migrates it, and only saves completed from then on carry a digest;
    check says how many are not verified."""
    catalog, _pristine, listing, _stream = saved
    conn = apsw.Connection(os.fsdecode(catalog))
    conn.execute("DROP TABLE save_digest; PRAGMA user_version = 4")
    conn.close()
    assert run("-r", repo, "list", "--backup", "1", "-v").stdout_bytes == listing
    res = run("-r", repo, "check")
    assert "1 complete save(s) have no members digest" in res.stdout, res.stdout
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(tmp_path / "src"))
    cat = Catalog.open(catalog, readonly=True)
    try:
        assert cat.user_version() >= 5
        assert cat.save_digest(1) is None and cat.save_digest(2) is not None
    finally:
        cat.close()
    res = run("-r", repo, "check")
    assert "1 complete save(s) have no members digest" in res.stdout, res.stdout
    assert "no problems found" in res.stdout
