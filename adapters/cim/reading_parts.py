"""MeterReading elements taken apart into plain values, before any metering point is known.

The per-reading work of a ``create`` / ``created MeterReadings`` ingest (timeStamps parsed, values
read as numbers, ReadingQualities turned into quality bits) needs nothing from the store, so it can
run where the document is parsed: in :mod:`adapters.cim.parse_worker`'s process for a one-pass read,
or inline otherwise. What comes out is plain tuples, cheap to send between processes, which
:mod:`adapters.cim.readings` turns into register reads once the metering points are looked up (a
MeterReading's ReadingTypes are checked against its point's registers there, so a problem found
here is only reported when its reading would have been stored: the same replies as before).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import NamedTuple

from lxml import etree

from adapters.cim import codes
from adapters.cim.envelope import EnvelopeError, parse_time
from adapters.cim.profile import decimal, identifiers
from hub.services.quality import FLAG_NAMES, Quality

KEPT_QUALITY = ~int(Quality.VALID | Quality.MISSING)
"""Quality bits a partner's ReadingQualities may set on stored rows (plain int: enum arithmetic per
reading would cost more than the rest of its mapping)."""
_INFINITE = (float("inf"), float("-inf"))
_INTERNED_MAX = 4_096


class Group(NamedTuple):
    """One Readings element, or one IntervalBlocks element, of a MeterReading."""

    code: str | None
    """Its ReadingType ``ref``."""
    kind: str
    """``Readings`` or ``IntervalBlocks`` (for the xpath of a reply's Error)."""
    times: tuple[datetime, ...] | list[datetime]
    values: list[float]
    """One value per time: the readings to store, in document order."""
    flagged: list[tuple[int, int]]
    """(index into times / values, kept quality bits) of the readings with ReadingQualities to keep."""
    missing: int
    """Readings without a timeStamp (each refused with an Error in the reply)."""
    fatal: tuple[str, str, str | None] | None
    """An :class:`EnvelopeError`'s (key, details, xpath) that refuses the whole message, found after
    the readings above: a timeStamp or value that is not one."""


class Meter(NamedTuple):
    """One MeterReading: the identifiers of its UsagePoint and Meter, and its groups."""

    usage_point: list[str]
    meter: list[str]
    groups: list[Group]


@functools.cache
def quality_bits() -> dict[str, int]:
    """ReadingQualityType code -> the hub's quality bits."""
    by_name = {name: int(flag) for flag, name in FLAG_NAMES.items()}
    return {code: by_name[name] for code, name in codes.quality_flags_by_code().items() if name in by_name}


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


class _Stop(Exception):
    """A reading that refuses the whole message: the group ends there."""

    def __init__(self, error: EnvelopeError) -> None:
        super().__init__(error.details)
        self.error = error


class Extractor:
    """Takes MeterReading elements apart, in document order, counting them (a reply's xpath names
    ``MeterReading[n]``, n counted over the whole message). Each distinct timeStamp is parsed once,
    and blocks with the same timeStamps share one tuple of times (sent once per batch between
    processes)."""

    def __init__(self) -> None:
        self.count = 0
        self._ns: str | None = None
        self.times: dict[str, datetime] = {}
        self.interned: dict[tuple[str, ...], tuple[datetime, ...]] = {}
        self.bits = quality_bits()

    def _tags(self, ns: str | None) -> None:
        t = (lambda name: f"{{{ns}}}{name}") if ns else (lambda name: name)
        self.readings, self.blocks, self.interval = t("Readings"), t("IntervalBlocks"), t("IntervalReadings")
        self.reading_type, self.stamp, self.value = t("ReadingType"), t("timeStamp"), t("value")
        self.qualities, self.quality_type = t("ReadingQualities"), t("ReadingQualityType")
        self.up, self.meter_tag = t("UsagePoint"), t("Meter")
        self.xpaths = _block_xpaths(ns or "")
        self._ns = ns

    def batch(self, batch: list[etree._Element]) -> list[Meter]:
        return [self.meter(mr) for mr in batch]

    def meter(self, mr: etree._Element) -> Meter:
        ns = etree.QName(mr).namespace
        if ns != self._ns or not hasattr(self, "readings"):
            self._tags(ns)
        self.count += 1
        where = f"MeterReading[{self.count}]"
        up, meter = mr.find(self.up), mr.find(self.meter_tag)
        groups = [self._group(r, False, f"{where}/Readings") for r in mr.iterchildren(self.readings)]
        groups += [self._group(b, True, f"{where}/IntervalBlocks") for b in mr.iterchildren(self.blocks)]
        if len(self.times) > _INTERNED_MAX:
            self.times.clear()
        if len(self.interned) > _INTERNED_MAX:
            self.interned.clear()
        return Meter(identifiers(up) if up is not None else [], identifiers(meter) if meter is not None else [],
                     groups)

    def _group(self, el: etree._Element, block: bool, path: str) -> Group:
        rt = el.find(self.reading_type)
        code = rt.get("ref") if rt is not None else None
        kind = path.rsplit("/", 1)[1]
        times: list[datetime] = []
        values: list[float] = []
        flagged: list[tuple[int, int]] = []
        missing = [0]
        try:
            if not block:
                self._values([el], path, times, values, flagged, missing)
            else:
                plain = self._plain_block(el, path)
                if plain is not None:
                    return Group(code, kind, plain[0], plain[1], flagged, 0, None)
                self._values(list(el.iterchildren(self.interval)), path, times, values, flagged, missing)
        except _Stop as stop:
            e = stop.error
            return Group(code, kind, times, values, flagged, missing[0], (e.key, e.details, e.xpath))
        return Group(code, kind, times, values, flagged, missing[0], None)

    def _time(self, stamp: str, path: str) -> datetime:
        try:
            t = self.times[stamp] = parse_time(stamp, f"{path}/timeStamp")
        except EnvelopeError as exc:
            raise _Stop(exc) from None
        return t

    def _plain_block(self, block: etree._Element, path: str) -> tuple[tuple[datetime, ...] | list[datetime],
                                                                       list[float]] | None:
        """The times and values of an IntervalBlock whose every IntervalReading has one timeStamp and
        one value, as texts, and no ReadingQualities (nearly all of them): their texts taken by
        XPath in C. None for any other block (:meth:`_values` reads it and says what is wrong)."""
        count, stamps, values, qualified = self.xpaths
        n = int(count(block))
        stamp_texts, value_texts = stamps(block), values(block)
        if len(stamp_texts) != n or len(value_texts) != n or qualified(block):
            return None
        key = tuple(stamp_texts)
        shared = self.interned.get(key)
        times = self.times
        ts: list[datetime] = []
        out: list[float] = []
        every = True
        for i, (stamp, raw) in enumerate(zip(stamp_texts, value_texts, strict=True)):
            if shared is not None:
                t = shared[i]
            else:
                t = times.get(stamp)
                if t is None:
                    clean = stamp.strip()
                    if not clean:
                        return None
                    t = times.get(clean)
                    if t is None:
                        t = self._time(clean, path)
                    times[stamp] = t
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or value != value or value in _INFINITE:
                value = _strict_number(raw, path)
                if value is None:
                    every = False
                    continue
            ts.append(t)
            out.append(value)
        if not every:
            return ts, out
        if shared is None:
            shared = self.interned[key] = tuple(ts)
        return shared, out

    def _values(self, elements: list[etree._Element], path: str, times_out: list[datetime], values_out: list[float],
                flagged: list[tuple[int, int]], missing: list[int]) -> None:
        """The readings of one register's Reading / IntervalReadings elements: each element's
        children looked at once (a lookup by path per field cost more than the rest)."""
        stamp_tag, value_tag, qualities_tag = self.stamp, self.value, self.qualities
        times, keep = self.times, KEPT_QUALITY
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
                    missing[0] += 1
                    continue
                t = times.get(stamp)
                if t is None:
                    t = self._time(stamp, path)
            if raw is None:
                continue  # a known-missing read: nothing to store
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or value != value or value in _INFINITE:
                value = _strict_number(raw, path)
                if value is None:
                    continue
            if bits & keep:
                flagged.append((len(values_out), bits & keep))
            times_out.append(t)
            values_out.append(value)


def _strict_number(raw: str, path: str) -> float | None:
    """What a value that plain ``float`` could not take (or took as NaN or infinite) is: None when
    empty, the number when it is one in another spelling, else the message is refused."""
    try:
        return decimal(raw.strip() or None, f"{path}/value")
    except EnvelopeError as exc:
        raise _Stop(exc) from None
