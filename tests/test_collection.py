"""Scheduled collection (seed 2.3.3): every expected snapshot of every poll target gets a usage row,
normal or missing, with increments from consecutive register values; runs are idempotent; one
head-end's trouble never stops another's cycle. Real simulator, both stores, a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from hub.model import CollectionLog, ConcentratorComms, LogicalDevice, PhysicalDevice, QuoteHistory, UsageHistory
from hub.ports import MeterRef, RegisterRead
from hub.runtime import Hub
from hub.services.installation import Installation, LogicalDeviceInstallation
from hub.services.provisioning import CollectionReservation
from tests.collecting import (
    SLOT,
    START,
    Clock,
    collecting_hub,
    device_key,
    install_meters,
    provision,
    set_head_end,
    usage_rows,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    hub = collecting_hub(settings, clock)
    yield hub
    hub.close()


def _count(hub: Hub, model: type) -> int:
    with hub.db.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def _snapshot(hub: Hub) -> list[tuple]:
    with hub.db.session() as s:
        return [tuple(r) for r in s.execute(select(UsageHistory.__table__).order_by(
            UsageHistory.ld_id, UsageHistory.sub_number, UsageHistory.measured_time))]


async def _collect_slots(hub: Hub, clock: Clock, he_id: int, slots: int) -> list[dict]:
    runs = []
    for n in range(slots):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        runs.append(await hub.collection.collect(he_id, START + n * SLOT))
    return runs


async def test_a_cycle_stores_one_row_per_register_of_each_target_with_its_quote_and_log(chub):
    lds = install_meters(chub, {1: 4, 2: 2})
    run = await chub.collection.collect(1, START)
    assert run["state"] == "done" and run["targets"] == 4
    assert (run["expected"], run["normal"], run["missing"]) == (8, 8, 0)
    rows = usage_rows(chub)
    assert {r.ld_id for r in rows} == set(lds[:4])  # head-end 2's meters are not this cycle's
    assert {(r.sub_number, r.measured_time) for r in rows} == {(1, START), (2, START)}
    assert all(r.status == "normal" and r.register_value is not None and r.source == "scheduled" for r in rows)
    assert _count(chub, QuoteHistory) == 8 and _count(chub, CollectionLog) == 8
    with chub.db.session() as s:
        assert all(q.estimated_charge is None for q in s.scalars(select(QuoteHistory)))


async def test_increments_are_differences_of_consecutive_register_values(chub, clock):
    lds = install_meters(chub, {1: 3})
    await _collect_slots(chub, clock, 1, 4)
    head_end = chub.head_ends.port(1)
    refs = [MeterRef(ld, device_key(chub, ld), 2, 1) for ld in lds]
    memory = await head_end.read_history(refs, START, START + 3 * SLOT, [1, 2])
    truth = {(r.ld_id, r.sub_number, r.measured_time): r.value for r in memory.reads}
    for ld in lds:
        energy = usage_rows(chub, ld, 1)
        assert [r.register_value for r in energy] == [truth[(ld, 1, START + n * SLOT)] for n in range(4)]
        assert energy[0].increment is None  # no earlier value to count from
        for before, row in zip(energy, energy[1:]):
            assert row.increment == pytest.approx(row.register_value - before.register_value)
            assert row.increment >= 0 and row.quality == 1  # valid
        current = usage_rows(chub, ld, 2)
        assert [r.register_value for r in current] == [truth[(ld, 2, START + n * SLOT)] for n in range(4)]
        assert all(r.increment is None for r in current)  # a maximum register has no increments


async def test_meters_the_head_end_misses_get_missing_rows_and_the_next_value_spans_the_gap(chub, clock):
    lds = install_meters(chub, {1: 30})
    set_head_end(chub, 1, failure_rate=0.3)
    runs = await _collect_slots(chub, clock, 1, 3)
    rows = usage_rows(chub)
    assert len(rows) == 30 * 2 * 3  # every expected snapshot, read or not
    missing = [r for r in rows if r.status == "missing"]
    assert missing and all(r.register_value is None and r.increment is None and r.quality == 2 for r in missing)
    assert sum(run["missing"] for run in runs) == len(missing)
    assert sum(run["failures"].get("timeout", 0) for run in runs) * 2 == len(missing)
    spanned = 0
    for ld in lds:
        energy = usage_rows(chub, ld, 1)
        if energy[1].status == "missing" and energy[0].status == energy[2].status == "normal":
            assert energy[2].increment == pytest.approx(energy[2].register_value - energy[0].register_value)
            assert energy[2].quality & 256  # spans-gap
            spanned += 1
    assert spanned


async def test_a_replaced_meter_gives_a_negative_increment_kept_and_flagged(chub, clock):
    lds = install_meters(chub, {1: 2})
    await _collect_slots(chub, clock, 1, 2)
    old_key = device_key(chub, lds[0])
    chub.registry.import_json([{"type_id": 11, "ld_type_id": 101, "he_id": 1, "config_state": 1,
                                "serial": "SN-NEW", "mac": "02BB00000001"}], atomic=True)
    with chub.db.session() as s:
        new_key = s.scalars(select(PhysicalDevice.id).where(PhysicalDevice.serial == "SN-NEW")).one()
    chub.installation.clear(old_key)
    chub.installation.install(new_key, Installation(pd_id="PD-NEW", logical_devices=[
        LogicalDeviceInstallation(ld_id=lds[0])]))
    provision(chub, new_key)
    clock.now = START + 2 * SLOT + timedelta(minutes=1)
    await chub.collection.collect(1, START + 2 * SLOT)
    energy = usage_rows(chub, lds[0], 1)
    assert energy[2].register_value < 5.0  # the new register starts again from a few kWh
    assert energy[2].increment == pytest.approx(energy[2].register_value - energy[1].register_value)
    assert energy[2].increment < 0 and energy[2].status == "normal"
    assert energy[2].quality & 128  # negative-increment
    assert usage_rows(chub, lds[1], 1)[2].increment >= 0


async def test_poll_targets_exclude_each_condition(chub):
    lds = install_meters(chub, {1: 8}, overrides={2: {"ld_id": None}, 3: {"config_state": 0}},
                         unprovisioned={4})  # meter 2: no LD_ID, 3: config state 0, 4: use state N
    with chub.db.session() as s:
        keys = list(s.scalars(select(PhysicalDevice.id).order_by(PhysicalDevice.id)))
    chub.installation.clear(keys[4])  # meter 5: installation cleared (its LD_ID is gone)
    chub.provisioning.reserve_collection("physical-device", keys[5], CollectionReservation(
        stop_at=START - SLOT))  # meter 6: collection stopped before the slot
    with chub.db.session() as s:  # meter 7: a logical device flagged deleted that kept its LD_ID
        s.execute(update(LogicalDevice).where(LogicalDevice.ld_id == lds[6]).values(deleted=True))
    run = await chub.collection.collect(1, START)
    assert run["targets"] == 2
    assert {r.ld_id for r in usage_rows(chub)} == {lds[0], lds[7]}

    # the concentrator's reservation counts too: stop collection on head-end 1's holding concentrator
    with chub.db.session() as s:
        co_key = s.scalars(select(PhysicalDevice.concentrator_id).where(PhysicalDevice.id == keys[0])).one()
        s.execute(update(ConcentratorComms).where(ConcentratorComms.concentrator_id == co_key)
                  .values(collection_stop_at=START + SLOT))
    run = await chub.collection.collect(1, START + SLOT)
    assert run["targets"] == 0 and run["expected"] == 0
    assert {r.measured_time for r in usage_rows(chub)} == {START}


async def test_running_a_finished_cycle_again_or_importing_its_log_again_changes_nothing(chub, clock):
    install_meters(chub, {1: 6})
    set_head_end(chub, 1, failure_rate=0.3)
    await _collect_slots(chub, clock, 1, 2)
    before = _snapshot(chub)
    log_rows = _count(chub, CollectionLog)
    again = await chub.collection.collect(1, START + SLOT)
    assert again["state"] == "done"
    forced = await chub.collection.collect(1, START + SLOT, force=True)
    assert forced["missing"] == again["missing"] and forced["normal"] == again["normal"]
    with chub.db.session() as s:
        reads = [RegisterRead(r.ld_id, r.sub_number, r.measured_time, r.value)
                 for r in s.scalars(select(CollectionLog))]
    for _ in range(2):
        report = chub.collection.ingest_reads(reads, "reimport")
        assert report["stored"] == report["filled"] == 0 and report["duplicates"] == len(reads)
    assert _snapshot(chub) == before and _count(chub, CollectionLog) == log_rows


async def test_a_cycle_killed_half_way_is_finished_by_the_next_run_without_duplicates(chub, clock):
    lds = install_meters(chub, {1: 6})
    run_id, go = chub.collection.runs.begin(1, "scheduled", START)
    assert go
    # the killed process had stored the first two meters' rows, and nothing else
    chub.collection.writer.store(expected=[(ld, sub, START) for ld in lds[:2] for sub in (1, 2)],
                                 reads=[RegisterRead(ld, sub, START, 100.0 + sub) for ld in lds[:2] for sub in (1, 2)],
                                 cumulative=lambda ld, sub: sub == 1, source="scheduled", he_id=1, run_id=run_id)
    run = await chub.collection.collect(1, START)
    assert run["id"] == run_id and run["state"] == "done"
    assert (run["expected"], run["normal"]) == (12, 12)
    rows = usage_rows(chub)
    assert len(rows) == 12 and len({(r.ld_id, r.sub_number, r.measured_time) for r in rows}) == 12
    assert usage_rows(chub, lds[0], 1)[0].register_value == 101.0  # what was accepted stays


async def test_one_head_end_down_leaves_its_meters_missing_and_the_other_collects(chub):
    install_meters(chub, {1: 3, 2: 4})
    chub.head_ends.port(1).set_outage(True)
    down, up = await asyncio.gather(chub.collection.collect(1, START), chub.collection.collect(2, START))
    assert down["state"] == "done" and (down["normal"], down["missing"]) == (0, 6)
    assert down["failures"] == {"unreachable": 3}
    assert (up["normal"], up["missing"]) == (8, 0)


async def test_a_head_end_that_times_out_fails_only_its_own_requests(chub):
    install_meters(chub, {1: 4, 2: 2})
    set_head_end(chub, 1, latency_s=0.5, timeout_s=0.05)
    slow, fast = await asyncio.gather(chub.collection.collect(1, START), chub.collection.collect(2, START))
    assert slow["missing"] == 8 and slow["failures"] == {"timeout": 4}
    assert fast["normal"] == 4


async def test_an_adapter_that_cannot_be_built_leaves_its_meters_missing(chub):
    install_meters(chub, {1: 2, 2: 1})
    set_head_end(chub, 1, no_such_setting=1)
    broken, fine = await asyncio.gather(chub.collection.collect(1, START), chub.collection.collect(2, START))
    assert broken["missing"] == 4 and broken["failures"] == {"adapter-error": 2}
    assert fine["normal"] == 2


async def test_the_first_tick_backfills_from_the_meters_memory_then_collects_the_slot(settings, clock):
    hub = collecting_hub(settings, clock, backfill_hours=2)
    try:
        lds = install_meters(hub, {1: 2})
        clock.now = START + timedelta(minutes=1)
        runs = await hub.collection.catch_up(1)
        assert [r["kind"] for r in runs] == ["backfill", "scheduled"]
        times = sorted({r.measured_time for r in usage_rows(hub, lds[0], 1)})
        assert times == [START - 4 * SLOT + n * SLOT for n in range(5)]
        energy = usage_rows(hub, lds[0], 1)
        assert all(r.status == "normal" for r in energy) and energy[0].increment is None
        assert all(r.increment == pytest.approx(r.register_value - p.register_value)
                   for p, r in zip(energy, energy[1:]))

        # the hub was away 3 hours: the last 2 hours come from memory, the hour before is missing
        clock.now = START + 6 * SLOT + timedelta(minutes=1)
        runs = await hub.collection.catch_up(1)
        assert [r["kind"] for r in runs] == ["backfill", "backfill", "scheduled"]
        energy = {r.measured_time: r for r in usage_rows(hub, lds[0], 1)}
        assert [energy[START + n * SLOT].status for n in range(1, 7)] == ["missing"] + ["normal"] * 5
        assert energy[START + 2 * SLOT].quality & 256  # spans the missing slot
        assert (await hub.collection.catch_up(1))[0]["kind"] == "scheduled"  # nothing left behind
    finally:
        hub.close()


async def test_pushed_readings_are_stored_on_the_same_path_and_bad_ones_refused(chub):
    lds = install_meters(chub, {1: 2})
    set_head_end(chub, 1, failure_rate=1.0)
    await chub.collection.collect(1, START)  # every read missed: two missing rows per meter
    reads = [RegisterRead(lds[0], 1, START, 10.0), RegisterRead(lds[0], 1, START + SLOT, 10.5),
             RegisterRead("LD-UNKNOWN", 1, START, 1.0), RegisterRead(lds[1], 9, START, 1.0),
             RegisterRead(lds[1], 1, START + timedelta(minutes=7), 1.0)]
    report = chub.collection.ingest_reads(reads, "mqtt")
    assert (report["received"], report["stored"], report["filled"]) == (5, 1, 1)
    assert [r["reason"] for r in report["rejected"]] == [
        "unknown or uninstalled LD_ID", "the device type has no register 9", "measured_time is not on the 30-minute grid"]
    first, second = usage_rows(chub, lds[0], 1)
    assert (first.status, first.register_value, first.source) == ("recollected", 10.0, "mqtt")
    assert (second.status, second.increment, second.source) == ("normal", 0.5, "mqtt")
