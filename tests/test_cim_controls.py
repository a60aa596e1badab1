"""create EndDeviceControls over /cim/messages, carried out on the real head-end simulator."""

from __future__ import annotations

import pytest

from hub.app import create_app
from hub.ports import MeterRef
from tests.cim_messages import NSMAP, codes, details, parse_reply, request, result
from tests.collecting import Clock, collecting_hub, device_key, install_meters

EDC = "http://iec.ch/TC57/2011/EndDeviceControls#"


@pytest.fixture
async def env(settings, aiohttp_client):
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.controls.clock = clock
    lds = install_meters(hub, {1: 2})
    client = await aiohttp_client(create_app(hub))
    yield hub, client, lds
    hub.close()


def controls(code: str, targets: str, attrs: str = "", timing: str = "") -> bytes:
    body = (f'<Payload><c:EndDeviceControls xmlns:c="{EDC}"><c:EndDeviceControl><c:reason>unpaid</c:reason>'
            f'<c:EndDeviceControlType ref="{code}"/>{attrs}{timing}{targets}</c:EndDeviceControl>'
            f"</c:EndDeviceControls></Payload>")
    return request("create", "EndDeviceControls", body)


async def post(client, body: bytes):
    r = await client.post("/cim/messages", data=body)
    assert r.status == 200
    return parse_reply(await r.read())


async def test_disconnect_and_contract_change_reach_the_meter(env):
    hub, client, lds = env
    reply = await post(client, controls("3.31.0.23", f"<c:UsagePoints><c:mRID>{lds[0]}</c:mRID></c:UsagePoints>"))
    assert result(reply) == "OK", details(reply)
    assert reply.findtext("msg:Reply/msg:ID", namespaces=NSMAP) == lds[0]
    port = (await hub.run(hub.head_ends.access, 1)).port
    live = await port.status(MeterRef(lds[0], device_key(hub, lds[0]), 2, 1))
    assert live.relay_on is False

    reply = await post(client, controls(
        "0.15.0.54", f"<c:EndDevices><c:mRID>SN-000002</c:mRID></c:EndDevices>",
        attrs="<c:EndDeviceControlAttribute><c:name>amps</c:name><c:value>60</c:value></c:EndDeviceControlAttribute>"))
    assert result(reply) == "OK", details(reply)
    live = await port.status(MeterRef(lds[1], device_key(hub, lds[1]), 2, 1))
    assert live.contract_amps == 60


async def test_unknown_code_unknown_target_and_scheduled_controls_are_refused(env):
    _, client, lds = env
    reply = await post(client, controls("3.99.0.1", f"<c:UsagePoints><c:mRID>{lds[0]}</c:mRID></c:UsagePoints>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.7"]
    reply = await post(client, controls("3.31.0.18", "<c:UsagePoints><c:mRID>NOPE</c:mRID></c:UsagePoints>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.4"]
    later = ("<c:primaryDeviceTiming><c:interval><c:end>2099-01-02T00:00:00Z</c:end>"
             "<c:start>2099-01-01T00:00:00Z</c:start></c:interval></c:primaryDeviceTiming>")
    reply = await post(client, controls("3.31.0.23", f"<c:UsagePoints><c:mRID>{lds[0]}</c:mRID></c:UsagePoints>",
                                        timing=later))
    assert result(reply) == "FAILED" and codes(reply) == ["1.8"]
