"""expire: retention applied to a real repository, exact GC, crash safety (RELIABILITY F1-F5)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from repo_oracle import assert_save_matches, file_digests, restore_with_tar

from backshift import catalog as catalog_mod
from backshift.catalog import Catalog
from backshift.crashpoints import POINTS
from conftest import find0, run, run_bin


def all_files(repo: bytes) -> set[str]:
    root = os.path.join(repo, b"chunks")
    return {os.fsdecode(n) for d in os.listdir(root) for n in os.listdir(os.path.join(root, d))}


def chunk_files(repo: bytes) -> set[str]:
    return {n for n in all_files(repo) if ".tmp." not in n}


def catalog_chunks(repo: bytes) -> set[str]:
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        return {sha.hex() for (sha,) in cat.conn.execute("SELECT sha256 FROM chunk")}
    finally:
        cat.close()


def chunks_of_save(repo: bytes, save_id: int) -> set[str]:
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        return {sha.hex() for (sha,) in cat.conn.execute(
            "SELECT k.sha256 FROM member AS m JOIN version AS v ON v.id = m.version_id "
            "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
            "JOIN chunk AS k ON k.id = cc.chunk_id WHERE m.save_id = ?", (save_id,))}
    finally:
        cat.close()


def save_generation(src: Path, repo: bytes, gen: int, subset: str = "default") -> dict:
    """Rewrite part of SRC for generation GEN, save it, return its manifest."""
    src.mkdir(exist_ok=True)
    (src / "stable.bin").write_bytes(b"stable" * 20000) if gen == 0 else None
    (src / f"gen{gen}.bin").write_bytes(os.urandom(50_000 + gen))
    (src / "changing.bin").write_bytes(os.urandom(40_000))
    old = src / f"gen{gen - 2}.bin"
    if old.exists():
        old.unlink()
    run("-r", repo, "save", "--subset", subset, input=find0(src))
    return file_digests(src)


def test_expire_removes_only_unreferenced_chunks(tmp_path, repo):
    src = tmp_path / "src"
    manifests = [save_generation(src, repo, g) for g in range(3)]
    before = chunk_files(repo)
    res = run("-r", repo, "expire", "--keep-last", "1")
    assert "remove       save 1 " in res.stdout and "remove       save 2 " in res.stdout
    assert "keep         save 3 " in res.stdout and "keep-last 1: newest" in res.stdout
    after = chunk_files(repo)
    assert after < before
    assert after == catalog_chunks(repo)  # nothing unreferenced left, nothing missing
    assert_save_matches(repo, 3, manifests[2])
    run("-r", repo, "check", "--read-data")


def test_expire_counts_freed_chunks_and_orphans_exactly(tmp_path, repo):
    src = tmp_path / "src"
    for g in range(3):
        save_generation(src, repo, g)
    freed = (chunks_of_save(repo, 1) | chunks_of_save(repo, 2)) - chunks_of_save(repo, 3)
    orphans = ["00" + "1" * 62, "ff" + "2" * 62]  # first and last fan-out directories
    for name in orphans:
        Path(os.fsdecode(repo), "chunks", name[:2]).mkdir(exist_ok=True)
        Path(os.fsdecode(repo), "chunks", name[:2], name).write_bytes(b"1\nleftover")
    summary = f"2 save(s), {len(freed):,} chunk(s) "
    dry = run("-r", repo, "expire", "--keep-last", "1", "--dry-run").stdout
    assert f"would remove {summary}" in dry and ", 2 orphan chunk(s) (20 B)" in dry, dry
    real = run("-r", repo, "expire", "--keep-last", "1").stdout
    assert f"removed {summary}" in real and ", 2 orphan chunk(s) (20 B)" in real, real
    assert not freed & chunk_files(repo)
    assert not set(orphans) & chunk_files(repo)
    assert chunk_files(repo) == catalog_chunks(repo)


def test_expire_dry_run_prints_the_real_runs_lines_and_changes_nothing(tmp_path, repo):
    src = tmp_path / "src"
    for g in range(3):
        save_generation(src, repo, g)
    before = chunk_files(repo)
    catalog_bytes = (Path(os.fsdecode(repo)) / "catalog.sqlite3").read_bytes()
    dry = run("-r", repo, "expire", "--keep-last", "2", "--dry-run")
    assert chunk_files(repo) == before
    assert len(run("-r", repo, "saves", "--format", "json").stdout.splitlines()) > 0
    assert "dry run: nothing was changed" in dry.stdout
    real = run("-r", repo, "expire", "--keep-last", "2")
    dry_lines = dry.stdout.splitlines()
    real_lines = real.stdout.splitlines()
    assert dry_lines[:3] == real_lines[:3]
    assert dry_lines[3].replace("would remove", "removed") == real_lines[3]
    assert catalog_bytes  # the catalog existed; the real run changed it below
    assert chunk_files(repo) < before


def test_expire_stops_before_deleting_when_a_kept_chunk_is_missing(tmp_path, repo):
    src = tmp_path / "src"
    for g in range(3):
        save_generation(src, repo, g)
    victim = sorted(chunks_of_save(repo, 3))[0]  # a chunk the kept save needs
    os.unlink(os.path.join(repo, b"chunks", victim[:2].encode(), victim.encode()))
    before = chunk_files(repo)
    res = run("-r", repo, "expire", "--keep-last", "1", exit_code=13)
    assert "nothing deleted" in res.stderr and "run check" in res.stderr
    assert chunk_files(repo) == before
    saves = run("-r", repo, "saves", "--format", "csv").stdout
    assert len(saves.strip().splitlines()) == 4  # header + 3 saves, none removed


def test_expire_removes_orphans_and_temp_files_of_any_age_only(tmp_path, repo):
    """Under the exclusive lock no live process owns a temp file: a fresh one goes too
    (issue 19); a file that is neither a chunk nor a temp file is left alone."""
    src = tmp_path / "src"
    save_generation(src, repo, 0)
    orphan = "ab" + "0" * 62
    orphan_path = os.path.join(repo, b"chunks", b"ab", orphan.encode())
    Path(os.fsdecode(orphan_path)).write_bytes(b"1\nleftover")
    old_temp = Path(os.fsdecode(repo)) / "chunks" / "cd" / ("cd" + "1" * 62 + ".tmp.h.1.aa")
    new_temp = Path(os.fsdecode(repo)) / "chunks" / "cd" / ("cd" + "2" * 62 + ".tmp.h.1.bb")
    stray = Path(os.fsdecode(repo)) / "chunks" / "cd" / "notes.txt"
    old_temp.write_bytes(b"x")
    new_temp.write_bytes(b"y")
    stray.write_bytes(b"z")
    two_hours_ago = time.time() - 7200
    os.utime(old_temp, (two_hours_ago, two_hours_ago))
    res = run("-r", repo, "expire", "--keep-last", "5")
    assert "1 orphan chunk(s)" in res.stdout and "2 stale temp file(s)" in res.stdout
    assert not os.path.exists(orphan_path)
    assert not old_temp.exists()
    assert not new_temp.exists()
    assert stray.exists()


def test_expire_narrows_to_one_series(tmp_path, repo):
    src = tmp_path / "src"
    for g in range(2):
        save_generation(src, repo, g, subset="home")
    m = file_digests(src)
    for g in range(2):
        save_generation(tmp_path / "etc", repo, g, subset="etc")
    res = run("-r", repo, "expire", "--keep-last", "1", "--subset", "etc")
    assert "home" not in res.stdout
    rows = run("-r", repo, "saves", "--format", "csv").stdout.strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "4"]
    assert_save_matches(repo, 2, m)


def test_expire_save_removes_exactly_the_saves_named(tmp_path, repo):
    """--save ID removes those saves, the newest of its series too, and only the data
    nothing else uses; the others are not judged (no line), and restore exactly."""
    src = tmp_path / "src"
    manifests = [save_generation(src, repo, g) for g in range(4)]
    freed = (chunks_of_save(repo, 2) | chunks_of_save(repo, 4)) \
        - chunks_of_save(repo, 1) - chunks_of_save(repo, 3)
    assert freed
    dry = run("-r", repo, "expire", "--save", "2", "--save", "4", "--dry-run").stdout
    real = run("-r", repo, "expire", "--save", "2", "--save", "4").stdout
    lines = real.splitlines()
    assert [ln.split()[:3] for ln in lines[:2]] == [["remove", "save", "2"],
                                                     ["remove", "save", "4"]], real
    assert all("named with --backup" in ln for ln in lines[:2])
    assert f"removed 2 save(s), {len(freed):,} chunk(s) " in real
    assert dry.splitlines()[:2] == lines[:2]
    rows = run("-r", repo, "saves", "--format", "csv").stdout.strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "3"]
    assert not freed & chunk_files(repo)
    assert chunk_files(repo) == catalog_chunks(repo)
    assert_save_matches(repo, 1, manifests[0])
    assert_save_matches(repo, 3, manifests[2])
    run("-r", repo, "check", "--read-data")


def test_expire_save_refuses_unknown_ids_and_policy_rules_before_removing_anything(
        tmp_path, repo):
    src = tmp_path / "src"
    for g in range(2):
        save_generation(src, repo, g, subset="home")
    before = chunk_files(repo)
    res = run("-r", repo, "expire", "--save", "1", "--save", "9", exit_code=8)
    assert res.stderr.strip() == "backshift: error: no save 9 in this repository " \
        "(see 'backshift saves')", res.stderr
    res = run("-r", repo, "expire", "--save", "1", "--subset", "etc", exit_code=8)
    assert "no save 1 of */etc in this repository" in res.stderr, res.stderr
    res = run("-r", repo, "expire", "--save", "1", "--keep-last", "1", exit_code=2)
    assert "--backup names the saves to remove" in res.stderr
    rows = run("-r", repo, "saves", "--format", "csv").stdout.strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]
    assert chunk_files(repo) == before


def test_expire_refuses_an_empty_policy(repo):
    res = run("-r", repo, "expire", exit_code=2)
    assert "needs a policy" in res.stderr
    run("-r", repo, "expire", "--older-than", "soon", exit_code=2)


def test_expire_sweeps_are_set_based_not_per_row(repo):
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"))
    try:
        for name in ("DELETE_UNREFERENCED_VERSIONS", "DELETE_UNREFERENCED_CONTENTS",
                     "UNREFERENCED_CHUNKS_IN_RANGE", "DELETE_UNREFERENCED_CHUNKS",
                     "DELETE_UNREFERENCED_PATHS"):
            plan = [row[3] for row in cat.conn.execute(
                "EXPLAIN QUERY PLAN " + getattr(catalog_mod, name), {"lo": b"a", "hi": b"b"})]
            assert not any("CORRELATED" in step for step in plan), (name, plan)
            # member/version are scanned only to build the NOT IN list, once
            assert any("LIST SUBQUERY" in step or "FOR IN-OPERATOR" in step
                       for step in plan), (name, plan)
        # the per-directory reconciliation reads one range of the sha256 index, no scan
        for name in ("CHUNKS_IN_RANGE", "UNREFERENCED_CHUNKS_IN_RANGE"):
            plan = [row[3] for row in cat.conn.execute(
                "EXPLAIN QUERY PLAN " + getattr(catalog_mod, name), {"lo": b"a", "hi": b"b"})]
            assert plan[0].startswith("SEARCH chunk USING INDEX"), (name, plan)
            assert "sha256>? AND sha256<?" in plan[0], (name, plan)
    finally:
        cat.close()


GC_POINTS = [p for p in POINTS if p.startswith("gc_")]


@pytest.mark.parametrize("point", GC_POINTS + ["gc_mid_unlink:3"])
def test_expire_killed_at_gc_point_leaves_only_orphans(tmp_path, repo, point):
    assert point.split(":")[0] in POINTS
    src = tmp_path / "src"
    manifests = [save_generation(src, repo, g) for g in range(4)]
    killed = run_bin("-r", repo, "expire", "--keep-last", "2",
                     env={"BACKSHIFT_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    res = run("-r", repo, "check")  # orphans are counted, not problems
    assert "no problems found" in res.stdout
    for sid in (3, 4):
        assert_save_matches(repo, sid, manifests[sid - 1])
        restored = restore_with_tar(repo, sid, tmp_path / f"restore{sid}")
        assert restored == manifests[sid - 1]  # a real restore, compared with the source
    again = run("-r", repo, "expire", "--keep-last", "2")
    assert "removed 0 save(s)" in again.stdout
    assert chunk_files(repo) == catalog_chunks(repo)
    assert "0 orphan chunk files" in run("-r", repo, "check", "--read-data").stdout


SAVE_POINTS = ["after_chunk_tmp_write", "after_chunk_rename", "before_catalog_commit",
               "after_catalog_commit", "before_save_complete"]


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_expire_after_a_save_killed_at_point_keeps_every_complete_save(tmp_path, repo, point):
    assert point in POINTS
    src = tmp_path / "src"
    manifests = [save_generation(src, repo, g) for g in range(2)]
    (src / "new.bin").write_bytes(os.urandom(200_000))
    killed = run_bin("-r", repo, "save", "--subset", "default",
                     input=find0(src), env={"BACKSHIFT_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    # the dead 'running' save is reported until a save (or check --repair) marks it
    res = run("-r", repo, "check", exit_code=None)  # killed before its first commit: no row
    # a dead 'running' save and temp files left by the killed process are warnings (exit 1)
    warned = ("is 'running' but its process" in res.stdout
              or "left by processes that are gone" in res.stdout)
    assert res.code == (1 if warned else 0), res.stdout
    final = save_generation(src, repo, 5)
    run("-r", repo, "expire", "--keep-last", "2")
    run("-r", repo, "check", "--read-data")
    listed = run("-r", repo, "saves", "--format", "csv").stdout.strip().splitlines()[1:]
    ids = [int(r.split(",")[0]) for r in listed]
    assert ids[0] == 2 and len(ids) == 2  # an interrupted save 3 went: a later one exists
    assert_save_matches(repo, 2, manifests[1])
    assert_save_matches(repo, ids[1], final)
    assert restore_with_tar(repo, 2, tmp_path / "r2") == manifests[1]
    assert restore_with_tar(repo, ids[1], tmp_path / "r-final") == final
    assert chunk_files(repo) == catalog_chunks(repo)
    # the killed save's temp files went with that expire already: no live process owns them
    assert all_files(repo) == catalog_chunks(repo)


def test_expire_removes_paths_of_a_deleted_subtree_and_keeps_live_ancestors(tmp_path, repo):
    src = tmp_path / "src"
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"deep\n")
    (src / "keep.txt").write_bytes(b"keep\n")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    import shutil
    shutil.rmtree(src / "a")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    # the second save, given only one file, still needs that file's ancestors as paths
    run("-r", repo, "save", "--subset", "one", input=os.fsencode(src / "keep.txt") + b"\0")
    run("-r", repo, "expire", "--keep-last", "1")
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        names = {n for (n,) in cat.conn.execute("SELECT name FROM path")}
        orphans = cat.conn.execute(
            "SELECT count(*) FROM path AS p LEFT JOIN path AS q ON q.id = p.parent_id "
            "WHERE p.parent_id IS NOT NULL AND q.id IS NULL").fetchone()[0]
    finally:
        cat.close()
    assert not names & {b"a", b"b", b"c", b"f.txt"}
    assert b"keep.txt" in names and orphans == 0
    run("-r", repo, "check")


def test_expire_keeps_a_referenced_chunk_when_a_copy_sits_in_another_fanout_dir(tmp_path, repo):
    """A stray copy of a referenced chunk in the wrong fan-out directory (a hand copy, a
    botched restore of the store) is not that directory's chunk: expire must neither count
    it as an orphan nor unlink the real chunk file of that name (which a save needs)."""
    src = tmp_path / "src"
    m = save_generation(src, repo, 0)
    victim = sorted(chunks_of_save(repo, 1))[0]
    other = "00" if victim[:2] != "00" else "01"
    real = os.path.join(repo, b"chunks", victim[:2].encode(), victim.encode())
    stray = Path(os.fsdecode(repo), "chunks", other, victim)
    stray.write_bytes(Path(os.fsdecode(real)).read_bytes())
    res = run("-r", repo, "expire", "--keep-last", "5")
    assert os.path.exists(real), res.stdout
    assert "orphan" not in res.stdout or ", 0 orphan" in res.stdout, res.stdout
    assert_save_matches(repo, 1, m)
    run("-r", repo, "check")
