"""Outbound 61968-9 events: created EndDeviceEvents for new alerts and created MeterReadings after a
collection cycle, stored before sending and delivered to a real HTTP subscriber, through an outage."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from lxml import etree

from adapters.cim.publish import CHANNEL, Publisher
from hub.app import create_app
from hub.config import CimSubscriber
from hub.services.diagnosis import AlertDraft
from tests.cim_messages import MSG, NSMAP, parse_reply
from tests.collecting import START, SLOT, Clock, collecting_hub, install_meters

EDE = "http://iec.ch/TC57/2011/EndDeviceEvents#"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Subscriber:
    """An enterprise system's event endpoint: a real aiohttp server that can go down and come back."""

    port: int = field(default_factory=free_port)
    answer: str = "OK"
    received: list[etree._Element] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def handle(self, request: web.Request) -> web.Response:
        root = parse_reply(await request.read(), "EventMessage")  # every emitted message validates
        self.received.append(root)
        mid = root.findtext("msg:Header/msg:MessageID", namespaces=NSMAP)
        body = (f'<ResponseMessage xmlns="{MSG}"><Header><Verb>reply</Verb><Noun>'
                f'{root.findtext("msg:Header/msg:Noun", namespaces=NSMAP)}</Noun><CorrelationID>{mid}'
                f"</CorrelationID></Header><Reply><Result>{self.answer}</Result></Reply></ResponseMessage>")
        return web.Response(text=body, content_type="application/xml")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def nouns(self) -> list[str]:
        return [r.findtext("msg:Header/msg:Noun", namespaces=NSMAP) for r in self.received]


@pytest.fixture
async def env(settings):
    sub = Subscriber()
    await sub.start()
    cim = settings.cim.model_copy(update={
        "subscribers": [CimSubscriber(name="erp", url=sub.url, timeout_s=2)], "retry_min_s": 0.05,
        "retry_max_s": 0.2, "readings_per_message": 1})
    settings = settings.model_copy(update={"cim": cim})
    clock = Clock()
    hub = collecting_hub(settings, clock)
    lds = install_meters(hub, {1: 2})
    app = create_app(hub)
    yield hub, app, sub, lds
    await sub.stop()
    hub.close()


def publisher_of(hub) -> Publisher:
    found = [f for f in hub.alerts.listeners if getattr(f, "__self__", None) is not None]
    assert found, "the 61968-9 edge hooks into the alert service"
    return found[-1].__self__


def alert(ld: str, code: str = "reading.spike") -> AlertDraft:
    return AlertDraft(code=code, severity="warning", message=f"{code} on {ld}", ld_id=ld, source="MDM")


class Recorder:
    def __init__(self) -> None:
        self.got: list[int] = []

    def deliver(self, alerts) -> int:
        self.got += [a.id for a in alerts]
        return len(alerts)


async def test_new_alerts_go_out_as_created_end_device_events_beside_the_nms(env):
    hub, _, sub, lds = env
    nms = Recorder()
    hub.alerts.notifier = nms  # the NMS notifier keeps working next to the 61968-9 publisher
    ids = await hub.run(hub.alerts.raise_alerts, [alert(lds[0]), alert(lds[1], "reading.zero-run")])
    assert nms.got == ids
    assert await publisher_of(hub).deliver_once() == 1
    (ev,) = sub.received
    assert ev.findtext("msg:Header/msg:Verb", namespaces=NSMAP) == "created"
    assert ev.findtext("msg:Header/msg:Noun", namespaces=NSMAP) == "EndDeviceEvents"
    events = ev.findall(f"msg:Payload/{{{EDE}}}EndDeviceEvents/{{{EDE}}}EndDeviceEvent", NSMAP)
    assert [e.findtext(f"{{{EDE}}}mRID") for e in events] == [f"alert-{i}" for i in ids]
    assert [e.find(f"{{{EDE}}}EndDeviceEventType").get("ref") for e in events] == ["3.21.0.93", "3.21.0.263"]
    assert hub.outbox.stats(CHANNEL) == {}  # acknowledged: nothing left
    assert await publisher_of(hub).deliver_once() == 0  # and nothing sent twice


async def test_a_subscriber_outage_loses_nothing_and_delivery_resumes_in_order(env):
    hub, _, sub, lds = env
    publisher = publisher_of(hub)
    await sub.stop()  # connection refused
    first = await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    second = await hub.run(hub.alerts.raise_alerts, [alert(lds[1])])
    assert await publisher.deliver_once() == 0
    stats = hub.outbox.stats(CHANNEL)["erp"]
    assert stats["queued"] == 2
    assert await publisher.deliver_once() == 0  # backing off: not yet due, nothing attempted
    await asyncio.sleep(0.25)
    assert await publisher.deliver_once() == 0  # still down: waits longer
    due = hub.outbox.due(CHANNEL, "erp", 10)
    assert due == [] and hub.outbox.stats(CHANNEL)["erp"]["queued"] == 2
    await sub.start()
    await asyncio.sleep(0.25)
    # a restarted hub resumes from the store: a fresh publisher delivers what the first one kept
    assert await Publisher(hub, hub.settings.cim).deliver_once() == 2
    got = [r.findtext(f"msg:Payload/{{{EDE}}}EndDeviceEvents/{{{EDE}}}EndDeviceEvent/{{{EDE}}}mRID", namespaces=NSMAP)
           for r in sub.received]
    assert got == [f"alert-{first[0]}", f"alert-{second[0]}"]
    assert hub.outbox.stats(CHANNEL) == {}


async def test_a_subscriber_that_answers_failed_gets_the_event_rejected_and_kept(env):
    hub, _, sub, lds = env
    sub.answer = "FAILED"
    await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    assert await publisher_of(hub).deliver_once() == 0
    stats = hub.outbox.stats(CHANNEL)["erp"]
    assert stats == {**stats, "queued": 0, "rejected": 1}
    assert await publisher_of(hub).deliver_once() == 0 and len(sub.received) == 1


async def test_a_collection_cycle_publishes_created_meter_readings_in_parts(env):
    hub, _, sub, lds = env
    await hub.collection.collect(1, START)
    await hub.collection.collect(1, START + SLOT)
    assert await publisher_of(hub).deliver_once() == 4  # two cycles, two metering points, one per part
    assert set(sub.nouns()) == {"MeterReadings"}
    last = sub.received[2:]
    props = [(r.findtext("msg:Header/msg:Property/msg:Name", namespaces=NSMAP),
              r.findtext("msg:Header/msg:Property/msg:Value", namespaces=NSMAP)) for r in last]
    assert props == [("MessageIndex", "1/2"), ("MessageIndex", "2/2")]
    ups = [r.findtext("msg:Payload/m:MeterReadings/m:MeterReading/m:UsagePoint/m:mRID", namespaces=NSMAP)
           for r in last]
    assert ups == lds
    stamps = {e.text for r in last for e in r.iterfind(".//m:Readings/m:timeStamp", NSMAP)}
    assert "2026-03-02T00:30:00Z" in stamps
    blocks = [e.text for r in last for e in r.iterfind(".//m:IntervalBlocks/m:IntervalReadings/m:timeStamp", NSMAP)]
    assert "2026-03-02T00:30:00Z" in blocks


async def test_the_running_hub_delivers_on_its_own(env, aiohttp_client):
    hub, app, sub, lds = env
    hub.settings.cim.publish_interval_s = 0.05
    await aiohttp_client(app)
    await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    for _ in range(100):
        if sub.received:
            break
        await asyncio.sleep(0.05)
    assert sub.nouns() == ["EndDeviceEvents"]


async def test_a_broken_publisher_never_blocks_the_nms_or_the_alert(env):
    hub, _, _, lds = env
    nms = Recorder()
    hub.alerts.notifier = nms

    def broken(_records) -> None:
        raise RuntimeError("publisher down")

    hub.alerts.listeners.insert(0, broken)
    ids = await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    assert nms.got == ids and hub.alerts.get(ids[0])["nms_sent_at"] is not None
    assert hub.outbox.stats(CHANNEL)["erp"]["queued"] == 1  # the 61968-9 publisher after it still queued


async def test_subscribers_get_only_the_nouns_they_asked_for(env):
    hub, _, sub, lds = env
    hub.settings.cim.subscribers[0].nouns = ["MeterReadings"]
    await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    await hub.collection.collect(1, START)
    assert await publisher_of(hub).deliver_once() == 2
    assert sub.nouns() == ["MeterReadings", "MeterReadings"]


async def received_alerts(sub: Subscriber, count: int) -> list[str]:
    for _ in range(100):
        if len(sub.received) >= count:
            break
        await asyncio.sleep(0.05)
    return [e.text for r in sub.received for e in r.iterfind(f".//{{{EDE}}}EndDeviceEvent/{{{EDE}}}mRID")]


async def test_an_alert_stored_just_before_a_crash_is_published_at_the_next_start(env, aiohttp_client):
    hub, app, sub, lds = env
    hub.settings.cim.publish_interval_s = 0.05
    hub.alerts.listeners.clear()  # the process dies right after the alert's commit: no listener runs
    (lost,) = await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    assert hub.outbox.stats(CHANNEL) == {} and [a.id for a in hub.alerts.unqueued()] == [lost]
    await aiohttp_client(app)  # the restarted hub sweeps before it serves
    assert await received_alerts(sub, 1) == [f"alert-{lost}"]
    assert hub.alerts.unqueued() == []


async def test_a_crash_while_queueing_leaves_the_alert_to_the_sweep_and_nothing_half_done(env, aiohttp_client):
    hub, app, sub, lds = env
    hub.settings.cim.publish_interval_s = 0.05
    publisher = publisher_of(hub)
    build = publisher._alert_events

    def dies(records):
        build(records)  # the messages are built, then the process stops before the commit
        raise RuntimeError("killed")

    publisher._alert_events = dies
    (lost,) = await hub.run(hub.alerts.raise_alerts, [alert(lds[0])])
    assert hub.outbox.stats(CHANNEL) == {}  # rolled back together with the alert's mark
    assert [a.id for a in hub.alerts.unqueued()] == [lost]
    publisher._alert_events = build
    await aiohttp_client(app)
    assert await received_alerts(sub, 1) == [f"alert-{lost}"]


async def test_alerts_already_queued_are_never_queued_again(env):
    hub, _, _, lds = env
    publisher = publisher_of(hub)
    seen: list = []
    hub.alerts.listeners.append(seen.extend)
    await hub.run(hub.alerts.raise_alerts, [alert(lds[0]), alert(lds[1])])
    assert hub.outbox.stats(CHANNEL)["erp"]["queued"] == 1
    assert await hub.run(publisher.sweep) == 0
    assert hub.alerts.queue_events(seen, CHANNEL, publisher._alert_events) == 0  # a second claim of the same
    assert hub.outbox.stats(CHANNEL)["erp"]["queued"] == 1
