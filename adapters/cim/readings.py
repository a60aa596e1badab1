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
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from itertools import repeat
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from lxml import etree

from adapters.cim import codes, parse_worker, stream
from adapters.cim.envelope import EnvelopeError, Message
from adapters.cim.profile import Outcome, identifiers, kid, kids, refuse, unique, window
from adapters.cim.reading_parts import Extractor, Meter
from adapters.cim.readings_answer import build_meter_readings, sub_numbers

if TYPE_CHECKING:
    from hub.services.transaction import Transaction

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

MAX_REFUSED_LISTED = 100
"""Refused readings listed one by one in the reply; the rest are counted in one Error."""
PIPELINE_METERS = 250
"""MeterReading elements mapped per step of an ingest; a step is mapped while the one before it is
stored (storing runs off the event loop, much of it in the database driver without the GIL)."""


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
    await _ingest(edge, _taken_apart(batches), _source(msg), out, done)
    return _outcome(out, done)


def _source(msg: Message) -> str:
    return ("cim:" + (msg.header.source or "external"))[:32]


async def _taken_apart(batches: Iterable[list[etree._Element]]) -> AsyncIterator[list[Meter]]:
    """Element batches taken apart here, :data:`PIPELINE_METERS` MeterReadings a step (in the
    event loop's thread, as the elements are parsed)."""
    extractor = Extractor()
    for batch in batches:
        for first in range(0, len(batch), PIPELINE_METERS):
            yield extractor.batch(batch[first:first + PIPELINE_METERS])


async def _create_in_one_transaction(edge: CimEdge, msg: Message, streamed: Streamed) -> Outcome:
    """A message read in one pass: its batches stored in one transaction, rolled back when the
    document turns out invalid or cut short (:class:`adapters.cim.stream.Refused`; the refusal is
    then the two-pass read's, and ``streamed.refused`` tells the edge not to remember the message as
    taken, as it would not have taken it) or anything else fails; committed before the reply. With
    parse workers (:mod:`adapters.cim.parse_worker`) the document is read again, from its start, in
    a worker process while this thread stores; a failed worker fails the message, not taken."""
    hub = edge.hub
    out, done = Outcome(), _Ingest()
    pool = parse_worker.pool(edge.settings.parse_workers)
    claimed = pool.claim()
    try:
        if claimed:
            streamed.events = None  # the worker reads the document; this read stopped at the Header
            batches: AsyncIterator[list[Meter]] = pool.batches(streamed.data, stream.SINGLE_PASS_METERS,
                                                               PIPELINE_METERS)
        else:
            batches = _taken_apart(streamed.batches())
        tx = await hub.run(hub.cim_reads.transaction)
        try:
            async with contextlib.aclosing(batches):
                await _ingest(edge, batches, _source(msg), out, done, tx)
        except stream.Refused:
            await hub.run(tx.rollback)
            again = await hub.run(streamed.refusal)
            if isinstance(again, stream.Parsed):  # the one-pass schema's narrowing refused what two passes take
                msg.stream = again.streamed
                return await create(edge, msg)
            streamed.refused = True
            raise EnvelopeError(*again) from None
        except parse_worker.WorkerFailed:
            await asyncio.shield(hub.run(tx.rollback))
            streamed.refused = True  # not taken: a copy under the same MessageID is read anew
            raise
        except BaseException:
            await asyncio.shield(hub.run(tx.rollback))
            raise
    finally:
        if claimed:
            pool.release()
    await hub.run(tx.commit)
    return _outcome(out, done)


async def _ingest(edge: CimEdge, batches: AsyncIterator[list[Meter]], source: str, out: Outcome, done: _Ingest,
                  within: Transaction | None = None) -> None:
    """Map and store ``batches``, each mapped while the one before it is stored (in the open
    transaction ``within`` when given)."""
    storing: asyncio.Task[None] | None = None
    try:
        async for batch in batches:
            mapped = await _map_batch(edge, batch, out, done)
            if storing is not None:
                await storing
            storing = asyncio.create_task(_store_batch(edge, *mapped, source, out, done, within))
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


async def _map_batch(edge: CimEdge, batch: list[Meter], out: Outcome,
                     done: _Ingest) -> tuple[list[Read], list[tuple[str, int, datetime, int]]]:
    """The register reads and kept quality flags of one batch of MeterReadings taken apart."""
    reads: list[Read] = []
    flags: list[tuple[str, int, datetime, int]] = []
    if not batch:
        return reads, flags
    hub = edge.hub
    points, _ = await hub.run(hub.cim_reads.resolve, unique(n for m in batch for n in m.usage_point),
                              unique(n for m in batch for n in m.meter))
    by_name: dict[str, list[MeteringPoint]] = defaultdict(list)
    for p in points:
        for n in {p.ld_id, p.pd_id, p.serial, str(p.device_key)} - {None}:
            by_name[n].append(p)  # type: ignore[index]
    registers = await hub.run(hub.cim_reads.registers, {p.group_id for p in points})
    known = codes.reading_types()
    for m in batch:
        done.meter_readings += 1
        where = f"MeterReading[{done.meter_readings}]"
        point = _pick(by_name, m.usage_point, m.meter)
        if point is None:
            label = (m.usage_point or m.meter or ["(none)"])[0]
            out.fail("not-found", f"{where}: no installed metering point for {label}", obj=label,
                     object_type="UsagePoint", xpath=where)
            continue
        _apply(m, point, {r.obis: r.sub_number for r in registers.get(point.group_id, [])}, where, known, out,
               reads, flags)
    return reads, flags


def _apply(m: Meter, point: MeteringPoint, subs: dict[str, int], where: str, known: dict[str, codes.ReadingTypeRow],
           out: Outcome, reads: list[Read], flags: list[tuple[str, int, datetime, int]]) -> None:
    """Append the register reads of one MeterReading taken apart (of ``point``); refusals go to the
    outcome, and a reading that refuses the whole message raises when its register is one to store."""
    refused: set[str] = set()
    ld_id = point.ld_id
    for code, kind, times, values, flagged, missing, fatal in m.groups:
        path = f"{where}/{kind}"
        rt = known.get(code or "")
        if rt is None or not rt.ingest or rt.obis not in subs:
            if (code or "") not in refused:
                refused.add(code or "")
                why = ("is not known to the hub" if rt is None else "carries increments; send register values"
                       if not rt.ingest else f"names register {rt.obis}, which {ld_id} does not have")
                out.fail("unknown-code" if rt is None else "invalid-object",
                         f"{path}: ReadingType {code} {why}", obj=code or "", object_type="ReadingType",
                         xpath=path)
            continue
        for _ in range(missing):
            out.fail("invalid-object", f"{path}: a reading without timeStamp", obj=ld_id,
                     object_type="UsagePoint", xpath=path)
        if fatal is not None:
            raise EnvelopeError(*fatal)
        sub = subs[rt.obis]
        reads.extend(zip(repeat(ld_id), repeat(sub), times, values))
        for i, bits in flagged:
            flags.append((ld_id, sub, times[i], bits))


async def _store_batch(edge: CimEdge, reads: list[Read], flags: list[tuple[str, int, datetime, int]], source: str,
                       out: Outcome, done: _Ingest, within: Transaction | None = None) -> None:
    """Store the reads of one mapped batch and their quality flags (in the open transaction
    ``within`` when given); add up what happened."""
    hub = edge.hub
    report = await hub.run(hub.collection.ingest_values, reads, source, None, within) if reads else \
        {"received": 0, "stored": 0, "duplicates": 0, "filled": 0, "rejected": []}
    for r in report["rejected"][:max(0, MAX_REFUSED_LISTED - done.rejected)]:
        out.fail("invalid-object", f"{r['ld_id']} register {r['sub_number']} at {r['measured_time']}: {r['reason']}",
                 obj=r["ld_id"], object_type="UsagePoint")
    if flags:
        await hub.run(hub.cim_reads.add_quality, flags, within)
    done.reads += len(reads)
    done.rejected += len(report["rejected"])
    for key in done.report:
        done.report[key] += report[key]


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
