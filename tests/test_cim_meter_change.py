"""change MeterConfig: a registered meter's comms address and provisioning progress, over /cim/messages."""

from __future__ import annotations

import pytest

from hub.app import create_app
from hub.demo import seed_catalogue
from tests.cim_messages import NSMAP, codes, details, parse_reply, request, result

MC = "http://iec.ch/TC57/2011/MeterConfig#"


@pytest.fixture
async def cim(hub, aiohttp_client):
    seed_catalogue(hub)
    client = await aiohttp_client(create_app(hub))
    created = await post(client, request("create", "MeterConfig", config(
        "<m:amrSystem>1</m:amrSystem><m:formNumber>101</m:formNumber><m:serialNumber>SN-CH-1</m:serialNumber>"
        "<m:type>11</m:type>")))
    assert result(created) == "OK", details(created)
    return client, int(created.findtext("msg:Reply/msg:ID", namespaces=NSMAP))


async def post(client, body: bytes):
    r = await client.post("/cim/messages", data=body)
    assert r.status == 200
    return parse_reply(await r.read())


def config(meter: str) -> str:
    return f'<Payload><m:MeterConfig xmlns:m="{MC}"><m:Meter>{meter}</m:Meter></m:MeterConfig></Payload>'


def change(meter: str) -> bytes:
    return request("change", "MeterConfig", config(meter))


async def test_address_and_provisioning_steps_change_through_the_provisioning_service(cim, hub):
    client, key = cim
    reply = await post(client, change("<m:serialNumber>SN-CH-1</m:serialNumber><m:electronicAddress>"
                                      "<m:lan>10.1.2.3:4059</m:lan></m:electronicAddress>"
                                      "<m:status><m:value>dhcp-done</m:value></m:status>"))
    assert result(reply) == "OK", details(reply)
    assert reply.findtext("msg:Reply/msg:ID", namespaces=NSMAP) == str(key)
    comms = hub.search.physical_device(key)["comms"]
    assert (comms["ip"], comms["port"], comms["dhcp_done"]) == ("10.1.2.3", 4059, True)

    reply = await post(client, change(f"<m:mRID>{key}</m:mRID><m:electronicAddress><m:lan>[2001:db8::7]:4060</m:lan>"
                                      "</m:electronicAddress><m:status><m:value>provisioned</m:value></m:status>"))
    assert result(reply) == "OK", details(reply)
    comms = hub.search.physical_device(key)["comms"]
    assert (comms["ip"], comms["port"], comms["provisioned"]) == ("2001:db8::7", 4060, True)


async def test_identity_fields_unknown_meters_and_bad_values_are_refused(cim, hub):
    client, key = cim
    reply = await post(client, change("<m:serialNumber>SN-CH-1</m:serialNumber><m:type>12</m:type>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"] and "type" in details(reply)[0]
    reply = await post(client, change("<m:serialNumber>SN-NOPE</m:serialNumber><m:electronicAddress>"
                                      "<m:lan>10.0.0.1</m:lan></m:electronicAddress>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.4"]
    reply = await post(client, change("<m:serialNumber>SN-CH-1</m:serialNumber><m:electronicAddress>"
                                      "<m:lan>not-an-ip</m:lan></m:electronicAddress>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"], details(reply)
    reply = await post(client, change("<m:serialNumber>SN-CH-1</m:serialNumber><m:status><m:value>broken</m:value>"
                                      "</m:status>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"]
    reply = await post(client, change("<m:serialNumber>SN-CH-1</m:serialNumber>"))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"]  # nothing to change
    assert hub.search.physical_device(key)["comms"]["ip"] is None
