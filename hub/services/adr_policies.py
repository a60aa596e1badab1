"""ADR policies: how one metering point answers DR events (stored, listed, changed), and the pure rule
that says whether a policy takes part in an event and at what capacity.

The rule, in order (the first that fails is the reason recorded):
1. the opt-out flag names this event -> "opted out of this event";
2. signals: a SIMPLE level 1-3 is accepted when the policy lists that level, or lists "SIMPLE" among its
   signal names, or lists no levels and no names at all (answers anything); other signals
   (LOAD_DISPATCH, LOAD_CONTROL...) only when their name is listed. Level 0 (normal) asks for nothing;
3. the window (randomised start to end, in ``[openadr] policy_timezone``) must lie on one of the
   policy's days (0 = Monday ... 6 = Sunday) within ``hour_from`` .. ``hour_to``;
4. the event must arrive at least ``min_notice_minutes`` before the window starts;
5. fewer than ``max_events_per_month`` other events this calendar month (UTC) already reserved;
6. capacity: ``reduced_amps`` when set, else the contract minus ``reduction_step_amps`` x level (level
   1 for non-SIMPLE signals); it must be at least 1 A and below the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import false, func, select

from hub.db import Database, utcnow
from hub.model import AdrPolicy, LogicalDevice
from hub.services.adr_events import SIMPLE, DrEvent
from hub.services.errors import InvalidInput, NotFound


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    ld_id: str = Field(min_length=1, max_length=64)
    sub_number: int = Field(1, ge=1, le=255)
    active: bool = True
    signal_levels: list[int] = Field(default_factory=list, description="SIMPLE levels 1-3 answered")
    signal_names: list[str] = Field(default_factory=list, description="signal names answered, e.g. LOAD_CONTROL")
    reduced_amps: int | None = Field(None, ge=1, le=1000, description="capacity during an event")
    reduction_step_amps: int | None = Field(None, ge=1, le=1000, description="reduction per SIMPLE level")
    days_of_week: list[int] = Field(default_factory=lambda: list(range(7)), description="0 = Monday")
    hour_from: int = Field(0, ge=0, le=23)
    hour_to: int = Field(24, ge=1, le=24)
    min_notice_minutes: int = Field(0, ge=0, le=10080)
    max_events_per_month: int | None = Field(None, ge=0, le=1000)
    opt_out_event_id: str | None = Field(None, max_length=128, description="opt out of this one event")
    created_by: str = Field("api", pattern="^(api|portal|terminal)$")

    @field_validator("signal_levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= 3 for x in v):
            raise ValueError("SIMPLE levels are 1, 2 or 3")
        return sorted(set(v))

    @field_validator("days_of_week")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 <= d <= 6 for d in v):
            raise ValueError("days are 0 (Monday) to 6 (Sunday), at least one")
        return sorted(set(v))

    @model_validator(mode="after")
    def _shape(self) -> PolicyIn:
        if self.hour_to <= self.hour_from:
            raise ValueError("hour_to must be after hour_from")
        if (self.reduced_amps is None) == (self.reduction_step_amps is None):
            raise ValueError("give exactly one of reduced_amps and reduction_step_amps")
        return self


class PolicyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    active: bool | None = None
    signal_levels: list[int] | None = None
    signal_names: list[str] | None = None
    reduced_amps: int | None = Field(None, ge=1, le=1000)
    reduction_step_amps: int | None = Field(None, ge=1, le=1000)
    days_of_week: list[int] | None = None
    hour_from: int | None = Field(None, ge=0, le=23)
    hour_to: int | None = Field(None, ge=1, le=24)
    min_notice_minutes: int | None = Field(None, ge=0, le=10080)
    max_events_per_month: int | None = Field(None, ge=0, le=1000)
    opt_out_event_id: str | None = Field(None, max_length=128)


@dataclass(frozen=True, slots=True)
class Verdict:
    amps: int | None  # None: does not take part
    reason: str


def evaluate(p: AdrPolicy, event: DrEvent, *, contract_amps: int, window: tuple[datetime, datetime],
             received_at: datetime, tz: ZoneInfo, events_this_month: int) -> Verdict:
    """Whether policy ``p`` takes part in ``event`` over ``window`` and at what capacity (see module doc)."""
    if p.opt_out_event_id and p.opt_out_event_id == event.event_id:
        return Verdict(None, "opted out of this event")
    level = event.level()
    names = set(p.signal_names or [])
    levels = set(p.signal_levels or [])
    accepted = False
    if level >= 1 and (level in levels or SIMPLE in names or (not levels and not names)):
        accepted = True
    elif any(n in names for n in event.signal_names() - {SIMPLE}):
        accepted, level = True, max(level, 1)
    if not accepted:
        return Verdict(None, "signal level 0 (normal)" if event.signal_names() == {SIMPLE} and level == 0
                       else "signal not accepted")
    start, end = (t.astimezone(tz) for t in window)
    last = end - timedelta(seconds=1)
    if start.weekday() not in (p.days_of_week or []) or last.date() != start.date():
        return Verdict(None, "outside the policy's days")
    if start.hour < p.hour_from or last.hour >= p.hour_to:
        return Verdict(None, "outside the policy's hours")
    if (window[0] - received_at) < timedelta(minutes=p.min_notice_minutes):
        return Verdict(None, "notice shorter than the policy's minimum")
    if p.max_events_per_month is not None and events_this_month >= p.max_events_per_month:
        return Verdict(None, "monthly event cap reached")
    amps = p.reduced_amps if p.reduced_amps is not None else contract_amps - (p.reduction_step_amps or 0) * level
    if amps is None or amps < 1:
        return Verdict(None, "reduction leaves no capacity")
    if contract_amps and amps >= contract_amps:
        return Verdict(None, "capacity not below the contract")
    return Verdict(int(amps), "matched")


def view(p: AdrPolicy) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude={"deleted", "deleted_at"})


class PolicyService:
    """Create, list, change and delete ADR policies."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, data: PolicyIn) -> dict[str, Any]:
        with self.db.session() as s:
            exists = s.scalar(select(func.count()).select_from(LogicalDevice)
                              .where(LogicalDevice.ld_id == data.ld_id, LogicalDevice.deleted == false()))
            if not exists:
                raise InvalidInput.on("ld_id", f"logical device {data.ld_id} does not exist")
            p = AdrPolicy(**data.model_dump())
            s.add(p)
            s.flush()
            return view(p)

    def create_many(self, rows: list[PolicyIn]) -> int:
        """Bulk insert without the per-row LD check (demo and benchmarks)."""
        with self.db.session() as s:
            s.add_all([AdrPolicy(**r.model_dump()) for r in rows])
        return len(rows)

    def _get(self, s: Any, policy_id: int) -> AdrPolicy:
        p = s.get(AdrPolicy, policy_id)
        if p is None or p.deleted:
            raise NotFound.on("policy_id", f"ADR policy {policy_id} does not exist")
        return p

    def get(self, policy_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            return view(self._get(s, policy_id))

    def list(self, *, ld_id: str | None = None, active: bool | None = None, limit: int = 100,
             offset: int = 0) -> dict[str, Any]:
        with self.db.session() as s:
            q = select(AdrPolicy).where(AdrPolicy.deleted == false())
            if ld_id is not None:
                q = q.where(AdrPolicy.ld_id == ld_id)
            if active is not None:
                q = q.where(AdrPolicy.active == active)
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            rows = s.scalars(q.order_by(AdrPolicy.id).limit(limit).offset(offset))
            return {"total": total, "items": [view(p) for p in rows]}

    def update(self, policy_id: int, patch: PolicyPatch) -> dict[str, Any]:
        with self.db.session() as s:
            p = self._get(s, policy_id)
            merged = {**view(p), **patch.model_dump(exclude_unset=True)}
            if "reduced_amps" in patch.model_fields_set and patch.reduced_amps is not None:
                merged["reduction_step_amps"] = None
            if "reduction_step_amps" in patch.model_fields_set and patch.reduction_step_amps is not None:
                merged["reduced_amps"] = None
            try:
                checked = PolicyIn.model_validate({k: merged[k] for k in PolicyIn.model_fields})
            except ValueError as e:
                raise InvalidInput(f"the changed policy is not valid: {e}") from None
            for key, value in checked.model_dump().items():
                setattr(p, key, value)
            p.updated_at = utcnow()
            s.add(p)
            s.flush()
            return view(p)

    def delete(self, policy_id: int) -> None:
        with self.db.session() as s:
            p = self._get(s, policy_id)
            p.deleted, p.deleted_at, p.active = True, utcnow(), False
            s.add(p)
