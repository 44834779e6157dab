"""The serve command, the far end of ssh:// repositories: it parses each request's command
line with the CLI's own group and runs it in this process, its output framed to the client.
"""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_ERROR
from .app import cli, run


@click.command()
@click.option("--restrict-to-path", "restrict", multiple=True, metavar="PATH",
              help="Serve only repositories at or under PATH (repeatable); symlinks and "
                   "'..' are resolved first.")
@click.option("--append-only", is_flag=True,
              help="Refuse expire, break-lock, check --repair and anything else that "
                   "deletes or rewrites.")
def serve(restrict: tuple[str, ...], append_only: bool) -> None:
    """Answer one backshift client on stdin/stdout: the far end of ssh:// repositories.

    A client runs it through ssh ($BACKSHIFT_RSH [-p PORT] [USER@]HOST
    $BACKSHIFT_REMOTE_PATH serve) and names the repository in its first request. Put it
    in a forced command to limit what a key may reach and do. It logs to stderr.

    \b
    Example (one line in ~/.ssh/authorized_keys on the repository host):
      command="backshift serve --restrict-to-path /backups/web1 --append-only",restrict
        ssh-ed25519 AAAA... root@web1
    """
    from ..remote.server import Policy, serve_stdio

    policy = Policy(restrict_to=restrict, append_only=append_only)
    raise SystemExit(serve_stdio(policy, _serve_inspect, _serve_execute, _serve_saves))


def _serve_saves(repo: str):
    """The repository half of a remote save into REPO (ops/saveserver.py)."""
    import os

    from ..ops.saveserver import SessionServer
    from ..repo import WRITE, open_repository
    from .admin import copy_catalog

    def open_repo(lock_wait_s: float):
        return open_repository(os.fsencode(repo), WRITE, operation="save",
                               lock_wait_s=lock_wait_s)
    return SessionServer(open_repo, copy_catalog)


def _serve_inspect(argv: list[str]) -> tuple[str, dict | None]:
    """The command ARGV names and its options; None when they do not parse (nor will run)."""
    cmd = cli.get_command(click.Context(cli), argv[0])
    if cmd is None:
        return argv[0], None
    try:
        return argv[0], cmd.make_context(argv[0], list(argv[1:]),
                                         parent=click.Context(cli)).params
    except (click.ClickException, click.exceptions.Exit, ValueError, OSError):
        return argv[0], None


def _serve_execute(repo: str, argv: list[str], debug: bool, out, err, encoding: str,
                   errors: str) -> int:
    """Run one command in this process with its stdout and stderr going to OUT and ERR."""
    import io

    saved = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(out, 1 << 16), encoding=encoding,
                                  errors=errors)
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(err, 1 << 12), encoding=encoding,
                                  errors="backslashreplace", line_buffering=True)
    try:
        return run(["-r", repo, *(["--debug"] if debug else []), *argv])
    except Exception:  # noqa: BLE001 - run() reports its errors; this is the client gone
        return EXIT_ERROR
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved
