"""The collection scheduler and re-collection (seed 2.3.3, 2.3.4): ticks on the clock per head-end,
gaps the head-end left are re-read from the meters' memory at quiet times, rows past the collection
deadline stay missing for good and are reported; the REST API shows and starts all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from hub.runtime import Hub
from hub.scheduler import next_boundary
from hub.services.quality import Quality
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters, set_head_end, usage_rows


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    hub = collecting_hub(settings, clock, backfill_hours=1)
    yield hub
    hub.close()


def test_ticks_fall_on_interval_boundaries_after_the_delay() -> None:
    at = datetime(2026, 3, 2, 10, 7, 12, tzinfo=UTC)
    assert next_boundary(at, timedelta(minutes=30)) == datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert next_boundary(at, timedelta(minutes=30), timedelta(seconds=5)) == datetime(2026, 3, 2, 10, 30, 5, tzinfo=UTC)
    on_boundary = datetime(2026, 3, 2, 10, 30, 5, tzinfo=UTC)
    assert next_boundary(on_boundary, timedelta(minutes=30), timedelta(seconds=5)) == on_boundary + timedelta(minutes=30)
    assert next_boundary(at, timedelta(minutes=1)) == datetime(2026, 3, 2, 10, 8, tzinfo=UTC)


async def _collect(hub: Hub, clock: Clock, slots: int) -> None:
    for n in range(slots):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(1, START + n * SLOT)


async def test_re_collection_fills_the_gaps_from_memory_and_recomputes_the_next_increment(chub, clock):
    lds = install_meters(chub, {1: 20})
    set_head_end(chub, 1, failure_rate=0.3)
    await _collect(chub, clock, 4)
    gaps = [r for r in usage_rows(chub) if r.status == "missing"]
    assert gaps
    clock.now = START + 4 * SLOT
    report = await chub.collection.recollect()
    assert report["recollected"] == len(gaps) and report["still_missing"] == 0 and report["expired"] == 0
    rows = usage_rows(chub)
    assert not [r for r in rows if r.status == "missing"]
    truth = await chub.head_ends.port(1).read_history(
        [t.meter for t in chub.collection._prepare(1)[1]], START, START + 3 * SLOT, [1, 2])
    values = {(r.ld_id, r.sub_number, r.measured_time): r.value for r in truth.reads}
    for ld in lds:
        energy = usage_rows(chub, ld, 1)
        assert [r.register_value for r in energy] == [values[(ld, 1, START + n * SLOT)] for n in range(4)]
        effective = [r.recollected_increment if r.recollected_increment is not None else r.increment
                     for r in energy[1:]]
        assert sum(effective) == pytest.approx(energy[-1].register_value - energy[0].register_value)
        for r in energy:
            if r.status == "recollected":
                assert r.increment is None and r.quality & Quality.RECOLLECTED
    assert any(r.quality & Quality.RECALCULATED for r in rows)  # a normal row after a filled gap
    assert (await chub.collection.recollect())["recollected"] == 0  # nothing left to do


async def test_missing_rows_past_the_deadline_stay_missing_and_are_reported_once(settings, clock):
    hub = collecting_hub(settings, clock, recollect_deadline_days=1)
    try:
        install_meters(hub, {1: 3})
        hub.head_ends.port(1).set_outage(True)
        await _collect(hub, clock, 2)
        hub.head_ends.port(1).set_outage(False)
        clock.now = START + timedelta(days=2)
        report = await hub.collection.recollect()
        assert report["recollected"] == 0 and report["expired"] == 3 * 2 * 2
        assert {(r["ld_id"], r["measured_time"]) for r in report["expired_rows"]} == {
            (ld, (START + n * SLOT).isoformat()) for ld in {r.ld_id for r in usage_rows(hub)} for n in range(2)}
        rows = usage_rows(hub)
        assert all(r.status == "missing" and r.quality & Quality.EXPIRED for r in rows)
        assert (await hub.collection.recollect())["expired"] == 0  # reported once
    finally:
        hub.close()


async def test_a_tick_runs_every_head_end_and_one_failing_head_end_stops_nobody(chub, clock, monkeypatch):
    install_meters(chub, {1: 2, 2: 3})
    real = chub.collection.catch_up

    async def catch_up(he_id: int, now: datetime | None = None) -> list[dict]:
        if he_id == 1:
            raise RuntimeError("head-end 1 exploded")
        return await real(he_id, now)

    monkeypatch.setattr(chub.collection, "catch_up", catch_up)
    await chub.scheduler.tick()
    status = chub.scheduler.status()
    one, two = status["head_ends"]
    assert one["last_error"] == "RuntimeError: head-end 1 exploded"
    assert two["last_error"] is None and [r["kind"] for r in two["last_runs"]] == ["backfill", "scheduled"]
    assert {r.measured_time for r in usage_rows(chub)} == {START - 2 * SLOT, START - SLOT, START}
    monkeypatch.setattr(chub.collection, "catch_up", real)
    await chub.scheduler.tick()
    assert chub.scheduler.status()["head_ends"][0]["last_error"] is None


async def test_the_running_scheduler_collects_at_once_and_stops_cleanly(chub, clock):
    install_meters(chub, {1: 2})
    await chub.scheduler.start()
    try:
        for _ in range(200):
            if chub.scheduler.status()["head_ends"] and chub.scheduler.status()["next_tick_at"]:
                break
            await asyncio.sleep(0.02)
        status = chub.scheduler.status()
        assert status["running"] and status["head_ends"][0]["ticks"] == 1
        assert status["next_tick_at"] == (START + SLOT + timedelta(seconds=5)).isoformat()
        assert len(usage_rows(chub)) == 2 * 2 * 3  # backfilled hour and the current slot
    finally:
        await chub.scheduler.stop()
    assert not chub.scheduler.status()["running"]


@pytest.fixture
async def api(chub, aiohttp_client):  # type: ignore[no-untyped-def]
    from hub.app import create_app

    chub.settings.collection.enabled = False  # the test starts cycles itself
    return await aiohttp_client(create_app(chub))


async def test_rest_collects_a_slot_lists_runs_and_re_collects(chub, clock, api):
    install_meters(chub, {1: 4})
    set_head_end(chub, 1, failure_rate=0.5)
    resp = await api.post("/api/v1/head-ends/1/collection", json={"slot": START.isoformat()})
    assert resp.status == 200
    run = await resp.json()
    assert run["state"] == "done" and run["kind"] == "scheduled" and run["expected"] == 8 and run["missing"] > 0
    again = await (await api.post("/api/v1/head-ends/1/collection", json={"slot": START.isoformat()})).json()
    assert again["id"] == run["id"] and again["finished_at"] == run["finished_at"]  # finished: not run again

    clock.now = START + SLOT
    report = await (await api.post("/api/v1/collection/recollections", json={"he_id": 1})).json()
    assert report["recollected"] == run["missing"] and report["still_missing"] == 0

    runs = await (await api.get("/api/v1/collection/runs?he_id=1")).json()
    assert runs["total"] == 2 and {r["kind"] for r in runs["items"]} == {"scheduled", "recollect"}
    status = await (await api.get("/api/v1/collection/status")).json()
    assert status["enabled"] is False and status["head_ends_available"] is True


async def test_rest_refuses_bad_slots_and_unknown_head_ends_with_problems(chub, api):
    install_meters(chub, {1: 1})
    off_grid = await api.post("/api/v1/head-ends/1/collection", json={"slot": "2026-03-02T00:07:00Z"})
    assert off_grid.status == 422 and (await off_grid.json())["errors"][0]["field"] == "slot"
    naive = await api.post("/api/v1/head-ends/1/collection", json={"slot": "2026-03-02T00:00:00"})
    assert naive.status == 422
    unknown = await api.post("/api/v1/head-ends/99/collection", json={})
    assert unknown.status == 404 and unknown.content_type == "application/problem+json"
    assert (await api.post("/api/v1/collection/recollections", json={"he_id": 99})).status == 404
    assert (await api.get("/api/v1/collection/runs?kind=nonsense")).status == 400


async def test_without_head_end_adapters_manual_cycles_are_refused(client):
    resp = await client.post("/api/v1/head-ends/1/collection", json={})
    assert resp.status == 503 and (await resp.json())["type"].endswith("head-ends-unavailable")


async def test_re_collection_asks_the_head_end_at_its_own_lower_priority(chub, clock):
    from hub.throttle import Priority

    install_meters(chub, {1: 10})
    set_head_end(chub, 1, failure_rate=0.5)
    await _collect(chub, clock, 2)
    limiter = chub.head_ends.access(1).throttle.head_end
    before = dict(limiter.granted)
    clock.now = START + 2 * SLOT
    assert (await chub.collection.recollect())["recollected"] > 0
    assert limiter.granted[Priority.RECOLLECTION] > before.get(Priority.RECOLLECTION, 0)
    assert limiter.granted[Priority.COLLECTION] == before.get(Priority.COLLECTION, 0)
