"""A re-save's names the fast path did not borrow (touched, changed, new): their earlier
versions in every candidate save come with their batch's offer, one query for the batch
(Borrower.fetch_ahead), so the general path's questions about them (locate, kept_xattrs,
borrow, reusable_version) list no directory of an earlier save and ask nothing per file."""

from __future__ import annotations

import os
from pathlib import Path

from backshift import pathcodec
from backshift.catalog import Catalog
from backshift.ops import save as save_mod
from backshift.ops.owners import Owners
from backshift.ops.save import SaveOptions
from backshift.ops.session import SaveSession
from backshift.repo import WRITE, open_repository
from conftest import find0


def _names(root: Path) -> list[bytes]:
    return [pathcodec.normalize(n, b"/") for n in find0(root).split(b"\0") if n]


def _save(repo: bytes, root: Path):
    warnings: list[str] = []
    with open_repository(repo, WRITE) as r:
        stats = save_mod.save(r, _names(root), SaveOptions("host", "t"), warnings.append)
    assert warnings == []
    return stats


def _members(repo: bytes, save_id: int) -> dict[bytes, tuple]:
    with open_repository(repo, WRITE) as r:
        rows = r.catalog.conn.execute(
            "SELECT p.key, v.mode, v.size, v.mtime_ns, v.ctime_ns, v.ino, v.content_id,"
            " v.link_target FROM member AS m JOIN path AS p ON p.id = m.path_id"
            " JOIN version AS v ON v.id = m.version_id WHERE m.save_id = ?",
            (save_id,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def _tree(root: Path) -> None:
    for d in ("a", "b", "c", "c/deep"):
        (root / d).mkdir(parents=True)
        for i in range(6):
            (root / d / f"f{i}").write_bytes(f"{d} {i}\n".encode() * (i + 1))
    os.symlink("a/f0", root / "link")


def _three_saves_then_changes(repo: bytes, root: Path) -> None:
    """Three saves that differ, the first and the third the candidates of a fourth (the
    latest, the largest), then the changes the fourth save meets."""
    _tree(root)
    (root / "a" / "old").write_bytes(b"in the first save only\n")
    _save(repo, root)
    os.remove(root / "a" / "old")
    (root / "a" / "f1").write_bytes(b"second content\n")
    _save(repo, root)
    (root / "b" / "new").write_bytes(b"in the third save only\n")
    _save(repo, root)
    for p in ("a/f2", "b/f3", "c/deep/f4", "b/new"):  # touched: a new mtime, same bytes
        st = os.stat(root / p)
        os.utime(root / p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.chmod(root / "c" / "f5", 0o600)  # ctime only
    (root / "a" / "f1").write_bytes(b"third content\n")
    (root / "c" / "added").write_bytes(b"never saved\n")
    os.remove(root / "link")
    os.symlink("b/f0", root / "link")
    (root / "a" / "old").write_bytes(b"in the first save only\n")


def test_save_resave_touched_names_list_no_directory_of_an_earlier_save(
        repo, tmp_path, monkeypatch, no_racy_margin):
    root = tmp_path / "src"
    _three_saves_then_changes(repo, root)
    listed: list[tuple[int, int]] = []
    real = Catalog.entries_under

    def counting(self, save_id, parent_id, limit):
        listed.append((save_id, parent_id))
        return real(self, save_id, parent_id, limit)

    monkeypatch.setattr(Catalog, "entries_under", counting)
    stats = _save(repo, root)
    monkeypatch.undo()

    assert listed == []
    # the touched files, the chmod one (a new ctime: read), the rewritten one, the new one
    # and the one back read; the rest borrowed
    assert stats.files_read == 8
    assert stats.files == len(_names(root))
    now = _members(repo, stats.save_id)
    before = _members(repo, stats.save_id - 1)
    def key(rel: str) -> bytes:
        return pathcodec.sort_key(os.fsencode(root / rel))

    for rel in ("a/f2", "b/f3", "c/deep/f4", "b/new"):
        assert now[key(rel)][5] == before[key(rel)][5]  # same bytes: the same content
        assert now[key(rel)][2] != before[key(rel)][2]  # the new mtime recorded
    assert now[key("c/f5")][0] & 0o777 == 0o600
    assert now[key("c/f5")][5] == before[key("c/f5")][5]  # the same bytes
    assert now[key("link")][6] == b"b/f0"
    assert now[key("c/added")][5] is not None


def test_save_resave_answers_ahead_equal_the_directory_listings(
        repo, tmp_path, no_racy_margin):
    root = tmp_path / "src"
    _three_saves_then_changes(repo, root)
    owners = Owners()
    with open_repository(repo, WRITE) as r:
        session = SaveSession(r, "host", "t", None, lambda _m: None, dry_run=True)
        session.open()
        borrower = session.borrower
        assert [sid for sid, _ in borrower.candidates] == [3, 1]
        entries = []
        for path in _names(root):
            st = os.lstat(path)
            entries.append((path, st, *owners.names(st.st_uid, st.st_gid)))
        borrowed = session.offer(entries)
        unmatched = [e[0] for e, b in zip(entries, borrowed, strict=True) if not b]
        rel = {p: os.path.relpath(p, os.fsencode(root)) for p in unmatched}
        # the changed names, and the directories whose entries changed
        assert set(rel.values()) >= {b"a/f1", b"a/f2", b"b/f3", b"c/deep/f4", b"b/new",
                                     b"c/f5", b"c/added", b"link", b"a/old", b"a", b"c"}
        held = {}
        for path in unmatched:
            fast_loc = session.locate(path)
            fast = [borrower.previous_version(sid, path, *fast_loc)
                    for sid, _ in borrower.candidates]
            kept = borrower.ahead.pop(path, None)
            assert (kept is None) == (rel[path] == b"c/added")  # a path no save holds
            slow_loc = session.locate(path)
            slow = [borrower.previous_version(sid, path, *slow_loc)
                    for sid, _ in borrower.candidates]
            assert fast_loc == slow_loc, path
            assert [f and f[:2] for f in fast] == [s and s[:2] for s in slow], path
            held[rel[path]] = [f is not None for f in fast]
        assert held[b"b/new"] == [True, False]
        assert held[b"a/old"] == [False, True]
        assert held[b"c/added"] == [False, False]
        assert held[b"a/f1"] == held[b"c/deep/f4"] == held[b"."] == [True, True]
