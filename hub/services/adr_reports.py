"""Figures the VEN reports back to the aggregator: telemetry usage of the participating metering
points and the achieved reduction per DR event (the edge only formats them).

Energy source: the usage history's import active energy register (sub number 1); a snapshot at time
t carries the increment of the 30-minute slot ending at t (``recollected_increment`` when set).

Achieved reduction of an event = sum over its participating LDs (actions that ended ``reserved``)
and over the event's 30-minute slots of (baseline - actual). Baseline of a slot for an LD = the
average of the same slot (time of day in ``policy_timezone``) on the last 5 weekdays before the
event's day on which that LD took part in no DR event, looking back at most 30 days. An LD-slot
with no actual reading or no baseline day is left out (and counted in ``slots_missing``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import false, func, select

from hub.db import Database
from hub.model import AdrAction, AdrEvent, AdrPolicy, UsageHistory

ENERGY_SUB = 1
SLOT = timedelta(minutes=30)
BASELINE_DAYS = 5
LOOKBACK_DAYS = 30


def _floor(t: datetime) -> datetime:
    return t - timedelta(minutes=t.minute % 30, seconds=t.second, microseconds=t.microsecond)


def _effective(increment: float | None, recollected: float | None) -> float | None:
    return recollected if recollected is not None else increment


class AdrReportService:
    """Telemetry usage and achieved reduction per event, computed from the usage history."""

    def __init__(self, db: Database, tz: ZoneInfo) -> None:
        self.db = db
        self.tz = tz

    def telemetry_usage(self, now: datetime) -> tuple[datetime, float]:
        """Energy (kWh) of the last complete 30-minute slot, summed over LDs with an active ADR policy;
        returns (slot start, value)."""
        end = _floor(now)
        with self.db.session() as s:
            active = select(AdrPolicy.ld_id).where(AdrPolicy.active.is_(True), AdrPolicy.deleted == false())
            total = s.scalar(select(func.sum(func.coalesce(UsageHistory.recollected_increment,
                                                           UsageHistory.increment)))
                             .where(UsageHistory.ld_id.in_(active), UsageHistory.sub_number == ENERGY_SUB,
                                    UsageHistory.measured_time == end, UsageHistory.status != "missing"))
        return end - SLOT, round(float(total or 0.0), 6)

    def reductions_ended(self, since: datetime | None, now: datetime) -> list[dict[str, Any]]:
        """Achieved reduction of each acted-on event (latest modification) whose window ended in
        (since, now], oldest first."""
        with self.db.session() as s:
            latest = (select(AdrEvent.vtn_id, AdrEvent.event_id, func.max(AdrEvent.modification_number).label("m"))
                      .group_by(AdrEvent.vtn_id, AdrEvent.event_id).subquery())
            rows = s.scalars(select(AdrEvent).join(latest, (latest.c.vtn_id == AdrEvent.vtn_id)
                                                   & (latest.c.event_id == AdrEvent.event_id)
                                                   & (latest.c.m == AdrEvent.modification_number))
                             .where(AdrEvent.test_event.is_(False), AdrEvent.status != "cancelled",
                                    AdrEvent.duration_seconds > 0)).all()
            ended = [(r.id, r.dtstart + timedelta(seconds=r.duration_seconds)) for r in rows]
        out = [self.achieved_reduction(row_id) for row_id, end in sorted(ended, key=lambda x: x[1])
               if end <= now and (since is None or end > since)]
        return [r for r in out if r["lds"]]

    def achieved_reduction(self, row_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            ev = s.get(AdrEvent, row_id)
            start, end = _floor(ev.dtstart), ev.dtstart + timedelta(seconds=ev.duration_seconds)
            lds = sorted(set(s.scalars(select(AdrAction.ld_id).where(AdrAction.adr_event_id == row_id,
                                                                     AdrAction.state == "reserved"))))
            slot_ends = []
            t = start + SLOT
            while t - SLOT < end:
                slot_ends.append(t)
                t += SLOT
            first_day = (start.astimezone(self.tz) - timedelta(days=LOOKBACK_DAYS)).replace(
                hour=0, minute=0, second=0, microsecond=0)
            event_days: dict[str, set[date]] = defaultdict(set)
            usage: dict[tuple[str, datetime], float] = {}
            for chunk in (lds[i:i + 900] for i in range(0, len(lds), 900)):
                for ld, a_start, a_end in s.execute(
                        select(AdrAction.ld_id, AdrAction.start_at, AdrAction.end_at)
                        .where(AdrAction.ld_id.in_(chunk), AdrAction.state == "reserved",
                               AdrAction.end_at > first_day, AdrAction.start_at < start)):
                    d = a_start.astimezone(self.tz).date()
                    while d <= (a_end - timedelta(microseconds=1)).astimezone(self.tz).date():
                        event_days[ld].add(d)
                        d += timedelta(days=1)
                for ld, t_, inc, rec in s.execute(
                        select(UsageHistory.ld_id, UsageHistory.measured_time, UsageHistory.increment,
                               UsageHistory.recollected_increment)
                        .where(UsageHistory.ld_id.in_(chunk), UsageHistory.sub_number == ENERGY_SUB,
                               UsageHistory.measured_time > first_day, UsageHistory.measured_time <= slot_ends[-1],
                               UsageHistory.status != "missing")):
                    v = _effective(inc, rec)
                    if v is not None:
                        usage[(ld, t_)] = float(v)
        baseline_sum = actual_sum = 0.0
        used = missing = 0
        event_day = start.astimezone(self.tz).date()
        for ld in lds:
            days: list[date] = []
            d = event_day - timedelta(days=1)
            while len(days) < BASELINE_DAYS and d >= first_day.date():
                if d.weekday() < 5 and d not in event_days[ld]:
                    days.append(d)
                d -= timedelta(days=1)
            for t_end in slot_ends:
                actual = usage.get((ld, t_end))
                local = t_end.astimezone(self.tz)
                past = [usage[k] for k in ((ld, datetime.combine(day, local.timetz()).astimezone(t_end.tzinfo))
                                           for day in days) if k in usage]
                if actual is None or not past:
                    missing += 1
                    continue
                baseline_sum += sum(past) / len(past)
                actual_sum += actual
                used += 1
        return {"event_id": ev.event_id, "modification_number": ev.modification_number, "vtn_id": ev.vtn_id,
                "start": start, "end": end, "lds": len(lds), "slots_used": used, "slots_missing": missing,
                "baseline_kwh": round(baseline_sum, 6), "actual_kwh": round(actual_sum, 6),
                "reduction_kwh": round(baseline_sum - actual_sum, 6)}
