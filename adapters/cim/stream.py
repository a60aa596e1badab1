"""Reading large ``create`` / ``created MeterReadings`` messages as a stream.

A head-end's day of interval data comes in messages of several megabytes. Built whole, as an lxml
tree and then as Python objects, one near the size cap would take hundreds of megabytes, so such a
message is read with :func:`adapters.xmlsafe.iterparse` (the hardened settings of every XML edge),
MeterReading by MeterReading, each element dropped once consumed. Two passes over the bytes:

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

from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree

from adapters import xmlsafe
from adapters.cim import schemas
from adapters.cim.envelope import EnvelopeError, profile_of

SOAP_NS = ("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope")
BATCH_METERS = 1_000
"""MeterReading elements per batch, at most."""
BATCH_ITEMS = 60_000
"""Child elements of IntervalBlocks / Readings per batch, at most (about one per reading)."""
ORDER = {"EndDeviceEventType": 0, "MeterReading": 1, "ReadingQualityType": 2, "ReadingType": 3}
"""The MeterReadings profile's sequence."""


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

    def batches(self) -> Iterator[list[etree._Element]]:
        """The MeterReading elements in document order, in batches; each batch is cleared and
        removed from the tree when the next is asked for."""
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
    """Parse ``data`` (a bare message or a SOAP envelope holding one). Raises
    :class:`adapters.xmlsafe.UnsafeXml` or :class:`adapters.xmlsafe.MalformedXml`.

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
