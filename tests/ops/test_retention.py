"""Retention policy: parametrised cases against golden files (restic's testdata/policy_*).

Regenerate the golden files after an intended change with:
    REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/ops/test_retention.py
and review the diff like code.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backshift.model import SaveRow
from backshift.retention import NS, Policy, decide, parse_duration

GOLDEN = Path(__file__).parents[1] / "golden" / "retention"
REGEN = os.environ.get("REGEN_GOLDEN") == "1"  # read at import: the hermetic fixture is later
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
NOW_NS = int(NOW.timestamp()) * NS


def _save(sid: int, when: str, status: str = "complete", host: str = "web1",
          subset: str = "home") -> SaveRow:
    started = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()) * NS
    return SaveRow(sid, host, subset, started, started + 60 * NS, status, 10, 100, 0, 0, 0, 0,
                   0, "test")


def sample_saves() -> list[SaveRow]:
    """Two years of a series with gaps, several saves a day, interrupted ones, 2nd series."""
    out: list[SaveRow] = []
    sid = 0
    stamps = []
    for month in range(1, 13):  # 2025: one save on the 1st and 15th of each month
        stamps += [f"2025-{month:02d}-01T03:00", f"2025-{month:02d}-15T03:00"]
    for day in range(1, 27):  # November 2026: daily, twice on some days
        stamps.append(f"2026-11-{day:02d}T02:00")
        if day % 5 == 0:
            stamps.append(f"2026-11-{day:02d}T14:30")
    stamps += ["2026-11-26T09:00", "2026-11-26T10:15", "2026-11-26T11:45"]
    for when in stamps:
        sid += 1
        out.append(_save(sid, when))
    # interrupted saves: one superseded, one the newest of its series
    out.append(_save(sid + 1, "2026-11-20T08:00", "interrupted"))
    out.append(_save(sid + 2, "2026-11-26T11:50", "interrupted"))
    out.append(_save(sid + 3, "2026-11-26T11:55", "running"))
    out.append(_save(sid + 4, "2026-11-27T11:55"))  # clock skew: dated in the future
    # a second series with only old saves
    out.append(_save(sid + 5, "2024-03-01T00:00", host="db1", subset="root"))
    out.append(_save(sid + 6, "2024-06-01T00:00", host="db1", subset="root"))
    out.append(_save(sid + 7, "2024-06-02T00:00", "interrupted", host="db1", subset="root"))
    return sorted(out, key=lambda s: s.id)


CASES = {
    "keep_last_3": Policy(keep_last=3),
    "keep_daily_7": Policy(keep_daily=7),
    "keep_hourly_5": Policy(keep_hourly=5),
    "keep_weekly_4": Policy(keep_weekly=4),
    "keep_monthly_6": Policy(keep_monthly=6),
    "keep_yearly_3": Policy(keep_yearly=3),
    "keep_within_3d": Policy(keep_within_s=parse_duration("3d"), within_text="3d"),
    "older_than_90d": Policy(older_than_s=parse_duration("90d"), older_text="90d"),
    "older_than_90d_allow_empty": Policy(older_than_s=parse_duration("90d"), older_text="90d",
                                         allow_empty_series=True),
    "daily_7_weekly_4_monthly_12": Policy(keep_daily=7, keep_weekly=4, keep_monthly=12),
    "last_2_older_than_10d": Policy(keep_last=2, older_than_s=parse_duration("10d"),
                                    older_text="10d"),
    "keep_last_1_allow_empty": Policy(keep_last=1, allow_empty_series=True),
    "keep_within_1d_allow_empty": Policy(keep_within_s=86400, within_text="1d",
                                         allow_empty_series=True),
}


def render(decisions) -> str:
    lines = []
    for d in decisions:
        s = d.save
        when = datetime.fromtimestamp(s.started_ns / NS, UTC).strftime("%Y-%m-%d %H:%M")
        verb = "keep  " if d.keep else "remove"
        lines.append(f"{verb} {s.id:3d} {s.hostname}/{s.subset} {when} {s.status:<11} "
                     + "; ".join(d.reasons))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_retention_matches_golden(name):
    got = render(decide(sample_saves(), CASES[name], NOW_NS))
    path = GOLDEN / f"policy_{name}.txt"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"missing {path}; run with REGEN_GOLDEN=1"
    assert got == path.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_retention_invariants_hold(name):
    saves = sample_saves()
    decisions = decide(saves, CASES[name], NOW_NS)
    assert [d.save.id for d in decisions] == [s.id for s in saves]
    by_id = {d.save.id: d for d in decisions}
    policy = CASES[name]
    for d in decisions:
        assert d.reasons, f"save {d.save.id} has no reason"
        if d.save.status == "running" or d.save.started_ns > NOW_NS:
            assert d.keep
    for series in {(s.hostname, s.subset) for s in saves}:
        members = [s for s in saves if (s.hostname, s.subset) == series]
        complete = [s for s in members if s.status == "complete"]
        newest = max(complete, key=lambda s: (s.started_ns, s.id))
        if not policy.allow_empty_series:
            assert by_id[newest.id].keep
        for s in members:
            if s.status == "interrupted" and not by_id[s.id].keep:
                assert any(c.started_ns > s.started_ns for c in complete)


def test_retention_interrupted_kept_without_later_complete():
    saves = [_save(1, "2020-01-01T00:00"), _save(2, "2020-02-01T00:00", "interrupted")]
    d = decide(saves, Policy(older_than_s=86400, older_text="1d", allow_empty_series=True),
               NOW_NS)
    assert [x.keep for x in d] == [False, True]
    assert "interrupted, no later complete save yet" in d[1].reasons


def test_retention_empty_policy_is_refused():
    with pytest.raises(ValueError):
        decide([], Policy(), NOW_NS)


@pytest.mark.parametrize("text,seconds", [("90d", 90 * 86400), ("12h", 43200),
                                          ("2w", 14 * 86400), ("1d12h", 129600), ("30m", 1800)])
def test_retention_parses_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "d", "1x", "1d 2h", "-1d", "1.5d"])
def test_retention_rejects_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_remove_ids_decide_only_the_saves_named_and_keep_a_running_one():
    saves = [_save(1, "2026-11-20T02:00"), _save(2, "2026-11-21T02:00", "interrupted"),
             _save(3, "2026-11-22T02:00"), _save(4, "2026-11-23T02:00", "running"),
             _save(5, "2026-11-24T02:00", host="db1")]
    got = decide(saves, Policy(remove_ids=frozenset({3, 4, 5})), NOW_NS)
    assert [(d.save.id, d.keep, d.reasons) for d in got] == [
        (3, False, ("named with --backup",)),  # the newest complete save of its series
        (4, True, ("still running (or died: see 'backshift check')",)),
        (5, False, ("named with --backup",)),  # the only save of its series
    ]
    with pytest.raises(ValueError):
        decide(saves, Policy(keep_last=1, remove_ids=frozenset({3})), NOW_NS)
