"""The command line: parse arguments, open the repository, call one operation, render it.

The only module that imports click. Errors become one line on stderr and the exit code of
their class (errors.py); --debug shows the traceback too.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_WARNING,
    BackshiftError,
    NotACatalog,
    UsageError,
    exit_code_table,
)
from .pathcodec import escape
from .render import FORMATS, human_bytes, iso_time, local_time, render

if TYPE_CHECKING:
    from .model import SaveStats

# Start-up time is part of every command (`--version` took 0.09 s when this module imported
# everything): only click and the small modules above load here. A command imports the
# repository, its operation and anything heavy (apsw, json, socket, ...) when it runs.

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {meaning}" for code, meaning in exit_code_table()
)


class Context:
    def __init__(self, repo: str | None, debug: bool, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.repo_arg = repo
        self.debug = debug
        self.quiet = quiet  # no progress, no summary: only warnings and errors
        self.verbose = verbose  # progress even off a terminal, and a closing timing line
        self.started = 0.0

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

class _SaveId(click.ParamType):
    """A save id: a positive SQLite integer. A larger number is refused as bad usage before
    it reaches the catalog (apsw raises OverflowError past 2**63 - 1)."""

    name = "id"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            number = int(text) if text.isdigit() else None
        if number is None or not 1 <= number <= 2**63 - 1:
            self.fail(f"a save id is a whole number from 1 (see 'backshift saves'), "
                      f"not {value!r}", param, ctx)
        return number


SAVE_ID = _SaveId()


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (nan compares false with any bound)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


class _FormatChoice(click.Choice):
    """table|json|csv, the same three names on every listing command; `text` (list's and
    diff's old name for their human format) is accepted as table."""

    def __init__(self) -> None:
        super().__init__(FORMATS)

    def convert(self, value, param, ctx):
        return super().convert("table" if value == "text" else value, param, ctx)


def _format_options(f):
    """--format table|json|csv and --json (the same as --format json)."""
    f = click.option("--json", "fmt", flag_value="json", type=_FormatChoice(),
                     help="Same as --format json: one JSON object a line.")(f)
    return click.option("--format", "fmt", type=_FormatChoice(), default="table",
                        show_default=True,
                        help="table for people ('text' is an alias), json lines, or csv.")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object (see docs/cli.md).")(f)


def _save_spec(_ctx, _param, value: str | None) -> str | None:
    """ID|latest for --backup: a number must be a save id (resolve_save does the rest)."""
    if value is not None and value.strip().lstrip("+-").isdigit():
        SAVE_ID.convert(value, _param, _ctx)
    return value


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def emit_lines(lines) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line)
        out.write("\n")


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
            if str(ctx.params.get("repo") or "").startswith("ssh://"):
                code = _run_remote(self, ctx)
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
    ctx.obj = Context(repo, debug, quiet, verbose)
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


# -- init -------------------------------------------------------------------------------

# ChunkerParams' defaults, spelled out so that start-up does not build model's dataclasses
# (tests/test_cli_basics.py holds them equal).
DEFAULT_CHUNK_MIN = 256 * 1024
DEFAULT_CHUNK_AVG = 1024 * 1024
DEFAULT_CHUNK_MAX = 4 * 1024 * 1024


@cli.command()
@click.option("--chunk-min", default=DEFAULT_CHUNK_MIN, show_default=True,
              help="Smallest chunk in bytes.")
@click.option("--chunk-avg", default=DEFAULT_CHUNK_AVG, show_default=True,
              help="Average chunk in bytes.")
@click.option("--chunk-max", default=DEFAULT_CHUNK_MAX, show_default=True,
              help="Largest chunk in bytes.")
@click.option("--zstd-level", default=3, show_default=True, type=click.IntRange(1, 19),
              help="zstd compression level for new chunks.")
@_json_option
@pass_ctx
def init(ctx: Context, chunk_min: int, chunk_avg: int, chunk_max: int, zstd_level: int,
         as_json: bool) -> None:
    """Create a new, empty repository.

    The chunker parameters and compression are recorded in the catalog; every later
    save uses them.

    \b
    Example:
      backshift -r /backup/repo init
    """
    from .model import MAX_CHUNK_LENGTH, ChunkerParams
    from .repo import init_repository

    if not 64 <= chunk_min < chunk_avg < chunk_max <= MAX_CHUNK_LENGTH:
        raise UsageError("need 64 <= --chunk-min < --chunk-avg < --chunk-max <= 16 MiB")
    params = ChunkerParams(min_size=chunk_min, avg_size=chunk_avg, max_size=chunk_max)
    init_repository(ctx.repo, params, zstd_level)
    where = escape(os.path.abspath(ctx.repo))
    if as_json:
        _print_json({"repository": where, "chunk_min": chunk_min, "chunk_avg": chunk_avg,
                     "chunk_max": chunk_max, "zstd_level": zstd_level})
    elif not ctx.quiet:
        echo_err(f"created repository {where}")


# -- save -------------------------------------------------------------------------------


def _check_label(kind: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--{kind} must be valid UTF-8 text") from None
    if not value:
        raise UsageError(f"--{kind} must not be empty")
    return value


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=bytes))
@click.option("--hostname", default=None, help="Series host name [default: this host].")
@click.option("--subset", default=None,
              help="Series name within the host, e.g. home or root [default with PATHs: "
                   "named after them: /etc is etc, /usr/share/doc usr-share-doc, several "
                   "joined by '+'; required with names from stdin or --filelist].")
@click.option("--filelist", type=click.File("rb"), default=None,
              help="Read NUL-separated names from FILE instead of stdin.")
@click.option("--one-file-system", "-x", is_flag=True,
              help="With PATHs: do not cross into other filesystems.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="With PATHs: skip matching names (repeatable). A glob with '/' "
                   "matches the whole path, otherwise the last component.")
@click.option("--exclude-from", "exclude_from", multiple=True, metavar="FILE",
              help="With PATHs: --exclude each line of FILE (blank lines and lines "
                   "starting with '#' skipped; repeatable).")
@click.option("--exclude-caches", is_flag=True,
              help="With PATHs: save a directory holding a CACHEDIR.TAG (with its "
                   "signature) with that file only, as GNU tar does.")
@click.option("--exclude-if-present", multiple=True, metavar="NAME",
              help="With PATHs: save a directory holding a file NAME with that file only "
                   "(repeatable).")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr [default: when stderr is a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--workers", default=min(4, os.cpu_count() or 2), show_default=True,
              type=click.IntRange(1, 64),
              help="Readers: processes for a first save, threads for a re-save.")
@click.option("--checkpoint-interval", default=10.0, show_default=True, metavar="SECONDS",
              type=_FiniteFloat(0.1), help="Commit what is saved at least this often.")
@click.option("--checkpoint-files", default=20_000, hidden=True, type=click.IntRange(1))
@click.option("--lock-wait", default=0.0, show_default=True, metavar="SECONDS",
              type=_FiniteFloat(0),
              help="Wait this long for a locked repository (an expire) before giving up.")
@pass_ctx
def save(ctx: Context, paths: tuple[bytes, ...], hostname: str | None, subset: str | None,
         filelist, one_file_system: bool, exclude: tuple[str, ...],
         exclude_from: tuple[str, ...], exclude_caches: bool,
         exclude_if_present: tuple[str, ...], progress: bool | None,
         as_json: bool, workers: int, checkpoint_interval: float,
         checkpoint_files: int, lock_wait: float) -> None:
    """Save files into a new save of HOSTNAME/SUBSET.

    Names come from stdin, NUL-separated, as `find -print0` writes them; or from
    --filelist FILE; or backshift walks the PATHs given. Unchanged files (same size,
    mtime, ctime and inode as in an earlier save of the series) are not read again.

    Without --subset, a save of PATHs goes to the series named after them (the roots
    without their leading '/', '/' as '-', sorted and joined by '+'; / is rootfs; a
    root with other characters than letters, digits, '.', '_', '-' gives paths-HASH).
    A warning says when a series' root PATHs change between saves. A save that gets no
    names, or none of whose PATHs exist, is an error and records nothing.

    \b
    Examples:
      find /home -xdev -print0 | backshift -r /backup/repo save --subset home
      backshift -r /backup/repo save --subset etc /etc
      backshift -r /backup/repo save --filelist names.0 --hostname web1

    Exit status 1 means the save completed but some files were skipped (see stderr).
    """
    import signal
    import socket

    from .ops.save import SaveOptions, run_save
    from .ops.session import subset_for_roots

    hostname = _check_label("hostname", hostname or socket.gethostname())
    if paths and filelist is not None:
        raise UsageError("give either PATHs or --filelist, not both")
    if not paths and filelist is None and sys.stdin.isatty():
        raise UsageError("no names to save: names come NUL-separated on stdin, not typed "
                         "(find /home -xdev -print0 | backshift save --subset home), or "
                         "give PATHs (backshift save /home) or --filelist FILE")
    cwd = os.getcwdb()
    roots = _save_roots(paths, cwd) if paths else None
    if roots is not None:  # the series is named after the PATHs given, all of them
        subset = subset if subset is not None else subset_for_roots(roots)
    elif subset is None:
        raise UsageError("--subset is required with names from stdin or --filelist: it "
                         "names the series (e.g. find /home -xdev -print0 | backshift save "
                         "--subset home)")
    subset = _check_label("subset", subset)
    exclude += _read_exclude_files(exclude_from)
    walk_only = [name for name, given in [
        ("--one-file-system", one_file_system), ("--exclude", exclude),
        ("--exclude-caches", exclude_caches), ("--exclude-if-present", exclude_if_present)]
        if given]
    if walk_only and not paths:
        raise UsageError(f"{walk_only[0]} applies to the PATHs backshift walks; with names "
                         "from find, let find leave them out (-xdev, -prune, -not -path)")
    if any(not n or "/" in n or n in (".", "..") for n in exclude_if_present):
        raise UsageError("--exclude-if-present takes a file name, without '/'")

    def warn(msg: str) -> None:
        _clear_progress()
        # one line per warning, even for names holding newlines or terminal escapes
        echo_err(f"warning: {escape(msg.encode('utf-8', 'surrogateescape'))}")

    show = ctx.progress(progress)
    opts = SaveOptions(hostname=hostname, subset=subset, workers=workers,
                       batch_files=checkpoint_files, batch_seconds=checkpoint_interval,
                       roots=roots)
    # stdin unbuffered: a single read returns what the pipe has, and the name reader
    # thread never holds a buffer lock the interpreter needs at exit.
    stream = None if paths else filelist if filelist is not None else _raw_stdin()
    run = run_save(ctx.repo, opts, warn, cwd=cwd, paths=paths, stream=stream,
                   one_file_system=one_file_system, excludes=exclude,
                   exclude_caches=exclude_caches, exclude_if_present=exclude_if_present,
                   lock_wait_s=lock_wait, progress=_progress_printer if show else None,
                   notice=_save_notice, after_complete=_copy_catalog)
    if run.terminated:  # a second SIGTERM: stopped at once, marked interrupted
        _clear_progress()
        echo_err("backshift: terminated")
        raise SystemExit(EXIT_TERMINATED)
    stats, copied = run.stats, run.copied
    _clear_progress()
    if as_json:
        import json
        click.echo(json.dumps(_summary_dict(stats), sort_keys=True))
    elif not ctx.quiet:
        for line in _summary_lines(stats):
            click.echo(line)
    if stats.status == "interrupted":
        echo_err(f"backshift: interrupted: save {stats.save_id} keeps the "
                 f"{_count(stats.files, 'file')} committed so far; the next save borrows "
                 "from it")
        raise SystemExit(EXIT_TERMINATED if run.stop_signal == signal.SIGTERM
                         else EXIT_INTERRUPTED)
    if stats.warnings or not copied:
        raise SystemExit(EXIT_WARNING)


def _save_roots(paths: tuple[bytes, ...], cwd: bytes) -> list[bytes]:
    """The PATHs given, absolute and normal (those that cannot be are left out: the walk
    warns about them); NothingToSave when none of them exists."""
    from .errors import NothingToSave
    from .pathcodec import BadPath, normalize

    roots, missing = [], []
    for raw in paths:
        try:
            root = normalize(raw, cwd)
            roots.append(root)
            os.lstat(root)
        except BadPath as e:
            missing.append(f"{os.fsdecode(raw)}: {e}")
        except OSError as e:
            missing.append(f"{os.fsdecode(raw)}: {e.strerror}")
    if len(missing) == len(paths):
        raise NothingToSave(f"no PATH given exists ({'; '.join(missing)})")
    return roots


def _save_notice(msg: str) -> None:
    _clear_progress()
    echo_err(msg)


def _read_exclude_files(files: tuple[str, ...]) -> tuple[str, ...]:
    """The globs of --exclude-from FILEs, as restic and borg read them (one a line)."""
    out: list[str] = []
    for name in files:
        try:
            with open(os.fsencode(name), "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"--exclude-from {name}: {e.strerror}") from None
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.rstrip("\r"))
    return tuple(out)


def _raw_stdin():
    buf = sys.stdin.buffer
    return getattr(buf, "raw", buf)


_progress_shown = False


def _progress_printer(stats: SaveStats, estimate: int | None) -> None:
    global _progress_shown
    rate = stats.bytes_read / stats.elapsed_s if stats.elapsed_s > 0 else 0
    line = (f"{_count(stats.files, 'file')}, {human_bytes(stats.bytes)} "
            f"({human_bytes(stats.bytes_read)} read, {human_bytes(rate)}/s)")
    if estimate and stats.files and stats.files < estimate:
        eta = stats.elapsed_s * (estimate - stats.files) / stats.files
        line += f", ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    sys.stderr.write("\r\x1b[K" + line)
    sys.stderr.flush()
    _progress_shown = True


def _clear_progress() -> None:
    global _progress_shown
    if _progress_shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        _progress_shown = False


def _summary_dict(s: SaveStats) -> dict:
    return {
        "save_id": s.save_id, "status": s.status, "files": s.files, "bytes": s.bytes,
        "files_read": s.files_read, "bytes_read": s.bytes_read,
        "files_borrowed": s.files_borrowed, "bytes_borrowed": s.bytes_borrowed,
        "new_chunks": s.new_chunks, "new_bytes_stored": s.new_bytes_stored,
        "warnings": s.warnings, "elapsed_s": round(s.elapsed_s, 3),
    }


def _count(n: int, word: str) -> str:
    """'1 file', '2 files', '1,234 files'."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _summary_lines(s: SaveStats) -> list[str]:
    return [
        f"save {s.save_id} {s.status}: {_count(s.files, 'file')}, {human_bytes(s.bytes)}",
        f"  read {_count(s.files_read, 'file')} ({human_bytes(s.bytes_read)}), "
        f"borrowed {s.files_borrowed:,} unchanged ({human_bytes(s.bytes_borrowed)})",
        f"  new chunks {s.new_chunks:,}, {human_bytes(s.new_bytes_stored)} written",
        f"  warnings {s.warnings}, elapsed {s.elapsed_s:.1f} s",
    ]


# -- saves ------------------------------------------------------------------------------


@cli.command()
@click.option("--last", type=click.IntRange(1), default=None, help="Only the last N saves.")
@click.option("--hostname", default=None, help="Only saves of this host.")
@click.option("--subset", default=None, help="Only saves of this subset.")
@_format_options
@pass_ctx
def saves(ctx: Context, last: int | None, hostname: str | None, subset: str | None,
          fmt: str) -> None:
    """List the saves in the repository, oldest first.

    "written" is what the save itself added to the repository when it ran (new chunk
    files, compressed): a save that borrowed everything shows 0 B, and it stays so
    after the saves it borrowed from are expired ('stats' shows what each needs now).

    \b
    Examples:
      backshift -r /backup/repo saves --last 5
      backshift -r /backup/repo saves --format json | jq .id
    """
    from .ops.common import effective_status
    from .repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = repo.catalog.list_saves(hostname, subset)
    if last:
        rows = rows[-last:]
    if fmt == "table":
        headers = ["id", "hostname", "subset", "started", "finished", "status", "files",
                   "size", "written"]
        body = [[r.id, r.hostname, r.subset, local_time(r.started_ns),
                 local_time(r.finished_ns), effective_status(r, repo.path), f"{r.files:,}",
                 human_bytes(r.bytes),
                 human_bytes(r.new_bytes_stored)] for r in rows]
    else:
        headers = ["id", "hostname", "subset", "started", "finished", "status", "files",
                   "bytes", "bytes_read", "bytes_borrowed", "new_chunks", "new_bytes_stored",
                   "warnings", "tool_version"]
        body = [[r.id, r.hostname, r.subset, iso_time(r.started_ns), iso_time(r.finished_ns),
                 effective_status(r, repo.path), r.files, r.bytes, r.bytes_read, r.bytes_borrowed,
                 r.new_chunks, r.new_bytes_stored, r.warnings, r.tool_version] for r in rows]
    emit_lines(render(headers, body, fmt))


# -- expire, check, locks ----------------------------------------------------------------


def _lock_wait_option(f):
    return click.option("--lock-wait", default=0.0, show_default=True, metavar="SECONDS",
                        type=_FiniteFloat(0),
                        help="Wait this long for a locked repository before giving up.")(f)


def _copy_catalog(repo) -> bool:
    """Refresh the rotated catalog copy; a failure is a warning, the work itself is done."""
    from .ops.catalog_copy import make_copy
    try:
        make_copy(repo.path, repo.catalog)
    except Exception as e:  # noqa: BLE001 - any failure here must not undo a committed save
        cause = f"{os.fsdecode(e.filename)}: {e.strerror}" \
            if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        echo_err(f"warning: could not write a catalog copy: {cause} (the work itself is "
                 "committed)")
        return False
    return True


def _duration(option: str, text: str | None) -> int | None:
    from .retention import parse_duration
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


@cli.command()
@click.option("--keep-last", default=0, type=click.IntRange(0), metavar="N",
              help="Keep the N newest complete saves of each series.")
@click.option("--keep-hourly", default=0, type=click.IntRange(0), metavar="N",
              help="Keep the newest save of each of the last N hours that have one.")
@click.option("--keep-daily", default=0, type=click.IntRange(0), metavar="N",
              help="... of each of the last N days.")
@click.option("--keep-weekly", default=0, type=click.IntRange(0), metavar="N",
              help="... of each of the last N ISO weeks.")
@click.option("--keep-monthly", default=0, type=click.IntRange(0), metavar="N",
              help="... of each of the last N months.")
@click.option("--keep-yearly", default=0, type=click.IntRange(0), metavar="N",
              help="... of each of the last N years.")
@click.option("--keep-within", default=None, metavar="DURATION",
              help="Keep every save started less than DURATION ago (e.g. 14d).")
@click.option("--older-than", default=None, metavar="DURATION",
              help="Remove saves started more than DURATION ago (e.g. 90d, 12h, 2w).")
@click.option("--allow-empty-series", is_flag=True,
              help="Let the policy remove even the newest complete save of a series.")
@click.option("--backup", "--save", "save_ids", multiple=True, type=SAVE_ID, metavar="ID",
              help="Remove this save (repeatable), e.g. one made by mistake: instead of a "
                   "policy, and even the newest of its series. --save is an alias.")
@click.option("--hostname", default=None, help="Only saves of this host.")
@click.option("--subset", default=None, help="Only saves of this subset.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would go; change nothing.")
@_json_option
@_lock_wait_option
@pass_ctx
def expire(ctx: Context, keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
           keep_monthly: int, keep_yearly: int, keep_within: str | None,
           older_than: str | None, allow_empty_series: bool, save_ids: tuple[int, ...],
           hostname: str | None, subset: str | None, dry_run: bool, as_json: bool,
           lock_wait: float) -> None:
    """Remove saves a retention policy lets go, and the data only they used.

    Each hostname+subset series is judged on its own. Every save gets a line saying
    whether it is kept or removed and why (--dry-run prints the same lines). --backup ID
    removes just the saves named (a running one is kept).

    \b
    Examples:
      backshift -r /backup/repo expire --keep-daily 7 --keep-weekly 5 --keep-monthly 12
      backshift -r /backup/repo expire --older-than 90d --dry-run
      backshift -r /backup/repo expire --backup 42 --backup 43
    """
    from datetime import datetime

    from .ops.expire import decision_lines
    from .ops.expire import expire as run_expire
    from .repo import EXCLUSIVE, open_repository
    from .retention import Policy

    policy = Policy(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
                    keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                    keep_yearly=keep_yearly,
                    keep_within_s=_duration("--keep-within", keep_within),
                    older_than_s=_duration("--older-than", older_than),
                    allow_empty_series=allow_empty_series, within_text=keep_within or "",
                    older_text=older_than or "", remove_ids=frozenset(save_ids))
    if save_ids and (policy.has_keep_rules() or policy.older_than_s is not None):
        raise UsageError("--backup names the saves to remove: give it without --keep-* and "
                         "--older-than")
    if policy.is_empty():
        raise UsageError("expire needs a policy: --keep-last/-hourly/-daily/-weekly/-monthly/"
                         "-yearly N, --keep-within DURATION or --older-than DURATION; "
                         "or --backup ID")
    copied = True
    with open_repository(ctx.repo, EXCLUSIVE, operation="expire",
                         lock_wait_s=lock_wait) as repo:
        result = run_expire(repo, policy, hostname=hostname, subset=subset, dry_run=dry_run,
                            tz=datetime.now().astimezone().tzinfo)
        if not dry_run:
            copied = _copy_catalog(repo)
    if as_json:
        _print_json(_expire_dict(result))
        for err in result.unlink_errors:
            echo_err(f"warning: could not remove {err}")
        if result.unlink_errors or not copied:
            raise SystemExit(EXIT_WARNING)
        return
    verb = "would remove" if dry_run else "removed"
    if ctx.quiet:
        lines = []  # warnings below still go to stderr
    else:
        lines = decision_lines(result.decisions, local_time)
        lines.append(f"{verb} {result.saves_removed} save(s), {result.chunks_freed:,} "
                     f"chunk(s) ({human_bytes(result.bytes_freed)}), "
                     f"{result.orphans_removed:,} orphan chunk(s) "
                     f"({human_bytes(result.orphan_bytes)}), {result.temps_removed:,} "
                     "stale temp file(s)")
        if dry_run:
            lines.append("dry run: nothing was changed")
    emit_lines(lines)
    for err in result.unlink_errors:
        echo_err(f"warning: could not remove {err}")
    if result.checkpoint_error:
        echo_err("warning: expire is done and committed; only folding the catalog's "
                 f"write-ahead log into the catalog file failed ({result.checkpoint_error}): "
                 "nothing is lost, a later save or expire folds it")
    if result.unlink_errors or not copied or result.checkpoint_error:
        raise SystemExit(EXIT_WARNING)


def _print_json(obj: dict) -> None:
    import json
    click.echo(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def _expire_dict(result) -> dict:
    return {
        "dry_run": result.dry_run,
        "decisions": [{"save_id": d.save.id, "hostname": d.save.hostname,
                       "subset": d.save.subset, "started": iso_time(d.save.started_ns),
                       "status": d.save.status, "action": "keep" if d.keep else "remove",
                       "reasons": list(d.reasons)} for d in result.decisions],
        "saves_removed": result.saves_removed, "chunks_freed": result.chunks_freed,
        "bytes_freed": result.bytes_freed, "orphans_removed": result.orphans_removed,
        "orphan_bytes": result.orphan_bytes, "temps_removed": result.temps_removed,
        "unlink_errors": list(result.unlink_errors),
    }


def _check_dict(r, read_data: bool) -> dict:
    return {
        "problems": r.problem_count(),
        "catalog_problems": list(r.catalog_problems),
        "dead_saves": list(r.dead_saves),
        "chunk_problems": [
            {"chunk": p.sha256.hex(), "what": p.what,
             "used_by": [{"save_id": sid, "path": escape(path, True)}
                         for sid, path in p.users]}
            for p in sorted(r.chunk_problems.values(), key=lambda p: p.sha256)],
        "content_problems": list(r.content_problems),
        "quarantined": [sha.hex() for sha in r.quarantined],
        "repaired_saves": list(r.repaired_saves),
        "chunks_referenced": r.chunks_referenced, "orphans": r.orphans,
        "orphan_bytes": r.orphan_bytes, "temps": r.temps,
        "read_data": read_data, "chunks_verified": len(r.chunks_verified),
        "orphans_read": r.orphans_read, "contents_verified": r.contents_verified,
        "bytes_read": r.bytes_read,
        "catalog_copy_age_s": None if r.copy_age_s is None else round(r.copy_age_s, 1),
    }


def _parse_part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    n, _, t = text.partition("/")
    try:
        part = int(n), int(t)
    except ValueError:
        part = (0, 0)
    if not 1 <= part[0] <= part[1]:
        raise UsageError(f"--read-data-subset wants n/t with 1 <= n <= t, not {text!r}")
    return part


@cli.command()
@click.option("--read-data", is_flag=True,
              help="Also decompress and re-hash every chunk and verify file digests.")
@click.option("--read-data-subset", default=None, metavar="n/t",
              help="Like --read-data for the n-th of t parts (by chunk hash).")
@click.option("--repair", is_flag=True,
              help="Move damaged chunk files to REPO/quarantine/ so a later save of the "
                   "same data re-creates them; mark dead 'running' saves interrupted.")
@_json_option
@_lock_wait_option
@pass_ctx
def check(ctx: Context, read_data: bool, read_data_subset: str | None, repair: bool,
          as_json: bool, lock_wait: float) -> None:
    """Check the catalog and the chunk store; report damage grouped by chunk.

    Exit status 0: no problems; 1: warnings only (a dead 'running' save, or leftovers of
    dead processes: temp files, which expire removes); 10: damage found (listed on stdout).

    \b
    Examples:
      backshift -r /backup/repo check
      backshift -r /backup/repo check --read-data-subset 1/7   # one seventh a day
      backshift -r /backup/repo check --read-data --repair
    """
    from .errors import CheckFoundDamage
    from .ops.check import check as run_check
    from .ops.check import report_lines
    from .repo import EXCLUSIVE, READ_LOCKED, open_repository

    part = _parse_part(read_data_subset)
    read = read_data or part is not None
    mode = EXCLUSIVE if repair else READ_LOCKED
    with open_repository(ctx.repo, mode, operation="check", lock_wait_s=lock_wait) as repo:
        result = run_check(repo, read_data=read, part=part, repair=repair)
    if as_json:
        _print_json(_check_dict(result, read))
    elif result.problem_count() or not ctx.quiet:
        emit_lines(report_lines(result, read))
    if result.problem_count():
        raise CheckFoundDamage(result.problem_count())
    if result.warning_count():
        raise SystemExit(EXIT_WARNING)


@cli.command("break-lock")
@_json_option
@pass_ctx
def break_lock(ctx: Context, as_json: bool) -> None:
    """Remove lock records left by processes that are gone (e.g. on another host).

    Records of live processes on this host are kept (stop them instead). Only run it
    when you know the processes named in the lock message no longer run.

    \b
    Example:
      backshift -r /backup/repo break-lock
    """
    from .lock import break_lock as run_break_lock
    from .lock import describe

    path = os.path.abspath(ctx.repo)
    if not os.path.isdir(path):
        from .errors import RepositoryNotFound
        raise RepositoryNotFound(os.fsdecode(path))
    removed, kept = run_break_lock(path)
    if as_json:
        _print_json({"removed": removed, "kept": kept})
        return
    if ctx.quiet:
        return
    for rec in removed:
        click.echo(f"removed lock record: {describe(rec)}")
    for rec in kept:
        click.echo(f"kept lock record of a live process: {describe(rec)}")
    if not removed:
        click.echo("no stale lock records")


# -- reports --------------------------------------------------------------------------


class _SqlCommand(click.Command):
    """A STATEMENT that starts with a `--` comment line is the statement, not an option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = {o for p in self.params for o in (*p.opts, *p.secondary_opts)}
        texts = [a for a in args if a.startswith("--") and any(c.isspace() for c in a)
                 and a.split("=", 1)[0] not in known]
        if texts and "--" not in args:
            args = [a for a in args if a not in texts] + ["--", *texts]
        return super().parse_args(ctx, args)


def _read_statement(statement: str | None, file: str | None) -> str:
    """The SQL text: the argument, or FILE / stdin (`-`) read as UTF-8."""
    if (statement is None) == (file is None):
        raise UsageError("give one STATEMENT, `-` to read it from stdin, or --file FILE")
    if statement is not None and statement != "-":
        return statement
    name = "stdin" if file in (None, "-") else file
    try:
        if name == "stdin":
            data = sys.stdin.buffer.read()
        else:
            with open(os.fsencode(file), "rb") as f:
                data = f.read()
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: the SQL text is not UTF-8") from None


@cli.command(cls=_SqlCommand)
@click.argument("statement", required=False)
@click.option("--file", "-f", "file", default=None, metavar="FILE",
              help="Read the statement from FILE ('-': stdin) instead of the argument.")
@_format_options
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in the statement (repeatable); integers bind as numbers.")
@click.option("--timeout", type=_FiniteFloat(0.1), default=60.0, show_default=True,
              help="Stop the query after this many seconds.")
@click.option("--max-rows", type=click.IntRange(0), default=100_000, show_default=True,
              help="Print at most this many rows (0: no limit); stderr says when it cut.")
@pass_ctx
def sql(ctx: Context, statement: str | None, file: str | None, fmt: str,
        params: tuple[str, ...], timeout: float, max_rows: int) -> None:
    """Run one read-only SQL statement against the catalog's views and print its rows.

    The views saves, files, contents and chunks are described in docs/schema.md;
    docs/queries.md has ready-made queries. Writes, ATTACH and settings are refused.
    Sorts and temporary results stay in memory, at most 512 MiB (never in /var/tmp).
    STATEMENT `-` (or --file FILE) reads the statement from stdin (or FILE); comment
    lines before it (docs/queries.md's `-- params:`) are skipped.

    \b
    Examples:
      backshift -r /backup/repo sql "SELECT path, size FROM files WHERE save_id = 3
                                     ORDER BY size DESC LIMIT 10"
      backshift -r /backup/repo sql --param id=3 --format csv \\
          "SELECT path FROM files WHERE save_id = :id"
      backshift -r /backup/repo sql --param save=2 - < largest-files.sql
    """
    from .ops.query import QueryRunner, parse_params
    from .repo import READ, open_repository
    from .sqlguard import cap_memory

    statement = _read_statement(statement, file)
    bound = parse_params(params)
    cap_memory()  # before any connection opens
    with open_repository(ctx.repo, READ), QueryRunner(ctx.repo, timeout) as runner:
        result = runner.run(statement, bound, max_rows)
        headers = [escape(h.encode("utf-8", "surrogateescape")) for h in result.headers]
        emit_lines(render(headers, result.rows, fmt))
        if result.truncated:
            echo_err(f"backshift: output cut at {max_rows:,} rows (--max-rows)")


@cli.command()
@click.option("--backup", "save_id", type=SAVE_ID, default=None, metavar="ID",
              help="Only this save (and the repository line).")
@_format_options
@pass_ctx
def stats(ctx: Context, save_id: int | None, fmt: str) -> None:
    """Space used by the repository and by each save: files, bytes, dedup, compression.

    Dedup ratio is logical bytes over the distinct chunks' bytes; compression ratio is
    those bytes over what the chunk files take. "new" is what the save wrote.

    \b
    Examples:
      backshift -r /backup/repo stats
      backshift -r /backup/repo stats --backup 7 --format json
    """
    from .ops.report import stats as run_stats
    from .repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = run_stats(repo, save_id)
    if fmt == "table":
        headers = ["save", "series", "files", "size", "chunks", "unique stored", "dedup",
                   "compression", "new"]
        body = [[r.save_id if r.save_id is not None else "all", r.label, f"{r.files:,}",
                 human_bytes(r.logical_bytes), f"{r.chunks:,}", human_bytes(r.stored_bytes),
                 _ratio(r.dedup_ratio), _ratio(r.compression_ratio), human_bytes(r.new_bytes)]
                for r in rows]
    else:
        headers = ["save_id", "series", "files", "logical_bytes", "chunks", "chunk_bytes",
                   "stored_bytes", "dedup_ratio", "compression_ratio", "new_bytes"]
        body = [[r.save_id, r.label, r.files, r.logical_bytes, r.chunks, r.chunk_bytes,
                 r.stored_bytes, _round(r.dedup_ratio), _round(r.compression_ratio),
                 r.new_bytes] for r in rows]
    emit_lines(render(headers, body, fmt))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _diff_ids(backups: tuple[int, ...], args: tuple[str, ...]) -> tuple[int, int, bytes | None]:
    """OLD NEW [PATH] from `--backup OLD --backup NEW [PATH]` or the positional `OLD NEW
    [PATH]` (the older spelling, kept as an alias)."""
    if backups:
        if len(backups) != 2 or len(args) > 1:
            raise UsageError("diff wants --backup OLD --backup NEW, then an optional PATH")
        ids, rest = list(backups), args
    else:
        if len(args) not in (2, 3):
            raise UsageError("diff wants --backup OLD --backup NEW (or OLD NEW), then an "
                             "optional PATH")
        try:
            ids = [SAVE_ID.convert(a, None, None) for a in args[:2]]
        except click.BadParameter as e:
            raise UsageError(f"OLD_ID NEW_ID: {e.message}") from None
        rest = args[2:]
    return ids[0], ids[1], os.fsencode(rest[0]) if rest else None


@cli.command()
@click.argument("args", nargs=-1, metavar="[OLD_ID NEW_ID] [PATH]")
@click.option("--backup", "backups", multiple=True, type=SAVE_ID, metavar="ID",
              help="Give twice: the old save, then the new one (or OLD_ID NEW_ID).")
@_format_options
@pass_ctx
def diff(ctx: Context, args: tuple[str, ...], backups: tuple[int, ...], fmt: str) -> None:
    """What changed from save OLD_ID to save NEW_ID, one line per path (below PATH).

    Lines start with + (added), - (removed), C (content changed) or M (metadata
    changed, the fields in brackets).

    \b
    Examples:
      backshift -r /backup/repo diff --backup 6 --backup 7
      backshift -r /backup/repo diff 6 7 /home/alice --format json
    """
    from .ops.report import CHANGE_MARKS
    from .ops.report import diff as run_diff
    from .repo import READ, open_repository

    old_id, new_id, path = _diff_ids(backups, args)

    with open_repository(ctx.repo, READ) as repo:
        changes = run_diff(repo, old_id, new_id, path)
        if fmt == "table":
            emit_lines(f"{CHANGE_MARKS[c.kind]} {escape(c.path)}"
                       + (f"  [{', '.join(c.fields)}]" if c.fields else "") for c in changes)
        else:
            rows = ([c.kind, c.path, ",".join(c.fields)] for c in changes)
            emit_lines(render(["change", "path", "fields"], rows, fmt))


@cli.command()
@click.argument("path", type=click.Path(path_type=bytes))
@click.option("--hostname", default=None, help="Only saves of this host.")
@click.option("--subset", default=None, help="Only saves of this subset.")
@_format_options
@pass_ctx
def history(ctx: Context, path: bytes, hostname: str | None, subset: str | None,
            fmt: str) -> None:
    """Every save that holds PATH, oldest first, and whether its content changed.

    PATH is taken as list and tar take it (leading '/' optional, so a name pasted from
    `list` works), else relative to the current directory. Exit 9 when no save holds it.

    \b
    Examples:
      backshift -r /backup/repo history /etc/fstab
      backshift -r /backup/repo history /home/alice/notes.txt --subset home --format json
    """
    from .errors import NothingMatches
    from .ops.report import history as run_history
    from .repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = run_history(repo, path, hostname, subset)
    if not rows:
        raise NothingMatches(escape(path), "any save" if hostname is None and subset is None
                             else "the saves of that --hostname/--subset")
    headers = ["save_id", "hostname", "subset", "started", "type", "size", "mtime", "digest",
               "changed"]
    if fmt == "table":
        body = [[r.save_id, r.hostname, r.subset, local_time(r.started_ns), r.type,
                 f"{r.size:,}", local_time(r.mtime_ns), r.digest or "",
                 "yes" if r.changed else "no"] for r in rows]
    else:
        body = [[r.save_id, r.hostname, r.subset, iso_time(r.started_ns), r.type, r.size,
                 iso_time(r.mtime_ns), r.digest, r.changed] for r in rows]
    emit_lines(render(headers, body, fmt))


@cli.command()
@click.argument("glob", type=click.Path(path_type=bytes))
@click.option("--backup", "save_id", type=SAVE_ID, default=None, metavar="ID",
              help="Only this save.")
@click.option("--since", default=None, metavar="DATE",
              help="Only saves started at or after DATE (2026-01-31 or '2026-01-31 12:00').")
@_format_options
@pass_ctx
def find(ctx: Context, glob: bytes, save_id: int | None, since: str | None, fmt: str) -> None:
    """Paths matching GLOB in every save, newest save first.

    A GLOB with a '/' matches the whole path (there '*' also matches '/'); without one,
    it matches the last component (leading '/' optional, as in tar). Quote it so the
    shell leaves it alone. Exit 9 when nothing matches.

    \b
    Examples:
      backshift -r /backup/repo find '*.pdf'
      backshift -r /backup/repo find '/home/alice/*.txt' --since 2026-01-01
    """
    from .ops.report import find as run_find
    from .ops.report import parse_since
    from .repo import READ, open_repository

    since_ns = parse_since(since) if since else None
    headers = ["save_id", "hostname", "subset", "started", "path", "type", "size", "mtime"]
    import itertools

    from .errors import NothingMatches

    with open_repository(ctx.repo, READ) as repo:
        found = run_find(repo, glob, save_id, since_ns)
        first = next(found, None)
        if first is None:
            where = f"save {save_id}" if save_id is not None else "any save"
            raise NothingMatches(f"'{escape(glob)}'", where + (f" since {since}" if since else ""))
        found = itertools.chain([first], found)
        if fmt == "table":
            body = ([f.save_id, f.hostname, f.subset, local_time(f.started_ns), f.path, f.type,
                     f"{f.size:,}", local_time(f.mtime_ns)] for f in found)
        else:
            body = ([f.save_id, f.hostname, f.subset, iso_time(f.started_ns), f.path, f.type,
                     f.size, iso_time(f.mtime_ns)] for f in found)
        emit_lines(render(headers, body, fmt))


# -- listing and tar --


def _report(level: str, msg: str) -> None:
    echo_err(f"backshift: {level}: {msg}")


def _finish(problems, save_id: int | None = None, incomplete: bool = False) -> None:
    """Exit status after a listing or tar stream: damage 10, a selector that matched
    nothing 9 (as GNU tar's "Not found in archive"), warnings (or a save that is not
    complete, named by id) 1."""
    from .errors import DataDamaged, NothingMatches

    if problems.damaged or problems.refused:
        parts = []
        if problems.damaged:
            parts.append(f"{problems.damaged} member(s) damaged (padded with zeros)")
        if problems.refused:
            parts.append(f"{problems.refused} catalog row(s) refused")
        raise DataDamaged("; ".join(parts) + " (see above)")
    if getattr(problems, "unmatched", ()):
        raise NothingMatches(", ".join(f"'{escape(g)}'" for g in problems.unmatched),
                             f"save {save_id}")
    if problems.warnings or incomplete:
        raise SystemExit(EXIT_WARNING)


def _series_options(f):
    """--hostname/--subset: which saves `--backup latest` (and an id) may name."""
    f = click.option("--subset", default=None,
                     help="Only saves of this subset ('latest': its newest complete one).")(f)
    return click.option("--hostname", default=None,
                        help="Only saves of this host ('latest': its newest complete one).")(f)


def _resolve_backup(catalog, backup: str, hostname: str | None, subset: str | None):
    """The save --backup names; a warning on stderr when it is not complete (then the
    command exits 1): (save row, whether it was not complete)."""
    from .ops.common import incomplete_note, resolve_save

    row = resolve_save(catalog, backup, hostname, subset)
    note = incomplete_note(row)
    if note is not None:
        _report("warning", note)
    return row, note is not None


@cli.command("list")
@click.option("--backup", required=True, metavar="ID|latest", callback=_save_spec,
              help="The save to list ('latest': the newest complete save).")
@_series_options
@click.option("--dir", "directory", default=None, metavar="PATH",
              help="Only this directory (with its parents), leading '/' optional.")
@click.option("--no-recursive", is_flag=True, help="With --dir: only its own entries.")
@click.option("-v", "--verbose", is_flag=True, help="Long lines, as `tar -tvf` prints them.")
@_format_options
@pass_ctx
def list_cmd(ctx: Context, backup: str, hostname: str | None, subset: str | None,
             directory: str | None, no_recursive: bool, verbose: bool, fmt: str) -> None:
    """List the members of a save, exactly as `tar -tf` / `tar -tvf` would.

    \b
    Examples:
      backshift -r /backup/repo list --backup latest -v
      backshift -r /backup/repo list --backup 12 --dir /home/ann --no-recursive
      backshift -r /backup/repo list --backup latest --format json | jq .path
    """
    from .ops.listing import COLUMNS, list_save, record, write_lines
    from .ops.select import Problems, Selection, normal_path
    from .repo import READ, open_repository

    if no_recursive and directory is None:
        raise UsageError("--no-recursive needs --dir PATH")
    paths = (normal_path(os.fsencode(directory)),) if directory is not None else ()
    sel = Selection(paths=paths, recursive=not no_recursive)
    problems = Problems(_report)
    with open_repository(ctx.repo, READ) as repo:
        save_row, incomplete = _resolve_backup(repo.catalog, backup, hostname, subset)
        if fmt == "table":
            sys.stdout.flush()
            write_lines(repo.catalog, save_row.id, sel, problems, verbose,
                        sys.stdout.buffer.write)
        else:
            members = list_save(repo.catalog, save_row.id, sel, problems)
            emit_lines(render(COLUMNS, (record(m) for m in members), fmt))
    _finish(problems, save_row.id, incomplete)


@cli.command("tar")
@click.argument("selectors", nargs=-1)
@click.option("--backup", required=True, metavar="ID|latest", callback=_save_spec,
              help="The save to restore ('latest': the newest complete save).")
@_series_options
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out matches and their subtrees (repeatable). A glob with '/' "
                   "matches the whole member name, otherwise the last component.")
@click.option("--where", default=None, metavar="SQL",
              help="Only members for which this predicate over the `files` view holds.")
@click.option("-o", "--output", default="-", metavar="FILE|-", show_default=True,
              help="Write the stream to FILE instead of stdout.")
@click.option("--no-sparse", is_flag=True,
              help="Write every file whole, zeros included. By default a file with long "
                   "runs of zeros is a GNU sparse 1.0 member, which GNU tar, bsdtar and "
                   "Python's tarfile restore with holes; older readers may not know it.")
@click.option("--no-xattrs", is_flag=True,
              help="Leave out extended attributes and POSIX ACLs. By default they go in pax "
                   "records as GNU tar writes them (SCHILY.xattr.*, SCHILY.acl.*): restore "
                   "with `tar --xattrs --xattrs-include='*' --acls -xpf -` or "
                   "`bsdtar --xattrs --acls -xpf -`.")
@pass_ctx
def tar_cmd(ctx: Context, selectors: tuple[str, ...], backup: str, hostname: str | None,
            subset: str | None, exclude: tuple[str, ...], where: str | None, output: str,
            no_sparse: bool, no_xattrs: bool) -> None:
    """Write a save, or part of it, as one POSIX (pax) tar stream: the restore.

    SELECTORs are paths (each with its subtree, leading '/' optional) or globs over whole
    member names ('*' and '**' both match across '/'); a name that exists as it is
    (`report[1].txt`) is taken literally. Parent directories of what is selected come
    first, so `tar -xp` restores their modes and times. A path not in the save stops
    before any output; a glob that matched nothing is exit 9 after the stream, as GNU
    tar's "Not found in archive".

    \b
    Examples:
      backshift -r /backup/repo tar --backup latest | tar -xpf - -C /restore
      backshift -r /backup/repo tar --backup 12 home/ann '*.pdf' -o ann.tar
      backshift -r /backup/repo tar --backup latest --where "size > 1e9" | tar -tvf -
    """
    from .ops.select import Selection, parse_selectors
    from .ops.tarproduce import tar_save

    paths, globs = parse_selectors([os.fsencode(s) for s in selectors])
    sel = Selection(paths=paths, globs=globs,
                    excludes=tuple(os.fsencode(e) for e in exclude), where=where)
    if output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a tar stream to a terminal: "
                         "pipe it into tar or give -o FILE")
    import contextlib

    from .repo import READ_CHUNKS, open_repository

    # a shared lock (no record, nothing written) keeps expire from deleting chunks mid-restore
    with open_repository(ctx.repo, READ_CHUNKS) as repo, contextlib.ExitStack() as stack:
        save_row, incomplete = _resolve_backup(repo.catalog, backup, hostname, subset)

        def open_out():
            if output == "-":
                sys.stdout.flush()
                return sys.stdout.buffer
            return stack.enter_context(open(os.fsencode(output), "wb"))

        problems = tar_save(repo, save_row.id, sel, open_out, _report, not no_sparse,
                            not no_xattrs)
    _finish(problems, save_row.id, incomplete)


@cli.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=bytes))
@click.option("--backup", default=None, metavar="ID|latest", callback=_save_spec,
              help="Mount only this save, its tree at MOUNTPOINT.")
@_lock_wait_option
@pass_ctx
def mount_cmd(ctx: Context, mountpoint: bytes, backup: str | None, lock_wait: float) -> None:
    """Browse the saves as a read-only filesystem (FUSE), until unmounted or Ctrl-C.

    MOUNTPOINT/HOST/SUBSET/ID/ holds each save's paths (/home/ann is ID/home/ann);
    MOUNTPOINT/HOST/SUBSET/latest links to the newest complete save. Saves made meanwhile
    appear; expire waits or refuses while it is mounted (the shared lock). Needs the
    optional extra: pip install 'backshift[mount]'.

    \b
    Examples:
      backshift -r /backup/repo mount /mnt/backup      # then: fusermount3 -u /mnt/backup
      backshift -r /backup/repo mount /mnt/b --backup latest
    """
    from .ops.common import resolve_save
    from .ops.mount import check_fuse, check_mountpoint, mount_repository
    from .repo import READ_LOCKED, open_repository

    check_fuse()
    check_mountpoint(mountpoint)
    with open_repository(ctx.repo, READ_LOCKED, operation="mount",
                         lock_wait_s=lock_wait) as repo:
        save_id = resolve_save(repo.catalog, backup).id if backup is not None else None
        mount_repository(repo, mountpoint, save_id, echo_err)


# -- import-legacy ----------------------------------------------------------------------


@cli.command("import-legacy")
@click.argument("savedir", type=click.Path(path_type=bytes))
@click.option("--link", "method", flag_value="link", default=None,
              help="Hard-link the legacy chunk files [default when on the same filesystem].")
@click.option("--copy", "method", flag_value="copy",
              help="Copy the legacy chunk files (the save directory stays independent).")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr [default: when stderr is a terminal].")
@_json_option
@_lock_wait_option
@pass_ctx
def import_legacy_cmd(ctx: Context, savedir: bytes, method: str | None,
                      progress: bool | None, as_json: bool, lock_wait: float) -> None:
    """Import every save of a backshift 1.x save directory (idempotent, resumable).

    Each legacy save becomes a save of its hostname and subset; its chunks are verified
    and hard-linked (or copied) into the repository. Saves imported before are skipped,
    so running it again finishes an interrupted import.

    \b
    Examples:
      backshift -r /backup/repo import-legacy /backup/old-savedir
      backshift -r /backup/repo import-legacy /mnt/usb/savedir --copy

    Exit status 1 means some files were not imported (a legacy chunk missing or damaged,
    named on stderr).
    """
    from .ops.import_legacy import import_legacy
    from .repo import WRITE, open_repository

    def warn(msg: str) -> None:
        _clear_progress()
        echo_err(f"warning: {msg}")

    show = ctx.progress(progress)
    with open_repository(ctx.repo, WRITE, operation="import-legacy",
                         lock_wait_s=lock_wait) as repo:
        stats = import_legacy(repo, savedir, method, warn,
                              _import_progress_printer if show else None)
    _clear_progress()
    if as_json:
        fields = ("saves_found", "saves_imported", "saves_skipped", "files", "bytes",
                  "files_skipped", "chunks_linked", "chunks_copied", "chunks_present",
                  "chunks_bad", "warnings", "bytes_read", "method")
        out = {name: getattr(stats, name) for name in fields}
        out["elapsed_s"] = round(stats.elapsed_s, 3)
        out["imported"] = [{"legacy": lid, "save_id": sid} for lid, sid in stats.imported]
        _print_json(out)
    elif not ctx.quiet:
        for lid, save_id in stats.imported:
            click.echo(f"imported {lid} as save {save_id}")
        click.echo(
            f"{stats.saves_imported} saves imported, {stats.saves_skipped} already imported, "
            f"{_count(stats.files, 'file')} ({human_bytes(stats.bytes)}), "
            f"{stats.files_skipped} skipped")
        click.echo(
            f"chunks: {stats.chunks_linked:,} linked, {stats.chunks_copied:,} copied, "
            f"{stats.chunks_present:,} already present, {stats.chunks_bad:,} missing or "
            f"damaged; {stats.elapsed_s:.1f} s")
    if stats.warnings or stats.chunks_bad:
        raise SystemExit(EXIT_WARNING)


def _import_progress_printer(stats) -> None:
    """One live line on stderr for import-legacy (cleared like save's)."""
    global _progress_shown
    rate = stats.bytes_read / stats.elapsed_s if stats.elapsed_s > 0 else 0
    sys.stderr.write(
        f"\r\x1b[Klegacy save {stats.save_number}/{stats.saves_found}, {stats.phase}: "
        f"{stats.entries:,} entries; {human_bytes(stats.bytes_read)} of chunks read "
        f"({human_bytes(rate)}/s)")
    sys.stderr.flush()
    _progress_shown = True


# -- serve ------------------------------------------------------------------------------


@cli.command()
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
    from .remote.server import Policy, serve_stdio

    policy = Policy(restrict_to=restrict, append_only=append_only)
    raise SystemExit(serve_stdio(policy, _serve_inspect, _serve_execute))


def _run_remote(group: click.Group, ctx: click.Context) -> int | None:
    """Run the command on the server of an ssh:// repository; None if it runs here."""
    protected = ctx.__dict__.get("_protected_args")
    args = [*(ctx.protected_args if protected is None else protected), *ctx.args]
    if not args or args[0] == "serve":
        return None
    from .remote.client import check_remote, run_command, without_option

    name, cmd, rest = group.resolve_command(ctx, args)
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


# -- shared options ---------------------------------------------------------------------


def _repo_after_command(ctx: click.Context, _param, value: str | None) -> None:
    """`backshift saves -r REPO`: the subcommand's -r overrides the group's (and the env)."""
    if value is not None:
        ctx.find_object(Context).repo_arg = value


def _flag_after_command(ctx: click.Context, param, value: bool) -> None:
    if value:
        setattr(ctx.find_object(Context), param.name.removeprefix("shared_"), True)


def _add_shared_options(group: click.Group) -> None:
    for command in group.commands.values():
        if command.name == "serve":  # the far end: its repository comes from the client
            continue
        have = {o for p in command.params for o in p.opts}
        if "--repo" not in have:
            command.params.append(click.Option(
                ["-r", "--repo"], metavar="REPO", expose_value=False,
                callback=_repo_after_command,
                help="Repository directory; also accepted before the command."))
        if "--quiet" not in have:
            command.params.append(click.Option(
                ["-q", "--quiet", "shared_quiet"], is_flag=True, expose_value=False,
                callback=_flag_after_command, help="Only warnings and errors."))
        if "--verbose" not in have:
            command.params.append(click.Option(
                ["-v", "--verbose", "shared_verbose"], is_flag=True, expose_value=False,
                callback=_flag_after_command,
                help="Progress off a terminal too, and the time taken."))


_add_shared_options(cli)


# -- entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The console script: run the CLI and exit with its code."""
    try:
        code = run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while run() was handling the outcome
        code = EXIT_INTERRUPTED
    # The code is decided. A Ctrl-C while the process winds down (the reader processes are
    # joined at exit) ends it at once with that code, not as a death by SIGINT.
    signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(code))
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and translate every outcome into one exit code (the only place)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    code = EXIT_OK
    try:
        cli.main(args=argv, prog_name="backshift", standalone_mode=False)
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
        _clear_progress()
        echo_err(f"backshift: error: {e.message()}")
        code = e.exit_code
    except KeyboardInterrupt:
        _clear_progress()
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
        _clear_progress()
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


