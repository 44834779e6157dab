"""The save command: check its arguments, start the readers, run the Saver over the names
from stdin, --filelist or a walk of PATHs, print the summary and set the exit status.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_WARNING, UsageError
from ..pathcodec import escape
from .admin import copy_catalog
from .app import Context, pass_ctx
from .options import FiniteFloat, json_option, lock_wait_option
from .views import count, echo_err, save_summary_dict, save_summary_lines


def _check_label(kind: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--{kind} must be valid UTF-8 text") from None
    if not value:
        raise UsageError(f"--{kind} must not be empty")
    return value


@click.command()
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
@click.option("--dry-run", "-n", "dry_run", is_flag=True,
              help="Say what a save would read and what it would borrow unchanged (with "
                   "-v: one line per name: read, borrow, new (not a regular file) or link (a "
                   "further hard link)), and write nothing: no "
                   "file's contents are read.")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr [default: when stderr is a terminal].")
@json_option(help="Print the summary as one JSON object.")
@click.option("--workers", default=min(4, os.cpu_count() or 2), show_default=True,
              type=click.IntRange(1, 64),
              help="Readers: processes for a first save, threads for a re-save.")
@click.option("--checkpoint-interval", default=10.0, show_default=True, metavar="SECONDS",
              type=FiniteFloat(0.1), help="Commit what is saved at least this often.")
@click.option("--checkpoint-files", default=20_000, hidden=True, type=click.IntRange(1))
@lock_wait_option(holder=" (an expire)")
@pass_ctx
def save(ctx: Context, paths: tuple[bytes, ...], hostname: str | None, subset: str | None,
         filelist, one_file_system: bool, exclude: tuple[str, ...],
         exclude_from: tuple[str, ...], exclude_caches: bool,
         exclude_if_present: tuple[str, ...], dry_run: bool, progress: bool | None,
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

    With --dry-run, the names are read and decided exactly as a save would (the same
    series, excludes and borrowing rules) and the repository is left as it was.

    Exit status 1 means the save completed but some files were skipped (see stderr).
    """
    import atexit
    import gc
    import signal
    import socket

    hostname = _check_label("hostname", hostname or socket.gethostname())
    if paths and filelist is not None:
        raise UsageError("give either PATHs or --filelist, not both")
    if not paths and filelist is None and sys.stdin.isatty():
        raise UsageError("no names to save: names come NUL-separated on stdin, not typed "
                         "(find /home -xdev -print0 | backshift save --subset home), or "
                         "give PATHs (backshift save /home) or --filelist FILE")
    connection = None
    if (ctx.repo_arg or "").startswith("ssh://") and not dry_run:
        # ssh starts before the imports, the walk and the readers: its handshake (~0.4 s
        # on localhost) overlaps them, and the hello goes out with it; closed (killed) with
        # the command if the save never took it over
        from ..remote.client import SaveConnection
        click_ctx = click.get_current_context()
        connection = SaveConnection(ctx.repo_arg, click_ctx.meta.get("remote_path"),
                                    sys.stderr.buffer)
        click_ctx.call_on_close(lambda: connection.close(failed=True))

    from ..ops.save import SaveOptions
    from ..ops.saverun import run_save
    from ..ops.session import subset_for_roots

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
        ctx.line.clear()
        # one line per warning, even for names holding newlines or terminal escapes
        echo_err(f"warning: {escape(msg.encode('utf-8', 'surrogateescape'))}")

    def notice(msg: str) -> None:
        ctx.line.clear()
        echo_err(msg)

    show = ctx.progress(progress)
    # At exit the interpreter's last collection walks every object the save left (~15 ms
    # of an unchanged re-save of mixed, 20,000 files): frozen, it skips them. Every file
    # and connection of a save is closed by its own code before then, and stdout/stderr
    # are flushed by the interpreter itself.
    atexit.register(gc.freeze)
    opts = SaveOptions(hostname=hostname, subset=subset, workers=workers,
                       batch_files=checkpoint_files, batch_seconds=checkpoint_interval,
                       roots=roots)
    # stdin unbuffered: a single read returns what the pipe has, and the name reader
    # thread never holds a buffer lock the interpreter needs at exit.
    stream = None if paths else filelist if filelist is not None else _raw_stdin()
    if dry_run and (ctx.repo_arg or "").startswith("ssh://"):
        from ..errors import RemoteNotSupported
        raise RemoteNotSupported("save --dry-run on an ssh:// repository: run it on the "
                                 "repository host, or save without --dry-run")
    if dry_run:
        _dry_run(ctx, opts, warn, cwd=cwd, paths=paths, stream=stream,
                 one_file_system=one_file_system, excludes=exclude,
                 exclude_caches=exclude_caches, exclude_if_present=exclude_if_present,
                 lock_wait_s=lock_wait, as_json=as_json)
        return
    walk_options = dict(cwd=cwd, paths=paths, stream=stream, one_file_system=one_file_system,
                        excludes=exclude, exclude_caches=exclude_caches,
                        exclude_if_present=exclude_if_present, lock_wait_s=lock_wait,
                        progress=ctx.line.save if show else None, notice=notice)
    if connection is not None:
        run = _remote_save(connection, opts, warn, walk_options)
    else:
        run = run_save(ctx.repo, opts, warn, after_complete=copy_catalog, **walk_options)
    if run.terminated:  # a second SIGTERM: stopped at once, marked interrupted
        ctx.line.clear()
        echo_err("backshift: terminated")
        raise SystemExit(EXIT_TERMINATED)
    stats, copied = run.stats, run.copied
    ctx.line.finish()
    if as_json:
        import json
        click.echo(json.dumps(save_summary_dict(stats), sort_keys=True))
    elif not ctx.quiet:
        for line in save_summary_lines(stats):
            click.echo(line)
    if stats.status == "interrupted":
        echo_err(f"backshift: interrupted: save {stats.save_id} keeps the "
                 f"{count(stats.files, 'file')} committed so far; the next save borrows "
                 "from it")
        raise SystemExit(EXIT_TERMINATED if run.stop_signal == signal.SIGTERM
                         else EXIT_INTERRUPTED)
    if stats.warnings or not copied:
        raise SystemExit(EXIT_WARNING)


def _remote_save(connection, opts, warn, walk_options: dict):
    """The save into an ssh:// repository: this host reads, `backshift serve` there records;
    CONNECTION (remote.client.SaveConnection) was started when the command began."""
    from ..errors import RemoteConnectionLost
    from ..ops.saveproxy import run_remote_save

    opened: list = []

    def connect():
        channel = connection.channel()
        opened.append(connection.transport)
        return channel

    failed = True
    try:
        run = run_remote_save(connect, opts, warn, **walk_options)
        failed = False
        return run
    except RemoteConnectionLost as e:
        if opened:
            raise opened[0].lost(e.args[-1]) from None
        raise
    finally:
        if opened:
            connection.close(failed=failed)


def _dry_run(ctx: Context, opts, warn, *, as_json: bool, **walk_options) -> None:
    """save --dry-run: the summary (with -v, a line per name first); exit 1 on warnings."""
    from ..ops.dryrun import run_dry_run
    from ..render import human_bytes

    def listing(action: str, path: bytes) -> None:
        click.echo(f"{action} {escape(path)}")

    stats = run_dry_run(ctx.repo, opts, warn,
                        listing=listing if ctx.verbose and not as_json else None,
                        **walk_options)
    if as_json:
        import dataclasses
        import json
        click.echo(json.dumps({"dry_run": True, "hostname": opts.hostname,
                               "subset": opts.subset, **dataclasses.asdict(stats)},
                              sort_keys=True))
    elif not ctx.quiet:
        click.echo(f"dry run of {opts.hostname}/{opts.subset}: would read "
                   f"{count(stats.files_read, 'file')} ({human_bytes(stats.bytes_read)}), "
                   f"borrow {stats.files_borrowed:,} unchanged "
                   f"({human_bytes(stats.bytes_borrowed)}), "
                   f"{stats.new_other:,} new directories/special files"
                   + (f", {stats.hard_links:,} further hard links" if stats.hard_links
                      else "") + "; nothing written")
    if stats.warnings:
        raise SystemExit(EXIT_WARNING)


def _save_roots(paths: tuple[bytes, ...], cwd: bytes) -> list[bytes]:
    """The PATHs given, absolute and normal (those that cannot be are left out: the walk
    warns about them); NothingToSave when none of them exists."""
    from ..errors import NothingToSave
    from ..pathcodec import BadPath, normalize

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
