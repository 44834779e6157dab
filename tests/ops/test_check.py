"""check: clean repositories pass; every kind of chunk damage is found, grouped, healed."""

from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

import pytest
from harness import damage
from harness.faults import PEAK_RSS_MAX, run_capped
from repo_oracle import assert_save_matches, file_digests, save_contents

from backshift.catalog import Catalog
from backshift.ops.catalog_copy import KEEP, list_copies
from backshift.ops.check import IdSet
from backshift.ops.check import check as run_check
from backshift.repo import READ_LOCKED, open_repository
from conftest import BACKSHIFT, find0, run


def make_source(root: Path) -> Path:
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(120_000))
    (root / "small.txt").write_bytes(b"small file\n" * 100)
    (root / "copy.bin").write_bytes((root / "big.bin").read_bytes()[:70_000])
    return root


def chunk_path(repo: bytes, sha_hex: str) -> str:
    return os.path.join(os.fsdecode(repo), "chunks", sha_hex[:2], sha_hex)


def chunks_of(repo: bytes, name: bytes) -> list[str]:
    """The chunks of the newest version of the file whose path ends with NAME, in order."""
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        rows = cat.conn.execute(
            "SELECT k.sha256 FROM path AS p JOIN version AS v ON v.path_id = p.id "
            "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
            "JOIN chunk AS k ON k.id = cc.chunk_id WHERE p.name = ? "
            "ORDER BY v.id DESC, cc.seq", (name,)).fetchall()
        return [r[0].hex() for r in rows]
    finally:
        cat.close()


def test_check_clean_repository_passes(tmp_path, repo):
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    res = run("-r", repo, "check", "--read-data")
    assert "no problems found" in res.stdout
    assert "catalog copy: newest is" in res.stdout
    assert "verified 3 file contents" in res.stdout


DAMAGE = {"truncated": damage.truncate, "bit-flipped": damage.flip_bit,
          "deleted": damage.delete, "other-chunks-bytes": damage.other_chunks_bytes}
FAST_FINDS = {"truncated", "deleted"}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_check_finds_damage_groups_it_and_heals_after_resave(tmp_path, repo, kind,
                                                             no_racy_margin):
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    run("-r", repo, "save", "--subset", "t",
        input=find0(src))  # a second save using the same chunks
    expected = file_digests(src)
    big = chunks_of(repo, b"big.bin")
    small = chunks_of(repo, b"small.txt")
    victim = big[-1]
    other = chunk_path(repo, small[0])
    # the fast check compares sizes: another chunk's bytes are found when their size differs
    finds = kind in FAST_FINDS or (kind == "other-chunks-bytes" and os.path.getsize(
        chunk_path(repo, victim)) != os.path.getsize(other))
    DAMAGE[kind](chunk_path(repo, victim), other)
    run("-r", repo, "check", exit_code=10 if finds else 0)
    full = run("-r", repo, "check", "--read-data", exit_code=10)
    lines = full.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith(f"chunk {victim}")]
    assert len(header) == 1, full.stdout  # the bad chunk is reported once ...
    users = lines[header[0] + 1:header[0] + 3]  # ... with every save and path using it
    assert users == [f"    used by save 1: {src}/big.bin", f"    used by save 2: {src}/big.bin"]
    assert "1 problem(s) found" in full.stdout or kind == "other-chunks-bytes"
    assert "problem(s)" in full.stderr
    repaired = run("-r", repo, "check", "--read-data", "--repair", exit_code=10)
    if kind != "deleted":
        assert f"quarantined chunk {victim}" in repaired.stdout
        assert glob.glob(os.path.join(os.fsdecode(repo), "quarantine", victim + ".*"))
    assert not os.path.exists(chunk_path(repo, victim))
    # the same data saved again re-creates the chunk; the old saves are whole again
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    healed = run("-r", repo, "check", "--read-data")
    assert "no problems found" in healed.stdout
    for sid in (1, 2, 3):
        assert_save_matches(repo, sid, expected)


HUGE = 4 << 30  # a sparse file: no disk, but reading it whole would need 4 GiB of memory


@pytest.mark.parametrize("catalog_says", ["real", "huge", "unknown", "huge_length"])
def test_check_reports_a_huge_chunk_file_without_reading_it(tmp_path, repo, catalog_says):
    """A chunk file far longer than any body of its chunk: found by its size when the catalog
    knows the right one, else by --read-data, which reads no more than the longest body can
    be (the child's address space is capped: reading it whole would be a MemoryError)."""
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    victim = chunks_of(repo, b"big.bin")[-1]
    if catalog_says != "real":  # a hostile catalog agrees with the file, or knows no size
        cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"))
        cat.conn.execute("UPDATE chunk SET stored_length = ? WHERE sha256 = ?",
                         (0 if catalog_says == "unknown" else HUGE, bytes.fromhex(victim)))
        if catalog_says == "huge_length":  # ... and gives the chunk that length too
            cat.conn.execute("UPDATE chunk SET length = ? WHERE sha256 = ?",
                             (HUGE, bytes.fromhex(victim)))
        cat.close()
    os.truncate(chunk_path(repo, victim), HUGE)
    res = run_capped([BACKSHIFT, "-r", repo, "check", "--read-data"])
    out, err = res.stdout.decode(), res.stderr.decode()
    assert res.returncode == 10, err
    assert "Traceback" not in err and "MemoryError" not in err
    [line] = [ln for ln in out.splitlines() if ln.startswith(f"chunk {victim}")]
    if catalog_says == "real":
        assert f"size {HUGE} bytes" in line, line
    elif catalog_says == "huge_length":
        assert f"the catalog gives it {HUGE} bytes, more than any chunk holds" in line, line
    else:
        assert f"chunk file is {HUGE} bytes, longer than any body of a " in line, line
    assert f"{src}/big.bin" in out
    assert res.peak_rss < PEAK_RSS_MAX


@pytest.mark.parametrize("where", ["other-directory", "upper-case"])
def test_check_a_chunk_file_where_reads_do_not_look_is_missing(tmp_path, repo, where):
    """Reads open chunks/<2 hex>/<64 lowercase hex> (Store.path_for). A chunk file moved to
    another fan-out directory, or renamed in upper case, is missing for a restore: check
    must say so (and leave the stray file alone), not count it as present."""
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    sha = chunks_of(repo, b"small.txt")[0]
    real = chunk_path(repo, sha)
    if where == "upper-case":
        stray = os.path.join(os.path.dirname(real), sha.upper())
    else:
        other = "00" if not sha.startswith("00") else "01"
        stray = os.path.join(os.fsdecode(repo), "chunks", other, sha)
    os.rename(real, stray)
    res = run("-r", repo, "check", exit_code=10)
    assert sha in res.stdout and "missing" in res.stdout, res.stdout
    assert os.path.exists(stray)


def test_check_id_set_is_a_set_of_ids():
    ids = IdSet()
    for i in (0, 7, 8, 1_000_003, 8, 7):
        ids.add(i)
    assert len(ids) == 4 and list(ids) == [0, 7, 8, 1_000_003]
    assert 1_000_003 in ids and 1_000_002 not in ids and 10**9 not in ids and "7" not in ids


def test_check_read_data_subsets_cover_every_chunk_exactly_once(tmp_path, repo):
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    with open_repository(repo, READ_LOCKED) as r:
        every = {cid for (cid,) in r.catalog.conn.execute("SELECT id FROM chunk")}
        parts = [run_check(r, read_data=True, part=(n, 3)).chunks_verified for n in (1, 2, 3)]
        whole = run_check(r, read_data=True)
    assert len(every) > 3
    assert set().union(*parts) == every == set(whole.chunks_verified)
    assert sum(len(p) for p in parts) == len(every) == len(whole.chunks_verified)
    assert whole.contents_verified == 3
    run("-r", repo, "check", "--read-data-subset", "2/3")
    run("-r", repo, "check", "--read-data-subset", "4/3", exit_code=2)


def test_check_reports_dangling_member_reference(tmp_path, repo):
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"))
    cat.conn.execute("INSERT INTO path (parent_id, key, name) VALUES (NULL, x'00ff', x'ff')")
    cat.conn.execute("INSERT INTO member (save_id, path_id, version_id) "
                     "SELECT 1, max(id), 999999 FROM path")
    cat.close()
    res = run("-r", repo, "check", exit_code=10)
    assert "names missing version 999999" in res.stdout


def test_check_catalog_restored_from_its_copy(tmp_path, repo):
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    expected = file_digests(src)
    before = save_contents(repo, 1)
    for _ in range(KEEP + 1):
        run("-r", repo, "save", "--subset", "t", input=find0(src))
    copies = list_copies(repo)
    assert len(copies) == KEEP  # rotated
    catalog = Path(os.fsdecode(repo)) / "catalog.sqlite3"
    data = bytearray(catalog.read_bytes())
    data[:100] = b"\0" * 100  # header destroyed
    catalog.write_bytes(bytes(data))
    run("-r", repo, "saves", exit_code=7)
    # the README's restore procedure, its commands run as written there
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    steps = readme.split("### Restoring the catalog from its copy", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\d\. .*?`([^`]+)`|^   `([^`]+)`$", steps, re.M)
    commands = [a or b for a, b in commands if "mv" in (a or b) or "cp" in (a or b)]
    assert len(commands) == 2, commands
    for command in commands:
        subprocess.run(["sh", "-c", command.replace("REPO", os.fsdecode(repo))], check=True)
    assert (Path(os.fsdecode(repo)) / "damaged" / "catalog.sqlite3").exists()
    res = run("-r", repo, "check", "--read-data")
    assert "no problems found" in res.stdout
    listed = run("-r", repo, "saves", "--format", "csv").stdout.strip().splitlines()
    assert len(listed) == 1 + KEEP + 2
    assert save_contents(repo, 1) == before
    assert_save_matches(repo, KEEP + 2, expected)


# the table whose last leaf page is destroyed -> the exit code of `saves` (which reads only
# the save table: a damaged page it does not touch is not noticed)
DAMAGED_PAGE_SAVES_CODE = {"path": 0, "save": 7}


@pytest.mark.parametrize("table", sorted(DAMAGED_PAGE_SAVES_CODE))
def test_check_reports_a_damaged_catalog_page_without_a_traceback(tmp_path, repo, table):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"file-with-a-longish-name-{i:04d}.txt").write_bytes(b"%d\n" % i)
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    catalog = os.path.join(os.fsdecode(repo), "catalog.sqlite3")
    assert not os.path.exists(catalog + "-wal") or os.path.getsize(catalog + "-wal") == 0
    page = damage.leaf_pages(catalog, table)[-1]
    with open(catalog, "r+b") as f:
        f.seek(4096 * (page - 1))
        f.write(b"\xff" * 4096)
    res = run("-r", repo, "check", exit_code=10)
    assert "the catalog is damaged" in res.stdout or "integrity_check:" in res.stdout
    assert "Traceback" not in res.stderr
    assert "catalog copy: newest is" in res.stdout
    listed = run("-r", repo, "saves", "--format", "csv", "--last", "1",
                 exit_code=DAMAGED_PAGE_SAVES_CODE[table])
    assert "Traceback" not in listed.stderr


def test_check_changes_nothing_and_waits_out_an_expire(tmp_path, repo):
    from backshift.lock import RepoLock

    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    run("-r", repo, "expire", "--keep-last", "1")  # folds the WAL into the catalog file
    catalog = Path(os.fsdecode(repo)) / "catalog.sqlite3"
    before = catalog.read_bytes()
    chunks_before = sorted(glob.glob(os.path.join(os.fsdecode(repo), "chunks", "*", "*")))
    run("-r", repo, "check", "--read-data")
    assert catalog.read_bytes() == before
    assert sorted(glob.glob(os.path.join(os.fsdecode(repo), "chunks", "*", "*"))) == \
        chunks_before
    lock = RepoLock(repo, exclusive=True, operation="expire")
    lock.acquire()
    try:
        res = run("-r", repo, "check", exit_code=5)
        assert "held exclusively" in res.stderr and "(expire, since" in res.stderr
    finally:
        lock.release()
    run("-r", repo, "check", "--lock-wait", "5")


@pytest.mark.parametrize("damage", ["wrong_content", "not_a_body"])
def test_check_read_data_finds_a_damaged_orphan_a_later_save_would_reuse(tmp_path, repo,
                                                                          damage):
    """An orphan chunk file (no save uses it: an interrupted save's leftover) that is
    damaged: a save of the same data takes it as stored, since a save only checks that a
    chunk file exists. check --read-data reads orphans too and reports it (exit 10);
    --repair quarantines it, and the next save of that data stores a good copy."""
    import hashlib
    src = make_source(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    data = b"the data an interrupted save had stored\n" * 50  # under min_size: one chunk
    sha = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.dirname(chunk_path(repo, sha)), exist_ok=True)
    with open(chunk_path(repo, sha), "wb") as f:
        f.write(b"1\n" + data.replace(b"stored", b"STORED") if damage == "wrong_content"
                else b"9\ngarbage")
    res = run("-r", repo, "check", exit_code=0)  # without --read-data: counted, not read
    assert "1 orphan chunk files" in res.stdout
    res = run("-r", repo, "check", "--read-data", exit_code=10)
    lines = res.stdout.splitlines()
    at = lines.index(next(ln for ln in lines if ln.startswith(f"chunk {sha}: ")))
    assert "used by no save" in lines[at + 1] and "--repair quarantines it" in lines[at + 1]
    assert "and 0 orphan chunk files" in res.stdout  # the damaged one is not counted as read
    res = run("-r", repo, "check", "--read-data", "--repair", exit_code=10)
    assert f"quarantined chunk {sha}" in res.stdout
    (src / "new.txt").write_bytes(data)
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    res = run("-r", repo, "check", "--read-data")
    assert "no problems found" in res.stdout
    out = run("-r", repo, "tar", "--backup", "latest", os.fsencode(src / "new.txt"))
    assert data in out.stdout_bytes
