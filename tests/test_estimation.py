"""Estimation (the E of VEE) and usage versions: linear interpolation across short gaps of cumulative
registers, flat fill at the edges, long gaps left missing, raw rows never touched, edits kept as
versions, and billing files with and without estimates.

The rules are first pinned down on hand-made series, then checked on data the real head-end
simulator produces under a test clock (a head-end missing reads makes the gaps), on both stores."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hub.config import EstimationSection
from hub.model import UsageHistory, UsageVersion
from hub.runtime import Hub
from hub.services.errors import NotFound
from hub.services.estimation import Limits, Snapshot, estimate
from hub.services.quality import Quality
from hub.services.usage import UsageEdit, UsagePeriod, UsageService
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters, set_head_end

T0 = datetime(2026, 1, 5, tzinfo=UTC)
LIMITS = Limits(max_gap_slots=4, max_flat_slots=2)
VALID, MISSING = int(Quality.VALID), int(Quality.MISSING)


def series(*values: float | None) -> list[Snapshot]:
    """One register's snapshots, a slot apart: a number is a read value, None a missing row."""
    out, last = [], None
    for n, v in enumerate(values):
        t = T0 + n * SLOT
        if v is None:
            out.append(Snapshot(t, None, None, "missing", MISSING))
        else:
            inc = None if last is None else round(v - last, 6)
            quality = VALID | (int(Quality.SPANS_GAP) if last is not None and values[n - 1] is None else 0)
            out.append(Snapshot(t, v, inc, "normal", quality))
            last = v
    return out


def flags(snap: Snapshot) -> set[str]:
    return {f.name for f in Quality if snap.quality & f}


# -- the rules on hand-made series ---------------------------------------------------------------

def test_a_short_gap_is_interpolated_linearly_and_the_increments_still_add_up():
    raw = series(10.0, None, None, None, 14.0, 15.0)
    view = estimate(raw, LIMITS)
    assert [s.register_value for s in view] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert all(s.status == "estimated" and s.version is None for s in view[1:4])
    assert all(flags(s) == {"MISSING", "ESTIMATED_INTERPOLATED"} for s in view[1:4])
    assert [s.increment for s in view[1:]] == [1.0, 1.0, 1.0, 1.0, 1.0]
    # the first actual row after the gap: its own slot's share, no longer spanning the gap
    assert view[4].status == "normal" and flags(view[4]) == {"VALID"} and raw[4].increment == 4.0
    assert sum(s.increment for s in view[1:]) == pytest.approx(15.0 - 10.0)
    assert view[0] is raw[0] and view[5] is raw[5]


def test_uneven_advance_is_shared_by_time_and_values_stay_between_their_neighbours():
    view = estimate(series(100.0, None, None, 100.9), LIMITS)
    assert [s.register_value for s in view] == [100.0, 100.3, 100.6, 100.9]
    assert [s.increment for s in view[1:]] == pytest.approx([0.3, 0.3, 0.3])


def test_an_edited_increment_after_estimates_is_kept():
    raw = series(10.0, None, 12.0)
    edited = Snapshot(raw[2].measured_time, 12.0, 1.5, "normal", VALID | int(Quality.EDITED), version=1)
    view = estimate([raw[0], raw[1], edited], LIMITS)
    assert view[1].register_value == 11.0 and view[2] is edited


def test_a_gap_longer_than_the_limit_stays_missing():
    raw = series(10.0, None, None, None, None, None, 16.0)  # 5 missing slots, the limit is 4
    view = estimate(raw, LIMITS)
    assert view == raw
    assert view[6].increment == 6.0 and view[6].quality & Quality.SPANS_GAP


def test_a_gap_of_exactly_the_limit_is_interpolated():
    view = estimate(series(10.0, None, None, None, None, 15.0), LIMITS)
    assert [s.register_value for s in view] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]


def test_the_trailing_edge_is_flat_filled_up_to_its_limit():
    view = estimate(series(10.0, 11.0, None, None, None), LIMITS)
    assert [s.register_value for s in view] == [10.0, 11.0, 11.0, 11.0, None]
    assert [s.increment for s in view[2:4]] == [0.0, 0.0]
    assert flags(view[2]) == flags(view[3]) == {"MISSING", "ESTIMATED_FLAT"}
    assert view[4].status == "missing" and not view[4].estimated


def test_the_leading_edge_is_flat_filled_backwards():
    view = estimate(series(None, None, None, 20.0, 21.0), LIMITS)
    assert [s.register_value for s in view] == [None, 20.0, 20.0, 20.0, 21.0]
    assert [s.increment for s in view] == [None, None, 0.0, 0.0, 1.0]  # nothing before the first estimate
    assert view[3].status == "normal" and view[3].increment == 0.0  # raw: None (nothing earlier was read)


def test_a_value_beyond_the_rows_given_means_a_long_gap_not_an_edge():
    raw = series(10.0, None, None)
    assert estimate(raw, LIMITS, valued_after=True) == raw
    raw = series(None, None, 12.0)
    assert estimate(raw, LIMITS, valued_before=True) == raw
    assert estimate(raw, LIMITS, valued_after=True)[1].register_value == 12.0  # only the other side matters


def test_no_interpolation_across_a_register_reset_and_none_for_non_cumulative_registers():
    reset = series(500.0, None, None, 2.0)  # a replaced meter: when it was swapped is unknown
    assert estimate(reset, LIMITS) == reset
    current = series(7.0, None, 9.0)
    assert estimate(current, LIMITS, cumulative=False) == current


def test_a_series_without_any_value_stays_missing():
    raw = series(None, None)
    assert estimate(raw, LIMITS) == raw


# -- on collected data ---------------------------------------------------------------------------

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    hub = collecting_hub(settings, clock)
    yield hub
    hub.close()


async def collect(hub: Hub, clock: Clock, first: int, count: int, he_id: int = 1) -> None:
    for n in range(first, first + count):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(he_id, START + n * SLOT)


def period(slots: int, **kw: Any) -> UsagePeriod:
    return UsagePeriod.model_validate({"from": START, "to": START + slots * SLOT, **kw})


def raw_table(hub: Hub) -> list[tuple]:
    with hub.db.session() as s:
        return [tuple(r) for r in s.execute(select(UsageHistory.__table__).order_by(
            UsageHistory.ld_id, UsageHistory.sub_number, UsageHistory.measured_time))]


def effective(item: dict[str, Any]) -> float:
    rinc = item["recollected_increment"]
    return rinc if rinc is not None else item["increment"]


async def test_gaps_the_head_end_leaves_are_interpolated_between_the_values_around_them(chub, clock):
    lds = install_meters(chub, {1: 30})
    set_head_end(chub, 1, failure_rate=0.25)
    await collect(chub, clock, 0, 12)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 12, 1)  # every meter answers at the end, so no gap is an edge
    before = raw_table(chub)
    interpolated = 0
    for ld in lds:
        raw, _ = chub.usage.usage(ld, period(13, sub_number=1, view="raw"), 1000, 0)
        view, total = chub.usage.usage(ld, period(13, sub_number=1, estimate=True), 1000, 0)
        assert total == len(view) == len(raw) == 13
        valued = [i for i, r in enumerate(raw) if r["register_value"] is not None]
        for i, (r, v) in enumerate(zip(raw, view, strict=True)):
            if r["register_value"] is not None:
                assert v["register_value"] == r["register_value"]  # actual values are shown as read
                continue
            prev = max(j for j in valued if j < i) if any(j < i for j in valued) else None
            nxt = min(j for j in valued if j > i)
            if prev is None:
                assert "estimated-flat" in v["quality"] and v["register_value"] == raw[nxt]["register_value"]
                continue
            assert v["status"] == "estimated" and "estimated-interpolated" in v["quality"]
            assert "missing" in v["quality"] and v["version"] is None and v["source"] == "estimation"
            assert raw[prev]["register_value"] <= v["register_value"] <= raw[nxt]["register_value"]
            interpolated += 1
        assert [v["register_value"] for v in view] == sorted(v["register_value"] for v in view)
        first = next(i for i, v in enumerate(view) if v["register_value"] is not None)
        advance = view[-1]["register_value"] - view[first]["register_value"]
        assert sum(effective(v) for v in view[first + 1:]) == pytest.approx(advance, abs=1e-6)
        # the maximum-current register (not cumulative) is never estimated
        current, _ = chub.usage.usage(ld, period(13, sub_number=2, estimate=True), 1000, 0)
        assert all(c["status"] != "estimated" for c in current)
    assert interpolated > 20
    assert raw_table(chub) == before  # reading estimates never writes


async def test_a_gap_longer_than_the_setting_stays_missing(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 2)
    set_head_end(chub, 1, failure_rate=1.0)
    await collect(chub, clock, 2, 3)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 5, 2)
    short = UsageService(chub.db, EstimationSection(max_gap_slots=2, max_flat_slots=2))
    view, _ = short.usage(lds[0], period(7, sub_number=1, estimate=True), 100, 0)
    assert [v["status"] for v in view] == ["normal"] * 2 + ["missing"] * 3 + ["normal"] * 2
    assert "spans-gap" in view[5]["quality"]
    wide = UsageService(chub.db, EstimationSection(max_gap_slots=3, max_flat_slots=0))
    view, _ = wide.usage(lds[0], period(7, sub_number=1, estimate=True), 100, 0)
    assert [v["status"] for v in view] == ["normal"] * 2 + ["estimated"] * 3 + ["normal"] * 2


async def test_a_meter_silent_since_its_last_read_is_flat_filled_up_to_the_setting(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 3)
    set_head_end(chub, 1, failure_rate=1.0)
    await collect(chub, clock, 3, 6)
    view, _ = chub.usage.usage(lds[0], period(9, sub_number=1, view="estimated"), 100, 0)
    last = view[2]["register_value"]
    assert [v["register_value"] for v in view[3:]] == [last] * 4 + [None] * 2  # max_flat_slots = 4
    assert all(v["quality"] == ["missing", "estimated-flat"] and v["increment"] == 0.0 for v in view[3:7])
    # a narrower window sees the same estimates: neighbours are read beyond the period
    part, _ = chub.usage.usage(lds[0], UsagePeriod.model_validate(
        {"from": START + 5 * SLOT, "to": START + 6 * SLOT, "sub_number": 1, "estimate": True}), 10, 0)
    assert part == [view[5]]


async def test_estimates_in_the_period_use_neighbours_outside_it(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 1)
    set_head_end(chub, 1, failure_rate=1.0)
    await collect(chub, clock, 1, 3)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 4, 1)
    whole, _ = chub.usage.usage(lds[0], period(5, sub_number=1, estimate=True), 100, 0)
    inner, total = chub.usage.usage(lds[0], UsagePeriod.model_validate(
        {"from": START + SLOT, "to": START + 4 * SLOT, "sub_number": 1, "estimate": True}), 100, 0)
    assert total == 3 and inner == whole[1:4]
    assert all(v["status"] == "estimated" for v in inner)


# -- versions ------------------------------------------------------------------------------------

async def test_an_edit_is_a_new_version_and_the_raw_row_stays(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 3)
    before = raw_table(chub)
    ld, when = lds[0], START + SLOT
    first = chub.usage.edit(ld, UsageEdit(sub_number=1, measured_time=when, increment=0.25, author="ops",
                                          reason="meter test current"))
    assert first["version"] == 1 and first["quality"] == ["valid", "edited"] and first["author"] == "ops"
    second = chub.usage.edit(ld, UsageEdit(sub_number=1, measured_time=when, increment=-0.5, author="ops2",
                                           reason="reversal"))
    assert second["version"] == 2 and second["quality"] == ["valid", "edited", "negative-increment"]
    assert second["register_value"] == first["register_value"]  # carried over from version 1
    assert raw_table(chub) == before

    actual, _ = chub.usage.usage(ld, period(3, sub_number=1), 10, 0)
    raw, _ = chub.usage.usage(ld, period(3, sub_number=1, view="raw"), 10, 0)
    assert actual[1]["increment"] == -0.5 and actual[1]["version"] == 2 and "edited" in actual[1]["quality"]
    assert raw[1]["version"] == 0 and raw[1]["increment"] != -0.5 and "edited" not in raw[1]["quality"]
    assert actual[0] == raw[0] and actual[2] == raw[2]

    history = chub.usage.versions(ld, 1, when)
    assert [h["version"] for h in history] == [0, 1, 2]
    assert [h["author"] for h in history] == [None, "ops", "ops2"]
    assert [h["reason"] for h in history] == [None, "meter test current", "reversal"]
    assert history[0]["increment"] == raw[1]["increment"]


async def test_an_edit_that_gives_a_missing_snapshot_a_value_is_used_by_estimation(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 1)
    set_head_end(chub, 1, failure_rate=1.0)
    await collect(chub, clock, 1, 3)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 4, 1)
    raw, _ = chub.usage.usage(lds[0], period(5, sub_number=1, view="raw"), 10, 0)
    lo, hi = raw[0]["register_value"], raw[4]["register_value"]
    middle = round(lo + (hi - lo) * 0.9, 3)  # say a technician read the display
    chub.usage.edit(lds[0], UsageEdit(sub_number=1, measured_time=START + 2 * SLOT, register_value=middle,
                                      author="field", reason="read from the display"))
    view, _ = chub.usage.usage(lds[0], period(5, sub_number=1, estimate=True), 10, 0)
    assert view[2]["register_value"] == middle and view[2]["quality"] == ["missing", "edited"]
    assert view[1]["register_value"] == pytest.approx((lo + middle) / 2)
    assert view[3]["register_value"] == pytest.approx((middle + hi) / 2)


async def test_editing_a_snapshot_that_was_never_expected_is_refused(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 1)
    with pytest.raises(NotFound):
        chub.usage.edit(lds[0], UsageEdit(sub_number=1, measured_time=START + 10 * SLOT, increment=1.0,
                                          author="ops", reason="x"))
    with pytest.raises(NotFound):
        chub.usage.edit("LD-NOPE", UsageEdit(sub_number=1, measured_time=START, increment=1.0,
                                             author="ops", reason="x"))
    with chub.db.session() as s:
        assert s.scalars(select(UsageVersion)).all() == []


async def test_a_billing_correction_becomes_an_edited_version(chub, clock):
    lds = install_meters(chub, {1: 1})
    await collect(chub, clock, 0, 2)
    before = raw_table(chub)
    fixed = chub.billing.correct(lds[0], 1, START + SLOT, 1.75, estimated_charge=50.0, author="clerk",
                                 reason="customer complaint 42")
    assert fixed["usage_version"] == 1
    assert raw_table(chub) == before
    history = chub.usage.versions(lds[0], 1, START + SLOT)
    assert history[1]["source"] == "billing-correction" and history[1]["increment"] == 1.75
    assert history[1]["quality"] == ["valid", "edited"] and history[1]["author"] == "clerk"
    actual, _ = chub.usage.usage(lds[0], period(2, sub_number=1), 10, 0)
    assert actual[1]["increment"] == 1.75 and actual[1]["version"] == 1


# -- billing files -------------------------------------------------------------------------------

def read_file(path) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


async def _gappy_day(chub: Hub, clock: Clock) -> list[str]:
    lds = install_meters(chub, {1: 10})
    set_head_end(chub, 1, failure_rate=0.3)
    await collect(chub, clock, 0, 10)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 10, 1)
    return lds


async def test_billing_files_list_missing_rows_unless_estimates_are_asked_for(chub, clock, tmp_path):
    lds = await _gappy_day(chub, clock)
    end = START + 11 * SLOT
    plain = chub.billing.export_usage("ONTIME", START, end, tmp_path / "plain.csv")
    rows = read_file(plain.path)
    missing = [r for r in rows if r["status"] == "missing"]
    assert missing and plain.missing == len(missing) and plain.estimated == 0
    assert all(r["register_value"] == "" and r["increment"] == "" and r["quality"] == "missing" for r in missing)
    assert not any(r["status"] == "estimated" for r in rows)

    before = raw_table(chub)
    est = chub.billing.export_usage("ONTIME", START, end, tmp_path / "est.csv", use_estimates=True)
    erows = read_file(est.path)
    assert [(r["ld_id"], r["sub_number"], r["measured_time"]) for r in erows] == \
        [(r["ld_id"], r["sub_number"], r["measured_time"]) for r in rows]
    estimated = [r for r in erows if r["status"] == "estimated"]
    assert estimated and est.estimated == len(estimated)
    assert all(r["sub_number"] == "1" and r["register_value"] != "" for r in estimated)
    assert all(r["quality"] in ("missing estimated-interpolated", "missing estimated-flat") for r in estimated)
    assert est.missing == plain.missing - est.estimated  # what could not be estimated is still listed
    # per register, the file's increments add up to the register's advance
    for ld in lds:
        energy = [r for r in erows if r["ld_id"] == ld and r["sub_number"] == "1" and r["register_value"]]
        advance = float(energy[-1]["register_value"]) - float(energy[0]["register_value"])
        assert sum(float(r["increment"]) for r in energy[1:]) == pytest.approx(advance, abs=1e-6)
    assert raw_table(chub) == before


async def test_the_billing_setting_turns_estimates_on(settings, clock, tmp_path):
    on = settings.model_copy(update={"billing": settings.billing.model_copy(update={"use_estimates": True})})
    hub = collecting_hub(on, clock)
    try:
        await _gappy_day(hub, clock)
        result = hub.billing.export_usage("ONTIME", START, START + 11 * SLOT, tmp_path / "f.csv")
        assert result.estimated > 0
        assert any(r["status"] == "estimated" for r in read_file(result.path))
    finally:
        hub.close()
