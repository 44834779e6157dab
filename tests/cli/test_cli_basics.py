"""CLI depth: init, save, saves, repository errors and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from backshift.errors import exit_code_table
from conftest import find0, run, run_bin


def test_init_creates_private_repository(tmp_path):
    run("-r", str(tmp_path / "r"), "init")
    assert (tmp_path / "r" / "catalog.sqlite3").is_file()
    assert (tmp_path / "r" / "chunks" / "ff").is_dir()
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o700


def test_init_refuses_non_empty_directory(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious").write_text("keep me")
    res = run("-r", str(tmp_path / "r"), "init", exit_code=4)
    assert "not empty" in res.stderr
    assert (tmp_path / "r" / "precious").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path / "r")) == ["precious"]


def test_missing_repository_is_an_error_and_creates_nothing(tmp_path):
    res = run("-r", str(tmp_path / "typo"), "saves", exit_code=3)
    assert "no repository at" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "typo").exists()


def test_repo_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKSHIFT_REPO", str(tmp_path / "r"))
    run("init")
    assert (tmp_path / "r" / "catalog.sqlite3").is_file()


def test_no_repository_given_is_a_usage_error():
    res = run("saves", exit_code=2)
    assert "BACKSHIFT_REPO" in res.stderr


def test_save_then_saves_lists_it(tmp_path, tree, repo):
    res = run("-r", repo, "save", "--subset", "home", "--hostname", "h1", "--json",
              input=find0(tree))
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["files"] == len(find0(tree).split(b"\0")) - 1
    res = run("-r", repo, "saves", "--format", "json")
    row = json.loads(res.stdout.splitlines()[-1])
    assert (row["id"], row["hostname"], row["subset"], row["status"]) == (
        summary["save_id"], "h1", "home", "complete")
    table = run("-r", repo, "saves").stdout
    assert re.search(r"^1\s+h1\s+home\s", table, re.M)


def test_saves_last_and_filters(tree, repo):
    for subset in ("a", "b", "a"):
        run("-r", repo, "save", "--subset", subset, str(tree))
    rows = [json.loads(x) for x in run("-r", repo, "saves", "--format", "json",
                                       "--subset", "a").stdout.splitlines()]
    assert [r["id"] for r in rows] == [1, 3]
    last = run("-r", repo, "saves", "--last", "1", "--format", "csv").stdout.splitlines()
    assert last[0].startswith("id,hostname,subset") and last[1].startswith("3,")


def test_save_with_paths_walks_them(tree, repo):
    res = run("-r", repo, "save", "--json", str(tree), "--exclude", "*.bin")
    summary = json.loads(res.stdout)
    assert summary["files"] == len(find0(tree).split(b"\0")) - 2  # minus random.bin


def test_save_refuses_paths_and_filelist_together(tree, repo, tmp_path):
    (tmp_path / "list").write_bytes(find0(tree))
    res = run("-r", repo, "save", "--subset", "t",
              "--filelist", str(tmp_path / "list"), str(tree), exit_code=2)
    assert "not both" in res.stderr


def test_save_from_filelist(tree, repo, tmp_path):
    (tmp_path / "list").write_bytes(find0(tree))
    res = run("-r", repo, "save", "--subset", "t", "--json", "--filelist", str(tmp_path / "list"))
    assert json.loads(res.stdout)["files"] > 10


def test_save_warning_exit_code_for_vanished_file(tree, repo):
    names = find0(tree) + os.fsencode(tree / "no-such-file") + b"\0"
    res = run("-r", repo, "save", "--subset", "t", "--json", input=names, exit_code=1)
    assert "no-such-file: vanished" in res.stderr
    assert json.loads(res.stdout)["warnings"] == 1


def test_help_lists_exit_codes():
    out = run("--help").stdout
    for code, _meaning in exit_code_table():
        assert re.search(rf"^\s+{code}\s", out, re.M), code


def test_readme_exit_code_table_equals_errors_py():
    """One table, two places: README's rows are exactly errors.exit_code_table()."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = [(int(code), meaning)
            for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", readme, re.M)]
    assert rows == exit_code_table()


def test_every_exit_code_has_a_summary():
    from backshift import errors
    for cls in errors._all_subclasses(errors.BackshiftError):
        if "exit_code" in cls.__dict__ and cls.exit_code not in (2, 130):
            assert cls.__dict__.get("summary"), f"{cls.__name__} needs a summary"


def test_python_dash_m_and_console_script_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "backshift", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert "backshift" in out
    res = run_bin("-r", str(tmp_path / "nope"), "saves")
    assert res.returncode == 3 and b"Traceback" not in res.stderr


def test_save_progress_line_when_forced(tree, repo):
    """--progress shows the progress on stderr (a terminal shows it by default, rewritten
    in place): off a terminal as plain lines; the summary stays on stdout."""
    res = run("-r", repo, "save", "--progress", "--checkpoint-files", "5", str(tree))
    assert "\r" not in res.stderr and " files, " in res.stderr
    assert res.stdout.startswith("save 1 complete:")
    quiet = run("-r", repo, "save", "--no-progress", str(tree))
    assert quiet.stderr == ""


def test_init_defaults_are_the_chunker_defaults():
    """cli.py spells ChunkerParams' defaults out (start-up skips model); they stay equal."""
    from backshift import cli
    from backshift.model import ChunkerParams
    params = {p.name: p.default for p in cli.cli.commands["init"].params}
    default = ChunkerParams()
    assert (params["chunk_min"], params["chunk_avg"], params["chunk_max"]) == (
        default.min_size, default.avg_size, default.max_size)


def test_start_up_imports_only_what_the_command_needs(tmp_path):
    """`--version` loads no repository code; `saves` no lock, store or ops; a table
    format alone loads tabulate."""
    run("-r", str(tmp_path / "r"), "init")
    code = ("import sys; from backshift import cli; cli.run(sys.argv[1:]); "
            "print('MODULES', ' '.join(sorted(sys.modules)))")

    def modules(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, check=True).stdout
        return out.split("MODULES", 1)[1].split()

    loaded = modules("--version")
    for heavy in ("apsw", "backshift.repo", "backshift.model", "tabulate", "json", "socket"):
        assert heavy not in loaded, heavy
    loaded = modules("-r", str(tmp_path / "r"), "saves")
    assert "backshift.catalog" in loaded
    for heavy in ("backshift.lock", "backshift.store", "zstandard", "hashlib",
                  "backshift.ops.select"):
        assert heavy not in loaded, heavy
    assert "tabulate" in loaded
    loaded = modules("-r", str(tmp_path / "r"), "saves", "--format", "csv")
    for heavy in ("tabulate", "importlib.resources", "backshift.store"):
        assert heavy not in loaded, heavy


def test_repo_option_after_the_command(tmp_path, monkeypatch):
    run("init", "-r", str(tmp_path / "r"))
    assert (tmp_path / "r" / "catalog.sqlite3").is_file()
    run("saves", "-r", str(tmp_path / "r"))
    # the command's -r wins over the group's and over BACKSHIFT_REPO
    monkeypatch.setenv("BACKSHIFT_REPO", str(tmp_path / "nowhere"))
    run("saves", "--repo", str(tmp_path / "r"), "--format", "json")
    run("-r", str(tmp_path / "nowhere"), "saves", "-r", str(tmp_path / "r"))
    run("sql", "-r", str(tmp_path / "r"), "SELECT 1")


def test_every_command_accepts_repo_after_it():
    from backshift.cli import cli as group
    for name, command in group.commands.items():
        if name == "serve":  # the far end of ssh://: the client names the repository
            assert not any("--repo" in p.opts for p in command.params)
            continue
        assert any(p.opts == ["-r", "--repo"] for p in command.params), name


def test_backup_names_a_save_id_everywhere(tree, repo, no_racy_margin):
    run("-r", repo, "save", "--subset", "s", input=find0(tree))
    (tree / "a.txt").write_bytes(b"changed\n")
    run("-r", repo, "save", "--subset", "s", input=find0(tree))
    new_form = run("-r", repo, "diff", "--backup", "1", "--backup", "2", "--format", "json")
    assert run("-r", repo, "diff", "1", "2", "--format", "json").stdout == new_form.stdout
    assert '"change": "content"' in new_form.stdout
    for command in ("list", "tar", "find", "stats", "expire", "diff"):
        assert "--backup" in run(command, "--help").stdout, command
    assert "--backup, --save ID" in run("expire", "--help").stdout  # the alias is shown
    run("-r", repo, "expire", "--save", "1", "--dry-run")
    res = run("-r", repo, "expire", "--backup", "abc", exit_code=2)
    assert "a save id is a whole number from 1 (see 'backshift saves'), not 'abc'" in res.stderr
    assert "integer range" not in res.stderr
    res = run("-r", repo, "diff", "1", "x", exit_code=2)
    assert "OLD_ID NEW_ID: a save id is a whole number" in res.stderr


LISTING_COMMANDS = ("saves", "list", "history", "find", "stats", "diff", "sql")


def test_listing_commands_share_format_names_and_json():
    for name in LISTING_COMMANDS:
        out = run(name, "--help").stdout
        assert "--format [table|json|csv]" in out and "--json" in out, name
    for name in ("save", "expire", "check", "import-legacy", "init", "break-lock"):
        assert "--json" in run(name, "--help").stdout, name


def test_json_on_expire_check_init_and_break_lock(tmp_path, tree):
    repo = str(tmp_path / "r")
    init = json.loads(run("-r", repo, "init", "--json").stdout)
    assert init["repository"] == repo and init["zstd_level"] == 3
    run("-r", repo, "save", "--subset", "s", input=find0(tree))
    check = json.loads(run("-r", repo, "check", "--json").stdout)
    assert check["problems"] == 0 and check["chunks_referenced"] > 0
    exp = json.loads(run("-r", repo, "expire", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert exp["dry_run"] is True and exp["saves_removed"] == 0
    assert [(d["save_id"], d["action"]) for d in exp["decisions"]] == [(1, "keep")]
    assert json.loads(run("-r", repo, "break-lock", "--json").stdout) == {
        "removed": [], "kept": []}
    # list and diff call their human format table now; text stays an alias
    assert run("-r", repo, "list", "--backup", "1", "--format", "text").stdout == run(
        "-r", repo, "list", "--backup", "1").stdout
    rows = run("-r", repo, "list", "--backup", "1", "--json").stdout.splitlines()
    assert all(json.loads(line)["path"] for line in rows)


def test_save_exclude_from_file(tmp_path, repo):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "cache").mkdir()
    (src / "keep" / "a.txt").write_bytes(b"a")
    (src / "keep" / "b.log").write_bytes(b"b")
    (src / "cache" / "c").write_bytes(b"c")
    (tmp_path / "ex").write_text("# what restic users keep in excludes.txt\n\n*.log\ncache\n")
    run("-r", repo, "save", "--exclude-from", str(tmp_path / "ex"), str(src))
    names = run("-r", repo, "list", "--backup", "1").stdout.splitlines()
    rel = str(src).lstrip("/")
    assert [n for n in names if n.startswith(rel)] == [f"{rel}/", f"{rel}/keep/",
                                                       f"{rel}/keep/a.txt"]
    res = run("-r", repo, "save", "--exclude-from", str(tmp_path / "nope"), str(src),
              exit_code=2)
    assert "--exclude-from" in res.stderr and "No such file" in res.stderr


def test_quiet_and_verbose(tmp_path, tree):
    repo = str(tmp_path / "r")
    res = run("-q", "-r", repo, "init")
    assert res.stdout == res.stderr == ""
    res = run("-r", repo, "save", "-q", "--subset", "s", input=find0(tree))
    assert res.stdout == "" and res.stderr == ""
    for args in (["check", "-q"], ["expire", "--keep-last", "1", "-q"], ["-q", "break-lock"]):
        res = run("-r", repo, *args)
        assert res.stdout == res.stderr == "", args
    assert "save 2 complete" in run("-r", repo, "save", "--subset", "s",
                                    input=find0(tree)).stdout
    res = run("-r", repo, "saves", "-v")
    assert res.stderr.startswith("backshift: saves finished in ")
    assert "files" in run("-r", repo, "save", "-v", "--subset", "s", input=find0(tree)).stderr
    run("-q", "-v", "-r", repo, "saves", exit_code=2)
