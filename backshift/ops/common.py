"""Small lookups that several operations share: resolving save ids."""

from __future__ import annotations

from ..catalog import Catalog
from ..errors import NoSuchSave, UsageError
from ..model import SaveRow


def resolve_save(catalog: Catalog, spec: str) -> SaveRow:
    """A save by integer id or 'latest' (the highest id)."""
    if spec == "latest":
        save_id = catalog.latest_save_id()
        if save_id is None:
            raise NoSuchSave("latest (the repository has no saves yet)")
    else:
        try:
            save_id = int(spec)
        except ValueError:
            raise UsageError(f"save id must be a number or 'latest', not {spec!r}") from None
    row = catalog.get_save(save_id)
    if row is None:
        raise NoSuchSave(spec)
    return row


def effective_status(row: SaveRow, repo_path: bytes | None = None) -> str:
    """The status to show: a 'running' save whose process is gone (on this host) was
    interrupted, even before the next save of this host records that. With REPO_PATH, by
    the save's lock (lock.save_alive: a zombie is dead too), else by its pid."""
    if row.status != "running":
        return row.status
    import socket

    from ..lock import pid_alive, save_alive

    alive = (save_alive(repo_path, row.id, row.writer_pid) if repo_path is not None
             else pid_alive(row.writer_pid, None))
    if row.status == "running" and row.writer_host == socket.gethostname() and not alive:
        return "interrupted"
    return row.status
