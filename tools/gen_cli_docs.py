"""Write docs/cli.md from the commands' --help (run: .venv/bin/python tools/gen_cli_docs.py).

tests/cli/test_cli_docs.py fails when docs/cli.md differs from what this renders, so the CLI
reference can never go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from backshift.cli import cli

OUT = Path(__file__).parent.parent / "docs" / "cli.md"
WIDTH = 100


def context(command: click.Command, name: str, parent: click.Context | None):
    """A context as click makes it for `--help` (context_settings applied), fixed width."""
    return command.make_context(name, [], parent=parent, resilient_parsing=True,
                                terminal_width=WIDTH, max_content_width=WIDTH)


def help_text(command: click.Command, name: str, parent: click.Context | None) -> str:
    return command.get_help(context(command, name, parent))


def render() -> str:
    root = context(cli, "backshift", None)
    parts = [
        "# backshift command reference",
        "",
        "Generated from `--help` by `tools/gen_cli_docs.py`; a test fails when it is stale.",
        "",
        "## backshift",
        "",
        "```",
        cli.get_help(root),
        "```",
    ]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        if command.hidden:
            continue
        parts += ["", f"## backshift {name}", "", "```", help_text(command, name, root), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
