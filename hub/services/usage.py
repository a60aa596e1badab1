"""Reading usage history: one metering point's snapshots over a period, in one of three views, and
edits of single snapshots.

Views (docs/quality.md):

* ``actual`` (default): the latest version of each snapshot, i.e. the raw row unless it was edited;
  missing snapshots stay missing.
* ``raw``: the rows exactly as collection stored them (version 0), edits ignored.
* ``estimated``: ``actual`` with estimates (:mod:`hub.services.estimation`) in place of the missing
  snapshots the estimation rules allow, for charts and the dashboard.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from hub.config import EstimationSection
from hub.db import Database
from hub.model import LogicalDevice, UsageHistory
from hub.services.collection_targets import registers_of
from hub.services.errors import NotFound
from hub.services.estimation import Limits, Snapshot, estimate
from hub.services.quality import quality_names
from hub.services.usage_versions import UNCHANGED, Version, add_version, history, iso, latest_versions

MAX_SPAN = timedelta(days=31)
View = Literal["actual", "raw", "estimated"]
USAGE = UsageHistory.__table__  # type: ignore[attr-defined]
IN_CHUNK = 900


def utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: timestamps must carry a time zone")
    return dt.astimezone(UTC)


class UsagePeriod(BaseModel):
    """A period of snapshots: ``from`` inclusive, ``to`` exclusive, aware ISO 8601 times, at most 31 days."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime = Field(alias="from", description="first snapshot time (inclusive), with a time zone")
    to: AwareDatetime = Field(description="end of the period (exclusive), with a time zone")
    sub_number: int | None = Field(None, ge=0, le=65535, description="one register only")
    view: View = Field("actual", description="actual: latest version of each snapshot (default); raw: as "
                       "collected, edits ignored; estimated: actual plus estimates in place of missing snapshots")
    estimate: bool = Field(False, description="the same as view=estimated")

    @model_validator(mode="after")
    def _span(self) -> UsagePeriod:
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        if self.to - self.from_ > MAX_SPAN:
            raise ValueError(f"the period may span at most {MAX_SPAN.days} days")
        if self.estimate:
            if self.view == "raw":
                raise ValueError("estimate=true asks for view=estimated; it cannot be combined with view=raw")
            self.view = "estimated"
        return self


class UsageEdit(BaseModel):
    """An edit of one snapshot: the values it sets (at least one), who and why."""

    model_config = ConfigDict(extra="forbid")
    sub_number: int = Field(ge=0, le=65535)
    measured_time: AwareDatetime
    register_value: float | None = Field(None, description="new register value; absent keeps the current one")
    increment: float | None = Field(None, description="new increment; absent keeps the current one")
    author: str = Field(min_length=1, max_length=128, description="who edits")
    reason: str = Field(min_length=1, max_length=512, description="why")

    @model_validator(mode="after")
    def _something(self) -> UsageEdit:
        if "register_value" not in self.model_fields_set and "increment" not in self.model_fields_set:
            raise ValueError("an edit sets register_value, increment or both")
        return self


def item(ld_id: str, sub: int, snap: Snapshot) -> dict[str, Any]:
    """One usage item as every view returns it."""
    return {"ld_id": ld_id, "sub_number": sub, "measured_time": iso(snap.measured_time),
            "register_value": snap.register_value, "increment": snap.increment, "status": snap.status,
            "recollected_increment": snap.recollected_increment, "quality": quality_names(snap.quality),
            "source": snap.source, "version": snap.version}


def overlay(snap: Snapshot, version: Version | None) -> Snapshot:
    """The snapshot as its latest version shows it."""
    if version is None:
        return snap
    return Snapshot(snap.measured_time, version.register_value, version.increment, snap.status, version.quality,
                    None, version.source, version.version)


_COLUMNS = (USAGE.c.sub_number, USAGE.c.measured_time, USAGE.c.register_value, USAGE.c.increment, USAGE.c.status,
            USAGE.c.quality, USAGE.c.recollected_increment, USAGE.c.source)


def _snapshot(row: Iterable[Any]) -> tuple[int, Snapshot]:
    sub, t, value, inc, status, quality, rinc, source = row
    return sub, Snapshot(t, value, inc, status, quality, rinc, source, 0)


class UsageService:
    def __init__(self, db: Database, estimation: EstimationSection | None = None) -> None:
        self.db = db
        section = estimation or EstimationSection()
        self.limits = Limits(section.max_gap_slots, section.max_flat_slots)

    # -- reading ---------------------------------------------------------------------------------

    def usage(self, ld_id: str, period: UsagePeriod, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Snapshots of ``ld_id`` in the period in the period's view, by time then register; 404 for an
        LD_ID that is neither a logical device's nor in the history (history outlives an installation)."""
        lo, hi = utc(period.from_), utc(period.to)
        with self.db.session() as s:
            self._require_known(s, ld_id)
            if period.view == "estimated":
                snaps = self._estimated(s, ld_id, lo, hi, period.sub_number)
                return [item(ld_id, sub, snap) for sub, snap in snaps[offset:offset + limit]], len(snaps)
            conds = self._conds(ld_id, lo, hi, period.sub_number)
            total = s.execute(select(func.count()).select_from(USAGE).where(*conds)).scalar_one()
            rows = [_snapshot(r) for r in s.execute(select(*_COLUMNS).where(*conds).order_by(
                USAGE.c.measured_time, USAGE.c.sub_number).limit(limit).offset(offset))]
            if period.view == "actual" and rows:
                edits = latest_versions(s, ld_id, rows[0][1].measured_time, rows[-1][1].measured_time + timedelta(
                    microseconds=1), period.sub_number)
                rows = [(sub, overlay(snap, edits.get((sub, snap.measured_time)))) for sub, snap in rows]
            return [item(ld_id, sub, snap) for sub, snap in rows], total

    @staticmethod
    def _require_known(s: Session, ld_id: str) -> None:
        known = s.execute(select(LogicalDevice.id).where(LogicalDevice.ld_id == ld_id)).first() \
            or s.execute(select(USAGE.c.ld_id).where(USAGE.c.ld_id == ld_id).limit(1)).first()
        if not known:
            raise NotFound.on("ld_id", f"logical device {ld_id} does not exist")

    @staticmethod
    def _conds(ld_id: str, lo: datetime, hi: datetime, sub_number: int | None) -> list[Any]:
        c = USAGE.c
        conds = [c.ld_id == ld_id, c.measured_time >= lo, c.measured_time < hi]
        if sub_number is not None:
            conds.append(c.sub_number == sub_number)
        return conds

    def _estimated(self, s: Session, ld_id: str, lo: datetime, hi: datetime,
                   sub_number: int | None) -> list[tuple[int, Snapshot]]:
        """The estimated view of the period: the latest versions from ``reach`` before to ``reach``
        after it (every neighbour an estimate in the period can use), estimated per register."""
        reach = self.limits.reach
        edits = latest_versions(s, ld_id, lo - reach, hi + reach, sub_number)
        series: dict[int, list[Snapshot]] = defaultdict(list)
        for row in s.execute(select(*_COLUMNS).where(*self._conds(ld_id, lo - reach, hi + reach, sub_number))
                             .order_by(USAGE.c.sub_number, USAGE.c.measured_time)):
            sub, snap = _snapshot(row)
            series[sub].append(overlay(snap, edits.get((sub, snap.measured_time))))
        kinds = {r.sub_number: r.cumulative for r in registers_of(s, [ld_id]).get(ld_id, ())}
        out: list[tuple[int, Snapshot]] = []
        for sub, snaps in series.items():
            cumulative = kinds.get(sub, any(x.increment is not None for x in snaps))
            before, after = _valued_beyond(s.connection(), ld_id, sub, lo - reach, hi + reach)
            view = estimate(snaps, self.limits, cumulative=cumulative, valued_before=before, valued_after=after)
            out.extend((sub, snap) for snap in view if lo <= snap.measured_time < hi)
        out.sort(key=lambda x: (x[1].measured_time, x[0]))
        return out

    # -- edits -----------------------------------------------------------------------------------

    def edit(self, ld_id: str, data: UsageEdit, source: str = "manual") -> dict[str, Any]:
        """Store an edit of one snapshot as its next version (the raw row stays); returns that version."""
        t = utc(data.measured_time)
        with self.db.session() as s:
            self._require_known(s, ld_id)
            version = add_version(
                s, ld_id, data.sub_number, t, author=data.author, reason=data.reason, source=source,
                register_value=data.register_value if "register_value" in data.model_fields_set else UNCHANGED,
                increment=data.increment if "increment" in data.model_fields_set else UNCHANGED)
            return {"ld_id": ld_id, "sub_number": data.sub_number, "measured_time": iso(t),
                    "version": version.version, "register_value": version.register_value,
                    "increment": version.increment, "quality": quality_names(version.quality),
                    "source": version.source, "author": version.author, "reason": version.reason,
                    "created_at": iso(version.created_at)}

    def versions(self, ld_id: str, sub_number: int, measured_time: datetime) -> list[dict[str, Any]]:
        """Every version of one snapshot, the raw row (0) first."""
        with self.db.session() as s:
            self._require_known(s, ld_id)
            return history(s, ld_id, sub_number, utc(measured_time))


def _valued_beyond(conn: Connection, ld_id: str, sub: int, lo: datetime, hi: datetime) -> tuple[bool, bool]:
    """Whether the register has a value before ``lo`` and at or after ``hi``."""
    c = USAGE.c

    def exists(cond: Any) -> bool:
        return conn.execute(select(c.measured_time).where(c.ld_id == ld_id, c.sub_number == sub,
                                                 c.register_value.is_not(None), cond).limit(1)).first() is not None
    return exists(c.measured_time < lo), exists(c.measured_time >= hi)


def estimates_between(s: Session, start: datetime, end: datetime, limits: Limits) -> dict[tuple[str, int, datetime],
                                                                                          Snapshot]:
    """For billing files: every snapshot in ``[start, end)`` that an estimated view of the raw rows
    shows differently (the estimates, and the first actual snapshot after them with its increment
    restated), by (LD_ID, sub, time). Set-based over the registers that have missing rows in the
    period; edits are not applied (billing gets corrections through quotes)."""
    c = USAGE.c
    reach = limits.reach
    lo, hi = start - reach, end + reach
    series = sorted(s.execute(select(c.ld_id, c.sub_number).where(
        c.status == "missing", c.measured_time >= start, c.measured_time < end).distinct()).all())
    wanted = {(ld, sub) for ld, sub in series}
    out: dict[tuple[str, int, datetime], Snapshot] = {}
    ld_ids = sorted({ld for ld, _ in series})
    for at in range(0, len(ld_ids), IN_CHUNK):
        chunk = ld_ids[at:at + IN_CHUNK]
        rows: dict[tuple[str, int], list[Snapshot]] = defaultdict(list)
        for ld_id, *rest in s.execute(select(c.ld_id, *_COLUMNS).where(
                c.ld_id.in_(chunk), c.measured_time >= lo, c.measured_time < hi)
                .order_by(c.ld_id, c.sub_number, c.measured_time)):
            sub, snap = _snapshot(rest)
            if (ld_id, sub) in wanted:
                rows[(ld_id, sub)].append(snap)
        valued = c.register_value.is_not(None)
        before = {(ld, sub) for ld, sub in s.execute(select(c.ld_id, c.sub_number).where(
            c.ld_id.in_(chunk), valued, c.measured_time < lo).group_by(c.ld_id, c.sub_number))}
        after = {(ld, sub) for ld, sub in s.execute(select(c.ld_id, c.sub_number).where(
            c.ld_id.in_(chunk), valued, c.measured_time >= hi).group_by(c.ld_id, c.sub_number))}
        kinds = {(ld, r.sub_number): r.cumulative for ld, regs in registers_of(s, chunk).items() for r in regs}
        for key, snaps in rows.items():
            cumulative = kinds.get(key, any(x.increment is not None for x in snaps))
            view = estimate(snaps, limits, cumulative=cumulative, valued_before=key in before,
                            valued_after=key in after)
            for raw, shown in zip(snaps, view, strict=True):
                if shown is not raw and start <= shown.measured_time < end:
                    out[(key[0], key[1], shown.measured_time)] = shown
    return out
