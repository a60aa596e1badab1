"""Resource status of the metering points in ADR (what the VEN's TELEMETRY_STATUS report says).

The resource is the set of LDs with an active ADR policy (the VEN's "participating-lds"), judged at
``now`` from the meters' state in the store:

- online: at least one of them has a reading of the import energy register (not ``missing``) in
  the last hour (``ONLINE_WITHIN``): the head-end reached its meter recently;
- manual override: at least one of them has opted out of an event running now (the policy's
  single-event opt-out), i.e. a customer overrode the VTN's control;
- load control capacity: ``normal`` = the sum of their contract capacities (A), ``current`` = the same
  sum with the lowest capacity reserved for now in place of the contract where one is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import false, func, select

from hub.db import Database
from hub.model import AdrEvent, AdrPolicy, AdrReservation, LogicalDevice, UsageHistory

ENERGY_SUB = 1
ONLINE_WITHIN = timedelta(hours=1)
LONGEST_EVENT = timedelta(days=1)


@dataclass(frozen=True)
class ResourceStatusFigures:
    lds: int
    lds_online: int
    overridden: int
    capacity_normal_amps: float
    capacity_current_amps: float

    @property
    def online(self) -> bool:
        return self.lds_online > 0

    @property
    def manual_override(self) -> bool:
        return self.overridden > 0


class AdrStatusService:
    """Online, manual override and capacity of the LDs with an active ADR policy."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def resource_status(self, now: datetime) -> ResourceStatusFigures:
        active = (select(AdrPolicy.ld_id).where(AdrPolicy.active.is_(True), AdrPolicy.deleted == false())
                  .distinct().scalar_subquery())
        with self.db.session() as s:
            contracts = dict(s.execute(select(LogicalDevice.ld_id, LogicalDevice.contract_amps).where(
                LogicalDevice.ld_id.in_(active), LogicalDevice.deleted == false())).all())
            online = s.scalar(select(func.count(func.distinct(UsageHistory.ld_id))).where(
                UsageHistory.ld_id.in_(active), UsageHistory.sub_number == ENERGY_SUB,
                UsageHistory.status != "missing", UsageHistory.measured_time > now - ONLINE_WITHIN,
                UsageHistory.measured_time <= now)) or 0
            reserved = dict(s.execute(select(AdrReservation.ld_id, func.min(AdrReservation.amps)).where(
                AdrReservation.ld_id.in_(active), AdrReservation.state == "reserved",
                AdrReservation.start_at <= now, AdrReservation.end_at > now).group_by(AdrReservation.ld_id)).all())
            running = {e.event_id for e in s.execute(select(AdrEvent.event_id, AdrEvent.dtstart,
                                                            AdrEvent.duration_seconds).where(
                AdrEvent.test_event.is_(False), AdrEvent.status != "cancelled",
                AdrEvent.dtstart <= now, AdrEvent.dtstart > now - LONGEST_EVENT))
                if e.duration_seconds == 0 or e.dtstart + timedelta(seconds=e.duration_seconds) > now}
            overridden = s.scalar(select(func.count()).select_from(AdrPolicy).where(
                AdrPolicy.active.is_(True), AdrPolicy.deleted == false(),
                AdrPolicy.opt_out_event_id.in_(sorted(running)))) if running else 0
        normal = float(sum(contracts.values()))
        current = float(sum(min(amps, reserved.get(ld, amps)) for ld, amps in contracts.items()))
        return ResourceStatusFigures(len(contracts), int(online), int(overridden or 0), normal, current)
