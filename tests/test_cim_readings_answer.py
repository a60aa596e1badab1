"""MeterReadings answers as written (adapters/cim/readings_answer.py) and the usage series they are
read from (CimReadService.series): what a partner receives, whatever text the hub writes it from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from adapters.cim import codes
from adapters.cim.readings_answer import build_meter_readings, select_series
from hub.ports import RegisterRead
from hub.services.cim_readings import MeteringPoint, RegisterInfo, SeriesRow
from hub.services.quality import Quality
from tests.cim_messages import INTERVAL, NSMAP, REGISTER, xsd
from tests.collecting import install_meters

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SLOT = timedelta(minutes=30)
ENERGY = RegisterInfo(1, "1.0.1.8.0.255", "kWh", "cumulative")


def _valid(root) -> None:
    schema = xsd("MeterReadings")
    assert schema.validate(root), schema.error_log


def test_names_with_markup_characters_reach_the_partner_unchanged():
    point = MeteringPoint('LD<1>&"x"', 7, None, "SN&<2>\r", 3)
    rows = {point.ld_id: [SeriesRow(1, T0, 10.5, 0.25, 1, "normal")]}
    root = build_meter_readings([point], {3: [ENERGY]}, rows, [codes.reading_types()[INTERVAL]])
    _valid(root)
    assert root.findtext("m:MeterReading/m:UsagePoint/m:mRID", namespaces=NSMAP) == 'LD<1>&"x"'
    assert root.findtext("m:MeterReading/m:Meter/m:mRID", namespaces=NSMAP) == "SN&<2>\r"
    assert root.findtext("m:MeterReading/m:Meter/m:serialNumber", namespaces=NSMAP) == "SN&<2>\r"


def test_quality_flags_become_reading_qualities_in_flag_order_and_each_type_is_defined_once():
    point = MeteringPoint("LD-1", 7, "PD-1", None, 3)
    flagged = int(Quality.VALID | Quality.EDITED | Quality.ESTIMATED_FLAT)
    rows = {"LD-1": [SeriesRow(1, T0 + i * SLOT, 100 + i, 0.5 if i else None, flagged if i % 2 else 1, "normal")
                     for i in range(4)]}
    root = build_meter_readings([point], {3: [ENERGY]}, rows, [codes.reading_types()[c] for c in (INTERVAL, REGISTER)])
    _valid(root)
    q = codes.quality_codes()
    for path in ("m:MeterReading/m:IntervalBlocks/m:IntervalReadings", "m:MeterReading/m:Readings"):
        readings = root.findall(path, NSMAP)
        assert [[t.get("ref") for t in r.findall("m:ReadingQualities/m:ReadingQualityType", NSMAP)] for r in readings] \
            == [[], [q["estimated-flat"], q["edited"]], [], [q["estimated-flat"], q["edited"]]]
    assert [t.findtext("m:mRID", namespaces=NSMAP) for t in root.findall("m:ReadingQualityType", NSMAP)] == \
        sorted([q["estimated-flat"], q["edited"]])
    block = root.findall("m:MeterReading/m:IntervalBlocks/m:IntervalReadings", NSMAP)
    assert [(r.findtext("m:timeStamp", namespaces=NSMAP), r.findtext("m:value", namespaces=NSMAP)) for r in block] == \
        [("2026-01-01T00:00:00Z", None), ("2026-01-01T00:30:00Z", "0.5"), ("2026-01-01T01:00:00Z", "0.5"),
         ("2026-01-01T01:30:00Z", "0.5")]


def test_intervals_come_from_cumulative_registers_and_each_register_shows_one_register_type():
    current = RegisterInfo(2, "1.0.11.6.0.255", "A", "maximum")
    snapshot = RegisterInfo(3, "1.0.1.8.0.255", "kWh", "instantaneous")
    known = codes.reading_types()
    blocks, readings = select_series([ENERGY, current, snapshot], [known[INTERVAL]])
    assert [(rt.mrid, sub) for rt, sub in blocks] == [(INTERVAL, 1)] and readings == []
    blocks, readings = select_series([ENERGY, current, snapshot], list(known.values()))
    assert [(rt.mrid, sub) for rt, sub in blocks] == [(INTERVAL, 1)]
    assert [(rt.mrid, sub) for rt, sub in readings] == [(REGISTER, 1), ("0.8.0.6.0.1.4.0.0.0.0.0.0.0.0.0.5.0", 2),
                                                        (REGISTER, 3)]


def test_a_series_holds_the_named_registers_in_the_window_in_time_order_as_utc(hub):
    ld = install_meters(hub, {1: 1})[0]
    reads = [RegisterRead(ld, sub, T0 + i * SLOT, 100.0 + i) for sub in (1, 2) for i in range(8)]
    assert not hub.collection.ingest_reads(reads, "test")["rejected"]
    tokyo = timezone(timedelta(hours=9))
    start, end = (T0 + 2 * SLOT).astimezone(tokyo), T0 + 6 * SLOT
    both = hub.cim_reads.series([ld, "LD-none"], start, end)
    assert both["LD-none"] == []
    assert [(r.sub_number, r.measured_time) for r in both[ld]] == \
        [(sub, T0 + i * SLOT) for sub in (1, 2) for i in range(2, 6)]
    assert all(r.measured_time.tzinfo is UTC for r in both[ld])
    second = hub.cim_reads.series([ld], start, end, [2])[ld]
    assert [(r.sub_number, r.register_value) for r in second] == [(2, 100.0 + i) for i in range(2, 6)]
    assert hub.cim_reads.series([ld], start, end, [])[ld] == []
