"""The catalog's damage probe of a save run in a thread (a big catalog: ops/session.py
IntegrityProbe) while the re-save walks and matches: nothing of the save is committed before
it passed, and damage it finds is the same one error, with nothing written."""

from __future__ import annotations

import os
import threading

import apsw
import pytest
from harness import damage
from harness.scenario import snapshot

from backshift import pathcodec
from backshift.catalog import CATALOG_NAME
from backshift.errors import NotACatalog
from backshift.ops import save as save_mod
from backshift.ops import session as session_mod
from backshift.ops.save import SaveOptions
from backshift.repo import WRITE, open_repository
from conftest import find0, make_tree, run

PAGE = 4096


def _tree(root):
    make_tree(root)
    for d in range(4):
        sub = root / f"dir{d}"
        sub.mkdir()
        for i in range(100):
            f = sub / f"file-{i:03d}.txt"
            f.write_bytes(b"%d %d\n" % (d, i) * (i + 1))
            os.utime(f, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    return root


def _resave(repo: bytes, root) -> tuple:
    names = [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, names, SaveOptions("h", "s"), warnings.append)
    return stats, warnings


def _saves(catalog: bytes) -> list[tuple]:
    conn = apsw.Connection(os.fsdecode(catalog), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT id, status FROM save ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def probed_in_thread(monkeypatch):
    """Every catalog counts as big: its probe runs in a thread."""
    monkeypatch.setattr(session_mod, "BACKGROUND_PROBE_BYTES", 0)


def test_session_background_probe_commits_the_save_row_only_after_it_passed(
        probed_in_thread, no_racy_margin, monkeypatch, repo, tmp_path):
    """The probe is held until the re-save has matched its first batch: the walk went on
    meanwhile, the save row was not visible to another connection then, and the save ends
    complete with every file borrowed."""
    root = _tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(root))
    catalog = os.path.join(repo, CATALOG_NAME)
    offered = threading.Event()
    seen: dict[str, object] = {}
    real_probe = session_mod.quick_check_problem

    def held_probe(conn, errors_are_problems=True):
        if not errors_are_problems:  # the thread's probe
            seen["offered before the probe ran"] = offered.wait(timeout=120)
        return real_probe(conn, errors_are_problems)

    real_offer = session_mod.SaveSession.offer

    def offer(self, entries):
        out = real_offer(self, entries)
        if not offered.is_set():
            seen["saves during the first offer"] = _saves(catalog)
            offered.set()
        return out

    monkeypatch.setattr(session_mod, "quick_check_problem", held_probe)
    monkeypatch.setattr(session_mod.SaveSession, "offer", offer)
    stats, warnings = _resave(repo, root)
    assert seen["offered before the probe ran"] is True
    assert seen["saves during the first offer"] == [(1, "complete")]
    assert warnings == []
    assert stats.status == "complete" and stats.files_read == 0
    assert stats.files_borrowed >= 400
    assert _saves(catalog) == [(1, "complete"), (2, "complete")]


def test_session_background_probe_damage_stops_the_resave_and_nothing_is_written(
        probed_in_thread, repo, tmp_path):
    """A malformed page in the middle of the version table, found by the probe in its
    thread (or first met by the matching, then named by the probe): NotACatalog naming
    the catalog and its copies; no save row, catalog and chunks unchanged."""
    root = _tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(root))
    run("-r", repo, "saves")  # checkpointed: the catalog is one file
    catalog = os.path.join(repo, CATALOG_NAME)
    for side in (b"-wal", b"-shm"):
        if os.path.exists(catalog + side):
            os.unlink(catalog + side)
    page = damage.leaf_pages(catalog, "version")[1]
    with open(catalog, "r+b") as f:
        f.seek((page - 1) * PAGE + PAGE // 2)
        f.write(b"\xab" * (PAGE // 4))
    before = snapshot(repo)
    with pytest.raises(NotACatalog) as e:
        _resave(repo, root)
    line = e.value.message()
    assert os.fsdecode(catalog) in line and "damaged (quick_check: " in line, line
    assert "nothing was written" in line and "catalog-copies/" in line, line
    after = snapshot(repo)
    assert not after.get(catalog + b"-wal"), "the save wrote to the catalog's log"
    for files in (before, after):  # SQLite's WAL files come and go with its connections
        files.pop(catalog + b"-wal", None)
        files.pop(catalog + b"-shm", None)
    assert after == before
