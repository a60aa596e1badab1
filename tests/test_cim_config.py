"""MeterConfig, UsagePointConfig and EndDeviceEvents over /cim/messages."""

from __future__ import annotations

import pytest

from hub.app import create_app
from hub.demo import seed_catalogue
from hub.services.alerts import ExternalAlertIn
from tests.cim_messages import NSMAP, codes, details, parse_reply, request, result

MC = "http://iec.ch/TC57/2011/MeterConfig#"
UPC = "http://iec.ch/TC57/2011/UsagePointConfig#"
GEDE = "http://iec.ch/TC57/2011/GetEndDeviceEvents#"
EDE = "http://iec.ch/TC57/2011/EndDeviceEvents#"


@pytest.fixture
async def cim(hub, aiohttp_client):
    seed_catalogue(hub)
    return await aiohttp_client(create_app(hub))


async def post(cim, body: bytes):
    r = await cim.post("/cim/messages", data=body)
    assert r.status == 200
    return parse_reply(await r.read())


def meter_config(serial: str, extra: str = "") -> str:
    return (f'<Payload><m:MeterConfig xmlns:m="{MC}"><m:Meter><m:amrSystem>1</m:amrSystem><m:formNumber>101'
            f"</m:formNumber><m:serialNumber>{serial}</m:serialNumber><m:type>11</m:type>{extra}"
            f"<m:Names><m:name>meter {serial}</m:name></m:Names></m:Meter></m:MeterConfig></Payload>")


def usage_point(ld_id: str, serial: str, pd_id: str) -> str:
    return (f'<Payload><u:UsagePointConfig xmlns:u="{UPC}"><u:UsagePoint><u:mRID>{ld_id}</u:mRID>'
            f"<u:ratedCurrent>40</u:ratedCurrent><u:Equipments><u:mRID>{serial}</u:mRID><u:Names><u:name>{pd_id}"
            f"</u:name><u:NameType><u:name>PD_ID</u:name></u:NameType></u:Names></u:Equipments>"
            f"<u:Names><u:name>flat 12</u:name></u:Names></u:UsagePoint></u:UsagePointConfig></Payload>")


async def test_meter_registration_installation_clear_and_disposal(cim, hub):
    created = await post(cim, request("create", "MeterConfig", meter_config("SN-CIM-1")))
    assert result(created) == "OK", details(created)
    key = int(created.findtext("msg:Reply/msg:ID", namespaces=NSMAP))
    assert hub.search.physical_device(key)["serial"] == "SN-CIM-1"

    again = await post(cim, request("create", "MeterConfig", meter_config("SN-CIM-1")))
    assert result(again) == "FAILED" and codes(again) == ["2.6"]  # the serial is taken

    installed = await post(cim, request("create", "UsagePointConfig", usage_point("LD-CIM-1", "SN-CIM-1", "PD-CIM-1")))
    assert result(installed) == "OK", details(installed)
    ld = hub.search.logical_device("LD-CIM-1")
    assert ld["contract_amps"] == 40 and ld["name"] == "flat 12" and ld["pd_id"] == "PD-CIM-1"

    refused = await post(cim, request("delete", "MeterConfig", meter_config("SN-CIM-1")))
    assert result(refused) == "FAILED" and codes(refused) == ["2.6"]  # installed: clear first

    cleared = await post(cim, request("delete", "UsagePointConfig",
                                      f'<Payload><u:UsagePointConfig xmlns:u="{UPC}"><u:UsagePoint><u:mRID>LD-CIM-1'
                                      f"</u:mRID></u:UsagePoint></u:UsagePointConfig></Payload>"))
    assert result(cleared) == "OK", details(cleared)
    unknown = await post(cim, request("delete", "UsagePointConfig",
                                      f'<Payload><u:UsagePointConfig xmlns:u="{UPC}"><u:UsagePoint><u:mRID>LD-CIM-1'
                                      f"</u:mRID></u:UsagePoint></u:UsagePointConfig></Payload>"))
    assert result(unknown) == "FAILED" and codes(unknown) == ["2.4"]
    hub.installation.clear(key)  # the physical device keeps its PD_ID until its own installation is cleared
    disposed = await post(cim, request("delete", "MeterConfig", meter_config("SN-CIM-1")))
    assert result(disposed) == "OK", details(disposed)
    assert hub.search.physical_device(key)["deleted"] is True


async def test_an_invalid_registration_names_the_field(cim):
    reply = await post(cim, request("create", "MeterConfig", meter_config("SN-CIM-2").replace(">11<", ">eleven<")))
    assert result(reply) == "FAILED" and codes(reply) == ["2.5"]
    assert "type_id" in details(reply)[0]


async def test_get_end_device_events_lists_alerts_with_their_event_types(cim, hub):
    hub.alerts.forward(ExternalAlertIn(source="ALA", code="reading.spike", message="spike on LD-9", ld_id="LD-9",
                                       details={"sub_number": 1}))
    body = (f'<Request><StartTime>2000-01-01T00:00:00Z</StartTime><g:GetEndDeviceEvents xmlns:g="{GEDE}">'
            f"<g:EndDeviceEventType><g:mRID>3.21.0.93</g:mRID></g:EndDeviceEventType></g:GetEndDeviceEvents>"
            f"</Request>")
    reply = await post(cim, request("get", "EndDeviceEvents", body))
    assert result(reply) == "OK", details(reply)
    ns = {**NSMAP, "e": EDE}
    (ev,) = reply.findall("msg:Payload/e:EndDeviceEvents/e:EndDeviceEvent", ns)
    assert ev.find("e:EndDeviceEventType", ns).get("ref") == "3.21.0.93"
    assert ev.findtext("e:UsagePoint/e:mRID", namespaces=ns) == "LD-9"
    assert ev.findtext("e:reason", namespaces=ns) == "spike on LD-9"
