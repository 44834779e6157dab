"""render: the table text equals tabulate's "simple" format, which it replaced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tabulate import tabulate

from backshift.render import cell_text, render, simple_table

CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=12), st.binary(max_size=8),
    st.sampled_from(["", " x ", "True", "1,000", "1.5", "-", "\u00e9t\u00e9", "a\u00a0"]),
)


@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(st.text("abc_ ", min_size=1, max_size=8).map(str.strip).filter(bool),
             min_size=n, max_size=n),
    st.lists(st.lists(CELLS, min_size=n, max_size=n), max_size=6))))
def test_render_table_equals_tabulate_simple(case):
    headers, rows = case
    cells = [[cell_text(v) for v in row] for row in rows]
    want = tabulate(cells, headers=headers, tablefmt="simple", disable_numparse=True)
    assert simple_table(headers, cells) == want


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
