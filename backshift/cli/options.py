"""Options and parameter types more than one command takes (--format/--json, --hostname/
--subset, --backup, --lock-wait), and -r/-q/-v accepted after any command too.
"""

from __future__ import annotations

import click

from ..render import FORMATS
from .app import Context


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


class FiniteFloat(click.FloatRange):
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


def format_options(f):
    """--format table|json|csv and --json (the same as --format json)."""
    f = click.option("--json", "fmt", flag_value="json", type=_FormatChoice(),
                     help="Same as --format json: one JSON object a line.")(f)
    return click.option("--format", "fmt", type=_FormatChoice(), default="table",
                        show_default=True,
                        help="table for people ('text' is an alias), json lines, or csv.")(f)


def json_option(f=None, *, help: str = "Print the result as one JSON object (see docs/cli.md)."):
    """--json (as_json) of the commands that print a summary or a result, not rows."""
    decorator = click.option("--json", "as_json", is_flag=True, help=help)
    return decorator(f) if f is not None else decorator


def progress_option(f=None, *, default_help: str = "when stderr is a terminal"):
    """--progress/--no-progress (progress): live progress on stderr (cli/progress.py)."""
    decorator = click.option("--progress/--no-progress", default=None,
                             help=f"Live progress on stderr [default: {default_help}].")
    return decorator(f) if f is not None else decorator


def lock_wait_option(f=None, *, holder: str = ""):
    """--lock-wait SECONDS; HOLDER names who may hold the lock, e.g. ' (an expire)'."""
    decorator = click.option(
        "--lock-wait", default=0.0, show_default=True, metavar="SECONDS",
        type=FiniteFloat(0),
        help=f"Wait this long for a locked repository{holder} before giving up.")
    return decorator(f) if f is not None else decorator


def filter_options(f):
    """--hostname/--subset of the commands that report on saves: only that series."""
    f = click.option("--subset", default=None, help="Only saves of this subset.")(f)
    return click.option("--hostname", default=None, help="Only saves of this host.")(f)


def series_options(f):
    """--hostname/--subset: which saves `--backup latest` (and an id) may name."""
    f = click.option("--subset", default=None,
                     help="Only saves of this subset ('latest': its newest complete one).")(f)
    return click.option("--hostname", default=None,
                        help="Only saves of this host ('latest': its newest complete one).")(f)


def _save_spec(_ctx, _param, value: str | None) -> str | None:
    """ID|latest for --backup: a number must be a save id (resolve_save does the rest)."""
    if value is not None and value.strip().lstrip("+-").isdigit():
        SAVE_ID.convert(value, _param, _ctx)
    return value


def backup_spec_option(help: str, required: bool = True):
    """--backup ID|latest: the save a restore command reads. (An explicit default=None
    would satisfy required=True in click 8.2+, so a required one has none.)"""
    optional = {} if required else {"default": None}
    return click.option("--backup", required=required, **optional, metavar="ID|latest",
                        callback=_save_spec, help=help)


def backup_id_option(help: str):
    """--backup ID (save_id): a save id, for the reports that may narrow to one save."""
    return click.option("--backup", "save_id", type=SAVE_ID, default=None, metavar="ID",
                        help=help)


# -- -r/-q/-v after the command -----------------------------------------------------------


def _repo_after_command(ctx: click.Context, _param, value: str | None) -> None:
    """`backshift saves -r REPO`: the subcommand's -r overrides the group's (and the env)."""
    if value is not None:
        ctx.find_object(Context).repo_arg = value


def _flag_after_command(ctx: click.Context, param, value: bool) -> None:
    if value:
        setattr(ctx.find_object(Context), param.name.removeprefix("shared_"), True)


def add_shared_options(group: click.Group) -> None:
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
