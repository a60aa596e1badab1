"""Planning one metering point's reservations: the windows its live ADR actions ask for, cut into
non-overlapping segments at the lowest capacity asked for at each moment, compared with the
reservations already held. Pure functions, so overlap and restore rules are tested without I/O.

Why segments: a head-end refuses overlapping reservations on one meter, and overlapping events
must take the lower capacity and give back the right one when either ends. Example: event A asks
20 A over 10:00-12:00, event B 15 A over 11:00-13:00 -> 10:00-11:00 at 20 A, 11:00-13:00 at 15 A;
when B is cancelled the plan becomes 10:00-12:00 at 20 A and the 15 A segment is cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Want:
    """A live action's request: capacity ``amps`` over [start, end)."""

    action_id: int
    start: datetime
    end: datetime
    amps: int


@dataclass(frozen=True, slots=True)
class Segment:
    start: datetime
    end: datetime
    amps: int


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation held on the head-end (row ``row_id``, head-end ID ``reservation_id``)."""

    row_id: int
    reservation_id: str
    start: datetime
    end: datetime
    amps: int

    @property
    def segment(self) -> Segment:
        return Segment(self.start, self.end, self.amps)


@dataclass(frozen=True, slots=True)
class Diff:
    keep: tuple[Held, ...]
    cancel: tuple[Held, ...]
    reserve: tuple[Segment, ...]


def segments(wants: Iterable[Want], now: datetime) -> list[Segment]:
    """Non-overlapping segments covering every want still to come, each at the lowest capacity any
    want asks for over it; adjacent segments at the same capacity are merged. Parts before ``now``
    are kept as asked (a segment in force keeps its start, so it matches the reservation held)."""
    live = [w for w in wants if w.end > now and w.end > w.start]
    cuts = sorted({t for w in live for t in (w.start, w.end)})
    out: list[Segment] = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        amps = [w.amps for w in live if w.start <= a and w.end >= b]
        if not amps:
            continue
        low = min(amps)
        if out and out[-1].end == a and out[-1].amps == low:
            out[-1] = Segment(out[-1].start, b, low)
        else:
            out.append(Segment(a, b, low))
    return out


def diff(wanted: Sequence[Segment], held: Sequence[Held]) -> Diff:
    """What to keep, cancel and reserve so the held reservations become ``wanted``. A reservation
    is kept only if it is exactly a wanted segment; cancels come before reserves (no overlap)."""
    wanted_set = set(wanted)
    keep, cancel, seen = [], [], set()
    for h in held:
        if h.segment in wanted_set and h.segment not in seen:
            keep.append(h)
            seen.add(h.segment)
        else:
            cancel.append(h)
    return Diff(tuple(keep), tuple(cancel), tuple(s for s in wanted if s not in seen))


def covering(want: Want, segs: Iterable[Segment]) -> list[Segment]:
    """The segments that overlap a want's window."""
    return [s for s in segs if s.start < want.end and want.start < s.end]
