"""Secondary-use queries with privacy applied before anything leaves the hub (seed 002).

- Aggregates (usage, data quality) are per cluster or area and per 30-minute slot or day; a bucket
  over fewer than ``k`` distinct customers is suppressed (left out, and counted in ``suppressed``).
  A metering point with no customer counts as a customer of its own, so unassigned meters never
  make a small group look big.
- Public results never carry LD_IDs, names, addresses or MACs.
- Per-customer series only for callers holding that customer (``customer:read`` clients with the
  customer listed, or the customer's own portal account).

Slots are named by their end (the snapshot's ``measured_time``: the increment at 10:30 is the energy
of 10:00-10:30). A period holds the slots that end after ``from`` and no later than ``to`` (for a
period on the grid: the slots that lie in it), and a day or month holds the slots that start in it,
so a local day is the 48 slots ending 00:30 ... 24:00, as in the day's delivery file and the
dashboard. Days and months are in ``[privacy] timezone``. Energy is the effective increment
(the re-collected one when a gap was filled), rows still missing add nothing.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import and_, case, exists, func, literal, or_, select

from hub.config import PrivacySection
from hub.db import Database
from hub.model import (AdrAction, AdrEvent, Cluster, CustomerLogicalDevice, LogicalDevice, QuoteHistory, UsageHistory,
                       UsageVersion)
from hub.services.access import Caller, Forbidden
from hub.services.usage_rollup import Totals, UsageRollupService

PUBLIC = "public:read"
CUSTOMER = "customer:read"
SLOT = timedelta(minutes=30)
MAX_SLOT_SPAN = timedelta(days=31)
MAX_DAY_SPAN = timedelta(days=92)
MAX_MONTH_SPAN = timedelta(days=366 * 5 + 2)
FAILED_ACTION_STATES = ("failed", "refused", "cancelled", "rejected", "error")


class Period(BaseModel):
    """``from`` inclusive, ``to`` exclusive (aware ISO 8601 times); for usage, the slots lying in it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime = Field(alias="from", description="start (inclusive), with a time zone")
    to: AwareDatetime = Field(description="end (exclusive), with a time zone")

    @model_validator(mode="after")
    def _order(self) -> Period:
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        return self


class AggregateQuery(Period):
    group_by: Literal["cluster", "area"] = Field("cluster", description="what a group is")
    group: str | None = Field(None, max_length=128, description="one group only")
    resolution: Literal["slot", "day"] = "slot"
    sub_number: int = Field(1, ge=0, le=65535, description="register (1: import active energy)")

    @model_validator(mode="after")
    def _span(self) -> AggregateQuery:
        limit = MAX_SLOT_SPAN if self.resolution == "slot" else MAX_DAY_SPAN
        if self.to - self.from_ > limit:
            raise ValueError(f"a {self.resolution} query spans at most {limit.days} days")
        return self


class QualityQuery(Period):
    group_by: Literal["cluster", "area"] = "cluster"
    group: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _span(self) -> QualityQuery:
        if self.to - self.from_ > MAX_DAY_SPAN:
            raise ValueError(f"a quality query spans at most {MAX_DAY_SPAN.days} days")
        return self


class SeriesQuery(Period):
    resolution: Literal["slot", "day", "month"] = "slot"
    sub_number: int = Field(1, ge=0, le=65535)

    @model_validator(mode="after")
    def _span(self) -> SeriesQuery:
        limit = {"slot": MAX_SLOT_SPAN, "day": timedelta(days=366), "month": MAX_MONTH_SPAN}[self.resolution]
        if self.to - self.from_ > limit:
            raise ValueError(f"a {self.resolution} series spans at most {limit.days} days")
        return self


def iso(t: datetime) -> str:
    text = t.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _effective() -> Any:
    u = UsageHistory
    return func.coalesce(u.recollected_increment, u.increment)


def _held(customer_col: Any = None) -> Any:
    """The customer<->LD relation valid at the snapshot's time."""
    u, r = UsageHistory, CustomerLogicalDevice
    cond = [r.ld_id == u.ld_id, r.deleted.is_(False),
            or_(r.valid_from.is_(None), r.valid_from < u.measured_time),
            or_(r.valid_to.is_(None), r.valid_to >= u.measured_time)]
    if customer_col is not None:
        cond.append(r.customer_id == customer_col)
    return and_(*cond)


class PublicDataService:
    """Aggregates, DR summaries, quality summaries and rights-checked per-customer series."""

    def __init__(self, db: Database, privacy: PrivacySection) -> None:
        self.db = db
        self.rollup = UsageRollupService(db)
        self.privacy = privacy
        self.tz = ZoneInfo(privacy.timezone)

    @property
    def k(self) -> int:
        return self.privacy.k_anonymity

    # --- visibility ---------------------------------------------------------------------------
    def _visible_clusters(self, s: Any, caller: Caller) -> set[str] | None:
        """The clusters a caller may see (None: all)."""
        if caller.groups is None:
            return None
        clusters = {g[8:] for g in caller.groups if g.startswith("cluster:")}
        areas = {g[5:] for g in caller.groups if g.startswith("area:")}
        if areas:
            clusters |= set(s.scalars(select(Cluster.cluster_id).where(Cluster.area.in_(areas))))
        return clusters

    def groups(self, caller: Caller) -> list[dict[str, Any]]:
        """The clusters (with their areas) the caller may aggregate over."""
        caller.require(PUBLIC)
        with self.db.session() as s:
            visible = self._visible_clusters(s, caller)
            q = select(Cluster.cluster_id, Cluster.name, Cluster.area).order_by(Cluster.cluster_id)
            if visible is not None:
                q = q.where(Cluster.cluster_id.in_(visible))
            return [{"cluster": c, "name": n, "area": a} for c, n, a in s.execute(q)]

    def _group_filters(self, s: Any, caller: Caller, group_by: str, group: str | None) -> tuple[Any, list[Any]]:
        group_col = LogicalDevice.cluster_id if group_by == "cluster" else Cluster.area
        conds: list[Any] = [group_col.is_not(None)]
        visible = self._visible_clusters(s, caller)
        if visible is not None:
            conds.append(LogicalDevice.cluster_id.in_(visible))
        if group is not None:
            conds.append(group_col == group)
        return group_col, conds

    def _rollup_groups(self, caller: Caller, group_by: str, group: str | None) -> set[str] | None | Literal["live"]:
        """The groups to read from the rollup (None: all), or ``"live"`` when the rollup cannot answer:
        a caller who sees only some clusters of an area gets that area's total over those clusters,
        and its distinct customers cannot be added up from cluster totals."""
        with self.db.session() as s:
            visible = self._visible_clusters(s, caller)
            if visible is None:
                groups = None
            elif group_by == "cluster":
                groups = set(visible)
            else:
                clusters_of: dict[str, set[str]] = defaultdict(set)
                for cluster_id, area in s.execute(select(Cluster.cluster_id, Cluster.area)
                                                  .where(Cluster.area.is_not(None))):
                    clusters_of[area].add(cluster_id)
                seen = {a for a, cs in clusters_of.items() if cs & visible}
                if any(not clusters_of[a] <= visible for a in seen):
                    return "live"
                groups = seen
        if group is not None:
            groups = {group} if groups is None else groups & {group}
        return groups

    def _day_of(self, t: datetime) -> datetime:
        """The local day (its midnight, in the zone) a slot ending at ``t`` belongs to: (midnight, midnight]."""
        local = (t - timedelta(microseconds=1)).astimezone(self.tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)

    def _totals(self, caller: Caller, group_by: str, group: str | None, period: Period,
                sub_number: int | None) -> list[tuple[str, int, datetime, Totals]]:
        """Per group, register and slot of the period: the rollup's totals (refreshed first), or the
        same totals straight from usage_history when the rollup cannot answer the caller."""
        groups = self._rollup_groups(caller, group_by, group)
        if groups == "live":
            return self._live_totals(caller, group_by, group, period, sub_number)
        lo, hi = period.from_.astimezone(UTC), period.to.astimezone(UTC)
        self.rollup.refresh(lo, hi)
        return self.rollup.read(group_by, groups, lo, hi, sub_number)  # type: ignore[arg-type]

    def _live_totals(self, caller: Caller, group_by: str, group: str | None, period: Period,
                     sub_number: int | None) -> list[tuple[str, int, datetime, Totals]]:
        """What the rollup holds, computed from usage_history over the clusters the caller sees."""
        u, r = UsageHistory, CustomerLogicalDevice
        with self.db.session() as s:
            group_col, conds = self._group_filters(s, caller, group_by, group)
            conds += [u.measured_time > period.from_.astimezone(UTC), u.measured_time <= period.to.astimezone(UTC)]
            if sub_number is not None:
                conds.append(u.sub_number == sub_number)
            keys = (group_col, u.sub_number, u.measured_time)
            rows = select(*keys).select_from(u).join(LogicalDevice, LogicalDevice.ld_id == u.ld_id) \
                .join(Cluster, Cluster.cluster_id == LogicalDevice.cluster_id).where(*conds).group_by(*keys)
            person = func.count(func.distinct(func.coalesce(r.customer_id, literal("ld:") + u.ld_id)))
            people = {tuple(row[:3]): row[3] for row in s.execute(rows.outerjoin(r, _held()).add_columns(person))}
            counts = [func.sum(case((u.status == st, 1), else_=0)) for st in ("normal", "missing", "recollected")]
            return [(g, sub, t, Totals(energy, meters, people.get((g, sub, t), 0), normal or 0, missing or 0,
                                       recollected or 0))
                    for g, sub, t, energy, meters, normal, missing, recollected in
                    s.execute(rows.add_columns(func.sum(_effective()), func.count(), *counts))]

    # --- usage aggregates ---------------------------------------------------------------------
    def usage_aggregate(self, caller: Caller, q: AggregateQuery) -> dict[str, Any]:
        """Energy per group and slot/day; buckets under k distinct customers are suppressed.

        A day's ``meters`` and ``customers`` are the largest of its slots' (a day's buckets are checked
        against k by its slots, never by a union no slot reached), whether the totals come from the
        rollup or, for a caller who sees part of an area, from usage_history."""
        caller.require(PUBLIC)
        rows = self._totals(caller, q.group_by, q.group, q, q.sub_number)
        buckets: dict[tuple[str, datetime], dict[str, Any]] = {}
        for g, _sub, t, tot in rows:
            start = t if q.resolution == "slot" else self._day_of(t)
            b = buckets.get((g, start))
            if b is None:
                buckets[(g, start)] = {"group": g, "period_start": start, "energy_kwh": tot.energy,
                                       "meters": tot.meters, "customers": tot.customers}
                continue
            if tot.energy is not None:
                b["energy_kwh"] = (b["energy_kwh"] or 0.0) + tot.energy
            b["meters"], b["customers"] = max(b["meters"], tot.meters), max(b["customers"], tot.customers)
        return self._publish(buckets, q.resolution, q.group_by, "energy_kwh")

    def _publish(self, buckets: dict[tuple[str, datetime], dict[str, Any]], resolution: str, group_by: str,
                 value_key: str) -> dict[str, Any]:
        items, suppressed = [], 0
        for key in sorted(buckets):
            b = buckets[key]
            if b["customers"] < self.k:
                suppressed += 1
                continue
            b["period_start"] = iso(b["period_start"]) if resolution == "slot" \
                else b["period_start"].astimezone(self.tz).date().isoformat()
            if value_key in b and b[value_key] is not None:
                b[value_key] = round(float(b[value_key]), 6)
            items.append(b)
        return {"group_by": group_by, "resolution": resolution, "k": self.k, "suppressed": suppressed,
                "items": items}

    # --- data quality -------------------------------------------------------------------------
    def quality_summary(self, caller: Caller, q: QualityQuery) -> dict[str, Any]:
        """Snapshot status counts (normal / missing / re-collected) per group and day, every register
        counted; from the usage rollup, a day's customers being the most of any of its slots."""
        caller.require(PUBLIC)
        rows = self._totals(caller, q.group_by, q.group, q, None)
        buckets: dict[tuple[str, datetime], dict[str, Any]] = {}
        for g, _sub, t, tot in rows:
            start = self._day_of(t)
            b = buckets.setdefault((g, start), {"group": g, "period_start": start, "normal": 0, "missing": 0,
                                                "recollected": 0, "missing_rate": None, "customers": 0})
            b["normal"] += tot.normal
            b["missing"] += tot.missing
            b["recollected"] += tot.recollected
            b["customers"] = max(b["customers"], tot.customers)
        for b in buckets.values():
            total = b["normal"] + b["missing"] + b["recollected"]
            b["missing_rate"] = round(b["missing"] / total, 6) if total else None
        return self._publish(buckets, "day", q.group_by, "missing_rate")

    # --- DR events ----------------------------------------------------------------------------
    def dr_events(self, caller: Caller, q: Period) -> dict[str, Any]:
        """Events starting in the period (latest modification of each), with participation and the
        contract-capacity reduction reserved. Participation figures of events with fewer than k
        participants are suppressed (the event itself is public)."""
        caller.require(PUBLIC)
        e, a = AdrEvent, AdrAction
        with self.db.session() as s:
            latest = select(e.vtn_id, e.event_id, func.max(e.modification_number).label("m")) \
                .where(e.dtstart >= q.from_.astimezone(UTC), e.dtstart < q.to.astimezone(UTC)) \
                .group_by(e.vtn_id, e.event_id).subquery()
            events = list(s.scalars(select(e).join(latest, and_(
                e.vtn_id == latest.c.vtn_id, e.event_id == latest.c.event_id,
                e.modification_number == latest.c.m)).order_by(e.dtstart, e.event_id)))
            ids_of: dict[tuple[str, str], list[int]] = defaultdict(list)
            if events:
                for row_id, vtn, ev in s.execute(select(e.id, e.vtn_id, e.event_id).where(
                        e.event_id.in_({x.event_id for x in events}))):
                    ids_of[(vtn, ev)].append(row_id)
            items = []
            for ev in events:
                ids = ids_of[(ev.vtn_id, ev.event_id)]
                ok = a.state.not_in(FAILED_ACTION_STATES)
                participants, reduced, actions = s.execute(select(
                    func.count(func.distinct(case((ok, a.ld_id)))),
                    func.sum(case((ok, func.coalesce(a.restore_amps, 0) - func.coalesce(a.reduced_amps, 0)), else_=0)),
                    func.count(a.id)).where(a.adr_event_id.in_(ids))).one()
                by_state = dict(s.execute(select(a.state, func.count()).where(a.adr_event_id.in_(ids))
                                          .group_by(a.state)).all())
                item: dict[str, Any] = {
                    "event_id": ev.event_id, "market_context": ev.market_context, "status": ev.status,
                    "modification_number": ev.modification_number, "test_event": ev.test_event,
                    "start": iso(ev.dtstart) if ev.dtstart else None, "duration_seconds": ev.duration_seconds,
                    "signals": [_signal_summary(sig) for sig in ev.signals or []],
                    "response": ev.response, "participants": participants, "actions": actions,
                    "actions_by_state": by_state, "reduction_amps": reduced}
                if participants < self.k:
                    item.update(participants=None, actions=None, actions_by_state=None, reduction_amps=None,
                                suppressed=True)
                items.append(item)
        return {"k": self.k, "items": items}

    # --- per-customer series ------------------------------------------------------------------
    def customer_series(self, caller: Caller, customer_id: str, q: SeriesQuery,
                        with_quotes: bool = False) -> dict[str, Any]:
        """Energy (and, for the portal, estimated charges) of one customer's metering points, per
        slot, day or month, only for the time each point was the customer's."""
        if caller.kind == "client":
            caller.require(CUSTOMER)
        elif caller.must_change_password:
            raise Forbidden("the temporary password must be changed before anything else")
        if customer_id not in caller.customer_ids:
            raise Forbidden("this caller has no right to that customer's data")
        return self._series(customer_id, q, with_quotes)

    def _series(self, customer_id: str, q: SeriesQuery, with_quotes: bool) -> dict[str, Any]:
        """The energy of a slot is its latest version's when it was edited (by hand, or by a billing
        correction: 003 §2.4.7, the visual history follows reconciliation), else the effective one."""
        u, r, qh, v = UsageHistory, CustomerLogicalDevice, QuoteHistory, UsageVersion
        same = and_(v.ld_id == u.ld_id, v.sub_number == u.sub_number, v.measured_time == u.measured_time)
        edited = select(v.increment).where(same).order_by(v.version.desc()).limit(1).correlate(u).scalar_subquery()
        energy = case((exists(select(v.version).where(same).correlate(u)), edited), else_=_effective())
        cols = [u.ld_id, u.measured_time, energy, u.status]
        stmt = select(*cols).select_from(u).join(r, _held(literal(customer_id))).where(
            u.sub_number == q.sub_number, u.measured_time > q.from_.astimezone(UTC),
            u.measured_time <= q.to.astimezone(UTC))
        if with_quotes:
            stmt = stmt.outerjoin(qh, and_(qh.ld_id == u.ld_id, qh.sub_number == u.sub_number,
                                           qh.measured_time == u.measured_time)) \
                .add_columns(qh.increment, qh.estimated_charge, qh.corrected)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        with self.db.session() as s:
            rows = s.execute(stmt.distinct().order_by(u.ld_id, u.measured_time)).all()
        for row in rows:
            ld_id, t, energy, status = row[:4]
            key = (ld_id, self._bucket(t, q.resolution))
            b = out.setdefault(key, {"ld_id": ld_id, "period_start": key[1], "energy_kwh": None, "slots": 0,
                                     "missing": 0, **({"billed_kwh": None, "estimated_charge": None,
                                                       "corrected": False} if with_quotes else {})})
            b["slots"] += 1
            if status == "missing" and energy is None:
                b["missing"] += 1
            if energy is not None:
                b["energy_kwh"] = round((b["energy_kwh"] or 0.0) + energy, 6)
            if with_quotes:
                q_inc, charge, corrected = row[4:]
                if q_inc is not None:
                    b["billed_kwh"] = round((b["billed_kwh"] or 0.0) + q_inc, 6)
                if charge is not None:
                    b["estimated_charge"] = round((b["estimated_charge"] or 0.0) + charge, 6)
                b["corrected"] = b["corrected"] or bool(corrected)
        return {"customer_id": customer_id, "resolution": q.resolution, "items": [out[k] for k in sorted(out)]}

    def _bucket(self, t: datetime, resolution: str) -> str:
        if resolution == "slot":
            return iso(t)
        local = (t - SLOT).astimezone(self.tz)  # the slot's start: the slot ending at midnight is the day's last
        return local.date().isoformat() if resolution == "day" else f"{local.year:04d}-{local.month:02d}"


def _signal_summary(sig: dict[str, Any]) -> dict[str, Any]:
    keep = ("signal_name", "signal_type", "name", "type", "level", "current_value", "intervals")
    out = {k: sig[k] for k in keep if k in sig and k != "intervals"}
    if isinstance(sig.get("intervals"), list):
        out["intervals"] = len(sig["intervals"])
    return out
