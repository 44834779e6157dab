"""The client end of an ssh:// repository: a command given one runs on the repository's
host (`backshift serve` there), its output and exit code passed through unchanged.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import UsageError


def _command_args(ctx: click.Context) -> list[str]:
    protected = ctx.__dict__.get("_protected_args")
    return [*(ctx.protected_args if protected is None else protected), *ctx.args]


def repo_given(ctx: click.Context) -> str | None:
    """The repository the command runs on: its own -r/--repo (after the command name, the
    last one), else the group's (before it, or BACKSHIFT_REPO)."""
    args = _command_args(ctx)
    found = None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in ("-r", "--repo") and i + 1 < len(args):
            found = args[i + 1]
            i += 2
            continue
        if arg.startswith("--repo="):
            found = arg[len("--repo="):]
        elif arg.startswith("-r") and not arg.startswith("--") and len(arg) > 2:
            found = arg[2:]
        i += 1
    return found if found is not None else ctx.params.get("repo")


def run_remote(group: click.Group, ctx: click.Context) -> int | None:
    """Run the command on the server of an ssh:// repository; None if it runs here."""
    args = _command_args(ctx)
    if not args or args[0] == "serve":
        return None
    from ..remote.client import check_remote, run_command, without_option

    url = repo_given(ctx)
    name, cmd, rest = group.resolve_command(ctx, args)
    rest = without_option(rest, "-r", "--repo")  # the server names the repository itself
    if name == "save":  # its client half runs here, talking to `serve` (cli/save.py)
        return None
    check_remote(name)
    params = cmd.make_context(name, list(rest), parent=ctx).params  # usage errors stay local
    out = sys.stdout.buffer
    import contextlib

    with contextlib.ExitStack() as stack:
        if name == "tar" and params["output"] == "-" and sys.stdout.isatty():
            raise UsageError("refusing to write a tar stream to a terminal: "
                             "pipe it into tar or give -o FILE")
        if name == "tar" and params["output"] != "-":  # the file is on this host
            rest = without_option(rest, "-o", "--output")
            if cmd.make_context(name, list(rest), parent=ctx).params != {**params, "output": "-"}:
                raise UsageError("cannot take -o apart from the other arguments: use > FILE")
            out = stack.enter_context(open(os.fsencode(params["output"]), "wb"))
        sys.stdout.flush()
        code = run_command(url, ctx.meta.get("remote_path"), [name, *rest], out,
                           sys.stderr.buffer, debug=ctx.params["debug"],
                           encoding=sys.stdout.encoding, errors=sys.stdout.errors)
        out.flush()
    return code
