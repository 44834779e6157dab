"""Small lookups that several operations share: resolving save ids."""

from __future__ import annotations

from ..catalog import Catalog
from ..errors import NoSuchSave, UsageError
from ..model import SaveRow


def resolve_save(catalog: Catalog, spec: str, hostname: str | None = None,
                 subset: str | None = None) -> SaveRow:
    """A save by integer id or 'latest': the newest complete save (the highest id), of
    HOSTNAME and SUBSET when given. An explicit id must be of those too."""
    series = "".join(f" {what} {name!r}" for what, name in
                     (("of host", hostname), ("of subset", subset)) if name is not None)
    if spec == "latest":
        save_id = catalog.latest_complete_save_id(hostname, subset)
        if save_id is None:
            raise NoSuchSave(f"latest (no complete save{series} yet)")
    else:
        try:
            save_id = int(spec)
        except ValueError:
            raise UsageError(f"save id must be a number or 'latest', not {spec!r}") from None
    row = catalog.get_save(save_id)
    if row is None or (hostname is not None and row.hostname != hostname) \
            or (subset is not None and row.subset != subset):
        raise NoSuchSave(spec + series)
    return row


def incomplete_note(row: SaveRow, repo_path: bytes | None = None) -> str | None:
    """What to say about a save named by id that is not complete, or None when it is."""
    status = effective_status(row, repo_path)
    if status == "complete":
        return None
    if status == "running":
        return (f"save {row.id} is still running: this is what it has committed so far, "
                "not a complete save")
    return (f"save {row.id} is {status}: it holds only what it committed before it stopped, "
            "not a complete save")


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
