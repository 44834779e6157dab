"""Retention policy: which saves to keep and which to remove, and why (a pure function).

decide(saves, policy, now_ns) looks only at its arguments: no catalog, no clock. Policies
apply per series (hostname + subset). Rules, in the words the decisions print:

- keep-last N keeps the N newest complete saves; keep-hourly/daily/weekly/monthly/yearly N
  keep the newest complete save of each of the N newest such periods that have one
  (restic's policy); keep-within D keeps every save started less than D before now.
- older-than D removes saves started more than D ago. Given together with keep rules, a
  save goes only when no keep rule keeps it AND it is older than D.
- A running save, and a save dated in the future (clock skew), are always kept.
- An interrupted save is kept until a later complete save of its series exists; after
  that only keep-within and older-than protect it (it takes no keep-last/period slot).
- The newest complete save of a series is always kept unless allow_empty_series is set.
- remove_ids (`expire --backup ID`, instead of every rule above) removes exactly those saves,
  the newest of a series too; a running save is kept, and the others get no decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from .model import SaveRow

NS = 1_000_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)([smhdwy])")
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")


def parse_duration(text: str) -> int:
    """Seconds in a duration like 90d, 12h, 2w, 1d12h (s m h d w y); ValueError otherwise."""
    text = text.strip().lower()
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90d, 12h, 2w, 1d12h)")
    return total


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within_s: int | None = None
    older_than_s: int | None = None
    allow_empty_series: bool = False
    within_text: str = ""  # the durations as the user wrote them, for reasons
    older_text: str = ""
    remove_ids: frozenset[int] = frozenset()  # saves named to go (alone: no rule applies)

    def has_keep_rules(self) -> bool:
        return bool(self.keep_last or self.keep_within_s is not None
                    or any(getattr(self, f"keep_{p}") for p in PERIODS))

    def is_empty(self) -> bool:
        return not self.has_keep_rules() and self.older_than_s is None and not self.remove_ids


@dataclass(frozen=True)
class Decision:
    save: SaveRow
    keep: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)


def period_key(kind: str, started_ns: int, tz: tzinfo) -> str:
    t = datetime.fromtimestamp(started_ns / NS, tz)
    if kind == "hourly":
        return t.strftime("%Y-%m-%d %Hh")
    if kind == "daily":
        return t.strftime("%Y-%m-%d")
    if kind == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "monthly":
        return t.strftime("%Y-%m")
    return t.strftime("%Y")


def decide(saves: Iterable[SaveRow], policy: Policy, now_ns: int,
           tz: tzinfo = UTC) -> list[Decision]:
    """One Decision per save, in the order of the saves given (sorted by id by callers)."""
    if policy.is_empty():
        raise ValueError("empty policy: give at least one --keep-* or --older-than option")
    saves = list(saves)
    if policy.remove_ids:
        if policy.has_keep_rules() or policy.older_than_s is not None:
            raise ValueError("saves named to go take no keep or older-than rules besides")
        return [Decision(s, True, ("still running (or died: see 'backshift check')",))
                if s.status == "running" else Decision(s, False, ("named with --backup",))
                for s in saves if s.id in policy.remove_ids]
    series: dict[tuple[str, str], list[SaveRow]] = {}
    for s in saves:
        series.setdefault((s.hostname, s.subset), []).append(s)
    out: dict[int, Decision] = {}
    for members in series.values():
        for d in _decide_series(members, policy, now_ns, tz):
            out[d.save.id] = d
    return [out[s.id] for s in saves]


def _nth_newest(n: int) -> str:
    """'newest', '2nd newest', '3rd newest', '11th newest' ..."""
    if n == 1:
        return "newest"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} newest"


def _newest_first(saves: list[SaveRow]) -> list[SaveRow]:
    return sorted(saves, key=lambda s: (s.started_ns, s.id), reverse=True)


def _decide_series(saves: list[SaveRow], policy: Policy, now_ns: int,
                   tz: tzinfo) -> list[Decision]:
    ordered = _newest_first(saves)
    complete = [s for s in ordered if s.status == "complete"]
    reasons: dict[int, list[str]] = {s.id: [] for s in ordered}
    # Slot rules: complete saves only, newest first.
    for i, s in enumerate(complete[:policy.keep_last]):
        reasons[s.id].append(f"keep-last {policy.keep_last}: {_nth_newest(i + 1)}")
    for kind in PERIODS:
        count = getattr(policy, f"keep_{kind}")
        last = None
        for s in complete:
            if count <= 0:
                break
            key = period_key(kind, s.started_ns, tz)
            if key != last:
                reasons[s.id].append(f"{kind} {key}")
                last = key
                count -= 1
    if complete and not policy.allow_empty_series:
        reasons[complete[0].id].append("newest complete save of its series")
    out = []
    for s in ordered:
        age_s = (now_ns - s.started_ns) / NS
        keep_why = reasons[s.id]
        if s.status == "running":
            keep_why.insert(0, "still running (or died: see 'backshift check')")
        if age_s < 0:
            keep_why.append("dated in the future (clock skew?)")
        if policy.keep_within_s is not None and 0 <= age_s < policy.keep_within_s:
            keep_why.append(f"within {policy.within_text or str(policy.keep_within_s) + 's'}")
        if s.status == "interrupted":
            later = [c for c in complete if (c.started_ns, c.id) > (s.started_ns, s.id)]
            if not later:
                keep_why.append("interrupted, no later complete save yet")
        older = policy.older_than_s is not None and age_s > policy.older_than_s
        if policy.older_than_s is not None and not older and age_s >= 0:
            keep_why.append(f"newer than {policy.older_text or str(policy.older_than_s) + 's'}")
        if keep_why:
            out.append(Decision(s, True, tuple(keep_why)))
            continue
        gone = []
        if s.status == "interrupted":
            later_id = min(c.id for c in complete
                           if (c.started_ns, c.id) > (s.started_ns, s.id))
            gone.append(f"interrupted, complete save {later_id} is later")
        elif policy.has_keep_rules():
            gone.append("no keep rule matches")
        if older:
            gone.append(f"older than {policy.older_text or str(policy.older_than_s) + 's'}")
        out.append(Decision(s, False, tuple(gone)))
    return out
