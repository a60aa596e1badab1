"""Large create / created MeterReadings are read as a stream: in batches, each dropped once stored,
with the same all-or-nothing validation and the same refusal of hostile XML as a small message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters import xmlsafe
from adapters.cim import readings, stream
from hub.app import create_app
from tests.cim_messages import MR, codes, details, iso, meter_readings, parse_reply, request, result
from tests.collecting import install_meters, usage_rows

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
SLOT = timedelta(minutes=30)
SNAPSHOT = "0.0.5.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
METERS, SLOTS, BATCH = 12, 48, 5
READ_AHEAD_BYTES = 32768


def day(lds: list[str]) -> dict[str, list[tuple[str, float]]]:
    """A day of 30-minute register snapshots per metering point, each meter advancing at its own pace."""
    return {ld: [(iso(T0 + s * SLOT), 100.0 * n + s * (0.25 + n / 100)) for s in range(SLOTS)]
            for n, ld in enumerate(lds, start=1)}


def created(payload: str, message_id: str = "day-1") -> bytes:
    return request("created", "MeterReadings", f"<Payload>{payload}</Payload>", message_id=message_id,
                   kind="EventMessage", extra="<AckRequired>true</AckRequired>")


@pytest.fixture
def lds(hub):
    return install_meters(hub, {1: METERS})


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of BATCH MeterReadings, so a dozen meters already take several."""
    monkeypatch.setattr(stream, "BATCH_METERS", BATCH)
    monkeypatch.setattr(stream, "SINGLE_PASS_METERS", BATCH)


@pytest.fixture
async def cim(hub, lds, aiohttp_client):
    return await aiohttp_client(create_app(hub))


async def post(cim, body: bytes, path: str = "/cim/messages", content_type: str = "application/xml"):
    r = await cim.post(path, data=body, headers={"Content-Type": content_type})
    assert r.status == 200
    return await r.read()


def stored(hub, lds: list[str]) -> dict[str, list[tuple[datetime, float, float | None]]]:
    return {ld: [(r.measured_time, r.register_value, r.increment) for r in usage_rows(hub, ld, 1)] for ld in lds}


async def test_a_message_of_many_batches_is_stored_whole_and_correctly(cim, hub, lds, small_batches):
    values = day(lds)
    reply = parse_reply(await post(cim, created(meter_readings(values, code=SNAPSHOT, interval=True))))
    assert result(reply) == "OK", details(reply)
    rows = stored(hub, lds)
    for n, ld in enumerate(lds, start=1):
        assert [(t, v) for t, v, _ in rows[ld]] == [(T0 + s * SLOT, v) for s, (_, v) in enumerate(values[ld])]
        assert [inc for _, _, inc in rows[ld]] == [None] + [pytest.approx(0.25 + n / 100)] * (SLOTS - 1)


async def test_steps_mapped_while_the_one_before_is_stored_are_stored_in_order(cim, hub, lds, small_batches,
                                                                                monkeypatch):
    """Each meter's day comes in two MeterReadings, its second half in a later step than its first:
    the increment at the seam is computed from the first half, so that step was stored before."""
    monkeypatch.setattr(readings, "PIPELINE_METERS", 2)
    values = day(lds)
    halves = [meter_readings({ld: points[part * SLOTS // 2:(part + 1) * SLOTS // 2] for ld, points in values.items()},
                             code=SNAPSHOT, interval=True) for part in (0, 1)]
    payload = halves[0].removesuffix("</m:MeterReadings>") + halves[1][halves[1].index("<m:MeterReading>"):]
    reply = parse_reply(await post(cim, created(payload)))
    assert result(reply) == "OK", details(reply)
    rows = stored(hub, lds)
    for n, ld in enumerate(lds, start=1):
        assert [(t, v) for t, v, _ in rows[ld]] == [(T0 + s * SLOT, v) for s, (_, v) in enumerate(values[ld])]
        assert [inc for _, _, inc in rows[ld]] == [None] + [pytest.approx(0.25 + n / 100)] * (SLOTS - 1)


@pytest.mark.parametrize("reader", ["two_pass", "read"])
def test_the_read_keeps_only_the_envelope_and_batches_are_dropped_as_they_are_consumed(small_batches, reader):
    """Two passes validate and drop the payload before the first batch; one pass (what ``read`` does
    with a bare 2011 message) holds the envelope and lxml's read-ahead when it returns."""
    meters = 60  # about 300 KB: many times lxml's read-ahead
    body = created(meter_readings(day([f"LD-{n:06d}" for n in range(1, meters + 1)]), code=SNAPSHOT, interval=True))
    parsed = getattr(stream, reader)(body)
    assert parsed.streamed is not None and parsed.streamed.violation is None
    assert parsed.streamed.single_pass == (reader == "read")
    (container,) = parsed.root.iter(f"{{{MR}}}MeterReadings")
    read_ahead = -(-READ_AHEAD_BYTES // (len(body) // meters)) + 1  # lxml parses the input in 32 KB chunks
    assert len(container) == 0 if reader == "two_pass" else len(container) <= read_ahead
    sizes, held = [], []
    for batch in parsed.streamed.batches():
        sizes.append(len(batch))
        held.append(len(batch[0].getparent()))  # MeterReading elements in the tree at this point
    assert parsed.streamed.meter_readings == meters
    assert sizes == [BATCH] * (meters // BATCH) and max(held) <= BATCH + read_ahead < meters // 4


async def test_a_schema_violation_in_a_late_batch_refuses_the_whole_message(cim, hub, lds, small_batches):
    payload = meter_readings(day(lds), code=SNAPSHOT, interval=True)
    last = payload.rindex("<m:MeterReading>")
    payload = payload[:last] + "<m:MeterReading><m:Bogus/>" + payload[last + len("<m:MeterReading>"):]
    reply = parse_reply(await post(cim, created(payload)))
    assert result(reply) == "FAILED" and codes(reply) == ["1.4"]
    assert not any(stored(hub, lds).values())


async def test_a_truncated_message_stores_nothing(cim, hub, lds, small_batches):
    body = created(meter_readings(day(lds), code=SNAPSHOT, interval=True))
    reply = parse_reply(await post(cim, body[:-200]))
    assert result(reply) == "FAILED" and codes(reply) == ["1.0"]
    assert not any(stored(hub, lds).values())


@pytest.mark.parametrize("prolog", [
    b'<!DOCTYPE EventMessage [<!ENTITY v "1">]>',
    b"<!--" + b" " * 8192 + b'-->\n<!DOCTYPE EventMessage SYSTEM "http://127.0.0.1:9/x.dtd">',  # past the byte check
], ids=["internal-entity", "late-external-dtd"])
async def test_hostile_xml_is_refused_on_the_streaming_path(cim, hub, lds, prolog):
    body = created(meter_readings(day(lds[:2]), code=SNAPSHOT, interval=True))
    body = body.replace(b"?>", b"?>" + prolog, 1)
    with pytest.raises(xmlsafe.UnsafeXml):
        stream.read(body)
    reply = parse_reply(await post(cim, body))
    assert result(reply) == "FAILED" and codes(reply) == ["1.7"]
    assert not any(stored(hub, lds).values())


async def test_a_created_event_in_a_soap_envelope_is_streamed_too(cim, hub, lds, small_batches):
    wrapper = "http://iec.ch/TC57/2011/MeterReadingsMessage"
    inner = created(meter_readings(day(lds), code=SNAPSHOT, interval=True)).decode().split("?>", 1)[1]
    inner = inner.replace("<EventMessage xmlns=\"http://iec.ch/TC57/2011/schema/message\">",
                          f'<w:CreatedMeterReadings xmlns:w="{wrapper}" '
                          'xmlns="http://iec.ch/TC57/2011/schema/message">').replace(
        "</EventMessage>", "</w:CreatedMeterReadings>")
    envelope = f'<soapenv:Envelope xmlns:soapenv="{SOAP}"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>'
    assert stream.read(envelope.encode()).streamed is not None
    body = await post(cim, envelope.encode(), "/cim/soap", "text/xml")
    assert b"<msg:Result>OK</msg:Result>" in body, body[:2000]
    assert all(len(rows) == SLOTS for rows in stored(hub, lds).values())


@pytest.mark.parametrize(("verb", "extra", "compress"), [
    ("create", "<AsyncReplyFlag>true</AsyncReplyFlag><ReplyAddress>http://erp.example/r</ReplyAddress>", False),
    ("create", "", True),
    ("get", "", False),
], ids=["asynchronous", "compressed", "get"])
def test_other_messages_are_parsed_whole(lds, verb, extra, compress):
    from tests.cim_messages import compressed

    payload = meter_readings(day(lds[:1]), code=SNAPSHOT, interval=True)
    if compress:
        payload = f"<Compressed>{compressed(payload)}</Compressed>"
    parsed = stream.read(request(verb, "MeterReadings", f"<Payload>{payload}</Payload>", extra=extra))
    assert parsed.streamed is None
    assert len(list(parsed.root.iter(f"{{{MR}}}IntervalReadings"))) == (0 if compress else SLOTS)


async def test_a_message_refused_late_is_not_remembered_and_a_corrected_copy_is_taken(cim, hub, lds, small_batches):
    """Read in one pass, the violation is found after batches were stored: they are rolled back, and
    the MessageID is free again, as it is when the violation is found before anything is taken."""
    payload = meter_readings(day(lds), code=SNAPSHOT, interval=True)
    last = payload.rindex("<m:MeterReading>")
    broken = payload[:last] + "<m:MeterReading><m:Bogus/>" + payload[last + len("<m:MeterReading>"):]
    assert stream.read(created(broken)).streamed.single_pass
    reply = parse_reply(await post(cim, created(broken, message_id="day-2")))
    assert result(reply) == "FAILED" and codes(reply) == ["1.4"]
    assert not any(stored(hub, lds).values())
    reply = parse_reply(await post(cim, created(payload, message_id="day-2")))
    assert result(reply) == "OK", details(reply)
    assert all(len(rows) == SLOTS for rows in stored(hub, lds).values())


async def test_a_payload_the_one_pass_schema_narrows_out_is_taken_as_two_passes_take_it(cim, hub, lds, small_batches):
    """The Payload may hold elements of other namespaces after the MeterReadings (the envelope does not
    validate them); the one-pass schema allows MeterReadings only, so such a message is read again
    in two passes, once its MeterReadings were seen, and stored whole."""
    body = created(meter_readings(day(lds), code=SNAPSHOT, interval=True)
                   + '<x:Note xmlns:x="urn:example:note">kept aside</x:Note>')
    assert stream.read(body).streamed.single_pass
    reply = parse_reply(await post(cim, body))
    assert result(reply) == "OK", details(reply)
    assert all(len(rows) == SLOTS for rows in stored(hub, lds).values())


def test_a_cut_document_is_refused_by_the_one_pass_read(small_batches):
    """lxml's validating iterparse ends a document cut short without an error: the read checks that
    the message's root element was closed."""
    body = created(meter_readings(day([f"LD-{n:06d}" for n in range(1, 13)]), code=SNAPSHOT, interval=True))
    for cut in (len(body) - 1, len(body) - 200, len(body) // 2):
        parsed = stream.read(body[:cut])
        assert parsed.streamed.single_pass
        with pytest.raises(stream.Refused):
            for _ in parsed.streamed.batches():
                pass
        assert parsed.streamed.refusal()[0] == "malformed-xml"
