"""import-legacy end to end: real save directories made by the original backshift 1.62
(installed by `make .venv-legacy`), imported, restored with `backshift tar | tar -xpf -`
(GNU tar, every stream linted) and compared with the source tree."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from harness.faults import PEAK_RSS_MAX, run_capped
from restorehelp import compare_trees, enrich_tree, extract, walk_all
from tarlint import lint_tar

from backshift import legacy as lg
from backshift import pathcodec
from backshift.repo import READ, open_repository
from conftest import BACKSHIFT, find0, make_tree, run, run_bin

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ROOT / ".venv-legacy" / "bin" / "backshift"
IS_ROOT = os.geteuid() == 0

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def legacy_bin() -> str:
    if not LEGACY.exists():
        pytest.fail(f"the original backshift is not installed at {LEGACY}: run `make "
                    ".venv-legacy` (make test does it)", pytrace=False)
    return str(LEGACY)


def legacy_save(legacy_bin: str, savedir: Path, names: bytes, subset: str = "small",
                hostname: str = "vm") -> None:
    args = [legacy_bin, "--save-directory", str(savedir), "--backup", "--subset", subset,
            "--hostname", hostname, "--progress-report", "none"]
    if not savedir.exists():
        args.append("--init-savedir")
    proc = subprocess.run(args, input=names, capture_output=True, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def legacy_ids(savedir: Path) -> list[str]:
    return sorted((p.name for p in (savedir / "summaries").iterdir()),
                  key=lambda n: float(n.split("_")[0]))


def source_tree(tmp_path: Path) -> Path:
    """make_tree + enrich_tree (a hardlink group of three, odd owners, a char device as
    root, directory mtimes with nanoseconds and before 1970) + an owner without names."""
    root = make_tree(tmp_path / "src")
    if IS_ROOT:
        os.chown(root / "sub" / "deeper" / "setuid", 12345, 54321)
    return enrich_tree(root)


def saves(repo: bytes) -> list[dict]:
    out = run("-r", repo, "saves", "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def catalog_files(repo: bytes, save_id: int) -> dict[bytes, dict]:
    """path -> what the catalog keeps that a restore cannot show (dev, ino, nlink, size)."""
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute(
            "SELECT p.key, v.dev, v.ino, v.nlink, v.size, v.content_id "
            "FROM member m JOIN path p ON p.id = m.path_id "
            "JOIN version v ON v.id = m.version_id WHERE m.save_id = ?", (save_id,))
        return {pathcodec.from_key(key): dict(zip(("dev", "ino", "nlink", "size", "content"),
                                                  cols, strict=True))
                for key, *cols in rows.fetchall()}


def restore(repo: bytes, save_id: int, dest: Path,
            exit_code: int = 0) -> list[tarfile.TarInfo]:
    """`backshift -r REPO tar --backup ID | tar -xpf - -C DEST`: the installed command's
    stream, linted, extracted by GNU tar. The stream's members. EXIT_CODE 1: the save is
    not complete (tar says so and exits 1)."""
    proc = run_bin("-r", repo, "tar", "--backup", str(save_id))
    assert proc.returncode == exit_code, proc.stderr.decode(errors="replace")
    infos = lint_tar(proc.stdout)
    extract("gnu", proc.stdout, dest)
    return infos


def relative_names(infos: list[tarfile.TarInfo], root: Path) -> list[bytes]:
    """The stream's member names as paths relative to ROOT (ROOT itself is b'')."""
    top = os.fsencode(root).lstrip(b"/")  # GNU tar strips the leading '/'
    out = []
    for ti in infos:
        name = ti.name.encode("utf-8", "surrogateescape").rstrip(b"/")
        assert name == top or name.startswith(top + b"/"), name
        out.append(name[len(top) + 1:])
    return out


def user_of(uid: int) -> bytes:
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return b""


def group_of(gid: int) -> bytes:
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except KeyError:
        return b""


def assert_restores(repo: bytes, save_id: int, root: Path, tmp_path: Path, *,
                    partial: bool = False, skipped: Iterable[bytes] = (),
                    exit_code: int = 0) -> list[bytes]:
    """Restore save ID with the real commands and compare the result with ROOT: bytes, modes,
    uid/gid and owner names, mtimes of files and directories (exactly as the original
    stored them: legacy_time_ns), symlink targets, hardlink groups, FIFOs, devices.
    PARTIAL: the save holds part of ROOT (each entry it holds must match); SKIPPED: paths
    relative to ROOT the save must not hold. The restored names, relative to ROOT."""
    dest = Path(tempfile.mkdtemp(prefix=f"restore-{save_id}-", dir=tmp_path))
    infos = restore(repo, save_id, dest, exit_code)
    names = relative_names(infos, root)
    if not partial:
        assert sorted(names) == sorted(set(walk_all(os.fsencode(root))) - set(skipped))
    for ti, rel in zip(infos, names, strict=True):
        st = os.lstat(os.path.join(os.fsencode(root), rel))
        where = f"{rel!r}"
        assert ti.uname.encode("utf-8", "surrogateescape") == user_of(st.st_uid), where
        assert ti.gname.encode("utf-8", "surrogateescape") == group_of(st.st_gid), where
    restored = dest / os.fsdecode(root).lstrip("/")
    only = names if partial or skipped else None
    compare_trees(root, restored, mtime_of=lg.legacy_time_ns, only=only)
    return names


def test_import_legacy_save_matches_source_tree(legacy_bin, repo, tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    res = run("-r", repo, "import-legacy", str(sd))
    lid = legacy_ids(sd)[0]
    assert f"imported {lid} as save 1" in res.stdout
    [s] = saves(repo)
    assert (s["hostname"], s["subset"], s["status"]) == ("vm", "small", "complete")
    summary = lg.parse_summary((sd / "summaries" / lid).read_bytes())
    assert s["files"] == len(walk_all(os.fsencode(root)))
    with open_repository(repo, READ) as r:
        row = r.catalog.conn.execute(
            "SELECT legacy_id, started_ns, finished_ns FROM save").fetchone()
    assert row == (lid, summary.start_ns, summary.finish_ns)
    assert_restores(repo, 1, root, tmp_path)
    # what no restore shows: the (dev, ino, nlink) later saves borrow by
    for path, f in catalog_files(repo, 1).items():
        st = os.lstat(path)
        if f["content"] is not None:
            assert (f["ino"], f["nlink"], f["size"]) == (st.st_ino, st.st_nlink, st.st_size)


def test_import_legacy_links_by_default_and_copies_when_asked(legacy_bin, tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    legacy_chunks = {p.stat().st_ino for p in (sd / "chunks").rglob("*") if p.is_file()}
    for method, shared in ((None, True), ("--copy", False)):
        repo = os.fsencode(tmp_path / f"repo-{method}")
        run("-r", repo, "init")
        run("-r", repo, "import-legacy", str(sd), *([method] if method else []))
        ours = {p.stat().st_ino for p in Path(os.fsdecode(repo), "chunks").rglob("*")
                if p.is_file()}
        assert len(ours) == len(legacy_chunks)
        assert (ours == legacy_chunks) is shared
        assert not [p for p in Path(os.fsdecode(repo), "chunks").rglob("*.tmp.*")]
        assert_restores(repo, 1, root, tmp_path)


def test_import_legacy_twice_adds_nothing_and_later_saves_are_added(legacy_bin, repo,
                                                                      tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    run("-r", repo, "import-legacy", str(sd))
    before = (Path(os.fsdecode(repo)) / "catalog.sqlite3").stat().st_size
    res = run("-r", repo, "import-legacy", str(sd))
    assert "0 saves imported, 1 already imported" in res.stdout
    assert len(saves(repo)) == 1
    (root / "new.txt").write_bytes(b"new file\n")
    legacy_save(legacy_bin, sd, find0(root))
    res = run("-r", repo, "import-legacy", str(sd))
    assert "1 saves imported, 1 already imported" in res.stdout
    assert [s["status"] for s in saves(repo)] == ["complete", "complete"]
    assert_restores(repo, 2, root, tmp_path)
    assert (Path(os.fsdecode(repo)) / "catalog.sqlite3").stat().st_size >= before


def test_import_legacy_interrupted_legacy_save(legacy_bin, repo, tmp_path):
    """SIGKILL the original mid-save (stdin paused): its summary says None and only DBs
    evicted from its 50-entry LRU were written; the import keeps exactly those."""
    root = tmp_path / "many"
    for i in range(70):
        d = root / f"d{i:02d}"
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"file %d\n" % i)
    names = [n for n in find0(root).split(b"\0") if n]
    sd = tmp_path / "savedir"
    proc = subprocess.Popen([legacy_bin, "--save-directory", str(sd), "--init-savedir",
                             "--backup", "--subset", "small", "--hostname", "vm",
                             "--progress-report", "none"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.stdin.write(b"\0".join(names) + b"\0")  # all names, but stdin stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = [p for p in (sd / "files").rglob("entries") if p.stat().st_size > 0] \
            if (sd / "files").exists() else []
        if len(written) >= 10:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert b"None" in (sd / "summaries" / legacy_ids(sd)[0]).read_bytes()
    res = run("-r", repo, "import-legacy", str(sd))
    assert "1 saves imported" in res.stdout
    [s] = saves(repo)
    assert s["status"] == "interrupted" and s["finished"] is None
    held = assert_restores(repo, 1, root, tmp_path, partial=True, exit_code=1)
    assert 10 <= len(held) < len(names)
    assert len([n for n in held if n.endswith(b"/f")]) >= 10


def test_import_legacy_crash_after_first_save_commit_is_finished_by_rerun(legacy_bin, repo,
                                                                          tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    (root / "second.txt").write_bytes(b"two\n")
    legacy_save(legacy_bin, sd, find0(root))
    env = dict(os.environ, BACKSHIFT_CRASH_AT="import_after_save_commit")
    proc = subprocess.run([BACKSHIFT, "-r", repo, "import-legacy", str(sd)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(saves(repo)) == 1
    res = run("-r", repo, "import-legacy", str(sd))
    assert "1 saves imported, 1 already imported" in res.stdout
    first, second = legacy_ids(sd)
    with open_repository(repo, READ) as r:
        rows = r.catalog.conn.execute("SELECT id, legacy_id FROM save ORDER BY id").fetchall()
        assert r.catalog.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert rows == [(1, first), (2, second)]
    assert_restores(repo, 2, root, tmp_path)


@pytest.mark.parametrize("point", ["after_chunk_rename", "after_catalog_commit:1",
                                   "before_catalog_commit:2"])
def test_import_legacy_killed_anywhere_leaves_nothing_half_done(legacy_bin, repo, tmp_path,
                                                                 point):
    """Killed after chunks are placed, after the contents commit, or before the save's
    commit: no save is visible, and the rerun imports it whole."""
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    env = dict(os.environ, BACKSHIFT_CRASH_AT=point)
    proc = subprocess.run([BACKSHIFT, "-r", repo, "import-legacy", str(sd)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert saves(repo) == []
    res = run("-r", repo, "import-legacy", str(sd))
    assert "1 saves imported, 0 already imported" in res.stdout
    assert_restores(repo, 1, root, tmp_path)


def test_import_legacy_missing_and_damaged_chunks_are_reported_and_files_skipped(
        legacy_bin, repo, tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    chunk_of = {}
    for name in ("random.bin", "text.txt"):
        data = (root / name).read_bytes()
        h = hashlib.sha256(data).hexdigest()  # each is a single legacy chunk (< 512 KiB)
        chunk_of[name] = (h, sd / "chunks" / h[:5] / h[5:11] / h[11:])
    chunk_of["random.bin"][1].unlink()
    damaged = chunk_of["text.txt"][1]
    body = bytearray(damaged.read_bytes())
    body[len(body) // 2] ^= 0xFF
    damaged.write_bytes(bytes(body))
    res = run("-r", repo, "import-legacy", str(sd), exit_code=1)
    for name, (h, _p) in chunk_of.items():
        line = next(ln for ln in res.stderr.splitlines() if h in ln)
        assert os.fsdecode(os.fsencode(root / name)) in line
    assert "is missing" in res.stderr and "is damaged" in res.stderr
    held = assert_restores(repo, 1, root, tmp_path, skipped=[b"random.bin", b"text.txt"])
    assert b"a.txt" in held
    [s] = saves(repo)
    assert s["warnings"] == 2 and s["status"] == "complete"


HUGE = 4 << 30  # a sparse file: no disk, but reading it whole would need 4 GiB of memory


def test_import_legacy_huge_chunk_and_db_files_are_damage_not_memory(legacy_bin, repo,
                                                                      tmp_path):
    """A legacy chunk file far longer than any body of its chunk, and a per-directory DB
    far longer than any DB: warned about and skipped without being read (the child's address
    space is capped: reading either whole would be a MemoryError)."""
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    h = hashlib.sha256((root / "text.txt").read_bytes()).hexdigest()  # one legacy chunk
    os.truncate(sd / "chunks" / h[:5] / h[5:11] / h[11:], HUGE)
    [deeper] = (sd / "files").glob("*/**/dir-sub/dir-deeper")
    os.truncate(deeper / "entries", HUGE)
    res = run_capped([BACKSHIFT, "-r", repo, "import-legacy", str(sd)])
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, err
    assert "Traceback" not in err and "MemoryError" not in err
    [line] = [ln for ln in err.splitlines() if h in ln]
    assert os.fsdecode(os.fsencode(root / "text.txt")) in line
    assert f"chunk file is {HUGE} bytes, longer than any body of a " in line, line
    [line] = [ln for ln in err.splitlines() if "dir-deeper/entries" in ln]
    assert f"file is {HUGE} bytes, longer than any database" in line, line
    assert res.peak_rss < PEAK_RSS_MAX
    assert_restores(repo, 1, root, tmp_path,
                    skipped=[b"text.txt", b"sub/deeper/big", b"sub/deeper/setuid"])


def test_read_legacy_chunk_refuses_an_impossible_length_without_reading(tmp_path):
    """A save's file list that gives a chunk 4 GiB (hostile or damaged) with a chunk file that
    long: refused by the length alone (no chunk is longer than MAX_CHUNK_LENGTH), where the
    body bound of such a length would have let the whole file be read (capped child)."""
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"")
    os.truncate(chunk, HUGE)
    code = ("from backshift.ops.legacydir import read_legacy_chunk\n"
            f"body, why = read_legacy_chunk({os.fsencode(chunk)!r}, {HUGE})\n"
            "print(len(body), why)")
    res = run_capped([sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stdout.decode().strip() == \
        f"0 is damaged (its save gives it {HUGE} bytes, more than any chunk holds)"
    assert res.peak_rss < PEAK_RSS_MAX


def test_import_legacy_huge_summary_skips_its_save_without_reading_it(legacy_bin, repo,
                                                                      tmp_path):
    root = make_tree(tmp_path / "src")
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    [lid] = legacy_ids(sd)
    os.truncate(sd / "summaries" / lid, HUGE)
    res = run_capped([BACKSHIFT, "-r", repo, "import-legacy", str(sd)])
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, err
    [line] = err.splitlines()
    assert line == (f"warning: legacy save {lid}: skipped: summary: file is {HUGE} bytes, "
                    "longer than any summary"), line
    assert res.peak_rss < PEAK_RSS_MAX
    assert saves(repo) == []


def test_import_legacy_then_save_reads_nothing_of_an_unchanged_tree(legacy_bin, repo,
                                                                    tmp_path, no_racy_margin):
    root = source_tree(tmp_path)
    os.utime(root / "random.bin", ns=(1, 1_700_000_000_987_654_321))  # ns not in a float
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    run("-r", repo, "import-legacy", str(sd))
    res = run("-r", repo, "save", "--hostname", "vm", "--subset", "small", "--json",
              input=find0(root))
    summary = json.loads(res.stdout)
    assert summary["files_read"] == 0 and summary["bytes_read"] == 0
    assert summary["files_borrowed"] > 0 and summary["new_chunks"] == 0
    (root / "a.txt").write_bytes(b"changed\n")
    res = run("-r", repo, "save", "--hostname", "vm", "--subset", "small", "--json",
              input=find0(root))
    assert json.loads(res.stdout)["files_read"] == 1  # a.txt (its hardlink shares it)


def test_import_legacy_then_real_save_borrows_from_a_tree_older_than_the_margin(
        legacy_bin, repo, tmp_path):
    root = source_tree(tmp_path)
    time.sleep(2.1)  # ctimes before the legacy save's start minus the racy margin
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    run("-r", repo, "import-legacy", str(sd))
    proc = subprocess.run([BACKSHIFT, "-r", repo, "save", "--hostname", "vm", "--subset",
                           "small", "--json"], input=find0(root), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files_read"] == 0 and summary["files_borrowed"] > 0


def test_import_legacy_save_without_metadata_is_skipped_with_a_warning(legacy_bin, repo,
                                                                       tmp_path):
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    shutil.rmtree(sd / "files" / legacy_ids(sd)[0])
    res = run("-r", repo, "import-legacy", str(sd), exit_code=1)
    assert "metadata is gone" in res.stderr
    assert saves(repo) == []


def test_import_legacy_refuses_a_directory_that_is_not_a_savedir(repo, tmp_path):
    res = run("-r", repo, "import-legacy", str(tmp_path), exit_code=25)
    assert "not a backshift 1.x save directory" in res.stderr


def _exclusive_holder(repo: bytes) -> subprocess.Popen:
    """Another process holding the repository lock exclusively (as expire does) until a
    line arrives on its stdin."""
    code = ("import sys\n"
            "from backshift.lock import RepoLock\n"
            "lock = RepoLock(sys.argv[1].encode(), True, 'expire')\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n"
            "sys.stdin.readline()\n"
            "lock.release()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, os.fsdecode(repo)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    return holder


def test_import_legacy_lock_wait_waits_for_an_exclusive_holder(legacy_bin, repo, tmp_path):
    root = make_tree(tmp_path / "src")
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    holder = _exclusive_holder(repo)
    try:
        refused = run("-r", repo, "import-legacy", str(sd), exit_code=5)
        [line] = refused.stderr.splitlines()
        assert line.startswith("backshift: error: repository ") and "is locked" in line
        assert "(expire, since" in line
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
        waiting = subprocess.Popen([BACKSHIFT, "-r", repo, "import-legacy", str(sd),
                                    "--lock-wait", "60"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env)
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting for the holder
        assert saves(repo) == []
    finally:
        holder.communicate(b"\n", timeout=60)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert b"1 saves imported" in out and err == b""
    assert_restores(repo, 1, root, tmp_path)


def test_import_legacy_progress_line_when_asked(legacy_bin, repo, tmp_path):
    """--progress shows the progress on stderr, off a terminal as plain lines, one at
    least for each phase of each save (a terminal shows it by default, rewritten in
    place); without a terminal nothing but warnings goes to stderr."""
    root = make_tree(tmp_path / "src")
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    legacy_save(legacy_bin, sd, find0(root))
    quiet = run("-r", repo, "import-legacy", str(sd))
    assert quiet.stderr == "" and "2 saves imported" in quiet.stdout
    other = os.fsencode(tmp_path / "other")
    run("-r", other, "init")
    shown = run("-r", other, "import-legacy", "--progress", str(sd))
    assert "\r" not in shown.stderr
    lines = shown.stderr.splitlines()
    for n in (1, 2):
        assert any(line.startswith(f"legacy save {n}/2, checking chunks: ") for line in lines)
        assert any(line.startswith(f"legacy save {n}/2, recording: ") for line in lines)
    assert "2 saves imported" in shown.stdout


def test_import_legacy_versions_have_no_xattrs_and_the_next_save_reads_them(
        legacy_bin, repo, tmp_path, no_racy_margin):
    root = source_tree(tmp_path)
    subprocess.run(["setfattr", "-n", "user.comment", "-v", "kept", str(root / "a.txt")],
                   check=True)
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    run("-r", repo, "import-legacy", str(sd))
    count = "SELECT count(*) FROM xattrs"
    assert run("-r", repo, "sql", count, "--format", "csv").stdout.splitlines()[1] == "0"
    res = run("-r", repo, "save", "--hostname", "vm", "--subset", "small", "--json",
              input=find0(root))
    assert json.loads(res.stdout)["files_read"] == 0  # contents borrowed, attributes read
    rows = run("-r", repo, "sql", "SELECT path, value FROM xattrs WHERE save_id = 2",
               "--format", "csv").stdout.splitlines()
    assert rows[1:] == [f"{root / 'a.txt'},kept", f"{root / 'sub' / 'hardlink'},kept"]


def test_import_legacy_json_summary(legacy_bin, repo, tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    (root / "f").write_bytes(b"legacy content\n")
    sd = tmp_path / "savedir"
    legacy_save(legacy_bin, sd, find0(root))
    out = json.loads(run("-r", repo, "import-legacy", str(sd), "--json").stdout)
    assert out["imported"] == [{"legacy": legacy_ids(sd)[0], "save_id": 1}]
    assert (out["saves_imported"], out["files"], out["chunks_bad"]) == (1, 2, 0)
    again = json.loads(run("-r", repo, "import-legacy", str(sd), "--json").stdout)
    assert (again["saves_imported"], again["saves_skipped"]) == (0, 1)
