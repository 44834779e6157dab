"""render: the table format users see (tabulate's "simple", every cell as text)."""

from __future__ import annotations

from backshift.render import render


def test_render_table_of_saves_shape():
    rows = [[1, "vm", "home", "2026-01-02 03:04:05", "", "complete", "1,234", "1.0 KiB"]]
    headers = ["id", "hostname", "subset", "started", "finished", "status", "files", "size"]
    (text,) = render(headers, rows, "table")
    assert text.splitlines() == [
        "id    hostname    subset    started              finished    status"
        "    files    size",
        "----  ----------  --------  -------------------  ----------  --------"
        "  -------  -------",
        "1     vm          home      2026-01-02 03:04:05              complete"
        "  1,234    1.0 KiB",
    ]
