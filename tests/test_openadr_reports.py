"""Reports back to the aggregator: the hub's VEN offers TELEMETRY_USAGE (oadrRegisterReport) to a real
openleadr VTN, which requests it; the VTN then receives the participating LDs' usage and the achieved
reduction of an event computed from the usage history (baseline: the same slots on the last 5
non-event weekdays)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from openleadr.messaging import parse_message

from adapters.openadr.reports import REDUCTION_RID, STATUS_RID, USAGE_RID
from adapters.openadr.translate import load_mapping
from adapters.openadr.ven import HubVen, VtnConfig
from hub.model import UsageHistory
from hub.services.adr_policies import PolicyPatch
from tests.test_openadr_ven import VTN_ID, Vtn, actions, adr_hub, settled, until  # noqa: F401 - fixtures

_today = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
EVENT_START = _today + timedelta(days=7 - _today.weekday())   # next Monday 10:00 (the VTN drops past events)
BASELINE = {(EVENT_START - timedelta(days=d)).date() for d in (7, 6, 5, 4, 3)}  # the Mon-Fri before


@pytest.fixture
def clock():
    from tests.collecting import Clock
    return Clock(EVENT_START - timedelta(minutes=10))


def usage_rows(hub: Any) -> None:
    """Every day from two weeks before the event: 1.0 kWh per slot on the baseline weekdays, 5.0 kWh on
    the other days (weekends, and the week before, beyond the 5 baseline days), 0.6 / 0.7 in the
    event's two slots."""
    rows = []
    for ld in ("LD-000001", "LD-000002", "LD-000003"):
        for back in range(14, -1, -1):
            for end_min in (30, 60):
                t = EVENT_START - timedelta(days=back) + timedelta(minutes=end_min)
                if back == 0:
                    v = 0.6 if end_min == 30 else 0.7
                elif t.date() in BASELINE:
                    v = 1.0
                else:
                    v = 5.0
                rows.append(UsageHistory(ld_id=ld, sub_number=1, measured_time=t, register_value=100.0,
                                         increment=v))
    with hub.db.session() as s:
        s.add_all(rows)


class ReportingVtn(Vtn):
    """The test VTN, also asking for every offered data point every second. openleadr's VTN hands
    report values to its callbacks as floats only, so resource status payloads are kept apart."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: list[tuple[str, str]] = []
        self.received: dict[str, list[tuple[datetime, float]]] = {}
        self.updates: list[dict[str, Any]] = []  # every oadrReport of every oadrUpdateReport, as parsed
        self.statuses: list[tuple[datetime, dict[str, Any]]] = []
        self.server.add_handler("on_register_report", self.on_register_report)
        self.server.app.middlewares.append(self.keep_updates)
        reports = self.server.services["report_service"]
        self.float_updates = reports.handlers["oadrUpdateReport"]
        reports.handlers["oadrUpdateReport"] = self.on_update_report

    async def on_update_report(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        statuses = [(i["dtstart"], i["report_payload"]["payload_resource_status"]) for r in payload["reports"]
                    for i in r.get("intervals") or [] if "payload_resource_status" in i["report_payload"]]
        if statuses:
            self.statuses.extend(statuses)
            return "oadrUpdatedReport", {}
        return await self.float_updates(payload)

    @web.middleware
    async def keep_updates(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/EiReport"):
            kind, payload = parse_message(await request.read())
            if kind == "oadrUpdateReport":
                self.updates.extend(payload["reports"])
        return await handler(request)

    def on_register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                           min_sampling_interval: timedelta, max_sampling_interval: timedelta) -> tuple:
        self.offered.append((resource_id, measurement))

        def collect(values: list[tuple[datetime, float]]) -> None:
            self.received.setdefault(resource_id, []).extend(values)
        return collect, timedelta(seconds=1)


@pytest.fixture
async def rvtn() -> AsyncIterator[ReportingVtn]:
    v = ReportingVtn()
    await v.server.run_async()
    yield v
    await v.server.stop()


@pytest.fixture
async def rven(adr_hub, rvtn) -> AsyncIterator[HubVen]:  # noqa: F811
    v = HubVen(adr_hub, VtnConfig(rvtn.url, "mdmhub", poll_interval_s=0.05, retry_max_s=0.5, vtn_id=VTN_ID),
               load_mapping())
    await v.start()
    await until(lambda: v.registered)
    yield v
    await v.stop()


async def test_the_vtn_receives_usage_and_the_achieved_reduction_of_an_event(adr_hub, rvtn, rven, clock):  # noqa: F811
    usage_rows(adr_hub)
    assert await until(lambda: len(rvtn.offered) == 3)
    assert sorted(rvtn.offered) == [("achieved-reduction", "RealEnergy"), ("participating-lds", "RealEnergy"),
                                    ("participating-lds", "Status")]
    rvtn.publish(rvtn.event("EV-R", EVENT_START, minutes=60))
    assert await until(lambda: rvtn.answers) == [("EV-R", "optIn")]
    await settled(adr_hub)
    assert {a[3] for a in actions(adr_hub)} == {"reserved"}
    rvtn.received.clear()
    clock.now = EVENT_START + timedelta(minutes=61)
    await until(lambda: rvtn.received.get("achieved-reduction"), timeout=5)
    # 2 participating LDs x ((1.0 - 0.6) + (1.0 - 0.7)); LD-000003 has no policy and is left out
    assert rvtn.received["achieved-reduction"] == [(EVENT_START, pytest.approx(1.4))]
    # the event's reduction comes in an oadrReport of its own named by the eventID, over its window
    [named] = [r for r in rvtn.updates if r["report_id"] == "EV-R"]
    [interval] = named["intervals"]
    assert (interval["dtstart"], interval["duration"], interval["report_payload"]["r_id"]) == (
        EVENT_START, timedelta(minutes=60), REDUCTION_RID)
    assert interval["report_payload"]["value"] == pytest.approx(1.4)
    assert named["report_name"] == "TELEMETRY_USAGE"
    assert all(i["report_payload"]["r_id"] == USAGE_RID for r in rvtn.updates
               if r["report_id"] != "EV-R" and r["report_name"] == "TELEMETRY_USAGE" for i in r.get("intervals") or [])
    # usage of the last complete slot (10:30-11:00) over the LDs with an active policy: 2 x 0.7
    await until(lambda: rvtn.received.get("participating-lds"), timeout=5)
    at, value = rvtn.received["participating-lds"][-1]
    assert (at, value) == (EVENT_START + timedelta(minutes=30), pytest.approx(1.4))
    # reported once: the next reports carry no further reduction for the event
    n = len(rvtn.received["achieved-reduction"])
    await until(lambda: len(rvtn.received["participating-lds"]) >= 3, timeout=5)
    assert len(rvtn.received["achieved-reduction"]) == n
    figures = adr_hub.adr.reports.reductions_ended(None, clock.now)
    assert [(f["event_id"], f["lds"], f["slots_used"], f["baseline_kwh"], f["actual_kwh"]) for f in figures] == [
        ("EV-R", 2, 4, pytest.approx(4.0), pytest.approx(2.6))]


async def test_the_vtn_receives_the_resource_status_of_the_participating_meters(adr_hub, rvtn, rven, clock):  # noqa: F811
    """LD-1 and LD-2 (30 A contracts) have policies; LD-2's customer opted out of EV-R. While EV-R runs:
    online (readings in the last hour), manually overridden, capacity 20 A (LD-1 cut) + 30 A of 60 A."""
    usage_rows(adr_hub)
    [p2] = adr_hub.adr.policies.list(ld_id="LD-000002")["items"]
    adr_hub.adr.policies.update(p2["id"], PolicyPatch(opt_out_event_id="EV-R"))
    rvtn.publish(rvtn.event("EV-R", EVENT_START, minutes=60))
    assert await until(lambda: rvtn.answers) == [("EV-R", "optIn")]
    await settled(adr_hub)
    before = await until(lambda: rvtn.statuses, timeout=5)
    assert before[-1][1] == {"online": False, "manual_override": False,   # no reading yet in the last hour
                             "load_control_state": {"capacity": {"current": 60.0, "normal": 60.0}}}
    clock.now = EVENT_START + timedelta(minutes=31)
    n = len(rvtn.statuses)
    await until(lambda: len(rvtn.statuses) > n + 1, timeout=5)
    at, status = rvtn.statuses[-1]
    assert at == clock.now
    assert status == {"online": True, "manual_override": True,
                      "load_control_state": {"capacity": {"current": 50.0, "normal": 60.0}}}
    assert any(i["report_payload"]["r_id"] == STATUS_RID for r in rvtn.updates for i in r.get("intervals") or [])


def test_event_days_and_weekends_are_left_out_of_the_baseline(adr_hub, clock):  # noqa: F811
    """Core only: the Friday before becomes an event day for LD-000001, so its baseline reaches back to
    the Friday a week earlier (5.0 kWh) instead; LD-000002's stays on the five weekdays before."""
    usage_rows(adr_hub)
    from hub.model import AdrAction, AdrEvent
    with adr_hub.db.session() as s:
        old = AdrEvent(vtn_id=VTN_ID, event_id="EV-OLD", modification_number=0, dtstart=EVENT_START - timedelta(days=3),
            duration_seconds=3600, received_at=clock.now, test_event=False)
        new = AdrEvent(vtn_id=VTN_ID, event_id="EV-NEW", modification_number=0, dtstart=EVENT_START,
                       duration_seconds=3600, received_at=clock.now, test_event=False)
        s.add_all([old, new])
        s.flush()
        for ev, lds in ((old, ["LD-000001"]), (new, ["LD-000001", "LD-000002"])):
            for ld in lds:
                s.add(AdrAction(adr_event_id=ev.id, ld_id=ld, directed_at=clock.now, start_at=ev.dtstart,
                                end_at=ev.dtstart + timedelta(hours=1), reduced_amps=20, state="reserved"))
        s.flush()
        new_id = new.id
    f = adr_hub.adr.reports.achieved_reduction(new_id)
    # LD-1 baseline per slot: (4 x 1.0 + 5.0) / 5 = 1.8; LD-2: 1.0
    assert f["baseline_kwh"] == pytest.approx(2 * 1.8 + 2 * 1.0)
    assert f["reduction_kwh"] == pytest.approx(2 * 1.8 + 2 * 1.0 - 2.6)
