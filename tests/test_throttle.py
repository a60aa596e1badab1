"""Head-end throttling: priorities (controls, collection, re-collection, reboot), shares that keep
slots free for urgent work, per-concentrator limits, and the 30-minute collection carrying on while
a mass reboot keeps a head-end saturated (against the real simulator)."""

from __future__ import annotations

import asyncio
import time

import pytest

from hub.headends import HeadEndAccess
from hub.throttle import Priority, PriorityLimiter, Throttle, ThrottleLimits
from tests.collecting import START, Clock, collecting_hub, install_meters, set_head_end

# the limiter ------------------------------------------------------------------------------------


async def _hold(limiter: PriorityLimiter, priority: Priority, log: list[str], release: asyncio.Event) -> None:
    await limiter.acquire(priority)
    log.append(priority.label)
    try:
        await release.wait()
    finally:
        limiter.release(priority)


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_whatever_the_arrival_order():
    limiter = PriorityLimiter(1)
    await limiter.acquire(Priority.COLLECTION)  # the slot is taken
    order: list[str] = []
    go = asyncio.Event()
    go.set()  # each holder releases at once, handing the slot on
    waiters = [asyncio.create_task(_hold(limiter, p, order, go))
               for p in (Priority.REBOOT, Priority.RECOLLECTION, Priority.COLLECTION, Priority.CONTROL)]
    await asyncio.sleep(0)
    assert limiter.waiting == {Priority.REBOOT: 1, Priority.RECOLLECTION: 1, Priority.COLLECTION: 1,
                               Priority.CONTROL: 1}
    limiter.release(Priority.COLLECTION)
    await asyncio.gather(*waiters)
    assert order == ["control", "collection", "recollection", "reboot"]
    assert limiter.in_use == 0


async def test_equal_priorities_are_served_in_arrival_order():
    limiter = PriorityLimiter(1)
    await limiter.acquire(Priority.CONTROL)
    order: list[int] = []

    async def one(n: int) -> None:
        await limiter.acquire(Priority.REBOOT)
        order.append(n)
        limiter.release(Priority.REBOOT)

    tasks = [asyncio.create_task(one(n)) for n in range(5)]
    await asyncio.sleep(0)
    limiter.release(Priority.CONTROL)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_reboots_never_hold_more_than_their_share_so_collection_gets_a_slot_at_once():
    limits = ThrottleLimits(head_end=4, reboot_share=0.5)
    limiter = PriorityLimiter(4, limits.caps(4))
    release = asyncio.Event()
    log: list[str] = []
    reboots = [asyncio.create_task(_hold(limiter, Priority.REBOOT, log, release)) for _ in range(10)]
    await asyncio.sleep(0)
    assert limiter.held[Priority.REBOOT] == 2 and limiter.waiting[Priority.REBOOT] == 8
    # two slots stay free: collection and a control get theirs without waiting
    await asyncio.wait_for(limiter.acquire(Priority.COLLECTION), 0.01)
    await asyncio.wait_for(limiter.acquire(Priority.CONTROL), 0.01)
    assert limiter.in_use == 4
    release.set()
    limiter.release(Priority.COLLECTION)
    limiter.release(Priority.CONTROL)
    await asyncio.gather(*reboots)
    assert limiter.peak[Priority.REBOOT] == 2 and limiter.granted[Priority.REBOOT] == 10


async def test_a_cancelled_waiter_leaves_no_slot_behind():
    limiter = PriorityLimiter(1)
    await limiter.acquire(Priority.CONTROL)
    waiter = asyncio.create_task(limiter.acquire(Priority.REBOOT))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release(Priority.CONTROL)
    assert limiter.in_use == 0
    await asyncio.wait_for(limiter.acquire(Priority.REBOOT), 0.01)  # the slot is free again
    assert limiter.in_use == 1


async def test_releasing_a_slot_not_held_is_an_error():
    with pytest.raises(RuntimeError):
        PriorityLimiter(2).release(Priority.CONTROL)


async def test_single_meter_work_is_limited_per_concentrator_and_runs_side_by_side_across_them():
    throttle = Throttle(ThrottleLimits(head_end=8, concentrator=1))
    in_flight: dict[str, int] = {"CO-A": 0, "CO-B": 0}
    peak: dict[str, int] = {"CO-A": 0, "CO-B": 0}

    async def control(co: str) -> None:
        async with throttle.slot(Priority.CONTROL, co):
            in_flight[co] += 1
            peak[co] = max(peak[co], in_flight[co])
            await asyncio.sleep(0.01)
            in_flight[co] -= 1

    started = time.perf_counter()
    await asyncio.gather(*(control(co) for co in ("CO-A", "CO-B") for _ in range(3)))
    elapsed = time.perf_counter() - started
    assert peak == {"CO-A": 1, "CO-B": 1}
    assert elapsed < 0.06 * 2  # three rounds, the two concentrators in parallel (not six rounds)
    assert throttle.snapshot()["concentrators"] == {}  # idle concentrators are dropped


def test_head_end_row_overrides_are_checked():
    base = ThrottleLimits()
    assert ThrottleLimits.from_settings(base, {"reboot_share": 0.25, "concentrator_concurrency": 1}) == \
        ThrottleLimits(head_end=8, concentrator=1, recollect_share=0.75, reboot_share=0.25)
    with pytest.raises(ValueError, match="unknown throttle setting 'reboot_shares'"):
        ThrottleLimits.from_settings(base, {"reboot_shares": 0.25})
    with pytest.raises(ValueError, match="reboot_share"):
        ThrottleLimits.from_settings(base, {"reboot_share": 0})
    with pytest.raises(ValueError, match="must be an object"):
        ThrottleLimits.from_settings(base, 3)  # type: ignore[arg-type]


# against the simulator --------------------------------------------------------------------------

async def test_head_end_row_throttle_settings_reach_the_access_and_not_the_adapter(settings):
    hub = collecting_hub(settings, Clock())
    try:
        install_meters(hub, {1: 1})
        set_head_end(hub, 1, concurrency=6, throttle={"reboot_share": 0.5, "concentrator_concurrency": 3})
        access = await hub.run(hub.head_ends.access, 1)  # the simulator refuses unknown settings: it was built
        snap = access.throttle.snapshot()
        assert snap["limits"] == {"head_end_concurrency": 6, "concentrator_concurrency": 3,
                                  "recollect_share": 0.75, "reboot_share": 0.5}
        assert snap["head_end"]["caps"]["reboot"] == 3
    finally:
        hub.close()


async def test_collection_completes_while_a_mass_reboot_keeps_the_head_end_saturated(settings):
    """40 meters, a head-end limit of 4 requests and 100 ms per request: the mass reboot alone needs
    at least 40 / 2 x 0.1 = 2 s (it may hold half the slots). The 30-minute cycle, 8 requests of 5
    meters, asked for while the reboots queue, completes with every meter read well before the
    job ends."""
    clock = Clock()
    hub = collecting_hub(settings, clock, batch_size=5)
    hub.controls.clock = clock
    hub.reboot_jobs.settings = hub.settings.controls.model_copy(update={"progress_every": 2})
    try:
        install_meters(hub, {1: 40})
        set_head_end(hub, 1, latency_s=0.1, reboot_s=0, concurrency=4)
        job = await hub.reboot_jobs.start(_reboot_all(he_id=1))
        assert job["total"] == 40
        access: HeadEndAccess = await hub.run(hub.head_ends.access, 1)
        await asyncio.sleep(0.25)  # the reboots fill their share and queue behind it
        limiter = access.throttle.head_end
        assert limiter.held[Priority.REBOOT] == 2 and limiter.waiting[Priority.REBOOT] > 0

        started = time.perf_counter()
        run = await hub.collection.collect(1, START)
        collection_s = time.perf_counter() - started
        progress = await hub.run(hub.reboot_jobs.get, job["id"])

        assert run["targets"] == 40 and run["normal"] == run["expected"] == 80 and run["missing"] == 0
        assert progress["state"] == "running" and progress["pending"] > 0, progress
        assert collection_s < 1.0, collection_s  # 8 requests over >= 2 free slots: ~0.4 s of head-end time
        assert limiter.peak[Priority.REBOOT] == 2  # reboots never held more than their share
        assert limiter.peak[Priority.COLLECTION] >= 2

        done = await hub.reboot_jobs.wait(job["id"], timeout=30)
        assert done["state"] == "done" and done["done"] == 40 and done["failed"] == 0
        print(f"\ncollection of 40 meters during a mass reboot: {collection_s:.2f} s; the job had "
              f"{progress['pending']} of 40 devices still to reboot when it finished")
    finally:
        hub.close()


async def test_a_control_overtakes_queued_reboots(settings):
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.controls.clock = clock
    try:
        ld_ids = install_meters(hub, {1: 30})
        set_head_end(hub, 1, latency_s=0.05, reboot_s=0, concurrency=2)
        job = await hub.reboot_jobs.start(_reboot_all(he_id=1))
        await asyncio.sleep(0.12)
        started = time.perf_counter()
        result = await hub.controls.status(ld_ids[-1])
        waited = time.perf_counter() - started
        progress = await hub.run(hub.reboot_jobs.get, job["id"])
        assert result["status"]["ld_id"] == ld_ids[-1]
        assert progress["pending"] > 10  # the control did not wait for the queued reboots
        assert waited < 0.2, waited  # one request of 50 ms, plus at most one in flight ahead of it
        await hub.reboot_jobs.wait(job["id"], timeout=30)
    finally:
        hub.close()


def _reboot_all(**search):  # type: ignore[no-untyped-def]
    from hub.services.jobs import RebootJobIn

    return RebootJobIn.model_validate({"search": search, "actor": "test"})
