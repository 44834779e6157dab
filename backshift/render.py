"""Turning rows into text for people and programs: tables, JSON lines, CSV, sizes, times.

Imported by every command at start-up, so it imports nothing heavy: csv and json load
when a format needs them, and tables are drawn here rather than with tabulate (whose
import alone took longer than a whole `backshift saves`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from .pathcodec import escape

FORMATS = ("table", "json", "csv")
COLUMN_GAP = "  "
HEADER_PADDING = 2  # a column is at least its header plus this wide


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


def cell_text(value: object) -> object:
    """A cell as safe text: bytes and control characters escaped losslessly."""
    if isinstance(value, bytes):
        return escape(value)
    if isinstance(value, str):
        return escape(value.encode("utf-8", "surrogateescape"))
    return value


def simple_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns under a dashed rule, two spaces apart, trailing blanks cut.

    The same text as tabulate's "simple" format with disable_numparse (every cell is text:
    None empty, others str() and stripped); tests/test_render.py holds the two equal.
    """
    body = [["" if v is None else str(v).strip() for v in row] for row in rows]
    widths = [len(h) + HEADER_PADDING for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    lines = [COLUMN_GAP.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             COLUMN_GAP.join("-" * w for w in widths)]
    lines += [COLUMN_GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in body]
    return "\n".join(lines)


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], fmt: str) -> Iterable[str]:
    """Lines of output for ROWS in FMT: 'table', 'json' (one object a line), or 'csv'
    (with a header line). json and csv stream; table needs all rows."""
    if fmt == "json":
        import json
        for row in rows:
            yield json.dumps({h: cell_text(v) for h, v in zip(headers, row, strict=True)},
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
            writer.writerow([cell_text(v) for v in row])
            yield buf.getvalue().rstrip("\n")
    elif fmt == "table":
        yield simple_table(headers, ([cell_text(v) for v in row] for row in rows))
    else:
        raise ValueError(f"unknown format {fmt!r}")
