"""The head-end simulator behaves like a field of meters behind one head-end: reproducible seeded
load profiles, a 60-day memory, missed windows, outages, timeouts, replacements, relays, breakers
and contract-capacity reservations. Pure unit tests: no database."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from adapters.headend import (
    HeadEndConfigError,
    ReservationState,
    SimulatedHeadEnd,
    build_head_end,
)
from adapters.headend.profiles import ARCHETYPES, SLOTS_PER_DAY
from hub.ports import (
    HeadEnd,
    HeadEndRejected,
    HeadEndTimeout,
    HeadEndUnreachable,
    MeterRef,
    ReadResult,
    UnknownDevice,
)

NOW = datetime(2025, 6, 11, 0, 0, tzinfo=UTC)  # a Wednesday, 09:00 in Tokyo
SLOT = timedelta(minutes=30)
JST = timedelta(hours=9)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def refs(count: int, *, start: int = 1, he_id: int = 1) -> list[MeterRef]:
    return [MeterRef(f"LD{n:06d}", n, 2, he_id) for n in range(start, start + count)]


def sim_at(clock: Clock | None = None, **options) -> SimulatedHeadEnd:
    options.setdefault("seed", 42)
    return SimulatedHeadEnd(1, clock=clock or Clock(), **options)


def values(result: ReadResult, sub: int = 1) -> dict[tuple[str, datetime], float]:
    return {(r.ld_id, r.measured_time): r.value for r in result.reads if r.sub_number == sub}


async def energy(sim: SimulatedHeadEnd, meter: MeterRef, at: datetime) -> float:
    result = await sim.read_registers([meter], at, [1])
    assert not result.failures, result.failures
    return result.reads[0].value


# the port and the registry ----------------------------------------------------------------------

def test_the_simulator_implements_the_head_end_port():
    assert isinstance(sim_at(), HeadEnd)


def test_the_registry_builds_a_simulator_from_a_head_end_row():
    he = build_head_end(3, "simulator", {"seed": 5, "latency_s": 0.01, "failure_rate": 0.1})
    assert isinstance(he, SimulatedHeadEnd) and isinstance(he, HeadEnd)
    assert (he.he_id, he.seed, he.latency_s, he.failure_rate) == (3, 5, 0.01, 0.1)
    assert build_head_end(4, "simulator", {}).seed == 4  # the seed defaults to the head-end ID


@pytest.mark.parametrize("adapter, settings, message", [
    ("telepathy", {}, "unknown adapter 'telepathy'"),
    ("simulator", {"failure_rate": 2}, "failure_rate"),
    ("simulator", {"latency": 1}, "latency"),  # a typo is not silently ignored
    ("simulator", {"tz_offset_hours": 9.2}, "half hours"),
])
def test_the_registry_refuses_unknown_adapters_and_bad_settings(adapter, settings, message):
    with pytest.raises(HeadEndConfigError, match=message):
        build_head_end(1, adapter, settings)


# load profiles ------------------------------------------------------------------------------------

async def test_the_same_seed_gives_the_same_readings_in_any_call_order():
    meters = refs(50)
    start = NOW - timedelta(days=2)
    a = await sim_at().read_history(meters, start, NOW, [1, 2])
    b_sim = sim_at()
    b = ReadResult()
    for meter in reversed(meters):  # another order, one meter at a time
        part = await b_sim.read_history([meter], start, NOW, [1, 2])
        b.reads.extend(part.reads)
    assert sorted(a.reads, key=repr) == sorted(b.reads, key=repr)
    other = await sim_at(seed=43).read_history(meters, start, NOW, [1])
    assert values(other) != values(a)


async def test_evenings_use_more_energy_than_nights_in_local_time():
    result = await sim_at().read_history(refs(200), NOW - timedelta(days=7), NOW, [1])
    by_meter: dict[str, list[tuple[datetime, float]]] = {}
    for r in result.reads:
        by_meter.setdefault(r.ld_id, []).append((r.measured_time, r.value))
    night, evening = [], []
    for series in by_meter.values():
        for (t0, v0), (_, v1) in zip(series, series[1:]):
            hour = (t0 + JST).hour
            if 2 <= hour < 5:
                night.append(v1 - v0)
            elif 18 <= hour < 22:
                evening.append(v1 - v0)
    assert sum(evening) / len(evening) > 2.5 * sum(night) / len(night)


async def test_the_time_zone_moves_the_daily_shape():
    meter = refs(1)
    tokyo = await sim_at().read_history(meter, NOW - timedelta(days=1), NOW, [1])
    utc = await sim_at(tz_offset_hours=0).read_history(meter, NOW - timedelta(days=1), NOW, [1])
    assert values(tokyo) != values(utc)


def test_shops_close_on_sundays():
    shop = next(shape for shape, *_ in ARCHETYPES if shape.name == "shop")
    monday_noon, sunday_noon = 24, 6 * SLOTS_PER_DAY + 24
    assert shop.values[sunday_noon] < shop.values[monday_noon] / 3
    for shape, *_ in ARCHETYPES:
        assert sum(shape.values) / len(shape.values) == pytest.approx(1.0)


async def test_every_increment_is_positive_and_reads_agree_with_history():
    clock = Clock()
    sim = sim_at(clock)
    meters = refs(100)
    history = await sim.read_history(meters, NOW - timedelta(days=3), NOW, [1, 2])
    for sub in (1, 2):
        stored = values(history, sub)
        for offset in (0, 1, 7, 48, 143):
            at = NOW - offset * SLOT
            live = values(await sim.read_registers(meters, at, [sub]), sub)
            assert live == {k: v for k, v in stored.items() if k[1] == at}
    energy_by_meter: dict[str, list[float]] = {}
    for r in sorted(history.reads, key=lambda r: (r.ld_id, r.measured_time)):
        if r.sub_number == 1:
            energy_by_meter.setdefault(r.ld_id, []).append(r.value)
        else:
            assert 0 < r.value < 20  # amperes, below any standard contract
    for series in energy_by_meter.values():
        assert len(series) == 3 * SLOTS_PER_DAY + 1
        assert all(b > a for a, b in zip(series, series[1:]))
        assert 0 < series[-1] - series[0] < 3 * 24 * 2  # kWh over three days of a household or shop


async def test_readings_do_not_change_as_time_passes():
    clock = Clock()
    sim = sim_at(clock)
    meter = refs(1)
    before = await energy(sim, meter[0], NOW - SLOT)
    clock.advance(timedelta(days=5, minutes=13))
    assert await energy(sim, meter[0], NOW - SLOT) == before


# grid and memory --------------------------------------------------------------------------------

async def test_reads_off_the_grid_or_in_the_future_are_refused():
    sim = sim_at()
    with pytest.raises(HeadEndRejected, match="grid"):
        await sim.read_registers(refs(1), NOW + timedelta(minutes=10), [1])
    with pytest.raises(HeadEndRejected, match="future"):
        await sim.read_registers(refs(1), NOW + SLOT, [1])
    with pytest.raises(HeadEndRejected, match="sub number 7"):
        await sim.read_registers(refs(1), NOW, [1, 7])
    with pytest.raises(ValueError):
        await sim.read_registers(refs(1), NOW.replace(tzinfo=None), [1])


async def test_the_memory_holds_sixty_days_and_older_slots_are_absent():
    clock = Clock()
    sim = sim_at(clock, memory_days=60)
    meter = refs(1)
    result = await sim.read_history(meter, NOW - timedelta(days=90), NOW + timedelta(days=1), [1])
    times = sorted(r.measured_time for r in result.reads)
    assert (times[0], times[-1], len(times)) == (NOW - timedelta(days=60), NOW, 60 * SLOTS_PER_DAY + 1)
    assert not result.failures
    with pytest.raises(HeadEndRejected, match="memory"):
        await sim.read_registers(meter, NOW - timedelta(days=60, minutes=30), [1])

    clock.advance(timedelta(days=1))
    later = await sim.read_history(meter, NOW - timedelta(days=90), NOW, [1])
    assert min(r.measured_time for r in later.reads) == NOW - timedelta(days=59)


# missed windows, outages, timeouts, latency --------------------------------------------------------

async def test_missed_windows_follow_the_failure_rate_and_history_still_has_them():
    sim = sim_at(failure_rate=0.1)
    meters = refs(2000)
    slots = [NOW - k * SLOT for k in range(5)]
    missed = {at: set((await sim.read_registers(meters, at, [1, 2])).failures) for at in slots}
    total = sum(len(ids) for ids in missed.values())
    assert 0.08 * 10_000 < total < 0.12 * 10_000
    for at in slots:  # the same meters miss the same windows on every try
        again = await sim.read_registers(meters, at, [1])
        assert set(again.failures) == missed[at]
        assert all(isinstance(e, HeadEndTimeout) for e in again.failures.values())
        assert all(sim.misses(m, at) == (m.ld_id in missed[at]) for m in meters[:200])
    gone = [m for m in meters if m.ld_id in missed[NOW]]
    history = await sim.read_history(gone, NOW - SLOT, NOW, [1])
    assert not history.failures
    assert {r.ld_id for r in history.reads if r.measured_time == NOW} == missed[NOW]


async def test_an_outage_makes_every_call_unreachable_until_it_ends():
    sim = sim_at()
    meter = refs(1)[0]
    sim.set_outage(True)
    calls = [
        sim.read_registers([meter], NOW, [1]),
        sim.read_history([meter], NOW - SLOT, NOW, [1]),
        sim.set_relay(meter, False),
        sim.set_contract(meter, 40),
        sim.reserve_contract(meter, 20, NOW + SLOT, NOW + 2 * SLOT),
        sim.cancel_reservation(meter, "HE1-R000001"),
        sim.reboot(meter),
        sim.status(meter),
    ]
    for call in calls:
        with pytest.raises(HeadEndUnreachable):
            await call
    sim.set_outage(False)
    assert (await sim.status(meter)).relay_on


async def test_a_request_slower_than_the_timeout_raises_a_timeout():
    sim = sim_at(latency_s=5.0, timeout_s=0.05)
    started = time.perf_counter()
    with pytest.raises(HeadEndTimeout):
        await sim.status(refs(1)[0])
    assert time.perf_counter() - started < 1.0
    sim.latency_s = 0.01
    assert (await sim.status(refs(1)[0])).contract_amps == 30


async def test_latency_is_paid_per_request_under_the_concurrency_limit():
    sim = sim_at(latency_s=0.05, concurrency=10)
    meters = refs(100)
    started = time.perf_counter()
    await asyncio.gather(*(sim.status(m) for m in meters))
    elapsed = time.perf_counter() - started
    assert 0.45 < elapsed < 1.5  # 100 requests / 10 at a time x 50 ms
    assert sim.requests == 100


# meters behind the head-end ---------------------------------------------------------------------

async def test_a_device_of_another_head_end_is_unknown():
    sim = sim_at()
    stranger = MeterRef("LD-X", 9, 2, he_id=2)
    result = await sim.read_registers([stranger, *refs(1)], NOW, [1])
    assert isinstance(result.failures["LD-X"], UnknownDevice)
    assert len(result.reads) == 1
    with pytest.raises(UnknownDevice):
        await sim.status(stranger)


async def test_a_replaced_meter_restarts_from_a_few_kwh_so_the_increment_is_negative():
    clock = Clock()
    sim = sim_at(clock)
    old = refs(1)[0]
    before = await energy(sim, old, NOW)
    assert before > 1000
    new = sim.replace_meter(old.ld_id, 900, at=NOW + SLOT)
    clock.advance(timedelta(hours=1))
    after = await energy(sim, new, NOW + SLOT)
    assert 0 <= after <= 5
    assert after - before < 0
    assert await energy(sim, new, NOW + 2 * SLOT) > after

    gone = await sim.read_registers([old], NOW + SLOT, [1])
    assert isinstance(gone.failures[old.ld_id], UnknownDevice)
    assert await energy(sim, old, NOW) == before  # the old device's last values are still there
    with pytest.raises(UnknownDevice):
        await sim.status(old)
    history = await sim.read_history([new], NOW - timedelta(days=1), clock.now, [1])
    assert min(r.measured_time for r in history.reads) == NOW + SLOT


async def test_a_new_device_key_for_a_known_metering_point_is_a_replacement():
    clock = Clock()
    sim = sim_at(clock)
    old = MeterRef("LD-SWAP", 10)
    before = await energy(sim, old, NOW - SLOT)
    new = MeterRef("LD-SWAP", 11)
    first = await energy(sim, new, NOW)
    assert first <= 5 and first - before < 0
    # the metering point keeps its load: the new register grows as the old one would have
    clock.advance(timedelta(hours=3))
    twin = sim_at(Clock(clock.now))
    swapped = await sim.read_history([new], NOW, clock.now, [1])
    unswapped = await twin.read_history([old], NOW, clock.now, [1])

    def increments(result: ReadResult) -> list[float]:
        series = [r.value for r in sorted(result.reads, key=lambda r: r.measured_time)]
        return [round(b - a, 3) for a, b in zip(series, series[1:])]

    assert len(increments(swapped)) == 6
    assert increments(swapped) == pytest.approx(increments(unswapped), abs=0.002)


async def test_a_device_installed_again_under_another_ld_id_carries_its_register_on():
    clock = Clock()
    sim = sim_at(clock)
    first = MeterRef("LD-OLD", 20)
    before = await energy(sim, first, NOW)
    clock.advance(SLOT)
    moved = MeterRef("LD-NEW", 20)
    after = await energy(sim, moved, NOW + SLOT)
    assert 0 < after - before < 2


# relay and breaker ------------------------------------------------------------------------------

async def test_relay_off_stops_the_load_and_the_energy_register():
    clock = Clock(NOW + timedelta(minutes=10))
    sim = sim_at(clock)
    meter = refs(1)[0]
    status = await sim.set_relay(meter, False)
    assert (status.relay_on, status.load_amps, status.breaker_tripped) == (False, 0.0, False)
    clock.advance(timedelta(hours=3))
    frozen = [await energy(sim, meter, NOW + k * SLOT) for k in range(1, 7)]
    assert len(set(frozen)) == 1
    maxima = await sim.read_registers([meter], NOW + 3 * SLOT, [2])
    assert maxima.reads[0].value == 0.0
    status = await sim.set_relay(meter, True)
    assert status.relay_on and status.load_amps > 0
    clock.advance(timedelta(hours=1))
    assert await energy(sim, meter, NOW + 8 * SLOT) > frozen[-1]
    # the energy lost is exactly what the household would have used while off
    reference = sim_at(Clock(NOW + timedelta(hours=5)))
    full = [await energy(reference, meter, NOW + k * SLOT) for k in (0, 8)]
    assert full[1] - full[0] > await energy(sim, meter, NOW + 8 * SLOT) - await energy(sim, meter, NOW)


async def test_a_capacity_cut_below_the_live_load_trips_the_breaker():
    clock = Clock(NOW + timedelta(hours=10))  # 19:00 in Tokyo, evening load
    sim = sim_at(clock)
    meters = refs(20)
    statuses = [await sim.status(m) for m in meters]
    meter, live = max(zip(meters, statuses), key=lambda pair: pair[1].load_amps)
    assert live.load_amps > 2
    tripped = await sim.set_contract(meter, 1)
    assert (tripped.relay_on, tripped.breaker_tripped, tripped.contract_amps) == (False, True, 1)
    assert tripped.load_amps == 0.0
    again = await sim.set_relay(meter, True)  # still overloaded: it trips at once
    assert again.breaker_tripped and not again.relay_on
    await sim.set_contract(meter, 40)
    back = await sim.set_relay(meter, True)
    assert (back.relay_on, back.breaker_tripped, back.contract_amps) == (True, False, 40)
    fine = await sim.set_contract(meter, 30)  # above the load: no trip
    assert fine.relay_on and not fine.breaker_tripped


async def test_provision_aligns_the_meter_with_the_store_without_a_request():
    sim = sim_at(latency_s=5.0)
    meter = refs(1)[0]
    status = sim.provision(meter, contract_amps=60, relay_on=False)
    assert (status.contract_amps, status.relay_on, sim.requests) == (60, False, 0)


# reservations -----------------------------------------------------------------------------------

async def test_a_reservation_changes_the_contract_at_its_start_and_restores_it_at_its_end():
    clock = Clock()
    sim = sim_at(clock)
    meter = refs(1)[0]
    start, end = NOW + timedelta(hours=2), NOW + timedelta(hours=4)
    rid = await sim.reserve_contract(meter, 60, start, end)
    assert (await sim.status(meter)).contract_amps == 30
    assert [(r.reservation_id, r.state) for r in sim.reservations(meter)] == [(rid, ReservationState.PENDING)]
    clock.now = start
    assert (await sim.status(meter)).contract_amps == 60
    assert sim.reservations()[0].state is ReservationState.ACTIVE
    clock.now = end - timedelta(seconds=1)
    assert (await sim.status(meter)).contract_amps == 60
    clock.now = end
    assert (await sim.status(meter)).contract_amps == 30
    info = sim.reservations(meter)[0]
    assert (info.state, info.amps, info.start, info.end) == (ReservationState.ENDED, 60, start, end)
    assert info.ld_id == meter.ld_id
    with pytest.raises(HeadEndRejected, match="ended"):
        await sim.cancel_reservation(meter, rid)


async def test_a_reservation_applies_even_if_nobody_asks_until_after_its_end():
    clock = Clock()
    sim = sim_at(clock)
    meter = refs(1)[0]
    await sim.reserve_contract(meter, 20, NOW + SLOT, NOW + 2 * SLOT)
    clock.advance(timedelta(days=1))
    assert (await sim.status(meter)).contract_amps == 30
    assert sim.reservations(meter)[0].state is ReservationState.ENDED


async def test_a_reservation_below_the_load_at_its_start_trips_the_breaker_then():
    clock = Clock()
    sim = sim_at(clock)
    meters = refs(20)
    start = NOW + timedelta(hours=10)  # 19:00 in Tokyo
    for m in meters:
        await sim.reserve_contract(m, 1, start, start + timedelta(hours=1))
    before = [await sim.status(m) for m in meters]
    assert all(s.relay_on and s.contract_amps == 30 for s in before)
    clock.now = start + timedelta(hours=2)
    after = [await sim.status(m) for m in meters]
    assert all(s.breaker_tripped and not s.relay_on and s.contract_amps == 30 for s in after)
    start_energy = await energy(sim, meters[0], start)
    assert await energy(sim, meters[0], start + 4 * SLOT) == start_energy  # no supply since the trip


async def test_cancelling_a_reservation_releases_it_and_restores_the_contract_now():
    clock = Clock()
    sim = sim_at(clock)
    meter = refs(1)[0]
    pending = await sim.reserve_contract(meter, 40, NOW + timedelta(hours=1), NOW + timedelta(hours=2))
    await sim.cancel_reservation(meter, pending)
    await sim.cancel_reservation(meter, pending)  # twice is harmless
    clock.advance(timedelta(hours=1, minutes=30))
    assert (await sim.status(meter)).contract_amps == 30

    active = await sim.reserve_contract(meter, 50, clock.now - SLOT, clock.now + SLOT)  # starts at once
    assert (await sim.status(meter)).contract_amps == 50
    await sim.cancel_reservation(meter, active)
    assert (await sim.status(meter)).contract_amps == 30
    states = {r.reservation_id: r.state for r in sim.reservations(meter)}
    assert states == {pending: ReservationState.CANCELLED, active: ReservationState.CANCELLED}
    with pytest.raises(HeadEndRejected, match="no reservation"):
        await sim.cancel_reservation(meter, "HE1-R999999")


async def test_overlapping_or_past_reservations_are_refused():
    sim = sim_at()
    meter = refs(1)[0]
    await sim.reserve_contract(meter, 40, NOW + timedelta(hours=1), NOW + timedelta(hours=3))
    with pytest.raises(HeadEndRejected, match="overlaps"):
        await sim.reserve_contract(meter, 20, NOW + timedelta(hours=2), NOW + timedelta(hours=4))
    with pytest.raises(HeadEndRejected, match="past"):
        await sim.reserve_contract(meter, 20, NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    with pytest.raises(HeadEndRejected, match="not after"):
        await sim.reserve_contract(meter, 20, NOW + timedelta(hours=5), NOW + timedelta(hours=5))
    with pytest.raises(HeadEndRejected, match="positive"):
        await sim.reserve_contract(meter, 0, NOW + timedelta(hours=5), NOW + timedelta(hours=6))
    assert await sim.reserve_contract(meter, 20, NOW + timedelta(hours=3), NOW + timedelta(hours=4))


async def test_set_contract_during_a_reservation_takes_over_when_it_ends():
    clock = Clock()
    sim = sim_at(clock)
    meter = refs(1)[0]
    await sim.reserve_contract(meter, 50, NOW, NOW + timedelta(hours=1))
    assert (await sim.set_contract(meter, 40)).contract_amps == 50
    clock.advance(timedelta(hours=1))
    assert (await sim.status(meter)).contract_amps == 40


# reboot -----------------------------------------------------------------------------------------

async def test_a_rebooted_meter_is_unreachable_for_a_while():
    clock = Clock()
    sim = sim_at(clock, reboot_s=60)
    meter, other = refs(2)
    await sim.reboot(meter)
    with pytest.raises(HeadEndUnreachable, match="restarting"):
        await sim.status(meter)
    result = await sim.read_registers([meter, other], NOW, [1])
    assert isinstance(result.failures[meter.ld_id], HeadEndUnreachable)
    assert [r.ld_id for r in result.reads] == [other.ld_id]
    clock.advance(timedelta(seconds=61))
    assert (await sim.status(meter)).relay_on
