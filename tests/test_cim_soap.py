"""The 61968-9 edge over SOAP (/cim/soap) with zeep as the client, reading the served WSDL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import zeep
from lxml import etree

from hub.app import create_app
from hub.ports import RegisterRead
from tests.cim_messages import xsd
from tests.collecting import install_meters

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
SLOT = timedelta(minutes=30)
MSG = "http://iec.ch/TC57/2011/schema/message"


@pytest.fixture
async def soap(hub, aiohttp_server):
    lds = install_meters(hub, {1: 1})
    hub.collection.ingest_reads([RegisterRead(lds[0], 1, T0 + i * SLOT, 10.0 + i) for i in range(4)], "test")
    server = await aiohttp_server(create_app(hub))
    return str(server.make_url("/cim/soap")), lds


def client(url: str):  # noqa: ANN201 - a zeep service proxy
    """The MeterReadings port of the served WSDL (one port per noun, like the 61968-100 template)."""
    return zeep.Client(f"{url}?wsdl").bind("MdmHub61968", "MeterReadings_Port")


def header(verb: str, message_id: str) -> dict:
    return {"Verb": verb, "Noun": "MeterReadings", "Source": "ERP", "MessageID": message_id}


async def test_zeep_reads_the_wsdl_and_gets_meter_readings(soap):
    url, lds = soap

    def call():
        c = client(url)
        return c.GetMeterReadings(
            Header=header("get", "soap-1"),
            Request={"StartTime": T0, "EndTime": T0 + 2 * SLOT,
                     "GetMeterReadings": {"UsagePoint": [{"mRID": lds[0]}]}})

    reply = await asyncio.to_thread(call)
    assert reply.Reply.Result == "OK"
    assert reply.Header.CorrelationID == "soap-1"
    (mr,) = reply.Payload.MeterReadings[0].MeterReading
    assert mr.UsagePoint.mRID == lds[0]
    assert [(r.timeStamp, r.value) for r in mr.Readings][:2] == [(T0, "10"), (T0 + SLOT, "11")]


async def test_zeep_creates_readings_and_gets_a_failed_reply_for_an_unknown_meter(soap):
    url, lds = soap

    def call():
        c = client(url)
        ok = c.CreateMeterReadings(Header=header("create", "soap-2"), Payload={"MeterReadings": [{
            "MeterReading": [{"Readings": [{"timeStamp": T0 + 4 * SLOT, "value": "14.5",
                                            "ReadingType": {"ref": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"}}],
                              "UsagePoint": {"mRID": lds[0]}}]}]})
        bad = c.GetMeterReadings(
            Header=header("get", "soap-3"),
            Request={"StartTime": T0, "EndTime": T0 + SLOT, "GetMeterReadings": {"UsagePoint": [{"mRID": "NOPE"}]}})
        return ok, bad

    ok, bad = await asyncio.to_thread(call)
    assert ok.Reply.Result == "OK"
    assert bad.Reply.Result == "FAILED"
    assert bad.Reply.Error[0].code == "2.4"


async def test_soap_replies_validate_and_a_broken_envelope_is_a_soap_fault(soap, aiohttp_client):
    url, lds = soap
    import aiohttp

    body = (f'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
            f'<GetMeterReadings xmlns="http://iec.ch/TC57/2011/MeterReadingsMessage">'
            f'<Header><m:Verb xmlns:m="{MSG}">get</m:Verb><m:Noun xmlns:m="{MSG}">MeterReadings</m:Noun></Header>'
            f'<Request><StartTime>2026-03-02T00:00:00Z</StartTime><EndTime>2026-03-02T01:00:00Z</EndTime>'
            f'<g:GetMeterReadings xmlns:g="http://iec.ch/TC57/2011/GetMeterReadings#"><g:UsagePoint>'
            f"<g:mRID>{lds[0]}</g:mRID></g:UsagePoint></g:GetMeterReadings></Request></GetMeterReadings>"
            f"</soapenv:Body></soapenv:Envelope>")
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers={"Content-Type": "text/xml",
                                                   "SOAPAction": "http://iec.ch/TC57/2011/MeterReadings/GetMeterReadings"}) as r:
            assert r.status == 200
            env = etree.fromstring(await r.read())
        wrapped = env[0][0]
        assert etree.QName(wrapped).localname == "MeterReadingsResponseMessage"
        bare = etree.Element(f"{{{MSG}}}ResponseMessage")
        for child in wrapped:
            child.tag = f"{{{MSG}}}{etree.QName(child).localname}"
            bare.append(child)
        assert xsd("Message").validate(bare), xsd("Message").error_log
        async with s.post(url, data=b"<notsoap/>", headers={"Content-Type": "text/xml"}) as r:
            assert r.status == 500
            fault = etree.fromstring(await r.read())
        assert fault.find(".//faultcode").text == "soapenv:Client"
        assert fault.find(f".//{{{MSG}}}code").text == "1.1"
