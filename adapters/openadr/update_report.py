"""oadrUpdateReport built by the hub, for what openleadr's template cannot say.

openleadr 0.5.36 renders every report interval as one ``ei:payloadFloat`` inside one ``oadrReport``.
The hub needs two more things, both within the 2.0b schema:

- the achieved reduction of an event names the event: each such interval goes in an ``oadrReport``
  of its own whose ``ei:eiReportID`` is the eventID, the interval spanning the event's window
  (``xcal:uid`` would be the natural place, but openleadr's parser reads every uid as an integer,
  so a VTN on openleadr would refuse the whole message);
- TELEMETRY_STATUS intervals carry ``oadr:oadrPayloadResourceStatus`` (oadrOnline,
  oadrManualOverride, oadrLoadControlState/oadrCapacity) instead of a float.

A sampler says which by the value it returns (:class:`EventReduction`, :class:`ResourceStatus`, or a
plain number). :class:`OutgoingMessages` stands in for openleadr's message factory: every other
message is openleadr's own; this one is built here and signed the way openleadr signs (detached
XML DSig over ``#oadrSignedObject`` with a ReplayProtect timestamp and nonce).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from lxml import etree
from openleadr import utils
from openleadr.messaging import get_signature_algorithm_from_private_key
from signxml import XMLSigner, methods
from signxml.algorithms import SignatureMethod

OADR = "http://openadr.org/oadr-2.0b/2012/07"
EI = "http://docs.oasis-open.org/ns/energyinterop/201110"
PYLD = "http://docs.oasis-open.org/ns/energyinterop/201110/payloads"
XCAL = "urn:ietf:params:xml:ns:icalendar-2.0"
STRM = "urn:ietf:params:xml:ns:icalendar-2.0:stream"
DSP = "http://openadr.org/oadr-2.0b/2012/07/xmldsig-properties"
NSMAP = {"oadr": OADR, "ei": EI, "pyld": PYLD, "xcal": XCAL, "strm": STRM}


@dataclass(frozen=True)
class EventReduction:
    """The achieved reduction (kWh) of one DR event over its window."""

    kwh: float
    event_id: str
    duration: timedelta | None = None


@dataclass(frozen=True)
class ResourceStatus:
    """One resource's status: reachable, manually overridden, and its load control capacity (A)."""

    online: bool
    manual_override: bool
    capacity_current: float | None = None
    capacity_normal: float | None = None


def _el(parent: etree._Element, ns: str, tag: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        e.text = text
    return e


def _field(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _time(parent: etree._Element, at: datetime) -> None:
    _el(_el(parent, XCAL, "dtstart"), XCAL, "date-time", utils.datetimeformat(at))


def _payload(parent: etree._Element, r_id: str, value: Any) -> None:
    p = _el(parent, OADR, "oadrReportPayload")
    _el(p, EI, "rID", str(r_id))
    if isinstance(value, ResourceStatus):
        s = _el(p, OADR, "oadrPayloadResourceStatus")
        _el(s, OADR, "oadrOnline", "true" if value.online else "false")
        _el(s, OADR, "oadrManualOverride", "true" if value.manual_override else "false")
        if value.capacity_current is not None:
            cap = _el(_el(s, OADR, "oadrLoadControlState"), OADR, "oadrCapacity")
            _el(cap, OADR, "oadrCurrent", repr(float(value.capacity_current)))
            if value.capacity_normal is not None:
                _el(cap, OADR, "oadrNormal", repr(float(value.capacity_normal)))
        return
    number = value.kwh if isinstance(value, EventReduction) else value
    _el(_el(p, EI, "payloadFloat"), EI, "value", repr(float(number)))


def _report(parent: etree._Element, report: Any, report_id: str, intervals: list[Any]) -> None:
    r = _el(parent, OADR, "oadrReport")
    if intervals:
        _time(r, min(_field(i, "dtstart") for i in intervals))
        box = _el(r, STRM, "intervals")
        for i in intervals:
            payload = _field(i, "report_payload")
            value = _field(payload, "value")
            e = _el(box, EI, "interval")
            _time(e, _field(i, "dtstart"))
            duration = value.duration if isinstance(value, EventReduction) and value.duration else _field(i, "duration")
            if duration is not None:
                _el(_el(e, XCAL, "duration"), XCAL, "duration", utils.timedeltaformat(duration))
            _payload(e, _field(payload, "r_id"), value)
    _el(r, EI, "eiReportID", report_id)
    _el(r, EI, "reportRequestID", str(_field(report, "report_request_id")))
    _el(r, EI, "reportSpecifierID", str(_field(report, "report_specifier_id")))
    if _field(report, "report_name"):
        _el(r, EI, "reportName", str(_field(report, "report_name")))
    _el(r, EI, "createdDateTime", utils.datetimeformat(_field(report, "created_date_time") or datetime.now(UTC)))


def update_report_object(reports: list[Any], ven_id: str | None, request_id: str | None) -> etree._Element:
    """The ``oadrSignedObject`` of an oadrUpdateReport; an event's reduction in a report of its own."""
    signed = etree.Element(f"{{{OADR}}}oadrSignedObject", nsmap=NSMAP)
    signed.set(f"{{{OADR}}}Id", "oadrSignedObject")
    update = _el(signed, OADR, "oadrUpdateReport")
    update.set(f"{{{EI}}}schemaVersion", "2.0b")
    _el(update, PYLD, "requestID", request_id or utils.generate_id())
    for report in reports:
        intervals = list(_field(report, "intervals") or [])
        per_event: dict[str, list[Any]] = {}
        rest = []
        for i in intervals:
            value = _field(_field(i, "report_payload"), "value")
            if isinstance(value, EventReduction):
                per_event.setdefault(value.event_id, []).append(i)
            else:
                rest.append(i)
        if rest or not per_event:
            _report(update, report, str(_field(report, "report_id") or utils.generate_id()), rest)
        for event_id, event_intervals in per_event.items():
            _report(update, report, event_id, event_intervals)
    if ven_id:
        _el(update, EI, "venID", ven_id)
    return signed


def _replay_protect() -> etree._Element:
    el = etree.Element(f"{{{DSP}}}ReplayProtect", nsmap={"dsp": DSP}, attrib={"Id": "myid", "Target": "#mytarget"})
    _el(el, DSP, "timestamp", utils.datetimeformat(datetime.now(UTC)))
    _el(el, DSP, "nonce", uuid4().hex)
    return el


def envelope(signed_object: etree._Element, *, cert: bytes | None, key: bytes | None,
             passphrase: str | None) -> str:
    """``oadrPayload`` around the signed object, with openleadr's kind of signature when a key is given."""
    text = etree.tostring(signed_object).decode()
    signature = ""
    if cert and key:
        signer = XMLSigner(method=methods.detached, c14n_algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315")
        signer.namespaces["oadr"] = OADR
        signer.sign_alg = SignatureMethod.from_fragment(get_signature_algorithm_from_private_key(key, passphrase))
        tree = signer.sign(etree.fromstring(text), key=key, cert=cert, passphrase=utils.ensure_bytes(passphrase),
                           reference_uri="#oadrSignedObject", signature_properties=_replay_protect())
        signature = etree.tostring(tree).decode()
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<oadr:oadrPayload xmlns:oadr="{OADR}">'
            f"{signature}{text}</oadr:oadrPayload>")


class OutgoingMessages:
    """openleadr's message factory, except that oadrUpdateReport is built by :func:`update_report_object`."""

    def __init__(self, openleadr_factory: Callable[..., str], *, cert: bytes | None, key: bytes | None,
                 passphrase: str | None, sign: bool) -> None:
        self.openleadr_factory = openleadr_factory
        self.cert, self.key, self.passphrase = (cert, key, passphrase) if sign else (None, None, None)

    def __call__(self, message_type: str, **payload: Any) -> str:
        if message_type != "oadrUpdateReport":
            return self.openleadr_factory(message_type, **payload)
        signed = update_report_object(payload.get("reports") or [], payload.get("ven_id"), payload.get("request_id"))
        return envelope(signed, cert=self.cert, key=self.key, passphrase=self.passphrase)
