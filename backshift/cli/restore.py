"""The commands that read a save back: list (as `tar -tf` prints it), tar (the restore,
one pax stream) and mount (a read-only FUSE view); their exit status from what they met.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_WARNING, UsageError
from ..pathcodec import escape
from ..render import render
from .app import Context, pass_ctx
from .options import (
    backup_spec_option,
    format_options,
    lock_wait_option,
    progress_option,
    series_options,
)
from .views import echo_err, emit_lines, report


def _finish(problems, save_id: int | None = None, incomplete: bool = False) -> None:
    """Exit status after a listing or tar stream: damage 10, a selector that matched
    nothing 9 (as GNU tar's "Not found in archive"), warnings (or a save that is not
    complete, named by id) 1."""
    from ..errors import DataDamaged, NothingMatches

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



def _resolve_backup(catalog, backup: str, hostname: str | None, subset: str | None):
    """The save --backup names; a warning on stderr when it is not complete (then the
    command exits 1): (save row, whether it was not complete)."""
    from ..ops.common import incomplete_note, resolve_save

    row = resolve_save(catalog, backup, hostname, subset)
    note = incomplete_note(row)
    if note is not None:
        report("warning", note)
    return row, note is not None


@click.command("list")
@backup_spec_option("The save to list ('latest': the newest complete save).")
@series_options
@click.option("--dir", "directory", default=None, metavar="PATH",
              help="Only this directory (with its parents), leading '/' optional.")
@click.option("--no-recursive", is_flag=True, help="With --dir: only its own entries.")
@click.option("-v", "--verbose", is_flag=True, help="Long lines, as `tar -tvf` prints them.")
@format_options
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
    from ..ops.listing import COLUMNS, list_save, record, write_lines
    from ..ops.select import Problems, Selection, normal_path
    from ..repo import READ, open_repository

    if no_recursive and directory is None:
        raise UsageError("--no-recursive needs --dir PATH")
    paths = (normal_path(os.fsencode(directory)),) if directory is not None else ()
    sel = Selection(paths=paths, recursive=not no_recursive)
    problems = Problems(report)
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


@click.command("tar")
@click.argument("selectors", nargs=-1)
@backup_spec_option("The save to restore ('latest': the newest complete save).")
@series_options
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
@progress_option(default_help="with -o FILE when stderr is a terminal")
@pass_ctx
def tar_cmd(ctx: Context, selectors: tuple[str, ...], backup: str, hostname: str | None,
            subset: str | None, exclude: tuple[str, ...], where: str | None, output: str,
            no_sparse: bool, no_xattrs: bool, progress: bool | None) -> None:
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
    from ..ops.select import Selection, parse_selectors
    from ..ops.tarproduce import tar_save

    paths, globs = parse_selectors([os.fsencode(s) for s in selectors])
    sel = Selection(paths=paths, globs=globs,
                    excludes=tuple(os.fsencode(e) for e in exclude), where=where)
    if output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a tar stream to a terminal: "
                         "pipe it into tar or give -o FILE")
    import contextlib

    from ..repo import READ_CHUNKS, open_repository

    # a shared lock (no record, nothing written) keeps expire from deleting chunks mid-restore
    with open_repository(ctx.repo, READ_CHUNKS) as repo, contextlib.ExitStack() as stack:
        save_row, incomplete = _resolve_backup(repo.catalog, backup, hostname, subset)

        def open_out():
            if output == "-":
                sys.stdout.flush()
                return sys.stdout.buffer
            return stack.enter_context(open(os.fsencode(output), "wb"))

        # progress of bytes written; the save's size is the total when all of it goes
        show = ctx.progress(progress if progress is not None or output != "-" else False)
        whole = not (selectors or exclude or where)
        problems = tar_save(repo, save_row.id, sel, open_out,
                            _clearing(ctx, report) if show else report, not no_sparse,
                            not no_xattrs,
                            _tar_progress(ctx, _stream_size(save_row) if whole else None)
                            if show else None)
    ctx.line.finish()
    _finish(problems, save_row.id, incomplete)


def _clearing(ctx: Context, report):
    """REPORT, taking the progress line away first."""
    def clear_and_report(level: str, msg: str) -> None:
        ctx.line.clear()
        report(level, msg)
    return clear_and_report


def _stream_size(save_row) -> int:
    """About the size of a whole save's tar stream: its files' bytes, and a header and
    padding (~1 KiB) a member."""
    return save_row.bytes + save_row.files * 1024


def _tar_progress(ctx: Context, total: int | None):
    import time
    started = time.monotonic()
    return lambda written: ctx.line.tar(written, total, time.monotonic() - started)


@click.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=bytes))
@backup_spec_option("Mount only this save, its tree at MOUNTPOINT.", required=False)
@series_options
@lock_wait_option
@pass_ctx
def mount_cmd(ctx: Context, mountpoint: bytes, backup: str | None, hostname: str | None,
              subset: str | None, lock_wait: float) -> None:
    """Browse the saves as a read-only filesystem (FUSE), until unmounted or Ctrl-C.

    MOUNTPOINT/HOST/SUBSET/ID/ holds each save's paths (/home/ann is ID/home/ann);
    MOUNTPOINT/HOST/SUBSET/latest links to the newest complete save. Saves made meanwhile
    appear; expire waits or refuses while it is mounted (the shared lock). Needs the
    optional extra: pip install 'backshift[mount]'.

    \b
    Examples:
      backshift -r /backup/repo mount /mnt/backup      # then: fusermount3 -u /mnt/backup
      backshift -r /backup/repo mount /mnt/b --backup latest --hostname web1
    """
    from ..ops.common import resolve_save
    from ..ops.mount import check_fuse, check_mountpoint, mount_repository
    from ..repo import READ_LOCKED, open_repository

    if backup is None and (hostname is not None or subset is not None):
        raise UsageError("--hostname/--subset narrow --backup: give --backup ID|latest too")
    check_fuse()
    check_mountpoint(mountpoint)
    with open_repository(ctx.repo, READ_LOCKED, operation="mount",
                         lock_wait_s=lock_wait) as repo:
        save_id = None
        if backup is not None:
            save_id = resolve_save(repo.catalog, backup, hostname, subset).id
        mount_repository(repo, mountpoint, save_id, echo_err)


