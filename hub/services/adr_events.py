"""The canonical demand-response event: what the core knows of a DR event, whatever protocol brought it.

Edges (the OpenADR VEN) translate their messages into :class:`DrEvent`; the ADR service
(:mod:`hub.services.adr`) stores and acts on it. All times are aware UTC, whole seconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

STATUSES = ("none", "far", "near", "active", "completed", "cancelled")
SIMPLE = "SIMPLE"


@dataclass(frozen=True, slots=True)
class Interval:
    """One interval of a signal: its start (dtstart + earlier durations), length and value."""

    start: datetime
    duration_s: int
    value: float

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)


@dataclass(frozen=True, slots=True)
class Signal:
    name: str  # SIMPLE, LOAD_DISPATCH, LOAD_CONTROL, x-...
    type: str  # level, delta, setpoint, x-loadControlCapacity, ...
    intervals: tuple[Interval, ...] = ()
    signal_id: str | None = None
    current_value: float | None = None

    @property
    def peak(self) -> float:
        """The highest value over the intervals (for SIMPLE: the level the event asks for at most)."""
        return max((i.value for i in self.intervals), default=self.current_value or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "signal_id": self.signal_id,
                "current_value": self.current_value,
                "intervals": [{"start": i.start.isoformat(), "duration_s": i.duration_s, "value": i.value}
                              for i in self.intervals]}


@dataclass(frozen=True, slots=True)
class Targets:
    """Which of the hub's metering points an event is for. ``everything`` means the VEN as a whole
    (every LD with an active policy); otherwise the union of the listed LDs, clusters and customers.
    ``unknown`` keeps target IDs the mapping could not place, as (kind, id)."""

    everything: bool = False
    ld_ids: tuple[str, ...] = ()
    cluster_ids: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    unknown: tuple[tuple[str, str], ...] = ()

    @property
    def named(self) -> bool:
        return bool(self.ld_ids or self.cluster_ids or self.customer_ids)

    def as_dict(self) -> dict[str, Any]:
        return {"everything": self.everything, "ld_ids": list(self.ld_ids), "cluster_ids": list(self.cluster_ids),
                "customer_ids": list(self.customer_ids), "unknown": [list(u) for u in self.unknown]}


@dataclass(frozen=True, slots=True)
class DrEvent:
    """A DR event at one modification number."""

    event_id: str
    modification_number: int
    dtstart: datetime
    duration_s: int  # 0: open-ended until cancelled
    market_context: str | None = None
    priority: int = 0  # lower number wins; 0 means none (lowest)
    status: str = "far"
    test: bool = False
    tolerance_s: int = 0  # randomisation: each metering point starts within [dtstart, dtstart + tolerance)
    notification_s: int = 0
    ramp_up_s: int = 0
    recovery_s: int = 0
    signals: tuple[Signal, ...] = ()
    targets: Targets = field(default_factory=Targets)
    response_required: bool = True
    vtn_comment: str | None = None
    created_at: datetime | None = None

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    @property
    def end(self) -> datetime | None:
        """The end of the active period before randomisation (None when open-ended)."""
        return self.dtstart + timedelta(seconds=self.duration_s) if self.duration_s > 0 else None

    def offset_s(self, ld_id: str) -> int:
        """This metering point's start offset within the tolerance window: stable for a given event
        and LD (a modification keeps it unless the tolerance changes), spread evenly over LDs."""
        if self.tolerance_s <= 0:
            return 0
        digest = hashlib.blake2b(f"{self.event_id}\x00{ld_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.tolerance_s

    def window(self, ld_id: str, open_ended_s: int) -> tuple[datetime, datetime]:
        """The window this LD's capacity is reduced in: randomised start, then the duration (an
        open-ended event is reserved for ``open_ended_s`` and released when cancelled)."""
        start = self.dtstart + timedelta(seconds=self.offset_s(ld_id))
        return start, start + timedelta(seconds=self.duration_s if self.duration_s > 0 else open_ended_s)

    def level(self) -> int:
        """The SIMPLE level asked for at most (0 when there is no SIMPLE signal)."""
        simple = [s for s in self.signals if s.name == SIMPLE]
        return int(round(max((s.peak for s in simple), default=0.0)))

    def signal_names(self) -> set[str]:
        return {s.name for s in self.signals}


def utc(dt: datetime) -> datetime:
    """Aware UTC, whole seconds (stored windows compare exactly after a round trip)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: OpenADR times are UTC")
    return dt.astimezone(UTC).replace(microsecond=0)
