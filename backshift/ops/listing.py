"""Listing a save (`list`): the members the tar stream of the same selection would hold, as
the lines GNU tar -tf / -tvf print for it (listformat) or as json/csv records.

The members come from the same planner as the tar stream (select.Planner), so the names,
hardlinks and refusals are the stream's. Text output of a whole save or one subtree takes
a faster road to the same bytes (write_lines, listfast): the catalog builds the lines,
and a row goes to the planner and TarLister only when it is out of the ordinary.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator

from .. import pathcodec
from ..catalog import Catalog
from ..model import TYPE_NAMES, type_of_mode
from . import listfast
from . import tarstream as ts
from .digestcheck import DigestCheck
from .listformat import TarLister
from .select import (
    WHOLE_SAVE,
    Planned,
    Planner,
    Problems,
    Selection,
    check_paths_exist,
    digest_check,
)

COLUMNS = ["path", "type", "mode", "uid", "gid", "user", "group", "size", "mtime_ns",
           "link_target", "hardlink_to", "digest", "dev", "ino", "nlink", "rdev"]


def list_save(catalog: Catalog, save_id: int, sel: Selection,
              problems: Problems) -> Iterator[Planned]:
    """The members of the selection, as the tar stream would hold them, streaming; of a
    whole save, verified against its members digest at the end (CatalogDamaged)."""
    check_paths_exist(catalog, save_id, sel.paths)
    digest = digest_check(catalog, save_id, sel)
    planner = Planner(catalog, save_id, sel, problems, digest)
    try:
        yield from planner.members()
    finally:
        planner.close()
    if digest is not None:
        digest.verify()


# -- text ----------------------------------------------------------------------------------


def _fast_range(sel: Selection) -> tuple[bytes, bytes] | None:
    """The one key range a selection reads, when write_lines can take it."""
    if sel.globs or sel.excludes or sel.where is not None or not sel.recursive:
        return None
    if not sel.paths:
        return WHOLE_SAVE
    if len(sel.paths) == 1:
        key = pathcodec.sort_key(sel.paths[0])
        return key, key + b"\x01"
    return None


def write_lines(catalog: Catalog, save_id: int, sel: Selection, problems: Problems,
                verbose: bool, write: Callable[[bytes], object]) -> None:
    """Write what `tar -tf` (or -tvf) prints for the selection, in blocks of lines.

    One read transaction: `list` takes no lock, and the listing is cut into several
    queries, so without it an expire committing meanwhile would end it early, silently.
    A whole save's listing is verified against its members digest at the end."""
    with catalog.snapshot():
        digest = digest_check(catalog, save_id, sel)
        _write_lines(catalog, save_id, sel, problems, verbose, write, digest)
        if digest is not None:
            digest.verify()


def _write_lines(catalog: Catalog, save_id: int, sel: Selection, problems: Problems,
                 verbose: bool, write: Callable[[bytes], object],
                 digest: DigestCheck | None) -> None:
    check_paths_exist(catalog, save_id, sel.paths)
    lister = TarLister(verbose)
    planner = Planner(catalog, save_id, sel, problems, digest)
    try:
        members = planner.members()
        key_range = _fast_range(sel)
        if key_range is None:
            _write_members(members, lister, write)
            return
        # The planner emits the first row (for --dir: the path's parents and the path), so
        # the catalog's lines start below a member whose ancestors are checked.
        lo, hi = key_range
        first = None
        emitted = 0
        for m in members:
            write(lister.line(m.header))
            emitted += 1
            if lo == WHOLE_SAVE[0] or m.entry.key == lo:
                first = m
                break
        if first is None:
            return  # the planner listed everything
        if problems.warnings or problems.refused or not stat.S_ISDIR(first.entry.mode):
            _write_members(members, lister, write)
            return
        members.close()
        fast = listfast.FastLines(catalog, save_id, planner, lister, verbose, write, digest)
        if not fast.run(first.entry.key + b"\0", hi, emitted):
            # a row the planner refuses or warns about: it lists again from the start,
            # and what is written already is skipped
            if digest is not None:
                digest.restart()
            again = Planner(catalog, save_id, sel, problems, digest)
            try:
                _write_members(again.members(), TarLister(verbose), write, skip=fast.emitted)
            finally:
                again.close()
    finally:
        planner.close()


def _write_members(members: Iterator[Planned], lister: TarLister,
                   write: Callable[[bytes], object], skip: int = 0) -> None:
    block = []
    for m in members:
        line = lister.line(m.header)
        if skip:
            skip -= 1
            continue
        block.append(line)
        if len(block) >= listfast.BATCH_ROWS:
            write(b"".join(block))
            block.clear()
    if block:
        write(b"".join(block))


# -- json / csv ------------------------------------------------------------------------------


def record(m: Planned) -> list:
    """Every column of a member for json/csv (bytes are escaped losslessly by render)."""
    e, h = m.entry, m.header
    return [
        e.path,
        TYPE_NAMES.get(type_of_mode(e.mode) or "", "unknown"),
        e.mode & 0o7777,
        e.uid,
        e.gid,
        e.user,
        e.group,
        e.size,
        e.mtime_ns,
        e.link_target,
        b"/" + h.linkname.rstrip(b"/") if h.typeflag == ts.LNKTYPE else None,
        e.digest.hex() if e.digest is not None else None,
        e.dev,
        e.ino,
        e.nlink,
        e.rdev,
    ]
