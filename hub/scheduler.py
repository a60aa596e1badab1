"""The collection scheduler: runs each head-end's cycle on its own clock and re-collects gaps at
quiet times, for as long as the hub serves.

Every ``[collection] interval_minutes`` (aligned to the wall clock, so a 30-minute interval ticks
at :00 and :30 plus ``tick_delay_s``) each head-end's :meth:`CollectionService.catch_up` runs
independently: a slow or failing head-end delays nobody else. Re-collection runs every
``recollect_every_minutes``, offset half an interval from the ticks (the quiet time between two
cycles). A failed tick is logged and the next one runs as usual; the scheduler never stops on an
error. Head-ends added while the hub runs are picked up at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.services.collection import CollectionService

log = logging.getLogger("mdmhub.scheduler")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def next_boundary(now: datetime, every: timedelta, offset: timedelta = timedelta(0)) -> datetime:
    """The first time after ``now`` that is ``offset`` past a multiple of ``every`` since the epoch."""
    base = now - offset
    return base - ((base - EPOCH) % every) + every + offset


@dataclass
class HeadEndState:
    """What the scheduler last did for one head-end (shown by the API)."""

    last_tick_at: datetime | None = None
    last_runs: list[dict[str, Any]] = field(default_factory=list)
    last_error: str | None = None
    ticks: int = 0


class CollectionScheduler:
    def __init__(self, collection: CollectionService, he_ids: Callable[[], list[int]], *,
                 interval: timedelta, recollect_every: timedelta, tick_delay: timedelta = timedelta(seconds=5),
                 clock: Callable[[], datetime] | None = None, after_cycle: Callable[[], Any] | None = None) -> None:
        self.collection = collection
        self.after_cycle = after_cycle
        self._he_ids = he_ids
        self.interval = interval
        self.recollect_every = recollect_every
        self.tick_delay = tick_delay
        self.clock = clock or (lambda: collection.clock())  # the collection's time, so tests move both
        self.head_ends: dict[int, HeadEndState] = {}
        self.last_recollection: dict[str, Any] | None = None
        self.next_tick_at: datetime | None = None
        self.next_recollect_at: datetime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[int, asyncio.Task[None]] = {}

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def start(self) -> None:
        """Tick once at once (catching up what was missed while the hub was down), then on the clock."""
        if self.running:
            return
        self._tasks = [asyncio.create_task(self._ticks(), name="collection-ticks"),
                       asyncio.create_task(self._recollections(), name="recollection")]

    async def stop(self) -> None:
        """Cancel the loops and any cycle in flight (what a cycle stored stays; the next start
        finishes the slot)."""
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._running = [], {}

    async def tick(self) -> None:
        """Start the cycle of every head-end whose previous cycle has finished; wait for them."""
        he_ids = await asyncio.to_thread(self._he_ids)
        for he_id in he_ids:
            running = self._running.get(he_id)
            if running is not None and not running.done():
                log.warning("previous collection still running; this tick skips the head-end",
                            extra={"he_id": he_id})
                continue
            self._running[he_id] = asyncio.create_task(self._tick_one(he_id), name=f"collect-{he_id}")
        await asyncio.gather(*(t for t in self._running.values() if not t.done()), return_exceptions=True)
        await self._after_cycle()

    async def _after_cycle(self) -> None:
        """Work that follows stored readings (the public aggregates' rollup); its failure is logged."""
        if self.after_cycle is None:
            return
        try:
            await asyncio.to_thread(self.after_cycle)
        except Exception:  # noqa: BLE001 - the next cycle or reader tries again
            log.exception("work after the collection cycle failed")

    async def _tick_one(self, he_id: int) -> None:
        state = self.head_ends.setdefault(he_id, HeadEndState())
        state.last_tick_at, state.ticks = self.clock(), state.ticks + 1
        try:
            state.last_runs = await self.collection.catch_up(he_id)
            state.last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one head-end's failure never stops the schedule
            state.last_error = f"{type(e).__name__}: {e}"
            log.exception("collection tick failed", extra={"he_id": he_id})

    async def recollect(self) -> dict[str, Any] | None:
        try:
            self.last_recollection = await self.collection.recollect()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("re-collection failed")
        return self.last_recollection

    async def _ticks(self) -> None:
        while True:
            await self.tick()
            self.next_tick_at = next_boundary(self.clock(), self.interval, self.tick_delay)
            await self._sleep_until(self.next_tick_at)

    async def _recollections(self) -> None:
        offset = self.tick_delay + self.interval / 2
        while True:
            self.next_recollect_at = next_boundary(self.clock(), self.recollect_every, offset)
            await self._sleep_until(self.next_recollect_at)
            await self.recollect()
            await self._after_cycle()

    async def _sleep_until(self, at: datetime) -> None:
        await asyncio.sleep(max(0.0, (at - self.clock()).total_seconds()))

    def status(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "running": self.running,
            "interval_minutes": self.interval.total_seconds() / 60,
            "recollect_every_minutes": self.recollect_every.total_seconds() / 60,
            "next_tick_at": iso(self.next_tick_at),
            "next_recollect_at": iso(self.next_recollect_at),
            "head_ends": [{"he_id": he_id, "last_tick_at": iso(st.last_tick_at), "ticks": st.ticks,
                           "last_error": st.last_error,
                           "last_runs": [{k: r.get(k) for k in ("id", "kind", "slot_time", "state", "targets",
                                                                 "normal", "missing")} for r in st.last_runs]}
                          for he_id, st in sorted(self.head_ends.items())],
            "last_recollection": None if self.last_recollection is None else {
                k: self.last_recollection.get(k) for k in ("now", "recollected", "still_missing", "expired")},
        }
