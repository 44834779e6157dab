"""Matrix row A5 of docs/reliability.md: power loss in a save or an expire (H3)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import apsw
import pytest
from harness.oracle import manifest
from harness.powerloss import (
    Op,
    Recorder,
    crash_state,
    crash_states,
    dead_pid,
    materialize,
    simulate,
)
from harness.scenario import save

from backshift import chunkbatch, diskio
from backshift.chunkbatch import ChunkBatch
from conftest import run


def _tree(root: Path) -> Path:
    """A few dozen files: some share their content, one is a hardlink, big.bin is ~10 chunks
    with the repo fixture's chunker (4 KiB min, 16 KiB average, 64 KiB max); old/ is saved
    first on its own, so part of the recorded save finds its chunks on disk already."""
    rnd = random.Random(23)
    for d in ("old", "docs/sub"):
        (root / d).mkdir(parents=True)
    (root / "big.bin").write_bytes(rnd.randbytes(160_000))
    shared = [rnd.randbytes(rnd.randrange(200, 3000)) for _ in range(5)]
    for i in range(30):
        body = shared[i % 5] if i % 3 == 0 else b"file %d\n" % i * rnd.randrange(1, 300)
        (root / "docs" / f"f{i:02d}").write_bytes(body)
    for i in range(4):
        (root / "old" / f"o{i}").write_bytes(shared[i] if i < 2 else rnd.randbytes(5000))
    (root / "docs" / "empty").write_bytes(b"")
    os.link(root / "docs" / "f01", root / "docs" / "sub" / "hard")
    os.symlink("../big.bin", root / "docs" / "link")
    return root


def _next_save(root: Path):
    def run(repo: bytes) -> tuple[int, int, str]:
        out = save(repo, root, exit_code=None)
        return out["code"], out.get("save_id", 0), out["stderr"]
    return run


def _record_save(tmp_path, repo, monkeypatch):
    """Save old/ (not recorded), then record a save of the whole tree committing every 8
    files; the recorder, the saves' expectations and the next-save runner."""
    monkeypatch.setenv("BACKSHIFT_READERS", "threads")  # the shim must see every write
    src = _tree(tmp_path / "src")
    base = save(repo, src / "old", subset="base")
    saves = {base["save_id"]: (manifest(src / "old"), os.fsencode(src / "old"))}
    work = os.fsencode(tmp_path / "powerloss")
    with Recorder(repo, work) as rec:
        rec_save = save(repo, src, "--checkpoint-files", "8", "--workers", "1")
    tree = (manifest(src), os.fsencode(src))
    saves[rec_save["save_id"]] = tree
    return rec, saves, tree, work, _next_save(src)


@pytest.mark.parametrize("batching", ["flush", "flush_ahead"])
def test_A5_power_loss_at_every_op_of_a_save_loses_no_complete_save(tmp_path, repo,
                                                                   monkeypatch, batching):
    """A power loss after any chunk-store op of a save (every op, 3 draws of what of the
    unsynced rest survived): every chunk the catalog names is on disk with its content, H4
    holds, every save the catalog calls complete restores (H5); in a seeded sample and the
    last state, the next save of the tree completes and restores through GNU tar.

    flush_ahead: 20 pending chunks (the small files') are synced and renamed by the store's
    flush-ahead thread, their names made durable by the next flush's syncfs, and a flush of
    6 or more (big.bin's) renames in two threads: what a save of thousands of small files
    does with 256 of each."""
    if batching == "flush_ahead":
        monkeypatch.setattr(chunkbatch, "FLUSH_AHEAD", 20)
        monkeypatch.setattr(chunkbatch, "RENAME_SPLIT", 6)
    rec, saves, tree, work, next_save = _record_save(tmp_path, repo, monkeypatch)
    kinds = [op.kind for op in rec.ops]
    assert kinds.count("create") >= 30 and kinds.count("rename") == kinds.count("create")
    assert kinds.count("commit") >= 4 and "syncfs" in kinds  # mid-save commits, then the last
    threads = {(op.kind, op.thread) for op in rec.ops}
    assert (("syncfs", "flush-ahead") in threads and ("rename", "rename") in threads) == (
        batching == "flush_ahead")
    report = simulate(rec, saves, next_save, tree, work, tmp_path)
    print(report.summary())
    assert report.states > len(rec.ops) and report.unsynced_max >= 20  # chance had its say
    assert not report.violations, report.summary() + "\n" + "\n".join(report.violations)


def test_A5_power_loss_at_every_op_of_an_expire_loses_no_kept_save(tmp_path, repo,
                                                                  monkeypatch):
    """expire --keep-last 1 after two saves, a power loss after any of its unlinks: the
    catalog's delete is committed before the first unlink, so a state's catalog never names
    an unlinked chunk; the save it keeps restores, the expired one too while the catalog
    still has it; the next save completes and restores."""
    monkeypatch.setenv("BACKSHIFT_READERS", "threads")
    src = _tree(tmp_path / "src")
    first = save(repo, src)
    saves = {first["save_id"]: (manifest(src), os.fsencode(src))}
    (src / "big.bin").write_bytes(random.Random(5).randbytes(160_000))
    for i in range(0, 30, 4):
        (src / "docs" / f"f{i:02d}").write_bytes(b"changed %d\n" % i * 50)
    second = save(repo, src)
    tree = (manifest(src), os.fsencode(src))
    saves[second["save_id"]] = tree
    work = os.fsencode(tmp_path / "powerloss")
    with Recorder(repo, work) as rec:
        run("-r", repo, "expire", "--keep-last", "1")
    kinds = [op.kind for op in rec.ops]
    assert kinds.count("unlink") >= 10 and kinds.index("commit") < kinds.index("unlink")
    report = simulate(rec, saves, _next_save(src), tree, work, tmp_path)
    print(report.summary())
    assert report.states > len(rec.ops) and report.unsynced_max >= 10
    assert not report.violations, report.summary() + "\n" + "\n".join(report.violations)


def _orphans(state) -> int:
    """Final-name chunk files of STATE its catalog does not name."""
    conn = apsw.Connection(os.fsdecode(state.catalog), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        named = {sha.hex() for (sha,) in conn.execute("SELECT sha256 FROM chunk")}
    finally:
        conn.close()
    finals = {os.path.basename(n).decode() for n in state.files if b".tmp." not in n}
    return len(finals - named)


def test_A5_power_loss_during_the_save_after_a_power_loss(tmp_path, repo, monkeypatch):
    """Compound failure (SQLite's "faults during recovery"): the crash state with the most
    orphan chunks and temp files a first power loss left, its save 'running', then a
    power loss at every op of the save that follows it (which marks the dead save
    interrupted, borrows from it and reuses the orphans)."""
    rec, saves, tree, work, next_save = _record_save(tmp_path, repo, monkeypatch)
    first = max(crash_states(rec), key=lambda s: (_orphans(s), len(s.files), -s.after))
    assert _orphans(first) >= 5 and any(b".tmp." in n for n in first.files)
    repo2 = materialize(rec, first, os.fsencode(tmp_path / "repo2"), dead_pid())
    work2 = os.fsencode(tmp_path / "powerloss2")
    with Recorder(repo2, work2) as rec2:
        code, sid, _err = next_save(repo2)
    assert code == 0
    saves[sid] = tree
    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    report = simulate(rec2, saves, next_save, tree, work2, tmp2)
    print(report.summary())
    assert "commit" in [op.kind for op in rec2.ops] and report.states > len(rec2.ops)
    assert not report.violations, report.summary() + "\n" + "\n".join(report.violations)


def _take_batch(self: ChunkBatch) -> tuple[int, dict, set]:
    """What ChunkBatch._flush does before its syncfs, rename, syncfs: the chunks the
    flush-ahead thread renamed, and the pending batch taken out of the store."""
    ahead = self._wait_ahead()
    with self._lock:
        batch, self._pending = self._pending, {}
        self._sizes = {}
        linked, self._linked = self._linked, set()
        self._seen_existing = False
    return ahead, batch, linked


def _flush_renaming_before_the_data_is_durable(self: ChunkBatch) -> int:
    """ChunkBatch._flush without its first syncfs: temp files renamed while their data may still
    be only in the page cache (the bug H3 exists to catch)."""
    ahead, batch, linked = _take_batch(self)
    self._rename_all(list(batch.values()), linked)
    diskio.syncfs(self.sync_root)
    return ahead + len(batch)


def test_A5_simulator_catches_a_rename_before_the_data_is_synced(tmp_path, repo, monkeypatch):
    """The simulator can fail: with the first syncfs of a flush left out, a power loss
    between the renames and the next syncfs leaves final-name chunk files that are empty,
    cut short or zeros. The next save used to take them for stored chunks (dedup
    poisoning); it now verifies such orphan chunk files first and replaces them (issue 19)."""
    monkeypatch.setattr(ChunkBatch, "_flush", _flush_renaming_before_the_data_is_durable)
    rec, saves, tree, work, next_save = _record_save(tmp_path, repo, monkeypatch)
    report = simulate(rec, saves, next_save, tree, work, tmp_path, max_violations=1000)
    print(report.summary())
    text = "\n".join(report.violations)
    assert report.violations, report.summary()
    assert "final-name chunk" in text  # H4: a file under a chunk's name with other content
    assert "the next save" not in text, text  # not poisoned: it verified the orphans


def _flush_committing_before_the_names_are_durable(self: ChunkBatch) -> int:
    """ChunkBatch._flush without its second syncfs: the catalog may commit rows naming chunks
    whose renames are still only in memory."""
    ahead, batch, linked = _take_batch(self)
    diskio.syncfs(self.sync_root)
    self._rename_all(list(batch.values()), linked)
    return ahead + len(batch)


def test_A5_simulator_catches_a_commit_before_the_renames_are_synced(tmp_path, repo,
                                                                    monkeypatch):
    """The other half of the order: with the second syncfs of a flush left out, a power
    loss after a commit can lose renames the catalog depends on: chunk rows (I1) and a
    complete save (H4, H5) name chunks that are not there under their names."""
    monkeypatch.setattr(ChunkBatch, "_flush", _flush_committing_before_the_names_are_durable)
    rec, saves, tree, work, next_save = _record_save(tmp_path, repo, monkeypatch)
    report = simulate(rec, saves, next_save, tree, work, tmp_path, max_violations=1000)
    print(report.summary())
    text = "\n".join(report.violations)
    assert "catalog names chunk" in text and "ChunkMissing" in text, report.summary()
    assert "referenced by a complete save" in text  # H4 on the state after the last commit
    assert "does not restore: ChunkMissing" in text  # H5

def test_A5_crash_states_follow_the_filesystem_model(tmp_path):
    """The simulator's model on a hand-made log: what a sync covers, renames atomic, a
    rename that outlives its data, ops during a syncfs left to chance."""
    rec = Recorder(b"/r", os.fsencode(tmp_path))
    rec.names_at_start, rec.base_files, rec.initial_catalog = {}, {}, b"cat-0"
    t1, t2, a, b, d = b"/r/chunks/aa/a.tmp", b"/r/chunks/bb/b.tmp", b"/r/chunks/aa/a", \
        b"/r/chunks/bb/b", b"/r/chunks/dd/d"
    rec.ops = [
        Op("create", t1, ino=1), Op("write", ino=1, data=b"AAAA"),          # 0 1
        Op("syncfs_begin"), Op("syncfs", offset=2),                        # 2 3
        Op("rename", t1, a, ino=1),                                        # 4
        Op("create", t2, ino=2), Op("write", ino=2, data=b"BBBB"),          # 5 6
        Op("rename", t2, b, ino=2),                                        # 7: before its data
        Op("syncfs_begin"),                                                # 8
        Op("create", d, ino=3), Op("write", ino=3, data=b"DDDD"),           # 9 10: meanwhile
        Op("syncfs", offset=8), Op("commit", b"cat-1"),                    # 11 12
    ]
    states = [crash_state(rec, after, seed) for after in range(-1, 13) for seed in range(40)]
    torn = {b"", bytes(4), b"B", b"BB", b"BBB"}  # lost, zeros, cut short
    for s in states:
        assert s.catalog == (b"cat-1" if s.after >= 12 else b"cat-0")
        if s.after >= 3:  # t1's entry and data are durable from the first syncfs on
            assert (t1 in s.files) != (a in s.files)  # the rename: old or new name, one
            assert s.files.get(t1, s.files.get(a)) == b"AAAA"
        if s.after >= 11:  # the second syncfs covers everything up to op 7
            assert s.files[a] == b"AAAA" and s.files[b] == b"BBBB" and t2 not in s.files
    before_sync = [s for s in states if 7 <= s.after < 11]
    assert any(s.files.get(b) in torn for s in before_sync)  # the rename outlived the data
    assert any(b not in s.files and t2 in s.files for s in before_sync)
    assert any(s.files.get(t1) in torn for s in states if 0 <= s.after < 3)
    after_sync = [s for s in states if s.after >= 11]  # ops 9, 10 began after the syncfs did
    assert any(d not in s.files for s in after_sync) and any(d in s.files for s in after_sync)
    assert any(s.files.get(d) in {b"", bytes(4), b"D", b"DD", b"DDD"} for s in after_sync)
