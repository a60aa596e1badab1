"""Throttling of head-end work: a per-head-end and per-concentrator limit on requests in flight,
handed out by priority (issue: a mass operation must never starve the 30-minute collection).

Every request to a head-end takes a slot of its head-end's limiter first and, when it addresses
one meter (a control, a status read, a reboot), a slot of that meter's concentrator too: the
concentrator's narrow-band network carries one or two commands at a time, while the head-end's
own link carries many. Batch reads (collection, re-collection) span many concentrators, are
scheduled by the head-end itself and take only a head-end slot.

Two rules keep urgent work moving:

- **Priority.** A freed slot goes to the most urgent waiter: controls, then the scheduled
  collection, then re-collection, then reboots; equal priorities in arrival order.
- **Share.** Background classes may hold only part of a limiter's slots at once
  (``recollect_share``, ``reboot_share``), so a slot is free for a control or a collection
  request the moment it asks, even while a mass reboot keeps the limiter saturated.

A concentrator slot is taken before the head-end slot: a request waiting for its busy
concentrator then holds nothing the rest of the head-end needs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import Counter
from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    """Lower is more urgent."""

    CONTROL = 0
    COLLECTION = 1
    RECOLLECTION = 2
    REBOOT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ThrottleLimits:
    """The limits of one head-end (see ``[throttle]`` in the settings)."""

    head_end: int = 8
    concentrator: int = 2
    recollect_share: float = 0.75
    reboot_share: float = 0.5

    def __post_init__(self) -> None:
        if self.head_end < 1 or self.concentrator < 1:
            raise ValueError("throttle limits must be at least 1")
        for name in ("recollect_share", "reboot_share"):
            share = getattr(self, name)
            if not 0 < share <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {share!r}")

    def caps(self, capacity: int) -> dict[Priority, int]:
        """Slots each class may hold at once out of ``capacity`` (at least one each)."""
        return {Priority.CONTROL: capacity, Priority.COLLECTION: capacity,
                Priority.RECOLLECTION: max(1, math.floor(capacity * self.recollect_share)),
                Priority.REBOOT: max(1, math.floor(capacity * self.reboot_share))}

    @classmethod
    def from_section(cls, section: Any) -> ThrottleLimits:
        """The limits of the ``[throttle]`` settings section."""
        return cls(head_end=section.head_end_concurrency, concentrator=section.concentrator_concurrency,
                   recollect_share=section.recollect_share, reboot_share=section.reboot_share)

    @classmethod
    def from_settings(cls, base: ThrottleLimits, overrides: Mapping[str, Any] | None) -> ThrottleLimits:
        """``base`` with a head-end row's overrides (keys as in ``[throttle]``)."""
        if not overrides:
            return base
        if not isinstance(overrides, Mapping):
            raise ValueError(f"throttle settings must be an object, got {overrides!r}")
        names = {"head_end_concurrency": "head_end", "concentrator_concurrency": "concentrator",
                 "recollect_share": "recollect_share", "reboot_share": "reboot_share"}
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown throttle setting {unknown[0]!r} (known: {', '.join(sorted(names))})")
        values = {f: getattr(base, f) for f in ("head_end", "concentrator", "recollect_share", "reboot_share")}
        for key, value in overrides.items():
            values[names[key]] = value
        return cls(head_end=int(values["head_end"]), concentrator=int(values["concentrator"]),
                   recollect_share=float(values["recollect_share"]), reboot_share=float(values["reboot_share"]))


class PriorityLimiter:
    """At most ``capacity`` holders at once, each class within its cap; freed slots go to the most
    urgent waiter that its class cap lets in. Bound to the event loop it is first used on."""

    def __init__(self, capacity: int, caps: Mapping[Priority, int] | None = None) -> None:
        self.capacity = max(1, capacity)
        self.caps = {p: min(self.capacity, (caps or {}).get(p, self.capacity)) for p in Priority}
        self.held: Counter[Priority] = Counter()
        self.granted: Counter[Priority] = Counter()
        self.peak: Counter[Priority] = Counter()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return sum(self.held.values())

    @property
    def waiting(self) -> Counter[Priority]:
        return Counter(Priority(p) for p, _, f in self._waiters if not f.done())

    @property
    def idle(self) -> bool:
        return not self.in_use and not any(not f.done() for _, _, f in self._waiters)

    async def acquire(self, priority: Priority) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), future))
        self._grant()
        if future.done():
            return
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as we were cancelled: give it back
                self.release(priority)
            else:
                future.cancel()
                self._grant()  # a cancelled waiter may have been blocking nobody, but keep the queue clean
            raise

    def release(self, priority: Priority) -> None:
        if self.held[priority] <= 0:
            raise RuntimeError(f"release of a {priority.label} slot that is not held")
        self.held[priority] -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiters, most urgent first; a waiter whose class is at its cap is
        passed over (it keeps its place) so a less urgent class may still use a free slot."""
        if not self._waiters:
            return
        free = self.capacity - self.in_use
        kept: list[tuple[int, int, asyncio.Future[None]]] = []
        while self._waiters and free > 0:
            entry = heapq.heappop(self._waiters)
            p, _, future = entry
            if future.done():
                continue
            priority = Priority(p)
            if self.held[priority] >= self.caps[priority]:
                kept.append(entry)
                continue
            self.held[priority] += 1
            self.granted[priority] += 1
            self.peak[priority] = max(self.peak[priority], self.held[priority])
            free -= 1
            future.set_result(None)
        for entry in kept:
            heapq.heappush(self._waiters, entry)

    def snapshot(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "in_use": self.in_use,
                "held": {p.label: self.held[p] for p in Priority if self.held[p]},
                "waiting": {p.label: n for p, n in sorted(self.waiting.items())},
                "caps": {p.label: c for p, c in self.caps.items()}}


class Throttle:
    """The limiters of one head-end: its own, and one per concentrator (made on first use, dropped
    when idle). Rebuilt when the event loop changes (tests run one loop per test)."""

    def __init__(self, limits: ThrottleLimits) -> None:
        self.limits = limits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head_end: PriorityLimiter | None = None
        self._concentrators: dict[Hashable, PriorityLimiter] = {}

    def _bound(self) -> PriorityLimiter:
        loop = asyncio.get_running_loop()
        if self._head_end is None or self._loop is not loop:
            self._loop = loop
            self._head_end = PriorityLimiter(self.limits.head_end, self.limits.caps(self.limits.head_end))
            self._concentrators = {}
        return self._head_end

    def _concentrator(self, key: Hashable) -> PriorityLimiter:
        limiter = self._concentrators.get(key)
        if limiter is None:
            n = self.limits.concentrator
            limiter = self._concentrators[key] = PriorityLimiter(n, self.limits.caps(n))
        return limiter

    @property
    def head_end(self) -> PriorityLimiter:
        return self._bound()

    @asynccontextmanager
    async def slot(self, priority: Priority, concentrator: Hashable | None = None) -> AsyncIterator[None]:
        """Hold a slot of the concentrator (if given) and of the head-end for the block."""
        head_end = self._bound()
        co = self._concentrator(concentrator) if concentrator is not None else None
        if co is not None:
            await co.acquire(priority)
        try:
            await head_end.acquire(priority)
            try:
                yield
            finally:
                head_end.release(priority)
        finally:
            if co is not None:
                co.release(priority)
                if co.idle and self._concentrators.get(concentrator) is co:
                    del self._concentrators[concentrator]

    def snapshot(self) -> dict[str, Any]:
        """What is in flight and waiting now (for the API and the tests)."""
        head_end = self._bound()
        return {"head_end": head_end.snapshot(),
                "concentrators": {str(k): v.snapshot() for k, v in sorted(self._concentrators.items(), key=str)},
                "limits": {"head_end_concurrency": self.limits.head_end,
                           "concentrator_concurrency": self.limits.concentrator,
                           "recollect_share": self.limits.recollect_share,
                           "reboot_share": self.limits.reboot_share}}
