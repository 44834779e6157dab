"""The command line: parse arguments, open the repository, call one operation, render it.
The only package that imports click; this module assembles the group from its commands.

app.py holds the group, its context object and `run` (every outcome to one exit code);
options.py the options several commands share; views.py what they print; one module per
family of commands. Errors become one line on stderr and the exit code of their class
(errors.py); --debug shows the traceback too.
"""

from __future__ import annotations

from .admin import break_lock, check, expire, import_legacy_cmd, init
from .app import Context, cli, main, run
from .options import add_shared_options
from .reports import diff, find, history, saves, sql, stats
from .restore import list_cmd, mount_cmd, tar_cmd
from .save import save
from .serve import serve

# the order `backshift --help` has always listed them in (click sorts by name anyway)
for _command in (init, save, saves, expire, check, break_lock, sql, stats, diff, history, find,
                 list_cmd, tar_cmd, mount_cmd, import_legacy_cmd, serve):
    cli.add_command(_command)
del _command
add_shared_options(cli)

__all__ = ["Context", "cli", "main", "run"]
