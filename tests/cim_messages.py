"""Builders of 61968-100 messages for the 61968-9 edge tests, and the XSD checks every reply passes."""

from __future__ import annotations

import base64
import gzip
import uuid
from datetime import datetime

from lxml import etree

import schemas

MSG = "http://iec.ch/TC57/2011/schema/message"
MR = "http://iec.ch/TC57/2011/MeterReadings#"
GMR = "http://iec.ch/TC57/2011/GetMeterReadings#"
NSMAP = {"msg": MSG, "m": MR}
REGISTER = "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"
INTERVAL = "0.0.5.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0"


def xsd(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(schemas.path(f"cim/{name}.xsd"))))


def header(verb: str, noun: str, message_id: str | None = None, extra: str = "") -> str:
    return (f"<Header><Verb>{verb}</Verb><Noun>{noun}</Noun><Timestamp>2026-03-03T00:00:00Z</Timestamp>"
            f"<Source>ERP</Source>{extra}<MessageID>{message_id or uuid.uuid4()}</MessageID></Header>")


def request(verb: str, noun: str, body: str, message_id: str | None = None, kind: str = "RequestMessage",
            extra: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><{kind} xmlns="{MSG}">{header(verb, noun, message_id, extra)}'
            f"{body}</{kind}>").encode()


def get_readings(ld_ids: list[str], start: str, end: str, types: list[str] = (), devices: list[str] = (),
                 message_id: str | None = None, extra: str = "") -> bytes:
    sel = "".join(f"<g:EndDevice><g:mRID>{d}</g:mRID></g:EndDevice>" for d in devices)
    sel += "".join(f"<g:ReadingType><g:mRID>{t}</g:mRID></g:ReadingType>" for t in types)
    sel += "".join(f"<g:UsagePoint><g:mRID>{ld}</g:mRID></g:UsagePoint>" for ld in ld_ids)
    body = (f"<Request><StartTime>{start}</StartTime><EndTime>{end}</EndTime>"
            f'<g:GetMeterReadings xmlns:g="{GMR}">{sel}</g:GetMeterReadings></Request>')
    return request("get", "MeterReadings", body, message_id, extra=extra)


def meter_readings(values: dict[str, list[tuple[str, float]]], code: str = REGISTER, interval: bool = False,
                   quality: str | None = None) -> str:
    """A MeterReadings element: per LD_ID, (timeStamp, value) register values."""
    parts = [f'<m:MeterReadings xmlns:m="{MR}">']
    for ld, points in values.items():
        q = f'<m:ReadingQualities><m:ReadingQualityType ref="{quality}"/></m:ReadingQualities>' if quality else ""
        parts.append("<m:MeterReading>")
        if interval:
            parts.append("<m:IntervalBlocks>" + "".join(
                f"<m:IntervalReadings><m:timeStamp>{t}</m:timeStamp><m:value>{v}</m:value>{q}</m:IntervalReadings>"
                for t, v in points) + f'<m:ReadingType ref="{code}"/></m:IntervalBlocks>')
        else:
            parts += [f"<m:Readings><m:timeStamp>{t}</m:timeStamp><m:value>{v}</m:value>{q}"
                      f'<m:ReadingType ref="{code}"/></m:Readings>' for t, v in points]
        parts.append(f"<m:UsagePoint><m:mRID>{ld}</m:mRID></m:UsagePoint></m:MeterReading>")
    parts.append("</m:MeterReadings>")
    return "".join(parts)


def compressed(xml: str) -> str:
    return base64.b64encode(gzip.compress(xml.encode())).decode()


def parse_reply(body: bytes, kind: str = "ResponseMessage") -> etree._Element:
    """The reply, checked against Message.xsd and, for its payload, the profile's XSD."""
    root = etree.fromstring(body)
    assert etree.QName(root).localname == kind, body[:300]
    envelope = xsd("Message")
    assert envelope.validate(root), envelope.error_log
    for payload in root.findall("msg:Payload/*", NSMAP):
        profile = etree.QName(payload).localname
        if profile in ("Compressed", "Format", "ID"):
            continue
        s = xsd(profile)
        assert s.validate(payload), s.error_log
    assert b"schemaLocation" not in body
    return root


def result(root: etree._Element) -> str:
    return root.findtext("msg:Reply/msg:Result", namespaces=NSMAP)


def codes(root: etree._Element) -> list[str]:
    return [e.text for e in root.findall("msg:Reply/msg:Error/msg:code", NSMAP)]


def details(root: etree._Element) -> list[str]:
    return [e.text or "" for e in root.findall("msg:Reply/msg:Error/msg:details", NSMAP)]


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")
