"""The reports the VEN offers (oadrRegisterReport) through openleadr's client report API.

TELEMETRY_USAGE, report specifier ``mdmhub-telemetry-usage``, two data points:
- rID ``usage``: energy (kWh) of the last complete 30-minute slot, summed over the LDs with an
  active ADR policy, dated at the slot's start;
- rID ``achieved-reduction``: the achieved reduction (kWh) of each DR event of this VTN whose window
  ended since the previous report, one interval per event spanning the event's window, in an
  oadrReport of its own whose eiReportID is the eventID (see :mod:`adapters.openadr.update_report`;
  :mod:`hub.services.adr_reports` for the baseline).

TELEMETRY_STATUS, report specifier ``mdmhub-telemetry-status``, rID ``status`` of the same resource:
oadrPayloadResourceStatus with oadrOnline, oadrManualOverride and oadrLoadControlState/oadrCapacity
(current and normal, amperes); see :mod:`hub.services.adr_status` for how each is derived.

The core computes the figures (``hub.adr.reports``, ``hub.adr.status``); this module only formats
them for openleadr.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from openleadr import objects

from adapters.openadr.update_report import EventReduction, ResourceStatus

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("mdmhub.openadr")
USAGE_REPORT = "mdmhub-telemetry-usage"
STATUS_REPORT = "mdmhub-telemetry-status"
STATUS_RID = "status"
RESOURCE = "participating-lds"
USAGE_RID = "usage"
REDUCTION_RID = "achieved-reduction"


class VenReports:
    """Samplers for openleadr's ``add_report`` callbacks; each asks the hub's core."""

    def __init__(self, hub: Hub, vtn: Callable[[], str] | None = None) -> None:
        self.hub = hub
        self.vtn = vtn  # the key the hub's ADR history knows this VTN by; None: every VTN's events
        self.reported_until: datetime | None = None

    def install(self, client: object, *, min_period: timedelta = timedelta(seconds=1),
                max_period: timedelta = timedelta(hours=1)) -> None:
        rate = objects.SamplingRate(min_period=min_period, max_period=max_period, on_change=False)
        for r_id, resource, sampler in ((USAGE_RID, RESOURCE, self.usage),
                                        (REDUCTION_RID, "achieved-reduction", self.reductions)):
            client.add_report(callback=sampler, resource_id=resource, measurement="energy_real", unit="Wh",
                              scale="k", report_specifier_id=USAGE_REPORT, r_id=r_id,
                              report_name="TELEMETRY_USAGE", reading_type="Direct Read",
                              report_duration=timedelta(days=1), sampling_rate=rate)
        client.add_report(callback=self.status, resource_id=RESOURCE, measurement=None,
                          report_specifier_id=STATUS_REPORT, r_id=STATUS_RID, report_name="TELEMETRY_STATUS",
                          reading_type="x-notApplicable", report_type="x-resourceStatus",
                          report_duration=timedelta(days=1), sampling_rate=rate)

    async def usage(self) -> list[tuple[datetime, float]]:
        at, value = await self.hub.run(self.hub.adr.reports.telemetry_usage, self.hub.adr.clock())
        return [(at, value)]

    async def status(self) -> list[tuple[datetime, ResourceStatus]]:
        now = self.hub.adr.clock()
        f = await self.hub.run(self.hub.adr.status.resource_status, now)
        return [(now, ResourceStatus(f.online, f.manual_override, f.capacity_current_amps, f.capacity_normal_amps))]

    async def reductions(self) -> list[tuple[datetime, EventReduction]]:
        now = self.hub.adr.clock()
        figures = await self.hub.run(self.hub.adr.reports.reductions_ended, self.reported_until, now)
        self.reported_until = now
        if self.vtn is not None:
            figures = [f for f in figures if f["vtn_id"] == self.vtn()]
        for f in figures:
            log.info("achieved reduction reported", extra={k: f[k] for k in ("event_id", "lds", "reduction_kwh")})
        return [(f["start"], EventReduction(f["reduction_kwh"], f["event_id"], f["end"] - f["start"]))
                for f in figures]
