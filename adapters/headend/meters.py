"""The state of one simulated meter: its registers, relay and breaker, contract and reservations.

A meter is one logical device on one physical device, keyed by ``(device_key, ld_address)``. Its
energy register is the household's cumulative energy (:class:`LoadProfile`) since installation,
less what the household could not draw while the relay was off. Off intervals are kept as a short
list and subtracted, so a register value stays O(1) in the age of the slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from adapters.headend.profiles import LoadProfile

INF = math.inf


@dataclass(slots=True)
class Segment:
    """A stretch of the register bound to one load profile (a new one after re-installation
    under another LD_ID; the register carries on from where it was)."""

    start_x: float
    start_value: float
    profile: LoadProfile
    start_energy: float = 0.0
    end_x: float = INF

    def __post_init__(self) -> None:
        self.start_energy = self.profile.energy_at(self.start_x)


class ReservationState(str, Enum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    amps: int
    start_x: float
    end_x: float
    state: ReservationState = ReservationState.PENDING


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """A reservation as the simulator lists it (times aware UTC)."""

    reservation_id: str
    ld_id: str
    device_key: int
    ld_address: int
    amps: int
    start: datetime
    end: datetime
    state: ReservationState


@dataclass(slots=True)
class SimMeter:
    device_key: int
    ld_address: int
    ld_id: str
    segments: list[Segment]
    contract_amps: int
    miss_key: int
    off: list[list[float]] = field(default_factory=list)  # [start_x, end_x], end INF while open
    relay_on: bool = True
    breaker_tripped: bool = False
    removed_x: float = INF  # replaced: no value from this position on
    unreachable_until: float = -INF  # rebooting
    reservations: dict[str, Reservation] = field(default_factory=dict)
    next_event_x: float = INF  # the earliest reservation start or end not yet applied

    @property
    def installed_x(self) -> float:
        return self.segments[0].start_x

    @property
    def profile(self) -> LoadProfile:
        return self.segments[-1].profile

    def has_value(self, n: int) -> bool:
        return self.segments[0].start_x <= n < self.removed_x

    def segment_at(self, x: float) -> Segment:
        segments = self.segments
        if len(segments) == 1 or x >= segments[-1].start_x:
            return segments[-1]
        for seg in reversed(segments):
            if seg.start_x <= x:
                return seg
        return segments[0]

    def energy(self, x: float) -> float:
        """The energy register (kWh) at position ``x`` (at or after installation)."""
        seg = self.segment_at(x)
        p = seg.profile
        value = seg.start_value + (p.energy_to(x) if isinstance(x, int) else p.energy_at(x)) - seg.start_energy
        if self.off:
            for start, end in self.off:
                lo = max(start, seg.start_x)
                hi = min(end, x, seg.end_x)
                if hi > lo:
                    value -= p.energy_at(hi) - p.energy_at(lo)
        return value

    def max_current(self, n: int) -> float:
        """The max-current register at snapshot ``n``: the peak of slot ``n - 1``, zero when the
        relay was off for the whole slot or the meter was not yet installed."""
        k = n - 1
        if self.segments[0].start_x >= n:
            return 0.0
        for start, end in self.off:
            if start <= k and end >= n:
                return 0.0
        return self.segment_at(max(k, self.segments[0].start_x)).profile.peak_amps(k)

    def snapshot(self, n: int) -> tuple[float, float]:
        """``(energy, max current)`` at snapshot ``n``."""
        seg = self.segments[0]
        if len(self.segments) == 1 and not self.off and seg.start_x <= n - 1:
            p = seg.profile
            c = p.energy_to(n)
            return c + seg.start_value - seg.start_energy, (c - p.energy_to(n - 1)) * p.peak_per_kwh(n - 1)
        return self.energy(n), self.max_current(n)

    def snapshots(self, lo: int, hi: int) -> Iterator[tuple[int, float, float]]:
        """``(n, energy, max current)`` for the snapshots ``lo..hi``. A meter with one profile and
        no off interval (nearly all) walks the slots reusing each cumulative value once."""
        seg = self.segments[0]
        if len(self.segments) == 1 and not self.off and seg.start_x <= lo - 1:
            p = seg.profile
            shift = seg.start_value - seg.start_energy
            prev = p.energy_to(lo - 1)
            for n in range(lo, hi + 1):
                c = p.energy_to(n)
                yield n, c + shift, (c - prev) * p.peak_per_kwh(n - 1)
                prev = c
        else:
            for n in range(lo, hi + 1):
                yield n, self.energy(n), self.max_current(n)

    def demand(self, x: float) -> float:
        """What the household would draw at ``x`` with the relay closed."""
        return self.segment_at(x).profile.load_amps(x)

    def load(self, x: float) -> float:
        return self.demand(x) if self.relay_on else 0.0

    def effective_contract(self) -> int:
        for r in self.reservations.values():
            if r.state is ReservationState.ACTIVE:
                return r.amps
        return self.contract_amps

    # relay and breaker -----------------------------------------------------------------------

    def open_relay(self, x: float, *, tripped: bool = False) -> None:
        if self.relay_on:
            self.relay_on = False
            self.off.append([x, INF])
        if tripped:
            self.breaker_tripped = True

    def close_relay(self, x: float) -> None:
        """Supply on; a breaker trip is reset. Trips again at once if the load exceeds the contract."""
        if not self.relay_on:
            self.relay_on = True
            self.off[-1][1] = x
        self.breaker_tripped = False
        self.check_breaker(x)

    def check_breaker(self, x: float) -> None:
        if self.relay_on and self.demand(x) > self.effective_contract():
            self.open_relay(x, tripped=True)

    # reservations, applied lazily against the clock -------------------------------------------

    def advance(self, now_x: float) -> None:
        """Apply every reservation start and end due by ``now_x``, in time order."""
        while self.next_event_x <= now_x:
            due = self.next_event_x
            for r in self.reservations.values():  # an end before a start at the same moment
                if r.state is ReservationState.ACTIVE and r.end_x <= due:
                    r.state = ReservationState.ENDED
            for r in self.reservations.values():
                if r.state is ReservationState.PENDING and r.start_x <= due:
                    r.state = ReservationState.ACTIVE
                    self.check_breaker(due)
            self.reschedule()

    def reschedule(self) -> None:
        nxt = INF
        for r in self.reservations.values():
            if r.state is ReservationState.PENDING:
                nxt = min(nxt, r.start_x)
            elif r.state is ReservationState.ACTIVE:
                nxt = min(nxt, r.end_x)
        self.next_event_x = nxt
