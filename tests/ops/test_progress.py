"""Progress everywhere (issue 19 item 15): save, tar -o FILE, check --read-data, expire and
import-legacy show progress on stderr: one line rewritten with \\r on a terminal (a real
pty), plain lines with -v or --progress off one, nothing with -q or by default off a
terminal, and never anything on stdout."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from test_import_legacy import legacy_bin, legacy_save  # noqa: F401 - a fixture

from backshift import walk
from backshift.cli import progress as progress_mod
from backshift.cli.progress import Progress
from backshift.ops import save as save_mod
from backshift.ops.save import SaveOptions
from backshift.repo import WRITE, open_repository
from conftest import BACKSHIFT, find0, run_bin

ERASE = b"\r\x1b[K"
# (argv after -r REPO, a pattern of how its progress line starts)
COMMANDS = [
    (["tar", "--backup", "1", "-o", "{tmp}/out.tar"], rb"tar: "),
    (["check", "--read-data"], rb"check --read-data: "),
    (["expire", "--keep-last", "1"], rb"expire: "),
    (["save", "--subset", "s", "{tmp}/src"], rb"\d+ files?, \d"),
]


def _shown(start: bytes, text: bytes, erased: bool = False) -> bool:
    """Whether TEXT holds a progress line (START), at the start of a line or after an
    erase (ERASED)."""
    return re.search((re.escape(ERASE) if erased else rb"(?m)^") + start, text) is not None


def _repo_with_two_saves(repo: bytes, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a" * 100_000)
    for _ in range(2):
        proc = run_bin("-r", repo, "save", "--subset", "s", input=find0(src))
        assert proc.returncode == 0, proc.stderr


def _argv(args: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in args]


def _on_screen(tty: bytes) -> list[bytes]:
    """The lines a terminal shows for TTY: each line as its last erase left it."""
    return [raw.rstrip(b"\r").rsplit(ERASE, 1)[-1] for raw in tty.split(b"\n")]


def _on_a_terminal(argv: list) -> tuple[int, bytes, bytes]:
    """Run ARGV with stderr on a pty; (exit status, what the terminal got, stdout)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=terminal)
    os.close(terminal)
    got = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 120)
        assert ready, "no output from the terminal for 120 s"
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not data:
            break
        got += data
    os.close(controller)
    out = proc.stdout.read()
    return proc.wait(timeout=120), got, out


@pytest.mark.parametrize(("args", "start"), COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_progress_on_a_terminal_is_one_line_rewritten(repo, tmp_path, args, start):
    _repo_with_two_saves(repo, tmp_path)
    code, tty, out = _on_a_terminal([BACKSHIFT, "-r", repo, *_argv(args, tmp_path)])
    assert code == 0, tty
    assert _shown(start, tty, erased=True), tty
    assert not _shown(start, out) and b"\r" not in out
    # rewritten in place and taken away at the end: what stays on screen has none of it
    assert not _shown(start, b"\n".join(_on_screen(tty))), tty


@pytest.mark.parametrize(("args", "start"), COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_progress_off_a_terminal_with_v_is_plain_lines_and_none_without(repo, tmp_path,
                                                                         args, start):
    _repo_with_two_saves(repo, tmp_path)
    argv = _argv(args, tmp_path)
    quiet = run_bin("-r", repo, *argv)
    assert quiet.returncode == 0, quiet.stderr
    assert not _shown(start, quiet.stderr) and b"\r" not in quiet.stderr
    if args[0] == "tar":
        os.unlink(tmp_path / "out.tar")
    shown = run_bin("-v", "-r", repo, *argv)
    assert shown.returncode == 0, shown.stderr
    assert _shown(start, shown.stderr), shown.stderr
    assert b"\r" not in shown.stderr and not _shown(start, shown.stdout)


@pytest.mark.parametrize(("args", "start"), COMMANDS[:3], ids=[c[0][0] for c in COMMANDS[:3]])
def test_progress_with_q_is_nothing_even_on_a_terminal(repo, tmp_path, args, start):
    _repo_with_two_saves(repo, tmp_path)
    code, tty, _out = _on_a_terminal([BACKSHIFT, "-q", "-r", repo, *_argv(args, tmp_path)])
    assert code == 0, tty
    assert not _shown(start, tty) and ERASE not in tty, tty


def test_progress_flag_shows_it_off_a_terminal(repo, tmp_path):
    _repo_with_two_saves(repo, tmp_path)
    proc = run_bin("-r", repo, "check", "--read-data", "--progress")
    assert proc.returncode == 0, proc.stderr
    assert b"\ncheck --read-data: " in b"\n" + proc.stderr, proc.stderr


def test_progress_tar_to_stdout_shows_none_unless_asked(repo, tmp_path):
    _repo_with_two_saves(repo, tmp_path)
    code, tty, out = _on_a_terminal([BACKSHIFT, "-r", repo, "tar", "--backup", "1"])
    assert code == 0 and len(out) > 100_000, tty
    assert b"tar: " not in tty and ERASE not in tty
    code, tty, out = _on_a_terminal([BACKSHIFT, "-r", repo, "tar", "--backup", "1",
                                     "--progress"])
    assert code == 0 and ERASE + b"tar: " in tty and b"tar: " not in out


def test_progress_import_legacy_on_a_terminal_and_off_one(legacy_bin, repo, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"legacy\n" * 1000)
    legacy_save(legacy_bin, tmp_path / "savedir", find0(src))
    code, tty, out = _on_a_terminal([BACKSHIFT, "-r", repo, "import-legacy",
                                     str(tmp_path / "savedir")])
    assert code == 0, tty
    assert ERASE + b"legacy save 1/1, " in tty and b"legacy save" not in out
    repo2 = os.fsencode(tmp_path / "repo2")
    assert run_bin("-r", repo2, "init").returncode == 0
    proc = run_bin("-v", "-r", repo2, "import-legacy", str(tmp_path / "savedir"))
    assert proc.returncode == 0, proc.stderr
    assert b"\nlegacy save 1/1, " in b"\n" + proc.stderr and b"\r" not in proc.stderr


def test_progress_off_a_terminal_writes_a_line_at_most_every_interval_and_the_last(
        monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = Progress(out, tty=False)
    for i in range(5):
        p.update(f"step {i}")
        clock[0] += progress_mod.LINES_EVERY_S / 2
    p.update(lambda: "made only when written")
    p.finish()
    assert out.getvalue().splitlines() == ["step 0", "step 2", "step 4",
                                           "made only when written"]


def test_progress_on_a_terminal_rewrites_and_clears_its_line(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = Progress(out, tty=True)
    p.update("one")
    p.update("skipped: too soon")
    clock[0] += progress_mod.TTY_EVERY_S
    p.update("two")
    p.clear()
    p.finish()
    assert out.getvalue() == "\r\x1b[Kone\r\x1b[Ktwo\r\x1b[K"


def test_progress_first_save_of_paths_counts_ahead_for_its_eta(repo, tmp_path):
    """No earlier save gives a total: a walk ahead in a helper thread counts the names,
    and the progress line gets it (the estimate behind its percent and ETA)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i:02d}").write_bytes(b"file %d\n" % i)
    estimates: list[int | None] = []

    def progress(_stats, estimate):
        deadline = time.monotonic() + 60  # the first report waits for the count
        while saver.scanned is None and time.monotonic() < deadline:
            time.sleep(0.01)
        estimates.append(estimate)

    warnings: list[str] = []
    root = os.fsencode(src)
    with open_repository(repo, WRITE) as r:
        saver = save_mod.Saver(r, SaveOptions("h", "s", roots=[root]), warnings.append,
                               progress)
        stats = saver.run(walk.walk([root], b"/", warnings.append))
    assert stats.files == 51 and not warnings
    assert saver.scanned == 51 and estimates[-1] == 51, estimates


def test_progress_off_no_walk_ahead(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    root = os.fsencode(src)
    with open_repository(repo, WRITE) as r:
        saver = save_mod.Saver(r, SaveOptions("h", "s", roots=[root]), print)
        saver.run(walk.walk([root], b"/", print))
    assert saver.scanned is None
