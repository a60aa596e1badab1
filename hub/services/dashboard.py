"""The operations dashboard's figures (seed 001), read from recent rows and the usage rollup, so a
page costs the same with a year of history as with a day.

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
from hub.services.usage_rollup import FLEET, UsageRollupService

SLOT = timedelta(minutes=30)
IN_CHUNK = 900


class DashboardService:
    def __init__(self, db: Database, timezone: str, clock: Callable[[], datetime] = utcnow, *,
                 silent_after: timedelta = timedelta(hours=24), band_weeks: int = 4,
                 rollup: UsageRollupService | None = None) -> None:
        self.db = db
        self.rollup = rollup or UsageRollupService(db)
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
        """Reads only the last ``silent_after`` of usage, then, for the points silent in it, whether
        they ever had a value: never the whole history of the fleet."""
        u, ld = UsageHistory, LogicalDevice
        valued = func.coalesce(u.recollected_increment, u.increment).is_not(None)
        cutoff = now - self.silent_after
        recent = set(s.scalars(select(u.ld_id).where(u.measured_time >= cutoff, valued).distinct()))
        counts = {"communicating": 0, "not_communicating": 0, "never_seen": 0, "disposed": 0}
        quiet: list[str] = []
        for ld_id, deleted in s.execute(select(ld.ld_id, ld.deleted)):
            if deleted:
                counts["disposed"] += 1
            elif ld_id is None:
                counts["never_seen"] += 1
            elif ld_id in recent:
                counts["communicating"] += 1
            else:
                quiet.append(ld_id)
        seen_before: set[str] = set()
        for i in range(0, len(quiet), IN_CHUNK):
            seen_before |= set(s.scalars(select(u.ld_id).where(u.ld_id.in_(quiet[i:i + IN_CHUNK]), valued).distinct()))
        counts["not_communicating"] = len(seen_before)
        counts["never_seen"] += len(quiet) - len(seen_before)
        counts["total"] = sum(counts.values())
        return counts

    # --- fleet energy and its band ------------------------------------------------------------
    def _fleet(self, lo: datetime, hi: datetime) -> dict[datetime, float]:
        """Register 1's fleet total per slot of (lo, hi], from the usage rollup."""
        self.rollup.refresh(lo, hi)
        return {t: float(tot.energy or 0.0) for _, _, t, tot in self.rollup.read(FLEET, None, lo, hi, 1)}

    def _energy(self, s: Any, now: datetime) -> dict[str, Any]:
        local = now.astimezone(self.tz)
        start = datetime(local.year, local.month, local.day, tzinfo=self.tz).astimezone(UTC)
        today = self._fleet(start, start + timedelta(days=1))
        past: dict[int, list[float]] = defaultdict(list)
        for w in range(1, self.band_weeks + 1):
            day = datetime.combine((local - timedelta(weeks=w)).date(), datetime.min.time(), self.tz).astimezone(UTC)
            week = self._fleet(day, day + timedelta(days=1))
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
