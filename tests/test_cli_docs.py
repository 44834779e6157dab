"""docs/cli.md is generated from --help and must not go stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parent.parent


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
