"""Write docs/backshift.1, a man page, from the commands' --help (run:
.venv/bin/python tools/gen_man_page.py; install: man -l docs/backshift.1 or copy it to
/usr/local/share/man/man1/).

tests/cli/test_cli_docs.py fails when docs/backshift.1 differs from what this renders, as for
docs/cli.md, so the man page and --help never disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gen_cli_docs import context, help_text  # noqa: E402

from backshift import __version__  # noqa: E402
from backshift.cli import cli  # noqa: E402
from backshift.errors import exit_code_table  # noqa: E402

OUT = Path(__file__).parent.parent / "docs" / "backshift.1"


def roff(text: str) -> str:
    """TEXT safe as roff input lines: backslashes escaped, no line read as a request."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def preformatted(text: str) -> list[str]:
    return [".nf", roff(text.rstrip("\n")), ".fi"]


def render() -> str:
    root = context(cli, "backshift", None)
    summary = (cli.help or "").strip().splitlines()[0].split(": ", 1)[-1]
    parts = [
        f'.TH BACKSHIFT 1 "" "backshift {__version__}" "User Commands"',
        ".SH NAME",
        f"backshift \\- {roff(summary)}",
        ".SH SYNOPSIS",
        ".B backshift",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        "Generated from \\fB\\-\\-help\\fR by tools/gen_man_page.py.",
        ".PP",
        *preformatted(cli.get_help(root)),
        ".SH COMMANDS",
    ]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        if command.hidden:
            continue
        parts += [f".SS backshift {name}", *preformatted(help_text(command, name, root))]
    parts += [".SH EXIT STATUS"]
    for code, meaning in exit_code_table():
        parts += [".TP", f".B {code}", roff(meaning)]
    parts += [".SH ENVIRONMENT", ".TP", ".B BACKSHIFT_REPO",
              "The repository, when no \\fB\\-r\\fR is given.", ".TP",
              ".B _BACKSHIFT_COMPLETE",
              "Shell completion: eval \"$(_BACKSHIFT_COMPLETE=bash_source backshift)\" "
              "(zsh_source, fish_source for other shells).",
              ".SH SEE ALSO", "\\fBtar\\fR(1), \\fBfind\\fR(1), \\fBsqlite3\\fR(1)"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
