"""The commands that report on a repository without changing it: saves, sql, stats, diff,
history and find; each renders its rows (views.py) as a table, JSON lines or CSV.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import UsageError
from ..pathcodec import escape
from ..render import render
from .app import Context, pass_ctx
from .options import SAVE_ID, FiniteFloat, backup_id_option, filter_options, format_options
from .views import (
    DIFF_HEADERS,
    FIND_HEADERS,
    HISTORY_HEADERS,
    diff_lines,
    diff_rows,
    echo_err,
    emit_lines,
    find_rows,
    history_rows,
    saves_rows,
    stats_rows,
)


@click.command()
@click.option("--last", type=click.IntRange(1), default=None, help="Only the last N saves.")
@filter_options
@format_options
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
    from ..ops.common import effective_status
    from ..repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = repo.catalog.list_saves(hostname, subset)
    if last:
        rows = rows[-last:]
    headers, body = saves_rows(rows, fmt, lambda r: effective_status(r, repo.path))
    emit_lines(render(headers, body, fmt))



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


@click.command(cls=_SqlCommand)
@click.argument("statement", required=False)
@click.option("--file", "-f", "file", default=None, metavar="FILE",
              help="Read the statement from FILE ('-': stdin) instead of the argument.")
@format_options
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in the statement (repeatable); integers bind as numbers.")
@click.option("--timeout", type=FiniteFloat(0.1), default=60.0, show_default=True,
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
    from ..ops.query import QueryRunner, parse_params
    from ..repo import READ, open_repository
    from ..sqlguard import cap_memory

    statement = _read_statement(statement, file)
    bound = parse_params(params)
    cap_memory()  # before any connection opens
    with open_repository(ctx.repo, READ), QueryRunner(ctx.repo, timeout) as runner:
        result = runner.run(statement, bound, max_rows)
        headers = [escape(h.encode("utf-8", "surrogateescape")) for h in result.headers]
        emit_lines(render(headers, result.rows, fmt))
        if result.truncated:
            echo_err(f"backshift: output cut at {max_rows:,} rows (--max-rows)")


@click.command()
@backup_id_option("Only this save (and the repository line).")
@format_options
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
    from ..ops.report import stats as run_stats
    from ..repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = run_stats(repo, save_id)
    headers, body = stats_rows(rows, fmt)
    emit_lines(render(headers, body, fmt))


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


@click.command()
@click.argument("args", nargs=-1, metavar="[OLD_ID NEW_ID] [PATH]")
@click.option("--backup", "backups", multiple=True, type=SAVE_ID, metavar="ID",
              help="Give twice: the old save, then the new one (or OLD_ID NEW_ID).")
@format_options
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
    from ..ops.report import CHANGE_MARKS
    from ..ops.report import diff as run_diff
    from ..repo import READ, open_repository

    old_id, new_id, path = _diff_ids(backups, args)

    with open_repository(ctx.repo, READ) as repo:
        changes = run_diff(repo, old_id, new_id, path)
        if fmt == "table":
            emit_lines(diff_lines(changes, CHANGE_MARKS))
        else:
            emit_lines(render(DIFF_HEADERS, diff_rows(changes), fmt))


@click.command()
@click.argument("path", type=click.Path(path_type=bytes))
@filter_options
@format_options
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
    from ..errors import NothingMatches
    from ..ops.report import history as run_history
    from ..repo import READ, open_repository

    with open_repository(ctx.repo, READ) as repo:
        rows = run_history(repo, path, hostname, subset)
    if not rows:
        raise NothingMatches(escape(path), "any save" if hostname is None and subset is None
                             else "the saves of that --hostname/--subset")
    emit_lines(render(HISTORY_HEADERS, history_rows(rows, fmt), fmt))


@click.command()
@click.argument("glob", type=click.Path(path_type=bytes))
@backup_id_option("Only this save.")
@click.option("--since", default=None, metavar="DATE",
              help="Only saves started at or after DATE (2026-01-31 or '2026-01-31 12:00').")
@format_options
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
    from ..ops.report import find as run_find
    from ..ops.report import parse_since
    from ..repo import READ, open_repository

    since_ns = parse_since(since) if since else None
    import itertools

    from ..errors import NothingMatches

    with open_repository(ctx.repo, READ) as repo:
        found = run_find(repo, glob, save_id, since_ns)
        first = next(found, None)
        if first is None:
            where = f"save {save_id}" if save_id is not None else "any save"
            raise NothingMatches(f"'{escape(glob)}'", where + (f" since {since}" if since else ""))
        found = itertools.chain([first], found)
        emit_lines(render(FIND_HEADERS, find_rows(found, fmt), fmt))
