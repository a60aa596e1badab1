"""A one-pass MeterReadings document parsed, validated and taken apart in a process of its own.

Parsing with libxml2's validation and taking the MeterReading elements apart is most of an ingest's
CPU; in the server process it holds the GIL that the store's thread needs too. Here it runs in a
worker process (started lazily, as many as the setting ``cim.parse_workers`` says; 0 keeps it
inline) that reads the document with the same hardened parser (:func:`adapters.cim.stream.one_pass`
over :mod:`adapters.xmlsafe`) and sends batches of :class:`adapters.cim.reading_parts.Meter` tuples
back while the request's thread stores the ones before. The worker ends every document with one
message: ``end`` (the document is whole and valid: the transaction may commit), ``refused`` (a
schema violation or a cut tail: roll back) or ``error``. A worker that dies, or a request that stops
reading before that message, costs the worker: it is killed and the next document gets a new one,
and the request fails with :class:`WorkerFailed` (never waits on a dead pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Worker processes when the setting ``cim.parse_workers`` is unset: one when there is a core
    for it (0: parsed inline, in the request's thread)."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0


class WorkerFailed(RuntimeError):
    """The worker died or failed while reading a document: the document was not taken."""


def _serve(conn: Connection) -> None:
    """The worker's loop: a document in, its batches and one closing message out."""
    from adapters import xmlsafe
    from adapters.cim import stream
    from adapters.cim.reading_parts import Extractor

    while True:
        try:
            data, per_batch, per_send = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            stream.SINGLE_PASS_METERS = per_batch
            parsed = stream.one_pass(data)
            if parsed is None or parsed.streamed is None:
                conn.send(("error", "not a one-pass document"))
                continue
            extractor = Extractor()
            pending: list[Any] = []
            try:
                for batch in parsed.streamed.batches():
                    pending.extend(extractor.batch(batch))
                    if len(pending) >= per_send:
                        conn.send(("batch", pending))
                        pending = []
            except stream.Refused as exc:
                conn.send(("refused", str(exc)))
                continue
            if pending:
                conn.send(("batch", pending))
            conn.send(("end", extractor.count))
        except (EOFError, OSError, BrokenPipeError):
            return
        except (xmlsafe.MalformedXml, xmlsafe.UnsafeXml) as exc:
            conn.send(("refused", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the request, which fails cleanly
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child,), name="cim-parse", daemon=True)
        self.process.start()
        child.close()  # the worker's death then shows here as EOF

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.join(5)


class ParseWorkers:
    """Up to ``size`` worker processes, each reading one document at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._claimed = 0

    def pids(self) -> list[int]:
        """The workers' process ids, idle or reading a document (for tests and operators)."""
        return [w.process.pid for w in [*self._idle, *self._busy] if w.process.pid is not None]

    def claim(self) -> bool:
        """Take a worker's place for one document; False when every worker is taken (the document
        is then read inline: a request never waits for a worker while it holds a transaction)."""
        if self._claimed >= self.size:
            return False
        self._claimed += 1
        return True

    def release(self) -> None:
        """Give back a place taken by :meth:`claim`."""
        self._claimed -= 1

    async def batches(self, data: bytes, per_batch: int, per_send: int) -> AsyncIterator[list[Any]]:
        """The document's MeterReadings as batches of :class:`~adapters.cim.reading_parts.Meter`.
        Raises :class:`adapters.cim.stream.Refused` when the document turns out invalid or cut
        short (after some batches, possibly), :class:`WorkerFailed` when the worker fails. The
        caller holds a place (:meth:`claim`)."""
        from adapters.cim import stream

        worker = self._idle.pop() if self._idle else None
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                worker.kill()
            worker = await asyncio.to_thread(_Worker)
        self._busy.add(worker)
        clean = False
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(worker, queue))
        try:
            try:
                await asyncio.to_thread(worker.conn.send, (data, per_batch, per_send))
            except (OSError, EOFError, ValueError) as exc:
                raise WorkerFailed(f"the parse worker is gone: {exc}") from None
            while True:
                kind, value = await queue.get()
                if kind == "batch":
                    yield value
                    continue
                clean = kind in ("end", "refused", "error")
                if kind == "end":
                    return
                if kind == "refused":
                    raise stream.Refused(value)
                if kind == "error":
                    raise WorkerFailed(value)
                raise WorkerFailed(f"the parse worker stopped: {value}")
        finally:
            if not clean:  # the worker may be mid-document: never reused
                with contextlib.suppress(Exception):
                    worker.process.kill()
                log.warning("cim parse worker dropped", extra={"pid": worker.process.pid})
            await asyncio.shield(asyncio.wait([reader]))  # ends at the worker's closing message or death
            self._busy.discard(worker)
            if clean and worker.process.is_alive():
                self._idle.append(worker)
            else:
                await asyncio.to_thread(worker.kill)

    @staticmethod
    async def _read(worker: _Worker, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        """Move the worker's messages to ``queue`` until its closing message (or its death)."""
        while True:
            try:
                kind, value = await asyncio.to_thread(worker.conn.recv)
            except (EOFError, OSError, ValueError) as exc:
                await queue.put(("died", repr(exc) or "EOF"))
                return
            await queue.put((kind, value))
            if kind != "batch":
                return

    def close(self) -> None:
        while self._idle:
            self._idle.pop().kill()


POOL = ParseWorkers(default_workers())
"""The process's workers (shared by every CIM edge in it)."""


def pool(workers: int | None) -> ParseWorkers:
    """The process's workers, sized by the setting ``cim.parse_workers`` when it is set."""
    if workers is not None and POOL.size != workers:
        POOL.size = workers
    return POOL
