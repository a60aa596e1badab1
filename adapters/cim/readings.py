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

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from lxml import etree

from adapters.cim import codes
from adapters.cim.envelope import Message, parse_time
from adapters.cim.profile import (
    Builder,
    Outcome,
    decimal,
    identifiers,
    kid,
    kids,
    ref,
    refuse,
    text,
    unique,
    window,
)
from hub.ports import RegisterRead
from hub.services.quality import FLAG_NAMES, Quality

if TYPE_CHECKING:
    from adapters.cim.service import CimEdge
    from hub.services.cim_readings import MeteringPoint, RegisterInfo, SeriesRow

NS = "http://iec.ch/TC57/2011/MeterReadings#"
RQ_NAMES = {code: name for name, code in codes.quality_codes().items()}


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
    hub = edge.hub
    try:
        points, unknown = await hub.run(hub.cim_reads.resolve, by_ld, by_dev)
    except ValueError as exc:
        raise refuse("bad-request", str(exc)) from None
    for name in unknown:
        out.fail("not-found", f"no installed metering point or device named {name}", obj=name,
                 object_type="UsagePoint" if name in by_ld else "EndDevice")
    if not points:
        return out
    registers = await hub.run(hub.cim_reads.registers, {p.group_id for p in points})
    try:
        series = await hub.run(hub.cim_reads.series, [p.ld_id for p in points], start, end)
    except ValueError as exc:
        raise refuse("bad-request", str(exc), "Request") from None
    out.payload.append(build_meter_readings(points, registers, series, types))
    out.done = len(points)
    return out


def build_meter_readings(points: list[MeteringPoint], registers: dict[int, list[RegisterInfo]],
                         series: dict[str, list[SeriesRow]], types: list[codes.ReadingTypeRow]) -> etree._Element:
    b = Builder(NS)
    root = b.root("MeterReadings")
    used_types: dict[str, codes.ReadingTypeRow] = {}
    used_rq: set[str] = set()
    rq_codes = codes.quality_codes()

    def qualities(parent: etree._Element, bits: int) -> None:
        for flag, name in FLAG_NAMES.items():
            if bits & flag and name in rq_codes:
                q = b.sub(parent, "ReadingQualities")
                b.sub(q, "ReadingQualityType", ref=rq_codes[name])
                used_rq.add(rq_codes[name])

    for p in points:
        mr = b.sub(root, "MeterReading")
        rows_by_sub: dict[int, list[SeriesRow]] = defaultdict(list)
        for row in series.get(p.ld_id, []):
            rows_by_sub[row.sub_number].append(row)
        regs = registers.get(p.group_id, [])
        blocks: list[tuple[codes.ReadingTypeRow, list[SeriesRow]]] = []
        readings: list[tuple[codes.ReadingTypeRow, list[SeriesRow]]] = []
        for reg in regs:
            for rt in types:
                if rt.obis != reg.obis:
                    continue
                if rt.role == "interval" and reg.kind == "cumulative":
                    blocks.append((rt, rows_by_sub.get(reg.sub_number, [])))
                elif rt.role == "register" and _first_register_type(types, reg.obis) is rt:
                    readings.append((rt, rows_by_sub.get(reg.sub_number, [])))
        for rt, rows in blocks:
            used_types[rt.mrid] = rt
            block = b.sub(mr, "IntervalBlocks")
            for row in rows:
                ir = b.sub(block, "IntervalReadings")
                b.sub(ir, "timeStamp", row.measured_time)
                if row.increment is not None:
                    b.sub(ir, "value", float(row.increment))
                qualities(ir, row.quality & ~Quality.VALID)
            b.sub(block, "ReadingType", ref=rt.mrid)
        meter = b.sub(mr, "Meter")
        b.sub(meter, "mRID", p.pd_id or p.serial or str(p.device_key))
        if p.serial:
            b.sub(meter, "serialNumber", p.serial)
        for rt, rows in readings:
            used_types[rt.mrid] = rt
            for row in rows:
                r = b.sub(mr, "Readings")
                b.sub(r, "timeStamp", row.measured_time)
                if row.register_value is not None:
                    b.sub(r, "value", float(row.register_value))
                qualities(r, row.quality & ~Quality.VALID)
                b.sub(r, "ReadingType", ref=rt.mrid)
        up = b.sub(mr, "UsagePoint")
        b.sub(up, "mRID", p.ld_id)
    for code in sorted(used_rq):
        system, category, index = code.split(".")
        q = b.sub(root, "ReadingQualityType")
        b.sub(q, "mRID", code)
        b.sub(q, "category", category)
        b.sub(q, "subCategory", index)
        b.sub(q, "systemId", system)
        b.name(q, RQ_NAMES.get(code, code))
    for rt in used_types.values():
        _reading_type(b, root, rt)
    return root


def _first_register_type(types: list[codes.ReadingTypeRow], obis: str) -> codes.ReadingTypeRow | None:
    """One register ReadingType per register (the first the request or the table names)."""
    return next((t for t in types if t.obis == obis and t.role == "register"), None)


def _reading_type(b: Builder, root: etree._Element, rt: codes.ReadingTypeRow) -> None:
    f = rt.fields()
    el = b.sub(root, "ReadingType")
    b.sub(el, "mRID", rt.mrid)
    for name in ("accumulation", "aggregate", "commodity", "consumptionTier", "cpp", "currency", "flowDirection",
                 "macroPeriod", "measurementKind", "measuringPeriod", "multiplier", "phases", "tou", "unit"):
        b.sub(el, name, f[name])
    if f["argumentDenominator"] != "0":
        arg = b.sub(el, "argument")
        b.sub(arg, "denominator", f["argumentDenominator"])
        b.sub(arg, "numerator", f["argumentNumerator"])
    if f["interharmonicDenominator"] != "0":
        ih = b.sub(el, "interharmonic")
        b.sub(ih, "denominator", f["interharmonicDenominator"])
        b.sub(ih, "numerator", f["interharmonicNumerator"])
    b.name(el, rt.name)


# ingest ----------------------------------------------------------------------------------------

async def create(edge: CimEdge, msg: Message) -> Outcome:
    """``create MeterReadings`` and ``created MeterReadings``: store register values."""
    out = Outcome()
    if not msg.payload or not msg.payload.elements:
        raise refuse("bad-request", "Payload must carry a MeterReadings element", "Payload")
    known = codes.reading_types()
    entries: list[tuple[etree._Element, list[str], list[str]]] = []
    for element in msg.payload.elements:
        mrs = edge.payload(element, "MeterReadings")
        for mr in kids(mrs, "MeterReading"):
            up, meter = kid(mr, "UsagePoint"), kid(mr, "Meter")
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
    reads: list[RegisterRead] = []
    flags: list[tuple[str, int, datetime, int]] = []
    for n, (mr, ups, meters) in enumerate(entries, start=1):
        where = f"MeterReading[{n}]"
        point = _pick(by_name, ups, meters)
        if point is None:
            label = (ups or meters or ["(none)"])[0]
            out.fail("not-found", f"{where}: no installed metering point for {label}", obj=label,
                     object_type="UsagePoint", xpath=where)
            continue
        subs = {r.obis: r.sub_number for r in registers.get(point.group_id, [])}
        items: list[tuple[str | None, etree._Element, str]] = []
        for r in kids(mr, "Readings"):
            items.append((ref(r, "ReadingType"), r, f"{where}/Readings"))
        for block in kids(mr, "IntervalBlocks"):
            code = ref(block, "ReadingType")
            items += [(code, ir, f"{where}/IntervalBlocks") for ir in kids(block, "IntervalReadings")]
        refused: set[str] = set()
        for code, el, path in items:
            rt = known.get(code or "")
            if rt is None or not rt.ingest or rt.obis not in subs:
                if (code or "") not in refused:
                    refused.add(code or "")
                    why = ("is not known to the hub" if rt is None else "carries increments; send register values"
                           if not rt.ingest else f"names register {rt.obis}, which {point.ld_id} does not have")
                    out.fail("unknown-code" if rt is None else "invalid-object", f"{path}: ReadingType {code} {why}",
                             obj=code or "", object_type="ReadingType", xpath=path)
                continue
            stamp, value = text(el, "timeStamp"), decimal(text(el, "value"), f"{path}/value")
            if stamp is None:
                out.fail("invalid-object", f"{path}: a reading without timeStamp", obj=point.ld_id,
                         object_type="UsagePoint", xpath=path)
                continue
            t = parse_time(stamp, f"{path}/timeStamp")
            bits = 0
            for q in kids(el, "ReadingQualities"):
                name = codes.quality_flags_by_code().get(ref(q, "ReadingQualityType") or "")
                if name:
                    bits |= next(f for f, n in FLAG_NAMES.items() if n == name)
            if value is None:
                continue  # a known-missing read: nothing to store
            reads.append(RegisterRead(point.ld_id, subs[rt.obis], t, value))
            if bits & ~(Quality.VALID | Quality.MISSING):
                flags.append((point.ld_id, subs[rt.obis], t, int(bits & ~(Quality.VALID | Quality.MISSING))))
    source = ("cim:" + (msg.header.source or "external"))[:32]
    report = await hub.run(hub.collection.ingest_reads, reads, source) if reads else \
        {"received": 0, "stored": 0, "duplicates": 0, "filled": 0, "rejected": []}
    for r in report["rejected"][:100]:
        out.fail("invalid-object", f"{r['ld_id']} register {r['sub_number']} at {r['measured_time']}: {r['reason']}",
                 obj=r["ld_id"], object_type="UsagePoint")
    if len(report["rejected"]) > 100:
        out.fail("invalid-object", f"{len(report['rejected']) - 100} more readings refused")
    if flags:
        await hub.run(hub.cim_reads.add_quality, flags)
    out.done = len(reads) - len(report["rejected"])
    if not out.errors and not reads and entries:
        out.done = 1  # nothing to store (all known-missing): still a success
    out.summary = report  # type: ignore[attr-defined]
    return out


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
