"""The README's examples that users paste first run as written (issue 21 item 14).

The commands are read from README.md at test time, so a README edit that no longer runs fails
here. What the test changes, and nothing else: the README's example paths become temp paths by
PATH_MAP (whole path prefixes only: `/home/alice` becomes `<tmp>/src/home/alice`), and the
venv's `backshift` comes first on PATH. Each command runs as its own `bash -euo pipefail -c`
process with real find and GNU tar; the `export` lines of a block before it are run in front of
it, as the user's shell would keep them.

Every fenced block that holds commands is either run here (RUN) or listed in SKIPPED_BY_DESIGN
with the reason it cannot run in a test; a new or changed command block fails
test_readme_every_command_block_is_run_or_skipped_by_design until it is put in one of them.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent

# README path -> path under the test's tmp directory.
PATH_MAP = {
    "/backup/repo": "repo",
    "REPO": "repo",  # the placeholder of the later sections' recipes
    "/home": "src/home",
    "/etc": "src/etc",
    "/restore": "restore",
}
_PATH_RE = re.compile(r"(?<![\w./-])(/backup/repo|/home|/etc|/restore|REPO)(?![\w.-])")

# The first word of a line that makes a fenced block a command block (output transcripts start
# with `$`, layouts with REPO/, tables with a word that is no command).
COMMAND_WORDS = {"backshift", "find", "make", "export", "eval", "mkdir", "tar", "ls", "diff",
                 "fusermount3", "cp", "mv"}

# Blocks run by the tests below: (section heading, first line of the block).
TOUR = ("30-second tour", "export BACKSHIFT_REPO=/backup/repo")
COMPLETION = ("30-second tour", 'eval "$(_BACKSHIFT_COMPLETE=bash_source backshift)"')
RUN = {TOUR, COMPLETION}

# Blocks that cannot run in a test, each with its reason. Reviewed, not silent: a block not
# here and not in RUN fails the inventory test.
SKIPPED_BY_DESIGN = {
    ("Chunks in an object store",
     "export AWS_ENDPOINT_URL=https://s3.example.com AWS_REGION=us-east-1"):
        "needs an S3 endpoint and its credentials; tests/ops/test_objstore_repo.py runs the same "
        "init --chunks, save, tar and init --recover against a real SeaweedFS",
    ("backshift", "make demo"):
        "make demo is run on its own (it builds the venv); make test is this suite",
    ("Browsing and restoring", "backshift -r /backup/repo list --backup latest"):
        "names save 12 and host web1 of a larger repository; the tour runs the same list/tar "
        "forms on its own saves",
    ("Mounting: browse saves as a filesystem", "backshift -r /backup/repo mount /mnt/backup"):
        "needs FUSE (/dev/fuse, fusermount3) and runs until unmounted; tests/ops/test_mount.py "
        "mounts for real",
    ("Asking questions of your backups", "backshift -r REPO stats"):
        "names saves 6 and 7 and writes an optional argument as [/home/alice]",
    ("expire: retention with exact garbage collection",
     "backshift -r REPO expire --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run"):
        "names saves 42 and 43 of a larger repository; the tour runs expire",
    ("check", "backshift -r REPO check"):
        "--read-data --repair is for a damaged repository; the catalog recipe test runs "
        "check --read-data",
    ("Moving from backshift 1.x", "backshift -r /backup/repo init"):
        "needs a backshift 1.x save directory; tests/ops/test_import_legacy.py imports real ones",
    ("Speed", "make bench-peers"):
        "installs borg and restic and runs for ~25 minutes",
}
# Not fenced, so not in the inventory, and skipped by design too: the indented ssh:// examples
# of "Remote repositories" (ssh to a real host; tests/ops/test_remote*.py run them over a real ssh
# transport) and the authorized_keys line.


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """Every fenced block of the README as (heading of its section, its lines)."""
    out: list[tuple[str, list[str]]] = []
    heading = ""
    block: list[str] | None = None
    for line in text.splitlines():
        if block is not None:
            if line.startswith("```"):
                out.append((heading, block))
                block = None
            else:
                block.append(line)
        elif line.startswith("```"):
            block = []
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    assert block is None, "README.md has an unclosed fenced block"
    return out


def _commands(lines: list[str]) -> list[str]:
    """A block's commands: continuation lines joined, blank and comment-only lines dropped."""
    out: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        cmd = (pending + line).strip()
        pending = ""
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    return out


def _first(cmds: list[str]) -> str:
    """A block's first command without its trailing comment: the block's name in RUN and
    SKIPPED_BY_DESIGN."""
    return re.sub(r"\s+#\s.*$", "", cmds[0])


def _is_command_block(lines: list[str]) -> bool:
    cmds = _commands(lines)
    return bool(cmds) and cmds[0].split()[0] in COMMAND_WORDS


def _block(key: tuple[str, str]) -> list[str]:
    for heading, lines in _sections(README.read_text()):
        cmds = _commands(lines)
        if heading == key[0] and cmds and _first(cmds) == key[1]:
            return cmds
    raise AssertionError(f"README.md has no block in section {key[0]!r} starting {key[1]!r}")


def _inline_commands(section: str) -> list[str]:
    """The `...` spans of a section's numbered steps that are commands (a recipe in prose)."""
    text = README.read_text()
    m = re.search(rf"^#+ {re.escape(section)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert m, f"README.md has no section {section!r}"
    spans = re.findall(r"`([^`]+)`", m.group(1))
    return [s for s in spans if " " in s and s.split()[0] in COMMAND_WORDS]


def _localize(cmd: str, tmp: Path) -> str:
    return _PATH_RE.sub(lambda m: str(tmp / PATH_MAP[m.group(1)]), cmd)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: str, tmp: Path, exports: list[str] = ()) -> subprocess.CompletedProcess:
    script = "\n".join([*exports, cmd])
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp, env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)


def _run_block(cmds: list[str], tmp: Path, expected: dict[str, int] | None = None) -> None:
    """Run each command; assert the exit code the README implies (0 unless `expected` names
    a substring of the command and its documented code)."""
    exports: list[str] = []
    for readme_cmd in cmds:
        cmd = _localize(readme_cmd, tmp)
        want = next((c for s, c in (expected or {}).items() if s in readme_cmd), 0)
        r = _run(cmd, tmp, exports)
        assert r.returncode == want, (
            f"README command exited {r.returncode}, not {want}: {readme_cmd}\n"
            f"ran: {cmd}\nstdout: {r.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {r.stderr.decode(errors='replace')[-2000:]}")
        if readme_cmd.startswith("export "):
            exports.append(cmd)


def _make_source(tmp: Path) -> None:
    """A small /home and /etc: files, a .pdf for the tour's find, a symlink, an empty dir, a
    name with a space and a non-UTF-8 byte; every mtime in the past (none racy)."""
    home, etc = tmp / "src/home", tmp / "src/etc"
    (home / "alice/docs").mkdir(parents=True)
    (home / "alice/empty").mkdir()
    (home / "bob").mkdir(parents=True)
    etc.mkdir(parents=True)
    (home / "alice/docs/report.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(300_000))
    (home / "alice/notes.txt").write_text("notes\n" * 1000)
    (home / "alice/docs/link-to-notes").symlink_to("../notes.txt")
    os.chmod(home / "alice/notes.txt", 0o640)
    Path(os.fsdecode(bytes(home / "alice") + b"/caf\xe9 menu.txt")).write_bytes(b"menu\n")
    (home / "bob/todo.txt").write_text("todo\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    past = 1_700_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(tmp / "src", topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(past, past), follow_symlinks=False)
        os.utime(dirpath, ns=(past, past))
    (tmp / "restore").mkdir(exist_ok=True)


def _tree(root: Path) -> dict[str, tuple]:
    """type, mode, size, mtime_ns and content (or link target) of every entry under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            else:
                body = None
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_size, mtime, body)
    return out


def _run_tour(tmp: Path) -> None:
    _make_source(tmp)
    _run_block(_block(TOUR), tmp)


def test_readme_tour_runs_as_written_and_restores_the_subtree(tmp_path):
    _run_tour(tmp_path)
    source = tmp_path / "src/home/alice"
    restored = tmp_path / "restore" / str(source).lstrip("/")
    assert _tree(restored) == _tree(source)
    assert len(_tree(source)) == 6  # docs, empty, notes.txt, the odd name, the pdf, the link


def test_readme_tour_completion_line_runs_in_bash(tmp_path):
    _run_block(_block(COMPLETION), tmp_path)
    r = _run(_block(COMPLETION)[0] + "\ncomplete -p backshift", tmp_path)
    assert r.returncode == 0 and b"backshift" in r.stdout, r.stderr


def test_readme_catalog_recovery_recipe_restores_a_damaged_catalog(tmp_path):
    """The numbered steps of "Restoring the catalog from its copy", run as written after the
    tour, on a catalog whose header was overwritten."""
    _run_tour(tmp_path)
    catalog = tmp_path / "repo/catalog.sqlite3"
    with open(catalog, "r+b") as f:
        f.write(b"\0" * 100)
    damaged = _run("backshift -r repo saves", tmp_path)
    assert damaged.returncode == 7, damaged.stderr
    recipe = _inline_commands("Restoring the catalog from its copy")
    assert [c.split()[0] for c in recipe] == ["mkdir", "cp", "backshift", "backshift"], recipe
    _run_block(recipe, tmp_path)
    saves = _run("backshift -r repo saves", tmp_path)
    assert saves.returncode == 0
    assert b" home " in saves.stdout and b" etc " in saves.stdout


def test_readme_every_command_block_is_run_or_skipped_by_design():
    blocks = {(heading, _first(_commands(lines)))
              for heading, lines in _sections(README.read_text()) if _is_command_block(lines)}
    unreviewed = blocks - RUN - set(SKIPPED_BY_DESIGN)
    assert not unreviewed, f"README command blocks neither run nor skipped by design: {unreviewed}"
    gone = (RUN | set(SKIPPED_BY_DESIGN)) - blocks
    assert not gone, f"listed blocks no longer in README.md: {gone}"


def _does_not_do() -> str:
    m = re.search(r"^## What backshift does not do \(yet\)\n(.*?)(?=^## )", README.read_text(),
                  re.S | re.M)
    assert m, "README.md has no section 'What backshift does not do (yet)'"
    return m.group(1)


@pytest.mark.parametrize("claim, cmd, code, says", [
    ("ssh://", "backshift -r ssh://backup@nas.invalid/srv/repo import-legacy src", 2,
     b"run it on the repository host"),
])
def test_readme_does_not_do_section_matches_the_cli(tmp_path, claim, cmd, code, says):
    """Each "not yet" of the README holds: when a feature lands, this fails until the README
    says so."""
    assert claim in _does_not_do()
    (tmp_path / "src").mkdir()
    r = _run(cmd, tmp_path)
    assert r.returncode == code and says in r.stderr, r.stderr


def test_readme_chunks_in_an_object_store_is_no_longer_a_not_yet():
    """init --chunks landed: the README no longer lists it as missing and has its section."""
    assert "--chunks" not in _does_not_do() and "object store" not in _does_not_do()
    assert "## Chunks in an object store" in README.read_text()
    assert "init --chunks s3://backups/web1" in README.read_text()


def test_readme_save_dry_run_is_no_longer_a_not_yet_and_runs_as_described(tmp_path):
    """save --dry-run landed: the README no longer lists it as missing, says what it
    prints, and that output is what the CLI prints."""
    assert "dry-run" not in _does_not_do()
    assert "`save --dry-run` (`-n`)" in README.read_text()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data\n")
    r = _run("backshift -r repo init >/dev/null && "
             "backshift -r repo save --dry-run -v --subset x src", tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"\nread " + os.fsencode(tmp_path / "src" / "f") + b"\n" in b"\n" + r.stdout
    assert b"would read 1 file (5 B), borrow 0 unchanged (0 B), 1 new directories" \
        in r.stdout, r.stdout
