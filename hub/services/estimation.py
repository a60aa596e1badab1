"""Estimation of missing snapshots (the E of VEE): linear interpolation across short gaps of a
cumulative register, flat fill at its edges.

Pure functions over one register's snapshots in time order; nothing here reads or writes the store.
Estimates are for visualisation and the dashboard (and for billing files only when
``[billing] use_estimates`` asks): they are computed when read, from the latest version of each
snapshot, never stored, so a value re-collected later replaces them at once and a raw row is never
touched.

The rules, for each missing snapshot ``t`` of a cumulative register, with ``p`` the latest snapshot
before it that has a value and ``n`` the earliest after it:

* **interpolation**: ``p`` and ``n`` both exist, at most ``max_gap_slots`` missing slots lie
  between them and the register did not go back (a replaced meter: nobody knows when it was
  swapped). The value is ``v(p) + (v(n) - v(p)) x (t - p) / (n - p)``; flag
  ``estimated-interpolated``.
* **flat fill at the edges**: nothing has a value after ``t`` (the meter has not answered since
  ``p``) and ``t`` is at most ``max_flat_slots`` after ``p``: the value is ``v(p)``; or nothing
  has a value before ``t`` (the first snapshots of a new metering point) and ``t`` is at most
  ``max_flat_slots`` before ``n``: the value is ``v(n)``. Flag ``estimated-flat``.
* anything else (a longer gap, a gap across a register reset, an instantaneous or maximum
  register, whose values do not add up) stays missing.

Increments in an estimated view are differences of consecutive values in that view: each estimate
gets the share of the advance of its own slot, and so does the first actual snapshot after
estimates (its stored increment spans the whole gap), so the increments of the view still add up
to the register's advance. An edited increment is the editor's word and is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from hub.ports import SLOT_SECONDS
from hub.services.quality import Quality

SLOT = timedelta(seconds=SLOT_SECONDS)
DIGITS = 6
"""Estimated values and increments are rounded here (registers carry three decimals)."""
ESTIMATED_STATUS = "estimated"
ESTIMATION_SOURCE = "estimation"

_ESTIMATED = Quality.ESTIMATED_INTERPOLATED | Quality.ESTIMATED_FLAT
_ABOUT_INCREMENT = Quality.SPANS_GAP | Quality.NEGATIVE_INCREMENT | Quality.RECALCULATED


@dataclass(frozen=True, slots=True)
class Limits:
    """How far estimation reaches, in 30-minute slots."""

    max_gap_slots: int = 8
    max_flat_slots: int = 4

    @property
    def reach(self) -> timedelta:
        """How far beyond a period its neighbours must be read so every estimate in it is right."""
        return SLOT * (max(self.max_gap_slots, self.max_flat_slots) + 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot of a register as a view shows it (the latest version, or an estimate)."""

    measured_time: datetime
    register_value: float | None
    increment: float | None
    status: str
    quality: int
    recollected_increment: float | None = None
    source: str | None = None
    version: int | None = 0

    @property
    def has_value(self) -> bool:
        return self.register_value is not None

    @property
    def estimated(self) -> bool:
        return bool(self.quality & _ESTIMATED)


def _slots(a: datetime, b: datetime) -> float:
    return (b - a) / SLOT


def estimate(series: Sequence[Snapshot], limits: Limits, *, cumulative: bool = True,
             valued_before: bool = False, valued_after: bool = False) -> list[Snapshot]:
    """``series`` (one register, time order) with estimates in place of the missing snapshots the
    rules above allow, and the increments next to them restated (see the module docstring).

    ``valued_before`` / ``valued_after`` tell whether a snapshot with a value exists before / after
    the snapshots given: then the series has no edge on that side, only a gap too long to fill."""
    if not cumulative or not series:
        return list(series)
    known = [i for i, s in enumerate(series) if s.has_value]
    out = list(series)
    if not known:
        return out
    prev: int | None = None
    nxt_pos = 0  # index into ``known`` of the first valued snapshot after i
    for i, snap in enumerate(series):
        while nxt_pos < len(known) and known[nxt_pos] <= i:
            prev = known[nxt_pos]
            nxt_pos += 1
        if snap.has_value:
            continue
        nxt = known[nxt_pos] if nxt_pos < len(known) else None
        value, flag = _estimate_one(series, snap.measured_time, prev, nxt, limits, valued_before, valued_after)
        if value is not None:
            out[i] = replace(snap, register_value=value, status=ESTIMATED_STATUS, quality=snap.quality | flag,
                             source=ESTIMATION_SOURCE, version=None, recollected_increment=None)
    return _restate_increments(series, out)


def _estimate_one(series: Sequence[Snapshot], t: datetime, prev: int | None, nxt: int | None, limits: Limits,
                  valued_before: bool, valued_after: bool) -> tuple[float | None, int]:
    if prev is not None and nxt is not None:
        p, n = series[prev], series[nxt]
        assert p.register_value is not None and n.register_value is not None
        missing_slots = _slots(p.measured_time, n.measured_time) - 1
        if missing_slots > limits.max_gap_slots or n.register_value < p.register_value:
            return None, 0
        share = (t - p.measured_time) / (n.measured_time - p.measured_time)
        value = p.register_value + (n.register_value - p.register_value) * share
        return round(value, DIGITS), int(Quality.ESTIMATED_INTERPOLATED)
    if prev is not None and not valued_after:
        p = series[prev]
        if _slots(p.measured_time, t) <= limits.max_flat_slots:
            return p.register_value, int(Quality.ESTIMATED_FLAT)
    if nxt is not None and not valued_before:
        n = series[nxt]
        if _slots(t, n.measured_time) <= limits.max_flat_slots:
            return n.register_value, int(Quality.ESTIMATED_FLAT)
    return None, 0


def _restate_increments(raw: Sequence[Snapshot], view: list[Snapshot]) -> list[Snapshot]:
    """Increments of estimates, and of the first actual snapshot after them, as differences of
    consecutive values of the view; the flags about the increment follow."""
    last: Snapshot | None = None  # the latest snapshot with a value in the view
    after_estimate = False
    for i, snap in enumerate(view):
        if not snap.has_value:
            after_estimate = False
            continue
        if snap.estimated or (after_estimate and not snap.quality & Quality.EDITED):
            increment = None
            flags = Quality(snap.quality) & ~_ABOUT_INCREMENT
            if last is not None:
                assert last.register_value is not None and snap.register_value is not None
                increment = round(snap.register_value - last.register_value, DIGITS)
                if last.measured_time != snap.measured_time - SLOT:
                    flags |= Quality.SPANS_GAP
                if increment < 0:
                    flags |= Quality.NEGATIVE_INCREMENT
            if not snap.estimated and (increment, int(flags)) != (raw[i].increment, raw[i].quality):
                view[i] = replace(snap, increment=increment, quality=int(flags), recollected_increment=None)
            elif snap.estimated:
                view[i] = replace(snap, increment=increment, quality=int(flags))
        after_estimate = snap.estimated
        last = view[i]
    return view
