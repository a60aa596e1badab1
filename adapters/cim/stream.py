"""Reading large ``create`` / ``created MeterReadings`` messages as a stream.

A head-end's day of interval data comes in messages of several megabytes. Built whole, as an lxml
tree and then as Python objects, one near the size cap would take hundreds of megabytes, so such a
message is read with :func:`adapters.xmlsafe.iterparse` (the hardened settings of every XML edge),
MeterReading by MeterReading, each element dropped once consumed.

**One pass** for the common case, a bare (not SOAP) 2011 message whose Payload holds 2011
MeterReadings elements: the document is validated while it is parsed, by libxml2 in C, against the
envelope schema with its Payload narrowed to MeterReadings (:func:`single_pass_schema`: Message.xsd
and MeterReadings.xsd as they are, so the rules are the same). :func:`read` stops at the first
MeterReadings, once the Header is whole, and :meth:`Streamed.batches` reads on from there. A schema
violation or a truncated tail is then only known late, after some batches were handed on, so the
handler stores a one-pass message in one transaction and commits it only after the last batch: when
:meth:`Streamed.batches` raises :class:`Refused`, it rolls back, and :meth:`Streamed.refusal` reads
the document again in two passes to say what is wrong exactly as a two-pass read would (a document
that the narrowed schema refuses but the two passes accept is taken that way).

**Two passes** for everything else that is streamed (SOAP envelopes, 2009 payloads, other
namespaces of the envelope):

1. :func:`read` keeps the envelope (Header, Request, the Payload's profile elements emptied) as a
   skeleton and validates the profile's children against the MeterReadings XSD in batches (their
   order checked across batches). A schema violation anywhere therefore refuses the whole message
   before anything is stored, as it does for a small one, and the document is known to be
   well-formed to its end.
2. :meth:`Streamed.batches` yields the MeterReading elements again, in batches, for the handler to
   map and store.

Everything else (other verbs and nouns, a Compressed payload, an asynchronous request, whose
handling outlives the request) is parsed whole in the first pass and goes the ordinary way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree

import schemas as schema_files
from adapters import xmlsafe
from adapters.cim import schemas
from adapters.cim.envelope import MSG_NS, EnvelopeError, profile_of

SOAP_NS = ("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope")
BATCH_METERS = 1_000
"""MeterReading elements per batch, at most."""
BATCH_ITEMS = 60_000
"""Child elements of IntervalBlocks / Readings per batch, at most (about one per reading)."""
ORDER = {"EndDeviceEventType": 0, "MeterReading": 1, "ReadingQualityType": 2, "ReadingType": 3}
"""The MeterReadings profile's sequence."""
MR_NS = "http://iec.ch/TC57/2011/MeterReadings#"
SINGLE_PASS_METERS = 125
"""MeterReading elements per batch of a one-pass read: each is mapped and stored while the document
is read on, so smaller batches overlap parsing and storing more (and cost a few queries each)."""
_MRS_TAG = f"{{{MR_NS}}}MeterReadings"
_KINDS = ("EventMessage", "RequestMessage")
"""Messages a create / created MeterReadings comes in (their root element's end is looked for: see
:meth:`Streamed.batches`)."""
_NOUN = re.compile(rb"Noun>\s*MeterReadings\s*</")
SNIFF_BYTES = 65_536
"""Where the Header's Noun must be for a one-pass read to be tried (other documents are read once)."""
_PAYLOAD_ANY = '<xs:any namespace="##other" processContents="skip" minOccurs="0" maxOccurs="unbounded"/>'


class Refused(Exception):
    """A one-pass read found the document invalid or not well-formed after batches were handed on."""


@functools.cache
def single_pass_schema() -> etree.XMLSchema:
    """Message.xsd with the Payload's open content (any element, not validated) narrowed to 2011
    MeterReadings elements, which MeterReadings.xsd validates: one schema for a whole message."""
    path = schema_files.path("cim/Message.xsd")
    text = path.read_text(encoding="utf-8")
    if text.count(_PAYLOAD_ANY) != 1:
        raise RuntimeError("Message.xsd: the Payload's open content is not where the one-pass schema expects it")
    text = text.replace(_PAYLOAD_ANY, '<xs:element ref="mr:MeterReadings" minOccurs="0" maxOccurs="unbounded"/>')
    head = text.index(">", text.index("<xs:schema")) + 1
    text = (text[:head - 1] + f' xmlns:mr="{MR_NS}">'
            f'<xs:import namespace="{MR_NS}" schemaLocation="MeterReadings.xsd"/>' + text[head:])
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.fromstring(text.encode("utf-8"), parser, base_url=str(path)))


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _size(mr: etree._Element) -> int:
    return sum(len(c) for c in mr)


@dataclass
class Streamed:
    """The MeterReadings payload of a message read by :func:`read`, to be read again in batches."""

    data: bytes
    containers: set[str]
    """Clark names of the Payload's MeterReadings elements (one namespace, 2011 or 2009)."""
    violation: EnvelopeError | None = None
    meter_readings: int = 0
    events: Iterator[tuple[str, etree._Element]] | None = None
    """A one-pass read: the rest of the validating parse (the document is not yet known valid)."""
    refused: bool = False
    """Set by the handler that refused a one-pass read late: the message was never taken."""

    @property
    def single_pass(self) -> bool:
        return self.events is not None

    def batches(self) -> Iterator[list[etree._Element]]:
        """The MeterReading elements in document order, in batches; each batch is cleared and
        removed from the tree when the next is asked for. A one-pass read raises :class:`Refused`
        (possibly after some batches) when the document turns out invalid or not well-formed."""
        if self.events is not None:
            yield from self._single_pass_batches(self.events)
            return
        batch: list[etree._Element] = []
        items = 0
        for event, el in xmlsafe.iterparse(self.data, events=("end",), tag=["{*}MeterReading"]):
            parent = el.getparent()
            if event != "end" or parent is None or parent.tag not in self.containers:
                continue
            batch.append(el)
            items += _size(el)
            if len(batch) >= BATCH_METERS or items >= BATCH_ITEMS:
                yield batch
                _drop(batch)
                batch, items = [], 0
        if batch:
            yield batch
            _drop(batch)


    def _single_pass_batches(self, events: Iterator[tuple[str, etree._Element]]) -> Iterator[list[etree._Element]]:
        self.events = None  # read once
        batch: list[etree._Element] = []
        closed = False
        try:
            for event, el in events:
                if event == "start":
                    if el.tag == _MRS_TAG:
                        self.containers.add(el.tag)  # a further MeterReadings of the Payload
                    continue
                parent = el.getparent()
                if event != "end" or parent is None or parent.tag not in self.containers:
                    closed = closed or (event == "end" and parent is None)
                    continue
                self.meter_readings += 1
                batch.append(el)
                if len(batch) >= SINGLE_PASS_METERS:
                    yield batch
                    _drop(batch)
                    batch = []
        except (xmlsafe.MalformedXml, xmlsafe.UnsafeXml) as exc:
            raise Refused(str(exc)) from None
        if not closed:  # lxml's validating iterparse (with resolve_entities off) ends a cut document quietly
            raise Refused("the document ends before its root element is closed")
        if batch:
            yield batch
            _drop(batch)

    def refusal(self) -> tuple[str, str, str | None] | Parsed:
        """After :class:`Refused`: the document read again in two passes, as :func:`read` reads what
        it does not take in one. Either (error key, details, xpath) as the two-pass read refuses it,
        or, when it finds nothing wrong, its :class:`Parsed` read to be taken that way."""
        try:
            parsed = two_pass(self.data)
        except xmlsafe.UnsafeXml as exc:
            return "forbidden-dtd", str(exc), None
        except xmlsafe.MalformedXml as exc:
            return "malformed-xml", str(exc), None
        streamed = parsed.streamed
        if streamed is not None and streamed.violation is not None:
            return streamed.violation.key, streamed.violation.details, streamed.violation.xpath
        return parsed


def _drop(batch: list[etree._Element]) -> None:
    for el in batch:
        parent = el.getparent()
        el.clear()
        if parent is not None:
            parent.remove(el)


@dataclass
class Parsed:
    """A document read by :func:`read`: its root (the SOAP envelope or the message; a skeleton when
    the payload is streamed) and the streamed payload, if any."""

    root: etree._Element
    streamed: Streamed | None = None


@dataclass
class _Scan:
    data: bytes
    streamed: Streamed | None = None
    rank: int = 0
    batch: list[etree._Element] = field(default_factory=list)
    items: int = 0

    def child(self, el: etree._Element) -> None:
        """A child of a streamed MeterReadings element has ended."""
        assert self.streamed is not None
        if self.streamed.violation is not None:
            el.getparent().remove(el)
            return
        rank = ORDER.get(_local(el), self.rank)
        if rank < self.rank:
            self.streamed.violation = EnvelopeError(
                "schema-violation", f"MeterReadings: {_local(el)} after elements that must follow it", "Payload")
        self.rank = max(rank, self.rank)
        if rank == ORDER["MeterReading"]:
            self.streamed.meter_readings += 1
        self.batch.append(el)
        self.items += _size(el)
        if len(self.batch) >= BATCH_METERS or self.items >= BATCH_ITEMS:
            self.flush()

    def flush(self) -> None:
        """Validate the batch in a MeterReadings element of its own (which takes it out of the tree)."""
        if not self.batch:
            return
        assert self.streamed is not None
        wrapper = etree.Element(self.batch[0].getparent().tag)
        for el in self.batch:
            wrapper.append(el)
        self.batch, self.items = [], 0
        if self.streamed.violation is None:
            try:
                schemas.validate_payload(wrapper, "MeterReadings")
            except EnvelopeError as exc:
                self.streamed.violation = exc


def _streamable(message: etree._Element, first: etree._Element) -> bool:
    """Whether the message whose Payload starts with ``first`` is a synchronous create/created
    MeterReadings with a plain (not Compressed) MeterReadings payload."""
    found = profile_of(first)
    if found is None or found[0] != "MeterReadings" or _local(first) != "MeterReadings":
        return False
    header = next((c for c in message if isinstance(c.tag, str) and _local(c) == "Header"), None)
    if header is None:
        return False
    fields = {_local(c): (c.text or "").strip() for c in header if isinstance(c.tag, str)}
    return (fields.get("Verb") in ("create", "created") and fields.get("Noun") == "MeterReadings"
            and fields.get("AsyncReplyFlag") not in ("true", "1"))


def _message_payload_child(el: etree._Element) -> etree._Element | None:
    """The message whose Payload ``el`` is a child of (bare, or in a SOAP Body), or None."""
    payload = el.getparent()
    if payload is None or _local(payload) != "Payload":
        return None
    message = payload.getparent()
    if message is None:
        return None
    above = message.getparent()
    if above is None or (_local(above) == "Body" and etree.QName(above).namespace in SOAP_NS):
        return message
    return None


def read(data: bytes) -> Parsed:
    """Parse ``data`` (a bare message or a SOAP envelope holding one): in one pass when it is a bare
    2011 create/created MeterReadings (:func:`one_pass`), else in two (:func:`two_pass`). Raises
    :class:`adapters.xmlsafe.UnsafeXml` or :class:`adapters.xmlsafe.MalformedXml`."""
    return one_pass(data) or two_pass(data)


def one_pass(data: bytes) -> Parsed | None:
    """The envelope of a bare 2011 synchronous create/created MeterReadings message whose Payload
    starts with a 2011 MeterReadings, read (and validated) up to that element, the rest left to
    :meth:`Streamed.batches`; None for any other document, or one refused before that point (read
    again by :func:`two_pass`, which says why)."""
    if not _NOUN.search(data, 0, SNIFF_BYTES):
        return None
    tags = [_MRS_TAG, f"{{{MR_NS}}}MeterReading", *(f"{{{MSG_NS}}}{kind}" for kind in _KINDS)]
    events = xmlsafe.iterparse(data, tag=tags, schema=single_pass_schema())
    try:
        event, el = next(events)  # the message starts
        if event != "start" or el.getparent() is not None:
            return None
        event, el = next(events)  # the Header is whole when the Payload's first element starts
    except (xmlsafe.MalformedXml, xmlsafe.UnsafeXml, StopIteration):
        return None
    if event != "start" or el.tag != _MRS_TAG or el.getprevious() is not None:
        return None
    message = _message_payload_child(el)
    if message is None or message.getparent() is not None or etree.QName(message).namespace != MSG_NS \
            or not _streamable(message, el):
        return None
    return Parsed(message, Streamed(data, {el.tag}, events=events))


def two_pass(data: bytes) -> Parsed:
    """:func:`read` in two passes (see the module docstring).

    Only the elements that matter here produce events (lxml filters the rest in C): the Payload's
    MeterReadings and the elements that can be its children."""
    scan = _Scan(data)
    containers: set[str] = set()
    for event, el in xmlsafe.iterparse(data, tag=[f"{{*}}{name}" for name in ("MeterReadings", *ORDER)]):
        if event == "document":
            if scan.streamed is None:
                xmlsafe.refuse_entities(el)
            return Parsed(el, scan.streamed)
        if event == "start":
            if el.tag.endswith("MeterReadings") and profile_of(el) is not None:
                message = _message_payload_child(el)
                if message is None:
                    continue
                if scan.streamed is None and el.getprevious() is None and _streamable(message, el):
                    scan.streamed = Streamed(data, containers)
                if scan.streamed is not None:
                    containers.add(el.tag)
            continue
        if scan.streamed is None:
            continue
        parent = el.getparent()
        if parent is not None and parent.tag in containers:
            scan.child(el)
        elif el.tag in containers:
            scan.batch.extend(c for c in el if isinstance(c.tag, str))  # children no event named: invalid
            scan.flush()
    raise AssertionError("iterparse ends with the document")
