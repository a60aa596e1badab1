"""IEEE 1888 messages: safe parsing of SOAP 1.1 envelopes into plain objects, and serialisation in
the wire form every known peer accepts (the reference C gateway's: fiap elements in a default
namespace, double-quoted attributes on one line, self-closing empty elements).

Parsing never resolves entities, never reads DTDs or the network, and refuses any document that
carries a DOCTYPE at all; the caller caps the size before parsing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

from lxml import etree

from adapters import xmlsafe

FIAP_NS = "http://gutp.jp/fiap/2009/11/"
SOAP_FIAP_NS = "http://soap.fiap.org/"
ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
UUID_RE = re.compile(r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{12}$")
_TIME_RE = re.compile(r"^\s*(-?\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(Z|[+-]\d{2}:?\d{2})?\s*$")
OPS = ("eq", "neq", "lt", "gt", "lteq", "gteq")


class Malformed(Exception):
    """Not a usable SOAP message (answered with a SOAP Fault)."""


class FiapError(Exception):
    """An IEEE 1888 error: answered in ``header/error`` with this type (HTTP 200)."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


# ------------------------------------------------------------------------------------------------
# the message model


@dataclass
class Key:
    id: str
    attr_name: str
    conditions: dict[str, str] = field(default_factory=dict)
    select: str | None = None
    trap: str | None = None


@dataclass
class Query:
    id: str
    type: str
    keys: list[Key] = field(default_factory=list)
    cursor: str | None = None
    ttl: str | None = None
    acceptable_size: str | None = None
    callback_data: str | None = None
    callback_control: str | None = None


class Value(NamedTuple):
    """One value as written: ``time`` the attribute's text (None when absent). A tuple: a WRITE
    or a FETCH answer holds thousands."""

    time: str | None
    text: str


@dataclass
class Point:
    id: str
    values: list[Value] = field(default_factory=list)


@dataclass
class PointSet:
    id: str
    point_sets: list[PointSet] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)


@dataclass
class Transport:
    ok: bool = False
    error: tuple[str, str] | None = None  # (type, message)
    query: Query | None = None
    has_header: bool = False
    has_body: bool = False
    point_sets: list[PointSet] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    def all_points(self) -> list[Point]:
        """Every point at every depth, in document order (pointSets first, as the schema orders them)."""
        out: list[Point] = []

        def walk(ps: PointSet) -> None:
            for child in ps.point_sets:
                walk(child)
            out.extend(ps.points)

        for ps in self.point_sets:
            walk(ps)
        out.extend(self.points)
        return out


# ------------------------------------------------------------------------------------------------
# parsing

def parse_xml(data: bytes) -> etree._Element:
    """Parse with every external access off (:mod:`adapters.xmlsafe`); a DOCTYPE, so any entity
    declaration, is refused as a malformed request."""
    try:
        return xmlsafe.parse(data.strip())
    except xmlsafe.UnsafeXml:
        raise Malformed("DTDs and entity declarations are refused") from None
    except xmlsafe.MalformedXml as exc:
        raise Malformed(str(exc)) from None


def parse_envelope(data: bytes) -> tuple[str, Transport]:
    """(operation, transport) of a SOAP 1.1 request: operation is ``queryRQ``/``dataRQ`` (or the
    RS forms, for a client reading answers)."""
    root = parse_xml(data)
    if root.tag != f"{{{ENV_NS}}}Envelope":
        raise Malformed("the document is not a SOAP 1.1 Envelope")
    body = root.find(f"{{{ENV_NS}}}Body")
    if body is None:
        raise Malformed("the Envelope has no Body")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise Malformed("the Body must hold exactly one element")
    wrapper = children[0]
    if wrapper.tag == f"{{{ENV_NS}}}Fault":
        raise Malformed("SOAP Fault: " + (wrapper.findtext("faultstring") or "").strip())
    ns, _, op = wrapper.tag[1:].partition("}") if wrapper.tag.startswith("{") else ("", "", wrapper.tag)
    if ns != SOAP_FIAP_NS or op not in ("queryRQ", "dataRQ", "queryRS", "dataRS"):
        raise Malformed(f"unknown operation element {wrapper.tag}")
    transports = [c for c in wrapper if isinstance(c.tag, str)]
    if not transports:
        return op, Transport()
    if len(transports) != 1 or transports[0].tag != f"{{{FIAP_NS}}}transport":
        raise FiapError("INVALID_REQUEST", f"{op} must hold exactly one {{{FIAP_NS}}}transport")
    return op, parse_transport(transports[0])


def _f(tag: str) -> str:
    return f"{{{FIAP_NS}}}{tag}"


def _children(el: etree._Element, tag: str) -> list[etree._Element]:
    return [c for c in el if c.tag == _f(tag)]


def _req(el: etree._Element, name: str) -> str:
    v = el.get(name)
    if v is None:
        raise FiapError("INVALID_REQUEST", f"<{etree.QName(el).localname}> needs the attribute {name}")
    return v


def parse_transport(el: etree._Element) -> Transport:
    t = Transport()
    for c in el:
        if isinstance(c.tag, str) and c.tag not in (_f("header"), _f("body")):
            raise FiapError("INVALID_REQUEST", f"unexpected element {c.tag} in transport")
    header = el.find(_f("header"))
    if header is not None:
        t.has_header = True
        t.ok = header.find(_f("OK")) is not None
        err = header.find(_f("error"))
        if err is not None:
            t.error = (err.get("type") or "UNKNOWN", (err.text or "").strip())
        q = header.find(_f("query"))
        if q is not None:
            t.query = _query(q)
    body = el.find(_f("body"))
    if body is not None:
        t.has_body = True
        t.point_sets = [_point_set(ps) for ps in _children(body, "pointSet")]
        t.points = [_point(p) for p in _children(body, "point")]
    return t


def _query(el: etree._Element) -> Query:
    q = Query(id=_req(el, "id"), type=_req(el, "type"), cursor=el.get("cursor"), ttl=el.get("ttl"),
              acceptable_size=el.get("acceptableSize"), callback_data=el.get("callbackData"),
              callback_control=el.get("callbackControl"))
    for k in _children(el, "key"):
        q.keys.append(Key(id=_req(k, "id"), attr_name=_req(k, "attrName"),
                          conditions={op: k.get(op) for op in OPS if k.get(op) is not None},  # type: ignore[misc]
                          select=k.get("select"), trap=k.get("trap")))
    return q


_VALUE_TAG = f"{{{FIAP_NS}}}value"


def _point(el: etree._Element) -> Point:
    return Point(_req(el, "id"), [Value(v.get("time"), v.text or "") for v in el.iterchildren(_VALUE_TAG)])


def _point_set(el: etree._Element) -> PointSet:
    return PointSet(_req(el, "id"), [_point_set(c) for c in _children(el, "pointSet")],
                    [_point(c) for c in _children(el, "point")])


async def read_capped(stream: Any, cap: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``cap`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)


# ------------------------------------------------------------------------------------------------
# time


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> datetime:
    """xsd:dateTime with 0-9 fraction digits and an offset (``Z``, ``+09:00`` or ``+0900``).
    A time without any zone is refused (ValueError). Cached: a gateway sends the same few instants
    for every point of a site."""
    m = _TIME_RE.match(text)
    if not m:
        raise ValueError(f"not an xsd:dateTime: {text[:60]!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if tz is None:
        raise ValueError(f"time {text.strip()!r} has no time zone")
    micro = int((frac or "0").ljust(6, "0")[:6])
    if tz == "Z":
        zone: timezone = UTC
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        zone = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=zone).astimezone(UTC)


def format_time(t: datetime, zone: timezone = UTC) -> str:
    """Millisecond precision with an explicit offset, e.g. ``2026-01-01T09:00:00.000+09:00``."""
    return t.astimezone(zone).isoformat(timespec="milliseconds")  # an aware time always shows its offset


# ------------------------------------------------------------------------------------------------
# serialisation (C-SDK-compatible wire form)


_ATTR_SPECIAL = re.compile(r'[&<>"\n\r\t]')
_TEXT_SPECIAL = re.compile(r"[&<>]")
_ATTR_ENTITIES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _attr_text(v: str) -> str:
    """An attribute value for double quotes (a FETCH answer holds one per value: the common case,
    nothing to escape, is checked with one scan)."""
    return v if _ATTR_SPECIAL.search(v) is None else escape(v, _ATTR_ENTITIES)


def _text(v: str) -> str:
    return v if _TEXT_SPECIAL.search(v) is None else escape(v)


def _attrs(pairs: list[tuple[str, str | None]]) -> str:
    return "".join(f' {k}="{_attr_text(v)}"' for k, v in pairs if v is not None)


def query_xml(q: Query) -> str:
    keys = "".join(
        f"<key{_attrs([('id', k.id), ('attrName', k.attr_name), *[(op, k.conditions.get(op)) for op in OPS], ('select', k.select), ('trap', k.trap)])}/>"  # noqa: E501
        for k in q.keys)
    attrs = _attrs([("id", q.id), ("type", q.type), ("cursor", q.cursor), ("ttl", q.ttl),
                    ("acceptableSize", q.acceptable_size), ("callbackData", q.callback_data),
                    ("callbackControl", q.callback_control)])
    return f"<query{attrs}/>" if not keys else f"<query{attrs}>{keys}</query>"


def point_xml(p: Point) -> str:
    if not p.values:
        return f"<point{_attrs([('id', p.id)])}/>"
    vals = "".join(f'<value time="{_attr_text(v.time)}">{_text(v.text)}</value>' if v.time is not None
                   else f"<value>{_text(v.text)}</value>" for v in p.values)
    return f"<point{_attrs([('id', p.id)])}>{vals}</point>"


def point_set_xml(ps: PointSet) -> str:
    inner = "".join(point_set_xml(c) for c in ps.point_sets) + "".join(point_xml(p) for p in ps.points)
    return f"<pointSet{_attrs([('id', ps.id)])}>{inner}</pointSet>" if inner else \
        f"<pointSet{_attrs([('id', ps.id)])}/>"


def transport_xml(*, ok: bool = False, error: tuple[str, str] | None = None, query: Query | None = None,
                  point_sets: list[PointSet] | None = None, points: list[Point] | None = None,
                  header: bool = True) -> str:
    head = ""
    if header:
        inner = ("<OK/>" if ok else "") + \
            (f"<error{_attrs([('type', error[0])])}>{escape(error[1])}</error>" if error else "") + \
            (query_xml(query) if query is not None else "")
        head = f"<header>{inner}</header>"
    body = ""
    if point_sets is not None or points is not None:
        body = "<body>" + "".join(point_set_xml(ps) for ps in point_sets or []) + \
            "".join(point_xml(p) for p in points or []) + "</body>"
    return f'<transport xmlns="{FIAP_NS}">{head}{body}</transport>'


def envelope(op: str, transport: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{ENV_NS}"><soapenv:Body>'
            f'<ns2:{op} xmlns:ns2="{SOAP_FIAP_NS}">{transport}</ns2:{op}>'
            f'</soapenv:Body></soapenv:Envelope>').encode()


def fault(message: str, code: str = "soapenv:Client") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{ENV_NS}"><soapenv:Body><soapenv:Fault>'
            f'<faultcode>{code}</faultcode><faultstring>{escape(message[:500])}</faultstring>'
            f'</soapenv:Fault></soapenv:Body></soapenv:Envelope>').encode()
