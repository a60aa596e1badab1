"""Per-head-end access: one HeadEnd port implementation per head-end row, built by the factory the
application injects (the core imports no adapter), used within that head-end's limits.

A head-end row's ``settings`` carry, beside whatever its adapter reads, ``concurrency`` (requests
in flight at once, default 8) and ``timeout_s`` (how long one request may take, default
``[collection] request_timeout_s``). Batch reads are cut into requests of ``[collection]
batch_size`` meters; a request that fails or times out as a whole fails every meter in it, and
the other requests carry on, so one slow or broken head-end never holds up anything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.db import Database
from hub.model import HeadEnd as HeadEndRow
from hub.ports import HeadEnd, HeadEndError, HeadEndTimeout, MeterRef, ReadResult
from hub.services.errors import NotFound

log = logging.getLogger("mdmhub.headends")

HeadEndFactory = Callable[[int, str, Mapping[str, Any]], HeadEnd]
"""Builds the port implementation of head-end ``he_id`` from its row's ``adapter`` and ``settings``."""

DEFAULT_CONCURRENCY = 8


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
    """A head-end's port used within its concurrency limit and request timeout."""

    def __init__(self, port: HeadEnd, *, concurrency: int, timeout_s: float, batch_size: int) -> None:
        self.port = port
        self.he_id = port.he_id
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.batch_size = max(1, batch_size)
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore, self._loop = asyncio.Semaphore(self.concurrency), loop
        return self._semaphore

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """One request: waits for a free slot, then at most ``timeout_s`` (HeadEndTimeout after)."""
        async with self._limit():
            try:
                return await asyncio.wait_for(fn(*args), self.timeout_s)
            except TimeoutError:
                raise HeadEndTimeout(f"head-end {self.he_id} did not answer within {self.timeout_s} s") from None

    async def _batch(self, fn: Callable[..., Awaitable[ReadResult]], batch: Sequence[MeterRef],
                     *args: Any) -> tuple[Sequence[MeterRef], ReadResult]:
        try:
            result = await self.call(fn, batch, *args)
        except HeadEndError as e:
            return batch, ReadResult(failures={m.ld_id: e for m in batch})
        except Exception as e:  # noqa: BLE001 - an adapter bug must not stop the cycle
            log.exception("head-end adapter failed", extra={"he_id": self.he_id})
            error = AdapterError(f"head-end {self.he_id}: {type(e).__name__}: {e}")
            return batch, ReadResult(failures={m.ld_id: error for m in batch})
        return batch, result

    async def _batches(self, fn: Callable[..., Awaitable[ReadResult]], meters: Sequence[MeterRef],
                       *args: Any) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        tasks = [asyncio.ensure_future(self._batch(fn, meters[i:i + self.batch_size], *args))
                 for i in range(0, len(meters), self.batch_size)]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    def read_registers(self, meters: Sequence[MeterRef], at: datetime,
                       sub_numbers: Sequence[int]) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        """Requests of ``batch_size`` meters, as each completes: (its meters, what it returned)."""
        return self._batches(self.port.read_registers, meters, at, list(sub_numbers))

    def read_history(self, meters: Sequence[MeterRef], start: datetime, end: datetime,
                     sub_numbers: Sequence[int]) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
        return self._batches(self.port.read_history, meters, start, end, list(sub_numbers))


class HeadEnds:
    """The hub's head-ends: ports built from the head-end rows through the injected factory and
    kept while the row's adapter and settings stay the same (a simulator keeps its state)."""

    def __init__(self, db: Database, factory: HeadEndFactory | None, *, batch_size: int = 1000,
                 timeout_s: float = 60.0) -> None:
        self.db = db
        self.factory = factory
        self.batch_size = batch_size
        self.timeout_s = timeout_s
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
        port = self.factory(spec.he_id, spec.adapter, spec.settings)
        concurrency = spec.settings.get("concurrency") or DEFAULT_CONCURRENCY
        timeout_s = spec.settings.get("timeout_s") or self.timeout_s
        access = HeadEndAccess(port, concurrency=int(concurrency), timeout_s=float(timeout_s),
                               batch_size=self.batch_size)
        self._built[spec.he_id] = (spec.fingerprint, access)
        return access

    def access(self, he_id: int) -> HeadEndAccess:
        """The access of head-end ``he_id`` (reads its row: call off the event loop)."""
        return self.access_for(self.spec(he_id))

    def port(self, he_id: int) -> HeadEnd:
        return self.access(he_id).port
