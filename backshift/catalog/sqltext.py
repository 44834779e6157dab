"""SQL text helpers of the catalog modules: dedented constants, batches of rows.

No SQL of its own; every other catalog module builds its statements with these."""

from __future__ import annotations

from collections.abc import Iterator


def _sql(text: str) -> str:
    """TEXT without its common indentation and outer blank lines (textwrap.dedent for the
    space-indented constants here; textwrap's regular expressions cost start-up time)."""
    lines = text.split("\n")
    indent = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()),
                 default=0)
    return "\n".join(line[indent:] if line.strip() else "" for line in lines).strip()


# Contents of many small files at once (Catalog.contents_of): a few statements per batch
# instead of four per file. Every statement releases the GIL and the save's readers take it
# at each release: per-file statements kept the catalog's thread waiting. The row lists are
# "?" marks repeated; ids of new rows are given explicitly (max + 1 ..., we hold the write
# lock), so that no statement has to return them row by row.
BULK_ROWS = 256  # rows per statement (16 values a row at most: far below SQLite's 32766 variables)


def _slices(items: list) -> Iterator[list]:
    for i in range(0, len(items), BULK_ROWS):
        yield items[i : i + BULK_ROWS]
