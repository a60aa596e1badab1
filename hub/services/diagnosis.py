"""Fault diagnosis of collected readings (seed §2.4.3: out-of-range and negative values, long runs of
zero and of missing values) plus two validation checks mature meter data managers run: the interval
spike check and the clock check.

Everything here is pure: it reads a batch of plain rows and returns alert drafts; storing and
notifying them is :class:`hub.services.alerts.AlertService`'s job. Collection calls
:func:`diagnose` after each cycle with the cycle's rows and enough recent history of the same
logical devices for the run checks (at least the larger run threshold plus one slot, and the
whole day for the spike check). ``since`` (the cycle's first new slot) keeps an alert from being
raised again each cycle for something an earlier cycle already reported:

* row checks (out of range, negative increment, clock) look at rows at or after ``since``;
* a zero or missing run is reported once, by the cycle holding the slot where it became longer
  than its threshold;
* a day is spike-checked once, by the cycle holding its last slot of the day (UTC days, like the
  billing files).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")

OUT_OF_RANGE = "reading.out-of-range"
NEGATIVE_INCREMENT = "reading.negative-increment"
ZERO_RUN = "reading.zero-run"
MISSING_RUN = "reading.missing-run"
SPIKE = "reading.spike"
CLOCK_OFF_GRID = "reading.clock-off-grid"

#: code -> severity of every check; the API and docs/alerts.md show the same table.
CHECKS: dict[str, str] = {
    OUT_OF_RANGE: "warning",
    NEGATIVE_INCREMENT: "warning",
    ZERO_RUN: "warning",
    MISSING_RUN: "error",
    SPIKE: "notice",
    CLOCK_OFF_GRID: "warning",
}
SOURCE = "diagnosis"
_EXAMPLES = 3


class Reading(NamedTuple):
    """One usage row as diagnosis sees it; any 6-sequence in this order (a database row) will do."""

    ld_id: str
    sub_number: int
    measured_time: datetime
    register_value: float | None
    increment: float | None
    status: str


class ItemRange(NamedTuple):
    """The plausible range of one register (a parameter group item) and its kind; increment checks
    only apply to ``cumulative`` registers."""

    min_value: float | None
    max_value: float | None
    kind: str = "cumulative"


#: ld_id -> sub_number -> range. Devices of one group may share one inner mapping.
Ranges = Mapping[str, Mapping[int, ItemRange]]


@dataclass(frozen=True)
class Thresholds:
    """How long a run may last and how far an interval may stand out before an alert is raised."""

    zero_run_slots: int = 12
    missing_run_slots: int = 6
    spike_tolerance: float = 3.0
    spike_min_increment: float = 0.5
    clock_tolerance_seconds: float = 0.0
    slot_minutes: int = 30

    @classmethod
    def from_section(cls, section: Any, **overrides: Any) -> Thresholds:
        """Thresholds from a settings section (``settings.alerts``) with the same field names."""
        names = cls.__dataclass_fields__
        values = {name: getattr(section, name) for name in names if hasattr(section, name)}
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class AlertDraft:
    """An alert not stored yet. ``raised_at`` empty means the time it is stored."""

    code: str
    severity: str
    message: str
    ld_id: str | None = None
    he_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    source: str = SOURCE
    raised_at: datetime | None = None


ROW_CHECKS = frozenset({OUT_OF_RANGE, NEGATIVE_INCREMENT, CLOCK_OFF_GRID})
"""The checks that judge each row on its own (no neighbours needed)."""


def diagnose(batch: Iterable[Sequence[Any]], thresholds: Thresholds, ranges: Ranges,
             since: datetime | None = None, checks: Collection[str] | None = None) -> list[AlertDraft]:
    """Every alert the batch calls for, ordered by logical device, register and check; only the
    codes in ``checks`` when given (re-collection, whose rows are scattered, runs the row checks)."""
    series: dict[tuple[str, int], list[Sequence[Any]]] = defaultdict(list)
    for row in batch:
        series[(row[0], row[1])].append(row)
    drafts: list[AlertDraft] = []
    for (ld_id, sub), rows in sorted(series.items()):
        rows.sort(key=lambda r: r[2])
        item = ranges.get(ld_id, {}).get(sub)
        new = rows if since is None else [r for r in rows if r[2] >= since]
        cumulative = item is None or item.kind == "cumulative"
        for code, check in ((OUT_OF_RANGE, lambda: _out_of_range(ld_id, sub, new, item)),
                            (CLOCK_OFF_GRID, lambda: _clock_off_grid(ld_id, sub, new, thresholds)),
                            (MISSING_RUN, lambda: _missing_runs(ld_id, sub, rows, thresholds, since)),
                            (NEGATIVE_INCREMENT, lambda: _negative_increments(ld_id, sub, new) if cumulative else []),
                            (ZERO_RUN, lambda: _zero_runs(ld_id, sub, rows, thresholds, since) if cumulative else []),
                            (SPIKE, lambda: _spikes(ld_id, sub, rows, thresholds, since) if cumulative else [])):
            if checks is None or code in checks:
                drafts += check()
    return drafts


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _summary(rows: list[Sequence[Any]], value_index: int) -> dict[str, Any]:
    return {"count": len(rows), "first": _iso(rows[0][2]), "last": _iso(rows[-1][2]),
            "examples": [{"measured_time": _iso(r[2]), "value": r[value_index]} for r in rows[:_EXAMPLES]]}


def _draft(code: str, ld_id: str, sub: int, message: str, details: dict[str, Any]) -> AlertDraft:
    return AlertDraft(code=code, severity=CHECKS[code], message=message, ld_id=ld_id,
                      details={"sub_number": sub, **details})


def _out_of_range(ld_id: str, sub: int, rows: list[Sequence[Any]], item: ItemRange | None) -> list[AlertDraft]:
    if item is None or (item.min_value is None and item.max_value is None):
        return []
    low = item.min_value if item.min_value is not None else float("-inf")
    high = item.max_value if item.max_value is not None else float("inf")
    bad = [r for r in rows if r[3] is not None and not low <= r[3] <= high]
    if not bad:
        return []
    return [_draft(OUT_OF_RANGE, ld_id, sub,
                   f"{ld_id} register {sub}: {len(bad)} value(s) outside [{item.min_value}, {item.max_value}], "
                   f"first {bad[0][3]} at {_iso(bad[0][2])}",
                   {"min_value": item.min_value, "max_value": item.max_value, **_summary(bad, 3)})]


def _negative_increments(ld_id: str, sub: int, rows: list[Sequence[Any]]) -> list[AlertDraft]:
    bad = [r for r in rows if r[4] is not None and r[4] < 0]
    if not bad:
        return []
    return [_draft(NEGATIVE_INCREMENT, ld_id, sub,
                   f"{ld_id} register {sub}: the register went backwards {len(bad)} time(s), first "
                   f"{bad[0][4]} at {_iso(bad[0][2])} (meter replaced or reset?)", _summary(bad, 4))]


def _runs(rows: list[Sequence[Any]], member: Any, limit: int, since: datetime | None) -> list[tuple[int, int]]:
    """(start, end) index pairs of runs longer than ``limit`` whose crossing slot is new."""
    out = []
    start = None
    for i, row in enumerate([*rows, None]):
        if row is not None and member(row):
            if start is None:
                start = i
            continue
        if start is not None and i - start > limit:
            crossing = rows[start + limit][2]
            if since is None or crossing >= since:
                out.append((start, i - 1))
        start = None
    return out


def _run_details(rows: list[Sequence[Any]], start: int, end: int, limit: int) -> dict[str, Any]:
    return {"slots": end - start + 1, "threshold_slots": limit, "first": _iso(rows[start][2]),
            "last": _iso(rows[end][2]), "ongoing": end == len(rows) - 1}


def _zero_runs(ld_id: str, sub: int, rows: list[Sequence[Any]], t: Thresholds,
               since: datetime | None) -> list[AlertDraft]:
    def is_zero(r: Sequence[Any]) -> bool:
        return r[5] != "missing" and r[4] is not None and r[4] == 0

    return [_draft(ZERO_RUN, ld_id, sub,
                   f"{ld_id} register {sub}: zero consumption for {end - start + 1} slots since "
                   f"{_iso(rows[start][2])} (threshold {t.zero_run_slots})",
                   _run_details(rows, start, end, t.zero_run_slots))
            for start, end in _runs(rows, is_zero, t.zero_run_slots, since)]


def _missing_runs(ld_id: str, sub: int, rows: list[Sequence[Any]], t: Thresholds,
                  since: datetime | None) -> list[AlertDraft]:
    def is_missing(r: Sequence[Any]) -> bool:
        return r[5] == "missing"

    return [_draft(MISSING_RUN, ld_id, sub,
                   f"{ld_id} register {sub}: no reading for {end - start + 1} slots since "
                   f"{_iso(rows[start][2])} (threshold {t.missing_run_slots})",
                   _run_details(rows, start, end, t.missing_run_slots))
            for start, end in _runs(rows, is_missing, t.missing_run_slots, since)]


def _spikes(ld_id: str, sub: int, rows: list[Sequence[Any]], t: Thresholds,
            since: datetime | None) -> list[AlertDraft]:
    slot = timedelta(minutes=t.slot_minutes)
    days: dict[date, list[Sequence[Any]]] = defaultdict(list)
    for r in rows:
        days[r[2].date()].append(r)
    out = []
    for day, day_rows in days.items():
        last = day_rows[-1][2]
        if (last + slot).date() == day or (since is not None and last < since):
            continue  # the day is not over in this batch, or an earlier cycle closed it
        values = sorted((r for r in day_rows if r[5] != "missing" and r[4] is not None and r[4] >= 0),
                        key=lambda r: r[4], reverse=True)
        if len(values) < 3:
            continue
        top, third = values[0], values[2][4]
        if top[4] <= t.spike_min_increment or top[4] <= t.spike_tolerance * third:
            continue
        out.append(_draft(SPIKE, ld_id, sub,
                          f"{ld_id} register {sub}: interval {top[4]} at {_iso(top[2])} is more than "
                          f"{t.spike_tolerance} x the day's third-highest ({third})",
                          {"day": day.isoformat(), "measured_time": _iso(top[2]), "highest": top[4],
                           "third_highest": third, "tolerance": t.spike_tolerance}))
    return out


def _clock_off_grid(ld_id: str, sub: int, rows: list[Sequence[Any]], t: Thresholds) -> list[AlertDraft]:
    grid = t.slot_minutes * 60
    bad = []
    for r in rows:
        when = r[2]
        offset = (when.minute * 60 + when.second + when.microsecond / 1e6) % grid
        if min(offset, grid - offset) > t.clock_tolerance_seconds:
            bad.append(r)
    if not bad:
        return []
    return [_draft(CLOCK_OFF_GRID, ld_id, sub,
                   f"{ld_id} register {sub}: {len(bad)} read(s) stamped off the {t.slot_minutes}-minute grid, "
                   f"first at {_iso(bad[0][2])} (meter clock drift?)",
                   {"slot_minutes": t.slot_minutes, "tolerance_seconds": t.clock_tolerance_seconds,
                    **_summary(bad, 3)})]
