"""The operations dashboard's figures (seed 001), computed in one read of the store.

- Meters by state: ``communicating`` (a stored value in the last ``silent_after``), ``not_communicating``
  (values once, none lately), ``never_seen`` (configured, no value ever) and ``disposed`` (deleted).
- The fleet's 30-minute energy today (register 1, effective increments, slots named by their end, local
  day of ``[privacy] timezone``) against a band: the lowest and highest fleet total of the same slot on
  the same weekday of the past ``band_weeks`` weeks.
- The latest alerts, collection health per head-end (missing rate of the last day's runs, rows still
  missing now) and the latest DR events with their actions by state.

Operators see identifiers here (LD_IDs in alerts); the edge serving it requires the ``ops:read`` scope.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select

from hub.db import Database, utcnow
from hub.model import (Alert, AdrAction, AdrEvent, CollectionRun, Concentrator, HeadEnd, LogicalDevice,
                       PhysicalDevice, UsageHistory)
from hub.services.public import iso

SLOT = timedelta(minutes=30)


class DashboardService:
    def __init__(self, db: Database, timezone: str, clock: Callable[[], datetime] = utcnow, *,
                 silent_after: timedelta = timedelta(hours=24), band_weeks: int = 4) -> None:
        self.db = db
        self.tz = ZoneInfo(timezone)
        self.clock = clock
        self.silent_after = silent_after
        self.band_weeks = band_weeks

    def overview(self, now: datetime | None = None, alerts: int = 10, events: int = 10) -> dict[str, Any]:
        now = (now or self.clock()).astimezone(UTC)
        with self.db.session() as s:
            return {"now": iso(now), "timezone": str(self.tz), "meters": self._meters(s, now),
                    "energy_today": self._energy(s, now), "alerts": self._alerts(s, alerts),
                    "collection": self._collection(s, now), "dr_events": self._events(s, events)}

    # --- meters -------------------------------------------------------------------------------
    def _meters(self, s: Any, now: datetime) -> dict[str, int]:
        u, ld = UsageHistory, LogicalDevice
        seen = select(u.ld_id, func.max(u.measured_time).label("last")).where(
            func.coalesce(u.recollected_increment, u.increment).is_not(None)).group_by(u.ld_id).subquery()
        counts = {"communicating": 0, "not_communicating": 0, "never_seen": 0, "disposed": 0}
        cutoff = now - self.silent_after
        for deleted, last in s.execute(select(ld.deleted, seen.c.last).select_from(ld).outerjoin(
                seen, seen.c.ld_id == ld.ld_id)):
            if deleted:
                counts["disposed"] += 1
            elif last is None:
                counts["never_seen"] += 1
            else:
                last = last if last.tzinfo else last.replace(tzinfo=UTC)
                counts["communicating" if last >= cutoff else "not_communicating"] += 1
        counts["total"] = sum(counts.values())
        return counts

    # --- fleet energy and its band ------------------------------------------------------------
    def _fleet(self, s: Any, lo: datetime, hi: datetime) -> dict[datetime, float]:
        u = UsageHistory
        t = u.measured_time
        rows = s.execute(select(t, func.sum(func.coalesce(u.recollected_increment, u.increment)))
                         .where(u.sub_number == 1, t > lo, t <= hi).group_by(t))
        return {(k if k.tzinfo else k.replace(tzinfo=UTC)): float(v or 0.0) for k, v in rows}

    def _energy(self, s: Any, now: datetime) -> dict[str, Any]:
        local = now.astimezone(self.tz)
        start = datetime(local.year, local.month, local.day, tzinfo=self.tz).astimezone(UTC)
        today = self._fleet(s, start, start + timedelta(days=1))
        past: dict[int, list[float]] = defaultdict(list)
        for w in range(1, self.band_weeks + 1):
            day = datetime.combine((local - timedelta(weeks=w)).date(), datetime.min.time(), self.tz).astimezone(UTC)
            week = self._fleet(s, day, day + timedelta(days=1))
            for t, v in week.items():
                past[int((t - day) / SLOT)].append(v)
        slots = []
        for n in range(1, 49):
            end = start + n * SLOT
            band = past.get(n, [])
            slots.append({"slot_end": iso(end), "energy_kwh": round(today[end], 6) if end in today else None,
                          "lower_kwh": round(min(band), 6) if band else None,
                          "upper_kwh": round(max(band), 6) if band else None})
        return {"day": local.date().isoformat(), "band_weeks": self.band_weeks,
                "total_kwh": round(sum(today.values()), 6), "slots": slots}

    # --- alerts, collection, DR ---------------------------------------------------------------
    @staticmethod
    def _alerts(s: Any, limit: int) -> list[dict[str, Any]]:
        rows = s.scalars(select(Alert).order_by(Alert.raised_at.desc(), Alert.id.desc()).limit(limit))
        return [{"id": a.id, "raised_at": iso(a.raised_at), "severity": a.severity, "code": a.code,
                 "source": a.source, "message": a.message, "ld_id": a.ld_id, "he_id": a.he_id} for a in rows]

    def _collection(self, s: Any, now: datetime) -> list[dict[str, Any]]:
        r = CollectionRun
        since = now - timedelta(days=1)
        runs = {he: (int(e or 0), int(m or 0), last) for he, e, m, last in s.execute(
            select(r.he_id, func.sum(r.expected), func.sum(r.missing), func.max(r.slot_time))
            .where(r.slot_time > since, r.kind.in_(("scheduled", "backfill"))).group_by(r.he_id))}
        u, ld, pd, co = UsageHistory, LogicalDevice, PhysicalDevice, Concentrator
        backlog = dict(s.execute(
            select(co.he_id, func.count()).select_from(u)
            .join(ld, ld.ld_id == u.ld_id).join(pd, pd.id == ld.physical_device_id)
            .join(co, co.id == pd.concentrator_id).where(u.status == "missing").group_by(co.he_id)).all())
        out = []
        for he in s.scalars(select(HeadEnd).order_by(HeadEnd.he_id)):
            expected, missing, last = runs.get(he.he_id, (0, 0, None))
            out.append({"he_id": he.he_id, "name": he.name, "expected_24h": expected, "missing_24h": missing,
                        "missing_rate": round(missing / expected, 6) if expected else None,
                        "last_slot": iso(last) if last else None,
                        "recollection_backlog": int(backlog.get(he.he_id, 0))})
        return out

    @staticmethod
    def _events(s: Any, limit: int) -> list[dict[str, Any]]:
        e, a = AdrEvent, AdrAction
        latest = select(e.vtn_id, e.event_id, func.max(e.modification_number).label("m")) \
            .group_by(e.vtn_id, e.event_id).subquery()
        events = list(s.scalars(select(e).join(latest, and_(
            e.vtn_id == latest.c.vtn_id, e.event_id == latest.c.event_id, e.modification_number == latest.c.m))
            .order_by(e.dtstart.desc(), e.id.desc()).limit(limit)))
        out = []
        for ev in events:
            ids = select(e.id).where(e.vtn_id == ev.vtn_id, e.event_id == ev.event_id)
            by_state = dict(s.execute(select(a.state, func.count()).where(a.adr_event_id.in_(ids))
                                      .group_by(a.state)).all())
            out.append({"event_id": ev.event_id, "vtn_id": ev.vtn_id, "status": ev.status,
                        "start": iso(ev.dtstart) if ev.dtstart else None,
                        "duration_seconds": ev.duration_seconds, "response": ev.response,
                        "actions_by_state": by_state, "actions": sum(by_state.values())})
        return out
