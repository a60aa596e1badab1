"""TRAP (``query type="stream"``): subscriptions and the callbacks that push new values.

A subscription is keyed by its query id: the same id with a ttl renews it, ttl 0 cancels it, and it
ends by itself when its ttl runs out. Each subscription has its own bounded queue and sender, so a
callback that hangs or fails delays no WRITE and no other subscriber. A failed callback makes its
subscription skip events for 2^(n-1) seconds (n failures in a row, at most 60 s); events are not
queued for a later retry (the reference storage behaves the same; see docs/ieee1888.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from adapters.ieee1888.messages import (
    SOAP_FIAP_NS,
    FiapError,
    Malformed,
    Point,
    Query,
    Value,
    envelope,
    format_time,
    parse_envelope,
    read_capped,
    transport_xml,
)

log = logging.getLogger("mdmhub.ieee1888.trap")
QUEUE_MAX = 256
MAX_SKIP_S = 60.0


@dataclass
class Subscription:
    query: Query
    client: str
    watched: dict[str, str]  # point id -> attrName (time | value)
    callback: str
    expires: float
    last: dict[str, tuple[str, str]] = field(default_factory=dict)  # point id -> (time, value) last sent
    queue: asyncio.Queue[list[Point]] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    failures: int = 0
    skip_until: float = 0.0
    delivered: int = 0
    task: asyncio.Task[None] | None = None


class TrapManager:
    def __init__(self, *, max_per_client: int, max_ttl_s: int, timeout_s: float) -> None:
        self.max_per_client = max_per_client
        self.max_ttl_s = max_ttl_s
        self.timeout_s = timeout_s
        self.subs: dict[str, Subscription] = {}
        self._session: aiohttp.ClientSession | None = None

    # registration --------------------------------------------------------------------------

    def register(self, q: Query, client: str, registered: Iterable[str]) -> None:
        """Add, renew (same id) or cancel (ttl 0) a subscription; raises FiapError when refused."""
        if q.ttl is None:
            raise FiapError("INVALID_REQUEST", "a stream query needs a ttl")
        try:
            ttl = int(q.ttl)
            if ttl < 0:
                raise ValueError
        except ValueError:
            raise FiapError("INVALID_REQUEST", f"ttl {q.ttl!r} is not a non-negative integer") from None
        if ttl == 0:
            self._drop(q.id)
            return
        if not q.callback_data or not q.callback_data.startswith(("http://", "https://")):
            raise FiapError("INVALID_REQUEST", "a stream query needs callbackData (an http or https URL)")
        if not q.keys:
            raise FiapError("QUERY_NOT_SUPPORTED", "a stream query needs at least one key")
        known = set(registered)
        watched: dict[str, str] = {}
        for k in q.keys:
            if k.conditions or k.select:
                raise FiapError("QUERY_NOT_SUPPORTED", "stream keys take no eq/neq/lt/gt/lteq/gteq/select")
            if k.attr_name not in ("time", "value"):
                raise FiapError("INVALID_REQUEST", f"attrName {k.attr_name!r} is neither time nor value")
            if k.trap not in (None, "changed"):
                raise FiapError("QUERY_NOT_SUPPORTED", f"trap {k.trap!r} is not supported (only changed)")
            if k.id not in known:
                raise FiapError("POINT_NOT_FOUND", f"point not found: {k.id}")
            watched[k.id] = k.attr_name
        now = time.monotonic()
        self._expire(now)
        existing = self.subs.get(q.id)
        if existing is None and sum(1 for s in self.subs.values() if s.client == client) >= self.max_per_client:
            raise FiapError("TOO_MANY_TRAP_QUERIES", f"at most {self.max_per_client} TRAP queries per client")
        expires = now + min(ttl, self.max_ttl_s)
        if existing is not None:
            existing.expires, existing.watched, existing.callback, existing.query = expires, watched, \
                q.callback_data, q
            return
        sub = Subscription(q, client, watched, q.callback_data, expires)
        sub.task = asyncio.create_task(self._sender(sub), name=f"fiap-trap-{q.id}")
        self.subs[q.id] = sub

    def _drop(self, query_id: str) -> None:
        sub = self.subs.pop(query_id, None)
        if sub and sub.task:
            sub.task.cancel()

    def _expire(self, now: float) -> None:
        for qid in [qid for qid, s in self.subs.items() if s.expires <= now]:
            log.info("trap subscription expired", extra={"query_id": qid})
            self._drop(qid)

    # events -----------------------------------------------------------------------------------

    def notify(self, samples: Iterable[Sequence[Any]]) -> None:
        """Hand new values to the subscriptions watching them: tuples that start with point,
        time, value (a :class:`Sample`, or a stored row of the WRITE's report)."""
        now = time.monotonic()
        self._expire(now)
        if not self.subs:
            return
        newest: dict[str, Sequence[Any]] = {}
        for s in samples:
            cur = newest.get(s[0])
            if cur is None or s[1] > cur[1]:
                newest[s[0]] = s
        for sub in self.subs.values():
            changed: list[Point] = []
            for pid, attr in sub.watched.items():
                s = newest.get(pid)
                if s is None:
                    continue
                t, v = format_time(s[1]), s[2]
                last = sub.last.get(pid)
                if last is None or (attr == "time" and last[0] != t) or (attr == "value" and last[1] != v):
                    sub.last[pid] = (t, v)
                    changed.append(Point(pid, [Value(t, v)]))
            if not changed or now < sub.skip_until:
                continue
            try:
                sub.queue.put_nowait(changed)
            except asyncio.QueueFull:
                log.warning("trap queue full; event dropped", extra={"query_id": sub.query.id})

    async def _sender(self, sub: Subscription) -> None:
        while True:
            batch = await sub.queue.get()
            merged: dict[str, Point] = {p.id: p for p in batch}
            while not sub.queue.empty():  # coalesce: only the newest value of each point matters
                for p in sub.queue.get_nowait():
                    merged[p.id] = p
            body = envelope("dataRQ", transport_xml(query=sub.query, points=list(merged.values())))
            try:
                await self._post(sub.callback, body)
                sub.failures, sub.delivered = 0, sub.delivered + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the subscriber's end
                sub.failures += 1
                sub.skip_until = time.monotonic() + min(MAX_SKIP_S, 2.0 ** (sub.failures - 1))
                log.warning("trap callback failed", extra={"query_id": sub.query.id, "error": str(exc)[:200],
                                                           "failures": sub.failures})

    async def _post(self, url: str, body: bytes) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                      headers={"Content-Type": "text/xml;charset=UTF-8",
                                               "SOAPAction": f'"{SOAP_FIAP_NS}data"'}) as resp:
            data = await read_capped(resp.content, 1024 * 1024) or b""
        try:
            _, t = parse_envelope(data)
        except (Malformed, FiapError) as exc:
            raise RuntimeError(f"HTTP {resp.status}: {exc}") from None
        if t.error:
            raise RuntimeError(f"{t.error[0]}: {t.error[1]}")

    async def close(self) -> None:
        for qid in list(self.subs):
            self._drop(qid)
        if self._session is not None:
            await self._session.close()
