"""Contract-capacity controls for a scheduledInterval (a head-end reservation with restore) and
cancel EndDeviceControls, over /cim/messages on the real head-end simulator."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hub.app import create_app
from hub.ports import MeterRef
from tests.cim_messages import NSMAP, codes, details, iso, parse_reply, request, result
from tests.collecting import START, Clock, collecting_hub, device_key, install_meters

EDC = "http://iec.ch/TC57/2011/EndDeviceControls#"
AMPS = "<c:EndDeviceControlAttribute><c:name>amps</c:name><c:value>20</c:value></c:EndDeviceControlAttribute>"


@pytest.fixture
async def env(settings, aiohttp_client):
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.controls.clock = clock
    lds = install_meters(hub, {1: 2})
    client = await aiohttp_client(create_app(hub))
    yield hub, client, lds, clock
    hub.close()


def reserve(ld: str, start, end, verb: str = "create", mrid: str = "") -> bytes:
    timing = (f"<c:primaryDeviceTiming><c:interval><c:end>{iso(end)}</c:end><c:start>{iso(start)}</c:start>"
              "</c:interval></c:primaryDeviceTiming>")
    m = f"<c:mRID>{mrid}</c:mRID>" if mrid else ""
    body = (f'<Payload><c:EndDeviceControls xmlns:c="{EDC}"><c:EndDeviceControl>{m}<c:reason>peak</c:reason>'
            f'<c:EndDeviceControlType ref="0.15.0.54"/>{AMPS if verb == "create" else ""}'
            f'{timing if verb == "create" else ""}<c:UsagePoints><c:mRID>{ld}</c:mRID></c:UsagePoints>'
            "</c:EndDeviceControl></c:EndDeviceControls></Payload>")
    return request(verb, "EndDeviceControls", body)


async def post(client, body: bytes):
    r = await client.post("/cim/messages", data=body)
    assert r.status == 200
    return parse_reply(await r.read())


async def live_contract(hub, ld: str) -> int:
    port = (await hub.run(hub.head_ends.access, 1)).port
    return (await port.status(MeterRef(ld, device_key(hub, ld), 2, 1))).contract_amps


def reservation_id(reply) -> str:
    ids = [e for e in reply.findall("msg:Reply/msg:ID", NSMAP) if e.get("idType") == "reservation"]
    assert len(ids) == 1, details(reply)
    return ids[0].text


async def test_a_scheduled_contract_change_applies_in_its_window_and_restores_after(env):
    hub, client, lds, clock = env
    before = await live_contract(hub, lds[0])
    reply = await post(client, reserve(lds[0], START + timedelta(hours=1), START + timedelta(hours=2)))
    assert result(reply) == "OK", details(reply)
    rid = reservation_id(reply)
    assert await live_contract(hub, lds[0]) == before  # not yet
    clock.now = START + timedelta(hours=1, minutes=10)
    assert await live_contract(hub, lds[0]) == 20
    clock.now = START + timedelta(hours=2, minutes=1)
    assert await live_contract(hub, lds[0]) == before
    history, _ = hub.controls.history(__import__("hub.services.controls", fromlist=["ControlFilter"])
                                      .ControlFilter(ld_id=lds[0], action="reserve"), 10, 0)
    assert history[0]["result"] == {"reservation_id": rid} and history[0]["outcome"] == "done"


async def test_cancel_releases_a_reservation_in_force_and_restores_at_once(env):
    hub, client, lds, clock = env
    before = await live_contract(hub, lds[1])
    reply = await post(client, reserve(lds[1], START, START + timedelta(hours=3)))
    rid = reservation_id(reply)
    clock.now = START + timedelta(minutes=30)
    assert await live_contract(hub, lds[1]) == 20
    reply = await post(client, reserve(lds[1], START, START, verb="cancel", mrid=rid))
    assert result(reply) == "OK", details(reply)
    assert await live_contract(hub, lds[1]) == before
    # cancelling an unknown reservation, or one on another metering point, is not found
    reply = await post(client, reserve(lds[1], START, START, verb="cancel", mrid="HE1-R999999"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.4"]
    reply = await post(client, reserve(lds[0], START, START, verb="cancel", mrid=rid))
    assert result(reply) == "FAILED" and codes(reply) == ["2.4"]


async def test_overlapping_or_backwards_windows_are_refused_per_point(env):
    hub, client, lds, _ = env
    assert result(await post(client, reserve(lds[0], START + timedelta(hours=1), START + timedelta(hours=2)))) == "OK"
    reply = await post(client, reserve(lds[0], START + timedelta(hours=1, minutes=30), START + timedelta(hours=3)))
    assert result(reply) == "FAILED" and codes(reply) == ["2.6"], details(reply)  # the head-end refused the overlap
    reply = await post(client, reserve(lds[0], START + timedelta(hours=2), START + timedelta(hours=1)))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"], details(reply)
