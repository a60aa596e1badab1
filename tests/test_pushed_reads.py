"""Pushed reads (61968-9 MeterReadings, IEEE 1888, MQTT) are stored as usage rows alone: no
collection-log row (the usage row holds the value, the edge and the time) and no empty quote row,
which billing creates when it first imports, prices or corrects the slot. Polled reads keep both.
Both stores."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from hub.model import CollectionLog, QuoteHistory, UsageHistory
from hub.services.errors import NotFound
from tests.collecting import install_meters

DAY = datetime(2026, 3, 2, tzinfo=UTC)
SLOT = timedelta(minutes=30)


def count(hub, table: type) -> int:
    with hub.db.session() as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


def quote(hub, ld_id: str, slot: int) -> QuoteHistory | None:
    with hub.db.session() as s:
        return s.get(QuoteHistory, (ld_id, 1, DAY + slot * SLOT))


@pytest.fixture
def pushed(hub):
    """Two meters' first four slots pushed (register 1 advancing 0.5 a slot)."""
    lds = install_meters(hub, {1: 2})
    values = [(ld, 1, DAY + s * SLOT, 100.0 + s * 0.5) for ld in lds for s in range(4)]
    report = hub.collection.ingest_values(values, "cim:HES")
    assert report["stored"] == len(values) and not report["rejected"]
    return hub, lds


def test_pushed_reads_write_usage_rows_alone(pushed):
    hub, lds = pushed
    assert count(hub, UsageHistory) == 8
    assert count(hub, CollectionLog) == 0 and count(hub, QuoteHistory) == 0
    with hub.db.session() as s:
        row = s.get(UsageHistory, (lds[0], 1, DAY + 2 * SLOT))
    assert (row.register_value, row.increment, row.source) == (101.0, 0.5, "cim:HES")


def test_pushing_the_same_reads_again_changes_nothing(pushed):
    hub, lds = pushed
    again = hub.collection.ingest_values([(ld, 1, DAY + s * SLOT, 100.0 + s * 0.5) for ld in lds for s in range(4)],
                                         "cim:HES")
    assert again["stored"] == 0 and again["duplicates"] == 8
    assert (count(hub, UsageHistory), count(hub, QuoteHistory), count(hub, CollectionLog)) == (8, 0, 0)


def test_pseudo_billing_creates_and_prices_the_quote_rows_of_pushed_reads(pushed):
    hub, lds = pushed
    assert hub.billing.simulate(DAY, DAY + timedelta(days=1))["updated"] == 8
    assert count(hub, QuoteHistory) == 8
    q = quote(hub, lds[0], 3)
    assert (q.increment, q.source, q.corrected) == (0.5, "simulated", False)
    assert quote(hub, lds[0], 0).increment is None  # the first read has no increment to bill
    assert hub.billing.simulate(DAY, DAY + timedelta(days=1))["updated"] == 8  # again: the same rows
    assert count(hub, QuoteHistory) == 8


def test_a_quote_import_creates_the_quote_rows_of_pushed_reads_only(pushed):
    hub, lds = pushed
    reply = ("ld_id,sub_number,measured_time,estimated_charge\n"
             f"{lds[0]},1,{(DAY + SLOT).isoformat()},12.5\n"
             f"{lds[0]},1,{(DAY + 40 * SLOT).isoformat()},1.0\n")  # no usage row: unknown, as before
    report = hub.billing.import_quotes(io.StringIO(reply))
    assert report.updated == 1 and len(report.unknown) == 1
    q = quote(hub, lds[0], 1)
    assert (q.estimated_charge, q.source) == (12.5, "billing")
    assert count(hub, QuoteHistory) == 1


def test_a_manual_correction_of_a_pushed_read_creates_its_quote_row(pushed):
    hub, lds = pushed
    fixed = hub.billing.correct(lds[1], 1, DAY + 2 * SLOT, 0.75, estimated_charge=3.0)
    assert fixed["corrected"] and fixed["usage_version"] == 1
    q = quote(hub, lds[1], 2)
    assert (q.increment, q.estimated_charge, q.corrected) == (0.75, 3.0, True)
    with pytest.raises(NotFound):
        hub.billing.correct(lds[1], 1, DAY + 40 * SLOT, 1.0)
    assert count(hub, QuoteHistory) == 1


def test_a_new_stretch_stored_in_one_loop_matches_the_general_way(hub):
    """A pushed stretch with nothing stored in or after it is stored in one loop over the values
    (the bulk push's case); with a later row stored it takes the general way. Both give the same rows:
    the increment from the value stored before the stretch, a gap flagged, a register going back
    flagged, and of two values of one snapshot the first."""
    fast, general = install_meters(hub, {1: 2})
    for ld in (fast, general):
        hub.collection.ingest_values([(ld, 1, DAY - SLOT, 99.0)], "before")
    hub.collection.ingest_values([(general, 1, DAY + 20 * SLOT, 500.0)], "later")
    slots = [(0, 100.0), (1, 100.5), (1, 777.0), (2, 101.0), (4, 102.0), (5, 101.5)]
    for ld in (fast, general):
        report = hub.collection.ingest_values([(ld, 1, DAY + s * SLOT, v) for s, v in slots], "cim:HES")
        assert report["stored"] == 5

    def rows(ld: str) -> list[tuple]:
        with hub.db.session() as s:
            found = s.scalars(select(UsageHistory).where(UsageHistory.ld_id == ld, UsageHistory.measured_time >= DAY,
                                                         UsageHistory.measured_time < DAY + 10 * SLOT)
                              .order_by(UsageHistory.measured_time))
            return [(r.measured_time, r.register_value, r.increment, r.quality, r.status) for r in found]

    assert rows(fast) == rows(general)
    from hub.services.quality import Quality
    increments = {t: (inc, Quality(q)) for t, _, inc, q, _ in rows(fast)}
    assert increments[DAY] == (pytest.approx(1.0), Quality.VALID)
    assert increments[DAY + SLOT][0] == pytest.approx(0.5)  # 100.5, not 777
    assert increments[DAY + 4 * SLOT] == (pytest.approx(1.0), Quality.VALID | Quality.SPANS_GAP)
    assert increments[DAY + 5 * SLOT] == (pytest.approx(-0.5), Quality.VALID | Quality.NEGATIVE_INCREMENT)


def test_a_new_stretch_marks_its_slots_for_the_usage_rollup(pushed):
    """The one-loop way writes usage rows too, so it marks their slots stale in its transaction."""
    from hub.model import UsageRollupStale

    with pushed[0].db.session() as s:
        marked = set(s.scalars(select(UsageRollupStale.measured_time)))
    assert marked == {DAY + s * SLOT for s in range(4)}
