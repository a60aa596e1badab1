"""Writing MeterReadings documents: the answer to ``get MeterReadings`` and the payload of
``created MeterReadings`` events.

One MeterReading per metering point: ``IntervalBlocks`` with the 30-minute increments (timeStamp =
interval end), ``Meter``, ``Readings`` with the register values, ``UsagePoint``; ReadingQualities
from the quality flags; then the ReadingQualityType and ReadingType definitions used.

A month of one meter is about 1,500 readings and 4,500 elements. Creating them one by one from
Python cost several times what lxml's parser takes to build the same tree from text, so the
MeterReading elements are written as text (values escaped) and parsed once; the few definitions
after them are built as elements.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from lxml import etree

from adapters.cim import codes
from adapters.cim.profile import Builder, number_text, time_text
from hub.services.quality import FLAG_NAMES, Quality

if TYPE_CHECKING:
    from hub.services.cim_readings import MeteringPoint, RegisterInfo, SeriesRow

NS = "http://iec.ch/TC57/2011/MeterReadings#"
RQ_NAMES = {code: name for name, code in codes.quality_codes().items()}
_NOT_VALID = ~int(Quality.VALID)
_QUOTE = {'"': "&quot;"}
STAMP_MEMO = 65_536
"""Timestamp texts kept (about 3.7 years of 30-minute slots): every meter's readings sit on the same
grid, so answers for many meters, and repeated ones, share them."""
_CR = {"\r": "&#13;"}  # kept as lxml writes it (a parser would read a bare CR as a newline)

Selection = list[tuple[codes.ReadingTypeRow, int]]
"""(ReadingType, register sub number) pairs, in answer order."""


def select_series(registers: Iterable[RegisterInfo], types: list[codes.ReadingTypeRow]) -> tuple[Selection, Selection]:
    """Which registers of a parameter group the answer holds, as (IntervalBlocks, Readings): the
    increments of each cumulative register an interval ReadingType names, and the values of each
    register a register ReadingType names (one type per register: the first the request or the
    table names)."""
    blocks: Selection = []
    readings: Selection = []
    for reg in registers:
        for rt in types:
            if rt.obis != reg.obis:
                continue
            if rt.role == "interval" and reg.kind == "cumulative":
                blocks.append((rt, reg.sub_number))
            elif rt.role == "register" and _first_register_type(types, reg.obis) is rt:
                readings.append((rt, reg.sub_number))
    return blocks, readings


def sub_numbers(points: Iterable[MeteringPoint], registers: dict[int, list[RegisterInfo]],
                types: list[codes.ReadingTypeRow]) -> set[int]:
    """The register sub numbers whose rows an answer for ``points`` uses (the series to read)."""
    out: set[int] = set()
    for group in {p.group_id for p in points}:
        blocks, readings = select_series(registers.get(group, []), types)
        out.update(sub for _, sub in blocks + readings)
    return out


def build_meter_readings(points: list[MeteringPoint], registers: dict[int, list[RegisterInfo]],
                         series: dict[str, list[SeriesRow]], types: list[codes.ReadingTypeRow]) -> etree._Element:
    """The MeterReadings element for ``points`` from their rows in ``series`` (by LD_ID; rows of
    other registers are ignored), holding the series ``types`` select."""
    used_types: dict[str, codes.ReadingTypeRow] = {}
    text = _Writer()
    out = [f'<m:MeterReadings xmlns:m="{NS}">']
    for p in points:
        rows_by_sub: dict[int, list[SeriesRow]] = defaultdict(list)
        for row in series.get(p.ld_id, []):
            rows_by_sub[row.sub_number].append(row)
        blocks, readings = select_series(registers.get(p.group_id, []), types)
        out.append("<m:MeterReading>")
        for rt, sub in blocks:
            used_types[rt.mrid] = rt
            out.append("<m:IntervalBlocks>")
            text.intervals(out, rows_by_sub.get(sub, []))
            out.append(f'<m:ReadingType ref="{_attr(rt.mrid)}"/></m:IntervalBlocks>')
        out.append(f"<m:Meter><m:mRID>{_text(p.pd_id or p.serial or str(p.device_key))}</m:mRID>")
        if p.serial:
            out.append(f"<m:serialNumber>{_text(p.serial)}</m:serialNumber>")
        out.append("</m:Meter>")
        for rt, sub in readings:
            used_types[rt.mrid] = rt
            text.registers(out, rows_by_sub.get(sub, []), rt.mrid)
        out.append(f"<m:UsagePoint><m:mRID>{_text(p.ld_id)}</m:mRID></m:UsagePoint></m:MeterReading>")
    out.append("</m:MeterReadings>")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.fromstring("".join(out), parser)
    b = Builder(NS)
    for code in sorted(text.used_rq):
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


class _Writer:
    """The text of IntervalReadings and Readings elements; each distinct quality bit set is written
    once per document, each timestamp once per :data:`STAMP_MEMO`."""

    def __init__(self) -> None:
        self.used_rq: set[str] = set()
        self._qualities: dict[int, tuple[str, tuple[str, ...]]] = {}

    def _quality(self, bits: int) -> str:
        """ReadingQualities of the bits other than VALID, in flag order."""
        found = self._qualities.get(bits)
        if found is None:
            used = tuple(code for flag, code in _quality_flags() if bits & flag)
            found = self._qualities[bits] = (
                "".join(f'<m:ReadingQualities><m:ReadingQualityType ref="{_attr(c)}"/></m:ReadingQualities>'
                        for c in used), used)
        self.used_rq.update(found[1])
        return found[0]

    def intervals(self, out: list[str], rows: list[SeriesRow]) -> None:
        append, stamp, quality = out.append, _stamp, self._quality
        for row in rows:
            inc, bits = row.increment, row.quality & _NOT_VALID
            value = "" if inc is None else f"<m:value>{number_text(float(inc))}</m:value>"
            append(f"<m:IntervalReadings><m:timeStamp>{stamp(row.measured_time)}</m:timeStamp>{value}"
                   f"{quality(bits) if bits else ''}</m:IntervalReadings>")

    def registers(self, out: list[str], rows: list[SeriesRow], mrid: str) -> None:
        append, stamp, quality = out.append, _stamp, self._quality
        ref = f'<m:ReadingType ref="{_attr(mrid)}"/></m:Readings>'
        for row in rows:
            reg, bits = row.register_value, row.quality & _NOT_VALID
            value = "" if reg is None else f"<m:value>{number_text(float(reg))}</m:value>"
            append(f"<m:Readings><m:timeStamp>{stamp(row.measured_time)}</m:timeStamp>{value}"
                   f"{quality(bits) if bits else ''}{ref}")


@functools.lru_cache(maxsize=STAMP_MEMO)
def _stamp(t: datetime) -> str:
    return time_text(t)


def _text(value: str) -> str:
    return escape(value, _CR)


@functools.cache
def _attr(value: str) -> str:
    """A code as a double-quoted attribute value (codes come from the mapping tables)."""
    return escape(value, _QUOTE)


@functools.cache
def _quality_flags() -> tuple[tuple[int, str], ...]:
    """(quality bit, ReadingQualityType code) of every flag that has a code, in flag order."""
    rq_codes = codes.quality_codes()
    return tuple((int(flag), rq_codes[name]) for flag, name in FLAG_NAMES.items() if name in rq_codes)


def _first_register_type(types: list[codes.ReadingTypeRow], obis: str) -> codes.ReadingTypeRow | None:
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


__all__ = ["build_meter_readings", "select_series", "sub_numbers"]
