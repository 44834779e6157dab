"""Write docs/cli.md from the commands' --help (run: .venv/bin/python tools/gen_cli_docs.py).

tests/test_cli_docs.py fails when docs/cli.md differs from what this renders, so the CLI
reference can never go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from backshift.cli import cli

OUT = Path(__file__).parent.parent / "docs" / "cli.md"
WIDTH = 100


def help_text(command: click.Command, name: str, parent: click.Context | None) -> str:
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH,
                        max_content_width=WIDTH, **command.context_settings)
    return command.get_help(ctx)


def render() -> str:
    # the commands' own context settings (-h), as `backshift ... --help` builds them; and
    # no help option cached by an earlier in-process run may leak in (tests run cli first)
    root = click.Context(cli, info_name="backshift", terminal_width=WIDTH,
                         max_content_width=WIDTH, **cli.context_settings)
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
