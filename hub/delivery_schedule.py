"""The daily CSV delivery run while the hub serves: each local day at ``[delivery] run_at_minutes``
past midnight the previous day's file of every customer and delivery group is made (files already
there are kept: a client may have fetched them), then files past ``retention_days`` are purged.

At start the loop catches up at once (yesterday's missing files, the purge), so a hub that was down
at run time still delivers. A failed run is logged and retried at the next run time; the loop never
stops on an error. Blocking work runs on the hub's worker pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from hub.services.delivery import DeliveryService

log = logging.getLogger("mdmhub.delivery")


class DeliveryScheduler:
    def __init__(self, delivery: DeliveryService, run: Callable[..., Awaitable[Any]], *, run_at_minutes: int) -> None:
        self.delivery = delivery
        self._run = run
        self.run_at = timedelta(minutes=run_at_minutes)
        self.last_run: dict[str, Any] | None = None
        self.next_run_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def next_time(self, now: datetime) -> datetime:
        """The next run time after ``now``: local midnight plus ``run_at`` (wall clock in the zone)."""
        local = now.astimezone(self.delivery.tz)
        at = local.replace(hour=0, minute=0, second=0, microsecond=0) + self.run_at
        if at <= local:
            at = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0) + self.run_at
        return at

    async def run_once(self) -> dict[str, Any]:
        """Yesterday's missing files, then the purge; returns what was done."""
        day = self.delivery.today() - timedelta(days=1)
        try:
            made = await self._run(self.delivery.generate_day, day, True)
            purged = await self._run(self.delivery.purge)
            self.last_run = {"at": self.delivery.clock().isoformat(), "day": day.isoformat(), "files": len(made),
                             "purged": purged, "error": None}
            log.info("daily delivery", extra={"day": day.isoformat(), "files": len(made), "purged": purged})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - retried at the next run time
            self.last_run = {"at": self.delivery.clock().isoformat(), "day": day.isoformat(),
                             "error": f"{type(e).__name__}: {e}"}
            log.exception("daily delivery failed")
        return self.last_run

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            now = self.delivery.clock()
            self.next_run_at = self.next_time(now)
            await asyncio.sleep(max(0.0, (self.next_run_at - now).total_seconds()))

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="daily-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
