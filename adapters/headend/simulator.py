"""A head-end simulator that behaves like the field: thousands of meters, seeded load profiles,
a 60-day register memory, latency, missed windows, outages, replacements, relays, breakers and
contract-capacity reservations.

What it promises (and the tests check):

* **Reproducible.** Every value is a pure function of the seed, the LD_ID / device key and the
  slot, so two simulators with the same seed and clock answer the same, in any call order.
* **Fast.** A register value costs O(1) whatever its age (see :mod:`adapters.headend.profiles`):
  ``read_registers`` of 20,000 meters x 2 registers with zero latency takes about 0.2 s of CPU,
  about 0.7 s the first time, when the meters are created (checked by hand; target: well under a
  second, as the 80,000-meter collection benchmark builds on it). ``read_history`` costs a few
  microseconds per snapshot.
* **Meters appear on first sight.** A :class:`MeterRef` never seen before is a meter in service since
  :data:`IN_SERVICE_SINCE` with a register of up to 1,000 kWh then. A new ``device_key`` for a known
  LD_ID is a replacement: the new register starts between 0 and 5 kWh at the first slot asked
  about (or where :meth:`SimulatedHeadEnd.replace_meter` says), and the old device answers only for
  slots before that. Registers are keyed by ``(device_key, ld_address)``; the load profile by
  LD_ID, so a metering point keeps its shape across a replacement.
* **Registers.** Sub 1 is the cumulative import energy in kWh (three decimals); sub 2 the maximum
  current in A over the 30 minutes before the snapshot. Other sub numbers are refused.
* **Grid and memory.** Snapshots exist on the 30-minute grid only. ``read_registers`` refuses (raises
  :class:`HeadEndRejected`) a time off the grid, in the future or older than ``memory_days``;
  ``read_history`` returns the grid points inside ``[start, end]`` that are within ``memory_days`` of
  now and simply leaves older ones out (a failure entry is per metering point, so it could not say
  which slots were gone).
* **Missed windows.** With ``failure_rate`` p, ``read_registers`` fails for a fraction p of
  (meter, slot) pairs, the same pairs on every try (:class:`HeadEndTimeout` in
  ``ReadResult.failures``); ``read_history`` of the same slots succeeds, as meters keep the value.
* **Requests.** Each call is one request: it waits ``latency_s`` while holding one of
  ``concurrency`` slots; if ``timeout_s`` is set and the latency exceeds it, the call raises
  :class:`HeadEndTimeout` after ``timeout_s``. :meth:`SimulatedHeadEnd.set_outage` makes every call
  raise :class:`HeadEndUnreachable`; a rebooted meter is unreachable for ``reboot_s``.
* **Relay and breaker.** Relay off: load 0, the energy register stops. A capacity below the live load
  (by ``set_contract``, at a reservation's start, or when switching the relay back on) trips the
  breaker: relay off and ``breaker_tripped`` until ``set_relay(on)`` resets it. Households never
  draw more than 19 A on their own, so any contract of 20 A or more holds outside such cuts.
* **Reservations** change the contract at their start and restore it at their end, evaluated lazily
  against the clock on every call; a start already past takes effect at once. Overlapping
  reservations on one meter are refused, cancelling one twice is harmless, cancelling an ended
  one is refused. ``set_contract`` changes the meter's own contract (30 A when first seen; align
  it with :meth:`SimulatedHeadEnd.provision`), which a reservation in force overrides until it ends.
* **Addressing.** A :class:`MeterRef` whose ``he_id`` is set and names another head-end is an
  :class:`UnknownDevice`, as is a replaced device asked about after its replacement.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from adapters.headend.meters import (
    INF,
    Reservation,
    ReservationInfo,
    ReservationState,
    SimMeter,
    Segment,
)
from adapters.headend.profiles import SLOTS_PER_DAY, LoadProfile, mix, stable_key, unit
from hub.ports import (
    SLOT_SECONDS,
    HeadEndError,
    HeadEndRejected,
    HeadEndTimeout,
    HeadEndUnreachable,
    LiveStatus,
    MeterRef,
    ReadResult,
    RegisterRead,
    UnknownDevice,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SLOT = timedelta(seconds=SLOT_SECONDS)
IN_SERVICE_SINCE = datetime(2015, 1, 1, tzinfo=UTC)
ENERGY, MAX_CURRENT = 1, 2
SUB_NUMBERS = (ENERGY, MAX_CURRENT)
DEFAULT_CONTRACT_AMPS = 30
_IN_SERVICE_X = (IN_SERVICE_SINCE - EPOCH) / SLOT


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime, what: str) -> datetime:
    if not isinstance(dt, datetime) or dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got {dt!r}")
    return dt


def _position(dt: datetime) -> float:
    return (dt - EPOCH) / SLOT


def _at_position(x: float) -> datetime:
    return EPOCH + timedelta(seconds=x * SLOT_SECONDS)


def _slot_time(n: int) -> datetime:
    return EPOCH + n * SLOT


class SimulatedHeadEnd:
    """A simulated head-end implementing :class:`hub.ports.HeadEnd` (see the module docstring)."""

    def __init__(self, he_id: int, *, seed: int, latency_s: float = 0.0, failure_rate: float = 0.0,
                 memory_days: int = 60, tz_offset_hours: float = 9, concurrency: int = 32,
                 timeout_s: float | None = None, reboot_s: float = 30.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if memory_days < 1:
            raise ValueError("memory_days must be >= 1")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if reboot_s < 0:
            raise ValueError("reboot_s must be >= 0")
        if tz_offset_hours * 2 != int(tz_offset_hours * 2) or abs(tz_offset_hours) > 14:
            raise ValueError("tz_offset_hours must be a whole number of half hours within +-14")
        self.he_id = he_id
        self.seed = seed
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.memory_days = memory_days
        self.tz_offset_hours = tz_offset_hours
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.reboot_s = reboot_s
        self.requests = 0  # requests answered or attempted, for tests and benchmarks
        self._clock = clock or utc_now
        self._tz_slots = int(tz_offset_hours * 2)
        self._outage = False
        self._profiles: dict[str, LoadProfile] = {}
        self._meters: dict[tuple[int, int], SimMeter] = {}
        self._in_service: dict[str, tuple[int, int]] = {}  # LD_ID -> the meter serving it
        self._reservation_numbers = itertools.count(1)
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"SimulatedHeadEnd(he_id={self.he_id}, seed={self.seed}, meters={len(self._meters)})"

    # the HeadEnd port ------------------------------------------------------------------------

    async def read_registers(self, meters: Sequence[MeterRef], at: datetime,
                             sub_numbers: Sequence[int]) -> ReadResult:
        subs = self._subs(sub_numbers)
        n = self._grid(at, "snapshot time")
        await self._request()
        now_x = self._now_x()
        if n > now_x:
            raise HeadEndRejected(f"snapshot time {at.isoformat()} is in the future")
        if n < now_x - self.memory_days * SLOTS_PER_DAY:
            raise HeadEndRejected(f"snapshot time {at.isoformat()} is older than the meters' "
                                  f"{self.memory_days}-day memory")
        when = _slot_time(n)
        rate = self.failure_rate
        result = ReadResult()
        reads, failures = result.reads, result.failures
        known, he_id = self._meters, self.he_id
        for ref in meters:
            m = known.get((ref.device_key, ref.ld_address))
            if (m is None or m.ld_id != ref.ld_id or (ref.he_id and ref.he_id != he_id)
                    or m.unreachable_until > now_x or m.next_event_x <= now_x):
                try:
                    m = self._reachable(ref, n, now_x)
                except HeadEndError as e:
                    failures[ref.ld_id] = e
                    continue
            if not m.has_value(n):
                failures[ref.ld_id] = self._no_value(m, n)
            elif rate and unit(m.miss_key, n) < rate:
                failures[ref.ld_id] = HeadEndTimeout(f"{ref.ld_id}: meter missed the {when.isoformat()} window")
            else:
                energy, max_current = m.snapshot(n)
                for sub in subs:
                    value = round(energy, 3) if sub == ENERGY else round(max_current, 2)
                    reads.append(RegisterRead(ref.ld_id, sub, when, value))
        return result

    async def read_history(self, meters: Sequence[MeterRef], start: datetime, end: datetime,
                           sub_numbers: Sequence[int]) -> ReadResult:
        subs = self._subs(sub_numbers)
        _aware(start, "start")
        _aware(end, "end")
        if start > end:
            raise HeadEndRejected(f"start {start.isoformat()} is after end {end.isoformat()}")
        await self._request()
        now_x = self._now_x()
        n_lo = max(-((EPOCH - start) // SLOT), math.ceil(now_x - self.memory_days * SLOTS_PER_DAY))
        n_hi = min((end - EPOCH) // SLOT, math.floor(now_x))
        result = ReadResult()
        if n_lo > n_hi:
            return result
        times = [_slot_time(n) for n in range(n_lo, n_hi + 1)]
        reads, failures = result.reads, result.failures
        for ref in meters:
            try:
                m = self._reachable(ref, n_lo, now_x)
            except HeadEndError as e:
                failures[ref.ld_id] = e
                continue
            lo = max(n_lo, math.ceil(m.installed_x))
            hi = n_hi if m.removed_x == INF else min(n_hi, math.ceil(m.removed_x) - 1)
            ld_id = ref.ld_id
            for n, energy, max_current in m.snapshots(lo, hi):
                when = times[n - n_lo]
                for sub in subs:
                    value = round(energy, 3) if sub == ENERGY else round(max_current, 2)
                    reads.append(RegisterRead(ld_id, sub, when, value))
        return result

    async def set_relay(self, meter: MeterRef, on: bool) -> LiveStatus:
        await self._request()
        now_x = self._now_x()
        m = self._serving(meter, now_x)
        if on:
            m.close_relay(now_x)
        else:
            m.open_relay(now_x)
        return self._status(m, now_x)

    async def set_contract(self, meter: MeterRef, amps: int) -> LiveStatus:
        self._amps(amps)
        await self._request()
        now_x = self._now_x()
        m = self._serving(meter, now_x)
        m.contract_amps = amps
        m.check_breaker(now_x)
        return self._status(m, now_x)

    async def reserve_contract(self, meter: MeterRef, amps: int, start: datetime, end: datetime) -> str:
        self._amps(amps)
        _aware(start, "start")
        _aware(end, "end")
        if end <= start:
            raise HeadEndRejected(f"reservation end {end.isoformat()} is not after its start {start.isoformat()}")
        await self._request()
        now_x = self._now_x()
        start_x, end_x = max(_position(start), now_x), _position(end)
        if end_x <= now_x:
            raise HeadEndRejected(f"reservation end {end.isoformat()} is already past")
        m = self._serving(meter, now_x)
        for r in m.reservations.values():
            if r.state in (ReservationState.PENDING, ReservationState.ACTIVE) \
                    and start_x < r.end_x and r.start_x < end_x:
                raise HeadEndRejected(f"{meter.ld_id}: overlaps reservation {r.reservation_id}")
        rid = f"HE{self.he_id}-R{next(self._reservation_numbers):06d}"
        m.reservations[rid] = Reservation(rid, amps, start_x, end_x)
        m.reschedule()
        m.advance(now_x)  # a reservation already due starts now
        return rid

    async def cancel_reservation(self, meter: MeterRef, reservation_id: str) -> None:
        await self._request()
        now_x = self._now_x()
        m = self._serving(meter, now_x)
        r = m.reservations.get(reservation_id)
        if r is None:
            raise HeadEndRejected(f"{meter.ld_id}: no reservation {reservation_id!r} on this meter")
        if r.state is ReservationState.ENDED:
            raise HeadEndRejected(f"{meter.ld_id}: reservation {reservation_id} has already ended")
        r.state = ReservationState.CANCELLED  # cancelling twice is harmless
        m.reschedule()

    async def reboot(self, meter: MeterRef) -> None:
        await self._request()
        now_x = self._now_x()
        m = self._serving(meter, now_x)
        m.unreachable_until = now_x + self.reboot_s / SLOT_SECONDS

    async def status(self, meter: MeterRef) -> LiveStatus:
        await self._request()
        now_x = self._now_x()
        return self._status(self._serving(meter, now_x), now_x)

    # simulator controls (not part of the port) ----------------------------------------------

    def set_outage(self, down: bool) -> None:
        """Take the whole head-end down (every call raises HeadEndUnreachable) or bring it back."""
        self._outage = down

    @property
    def outage(self) -> bool:
        return self._outage

    @property
    def meter_count(self) -> int:
        return len(self._meters)

    def replace_meter(self, ld_id: str, new_device_key: int, *, ld_address: int = 2,
                      at: datetime | None = None) -> MeterRef:
        """Swap the meter serving ``ld_id`` for a new device at ``at`` (default: the last grid point
        before now). The new register starts between 0 and 5 kWh; returns its reference."""
        if ld_id not in self._in_service:
            raise UnknownDevice(f"{ld_id}: no meter in service to replace")
        if (new_device_key, ld_address) in self._meters:
            raise ValueError(f"device {new_device_key} address {ld_address} is already in use")
        x = _position(_aware(at, "at")) if at is not None else math.floor(self._now_x())
        ref = MeterRef(ld_id, new_device_key, ld_address, self.he_id)
        self._meter(ref, x)
        return ref

    def provision(self, meter: MeterRef, *, contract_amps: int | None = None,
                  relay_on: bool | None = None) -> LiveStatus:
        """Set a meter's state directly, as installation would, with no request and no breaker check
        (to align the simulator with the store's contract and relay columns)."""
        now_x = self._now_x()
        m = self._serving(meter, now_x)
        if contract_amps is not None:
            m.contract_amps = self._amps(contract_amps)
        if relay_on is True and not m.relay_on:
            m.relay_on, m.breaker_tripped = True, False
            m.off[-1][1] = now_x
        elif relay_on is False:
            m.open_relay(now_x)
        return self._status(m, now_x)

    def reservations(self, meter: MeterRef | None = None) -> list[ReservationInfo]:
        """The reservations made on ``meter`` (or on every meter), states brought up to now."""
        now_x = self._now_x()
        if meter is not None:
            m = self._meters.get((meter.device_key, meter.ld_address))
            candidates = [m] if m is not None else []
        else:
            candidates = [m for m in self._meters.values() if m.reservations]
        out = []
        for m in candidates:
            m.advance(now_x)
            for r in m.reservations.values():
                out.append(ReservationInfo(r.reservation_id, m.ld_id, m.device_key, m.ld_address, r.amps,
                                           _at_position(r.start_x), _at_position(r.end_x), r.state))
        return sorted(out, key=lambda info: (info.start, info.reservation_id))

    def misses(self, meter: MeterRef, at: datetime) -> bool:
        """Whether ``read_registers`` of ``meter`` at ``at`` falls in a missed window."""
        m = self._meters.get((meter.device_key, meter.ld_address))
        key = m.miss_key if m is not None else self._miss_key(meter.device_key, meter.ld_address)
        return unit(key, self._grid(at, "at")) < self.failure_rate

    # internals -------------------------------------------------------------------------------

    async def _request(self) -> None:
        """One round trip: refused at once in an outage, else ``latency_s`` under the concurrency limit."""
        self.requests += 1
        if self._outage:
            raise HeadEndUnreachable(f"head-end {self.he_id} is unreachable")
        if self.latency_s <= 0:
            return
        async with self._limit():
            if self.timeout_s is not None and self.latency_s > self.timeout_s:
                await asyncio.sleep(self.timeout_s)
                raise HeadEndTimeout(f"head-end {self.he_id} did not answer within {self.timeout_s} s")
            await asyncio.sleep(self.latency_s)
        if self._outage:
            raise HeadEndUnreachable(f"head-end {self.he_id} went down during the request")

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore, self._semaphore_loop = asyncio.Semaphore(self.concurrency), loop
        return self._semaphore

    def _now_x(self) -> float:
        return _position(self._now())

    def _now(self) -> datetime:
        return _aware(self._clock(), "the clock's time").astimezone(UTC)

    @staticmethod
    def _grid(at: datetime, what: str) -> int:
        offset = _aware(at, what) - EPOCH
        if offset % SLOT:
            raise HeadEndRejected(f"{what} {at.isoformat()} is not on the 30-minute grid")
        return offset // SLOT

    @staticmethod
    def _subs(sub_numbers: Sequence[int]) -> tuple[int, ...]:
        unknown = [s for s in sub_numbers if s not in SUB_NUMBERS]
        if unknown:
            raise HeadEndRejected(f"no register with sub number {unknown[0]} (the meters have {SUB_NUMBERS})")
        return tuple(sub_numbers)

    @staticmethod
    def _amps(amps: int) -> int:
        if isinstance(amps, bool) or not isinstance(amps, int) or amps <= 0:
            raise HeadEndRejected(f"contract capacity must be a positive number of amperes, got {amps!r}")
        return amps

    def _miss_key(self, device_key: int, ld_address: int) -> int:
        return mix(stable_key(self.seed, "register", device_key, ld_address), 3)

    def _profile(self, ld_id: str) -> LoadProfile:
        p = self._profiles.get(ld_id)
        if p is None:
            p = self._profiles[ld_id] = LoadProfile.seeded(self.seed, ld_id, self._tz_slots)
        return p

    def _meter(self, ref: MeterRef, first_x: float) -> SimMeter:
        """The meter behind ``ref``, created on first sight; ``first_x`` is where a replacement or a
        re-installation takes effect if this sighting is one."""
        if ref.he_id and ref.he_id != self.he_id:
            raise UnknownDevice(f"{ref.ld_id}: device {ref.device_key} belongs to head-end {ref.he_id}, "
                                f"not {self.he_id}")
        key = (ref.device_key, ref.ld_address)
        m = self._meters.get(key)
        if m is None:
            m = self._install(ref, key, first_x)
        elif m.ld_id != ref.ld_id:
            self._rebind(m, ref.ld_id, first_x)
        return m

    def _install(self, ref: MeterRef, key: tuple[int, int], first_x: float) -> SimMeter:
        k = stable_key(self.seed, "register", *key)
        old_key = self._in_service.get(ref.ld_id)
        old = self._meters.get(old_key) if old_key is not None else None
        if old is not None:  # a replacement: the new register starts again from a few kWh
            x = max(first_x, old.segments[-1].start_x)
            old.removed_x = min(old.removed_x, x)
            start_value, contract = 5.0 * unit(k, 1), old.contract_amps
        else:
            x, start_value, contract = _IN_SERVICE_X, 1000.0 * unit(k, 2), DEFAULT_CONTRACT_AMPS
        m = SimMeter(ref.device_key, ref.ld_address, ref.ld_id, [Segment(x, start_value, self._profile(ref.ld_id))],
                     contract, mix(k, 3))  # as _miss_key
        self._meters[key] = m
        self._in_service[ref.ld_id] = key
        return m

    def _rebind(self, m: SimMeter, ld_id: str, first_x: float) -> None:
        """The device now serves another metering point (cleared and installed again): its register
        carries on, the new point's profile drives it from ``first_x``."""
        if m.removed_x != INF:
            raise UnknownDevice(f"{ld_id}: device {m.device_key} was replaced and is out of service")
        key = (m.device_key, m.ld_address)
        x = max(first_x, m.segments[-1].start_x)
        value = m.energy(x)
        m.segments[-1].end_x = x
        m.segments.append(Segment(x, value, self._profile(ld_id)))
        if self._in_service.get(m.ld_id) == key:
            del self._in_service[m.ld_id]
        old_key = self._in_service.get(ld_id)
        if old_key is not None:
            old = self._meters[old_key]
            old.removed_x = min(old.removed_x, x)
        m.ld_id = ld_id
        self._in_service[ld_id] = key

    def _reachable(self, ref: MeterRef, first_x: float, now_x: float) -> SimMeter:
        m = self._meter(ref, first_x)
        if m.unreachable_until > now_x:
            raise HeadEndUnreachable(f"{ref.ld_id}: comms unit is restarting")
        if m.next_event_x <= now_x:
            m.advance(now_x)
        return m

    def _serving(self, ref: MeterRef, now_x: float) -> SimMeter:
        """A meter that must be in service now (controls and status)."""
        m = self._reachable(ref, math.floor(now_x), now_x)
        if now_x >= m.removed_x:
            raise UnknownDevice(f"{ref.ld_id}: device {ref.device_key} was replaced and is out of service")
        return m

    @staticmethod
    def _no_value(m: SimMeter, n: int) -> HeadEndError:
        if n >= m.removed_x:
            return UnknownDevice(f"{m.ld_id}: device {m.device_key} was replaced before that snapshot")
        return HeadEndRejected(f"{m.ld_id}: device {m.device_key} was installed after that snapshot")

    def _status(self, m: SimMeter, now_x: float) -> LiveStatus:
        return LiveStatus(ld_id=m.ld_id, load_amps=round(m.load(now_x), 2), relay_on=m.relay_on,
                          contract_amps=m.effective_contract(), clock=self._now(),
                          breaker_tripped=m.breaker_tripped)
