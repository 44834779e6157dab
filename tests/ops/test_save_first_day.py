"""A first day without traps: empty saves, series named after PATHs, a prompt Ctrl-C, dead
saves told by their lock (zombies too), a failed checkpoint after the final commit."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
import time
from pathlib import Path

import apsw
import pytest
from harness import faults

from backshift import catalog as catalog_mod
from backshift.lock import RepoLock
from backshift.ops.session import subset_for_roots
from conftest import BACKSHIFT, find0, run, run_bin


def saves_table(repo: bytes) -> list[tuple]:
    conn = apsw.Connection(os.fsdecode(os.path.join(repo, b"catalog.sqlite3")),
                           flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT id, subset, status, files FROM save ORDER BY id").fetchall()
    finally:
        conn.close()


def small_tree(root: Path, n: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}.txt").write_bytes(b"file %d\n" % i)
    return root


# -- 21.1: a save that gets nothing records nothing -----------------------------------------


def test_save_with_empty_stdin_records_nothing_and_exits_2(repo):
    proc = run_bin("-r", repo, "save", "--subset", "etc", stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines == ["backshift: error: nothing to save: no names came in (an empty list; "
                     "is the find command right?); no save was recorded"], lines
    assert saves_table(repo) == []


def test_save_of_a_path_that_does_not_exist_records_nothing_and_exits_2(repo, tmp_path):
    res = run("-r", repo, "save", "--subset", "etc", str(tmp_path / "etcc"), exit_code=2)
    assert res.stderr.strip() == (f"backshift: error: nothing to save: no PATH given exists "
                                  f"({tmp_path / 'etcc'}: No such file or directory); "
                                  "no save was recorded")
    assert saves_table(repo) == []


def test_save_of_a_path_that_exists_and_one_that_does_not_warns_and_saves(repo, tmp_path):
    src = small_tree(tmp_path / "src")
    res = run("-r", repo, "save", str(src), str(tmp_path / "typo"), exit_code=1)
    assert "typo: skipped: No such file or directory" in res.stderr
    # named after the PATHs as given: the series stays the same once the typo is there
    name = subset_for_roots([os.fsencode(src), os.fsencode(tmp_path / "typo")])
    assert [row[1:3] for row in saves_table(repo)] == [(name, "complete")]


def test_save_from_find_of_nothing_records_nothing_and_exits_2(repo, tmp_path):
    proc = subprocess.run(f"find {tmp_path}/nonexistent -print0 | {BACKSHIFT} -r "
                          f"{os.fsdecode(repo)} save --subset etc", shell=True,
                          capture_output=True)
    assert proc.returncode == 2, proc.stderr
    assert b"nothing to save: no names came in" in proc.stderr
    assert saves_table(repo) == []
    # the series' real saves stay the newest complete ones: expire keeps them
    src = small_tree(tmp_path / "etc")
    run("-r", repo, "save", "--subset", "etc", input=find0(src))
    subprocess.run(f"find {tmp_path}/nonexistent -print0 | {BACKSHIFT} -r "
                   f"{os.fsdecode(repo)} save --subset etc", shell=True, capture_output=True)
    run("-r", repo, "expire", "--keep-last", "1")
    assert [row[2:] for row in saves_table(repo)] == [("complete", 6)]


def test_save_of_names_that_all_vanished_records_nothing(repo, tmp_path):
    res = run("-r", repo, "save", "--subset", "x", input=b"%s/gone\0" % os.fsencode(tmp_path),
              exit_code=2)
    assert "nothing to save: none of the 1 names given could be saved (see above)" in res.stderr
    assert saves_table(repo) == []


def test_save_refuses_names_typed_at_a_terminal(repo):
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([BACKSHIFT, "-r", repo, "save", "--subset", "x"],
                              stdin=terminal, capture_output=True, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.decode().strip()
    assert "\n" not in line
    assert "find /home -xdev -print0 | backshift save --subset home" in line, line
    assert "give PATHs" in line, line
    assert saves_table(repo) == []


# -- 21.2: without --subset, PATHs name their series -----------------------------------------


@pytest.mark.parametrize(("roots", "name"), [
    ([b"/etc"], "etc"),
    ([b"/usr/share/doc"], "usr-share-doc"),
    ([b"/home", b"/etc"], "etc+home"),
    ([b"/"], "rootfs"),
    ([b"/srv/caf\xc3\xa9"], "srv-caf\u00e9"),
])
def test_subset_for_roots_is_readable(roots, name):
    assert subset_for_roots(roots) == name


@pytest.mark.parametrize("roots", [[b"/srv/bad\xff"], [b"/home/my files"], [b"/a+b"],
                                   [b"/" + b"x" * 100]])
def test_subset_for_roots_falls_back_to_a_hash_for_unusual_bytes(roots):
    name = subset_for_roots(roots)
    assert name.startswith("paths-") and len(name) == len("paths-") + 12
    assert name == subset_for_roots(list(roots))  # deterministic
    assert name != subset_for_roots([b"/other"])


def test_save_of_paths_without_subset_keeps_two_trees_in_two_series(repo, tmp_path,
                                                                     no_racy_margin):
    etc = small_tree(tmp_path / "etc")
    doc = small_tree(tmp_path / "usr" / "share" / "doc", 3)
    base = str(tmp_path).strip("/").replace("/", "-")
    first = json.loads(run("-r", repo, "save", "--json", str(etc)).stdout)
    json.loads(run("-r", repo, "save", "--json", str(doc)).stdout)
    again = json.loads(run("-r", repo, "save", "--json", str(etc)).stdout)
    assert [row[1] for row in saves_table(repo)] == [f"{base}-etc", f"{base}-usr-share-doc",
                                                     f"{base}-etc"]
    assert again["files_borrowed"] == 5 and first["files_read"] == 5
    # expire judges each tree on its own: the only save of the doc tree stays
    out = run("-r", repo, "expire", "--keep-last", "1").stdout
    assert [row[0] for row in saves_table(repo)] == [2, 3], out


def test_save_from_stdin_without_subset_exits_2_with_a_hint(repo, tmp_path):
    src = small_tree(tmp_path / "src")
    res = run("-r", repo, "save", input=find0(src), exit_code=2)
    assert res.stderr.strip() == (
        "backshift: error: --subset is required with names from stdin or --filelist: it "
        "names the series (e.g. find /home -xdev -print0 | backshift save --subset home)")
    (tmp_path / "list").write_bytes(find0(src))
    run("-r", repo, "save", "--filelist", str(tmp_path / "list"), exit_code=2)
    assert saves_table(repo) == []


def test_save_warns_when_the_roots_of_a_series_change(repo, tmp_path):
    a = small_tree(tmp_path / "a")
    b = small_tree(tmp_path / "b")
    run("-r", repo, "save", "--subset", "s", str(a))
    run("-r", repo, "save", "--subset", "s", str(a))  # the same roots: no warning
    res = run("-r", repo, "save", "--subset", "s", str(b), exit_code=1)
    assert (f"warning: series {os.uname().nodename}/s: the paths saved changed from {a} "
            f"to {b}; expire treats the series as one") in res.stderr, res.stderr
    assert [row[2] for row in saves_table(repo)] == ["complete"] * 3


# -- 21.3: Ctrl-C is prompt, also inside one big file ----------------------------------------


def _reading(pid: int, path: Path) -> bool:
    """Whether PID or one of its children has PATH open."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        return False
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") == str(path):
                    return True
            except OSError:
                continue
    return False


def _save_stopped_in_a_big_file(repo: bytes, src: Path, signals: list[int],
                                watch_s: float = 0.0,
                                tty: bool = False) -> tuple[int, float, bytes]:
    """(exit status, seconds from the first signal to the exit, stderr) of a save of SRC
    sent SIGNALS (0.1 s apart) WATCH_S after it began reading SRC/zz-big. TTY: stderr is
    a terminal (a pty), where the progress line is rewritten in place."""
    if tty:
        controller, terminal = pty.openpty()
        got: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(controller, got))
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--progress", "--subset", "s",
                             str(src)], stdout=subprocess.PIPE,
                            stderr=terminal if tty else subprocess.PIPE)
    if tty:
        os.close(terminal)
        reader.start()
    deadline = time.monotonic() + 60
    while not _reading(proc.pid, src / "zz-big"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(watch_s)
    sent = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.1)
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    if tty:
        reader.join(timeout=60)
        os.close(controller)
        return proc.returncode, took, b"".join(got)
    return proc.returncode, took, proc.stderr.read()


def _drain(fd: int, got: list[bytes]) -> None:
    """Read a pty's controller side until the process on the terminal side is gone."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: no process holds the terminal any more
            return
        if not data:
            return
        got.append(data)


@pytest.fixture
def big_tree(tmp_path) -> Path:
    """Small files first, then an 8 GiB sparse file (reading its holes takes many seconds)."""
    src = small_tree(tmp_path / "src", 20)
    with open(src / "zz-big", "wb") as f:
        f.truncate(8 << 30)
    return src


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_save_stops_within_a_second_inside_a_big_file(repo, big_tree, no_racy_margin,
                                                      sig, code):
    status, took, err = _save_stopped_in_a_big_file(repo, big_tree, [sig])
    assert status == code, err
    assert took < 2.0, (took, err)
    name = signal.Signals(sig).name
    assert f"backshift: {name}: stopping; committing what is saved so far".encode() in err
    assert b"Traceback" not in err
    assert [row[2] for row in saves_table(repo)] == ["interrupted"]
    # what was committed is borrowed by the next save (small files still in a reader's
    # hands when the signal came are not committed: on a loaded machine, maybe none)
    committed = int(run("-r", repo, "sql", "SELECT count(*) FROM files WHERE save_id = 1 "
                        "AND type = 'file'", "--format", "csv").stdout.splitlines()[1])
    os.unlink(big_tree / "zz-big")
    res = json.loads(run("-r", repo, "save", "--json", "--subset", "s", str(big_tree)).stdout)
    assert res["files_borrowed"] == committed, res
    assert res["files_read"] == 20 - committed, res


@pytest.mark.timeout(120)
def test_save_second_ctrl_c_is_prompt_too(repo, big_tree):
    status, took, err = _save_stopped_in_a_big_file(repo, big_tree,
                                                    [signal.SIGINT, signal.SIGINT])
    assert status == 130, err
    assert took < 2.0, (took, err)
    assert [row[2] for row in saves_table(repo)] == ["interrupted"]


@pytest.mark.timeout(120)
def test_save_progress_moves_while_a_big_file_is_read(repo, big_tree):
    status, _took, err = _save_stopped_in_a_big_file(repo, big_tree, [signal.SIGINT],
                                                     watch_s=1.5, tty=True)
    assert status == 130, err
    lines = [seg.decode() for seg in err.split(b"\r\x1b[K") if b" read, " in seg]
    read = [ln.split("(", 1)[1].split(" read", 1)[0] for ln in lines]
    assert len(set(read) - {"0 B"}) >= 3, lines


@pytest.mark.timeout(60)
def test_save_terminated_while_it_waits_for_the_lock_ends_interrupted(repo, tmp_path):
    """A SIGTERM before the save could install its handlers (here: while it waits for the
    repository lock) ends as one later does: exit 143, the save interrupted, none running."""
    src = small_tree(tmp_path / "src")
    lock = RepoLock(repo, exclusive=True, operation="expire")
    lock.acquire()
    try:
        proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--lock-wait", "30",
                                 str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    finally:
        lock.release()
    proc.wait(timeout=30)
    err = proc.stderr.read()
    assert proc.returncode == 143, err
    assert [row[2:] for row in saves_table(repo)] == [("interrupted", 0)]


# -- 19.5 and 21.4: a dead save is dead even as a zombie; check warns --------------------


@pytest.fixture
def zombie_save(repo, tmp_path):
    """(save id, pid) of a save SIGKILLed mid-way whose process is not reaped: a zombie."""
    src = small_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "s", input=find0(src))
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "s"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    proc.stdin.write(find0(src))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while len(saves_table(repo)) < 2 or not os.path.exists(
            os.path.join(repo, b"locks", b"save-2")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    while True:  # dead, not reaped
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    assert saves_table(repo)[1][2] == "running"
    yield 2, proc.pid
    proc.stdin.close()
    proc.wait()


def test_check_reports_a_dead_running_save_as_a_warning(repo, zombie_save):
    sid, pid = zombie_save
    res = run("-r", repo, "check", exit_code=1)
    assert (f"warning: save: save {sid} ({os.uname().nodename}/s) is 'running' but its "
            f"process {pid} is gone: not damage, it keeps what it committed; the next save "
            "or expire on this host marks it interrupted (check --repair does it now)"
            ) in res.stdout, res.stdout
    assert res.stdout.splitlines()[-1] == "no damage found; 1 warning(s) above"
    listed = run("-r", repo, "saves", "--format", "csv").stdout.splitlines()[1:]
    assert [ln.split(",")[5] for ln in listed] == ["complete", "interrupted"], listed
    run("-r", repo, "check", "--repair", exit_code=0)
    assert saves_table(repo)[1][2] == "interrupted"
    run("-r", repo, "check", exit_code=0)


def test_save_marks_a_zombie_save_interrupted(repo, tmp_path, zombie_save):
    sid, _pid = zombie_save
    run("-r", repo, "save", "--subset", "other", str(small_tree(tmp_path / "o")))
    assert saves_table(repo)[sid - 1][2] == "interrupted"
    assert not os.path.exists(os.path.join(repo, b"locks", b"save-%d" % sid))


def test_expire_does_not_keep_a_dead_running_save(repo, zombie_save):
    sid, _pid = zombie_save
    # --lock-wait: under load the killed save's lock can take a moment to be let go of
    out = run("-r", repo, "expire", "--lock-wait", "30", "--save", str(sid)).stdout
    assert out.split()[:3] == ["remove", "save", str(sid)], out
    assert "interrupted: named with --backup" in out, out
    assert [row[0] for row in saves_table(repo)] == [1]


def test_a_live_save_is_running_and_its_lock_goes_with_it(repo, tmp_path):
    src = small_tree(tmp_path / "src")
    proc = subprocess.Popen([BACKSHIFT, "-r", repo, "save", "--subset", "s"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    proc.stdin.write(find0(src))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(repo, b"locks", b"save-1")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert run("-r", repo, "check").stdout.splitlines()[-1] == "no problems found"
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert saves_table(repo)[0][2] == "complete"
    assert not os.path.exists(os.path.join(repo, b"locks", b"save-1"))


# -- 19.6: a failed checkpoint after the final commit is a warning ---------------------------


def _fail_checkpoints(monkeypatch, fault: faults.Fault) -> list:
    """Make every catalog checkpoint fail with ENOSPC (FAULT's VFS counts from then on)."""
    real = catalog_mod.Catalog.checkpoint
    fired = []

    def checkpoint(self):
        fault.after_calls = fault.calls
        try:
            return real(self)
        finally:
            fired.append(fault.raised)
            fault.after_calls = None
    monkeypatch.setattr(catalog_mod.Catalog, "checkpoint", checkpoint)
    return fired


def test_save_whose_checkpoint_fails_after_the_final_commit_is_complete_with_a_warning(
        repo, tmp_path, monkeypatch):
    src = small_tree(tmp_path / "src")
    fault = faults.Fault(faults.ENOSPC)
    with faults.FaultVFS(fault):
        fired = _fail_checkpoints(monkeypatch, fault)
        res = run("-r", repo, "save", "--json", "--subset", "s", str(src), exit_code=1)
    assert fired and fired[0] >= 1, fired
    assert json.loads(res.stdout)["status"] == "complete"
    assert ("save 1 is complete and restorable; only folding the catalog's write-ahead log "
            "into the catalog file failed (injected: No space left on device)") in res.stderr
    assert [row[2] for row in saves_table(repo)] == ["complete"]
    listed = run("-r", repo, "list", "--backup", "1").stdout
    assert "f0.txt" in listed


def test_expire_whose_checkpoint_fails_is_done_with_a_warning(repo, tmp_path, monkeypatch):
    src = small_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "s", str(src))
    run("-r", repo, "save", "--subset", "s", str(src))
    fault = faults.Fault(faults.ENOSPC)
    with faults.FaultVFS(fault):
        _fail_checkpoints(monkeypatch, fault)
        res = run("-r", repo, "expire", "--keep-last", "1", exit_code=1)
    assert "warning: expire is done and committed; only folding the catalog's write-ahead " \
           "log into the catalog file failed (injected: No space left on device)" in res.stderr
    assert [row[0] for row in saves_table(repo)] == [2]


class _SilentlyFullFile(faults._FaultFile):
    def _hit(self, call: str, nbytes: int = 0) -> None:
        if call in self.vfs.calls:
            raise apsw.FullError("not an error")


class SilentlyFullVFS(faults.FaultVFS):
    """Every write fails as SQLite reported a full disk while copying the catalog to a full
    tmpfs: SQLITE_FULL with the message 'not an error', and no errno."""

    def xOpen(self, name, flags):  # noqa: N802 - apsw's method name
        return _SilentlyFullFile(self, name, flags)


def test_catalog_copy_failure_names_the_cause(repo, tmp_path, monkeypatch):
    src = small_tree(tmp_path / "src")
    real_backup = catalog_mod.Catalog.backup_to

    def backup_to_a_full_disk(self, dest):
        with SilentlyFullVFS(faults.Fault(faults.ENOSPC)):
            return real_backup(self, dest)
    monkeypatch.setattr(catalog_mod.Catalog, "backup_to", backup_to_a_full_disk)
    res = run("-r", repo, "save", "--subset", "s", str(src), exit_code=1)
    line = [ln for ln in res.stderr.splitlines() if "catalog copy" in ln]
    assert len(line) == 1, res.stderr
    assert line[0].startswith("warning: could not write a catalog copy: ")
    assert line[0].endswith(".sqlite3.tmp: No space left on device (the work itself is "
                            "committed)"), line
    assert not os.listdir(os.path.join(repo, b"catalog-copies"))
    assert [row[2] for row in saves_table(repo)] == ["complete"]
