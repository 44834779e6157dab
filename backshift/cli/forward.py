"""The client end of an ssh:// repository: a command given one runs on the repository's
host (`backshift serve` there), its output and exit code passed through unchanged.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import UsageError


def run_remote(group: click.Group, ctx: click.Context) -> int | None:
    """Run the command on the server of an ssh:// repository; None if it runs here."""
    protected = ctx.__dict__.get("_protected_args")
    args = [*(ctx.protected_args if protected is None else protected), *ctx.args]
    if not args or args[0] == "serve":
        return None
    from ..remote.client import check_remote, run_command, without_option

    name, cmd, rest = group.resolve_command(ctx, args)
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
        code = run_command(ctx.params["repo"], ctx.meta.get("remote_path"), [name, *rest], out,
                           sys.stderr.buffer, debug=ctx.params["debug"],
                           encoding=sys.stdout.encoding, errors=sys.stdout.errors)
        out.flush()
    return code
