"""The command group, its context object and global options, and `run`: every outcome of a
command becomes one exit code here (errors.py's classes), and one line on stderr.

Start-up time is part of every command: only click and the small modules below load here.
A command imports the repository, its operation and anything heavy (apsw, json, socket,
...) when it runs.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from .. import __version__
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BackshiftError,
    NotACatalog,
    UsageError,
    exit_code_table,
)
from ..pathcodec import escape
from .forward import repo_given, run_remote
from .views import ProgressLine, echo_err

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {meaning}" for code, meaning in exit_code_table()
)


class Context:
    """What one invocation knows beyond its command's own options (ctx.obj)."""

    def __init__(self, repo: str | None, debug: bool, quiet: bool = False,
                 verbose: bool = False, line: ProgressLine | None = None) -> None:
        self.repo_arg = repo
        self.debug = debug
        self.quiet = quiet  # no progress, no summary: only warnings and errors
        self.verbose = verbose  # progress even off a terminal, and a closing timing line
        self.started = 0.0
        self.line = line if line is not None else ProgressLine()  # the live progress line

    def progress(self, option: bool | None) -> bool:
        """Whether to show live progress: --progress/--no-progress, else -q/-v, else tty."""
        if option is not None:
            return option
        return not self.quiet and (self.verbose or sys.stderr.isatty())

    @property
    def repo(self) -> bytes:
        if not self.repo_arg:
            raise UsageError("no repository given: use -r REPO or set BACKSHIFT_REPO")
        return os.fsencode(self.repo_arg)


pass_ctx = click.make_pass_decorator(Context)


class _OutputClosed(Exception):
    """Carries a BrokenPipeError past click, which would swallow it and exit 0."""


# What borg and restic users type, and the backshift command that does it: a hint, not an
# alias, so that there stays one name for each thing.
OTHER_TOOLS_COMMANDS = {
    "restore": "backshift tar --backup ID | tar -xpf - -C DEST",
    "extract": "backshift tar --backup ID | tar -xpf - -C DEST",
    "snapshots": "backshift saves",
    "forget": "backshift expire",
    "prune": "backshift expire",
    "ls": "backshift list --backup ID",
    "backup": "backshift save",
    "create": "backshift save",
}


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name in OTHER_TOOLS_COMMANDS and name not in self.commands:
            raise UsageError(f"backshift has no command {name!r}: use "
                             f"'{OTHER_TOOLS_COMMANDS[name]}' (see 'backshift --help')")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            if str(repo_given(ctx) or "").startswith("ssh://"):
                code = run_remote(self, ctx)
                if code is not None:
                    raise SystemExit(code)
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _OutputClosed() from e


@click.group(cls=_Group, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-r", "--repo", envvar="BACKSHIFT_REPO", metavar="REPO",
              help="Repository directory, or ssh://[USER@]HOST[:PORT]/PATH "
                   "(or set BACKSHIFT_REPO).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors: no progress, no summaries (also after the "
                   "command).")
@click.option("-v", "--verbose", is_flag=True,
              help="Progress even when stderr is not a terminal, and the time taken "
                   "(also after the command; list's own -v means long lines).")
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.option("--remote-path", envvar="BACKSHIFT_REMOTE_PATH", default="backshift",
              show_default=True, metavar="CMD", expose_value=False,
              callback=lambda ctx, _param, value: ctx.meta.update(remote_path=value),
              help="The backshift command on the host of an ssh:// repository "
                   "(or set BACKSHIFT_REMOTE_PATH).")
@click.version_option(__version__, prog_name="backshift")
@click.pass_context
def cli(ctx: click.Context, repo: str | None, quiet: bool, verbose: bool, debug: bool) -> None:
    """backshift: deduplicating backups with a SQLite catalog, restored through tar.

    \b
    Quick tour:
      backshift -r /backup/repo init
      find /home -xdev -print0 | backshift -r /backup/repo save --subset home
      backshift -r /backup/repo saves
    """
    import time

    if quiet and verbose:
        raise UsageError("give -q or -v, not both")
    line = ctx.obj if isinstance(ctx.obj, ProgressLine) else None  # run()'s, if it made one
    ctx.obj = Context(repo, debug, quiet, verbose, line)
    ctx.obj.started = time.monotonic()


@cli.result_callback()
@click.pass_context
def _after_command(ctx: click.Context, *_args, **_kwargs) -> None:
    """-v: how long the command took, on stderr (when it succeeded)."""
    import time

    obj = ctx.find_object(Context)
    if obj is not None and obj.verbose and not obj.quiet:
        took = time.monotonic() - obj.started
        echo_err(f"backshift: {ctx.invoked_subcommand} finished in {took:.1f} s")


# -- entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The console script: run the CLI and exit with its code."""
    # Once the code is decided, a Ctrl-C while the process winds down (threads and reader
    # processes are joined, then the interpreter resets its signal handlers to the default)
    # must not turn it into a death by SIGINT: it is blocked from there to the exit.
    try:
        code = run(argv)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except KeyboardInterrupt:  # a second Ctrl-C while run() was handling the outcome
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        code = EXIT_INTERRUPTED
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and translate every outcome into one exit code (the only place)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    line = ProgressLine()  # this invocation's live line, cleared before an error is shown
    code = EXIT_OK
    try:
        cli.main(args=argv, prog_name="backshift", standalone_mode=False, obj=line)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else EXIT_ERROR
    except click.exceptions.Abort:
        echo_err("backshift: interrupted")
        code = EXIT_INTERRUPTED
    except click.ClickException as e:
        e.show()
        code = EXIT_ERROR
    except BackshiftError as e:
        if debug:
            import traceback
            traceback.print_exc()
        line.clear()
        echo_err(f"backshift: error: {e.message()}")
        code = e.exit_code
    except KeyboardInterrupt:
        line.clear()
        echo_err("backshift: interrupted")
        code = EXIT_INTERRUPTED
    except (BrokenPipeError, _OutputClosed):
        # `backshift list | head` is a normal use: quiet, with the status a shell gives a
        # process SIGPIPE ended (GNU tar's own behaviour)
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    except _catalog_damage_errors() as e:
        if debug:
            import traceback
            traceback.print_exc()
        echo_err(f"backshift: error: the catalog is damaged ({e}); see README, "
                 "'Restoring the catalog from its copy'")
        code = NotACatalog.exit_code
    except OSError as e:
        if debug:
            import traceback
            traceback.print_exc()
        where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
        echo_err(f"backshift: error: {where}{e.strerror or e}")
        code = EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the last net: one line, never a traceback
        if debug:
            import traceback
            traceback.print_exc()
        line.clear()
        text = escape(str(e).encode("utf-8", "surrogateescape")) or "(no message)"
        echo_err(f"backshift: error: unexpected {type(e).__name__}: {text} "
                 "(--debug shows where; please report it)")
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        if code == EXIT_OK:
            code = EXIT_BROKEN_PIPE
    return code


def _catalog_damage_errors() -> tuple[type[BaseException], ...]:
    """apsw's "damaged file" errors; none can have happened if apsw was never imported."""
    apsw = sys.modules.get("apsw")
    return (apsw.CorruptError, apsw.NotADBError) if apsw is not None else ()


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
