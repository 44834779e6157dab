"""What the commands print: rows of the listing commands, summaries and JSON objects, and
the live progress line on stderr (one ProgressLine per invocation, no module state).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..pathcodec import escape
from ..render import human_bytes, iso_time, local_time
from .progress import Progress, clock, rate_eta

if TYPE_CHECKING:
    from ..model import SaveStats


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def emit_lines(lines) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line)
        out.write("\n")


def print_json(obj: dict) -> None:
    import json
    click.echo(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def report(level: str, msg: str) -> None:
    echo_err(f"backshift: {level}: {msg}")


def count(n: int, word: str) -> str:
    """'1 file', '2 files', '1,234 files'."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# -- the live progress line ---------------------------------------------------------------


class ProgressLine:
    """This invocation's live progress (progress.Progress, made when first shown), and each
    command's line: rewritten in place on a terminal, a line now and then off one; taken
    away before anything else is written to stderr (a warning, the summary, an error)."""

    def __init__(self) -> None:
        self.out: Progress | None = None
        self.step = ""  # the command's step shown last: a new step is shown at once

    def show(self, text, final: bool = False, step: str = "") -> None:
        """TEXT: the line, or a function that makes it (only when it is written)."""
        if self.out is None:
            self.out = Progress()
        self.out.update(text, final or step != self.step)
        self.step = step

    def save(self, stats: SaveStats, estimate: int | None) -> None:
        rate = stats.bytes_read / stats.elapsed_s if stats.elapsed_s > 0 else 0
        line = (f"{count(stats.files, 'file')}, {human_bytes(stats.bytes)} "
                f"({human_bytes(stats.bytes_read)} read, {human_bytes(rate)}/s)")
        if estimate and stats.files and stats.files < estimate:
            eta = stats.elapsed_s * (estimate - stats.files) / stats.files
            line += (f", {100 * stats.files // estimate}% of ~{estimate:,} files, "
                     f"ETA {clock(eta)}")
        self.show(line)

    def import_legacy(self, stats) -> None:
        """import-legacy's line: which legacy save, its phase, what was read."""
        rate = stats.bytes_read / stats.elapsed_s if stats.elapsed_s > 0 else 0
        self.show(f"legacy save {stats.save_number}/{stats.saves_found}, {stats.phase}: "
                  f"{stats.entries:,} entries; {human_bytes(stats.bytes_read)} of chunks read "
                  f"({human_bytes(rate)}/s)", step=f"{stats.save_number} {stats.phase}")

    def tar(self, written: int, total: int | None, elapsed_s: float) -> None:
        """tar -o FILE's line: bytes written, of the save's size when all of it goes."""
        total = total if total and total > written else None  # an estimate: may fall short
        of = f" of ~{human_bytes(total)}" if total else ""
        self.show(lambda: f"tar: {human_bytes(written)}{of} written"
                  + rate_eta(written, total, elapsed_s, "B"))

    def check(self, step: str, done: int, total: int, r, elapsed_s: float) -> None:
        """check's line: the chunk store's directories listed, then the chunks re-read."""
        if step == "list":
            self.show(lambda: f"check: chunks/ directory {done}/{total}, "
                      f"{r.chunks_referenced:,} chunks referenced", step=step)
        else:
            self.show(lambda: f"check --read-data: {done:,} chunks read "
                      f"({human_bytes(r.bytes_read)}), {r.contents_verified:,} file contents "
                      "verified" + rate_eta(done, total, elapsed_s), step=step)

    def expire(self, step: str, done: int, total: int, count: int) -> None:
        """expire's line: the catalog sweep, then the chunk store's directories."""
        what = {"catalog": "removing saves and what only they used from the catalog",
                "scan": f"comparing chunks/ with the catalog, directory {done}/{total}",
                "unlink": f"removing chunk files, directory {done}/{total}, "
                          f"{count:,} removed"}[step]
        self.show(f"expire: {what}", step=step)

    def clear(self) -> None:
        if self.out is not None:
            self.out.clear()

    def finish(self) -> None:
        """The command is done: off a terminal its last state is written, on one the line
        goes away."""
        if self.out is not None:
            self.out.finish()


# -- save and import-legacy ---------------------------------------------------------------


def save_summary_dict(s: SaveStats) -> dict:
    return {
        "save_id": s.save_id, "status": s.status, "files": s.files, "bytes": s.bytes,
        "files_read": s.files_read, "bytes_read": s.bytes_read,
        "files_borrowed": s.files_borrowed, "bytes_borrowed": s.bytes_borrowed,
        "new_chunks": s.new_chunks, "new_bytes_stored": s.new_bytes_stored,
        "warnings": s.warnings, "elapsed_s": round(s.elapsed_s, 3),
    }


def save_summary_lines(s: SaveStats) -> list[str]:
    return [
        f"save {s.save_id} {s.status}: {count(s.files, 'file')}, {human_bytes(s.bytes)}",
        f"  read {count(s.files_read, 'file')} ({human_bytes(s.bytes_read)}), "
        f"borrowed {s.files_borrowed:,} unchanged ({human_bytes(s.bytes_borrowed)})",
        f"  new chunks {s.new_chunks:,}, {human_bytes(s.new_bytes_stored)} written",
        f"  warnings {s.warnings}, elapsed {s.elapsed_s:.1f} s",
    ]


def import_dict(stats) -> dict:
    fields = ("saves_found", "saves_imported", "saves_skipped", "files", "bytes",
              "files_skipped", "chunks_linked", "chunks_copied", "chunks_present",
              "chunks_bad", "warnings", "bytes_read", "method")
    out = {name: getattr(stats, name) for name in fields}
    out["elapsed_s"] = round(stats.elapsed_s, 3)
    out["imported"] = [{"legacy": lid, "save_id": sid} for lid, sid in stats.imported]
    return out


def import_lines(stats) -> list[str]:
    return [
        *(f"imported {lid} as save {save_id}" for lid, save_id in stats.imported),
        f"{stats.saves_imported} saves imported, {stats.saves_skipped} already imported, "
        f"{count(stats.files, 'file')} ({human_bytes(stats.bytes)}), "
        f"{stats.files_skipped} skipped",
        f"chunks: {stats.chunks_linked:,} linked, {stats.chunks_copied:,} copied, "
        f"{stats.chunks_present:,} already present, {stats.chunks_bad:,} missing or "
        f"damaged; {stats.elapsed_s:.1f} s",
    ]


# -- expire and check ---------------------------------------------------------------------


def expire_dict(result) -> dict:
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


def expire_total(result, verb: str) -> str:
    return (f"{verb} {result.saves_removed} save(s), {result.chunks_freed:,} "
            f"chunk(s) ({human_bytes(result.bytes_freed)}), "
            f"{result.orphans_removed:,} orphan chunk(s) "
            f"({human_bytes(result.orphan_bytes)}), {result.temps_removed:,} "
            "stale temp file(s)")


def check_dict(r, read_data: bool) -> dict:
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


# -- rows of the report commands: (headers, body) for render() ----------------------------


def saves_rows(rows, fmt: str, status) -> tuple[list[str], list[list]]:
    """saves: STATUS(row) is the status to show (a dead 'running' save is interrupted)."""
    if fmt == "table":
        headers = ["id", "hostname", "subset", "started", "finished", "status", "files",
                   "size", "written"]
        body = [[r.id, r.hostname, r.subset, local_time(r.started_ns),
                 local_time(r.finished_ns), status(r), f"{r.files:,}",
                 human_bytes(r.bytes),
                 human_bytes(r.new_bytes_stored)] for r in rows]
    else:
        headers = ["id", "hostname", "subset", "started", "finished", "status", "files",
                   "bytes", "bytes_read", "bytes_borrowed", "new_chunks", "new_bytes_stored",
                   "warnings", "tool_version"]
        body = [[r.id, r.hostname, r.subset, iso_time(r.started_ns), iso_time(r.finished_ns),
                 status(r), r.files, r.bytes, r.bytes_read, r.bytes_borrowed,
                 r.new_chunks, r.new_bytes_stored, r.warnings, r.tool_version] for r in rows]
    return headers, body


def stats_rows(rows, fmt: str) -> tuple[list[str], list[list]]:
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
    return headers, body


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def diff_lines(changes, marks):
    """diff's table: a mark, the path, and the changed fields in brackets."""
    return (f"{marks[c.kind]} {escape(c.path)}"
            + (f"  [{', '.join(c.fields)}]" if c.fields else "") for c in changes)


DIFF_HEADERS = ("change", "path", "fields")


def diff_rows(changes):
    return ([c.kind, c.path, ",".join(c.fields)] for c in changes)


HISTORY_HEADERS = ("save_id", "hostname", "subset", "started", "type", "size", "mtime",
                   "digest", "changed")


def history_rows(rows, fmt: str) -> list[list]:
    if fmt == "table":
        return [[r.save_id, r.hostname, r.subset, local_time(r.started_ns), r.type,
                 f"{r.size:,}", local_time(r.mtime_ns), r.digest or "",
                 "yes" if r.changed else "no"] for r in rows]
    return [[r.save_id, r.hostname, r.subset, iso_time(r.started_ns), r.type, r.size,
             iso_time(r.mtime_ns), r.digest, r.changed] for r in rows]


FIND_HEADERS = ("save_id", "hostname", "subset", "started", "path", "type", "size", "mtime")


def find_rows(found, fmt: str):
    """find's rows, as a generator: the matches stream from the catalog."""
    if fmt == "table":
        return ([f.save_id, f.hostname, f.subset, local_time(f.started_ns), f.path, f.type,
                 f"{f.size:,}", local_time(f.mtime_ns)] for f in found)
    return ([f.save_id, f.hostname, f.subset, iso_time(f.started_ns), f.path, f.type,
             f.size, iso_time(f.mtime_ns)] for f in found)
