"""Sensor series for secondary use, from IEEE 1888 point values (``fiap_value``), with privacy applied.

Point IDs are never published (they are URIs that often carry a site, a customer or a meter), nor
names, LD_IDs or anything else that identifies a point. A series is per sensor ``kind`` and unit
(temperature, PV power, ...), per group and per 30-minute slot (named by its end: a value at 10:07 is
in the slot ending 10:30) or local day, with the mean, minimum, maximum and sum of the numeric values
and how many values and points made them.

- Points bound to a metering point (``ld_id``) are a household's data: they are grouped by the cluster
  or area of that metering point, and a bucket over fewer than ``k`` distinct customers (the customer
  holding the point at the value's time; a point without one counts as its own) is suppressed.
- Points bound to no metering point are site sensors (weather, a building's plant): their group is
  ``site`` and no k applies. Only callers allowed every group see them.
Values that are not numbers (the protocol's values are strings) are left out.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator
from sqlalchemy import and_, func, or_, select

from hub.config import PrivacySection
from hub.db import Database
from hub.model import Cluster, CustomerLogicalDevice, FiapPoint, FiapValue, LogicalDevice
from hub.services.access import Caller
from hub.services.public import MAX_DAY_SPAN, MAX_SLOT_SPAN, PUBLIC, Period, iso

SITE = "site"
SLOT = timedelta(minutes=30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SensorQuery(Period):
    kind: str = Field(min_length=1, max_length=32, description="what the points measure (temperature, power, ...)")
    group_by: Literal["cluster", "area"] = Field("cluster", description="group of points bound to a metering point")
    group: str | None = Field(None, max_length=128, description="one group only (`site` for site sensors)")
    resolution: Literal["slot", "day"] = "slot"

    @model_validator(mode="after")
    def _span(self) -> SensorQuery:
        limit = MAX_SLOT_SPAN if self.resolution == "slot" else MAX_DAY_SPAN
        if self.to - self.from_ > limit:
            raise ValueError(f"a {self.resolution} query spans at most {limit.days} days")
        return self


class PublicSensorService:
    def __init__(self, db: Database, privacy: PrivacySection, visible_clusters: Any) -> None:
        self.db = db
        self.privacy = privacy
        self.tz = ZoneInfo(privacy.timezone)
        self._visible_clusters = visible_clusters  # PublicDataService._visible_clusters(session, caller)

    @property
    def k(self) -> int:
        return self.privacy.k_anonymity

    def kinds(self, caller: Caller) -> list[dict[str, Any]]:
        """The sensor kinds and units there are, with how many points (no point IDs)."""
        caller.require(PUBLIC)
        p = FiapPoint
        with self.db.session() as s:
            rows = s.execute(select(p.kind, p.unit, func.count()).group_by(p.kind, p.unit).order_by(p.kind, p.unit))
            return [{"kind": k, "unit": u, "points": n} for k, u, n in rows]

    def series(self, caller: Caller, q: SensorQuery) -> dict[str, Any]:
        caller.require(PUBLIC)
        p, v, ld, c, r = FiapPoint, FiapValue, LogicalDevice, Cluster, CustomerLogicalDevice
        lo, hi = q.from_.astimezone(UTC), q.to.astimezone(UTC)
        buckets: dict[tuple[str, str | None, datetime], dict[str, Any]] = {}
        with self.db.session() as s:
            visible = self._visible_clusters(s, caller)
            group_col = ld.cluster_id if q.group_by == "cluster" else c.area
            held = and_(r.ld_id == p.ld_id, r.deleted.is_(False),
                        or_(r.valid_from.is_(None), r.valid_from < v.time), or_(r.valid_to.is_(None), r.valid_to >= v.time))
            stmt = select(p.point_id, p.unit, p.ld_id, group_col, v.time, v.number, r.customer_id) \
                .select_from(v).join(p, p.point_id == v.point_id) \
                .outerjoin(ld, ld.ld_id == p.ld_id).outerjoin(c, c.cluster_id == ld.cluster_id) \
                .outerjoin(r, held) \
                .where(p.kind == q.kind, v.time >= lo, v.time < hi, v.number.is_not(None))
            if visible is not None:
                stmt = stmt.where(ld.cluster_id.in_(visible))
            seen: set[tuple[str, datetime]] = set()
            for point_id, unit, ld_id, grp, t, number, customer in s.execute(stmt):
                if ld_id is not None and grp is None:
                    continue  # bound to a metering point outside any group: published nowhere
                if (point_id, t) in seen or not math.isfinite(number):
                    continue  # one value per point and time even if two customer rows overlap
                seen.add((point_id, t))
                group = SITE if ld_id is None else grp
                if q.group is not None and group != q.group:
                    continue
                t = t if t.tzinfo else t.replace(tzinfo=UTC)
                key = (group, unit, self._bucket(t, q.resolution))
                b = buckets.setdefault(key, {"n": 0, "sum": 0.0, "min": math.inf, "max": -math.inf,
                                             "points": set(), "people": set(), "site": ld_id is None})
                b["n"] += 1
                b["sum"] += number
                b["min"], b["max"] = min(b["min"], number), max(b["max"], number)
                b["points"].add(point_id)
                if ld_id is not None:
                    b["people"].add(customer or f"ld:{ld_id}")
        items, suppressed = [], 0
        for (group, unit, start), b in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            if not b["site"] and len(b["people"]) < self.k:
                suppressed += 1
                continue
            items.append({"group": group, "kind": q.kind, "unit": unit,
                          "period_start": iso(start) if q.resolution == "slot" else start.astimezone(self.tz).date().isoformat(),
                          "mean": round(b["sum"] / b["n"], 6), "min": round(b["min"], 6), "max": round(b["max"], 6),
                          "sum": round(b["sum"], 6), "values": b["n"], "points": len(b["points"]),
                          "customers": None if b["site"] else len(b["people"])})
        return {"kind": q.kind, "group_by": q.group_by, "resolution": q.resolution, "k": self.k,
                "suppressed": suppressed, "items": items}

    def _bucket(self, t: datetime, resolution: str) -> datetime:
        """Slot: the end of the 30-minute slot holding ``t`` (a value at the end belongs to it); day: local midnight."""
        if resolution == "slot":
            rem = (t - EPOCH) % SLOT
            return t if rem == timedelta(0) else t - rem + SLOT
        local = t.astimezone(self.tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
