"""The IEC 61968-100 message envelope: RequestMessage, ResponseMessage, EventMessage, FaultMessage.

:func:`read_message` turns a parsed document into a :class:`Message` (header, request, reply,
payload) whatever the wrapping: a bare ``msg:RequestMessage`` / ``EventMessage`` /
``ResponseMessage`` (JMS, files, plain HTTP) or a SOAP verb+noun wrapper such as
``<CreatedMeterReadings>`` in ``http://iec.ch/TC57/2011/MeterReadingsMessage``. Accepted
envelope namespaces are the Ed.1 one, the pre-2011 ``www.iec.ch`` draft and Ed.2 (2021); any
other ``TC57/<year>/schema/message`` is answered "version not supported".

:func:`build_message` writes one back (bare or wrapped), and :func:`reply_to` makes the
ResponseMessage of a request: Verb ``reply``, same Noun, the request's MessageID copied into
CorrelationID (or its CorrelationID when it carried one), a fresh MessageID.

Compressed payloads (``Payload/Compressed``: base64 of gzip) are opened with a cap on the
inflated size, then parsed with the same safe parser as the message.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from adapters import xmlsafe

MSG_NS = "http://iec.ch/TC57/2011/schema/message"
ACCEPTED_NS = {
    MSG_NS: "2011",
    "http://www.iec.ch/TC57/2011/schema/message": "2011-draft",
    "http://iec.ch/TC57/2021/schema/message": "2021",
}
_ANY_MSG_NS = re.compile(r"^https?://(www\.)?iec\.ch/TC57/(\d{4})/schema/message$")
_WRAPPER_NS = re.compile(r"^https?://(www\.)?iec\.ch/TC57/(\d{4})/(?P<noun>[A-Za-z]+)Message$")
_PROFILE_NS = re.compile(r"^https?://(www\.)?iec\.ch/TC57/(?P<year>\d{4})/(?P<profile>[A-Za-z]+)#$")
KINDS = ("RequestMessage", "ResponseMessage", "EventMessage", "FaultMessage", "Message")
REQUEST_VERBS = ("get", "create", "change", "cancel", "close", "delete", "execute")
EVENT_VERBS = ("created", "changed", "canceled", "closed", "deleted", "executed")
MAX_INFLATED = 64 * 1024 * 1024
HEADER_ORDER = ("Verb", "Noun", "Revision", "ReplayDetection", "Context", "Timestamp", "Source", "AsyncReplyFlag",
                "ReplyAddress", "AckRequired", "User", "MessageID", "CorrelationID", "Comment", "Property")


class EnvelopeError(Exception):
    """The message cannot be taken: ``key`` names the row of ``mappings/cim_error_codes.toml``."""

    def __init__(self, key: str, details: str, xpath: str | None = None, message: Message | None = None) -> None:
        super().__init__(details)
        self.key, self.details, self.xpath, self.message = key, details, xpath, message


@dataclass
class ID:
    value: str
    kind: str | None = None
    id_type: str | None = None
    id_authority: str | None = None
    object_type: str | None = None


@dataclass
class Header:
    verb: str
    noun: str
    revision: str | None = None
    context: str | None = None
    timestamp: str | None = None
    source: str | None = None
    async_reply: bool = False
    reply_address: str | None = None
    ack_required: bool = False
    user_id: str | None = None
    organization: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    comment: str | None = None
    replay_nonce: str | None = None
    replay_created: str | None = None
    properties: list[tuple[str, str | None]] = field(default_factory=list)

    def prop(self, name: str) -> str | None:
        return next((v for n, v in self.properties if n == name), None)


@dataclass
class Request:
    start_time: datetime | None = None
    end_time: datetime | None = None
    options: list[tuple[str, str | None]] = field(default_factory=list)
    ids: list[ID] = field(default_factory=list)
    profile: list[etree._Element] = field(default_factory=list)


@dataclass
class ErrorItem:
    code: str
    level: str | None = None
    reason: str | None = None
    details: str | None = None
    xpath: str | None = None
    id: ID | None = None


@dataclass
class Reply:
    result: str
    errors: list[ErrorItem] = field(default_factory=list)
    ids: list[ID] = field(default_factory=list)


@dataclass
class Payload:
    elements: list[etree._Element] = field(default_factory=list)
    ids: list[ID] = field(default_factory=list)
    format: str | None = None
    compressed: bool = False


@dataclass
class Message:
    kind: str
    header: Header
    request: Request | None = None
    reply: Reply | None = None
    payload: Payload | None = None
    version: str = "2011"
    wrapper: str | None = None
    stream: Any = None
    """A payload read as a stream (:class:`adapters.cim.stream.Streamed`): Payload then holds the
    emptied profile element and the handler reads the MeterReading elements from here."""


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _ns(el: etree._Element) -> str | None:
    return etree.QName(el).namespace


def _children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _child(el: etree._Element, name: str) -> etree._Element | None:
    return next((c for c in _children(el) if _local(c) == name), None)


def _text(el: etree._Element, name: str) -> str | None:
    c = _child(el, name)
    if c is None or c.text is None:
        return None
    return c.text.strip()


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise EnvelopeError("schema-violation", f"Header/{name} must be true or false, not {value!r}", f"Header/{name}")


def parse_time(value: str, where: str) -> datetime:
    """An xs:dateTime with an offset (``Z`` or ``+hh:mm``); local times are refused (zone unknown)."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise EnvelopeError("schema-violation", f"{where}: {value!r} is not an xs:dateTime", where) from None
    if dt.tzinfo is None:
        raise EnvelopeError("bad-request", f"{where}: {value!r} has no time zone offset", where)
    return dt


def _id(el: etree._Element) -> ID:
    return ID(value=(el.text or "").strip(), kind=el.get("kind"), id_type=el.get("idType"),
              id_authority=el.get("idAuthority"), object_type=el.get("objectType"))


def classify(root: etree._Element) -> tuple[str, str, str | None]:
    """(kind, version, wrapper name) of a document root; raises for anything else."""
    ns, name = _ns(root), _local(root)
    if ns in ACCEPTED_NS and name in KINDS:
        return name, ACCEPTED_NS[ns], None
    if ns and _ANY_MSG_NS.match(ns):
        raise EnvelopeError("unsupported-version", f"message namespace {ns} is not supported; use {MSG_NS}")
    wrapped = _WRAPPER_NS.match(ns or "")
    if wrapped:
        if name.endswith("ResponseMessage"):
            return "ResponseMessage", "2011", name
        if name.endswith("FaultMessage"):
            return "FaultMessage", "2011", name
        verb = re.match(r"^[A-Z][a-z]+", name)
        word = verb.group(0).lower() if verb else ""
        if word in REQUEST_VERBS:
            return "RequestMessage", "2011", name
        if word in EVENT_VERBS or word == "reply":
            return "EventMessage", "2011", name
        raise EnvelopeError("bad-verb", f"wrapper element {name} does not start with a known verb")
    raise EnvelopeError("bad-header", f"root element {{{ns}}}{name} is not a 61968-100 message")


def read_message(root: etree._Element, max_inflated: int = MAX_INFLATED) -> Message:
    """The message in ``root``. Raises :class:`EnvelopeError` for a missing Header, a bad Verb or
    a Payload that cannot be opened; schema validation is :mod:`adapters.cim.schemas`' job."""
    kind, version, wrapper = classify(root)
    h = _child(root, "Header")
    reply_el = _child(root, "Reply")
    reply = _reply(reply_el) if reply_el is not None else None
    if h is None:
        if kind == "FaultMessage":
            return Message(kind, Header("reply", ""), reply=reply, version=version, wrapper=wrapper)
        raise EnvelopeError("bad-header", "the message has no Header", "Header")
    verb, noun = _text(h, "Verb"), _text(h, "Noun")
    if not verb or not noun:
        raise EnvelopeError("bad-header", "Header/Verb and Header/Noun are required", "Header")
    header = Header(
        verb=verb, noun=noun, revision=_text(h, "Revision"), context=_text(h, "Context"),
        timestamp=_text(h, "Timestamp"), source=_text(h, "Source"),
        async_reply=_bool(_text(h, "AsyncReplyFlag"), "AsyncReplyFlag"), reply_address=_text(h, "ReplyAddress"),
        ack_required=_bool(_text(h, "AckRequired"), "AckRequired"), message_id=_text(h, "MessageID"),
        correlation_id=_text(h, "CorrelationID"), comment=_text(h, "Comment"))
    user = _child(h, "User")
    if user is not None:
        header.user_id, header.organization = _text(user, "UserID"), _text(user, "Organization")
    replay = _child(h, "ReplayDetection")
    if replay is not None:
        header.replay_nonce, header.replay_created = _text(replay, "Nonce"), _text(replay, "Created")
    header.properties = [(_text(p, "Name") or "", _text(p, "Value")) for p in _children(h) if _local(p) == "Property"]
    msg = Message(kind, header, reply=reply, version=version, wrapper=wrapper)
    req = _child(root, "Request")
    if req is not None:
        msg.request = _request(req)
    pay = _child(root, "Payload")
    if pay is not None:
        msg.payload = _payload(pay, max_inflated, msg)
    return msg


def _request(el: etree._Element) -> Request:
    r = Request()
    for c in _children(el):
        name = _local(c)
        if name == "StartTime" and c.text:
            r.start_time = parse_time(c.text, "Request/StartTime")
        elif name == "EndTime" and c.text:
            r.end_time = parse_time(c.text, "Request/EndTime")
        elif name == "Option":
            r.options.append((_text(c, "name") or "", _text(c, "value")))
        elif name == "ID":
            r.ids.append(_id(c))
        elif _ns(c) not in ACCEPTED_NS and not (_ns(c) or "").endswith("Message"):
            r.profile.append(c)
    return r


def _reply(el: etree._Element) -> Reply:
    r = Reply(result=_text(el, "Result") or "")
    for c in _children(el):
        if _local(c) == "Error":
            id_el = _child(c, "ID")
            r.errors.append(ErrorItem(code=_text(c, "code") or "", level=_text(c, "level"), reason=_text(c, "reason"),
                                      details=_text(c, "details"), xpath=_text(c, "xpath"),
                                      id=_id(id_el) if id_el is not None else None))
        elif _local(c) == "ID":
            r.ids.append(_id(c))
    return r


def _payload(el: etree._Element, max_inflated: int, msg: Message) -> Payload:
    p = Payload(format=_text(el, "Format"))
    for c in _children(el):
        name = _local(c)
        if name == "Compressed" and profile_of(c) is None:
            p.compressed = True
            p.elements.append(inflate(c.text or "", max_inflated, msg))
        elif name == "ID" and profile_of(c) is None:
            p.ids.append(_id(c))
        elif name == "Format" and profile_of(c) is None:
            continue
        else:
            p.elements.append(c)
    return p


def inflate(text: str, max_inflated: int = MAX_INFLATED, msg: Message | None = None) -> etree._Element:
    """The element in a ``Compressed`` payload (base64 of gzip), at most ``max_inflated`` bytes inflated."""
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("schema-violation", "Payload/Compressed is not base64", "Payload/Compressed",
                            msg) from None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(max_inflated + 1)
    except (OSError, EOFError, zlib.error):
        raise EnvelopeError("schema-violation", "Payload/Compressed is not gzip data", "Payload/Compressed",
                            msg) from None
    if len(data) > max_inflated:
        raise EnvelopeError("too-large", f"the compressed payload inflates past {max_inflated} bytes",
                            "Payload/Compressed", msg)
    try:
        return xmlsafe.parse(data)
    except xmlsafe.UnsafeXml as exc:
        raise EnvelopeError("forbidden-dtd", str(exc), "Payload/Compressed", msg) from None
    except xmlsafe.MalformedXml as exc:
        raise EnvelopeError("malformed-xml", f"compressed payload: {exc}", "Payload/Compressed", msg) from None


def compress(element: etree._Element) -> str:
    return base64.b64encode(gzip.compress(etree.tostring(element, encoding="UTF-8"), mtime=0)).decode("ascii")


def profile_of(el: etree._Element) -> tuple[str, str] | None:
    """(profile name, year) of a payload element's namespace, e.g. ("MeterReadings", "2011")."""
    m = _PROFILE_NS.match(_ns(el) or "")
    return (m.group("profile"), m.group("year")) if m else None


# building --------------------------------------------------------------------------------------

def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def _sub(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        el.text = text
    return el


def _id_el(parent: etree._Element, ns: str, name: str, i: ID) -> None:
    el = _sub(parent, ns, name, i.value)
    for attr, value in (("idType", i.id_type), ("idAuthority", i.id_authority), ("kind", i.kind),
                        ("objectType", i.object_type)):
        if value is not None:
            el.set(attr, value)


def _header(parent: etree._Element, outer: str, h: Header) -> None:
    el = _sub(parent, outer, "Header")
    ns = MSG_NS
    _sub(el, ns, "Verb", h.verb)
    _sub(el, ns, "Noun", h.noun)
    if h.revision:
        _sub(el, ns, "Revision", h.revision)
    if h.replay_nonce and h.replay_created:
        rd = _sub(el, ns, "ReplayDetection")
        _sub(rd, ns, "Nonce", h.replay_nonce)
        _sub(rd, ns, "Created", h.replay_created)
    if h.context:
        _sub(el, ns, "Context", h.context)
    _sub(el, ns, "Timestamp", h.timestamp or now_iso())
    if h.source:
        _sub(el, ns, "Source", h.source)
    if h.async_reply:
        _sub(el, ns, "AsyncReplyFlag", "true")
    if h.reply_address:
        _sub(el, ns, "ReplyAddress", h.reply_address)
    if h.ack_required:
        _sub(el, ns, "AckRequired", "true")
    if h.user_id:
        user = _sub(el, ns, "User")
        _sub(user, ns, "UserID", h.user_id)
        if h.organization:
            _sub(user, ns, "Organization", h.organization)
    _sub(el, ns, "MessageID", h.message_id or new_id())
    if h.correlation_id:
        _sub(el, ns, "CorrelationID", h.correlation_id)
    if h.comment:
        _sub(el, ns, "Comment", h.comment)
    for name, value in h.properties:
        prop = _sub(el, ns, "Property")
        _sub(prop, ns, "Name", name)
        if value is not None:
            _sub(prop, ns, "Value", value)


def _reply_el(parent: etree._Element, outer: str, r: Reply) -> None:
    el = _sub(parent, outer, "Reply")
    ns = MSG_NS
    _sub(el, ns, "Result", r.result)
    for e in r.errors:
        err = _sub(el, ns, "Error")
        _sub(err, ns, "code", e.code)
        for name, value in (("level", e.level), ("reason", e.reason), ("details", e.details)):
            if value:
                _sub(err, ns, name, value)
        if e.xpath:
            # xs:QName: only a name-shaped path step is valid there; the full path stays in details
            step = re.sub(r"[^A-Za-z0-9_.-]", "_", e.xpath.strip("/").split("/")[-1]) or "Message"
            _sub(err, ns, "xpath", step if re.match(r"^[A-Za-z_]", step) else f"_{step}")
        if e.id is not None:
            _id_el(err, ns, "ID", e.id)
    for i in r.ids:
        _id_el(el, ns, "ID", i)


def _request_el(parent: etree._Element, outer: str, r: Request) -> None:
    el = _sub(parent, outer, "Request")
    ns = MSG_NS
    if r.start_time:
        _sub(el, ns, "StartTime", r.start_time.isoformat())
    if r.end_time:
        _sub(el, ns, "EndTime", r.end_time.isoformat())
    for name, value in r.options:
        opt = _sub(el, ns, "Option")
        _sub(opt, ns, "name", name)
        if value is not None:
            _sub(opt, ns, "value", value)
    for i in r.ids:
        _id_el(el, ns, "ID", i)
    for p in r.profile:
        el.append(p)


def _payload_el(parent: etree._Element, outer: str, p: Payload) -> None:
    el = _sub(parent, outer, "Payload")
    if p.compressed:
        for e in p.elements:
            _sub(el, MSG_NS, "Compressed", compress(e))
    else:
        for e in p.elements:
            el.append(e)
    for i in p.ids:
        _id_el(el, MSG_NS, "ID", i)
    if p.format:
        _sub(el, MSG_NS, "Format", p.format)


def build_element(msg: Message, wrapper: tuple[str, str] | None = None) -> etree._Element:
    """The message as an element: bare ``msg:<kind>``, or ``wrapper`` = (namespace, name)."""
    outer = wrapper[0] if wrapper else MSG_NS
    nsmap = {"msg": MSG_NS} if not wrapper else {"w": wrapper[0], "msg": MSG_NS}
    root = etree.Element(f"{{{outer}}}{wrapper[1] if wrapper else msg.kind}", nsmap=nsmap)
    if msg.kind != "FaultMessage":
        _header(root, outer, msg.header)
    if msg.request is not None:
        _request_el(root, outer, msg.request)
    if msg.reply is not None:
        _reply_el(root, outer, msg.reply)
    if msg.payload is not None and (msg.payload.elements or msg.payload.ids):
        _payload_el(root, outer, msg.payload)
    return root


def build_message(msg: Message, wrapper: tuple[str, str] | None = None) -> bytes:
    return etree.tostring(build_element(msg, wrapper), xml_declaration=True, encoding="UTF-8")


def reply_to(request: Header, reply: Reply, payload: Payload | None = None, *, source: str = "mdmhub",
             verb: str = "reply") -> Message:
    """The ResponseMessage answering ``request``: CorrelationID is the request's CorrelationID when it
    carried one, else its MessageID."""
    header = Header(verb=verb, noun=request.noun, revision=request.revision, source=source,
                    message_id=new_id(), correlation_id=request.correlation_id or request.message_id,
                    timestamp=now_iso())
    return Message("ResponseMessage", header, reply=reply, payload=payload)


def event(noun: str, elements: list[etree._Element], *, verb: str = "created", source: str = "mdmhub",
          properties: list[tuple[str, str | None]] | None = None, correlation_id: str | None = None) -> Message:
    header = Header(verb=verb, noun=noun, source=source, message_id=new_id(), timestamp=now_iso(),
                    correlation_id=correlation_id, properties=properties or [])
    return Message("EventMessage", header, payload=Payload(elements=elements))


def wrapper_for(msg: Message) -> tuple[str, str]:
    """The SOAP wrapper (namespace, element) of a message, as the 61968-100 WSDL template names it."""
    noun = msg.header.noun
    ns = f"http://iec.ch/TC57/2011/{noun}Message"
    if msg.kind == "ResponseMessage":
        return ns, f"{noun}ResponseMessage"
    if msg.kind == "FaultMessage":
        return ns, f"{noun}FaultMessage"
    return ns, msg.header.verb.capitalize() + noun
