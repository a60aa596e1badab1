"""Each collection cycle diagnoses the batch it stored: a meter out of its parameter group's range,
a run of zero consumption, a run of missing readings or a spiky day raises its alert in the alert
history (and at the NMS) once, on the cycle that finds it, and never again when a cycle runs again.
Real simulator, both stores, a clock the test moves."""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest

from adapters.headend.registry import build_head_end
from adapters.nms.syslog import SyslogNotifier
from hub.config import Settings
from hub.db import Database
from hub.ports import MeterRef, RegisterRead
from hub.runtime import Hub
from hub.services.admin import DeviceTypeIn, ParameterGroupIn, ParameterItemIn
from hub.services.alerts import AlertFilter
from hub.services.diagnosis import MISSING_RUN, OUT_OF_RANGE, SPIKE, ZERO_RUN
from hub.services.quality import Quality
from hub.services.usage_writer import UsageWriter
from tests.collecting import SLOT, START, Clock, device_key, install_meters, set_head_end, usage_rows

NARROW_TYPE = 102


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dhub(settings: Settings, clock: Clock) -> Iterator[Hub]:
    """A collecting hub with short run thresholds (zero runs > 3 slots, missing runs > 3 slots)."""
    settings = settings.model_copy(update={"alerts": settings.alerts.model_copy(
        update={"zero_run_slots": 3, "missing_run_slots": 3})})
    hub = Hub(settings, Database.from_url(settings.database_url),
              head_end_factory=functools.partial(build_head_end, clock=clock))
    hub.collection.clock = clock
    yield hub
    hub.close()


def _narrow_type(hub: Hub) -> None:
    """LD type 102: the demo meter's registers, but energy plausible only up to 10 kWh."""
    hub.admin.create_parameter_group(ParameterGroupIn(group_id=2, name="narrow", items=[
        ParameterItemIn(sub_number=1, obis="1.0.1.8.0.255", name="energy", unit="kWh", min_value=0, max_value=10),
        ParameterItemIn(sub_number=2, obis="1.0.11.6.0.255", name="max current", unit="A", kind="maximum",
                        min_value=0, max_value=200)]))
    hub.admin.create_type("logical-device", DeviceTypeIn(type_id=NARROW_TYPE, name="narrow meter", group_id=2))


def _alerts(hub: Hub, **f: object) -> list[dict]:
    items, _ = hub.alerts.list_alerts(AlertFilter(source="diagnosis", **f), 1000, 0)
    return items


async def _cycle(hub: Hub, clock: Clock, n: int, he_id: int = 1, **kw: object) -> dict:
    clock.now = START + n * SLOT + timedelta(minutes=1)
    return await hub.collection.collect(he_id, START + n * SLOT, **kw)


async def test_a_meter_out_of_range_raises_one_alert_per_cycle_and_none_when_the_cycle_runs_again(dhub, clock):
    from hub.demo import seed_catalogue

    seed_catalogue(dhub)
    _narrow_type(dhub)
    lds = install_meters(dhub, {1: 3}, overrides={2: {"ld_type_id": NARROW_TYPE}}, catalogue=False)
    run = await _cycle(dhub, clock, 0)
    assert run["alerts"] == 1
    (alert,) = _alerts(dhub)
    assert (alert["code"], alert["ld_id"], alert["he_id"], alert["severity"]) == (OUT_OF_RANGE, lds[1], 1, "warning")
    assert alert["details"]["sub_number"] == 1 and alert["details"]["max_value"] == 10
    assert alert["details"]["first"] == START.isoformat().replace("+00:00", "Z")
    flagged = {(r.ld_id, r.sub_number) for r in usage_rows(dhub) if r.quality & Quality.QUESTIONABLE}
    assert flagged == {(lds[1], 1)}  # the value stays; the flag says a check rejected it

    again = await dhub.collection.collect(1, START)  # finished: not run again
    forced = await dhub.collection.collect(1, START, force=True)  # run again: nothing new to report
    assert again["alerts"] == 1 and forced["alerts"] == 0
    assert len(_alerts(dhub)) == 1

    nxt = await _cycle(dhub, clock, 1)  # the next slot's value is out of range too: that cycle says so
    assert nxt["alerts"] == 1 and len(_alerts(dhub, code=OUT_OF_RANGE, ld_id=lds[1])) == 2


async def test_a_zero_run_is_reported_by_the_cycle_where_it_passes_the_threshold(dhub, clock):
    lds = install_meters(dhub, {1: 2})
    head_end = dhub.head_ends.port(1)
    clock.now = START - timedelta(minutes=10)
    await head_end.set_relay(MeterRef(lds[0], device_key(dhub, lds[0]), 2, 1), False)  # no consumption from now
    runs = [await _cycle(dhub, clock, n) for n in range(7)]
    # zero increments at slots 1, 2, 3, 4...: the run is longer than 3 slots at slot 4
    assert [r["alerts"] for r in runs] == [0, 0, 0, 0, 1, 0, 0]
    (alert,) = _alerts(dhub)
    assert (alert["code"], alert["ld_id"], alert["details"]["sub_number"]) == (ZERO_RUN, lds[0], 1)
    assert alert["details"]["first"] == (START + SLOT).isoformat().replace("+00:00", "Z")
    forced = await dhub.collection.collect(1, START + 4 * SLOT, force=True)
    assert forced["alerts"] == 0 and len(_alerts(dhub)) == 1


async def test_a_missing_run_is_reported_once_per_register_and_reaches_the_nms(dhub, clock):
    install_meters(dhub, {1: 1, 2: 1})
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    dhub.alerts.notifier = SyslogNotifier(port=listener.getsockname()[1])
    try:
        dhub.head_ends.port(1).set_outage(True)
        runs = [await _cycle(dhub, clock, n) for n in range(6)]
        others = [await _cycle(dhub, clock, n, he_id=2) for n in range(6)]
        # missing at slots 0, 1, 2, 3...: longer than 3 slots at slot 3, for both registers
        assert [r["alerts"] for r in runs] == [0, 0, 0, 2, 0, 0]
        assert all(r["alerts"] == 0 for r in others)
        alerts = _alerts(dhub)
        assert sorted((a["code"], a["details"]["sub_number"], a["he_id"]) for a in alerts) == [
            (MISSING_RUN, 1, 1), (MISSING_RUN, 2, 1)]
        assert all(a["severity"] == "error" and a["details"]["ongoing"] for a in alerts)
        received = sorted(listener.recvfrom(65536)[0].decode() for _ in alerts)
        assert all(MISSING_RUN in m for m in received)
        assert all(a["nms_sent_at"] for a in _alerts(dhub))
    finally:
        listener.close()


async def test_recollection_checks_the_rows_it_fills(dhub, clock):
    from hub.demo import seed_catalogue

    seed_catalogue(dhub)
    _narrow_type(dhub)
    lds = install_meters(dhub, {1: 2}, overrides={1: {"ld_type_id": NARROW_TYPE}}, catalogue=False)
    set_head_end(dhub, 1, failure_rate=1.0)  # every scheduled read missed; the meters' memory has them
    runs = [await _cycle(dhub, clock, n) for n in range(2)]
    assert [r["alerts"] for r in runs] == [0, 0]  # nothing to judge yet
    report = await dhub.collection.recollect(START + 2 * SLOT, he_id=1)
    (run,) = report["head_ends"]
    assert run["recollected"] == 8 and run["alerts"] == 1
    (alert,) = _alerts(dhub)
    assert (alert["code"], alert["ld_id"], alert["details"]["count"]) == (OUT_OF_RANGE, lds[0], 2)
    again = await dhub.collection.recollect(START + 2 * SLOT, he_id=1)
    assert again["head_ends"][0]["alerts"] == 0 and len(_alerts(dhub)) == 1


async def test_a_spiky_day_is_found_by_the_cycle_that_closes_it(dhub):
    """The spike check reads back only the days that may hold one, and the pure check confirms."""
    from hub.demo import seed_catalogue

    seed_catalogue(dhub)
    writer = UsageWriter(dhub.db)
    day = START
    reads = []
    for ld, peak in (("LD-SPIKY", 4.0), ("LD-FLAT", 0.3), ("LD-BUSY", 4.0)):
        value = 100.0
        for n in range(48):
            inc = 0.3
            if n == 20:
                inc = peak
            if ld == "LD-BUSY" and n in (10, 30):
                inc = 3.0  # three high intervals: the third-highest keeps the highest in proportion
            value += inc
            reads.append(RegisterRead(ld, 1, day + n * SLOT, round(value, 3)))
    first = [r for r in reads if r.measured_time < day + 47 * SLOT]
    writer.store(expected=(), reads=first, cumulative=lambda ld, sub: True, source="test")
    last = [r for r in reads if r.measured_time == day + 47 * SLOT]
    stored = writer.store(expected=[(r.ld_id, 1, r.measured_time) for r in last], reads=last,
                          cumulative=lambda ld, sub: True, source="test", keep_rows=True)
    diagnosis = dhub.collection.diagnosis
    assert diagnosis is not None
    ranges: dict = {}
    at = day + 47 * SLOT
    assert diagnosis.check(stored.rows, since=at, until=at, ranges=ranges, he_id=1) == 1
    (alert,) = _alerts(dhub)
    assert (alert["code"], alert["ld_id"], alert["details"]["highest"]) == (SPIKE, "LD-SPIKY", 4.0)
    assert diagnosis.check(stored.rows, since=at, until=at, ranges=ranges, he_id=1) == 0  # once
    questionable = [(r.ld_id, r.measured_time, r.increment) for r in usage_rows(dhub)
                    if r.quality & Quality.QUESTIONABLE]
    assert questionable == [("LD-SPIKY", day + 20 * SLOT, 4.0)]
