"""The hub as an IEEE 1888 gateway: forwarding queued values upstream, and fetching from remote
storages on a period.

Forwarding (store-and-forward): values are already queued durably when they were stored (see
:mod:`hub.services.fiap_outbox`). A :class:`Forwarder` sends the due rows of its upstream in
batches; a batch leaves the queue only when the upstream answers OK. An unreachable upstream or a
passing fault (SERVER_ERROR and the like) pushes the batch back with exponential back-off; a
refusal for good (POINT_NOT_FOUND, FORBIDDEN, INVALID_REQUEST...) is narrowed down point by point
and only the refused rows are set aside as ``rejected``, with an alert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from adapters.ieee1888.client import FiapClient, FiapTransportError
from adapters.ieee1888.messages import FiapError, Key, Point, Value, format_time, parse_time
from hub.config import FiapFetchSection, FiapUpstreamSection
from hub.runtime import Hub
from hub.services.diagnosis import AlertDraft
from hub.services.errors import Conflict
from hub.services.fiap_outbox import Queued
from hub.services.fiap_store import Sample

log = logging.getLogger("mdmhub.ieee1888.relay")
TRANSIENT = frozenset({"SERVER_ERROR", "UNKNOWN", "UNKNOWN_ERROR", "TOO_MANY_CURSOR_SESSIONS",
                       "TOO_MANY_TRAP_QUERIES"})
SPLIT = frozenset({"TOO_MANY_VALUES", "TOO_BIG_REQUEST"})


def _points(rows: Sequence[Queued]) -> list[Point]:
    by_id: dict[str, Point] = {}
    for r in rows:
        by_id.setdefault(r.point_id, Point(r.point_id)).values.append(Value(format_time(r.time), r.value))
    return list(by_id.values())


class Forwarder:
    """Sends one upstream's queue until it is empty, then waits for more."""

    def __init__(self, hub: Hub, upstream: FiapUpstreamSection, client: FiapClient | None = None) -> None:
        self.hub = hub
        self.upstream = upstream
        self.client = client or FiapClient(timeout_s=upstream.timeout_s)
        self.sent = 0
        self.failures = 0

    async def run_once(self) -> int:
        """Send the due rows (all batches); returns how many the upstream acknowledged."""
        outbox = self.hub.fiap.outbox
        acked = 0
        while True:
            rows = await self.hub.run(outbox.due, self.upstream.name, self.upstream.batch_values)
            if not rows:
                return acked
            ok = await self._send(rows)
            acked += ok
            if ok == 0:
                return acked

    async def _send(self, rows: Sequence[Queued]) -> int:
        outbox = self.hub.fiap.outbox
        ids = [r.id for r in rows]
        try:
            await self.client.write(self.upstream.url, _points(rows))
        except FiapTransportError as exc:
            return await self._later(ids, str(exc))
        except FiapError as exc:
            if exc.type in TRANSIENT:
                return await self._later(ids, f"{exc.type}: {exc.message}")
            if len(rows) > 1:
                return await self._narrow(rows)
            await self.hub.run(outbox.reject, ids, f"{exc.type}: {exc.message}")
            await self._alert(rows, exc)
            return 0
        await self.hub.run(outbox.acknowledged, ids)
        self.sent += len(ids)
        self.failures = 0
        return len(ids)

    async def _narrow(self, rows: Sequence[Queued]) -> int:
        """A batch was refused: send it again point by point (then value by value) so only the
        refused values are set aside."""
        groups: dict[str, list[Queued]] = {}
        for r in rows:
            groups.setdefault(r.point_id, []).append(r)
        parts: list[list[Queued]] = list(groups.values())
        if len(parts) == 1:
            parts = [[r] for r in rows]
        done = 0
        for part in parts:
            done += await self._send(part)
        return done

    async def _later(self, ids: list[int], error: str) -> int:
        self.failures += 1
        at = await self.hub.run(self.hub.fiap.outbox.retry_later, ids, error, self.upstream.retry_min_s,
                                self.upstream.retry_max_s)
        log.warning("ieee1888 upstream write failed; kept for retry",
                    extra={"upstream": self.upstream.name, "values": len(ids), "error": error[:200],
                           "next_attempt_at": at.isoformat()})
        return 0

    async def _alert(self, rows: Sequence[Queued], exc: FiapError) -> None:
        draft = AlertDraft(code="ieee1888.forward-rejected", severity="error", source="ieee1888",
                           message=f"upstream {self.upstream.name} refused {len(rows)} value(s) of "
                                   f"{rows[0].point_id}: {exc.type}: {exc.message[:200]}",
                           details={"upstream": self.upstream.name, "point_id": rows[0].point_id,
                                    "error_type": exc.type, "values": len(rows)})
        await self.hub.run(self.hub.alerts.raise_alerts, [draft])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - the loop outlives any one failure
                log.exception("ieee1888 forwarder cycle failed", extra={"upstream": self.upstream.name})
            try:
                await asyncio.wait_for(stop.wait(), self.upstream.poll_s)
            except TimeoutError:
                pass


class Fetcher:
    """FETCHes its points from a remote storage: everything newer than the newest value stored here."""

    def __init__(self, hub: Hub, job: FiapFetchSection, client: FiapClient | None = None,
                 notify: Callable[[list[Sample]], None] | None = None) -> None:
        self.hub = hub
        self.job = job
        self.client = client or FiapClient(timeout_s=job.timeout_s)
        self.notify = notify

    async def run_once(self) -> dict[str, Any]:
        store = self.hub.fiap.store
        latest = await self.hub.run(store.latest_times, list(self.job.points))
        keys = [Key(p, "time", {"gt": format_time(latest[p])} if p in latest else {}) for p in self.job.points]
        points = await self.client.fetch(self.job.url, keys, self.job.acceptable_size)
        samples: list[Sample] = []
        for p in points:
            for v in p.values:
                try:
                    samples.append(Sample(p.id, parse_time(v.time) if v.time else None, v.text))
                except ValueError:
                    log.warning("fetched value with a bad time skipped", extra={"point_id": p.id})
        stored = 0
        chunk = self.hub.settings.ieee1888.max_write_values
        for i in range(0, len(samples), chunk):
            stored += await self._store(samples[i:i + chunk])
        return {"fetched": len(samples), "stored": stored}

    async def _store(self, samples: list[Sample]) -> int:
        store = self.hub.fiap.store
        try:
            report = await self.hub.run(store.write, samples, None, f"fetch:{self.job.name}")
        except Conflict:
            if len({s.point_id for s in samples}) == 1:
                log.warning("fetched values clash with stored ones; point skipped",
                            extra={"fetch": self.job.name, "point_id": samples[0].point_id})
                return 0
            by_point: dict[str, list[Sample]] = {}
            for s in samples:
                by_point.setdefault(s.point_id, []).append(s)
            return sum([await self._store(part) for part in by_point.values()])
        if self.notify and report.new:
            self.notify(report.new)
        return report.stored

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                result = await self.run_once()
                log.info("ieee1888 fetch", extra={"fetch": self.job.name, **result})
            except (FiapTransportError, FiapError) as exc:
                log.warning("ieee1888 fetch failed", extra={"fetch": self.job.name, "error": str(exc)[:200]})
            except Exception:  # noqa: BLE001
                log.exception("ieee1888 fetch failed", extra={"fetch": self.job.name})
            try:
                await asyncio.wait_for(stop.wait(), self.job.every_s)
            except TimeoutError:
                pass

