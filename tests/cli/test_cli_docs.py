"""docs/cli.md is generated from --help and must not go stale."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" /
                                                  "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    gen = load_generator()
    assert (ROOT / "docs" / "cli.md").read_text() == gen.render(), (
        "docs/cli.md is stale: run .venv/bin/python tools/gen_cli_docs.py")


def test_every_command_help_has_an_example():
    gen = load_generator()
    text = gen.render()
    for section in text.split("\n## backshift ")[1:]:
        name = section.splitlines()[0]
        assert "Example" in section, f"`backshift {name} --help` shows no example"


def test_man_page_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen_man_page", ROOT / "tools" /
                                                  "gen_man_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "backshift.1").read_text() == module.render(), (
        "docs/backshift.1 is stale: run .venv/bin/python tools/gen_man_page.py")


def test_man_page_renders_with_man(tmp_path):
    res = subprocess.run(["man", "-l", str(ROOT / "docs" / "backshift.1")], capture_output=True,
                         env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"}, timeout=60)
    assert res.returncode == 0 and b"backshift import-legacy" in res.stdout, res.stderr
    assert b"warning" not in res.stderr


def test_shell_completion_as_the_readme_says():
    from conftest import BACKSHIFT
    env = {**os.environ, "_BACKSHIFT_COMPLETE": "bash_source"}
    script = subprocess.run([BACKSHIFT], env=env, capture_output=True, timeout=60).stdout
    assert b"complete -o nosort -F _backshift_completion backshift" in script
    assert "_BACKSHIFT_COMPLETE=bash_source backshift" in (ROOT / "README.md").read_text()
    env = {**os.environ, "_BACKSHIFT_COMPLETE": "bash_complete", "COMP_WORDS": "backshift sav",
           "COMP_CWORD": "1"}
    words = subprocess.run([BACKSHIFT], env=env, capture_output=True, timeout=60).stdout
    assert b"plain,save" in words and b"plain,saves" in words


@pytest.mark.parametrize("name,hint", [
    ("restore", "backshift tar --backup ID | tar -xpf - -C DEST"), ("snapshots", "backshift saves"),
    ("forget", "backshift expire"), ("prune", "backshift expire"),
    ("ls", "backshift list --backup ID")])
def test_other_tools_command_names_get_a_hint(name, hint):
    from conftest import run
    res = run(name, exit_code=2)
    assert res.stderr.splitlines() == [
        f"backshift: error: backshift has no command {name!r}: use '{hint}' "
        "(see 'backshift --help')"]


def test_every_command_has_its_section_in_cli_md_and_the_man_page():
    from backshift.cli import cli
    commands = sorted(cli.commands)
    assert "save" in commands and "tar" in commands, commands
    reference = (ROOT / "docs" / "cli.md").read_text().splitlines()
    man = (ROOT / "docs" / "backshift.1").read_text().splitlines()
    for name in commands:
        assert f"## backshift {name}" in reference, f"docs/cli.md has no section for {name!r}"
        assert f".SS backshift {name}" in man, f"docs/backshift.1 has no section for {name!r}"
