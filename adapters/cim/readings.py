"""MeterReadings: ``get`` from usage history, ``create`` / ``created`` into it.

get: the GetMeterReadings profile names metering points (UsagePoint mRID or name = LD_ID;
EndDevice mRID, name or serialNumber = PD_ID, serial or LD_ID), ReadingType codes and a window
(Request StartTime/EndTime, Reading/timePeriod or TimeSchedule/scheduleInterval: vendors use all
three). The answer has one MeterReading per metering point: ``Readings`` with the register values,
``IntervalBlocks`` with the 30-minute increments (timeStamp = interval end), ReadingQualities from
the quality flags, and the ReadingType and ReadingQualityType definitions used.

create/created: register values (in Readings or IntervalBlocks, with a ReadingType the mapping marks
``ingest``) are stored through the collection service's ingest path, so they are idempotent and
computed like polled reads; ReadingQualities set the matching quality flags.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from lxml import etree

from adapters.cim import codes, stream
from adapters.cim.envelope import EnvelopeError, Message, parse_time
from adapters.cim.profile import Outcome, decimal, identifiers, kid, kids, refuse, unique, window
from adapters.cim.readings_answer import build_meter_readings, sub_numbers
from hub.services.quality import FLAG_NAMES, Quality

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from adapters.cim.stream import Streamed
    from adapters.cim.service import CimEdge
    from hub.runtime import Hub
    from hub.services.cim_readings import MeteringPoint
    from hub.services.usage_writer import Read


def _window(msg: Message, get: etree._Element) -> tuple[datetime, datetime]:
    start = msg.request.start_time if msg.request else None
    end = msg.request.end_time if msg.request else None
    for reading in kids(get, "Reading"):
        s, e = window(kid(reading, "timePeriod"), "GetMeterReadings/Reading/timePeriod")
        start, end = start or s, end or e
    for sched in kids(get, "TimeSchedule"):
        s, e = window(kid(sched, "scheduleInterval"), "GetMeterReadings/TimeSchedule/scheduleInterval")
        start, end = start or s, end or e
    if start is None or end is None:
        raise refuse("bad-request", "a time window is required: Request/StartTime and EndTime, "
                     "Reading/timePeriod or TimeSchedule/scheduleInterval", "Request")
    if end <= start:
        raise refuse("bad-request", "the window ends before it starts", "Request/EndTime")
    return start, end


async def get(edge: CimEdge, msg: Message) -> Outcome:
    out = Outcome()
    if not msg.request or not msg.request.profile:
        raise refuse("bad-request", "Request must carry a GetMeterReadings element", "Request")
    gm = edge.payload(msg.request.profile[0], "GetMeterReadings")
    start, end = _window(msg, gm)
    by_ld = unique(v for up in kids(gm, "UsagePoint") for v in identifiers(up))
    by_dev = unique(v for d in kids(gm, "EndDevice") for v in identifiers(d))
    by_dev += [i.value for i in (msg.request.ids if msg.request else []) if i.value]
    if not by_ld and not by_dev:
        raise refuse("bad-request", "name at least one UsagePoint or EndDevice", "GetMeterReadings")
    wanted_types = unique(v for rt in kids(gm, "ReadingType") for v in identifiers(rt))
    known = codes.reading_types()
    for code in wanted_types:
        if code not in known:
            out.fail("unknown-code", f"ReadingType {code} is not served", obj=code, object_type="ReadingType")
    types = [known[c] for c in wanted_types if c in known] if wanted_types else list(known.values())
    if wanted_types and not types:
        return out
    return await edge.hub.run(_answer, edge.hub, out, by_ld, by_dev, types, start, end)


def _answer(hub: Hub, out: Outcome, by_ld: list[str], by_dev: list[str], types: list[codes.ReadingTypeRow],
            start: datetime, end: datetime) -> Outcome:
    """The rest of a get, in one worker thread: the metering points named, their registers, the
    rows of the registers the answer shows, and the answer. One hand-over to a worker instead of
    one per step: under load each hand-over waits for a core, and cost more than the steps."""
    try:
        points, unknown = hub.cim_reads.resolve(by_ld, by_dev)
    except ValueError as exc:
        raise refuse("bad-request", str(exc)) from None
    for name in unknown:
        out.fail("not-found", f"no installed metering point or device named {name}", obj=name,
                 object_type="UsagePoint" if name in by_ld else "EndDevice")
    if not points:
        return out
    registers = hub.cim_reads.registers({p.group_id for p in points})
    try:
        series = hub.cim_reads.series([p.ld_id for p in points], start, end, sub_numbers(points, registers, types))
    except ValueError as exc:
        raise refuse("bad-request", str(exc), "Request") from None
    out.payload.append(build_meter_readings(points, registers, series, types))
    out.done = len(points)
    return out


# ingest ----------------------------------------------------------------------------------------

_KEPT_QUALITY = ~int(Quality.VALID | Quality.MISSING)
"""Quality bits a partner's ReadingQualities may set on stored rows (plain int: enum arithmetic per
reading would cost more than the rest of its mapping)."""
_INFINITE = (float("inf"), float("-inf"))
MAX_REFUSED_LISTED = 100
"""Refused readings listed one by one in the reply; the rest are counted in one Error."""
PIPELINE_METERS = 250
"""MeterReading elements mapped per step of an ingest; a step is mapped while the one before it is
stored (storing runs off the event loop, much of it in the database driver without the GIL)."""


@functools.cache
def _quality_bits() -> dict[str, int]:
    """ReadingQualityType code -> the hub's quality bits."""
    by_name = {name: int(flag) for flag, name in FLAG_NAMES.items()}
    return {code: by_name[name] for code, name in codes.quality_flags_by_code().items() if name in by_name}


@dataclass
class _Ingest:
    """What the batches of one create / created MeterReadings did, added up."""

    meter_readings: int = 0
    reads: int = 0
    rejected: int = 0
    report: dict[str, int] = field(default_factory=lambda: {"received": 0, "stored": 0, "duplicates": 0, "filled": 0})


async def create(edge: CimEdge, msg: Message) -> Outcome:
    """``create MeterReadings`` and ``created MeterReadings``: store register values.

    The MeterReading elements are taken in batches: those of a streamed message as
    :mod:`adapters.cim.stream` reads them, otherwise those of the validated payload elements. A
    message read in two passes is known valid before its first batch, and is stored in transactions
    of :data:`hub.services.collection.INGEST_CHUNK` reads; one read in one pass is validated as its
    batches come, so it is stored in one transaction, committed after its last batch
    (:func:`_create_in_one_transaction`)."""
    streamed = msg.stream
    if streamed is not None and streamed.single_pass:
        return await _create_in_one_transaction(edge, msg, streamed)
    out = Outcome()
    if streamed is not None:
        batches: Iterable[list[etree._Element]] = streamed.batches()
    else:
        if not msg.payload or not msg.payload.elements:
            raise refuse("bad-request", "Payload must carry a MeterReadings element", "Payload")
        validated = [edge.payload(element, "MeterReadings") for element in msg.payload.elements]
        batches = ([mr for mrs in validated for mr in kids(mrs, "MeterReading")],)
    done = _Ingest()
    await _ingest(edge, batches, _source(msg), out, done)
    return _outcome(out, done)


def _source(msg: Message) -> str:
    return ("cim:" + (msg.header.source or "external"))[:32]


async def _create_in_one_transaction(edge: CimEdge, msg: Message, streamed: Streamed) -> Outcome:
    """A message read in one pass: its batches stored in one transaction, rolled back when the
    document turns out invalid or cut short (:class:`adapters.cim.stream.Refused`; the refusal is
    then the two-pass read's, and ``streamed.refused`` tells the edge not to remember the message as
    taken, as it would not have taken it) or anything else fails; committed before the reply."""
    hub = edge.hub
    out, done = Outcome(), _Ingest()
    tx = await hub.run(hub.cim_reads.transaction)
    try:
        await _ingest(edge, streamed.batches(), _source(msg), out, done, tx.conn)
    except stream.Refused:
        await hub.run(tx.rollback)
        again = await hub.run(streamed.refusal)
        if isinstance(again, stream.Parsed):  # the one-pass schema's narrowing refused what two passes take
            msg.stream = again.streamed
            return await create(edge, msg)
        streamed.refused = True
        raise EnvelopeError(*again) from None
    except BaseException:
        await asyncio.shield(hub.run(tx.rollback))
        raise
    await hub.run(tx.commit)
    return _outcome(out, done)


async def _ingest(edge: CimEdge, batches: Iterable[list[etree._Element]], source: str, out: Outcome, done: _Ingest,
                  conn: Connection | None = None) -> None:
    """Map and store ``batches``, :data:`PIPELINE_METERS` MeterReadings a step, each step mapped
    while the one before it is stored (in ``conn``'s transaction when given)."""
    storing: asyncio.Task[None] | None = None
    try:
        for batch in batches:
            for first in range(0, len(batch), PIPELINE_METERS):
                mapped = await _map_batch(edge, batch[first:first + PIPELINE_METERS], out, done)
                if storing is not None:
                    await storing
                storing = asyncio.create_task(_store_batch(edge, *mapped, source, out, done, conn))
        if storing is not None:
            await storing
    finally:  # a step that failed to map: the step being stored is finished first, never left running
        if storing is not None and not storing.done():
            await asyncio.wait([storing])
            if not storing.cancelled():
                storing.exception()


def _outcome(out: Outcome, done: _Ingest) -> Outcome:
    if done.rejected > MAX_REFUSED_LISTED:
        out.fail("invalid-object", f"{done.rejected - MAX_REFUSED_LISTED} more readings refused")
    out.done = done.reads - done.rejected
    if not out.errors and not done.reads and done.meter_readings:
        out.done = 1  # nothing to store (all known-missing): still a success
    out.summary = {**done.report, "rejected": done.rejected}  # type: ignore[attr-defined]
    return out


async def _map_batch(edge: CimEdge, batch: list[etree._Element], out: Outcome,
                     done: _Ingest) -> tuple[list[Read], list[tuple[str, int, datetime, int]]]:
    """The register reads and kept quality flags of one batch of MeterReading elements."""
    reads: list[Read] = []
    flags: list[tuple[str, int, datetime, int]] = []
    if not batch:
        return reads, flags
    ns = etree.QName(batch[0]).namespace
    up_tag, meter_tag = f"{{{ns}}}UsagePoint", f"{{{ns}}}Meter"
    entries: list[tuple[etree._Element, list[str], list[str]]] = []
    for mr in batch:
        up, meter = mr.find(up_tag), mr.find(meter_tag)
        entries.append((mr, identifiers(up) if up is not None else [],
                        identifiers(meter) if meter is not None else []))
    hub = edge.hub
    points, _ = await hub.run(hub.cim_reads.resolve, unique(n for _, u, _ in entries for n in u),
                              unique(n for _, _, m in entries for n in m))
    by_name: dict[str, list[MeteringPoint]] = defaultdict(list)
    for p in points:
        for n in {p.ld_id, p.pd_id, p.serial, str(p.device_key)} - {None}:
            by_name[n].append(p)  # type: ignore[index]
    registers = await hub.run(hub.cim_reads.registers, {p.group_id for p in points})
    mapper = _Mapper(ns, out, reads, flags)
    for mr, ups, meters in entries:
        done.meter_readings += 1
        where = f"MeterReading[{done.meter_readings}]"
        point = _pick(by_name, ups, meters)
        if point is None:
            label = (ups or meters or ["(none)"])[0]
            out.fail("not-found", f"{where}: no installed metering point for {label}", obj=label,
                     object_type="UsagePoint", xpath=where)
            continue
        mapper.meter(mr, point, {r.obis: r.sub_number for r in registers.get(point.group_id, [])}, where)
    return reads, flags


async def _store_batch(edge: CimEdge, reads: list[Read], flags: list[tuple[str, int, datetime, int]], source: str,
                       out: Outcome, done: _Ingest, conn: Connection | None = None) -> None:
    """Store the reads of one mapped batch and their quality flags (in ``conn``'s transaction when
    given); add up what happened."""
    hub = edge.hub
    report = await hub.run(hub.collection.ingest_values, reads, source, None, conn) if reads else \
        {"received": 0, "stored": 0, "duplicates": 0, "filled": 0, "rejected": []}
    for r in report["rejected"][:max(0, MAX_REFUSED_LISTED - done.rejected)]:
        out.fail("invalid-object", f"{r['ld_id']} register {r['sub_number']} at {r['measured_time']}: {r['reason']}",
                 obj=r["ld_id"], object_type="UsagePoint")
    if flags:
        await hub.run(hub.cim_reads.add_quality, flags, conn)
    done.reads += len(reads)
    done.rejected += len(report["rejected"])
    for key in done.report:
        done.report[key] += report[key]


@functools.cache
def _block_xpaths(ns: str) -> tuple[etree.XPath, etree.XPath, etree.XPath, etree.XPath]:
    """For an IntervalBlocks element of namespace ``ns``: how many IntervalReadings it has, the
    texts of their timeStamps and of their values, and whether any has ReadingQualities."""
    names = {"m": ns} if ns else None
    p = "m:" if ns else ""

    def xpath(expr: str) -> etree.XPath:
        return etree.XPath(expr, namespaces=names, smart_strings=False)

    return (xpath(f"count({p}IntervalReadings)"), xpath(f"{p}IntervalReadings/{p}timeStamp/text()"),
            xpath(f"{p}IntervalReadings/{p}value/text()"), xpath(f"boolean({p}IntervalReadings/{p}ReadingQualities)"))


class _Mapper:
    """Register reads of MeterReading elements of one profile namespace (the per-reading work of
    an ingest: element lookups by full tag, each distinct timeStamp parsed once)."""

    def __init__(self, ns: str | None, out: Outcome, reads: list[Read],
                 flags: list[tuple[str, int, datetime, int]]) -> None:
        t = (lambda name: f"{{{ns}}}{name}") if ns else (lambda name: name)
        self.readings, self.blocks, self.interval = t("Readings"), t("IntervalBlocks"), t("IntervalReadings")
        self.reading_type, self.stamp, self.value = t("ReadingType"), t("timeStamp"), t("value")
        self.qualities, self.quality_type = t("ReadingQualities"), t("ReadingQualityType")
        self.out, self.reads, self.flags = out, reads, flags
        self.known = codes.reading_types()
        self.bits = _quality_bits()
        self.times: dict[str, datetime] = {}
        self.xpaths = _block_xpaths(ns or "")

    def _code(self, el: etree._Element) -> str | None:
        rt = el.find(self.reading_type)
        return rt.get("ref") if rt is not None else None

    def meter(self, mr: etree._Element, point: MeteringPoint, subs: dict[str, int], where: str) -> None:
        """Append the register reads of one MeterReading (of ``point``); refusals go to the outcome."""
        groups: list[tuple[str | None, etree._Element, bool, str]] = [
            (self._code(r), r, False, f"{where}/Readings") for r in mr.iterchildren(self.readings)]
        groups += [(self._code(b), b, True, f"{where}/IntervalBlocks") for b in mr.iterchildren(self.blocks)]
        refused: set[str] = set()
        for code, element, block, path in groups:
            rt = self.known.get(code or "")
            if rt is None or not rt.ingest or rt.obis not in subs:
                if (code or "") not in refused:
                    refused.add(code or "")
                    why = ("is not known to the hub" if rt is None else "carries increments; send register values"
                           if not rt.ingest else f"names register {rt.obis}, which {point.ld_id} does not have")
                    self.out.fail("unknown-code" if rt is None else "invalid-object",
                                  f"{path}: ReadingType {code} {why}", obj=code or "", object_type="ReadingType",
                                  xpath=path)
                continue
            if not block:
                self._values([element], point.ld_id, subs[rt.obis], path)
            elif not self._plain_block(element, point.ld_id, subs[rt.obis], path):
                self._values(list(element.iterchildren(self.interval)), point.ld_id, subs[rt.obis], path)

    def _plain_block(self, block: etree._Element, ld_id: str, sub: int, path: str) -> bool:
        """The reads of an IntervalBlock whose every IntervalReading has one timeStamp and one value,
        as texts, and no ReadingQualities (nearly all of them): their texts taken by XPath in C, in
        document order, instead of element by element. False, with nothing read, for any other block
        (:meth:`_values` reads it and says what is wrong)."""
        count, stamps, values, qualified = self.xpaths
        n = int(count(block))
        stamp_texts, value_texts = stamps(block), values(block)
        if len(stamp_texts) != n or len(value_texts) != n or qualified(block):
            return False
        times, append = self.times, self.reads.append
        for stamp, raw in zip(stamp_texts, value_texts, strict=True):
            t = times.get(stamp)
            if t is None:
                clean = stamp.strip()
                if not clean:
                    return False
                t = times.get(clean)
                if t is None:
                    t = times[clean] = parse_time(clean, f"{path}/timeStamp")
                times[stamp] = t
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or value != value or value in _INFINITE:
                value = decimal(raw.strip() or None, f"{path}/value")  # refuses what is not a finite number
                if value is None:
                    continue
            append((ld_id, sub, t, value))
        return True

    def _values(self, elements: list[etree._Element], ld_id: str, sub: int, path: str) -> None:
        """The reads of one register's Reading / IntervalReadings elements: each element's children
        looked at once (a lookup by path per field cost more than the rest of the mapping)."""
        stamp_tag, value_tag, qualities_tag = self.stamp, self.value, self.qualities
        times, append, keep = self.times, self.reads.append, _KEPT_QUALITY
        for el in elements:
            stamp = raw = None
            bits = 0
            for c in el:
                tag = c.tag
                if tag == stamp_tag:
                    if stamp is None:
                        stamp = c.text or ""
                elif tag == value_tag:
                    if raw is None:
                        raw = c.text or ""
                elif tag == qualities_tag:
                    rq = c.find(self.quality_type)
                    bits |= self.bits.get(rq.get("ref") or "", 0) if rq is not None else 0
            t = times.get(stamp) if stamp is not None else None
            if t is None:
                stamp = stamp.strip() if stamp else None
                if not stamp:
                    self.out.fail("invalid-object", f"{path}: a reading without timeStamp", obj=ld_id,
                                  object_type="UsagePoint", xpath=path)
                    continue
                t = times.get(stamp)
                if t is None:
                    t = times[stamp] = parse_time(stamp, f"{path}/timeStamp")
            if raw is None:
                continue  # a known-missing read: nothing to store
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or value != value or value in _INFINITE:
                value = decimal(raw.strip() or None, f"{path}/value")  # refuses what is not a finite number
                if value is None:
                    continue
            append((ld_id, sub, t, value))
            if bits & keep:
                self.flags.append((ld_id, sub, t, bits & keep))


def _pick(by_name: dict[str, list[MeteringPoint]], ups: list[str], meters: list[str]) -> MeteringPoint | None:
    for n in ups:
        for p in by_name.get(n, []):
            if p.ld_id == n:
                return p
    for n in meters:
        found = {p.ld_id: p for p in by_name.get(n, [])}
        if len(found) == 1:
            return next(iter(found.values()))
    return None


__all__ = ["build_meter_readings", "create", "get"]
