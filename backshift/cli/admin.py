"""The commands that create, check and maintain a repository: init, expire, check,
break-lock and import-legacy (and the catalog copy a write command refreshes after it).
"""

from __future__ import annotations

import os

import click

from ..errors import EXIT_WARNING, UsageError
from ..pathcodec import escape
from ..render import local_time
from .app import Context, pass_ctx
from .options import SAVE_ID, filter_options, json_option, lock_wait_option, progress_option
from .views import (
    check_dict,
    echo_err,
    emit_lines,
    expire_dict,
    expire_total,
    import_dict,
    import_lines,
    print_json,
)

# ChunkerParams' defaults, spelled out so that start-up does not build model's dataclasses
# (tests/cli/test_cli_basics.py holds them equal).
DEFAULT_CHUNK_MIN = 256 * 1024
DEFAULT_CHUNK_AVG = 1024 * 1024
DEFAULT_CHUNK_MAX = 4 * 1024 * 1024
# The page cache of check's and expire's catalog connection: their passes read each page
# about once, and the 64 MiB default was most of their memory (bench/memory.py).
STREAMING_CACHE_KIB = 16 * 1024


@click.command()
@click.option("--chunk-min", default=DEFAULT_CHUNK_MIN, show_default=True,
              help="Smallest chunk in bytes.")
@click.option("--chunk-avg", default=DEFAULT_CHUNK_AVG, show_default=True,
              help="Average chunk in bytes.")
@click.option("--chunk-max", default=DEFAULT_CHUNK_MAX, show_default=True,
              help="Largest chunk in bytes.")
@click.option("--zstd-level", default=3, show_default=True, type=click.IntRange(1, 19),
              help="zstd compression level for new chunks.")
@click.option("--chunks", "chunks_url", default=None, metavar="s3://BUCKET[/PREFIX]",
              help="Keep the chunks in this S3-compatible bucket (it must exist; endpoint "
                   "and credentials from the AWS_* environment, never stored). REPO holds "
                   "the catalog and locks.")
@click.option("--recover", "recover_url", default=None, metavar="s3://BUCKET[/PREFIX]",
              help="Rebuild REPO from the newest catalog copy in this bucket (after losing "
                   "the repository directory).")
@json_option
@pass_ctx
def init(ctx: Context, chunk_min: int, chunk_avg: int, chunk_max: int, zstd_level: int,
         chunks_url: str | None, recover_url: str | None, as_json: bool) -> None:
    """Create a new, empty repository.

    The chunker parameters and compression are recorded in the catalog; every later
    save uses them. With --chunks the chunks go to an object store: init first checks
    that it can PUT, GET, LIST and DELETE a probe object there.

    \b
    Examples:
      backshift -r /backup/repo init
      backshift -r /backup/repo init --chunks s3://backups/web1
      backshift -r /backup/repo init --recover s3://backups/web1
    """
    from ..model import MAX_CHUNK_LENGTH, ChunkerParams
    from ..repo import init_repository, recover_repository

    where = escape(os.path.abspath(ctx.repo))
    if recover_url is not None:
        if chunks_url is not None:
            raise UsageError("--recover and --chunks exclude each other (--recover takes "
                             "the chunk location from the bucket's catalog copy)")
        key = recover_repository(ctx.repo, recover_url)
        if as_json:
            print_json({"repository": where, "recovered_from": key})
        elif not ctx.quiet:
            echo_err(f"recovered repository {where} from {key}")
        return
    if not 64 <= chunk_min < chunk_avg < chunk_max <= MAX_CHUNK_LENGTH:
        raise UsageError("need 64 <= --chunk-min < --chunk-avg < --chunk-max <= 16 MiB")
    params = ChunkerParams(min_size=chunk_min, avg_size=chunk_avg, max_size=chunk_max)
    init_repository(ctx.repo, params, zstd_level, chunks_url)
    if as_json:
        print_json({"repository": where, "chunk_min": chunk_min, "chunk_avg": chunk_avg,
                    "chunk_max": chunk_max, "zstd_level": zstd_level,
                    **({"chunks": chunks_url} if chunks_url else {})})
    elif not ctx.quiet:
        echo_err(f"created repository {where}" + (f", chunks in {chunks_url}"
                                                   if chunks_url else ""))


def copy_catalog(repo) -> bool:
    """Refresh the rotated catalog copy; a failure is a warning, the work itself is done."""
    from ..ops.catalog_copy import make_copy
    try:
        make_copy(repo.path, repo.catalog, upload=repo.copy_upload)
    except Exception as e:  # noqa: BLE001 - any failure here must not undo a committed save
        cause = f"{os.fsdecode(e.filename)}: {e.strerror}" \
            if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        echo_err(f"warning: could not write a catalog copy: {cause} (the work itself is "
                 "committed)")
        return False
    return True


def _duration(option: str, text: str | None) -> int | None:
    from ..retention import parse_duration
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


@click.command()
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
@filter_options
@click.option("--dry-run", "-n", is_flag=True, help="Show what would go; change nothing.")
@json_option
@lock_wait_option
@progress_option
@pass_ctx
def expire(ctx: Context, keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
           keep_monthly: int, keep_yearly: int, keep_within: str | None,
           older_than: str | None, allow_empty_series: bool, save_ids: tuple[int, ...],
           hostname: str | None, subset: str | None, dry_run: bool, as_json: bool,
           lock_wait: float, progress: bool | None) -> None:
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

    from ..ops.expire import decision_lines
    from ..ops.expire import expire as run_expire
    from ..repo import EXCLUSIVE, open_repository
    from ..retention import Policy

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
        repo.catalog.limit_cache(STREAMING_CACHE_KIB)
        result = run_expire(repo, policy, hostname=hostname, subset=subset, dry_run=dry_run,
                            tz=datetime.now().astimezone().tzinfo,
                            progress=ctx.line.expire if ctx.progress(progress) else None)
        ctx.line.finish()
        if not dry_run:
            copied = copy_catalog(repo)
    if as_json:
        print_json(expire_dict(result))
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
        lines.append(expire_total(result, verb))
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


@click.command()
@click.option("--read-data", is_flag=True,
              help="Also decompress and re-hash every chunk and verify file digests.")
@click.option("--read-data-subset", default=None, metavar="n/t",
              help="Like --read-data for the n-th of t parts (by chunk hash).")
@click.option("--repair", is_flag=True,
              help="Move damaged chunk files to REPO/quarantine/ (objects to "
                   "PREFIX/quarantine/ in a bucket) so a later save of the same data "
                   "re-creates them; mark dead 'running' saves interrupted.")
@json_option
@lock_wait_option
@progress_option
@pass_ctx
def check(ctx: Context, read_data: bool, read_data_subset: str | None, repair: bool,
          as_json: bool, lock_wait: float, progress: bool | None) -> None:
    """Check the catalog and the chunk store; report damage grouped by chunk.

    Exit status 0: no problems; 1: warnings only (a dead 'running' save, or leftovers of
    dead processes: temp files, which expire removes); 10: damage found (listed on stdout).

    \b
    Examples:
      backshift -r /backup/repo check
      backshift -r /backup/repo check --read-data-subset 1/7   # one seventh a day
      backshift -r /backup/repo check --read-data --repair
    """
    from ..errors import CheckFoundDamage
    from ..ops.check import check as run_check
    from ..ops.check import report_lines
    from ..repo import EXCLUSIVE, READ_LOCKED, open_repository

    part = _parse_part(read_data_subset)
    read = read_data or part is not None
    mode = EXCLUSIVE if repair else READ_LOCKED
    with open_repository(ctx.repo, mode, operation="check", lock_wait_s=lock_wait) as repo:
        repo.catalog.limit_cache(STREAMING_CACHE_KIB)
        result = run_check(repo, read_data=read, part=part, repair=repair,
                           progress=_check_progress(ctx) if ctx.progress(progress) else None)
    ctx.line.finish()
    if as_json:
        print_json(check_dict(result, read))
    elif result.problem_count() or not ctx.quiet:
        emit_lines(report_lines(result, read))
    if result.problem_count():
        raise CheckFoundDamage(result.problem_count())
    if result.warning_count():
        raise SystemExit(EXIT_WARNING)


def _check_progress(ctx: Context):
    import time
    started = time.monotonic()
    return lambda step, done, total, r: ctx.line.check(step, done, total, r,
                                                        time.monotonic() - started)


@click.command("break-lock")
@json_option
@pass_ctx
def break_lock(ctx: Context, as_json: bool) -> None:
    """Remove lock records left by processes that are gone (e.g. on another host).

    Records of live processes on this host are kept (stop them instead). Only run it
    when you know the processes named in the lock message no longer run.

    \b
    Example:
      backshift -r /backup/repo break-lock
    """
    from ..lock import break_lock as run_break_lock
    from ..lock import describe

    path = os.path.abspath(ctx.repo)
    if not os.path.isdir(path):
        from ..errors import RepositoryNotFound
        raise RepositoryNotFound(os.fsdecode(path))
    removed, kept = run_break_lock(path)
    if as_json:
        print_json({"removed": removed, "kept": kept})
        return
    if ctx.quiet:
        return
    for rec in removed:
        click.echo(f"removed lock record: {describe(rec)}")
    for rec in kept:
        click.echo(f"kept lock record of a live process: {describe(rec)}")
    if not removed:
        click.echo("no stale lock records")


@click.command("import-legacy")
@click.argument("savedir", type=click.Path(path_type=bytes))
@click.option("--link", "method", flag_value="link", default=None,
              help="Hard-link the legacy chunk files [default when on the same filesystem].")
@click.option("--copy", "method", flag_value="copy",
              help="Copy the legacy chunk files (the save directory stays independent).")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr [default: when stderr is a terminal].")
@json_option
@lock_wait_option
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
    from ..ops.import_legacy import import_legacy
    from ..repo import WRITE, open_repository

    def warn(msg: str) -> None:
        ctx.line.clear()
        echo_err(f"warning: {msg}")

    show = ctx.progress(progress)
    with open_repository(ctx.repo, WRITE, operation="import-legacy",
                         lock_wait_s=lock_wait) as repo:
        stats = import_legacy(repo, savedir, method, warn,
                              ctx.line.import_legacy if show else None)
    ctx.line.finish()
    if as_json:
        print_json(import_dict(stats))
    elif not ctx.quiet:
        for line in import_lines(stats):
            click.echo(line)
    if stats.warnings or stats.chunks_bad:
        raise SystemExit(EXIT_WARNING)


