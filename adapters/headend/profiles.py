"""Seeded 30-minute load profiles whose cumulative energy is computable in O(1) for any slot.

Time is counted in *slots* of 30 minutes since the Unix epoch (slot ``n`` starts at ``n * 1800`` s);
a float ``x`` is a position inside a slot. A household consumes, in slot ``k``::

    e(k) = base * shape(k) + g(k + 1) - g(k),   g(k) = ratio * base * shape(k) * h(k)

``shape`` is a periodic weekly curve in local time (336 slots, mean 1), ``h`` a deterministic hash
noise in [0, 1) and ``ratio < 1``. The noise telescopes, so the cumulative energy is::

    C(n) = base * S(n) + g(n)

where ``S`` is the sum of the weekly shape, closed form from a 336-entry prefix table. Every
increment is above ``base * shape(k) * (1 - ratio) > 0``, and any slot costs the same to evaluate
whether it is yesterday or sixty days ago. Between grid points energy grows linearly, which is what
relay-off intervals subtract.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

SLOT_S = 30 * 60
SLOTS_PER_DAY = 48
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
NOMINAL_VOLTS = 100.0
AMPS_PER_KWH_SLOT = 2 * 1000 / NOMINAL_VOLTS  # kWh in half an hour -> mean current in A
PEAK_FACTOR = (1.15, 1.45)  # max current in a slot against the slot's mean current
LOAD_FACTOR = (0.80, 1.15)  # instantaneous load against the slot's mean; <= the smallest peak factor
NATURAL_PEAK_CAP_A = 19.0  # households never exceed this on their own, so any contract >= 20 A holds

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix(key: int, n: int) -> int:
    """A deterministic 64-bit value for ``(key, n)`` (splitmix64): derives sub-keys from a key."""
    z = (key + n * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def unit(key: int, n: int) -> float:
    """A deterministic value in [0, 1) for ``(key, n)``: :func:`mix` inlined, as it is the hot path."""
    z = (key + n * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))


def stable_key(*parts: object) -> int:
    """A 64-bit key from ``parts`` that is the same in every process (``hash()`` of a str is not)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class WeeklyShape:
    """A weekly load curve, Monday 00:00 local first, normalised to a mean of 1."""

    name: str
    values: tuple[float, ...]
    prefix: tuple[float, ...]  # prefix[i] = sum(values[:i]), 337 entries
    minimum: float
    maximum: float

    @classmethod
    def from_days(cls, name: str, days: list[list[float]]) -> WeeklyShape:
        """Build from seven hourly curves (24 values each), interpolated to half hours."""
        raw = [v for day in days for v in _half_hourly(day)]
        mean = sum(raw) / len(raw)
        values = tuple(v / mean for v in raw)
        prefix = [0.0]
        for v in values:
            prefix.append(prefix[-1] + v)
        return cls(name, values, tuple(prefix), min(values), max(values))

    def cumulative(self, m: int) -> float:
        """Sum of the shape over week slots ``[0, m)`` counted from a Monday 00:00 (any integer m)."""
        q, i = divmod(m, SLOTS_PER_WEEK)
        return q * self.prefix[SLOTS_PER_WEEK] + self.prefix[i]


def _half_hourly(hourly: list[float]) -> list[float]:
    """48 slot values from 24 hourly ones, read at each slot's midpoint between hour midpoints."""
    out = []
    for s in range(SLOTS_PER_DAY):
        p = s / 2 - 0.25  # slot midpoint, in hours, relative to the first hour's midpoint
        lo = math.floor(p)
        f = p - lo
        out.append(hourly[lo % 24] * (1 - f) + hourly[(lo + 1) % 24] * f)
    return out


_FAMILY_WEEKDAY = [0.5, 0.4, 0.35, 0.35, 0.35, 0.45, 0.9, 1.4, 1.1, 0.7, 0.6, 0.6,
                   0.7, 0.6, 0.6, 0.7, 0.9, 1.4, 2.0, 2.3, 2.2, 1.8, 1.3, 0.8]
_FAMILY_WEEKEND = [0.6, 0.45, 0.4, 0.35, 0.35, 0.4, 0.6, 0.9, 1.2, 1.3, 1.3, 1.4,
                   1.5, 1.3, 1.2, 1.2, 1.3, 1.6, 2.1, 2.3, 2.2, 1.8, 1.4, 0.9]
_SINGLE_WEEKDAY = [0.6, 0.45, 0.35, 0.3, 0.3, 0.3, 0.5, 1.0, 0.9, 0.35, 0.3, 0.3,
                   0.3, 0.3, 0.3, 0.3, 0.35, 0.5, 0.9, 1.5, 1.9, 2.0, 1.8, 1.2]
_SINGLE_WEEKEND = [0.9, 0.7, 0.5, 0.4, 0.35, 0.35, 0.35, 0.4, 0.6, 1.0, 1.2, 1.3,
                   1.3, 1.1, 1.0, 1.0, 1.0, 1.1, 1.4, 1.7, 1.8, 1.7, 1.5, 1.2]
_SHOP_OPEN = [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.35, 0.5, 1.2, 1.9, 2.1, 2.2,
              2.2, 2.1, 2.1, 2.1, 2.0, 1.9, 1.6, 1.0, 0.5, 0.35, 0.3, 0.3]
_SHOP_CLOSED = [0.3] * 9 + [0.35] * 9 + [0.3] * 6

# (shape, share of meters, base kWh per slot range, noise ratio range)
ARCHETYPES: tuple[tuple[WeeklyShape, float, tuple[float, float], tuple[float, float]], ...] = (
    (WeeklyShape.from_days("family", [_FAMILY_WEEKDAY] * 5 + [_FAMILY_WEEKEND] * 2), 0.5, (0.10, 0.22), (0.3, 0.6)),
    (WeeklyShape.from_days("single", [_SINGLE_WEEKDAY] * 5 + [_SINGLE_WEEKEND] * 2), 0.3, (0.05, 0.12), (0.3, 0.6)),
    (WeeklyShape.from_days("shop", [_SHOP_OPEN] * 6 + [_SHOP_CLOSED]), 0.2, (0.08, 0.20), (0.2, 0.4)),
)


class LoadProfile:
    """One metering point's consumption (keyed by LD_ID, so it survives a meter replacement)."""

    __slots__ = ("ld_id", "shape", "base", "ratio", "offset", "_values", "_prefix", "_week_total",
                 "_noise_key", "_peak_key", "_load_key")

    def __init__(self, ld_id: str, shape: WeeklyShape, base: float, ratio: float, offset: int,
                 key: int) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError("the noise ratio must be in [0, 1) so every increment stays positive")
        self.ld_id = ld_id
        self.shape = shape
        self.base = base
        self.ratio = ratio
        self.offset = offset  # UTC slot -> Monday-00:00-local week slot
        self._values = shape.values
        self._prefix = shape.prefix
        self._week_total = shape.prefix[SLOTS_PER_WEEK]
        self._noise_key = mix(key, 101)
        self._peak_key = mix(key, 102)
        self._load_key = mix(key, 103)

    @classmethod
    def seeded(cls, seed: int, ld_id: str, tz_offset_slots: int) -> LoadProfile:
        """The profile of ``ld_id`` under ``seed``: archetype, base load, noise and a shift of up to
        an hour either way, so neighbours do not switch on in lockstep."""
        key = stable_key(seed, "profile", ld_id)
        pick = unit(key, 0)
        for shape, share, (lo, hi), (r_lo, r_hi) in ARCHETYPES:
            pick -= share
            if pick < 0:
                break
        base = lo + (hi - lo) * unit(key, 1)
        ratio = r_lo + (r_hi - r_lo) * unit(key, 2)
        shift = int(unit(key, 3) * 5) - 2
        bound = shape.maximum * (1 + ratio) * AMPS_PER_KWH_SLOT * PEAK_FACTOR[1]
        base = min(base, NATURAL_PEAK_CAP_A / bound)
        offset = tz_offset_slots + EPOCH_WEEKDAY * SLOTS_PER_DAY + shift
        return cls(ld_id, shape, base, ratio, offset, key)

    def energy_to(self, n: int) -> float:
        """C(n): cumulative energy (kWh, up to a constant) at the start of slot ``n``."""
        q, i = divmod(n + self.offset, SLOTS_PER_WEEK)
        base = self.base
        return (base * (q * self._week_total + self._prefix[i])
                + self.ratio * base * self._values[i] * unit(self._noise_key, n))

    def energy_at(self, x: float) -> float:
        """C at any position, linear inside a slot."""
        n = math.floor(x)
        c = self.energy_to(n)
        f = x - n
        if f:
            c += f * (self.energy_to(n + 1) - c)
        return c

    def slot_energy(self, k: int) -> float:
        return self.energy_to(k + 1) - self.energy_to(k)

    def mean_amps(self, k: int) -> float:
        return self.slot_energy(k) * AMPS_PER_KWH_SLOT

    def peak_amps(self, k: int) -> float:
        """The highest current drawn in slot ``k`` (the max-current register's value for it)."""
        return self.slot_energy(k) * self.peak_per_kwh(k)

    def peak_per_kwh(self, k: int) -> float:
        """Slot ``k``'s peak current per kWh consumed in it."""
        lo, hi = PEAK_FACTOR
        return AMPS_PER_KWH_SLOT * (lo + (hi - lo) * unit(self._peak_key, k))

    def load_amps(self, x: float) -> float:
        """The current drawn at position ``x``; varies minute by minute, never above the slot's peak."""
        lo, hi = LOAD_FACTOR
        return self.mean_amps(math.floor(x)) * (lo + (hi - lo) * unit(self._load_key, math.floor(x * 30)))
