"""Matrix rows B3, B4, B6 and G1 of docs/reliability.md: damaged chunks, and what check reports."""

from __future__ import annotations

import os

import apsw
import pytest
from harness import damage
from harness.consistency import assert_repo_consistent
from harness.oracle import assert_save_matches, diff, from_catalog, from_stream, manifest
from harness.scenario import one_line_error, save, small_tree

from backshift.errors import DataDamaged
from backshift.pathcodec import sort_key
from backshift.store import Store
from conftest import run


def _chunks_of(repo: bytes, path: bytes, save_id: int) -> list[bytes]:
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")))
    try:
        return [r[0] for r in conn.execute(
            "SELECT k.sha256 FROM member AS m JOIN path AS p ON p.id = m.path_id "
            "JOIN version AS v ON v.id = m.version_id "
            "JOIN content_chunk AS cc ON cc.content_id = v.content_id "
            "JOIN chunk AS k ON k.id = cc.chunk_id WHERE m.save_id = ? AND p.key = ? "
            "ORDER BY cc.seq", (save_id, sort_key(path)))]
    finally:
        conn.close()


# (damage, whether the fast check sees it: None = only if the sizes differ)
ROWS = {"B3_truncated": (damage.truncate, True), "B4_bit_flip": (damage.flip_bit, False),
        "B6_other_chunks_bytes": (damage.other_chunks_bytes, None)}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_B3_B4_B6_damaged_chunk_is_reported_and_the_rest_restores(tmp_path, repo, row,
                                                                 no_racy_margin):
    spoil, fast_finds = ROWS[row]
    src = small_tree(tmp_path / "src")
    expected = manifest(src)
    sid = save(repo, src)["save_id"]
    sid2 = save(repo, src)["save_id"]  # a second save shares the chunks
    big = os.fsencode(src / "big.bin")
    text = os.fsencode(src / "text.txt")
    victim = _chunks_of(repo, big, sid)[1]
    store = Store(repo)
    other = store.path_for(_chunks_of(repo, text, sid)[0])
    if fast_finds is None:
        fast_finds = os.path.getsize(store.path_for(victim)) != os.path.getsize(other)
    spoil(store.path_for(victim), other)
    run("-r", repo, "check", exit_code=10 if fast_finds else 0)
    full = run("-r", repo, "check", "--read-data", exit_code=10)
    lines = full.stdout.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.startswith(f"chunk {victim.hex()}")]
    assert len(heads) == 1, full.stdout  # listed once, with every save and path using it
    assert lines[heads[0] + 1:heads[0] + 3] == [f"    used by save {sid}: {src}/big.bin",
                                                f"    used by save {sid2}: {src}/big.bin"]
    one_line_error(full.stderr)
    # nothing else is lost: every other member restores byte-identical
    with pytest.raises(DataDamaged):
        from_catalog(repo, sid, os.fsencode(src))
    others = {p: e for p, e in expected.items() if p != big}
    tar = run("-r", repo, "tar", "--backup", str(sid), exit_code=10)
    assert "big.bin" in tar.stderr and "Traceback" not in tar.stderr
    got = from_stream(tar.stdout_bytes, tmp_path / "dest", os.fsencode(src))
    assert not diff(others, {p: e for p, e in got.items() if p != big}, symlink_mtime=False)
    # heal: repair quarantines the chunk, the same data saved again re-creates it
    run("-r", repo, "check", "--read-data", "--repair", exit_code=10)
    save(repo, src)
    run("-r", repo, "check", "--read-data")
    assert_repo_consistent(repo)
    for s in (sid, sid2):
        assert_save_matches(repo, s, expected, src)


def test_G1_check_clean_then_each_kind_of_damage(tmp_path, repo):
    src = small_tree(tmp_path / "src")
    sid = save(repo, src)["save_id"]
    clean = run("-r", repo, "check")
    assert "no problems found" in clean.stdout
    store = Store(repo)
    victim = _chunks_of(repo, os.fsencode(src / "big.bin"), sid)[0]
    os.unlink(store.path_for(victim))  # B5
    res = run("-r", repo, "check", exit_code=10)
    assert f"chunk {victim.hex()}" in res.stdout and f"{src}/big.bin" in res.stdout
    one_line_error(res.stderr)
    catalog = os.path.join(repo, b"catalog.sqlite3")
    for side in (b"-wal", b"-shm"):
        if os.path.exists(catalog + side):
            os.unlink(catalog + side)
    with open(catalog, "r+b") as f:  # A6: the header of the catalog overwritten
        f.write(b"garbage, not SQLite")
    res = run("-r", repo, "check", exit_code=7)  # before any chunk is looked at
    line = one_line_error(res.stderr)
    assert "catalog" in line
