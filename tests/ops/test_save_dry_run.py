"""save --dry-run (-n): what a save would read and borrow, deciding as a save does, writing
nothing to the repository and reading no file's contents (issue 21 item 8)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from harness.scenario import snapshot

from backshift.pathcodec import escape
from conftest import find0, make_tree, run, run_bin


def _regular_files(root: Path) -> list[bytes]:
    out = []
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(path)
    return out


def _state(repo: bytes) -> dict:
    """Every file of REPO with its bytes, and every directory (an empty one too)."""
    out: dict = snapshot(repo)
    for dirpath, dirs, _files in os.walk(repo):
        for name in dirs:
            out[os.path.join(dirpath, name)] = "<dir>"
    return out


def _assert_unchanged(before: dict, after: dict, repo: bytes) -> None:
    after = dict(after)
    for side in (b"-wal", b"-shm"):  # SQLite's WAL reader files may appear, empty
        name = os.path.join(repo, b"catalog.sqlite3" + side)
        if name not in before and name in after:
            assert side == b"-shm" or after[name] == b""
            del after[name]
    assert after == before


def _listing(stdout: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"read": set(), "borrow": set(), "new": set(), "link": set()}
    for line in stdout.splitlines():
        action, _, name = line.partition(" ")
        if action in out:
            out[action].add(name)
    return out


def test_save_dry_run_first_says_every_file_is_read_and_writes_nothing(tmp_path, repo):
    tree = make_tree(tmp_path / "src")
    before = _state(repo)
    # a real process, real PATHs: no save row, chunk, temp file, catalog copy or lock record
    proc = run_bin("-r", repo, "save", "--dry-run", "--hostname", "h", "--json", str(tree))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    files = _regular_files(tree)
    # sub/hardlink is a second link of a.txt: recorded with its content, not read again
    hardlink = os.fsencode(tree / "sub" / "hardlink")
    assert out["files_read"] == len(files) - 1 and out["hard_links"] == 1
    assert out["bytes_read"] == sum(os.lstat(f).st_size for f in files) - len(b"hello\n")
    assert out["files_borrowed"] == 0 and out["warnings"] == 0
    assert out["subset"] == os.fsdecode(os.fsencode(tree).strip(b"/").replace(b"/", b"-"))
    _assert_unchanged(before, _state(repo), repo)
    # names from find -print0, with -n and -v: the same, listed
    res = run("-r", repo, "save", "-n", "-v", "--hostname", "h", "--subset", "s",
              input=find0(tree))
    listed = _listing(res.stdout)
    pair = {escape(hardlink), escape(os.fsencode(tree / "a.txt"))}
    assert len(listed["link"]) == 1 and listed["link"] < pair  # whichever find gave 2nd
    assert listed["read"] == {escape(f) for f in files} - listed["link"]
    assert escape(os.path.join(os.fsencode(tree), b"sub")) in listed["new"]
    assert escape(os.fsencode(tree / "good-link")) in listed["new"]
    assert "would read" in res.stdout and "borrow 0 unchanged" in res.stdout
    _assert_unchanged(before, _state(repo), repo)


def test_save_dry_run_after_a_save_borrows_unchanged_and_reads_touched(tmp_path, repo,
                                                                        no_racy_margin):
    tree = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(tree))
    (tree / "text.txt").write_bytes(b"changed\n")
    before = _state(repo)
    res = run("-r", repo, "save", "-n", "--hostname", "h", "--subset", "s", "-v",
              input=find0(tree))
    listed = _listing(res.stdout)
    touched = escape(os.fsencode(tree / "text.txt"))
    pair = {escape(os.fsencode(tree / "sub" / "hardlink")), escape(os.fsencode(tree / "a.txt"))}
    assert listed["read"] == {touched}
    assert len(listed["link"]) == 1 and listed["link"] < pair  # whichever find gave 2nd
    assert listed["borrow"] == {escape(f) for f in _regular_files(tree)} - {touched} \
        - listed["link"]
    _assert_unchanged(before, _state(repo), repo)
    counts = json.loads(run("-r", repo, "save", "-n", "--hostname", "h", "--subset", "s",
                            "--json", input=find0(tree)).stdout)
    assert counts["files_read"] == 1 and counts["bytes_read"] == len(b"changed\n")
    assert counts["files_borrowed"] == len(listed["borrow"])
    # another series borrows nothing from this one, as a save would not
    other = json.loads(run("-r", repo, "save", "-n", "--hostname", "h", "--subset", "t",
                           "--json", input=find0(tree)).stdout)
    assert other["files_borrowed"] == 0
    # a real save then does what the dry run said
    real = json.loads(run("-r", repo, "save", "--hostname", "h", "--subset", "s", "--json",
                          input=find0(tree)).stdout)
    assert (real["files_read"], real["files_borrowed"]) == (1, counts["files_borrowed"])


def test_save_dry_run_uses_the_series_named_after_the_paths(tmp_path, repo, no_racy_margin):
    tree = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", str(tree))  # series named after the PATH
    out = json.loads(run("-r", repo, "save", "-n", "--hostname", "h", "--json",
                         str(tree)).stdout)
    assert out["files_read"] == 0
    assert out["files_borrowed"] == len(_regular_files(tree)) - 1  # sub/hardlink: a link


def test_save_dry_run_applies_the_excludes(tmp_path, repo):
    tree = make_tree(tmp_path / "src")
    res = run("-r", repo, "save", "-n", "-v", "--exclude", "*.txt", "--exclude", "sub",
              str(tree))
    names = set().union(*_listing(res.stdout).values())
    assert escape(os.fsencode(tree / "random.bin")) in names
    assert not any(n.endswith(".txt") or "/sub" in n for n in names)


def test_save_dry_run_never_opens_a_file(tmp_path, repo, no_racy_margin):
    tree = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(tree))
    (tree / "text.txt").write_bytes(b"changed\n")
    opened: list = []
    watching = [True]
    root = os.fsdecode(os.fsencode(tree))

    def hook(event, args):
        if watching[0] and event == "open" and args and isinstance(args[0], (str, bytes)) \
                and os.fsdecode(args[0]).startswith(root):
            opened.append(args[0])

    sys.addaudithook(hook)  # audit hooks cannot be removed: switched off below
    try:
        run("-r", repo, "save", "-n", "--hostname", "h", "--subset", "s", str(tree))
        assert opened == []
        # the hook sees a save's reads (a re-save reads in threads of this process)
        run("-r", repo, "save", "--hostname", "h", "--subset", "s", str(tree))
        assert os.fsencode(tree / "text.txt") in [os.fsencode(p) for p in opened]
    finally:
        watching[0] = False


def test_save_dry_run_with_no_names_exits_2_as_save(tmp_path, repo):
    res = run("-r", repo, "save", "-n", "--subset", "s", input=b"", exit_code=2)
    assert "no names came in" in res.stderr
    res = run("-r", repo, "save", "-n", str(tmp_path / "nothere"), exit_code=2)
    assert "nothere" in res.stderr
    res = run("-r", repo, "save", "-n", input=b"x\0", exit_code=2)
    assert "--subset is required" in res.stderr


def test_save_dry_run_warnings_exit_1(tmp_path, repo):
    tree = make_tree(tmp_path / "src")
    names = find0(tree) + os.fsencode(tree / "vanished") + b"\0"
    res = run("-r", repo, "save", "-n", "--subset", "s", input=names, exit_code=1)
    assert "vanished" in res.stderr


def test_save_dry_run_runs_beside_a_save_and_waits_for_an_expire(tmp_path, repo):
    """The shared lock: a save's (shared) does not stop it; an expire's (exclusive) does,
    exit 5, as the candidate saves and chunk files could go away under it."""
    from backshift.lock import RepoLock

    tree = make_tree(tmp_path / "src")
    held = RepoLock(repo, exclusive=False, operation="save")  # another process's save
    held.acquire()
    try:
        run("-r", repo, "save", "-n", str(tree))
    finally:
        held.release()
    held = RepoLock(repo, exclusive=True, operation="expire")
    held.acquire()
    try:
        res = run("-r", repo, "save", "-n", str(tree), exit_code=5)
        assert "locked" in res.stderr
    finally:
        held.release()
