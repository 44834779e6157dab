"""Turning rows into text for people and programs: tables, JSON lines, CSV, sizes, times.

Imported by every command at start-up, so it imports nothing heavy: csv, json and
tabulate (~16 ms) load only when a format needs them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from .pathcodec import escape

FORMATS = ("table", "json", "csv")


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB' (binary units, as borg and restic print them)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def local_time(ns: int | None) -> str:
    if ns is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))


def iso_time(ns: int | None) -> str | None:
    if ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ns // 1_000_000_000))


def cell_text(value: object, utf8: bool | None = None) -> object:
    """A cell as safe text: bytes and control characters escaped losslessly, as GNU tar
    quotes names (in the user's locale; json and csv pass UTF8=True, locale-free)."""
    if isinstance(value, bytes):
        return escape(value, utf8)
    if isinstance(value, str):
        return escape(value.encode("utf-8", "surrogateescape"), utf8)
    return value


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], fmt: str) -> Iterable[str]:
    """Lines of output for ROWS in FMT: 'table', 'json' (one object a line), or 'csv'
    (with a header line). json and csv stream; table needs all rows."""
    if fmt == "json":
        import json
        for row in rows:
            yield json.dumps({h: cell_text(v, True) for h, v in zip(headers, row, strict=True)},
                             ensure_ascii=False)
    elif fmt == "csv":
        import csv
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        yield buf.getvalue().rstrip("\n")
        for row in rows:
            buf.seek(0)
            buf.truncate()
            writer.writerow([cell_text(v, True) for v in row])
            yield buf.getvalue().rstrip("\n")
    elif fmt == "table":
        from tabulate import tabulate
        body = [[cell_text(v) for v in row] for row in rows]
        yield tabulate(body, headers=list(headers), tablefmt="simple", disable_numparse=True)
    else:
        raise ValueError(f"unknown format {fmt!r}")
