"""Diagnosis of what a collection cycle stored (seed 2.4.3): the pure checks of
:mod:`hub.services.diagnosis` over each stored batch, with just enough history read back for the run
and spike checks, and the alerts stored (and sent to the NMS) through
:class:`hub.services.alerts.AlertService`, each one once.

A cycle stores its meters in batches, and every batch holds whole series (all the cycle's slots of
each of its registers), so diagnosing batch by batch is diagnosing the cycle, in bounded memory.
History is read only where a check can need it:

* run checks: a register whose new rows hold a missing row, or a zero increment, gets the
  ``max(zero_run_slots, missing_run_slots) + 1`` slots before the cycle (one more than a run
  needs to cross its threshold, so a run that crossed it before the cycle is not reported again);
* spike check: when the cycle holds a day's last slot (UTC days), one set-based query finds the
  registers whose day has a highest interval above ``spike_tolerance`` x its third-highest (the
  check's own condition) and only their day is read.

Alerts are idempotent: a draft whose fingerprint (code, LD_ID, register and the first slot or day
it is about) an earlier alert of the diagnosis already carries is not raised again, so a cycle run
again (forced, or after the hub was killed half-way) raises nothing twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select

from hub.db import Database, UTCDateTime
from hub.model import Alert, ParameterGroupItem
from hub.ports import SLOT_SECONDS
from hub.services.alerts import AlertService
from hub.services.diagnosis import (
    OUT_OF_RANGE,
    SOURCE,
    SPIKE,
    AlertDraft,
    ItemRange,
    Ranges,
    Thresholds,
    diagnose,
)
from hub.services.quality import Quality
from hub.services.usage_writer import IN_CHUNK, USAGE, _raw_time, _Times

SLOT = timedelta(seconds=SLOT_SECONDS)
Row = tuple[str, int, datetime, float | None, float | None, str]
Series = tuple[str, int]


def questionable_rows(rows: Sequence[Row], drafts: Sequence[AlertDraft],
                      ranges: Ranges) -> list[tuple[str, int, datetime]]:
    """The stored rows a validation check rejected: values outside their item's range (when the
    out-of-range check fired) and each spike's highest interval. They keep their value and take
    the ``questionable`` flag, so readers and billing can tell."""
    codes = {d.code for d in drafts}
    keys: list[tuple[str, int, datetime]] = []
    if OUT_OF_RANGE in codes:
        for ld_id, sub, t, value, _inc, _status in rows:
            item = ranges.get(ld_id, {}).get(sub)
            if value is not None and item is not None and (
                    (item.min_value is not None and value < item.min_value)
                    or (item.max_value is not None and value > item.max_value)):
                keys.append((ld_id, sub, t))
    for d in drafts:
        if d.code == SPIKE and d.ld_id is not None:
            keys.append((d.ld_id, int(d.details["sub_number"]), datetime.fromisoformat(d.details["measured_time"])))
    return keys


def group_ranges(db: Database) -> dict[int, dict[int, ItemRange]]:
    """Parameter group -> sub number -> the item's range and kind."""
    with db.session() as s:
        out: dict[int, dict[int, ItemRange]] = {}
        for item in s.scalars(select(ParameterGroupItem)):
            out.setdefault(item.group_id, {})[item.sub_number] = ItemRange(item.min_value, item.max_value, item.kind)
        return out


def fingerprint(code: str, ld_id: str | None, details: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two diagnosis alerts the same finding."""
    return (code, ld_id, details.get("sub_number"), details.get("first") or details.get("day"))


class CycleDiagnosis:
    def __init__(self, db: Database, alerts: AlertService, thresholds: Thresholds) -> None:
        self.db = db
        self.alerts = alerts
        self.thresholds = thresholds

    @property
    def lookback(self) -> int:
        """Slots read before a cycle for the run checks."""
        return max(self.thresholds.zero_run_slots, self.thresholds.missing_run_slots) + 1

    def check(self, rows: Sequence[Row], *, since: datetime, until: datetime, ranges: Ranges,
              he_id: int | None, checks: Collection[str] | None = None) -> int:
        """Diagnose one stored batch (``rows``: its snapshots ``since``..``until`` as stored) and raise
        what is new; returns how many alerts were raised. With ``checks``, only those codes, over
        the rows alone (no history)."""
        if not rows:
            return 0
        spiky = self._spiky(rows, ranges, since, until) if checks is None else {}
        suspects = self._suspects(rows, ranges, set().union(*spiky.values()))
        if not suspects:
            return 0
        batch: list[Row] = list(suspects)
        if checks is None:
            batch += self._history(suspects, since, ranges, spiky)
        drafts = diagnose(batch, self.thresholds, ranges, since=since if checks is None else None, checks=checks)
        if not drafts:
            return 0
        self._mark_questionable(questionable_rows(suspects, drafts, ranges))
        drafts = [dataclasses.replace(d, he_id=he_id) for d in drafts]
        fresh = self._unreported(drafts)
        return len(self.alerts.raise_alerts(fresh))

    def _mark_questionable(self, keys: list[tuple[str, int, datetime]]) -> None:
        if not keys:
            return
        c = USAGE.c
        with self.db.session() as s:
            s.connection().execute(
                USAGE.update()
                .where(c.ld_id == bindparam("k_ld"), c.sub_number == bindparam("k_sub"),
                       c.measured_time == bindparam("k_t", type_=UTCDateTime))
                .values(quality=c.quality.op("|")(int(Quality.QUESTIONABLE))),
                [{"k_ld": ld, "k_sub": sub, "k_t": t} for ld, sub, t in keys])

    def _suspects(self, rows: Sequence[Row], ranges: Ranges, spiky: set[Series]) -> list[Row]:
        """The rows of the registers some check could fire on; the others cannot raise anything,
        so the (per-register) checks skip them. A register is a suspect when one of its new rows is
        outside its item's range, off the grid, missing, or has a negative or zero increment, or
        when its day, closed by the cycle, may hold a spike (``spiky``)."""
        grid = self.thresholds.slot_minutes * 60
        suspects: set[Series] = set(spiky)
        for ld_id, sub, t, value, inc, status in rows:
            if (ld_id, sub) in suspects:
                continue
            if status == "missing" or (inc is not None and inc <= 0) \
                    or (t.minute * 60 + t.second) % grid or t.microsecond:
                suspects.add((ld_id, sub))
            elif value is not None:
                item = ranges.get(ld_id, {}).get(sub)
                if item is not None and ((item.min_value is not None and value < item.min_value)
                                         or (item.max_value is not None and value > item.max_value)):
                    suspects.add((ld_id, sub))
        return [r for r in rows if (r[0], r[1]) in suspects]

    # history -----------------------------------------------------------------------------------

    @staticmethod
    def _cumulative(ranges: Ranges, ld_id: str, sub: int) -> bool:
        item = ranges.get(ld_id, {}).get(sub)
        return item is None or item.kind == "cumulative"

    def _spiky(self, rows: Sequence[Row], ranges: Ranges, since: datetime,
               until: datetime) -> dict[datetime, set[Series]]:
        """Per day the cycle closes (its last slot), the batch's registers that may hold a spike."""
        days = self._closed_days(since, until)
        if not days:
            return {}
        series = {(r[0], r[1]) for r in rows if self._cumulative(ranges, r[0], r[1])}
        with self.db.session() as s:
            conn = s.connection()
            if conn.dialect.name == "postgresql":  # a day of a batch sorts in memory; compiling costs more than it saves
                conn.exec_driver_sql("SET LOCAL work_mem = '32MB'")
                conn.exec_driver_sql("SET LOCAL jit = off")
            return {day_end: self._spike_candidates(conn, series, day_end - (timedelta(days=1) - SLOT), day_end)
                    for day_end in days}

    def _history(self, rows: Sequence[Row], since: datetime, ranges: Ranges,
                 spiky: Mapping[datetime, set[Series]]) -> list[Row]:
        """The stored rows before ``since`` that the run checks (registers with a missing or zero new
        row) and the spike check (``spiky``: their whole day) need."""
        runs: set[Series] = set()
        for ld_id, sub, _t, _v, inc, status in rows:
            if status == "missing" or (inc == 0 and self._cumulative(ranges, ld_id, sub)):
                runs.add((ld_id, sub))
        back = since - self.lookback * SLOT
        out: dict[tuple[str, int, datetime], Row] = {}
        if not runs and not any(spiky.values()):
            return []
        with self.db.session() as s:
            conn = s.connection()
            if runs:
                for r in self._read(conn, runs, back, since - SLOT):
                    out[r[:3]] = r
            for day_end, candidates in spiky.items():
                if candidates:  # the day before the batch, and the lookback, so runs stay whole
                    lo = min(day_end - (timedelta(days=1) - SLOT), back)
                    for r in self._read(conn, candidates, lo, since - SLOT):
                        out[r[:3]] = r
        return list(out.values())

    @staticmethod
    def _closed_days(since: datetime, until: datetime) -> list[datetime]:
        """The last slots (23:30 UTC) of the days the cycle closes."""
        out = []
        t = until.replace(hour=23, minute=30, second=0, microsecond=0)
        if t > until:
            t -= timedelta(days=1)
        while t >= since:
            out.append(t)
            t -= timedelta(days=1)
        return sorted(out)

    @staticmethod
    def _read(conn: Connection, series: set[Series], lo: datetime, hi: datetime) -> list[Row]:
        if hi < lo:
            return []
        c = USAGE.c
        norm = _Times()
        subs = sorted({s[1] for s in series})
        out: list[Row] = []
        for chunk in _chunks(sorted({s[0] for s in series})):
            for ld_id, sub, t, value, inc, rinc, status in conn.execute(
                    select(c.ld_id, c.sub_number, _raw_time(c.measured_time), c.register_value, c.increment,
                           c.recollected_increment, c.status)
                    .where(c.ld_id.in_(chunk), c.sub_number.in_(subs), c.measured_time.between(lo, hi))):
                if (ld_id, sub) in series:
                    out.append((ld_id, sub, norm(t), value, rinc if rinc is not None else inc, status))
        return out

    def _spike_candidates(self, conn: Connection, series: set[Series], lo: datetime, hi: datetime) -> set[Series]:
        """Registers whose day ``lo``..``hi`` holds a spike: a highest interval above
        ``spike_min_increment`` and above ``spike_tolerance`` x the third-highest (the pure check's
        condition, which then confirms on the rows). PostgreSQL ranks each register's intervals in
        one pass; SQLite, where that window is slower, counts the intervals within reach of the
        highest (fewer than three means the third-highest is below highest / tolerance)."""
        if not series:
            return set()
        c = USAGE.c
        t = self.thresholds
        inc = func.coalesce(c.recollected_increment, c.increment)
        subs = sorted({s[1] for s in series})
        out: set[Series] = set()
        if conn.dialect.name == "postgresql":
            ld_ids = sorted({s[0] for s in series})
            rows = conn.exec_driver_sql(
                "SELECT DISTINCT ld_id, sub_number FROM (SELECT ld_id, sub_number, max(inc) OVER w AS top, "
                "nth_value(inc, 3) OVER w AS third FROM (SELECT ld_id, sub_number, "
                "coalesce(recollected_increment, increment) AS inc FROM usage_history "
                "WHERE ld_id = ANY(%s) AND sub_number = ANY(%s) AND measured_time BETWEEN %s AND %s "
                "AND status <> 'missing') AS d WHERE inc >= 0 "
                "WINDOW w AS (PARTITION BY ld_id, sub_number ORDER BY inc DESC "
                "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) AS x "
                "WHERE top > %s AND top > %s * third",
                (ld_ids, subs, lo, hi, t.spike_min_increment, t.spike_tolerance)).fetchall()
            return {(ld, sub) for ld, sub in rows if (ld, sub) in series}
        for chunk in _chunks(sorted({s[0] for s in series})):
            day = and_(c.ld_id.in_(chunk), c.sub_number.in_(subs), c.measured_time.between(lo, hi),
                       c.status != "missing", inc >= 0)
            top = (select(c.ld_id, c.sub_number, func.max(inc).label("top")).where(day)
                   .group_by(c.ld_id, c.sub_number).having(func.max(inc) > t.spike_min_increment).subquery())
            near = (select(top.c.ld_id, top.c.sub_number)
                    .join_from(top, USAGE, and_(c.ld_id == top.c.ld_id, c.sub_number == top.c.sub_number))
                    .where(day, inc * t.spike_tolerance >= top.c.top)
                    .group_by(top.c.ld_id, top.c.sub_number).having(func.count() < 3))
            out.update((ld, sub) for ld, sub in conn.execute(near) if (ld, sub) in series)
        return out

    # once only ---------------------------------------------------------------------------------

    def _unreported(self, drafts: list[AlertDraft]) -> list[AlertDraft]:
        """The drafts no earlier diagnosis alert already reported."""
        ld_ids = sorted({d.ld_id for d in drafts if d.ld_id is not None})
        codes = sorted({d.code for d in drafts})
        seen: set[tuple[Any, ...]] = set()
        with self.db.session() as s:
            for chunk in _chunks(ld_ids):
                for code, ld_id, details in s.execute(select(Alert.code, Alert.ld_id, Alert.details).where(
                        Alert.source == SOURCE, Alert.ld_id.in_(chunk), Alert.code.in_(codes))):
                    seen.add(fingerprint(code, ld_id, details or {}))
        out = []
        for d in drafts:
            key = fingerprint(d.code, d.ld_id, d.details)
            if key not in seen:
                seen.add(key)
                out.append(d)
        return out


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
