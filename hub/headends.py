"""Per-head-end access: one HeadEnd port implementation per head-end row, built by the factory the
application injects (the core imports no adapter), used within that head-end's limits.

A head-end row's ``settings`` carry, beside whatever its adapter reads, ``concurrency`` (requests
in flight at once, default ``[throttle] head_end_concurrency``), ``timeout_s`` (how long one
request may take, default ``[collection] request_timeout_s``) and ``throttle`` (overrides of the
``[throttle]`` keys for this head-end; the hub reads it, the adapter never sees it). Requests are
handed out by priority within those limits (:mod:`hub.throttle`): controls, collection,
re-collection, reboots. Batch reads are cut into requests of ``[collection] batch_size`` meters;
a request that fails or times out as a whole fails every meter in it, and the other requests
carry on, so one slow or broken head-end never holds up anything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.db import Database
from hub.model import HeadEnd as HeadEndRow
from hub.ports import HeadEnd, HeadEndError, HeadEndTimeout, MeterRef, ReadResult
from hub.services.errors import NotFound
from hub.throttle import Priority, Throttle, ThrottleLimits

log = logging.getLogger("mdmhub.headends")

HeadEndFactory = Callable[[int, str, Mapping[str, Any]], HeadEnd]
"""Builds the port implementation of head-end ``he_id`` from its row's ``adapter`` and ``settings``."""

DEFAULT_CONCURRENCY = 8
HUB_KEYS = frozenset({"throttle"})
"""Head-end row settings the hub reads itself and does not pass to the adapter."""


class AdapterError(HeadEndError):
    """The adapter failed in a way the port does not type (a bug or a bad configuration)."""

    code = "adapter-error"


@dataclass(frozen=True, slots=True)
class HeadEndSpec:
    he_id: int
    adapter: str
    settings: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return json.dumps([self.adapter, self.settings], sort_keys=True, default=str)


class HeadEndAccess:
    """A head-end's port used within its throttle (priority slots per head-end and concentrator)
    and its request timeout."""

    def __init__(self, port: HeadEnd, *, concurrency: int | None = None, timeout_s: float, batch_size: int,
                 limits: ThrottleLimits | None = None) -> None:
        self.port = port
        self.he_id = port.he_id
        base = limits or ThrottleLimits()
        if concurrency is not None:
            base = ThrottleLimits(max(1, concurrency), base.concentrator, base.recollect_share, base.reboot_share)
        self.throttle = Throttle(base)
        self.concurrency = base.head_end
        self.timeout_s = timeout_s
        self.batch_size = max(1, batch_size)

    def slot(self, priority: Priority = Priority.COLLECTION,
             concentrator: Hashable | None = None) -> AbstractAsyncContextManager[None]:
        """A request slot of this head-end (and of ``concentrator``, for single-meter work)."""
        return self.throttle.slot(priority, concentrator)

    async def request(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """One request without taking a slot (the caller holds one): at most ``timeout_s``."""
        try:
            return await asyncio.wait_for(fn(*args), self.timeout_s)
        except TimeoutError:
            raise HeadEndTimeout(f"head-end {self.he_id} did not answer within {self.timeout_s} s") from None

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, priority: Priority = Priority.COLLECTION,
                   concentrator: Hashable | None = None) -> Any:
        """One request: waits for a slot at ``priority``, then at most ``timeout_s`` (HeadEndTimeout after)."""
        async with self.slot(priority, concentrator):
            return await self.request(fn, *args)

    async def _batch(self, fn: Callable[..., Awaitable[ReadResult]], priority: Priority, batch: Sequence[MeterRef],
                     *args: Any) -> tuple[Sequence[MeterRef], ReadResult]:
        try:
            result = await self.call(fn, batch, *args, priority=priority)
        except HeadEndError as e:
            return batch, ReadResult(failures={m.ld_id: e for m in batch})
        except Exception as e:  # noqa: BLE001 - an adapter bug must not stop the cycle
            log.exception("head-end adapter failed", extra={"he_id": self.he_id})
            error = AdapterError(f"head-end {self.he_id}: {type(e).__name__}: {e}")
            return batch, ReadResult(failures={m.ld_id: error for m in batch})
        return batch, result

    async def _batches(self, fn: Callable[..., Awaitable[ReadResult]], priority: Priority, meters: Sequence[MeterRef],
                       *args: Any) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        tasks = [asyncio.ensure_future(self._batch(fn, priority, meters[i:i + self.batch_size], *args))
                 for i in range(0, len(meters), self.batch_size)]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    def read_registers(self, meters: Sequence[MeterRef], at: datetime, sub_numbers: Sequence[int], *,
                       priority: Priority = Priority.COLLECTION
                       ) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        """Requests of ``batch_size`` meters, as each completes: (its meters, what it returned)."""
        return self._batches(self.port.read_registers, priority, meters, at, list(sub_numbers))

    def read_history(self, meters: Sequence[MeterRef], start: datetime, end: datetime, sub_numbers: Sequence[int], *,
                     priority: Priority = Priority.COLLECTION) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        """As :meth:`read_registers`, from the meters' memory; re-collection passes
        ``Priority.RECOLLECTION`` so it yields to the scheduled cycle and to controls."""
        return self._batches(self.port.read_history, priority, meters, start, end, list(sub_numbers))


class HeadEnds:
    """The hub's head-ends: ports built from the head-end rows through the injected factory and
    kept while the row's adapter and settings stay the same (a simulator keeps its state)."""

    def __init__(self, db: Database, factory: HeadEndFactory | None, *, batch_size: int = 1000,
                 timeout_s: float = 60.0, limits: ThrottleLimits | None = None) -> None:
        self.db = db
        self.factory = factory
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.limits = limits or ThrottleLimits(head_end=DEFAULT_CONCURRENCY)
        self._built: dict[int, tuple[str, HeadEndAccess]] = {}

    @property
    def available(self) -> bool:
        """Whether the hub can reach head-ends at all (the application injected a factory)."""
        return self.factory is not None

    def spec(self, he_id: int) -> HeadEndSpec:
        with self.db.session() as s:
            row = s.get(HeadEndRow, he_id)
            if row is None:
                raise NotFound.on("he_id", f"head-end {he_id} does not exist")
            return HeadEndSpec(row.he_id, row.adapter, dict(row.settings or {}))

    def he_ids(self) -> list[int]:
        from sqlalchemy import select

        with self.db.session() as s:
            return list(s.scalars(select(HeadEndRow.he_id).order_by(HeadEndRow.he_id)))

    def access_for(self, spec: HeadEndSpec) -> HeadEndAccess:
        """The access of ``spec``'s head-end (no database work); raises what the factory raises."""
        if self.factory is None:
            raise RuntimeError("no head-end factory: this hub was started without head-end adapters")
        cached = self._built.get(spec.he_id)
        if cached is not None and cached[0] == spec.fingerprint:
            return cached[1]
        try:
            limits = ThrottleLimits.from_settings(self.limits, spec.settings.get("throttle"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"head-end {spec.he_id} settings: throttle: {e}") from e
        port = self.factory(spec.he_id, spec.adapter, {k: v for k, v in spec.settings.items() if k not in HUB_KEYS})
        concurrency = spec.settings.get("concurrency")
        timeout_s = spec.settings.get("timeout_s") or self.timeout_s
        access = HeadEndAccess(port, concurrency=int(concurrency) if concurrency else None, timeout_s=float(timeout_s),
                               batch_size=self.batch_size, limits=limits)
        self._built[spec.he_id] = (spec.fingerprint, access)
        return access

    def access(self, he_id: int) -> HeadEndAccess:
        """The access of head-end ``he_id`` (reads its row: call off the event loop)."""
        return self.access_for(self.spec(he_id))

    def port(self, he_id: int) -> HeadEnd:
        return self.access(he_id).port
