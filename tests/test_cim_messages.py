"""The 61968-9 edge over plain HTTP (/cim/messages): envelope, MeterReadings, bad input, async replies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from hub.app import create_app
from hub.ports import RegisterRead
from hub.runtime import Hub
from tests.cim_messages import (
    INTERVAL,
    MR,
    NSMAP,
    REGISTER,
    codes,
    compressed,
    details,
    get_readings,
    iso,
    meter_readings,
    parse_reply,
    request,
    result,
)
from tests.collecting import install_meters, usage_rows

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
SLOT = timedelta(minutes=30)


@pytest.fixture
def meters(hub):
    lds = install_meters(hub, {1: 2})
    reads = [RegisterRead(ld, 1, T0 + i * SLOT, 100.0 + n * 1000 + i * 0.5) for n, ld in enumerate(lds)
             for i in range(6)]
    reads += [RegisterRead(lds[0], 2, T0 + i * SLOT, 7.0) for i in range(6)]
    report = hub.collection.ingest_reads(reads, "test")
    assert not report["rejected"]
    return lds


@pytest.fixture
async def cim(hub, meters, aiohttp_client):
    return await aiohttp_client(create_app(hub))


async def post(cim, body: bytes, status: int = 200):
    r = await cim.post("/cim/messages", data=body, headers={"Content-Type": "application/xml"})
    assert r.status == status
    return parse_reply(await r.read())


async def test_get_meter_readings_returns_registers_intervals_and_the_types_used(cim, meters):
    reply = await post(cim, get_readings([meters[0]], iso(T0), iso(T0 + 3 * SLOT), message_id="req-1"))
    assert result(reply) == "OK"
    assert reply.findtext("msg:Header/msg:Verb", namespaces=NSMAP) == "reply"
    assert reply.findtext("msg:Header/msg:CorrelationID", namespaces=NSMAP) == "req-1"
    mr = reply.find("msg:Payload/m:MeterReadings/m:MeterReading", NSMAP)
    assert mr.findtext("m:UsagePoint/m:mRID", namespaces=NSMAP) == meters[0]
    assert mr.findtext("m:Meter/m:mRID", namespaces=NSMAP) == "PD-000001"
    energy = [(r.findtext("m:timeStamp", namespaces=NSMAP), r.findtext("m:value", namespaces=NSMAP))
              for r in mr.findall("m:Readings", NSMAP) if r.find("m:ReadingType", NSMAP).get("ref") == REGISTER]
    assert energy == [("2026-03-02T00:00:00Z", "100"), ("2026-03-02T00:30:00Z", "100.5"),
                      ("2026-03-02T01:00:00Z", "101")]
    block = mr.find("m:IntervalBlocks", NSMAP)
    assert block.find("m:ReadingType", NSMAP).get("ref") == INTERVAL
    # the first snapshot has no earlier value, so no increment; interval ends carry 0.5 kWh each
    assert [ir.findtext("m:value", namespaces=NSMAP) for ir in block.findall("m:IntervalReadings", NSMAP)] == \
        [None, "0.5", "0.5"]
    types = {t.findtext("m:mRID", namespaces=NSMAP) for t in reply.findall("msg:Payload/m:MeterReadings/m:ReadingType",
                                                                             NSMAP)}
    assert {REGISTER, INTERVAL} <= types


async def test_reading_types_filter_and_end_devices_by_serial(cim, meters):
    reply = await post(cim, get_readings([], iso(T0), iso(T0 + 2 * SLOT), types=[INTERVAL], devices=["SN-000002"]))
    assert result(reply) == "OK"
    mr = reply.find("msg:Payload/m:MeterReadings/m:MeterReading", NSMAP)
    assert mr.findtext("m:UsagePoint/m:mRID", namespaces=NSMAP) == meters[1]
    assert mr.findall("m:Readings", NSMAP) == []
    assert len(mr.findall("m:IntervalBlocks/m:IntervalReadings", NSMAP)) == 2


async def test_unknown_meters_give_partial_or_failed_with_the_object_named(cim, meters):
    reply = await post(cim, get_readings([meters[0], "NO-SUCH-LD"], iso(T0), iso(T0 + SLOT)))
    assert result(reply) == "PARTIAL"
    assert "2.4" in codes(reply)
    ids = [e.text for e in reply.findall("msg:Reply/msg:Error/msg:ID", NSMAP)]
    assert ids == ["NO-SUCH-LD"]
    reply = await post(cim, get_readings(["NO-SUCH-LD"], iso(T0), iso(T0 + SLOT)))
    assert result(reply) == "FAILED" and codes(reply) == ["2.4"]


async def test_create_meter_readings_stores_once_and_a_replay_returns_the_first_reply(cim, hub, meters):
    later = [(iso(T0 + (6 + i) * SLOT), 103.0 + i) for i in range(3)]
    body = request("create", "MeterReadings", f"<Payload>{meter_readings({meters[0]: later})}</Payload>",
                   message_id="create-1")
    first = await post(cim, body)
    assert result(first) == "OK", details(first)
    rows = [r for r in usage_rows(hub, meters[0], 1) if r.measured_time >= T0 + 6 * SLOT]
    assert [(r.register_value, r.increment) for r in rows] == [(103.0, 0.5), (104.0, 1.0), (105.0, 1.0)]
    assert all(r.source == "cim:ERP" for r in rows)
    again = await post(cim, body)
    assert again.findtext("msg:Header/msg:MessageID", namespaces=NSMAP) == \
        first.findtext("msg:Header/msg:MessageID", namespaces=NSMAP)
    assert len(usage_rows(hub, meters[0], 1)) == 9


async def test_a_replay_after_a_restart_still_gets_the_first_reply_and_acts_once(cim, hub, meters, settings,
                                                                                   aiohttp_client):
    body = request("create", "MeterReadings",
                   f"<Payload>{meter_readings({meters[0]: [(iso(T0 + 6 * SLOT), 103.0)]})}</Payload>",
                   message_id="create-restart")
    first = await post(cim, body)
    assert result(first) == "OK", details(first)
    hub.db.engine.dispose()  # the first hub is gone; a new one starts on the same store
    restarted = Hub(settings)
    try:
        again = await post(await aiohttp_client(create_app(restarted)), body)
        assert again.findtext("msg:Header/msg:MessageID", namespaces=NSMAP) == \
            first.findtext("msg:Header/msg:MessageID", namespaces=NSMAP)
        assert result(again) == "OK"
        assert len(usage_rows(restarted, meters[0], 1)) == 7
    finally:
        restarted.close()


async def test_a_copy_of_a_message_whose_first_copy_was_cut_short_is_not_acted_on(cim, hub, meters):
    hub.receipts.claim("cim", "ERP", "create-crashed")  # taken in, then the process died before replying
    body = request("create", "MeterReadings",
                   f"<Payload>{meter_readings({meters[0]: [(iso(T0 + 6 * SLOT), 103.0)]})}</Payload>",
                   message_id="create-crashed")
    copy = await post(cim, body)
    assert result(copy) == "FAILED" and codes(copy) == ["3.2"]
    assert "outcome is not known" in details(copy)[0]
    assert len(usage_rows(hub, meters[0], 1)) == 6


async def test_created_event_in_parts_compressed_with_quality_kept_as_flags(cim, hub, meters):
    part = meter_readings({meters[1]: [(iso(T0 + 6 * SLOT), 1104.0)]}, quality="3.8.0", interval=True,
                          code="0.0.5.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
    prop = "<AckRequired>true</AckRequired>"
    body = request("created", "MeterReadings",
                   f"<Payload><Compressed>{compressed(part)}</Compressed><Format>XML</Format></Payload>",
                   kind="EventMessage", extra=prop).replace(
        b"</MessageID></Header>", b"</MessageID><Property><Name>MessageIndex</Name><Value>1/2</Value></Property>"
                                  b"</Header>")
    reply = await post(cim, body)
    assert result(reply) == "OK", details(reply)
    assert reply.findtext("msg:Header/msg:Property/msg:Value", namespaces=NSMAP) == "1/2"
    (row,) = [r for r in usage_rows(hub, meters[1], 1) if r.measured_time == T0 + 6 * SLOT]
    assert row.register_value == 1104.0 and row.quality & 16  # estimated-flat


async def test_delta_intervals_cannot_be_stored_and_say_why(cim, meters):
    body = request("create", "MeterReadings",
                   f"<Payload>{meter_readings({meters[0]: [(iso(T0 + 7 * SLOT), 0.5)]}, code=INTERVAL)}</Payload>")
    reply = await post(cim, body)
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"]
    assert "send register values" in details(reply)[0]


@pytest.mark.parametrize(("body", "code"), [
    (b"<RequestMessage xmlns='http://iec.ch/TC57/2011/schema/message'><Request/></RequestMessage>", "1.1"),
    (request("fetch", "MeterReadings", ""), "1.4"),  # not one of the 14 verbs: a schema violation
    (request("get", "Weather", ""), "1.3"),
    (request("delete", "MeterReadings", ""), "1.2"),
    (request("created", "MeterReadings", "", kind="RequestMessage"), "1.2"),
    (b"<RequestMessage xmlns='http://iec.ch/TC57/2011/schema/message'><Header><Noun>MeterReadings</Noun>"
     b"<Verb>get</Verb></Header></RequestMessage>", "1.4"),  # Header elements out of order
    (b"<RequestMessage xmlns='http://iec.ch/TC57/2016/schema/message'><Header/></RequestMessage>", "1.5"),
    (b"<RequestMessage xmlns='http://iec.ch/TC57/2011/schema/message'><Header>", "1.0"),
    (request("get", "MeterReadings", "<Request><StartTime>2026-03-02T00:00:00Z</StartTime></Request>"), "1.8"),
])
async def test_bad_messages_get_a_failed_reply_with_the_standard_code(cim, body, code):
    reply = await post(cim, body)
    assert result(reply) == "FAILED"
    assert codes(reply) == [code]


async def test_a_schema_invalid_payload_is_refused(cim, meters):
    bad = f'<m:MeterReadings xmlns:m="{MR}"><m:MeterReading><m:Bogus/></m:MeterReading></m:MeterReadings>'
    reply = await post(cim, request("create", "MeterReadings", f"<Payload>{bad}</Payload>"))
    assert result(reply) == "FAILED" and codes(reply) == ["1.4"]


async def test_xxe_and_entity_expansion_are_refused_unread(cim):
    xxe = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<RequestMessage xmlns='http://iec.ch/TC57/2011/schema/message'>" + header("get", "MeterReadings").encode()
           + b"<Request><ID>&x;</ID></Request></RequestMessage>")
    r = await cim.post("/cim/messages", data=xxe)
    body = await r.read()
    reply = parse_reply(body)
    assert codes(reply) == ["1.7"] and b"root:" not in body
    laughs = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
              b"<l>&b;</l>")
    assert codes(await post(cim, laughs)) == ["1.7"]


async def test_an_oversized_message_is_refused_before_it_is_read(cim, hub):
    hub.settings.cim.max_message_bytes = 4096
    big = request("get", "MeterReadings", "<Request>" + "<Option><name>x</name></Option>" * 500 + "</Request>")
    reply = await post(cim, big, status=413)
    assert codes(reply) == ["1.6"]


async def test_async_reply_is_acknowledged_then_delivered_to_the_reply_address(cim, hub, meters, aiohttp_server):
    received: list[bytes] = []
    arrived = asyncio.Event()

    async def listener(request: web.Request) -> web.Response:
        received.append(await request.read())
        arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/replies", listener)
    server = await aiohttp_server(app)
    address = str(server.make_url("/replies"))
    extra = f"<AsyncReplyFlag>true</AsyncReplyFlag><ReplyAddress>{address}</ReplyAddress>"
    refused = await post(cim, get_readings([meters[0]], iso(T0), iso(T0 + SLOT), extra=extra))
    assert result(refused) == "FAILED" and codes(refused) == ["1.9"]  # not on the allow-list
    hub.settings.cim.reply_addresses = [str(server.make_url("/"))]
    ack = await post(cim, get_readings([meters[0]], iso(T0), iso(T0 + SLOT), message_id="async-1", extra=extra))
    assert result(ack) == "OK" and codes(ack) == ["0.3"]  # acknowledged: the reply follows
    await asyncio.wait_for(arrived.wait(), 10)
    reply = parse_reply(received[0])
    assert result(reply) == "OK"
    assert reply.findtext("msg:Header/msg:CorrelationID", namespaces=NSMAP) == "async-1"
    assert reply.find("msg:Payload/m:MeterReadings/m:MeterReading", NSMAP) is not None


def header(verb: str, noun: str) -> str:
    from tests.cim_messages import header as h

    return h(verb, noun)
