"""Outbound 61968-9 events: ``created EndDeviceEvents`` for new alerts and ``created MeterReadings``
after each scheduled collection cycle, POSTed as plain-XML EventMessages to the subscribers of
``[cim] subscribers`` that want the noun.

Each event is built here and stored in the hub's message outbox (``channel`` ``cim``) for every
subscriber before any attempt to send, from the core's hooks (:attr:`AlertService.listeners`,
:attr:`RunStore.listeners`). Alerts are marked queued in the same transaction as their events'
outbox rows; at start the publisher sweeps alerts never marked (stored just before a crash) and
queues their events then. A loop offers the due messages of each subscriber in order: a
``ResponseMessage`` with Result ``OK`` or ``PARTIAL`` acknowledges (the message leaves the queue);
no answer, an HTTP error, or an answer that is not a ResponseMessage is retried with exponential
back-off; Result ``FAILED`` or an HTTP 4xx other than 408/429 rejects it for good (kept, with the
answer, for the operator). A subscriber outage of any length, or a restart of the hub, loses
nothing; delivery is at least once (each message has its own MessageID, for the subscriber's
duplicate check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from lxml import etree

from adapters import xmlsafe
from adapters.cim import codes
from adapters.cim.envelope import build_element, event, parse_time
from adapters.cim.events import build_events
from adapters.cim.readings_answer import build_meter_readings

if TYPE_CHECKING:
    from hub.config import CimSection, CimSubscriber
    from hub.runtime import Hub
    from hub.services.alerts import AlertRecord

log = logging.getLogger("mdmhub.cim.publish")
CHANNEL = "cim"
MSG_NS = "http://iec.ch/TC57/2011/schema/message"
SLOT = timedelta(minutes=30)
SWEEP_BATCH = 500
"""Unqueued alerts taken per transaction by the start-up sweep."""


def serialize(element: etree._Element) -> str:
    return etree.tostring(element, encoding="unicode")


class Publisher:
    """Builds and queues the hub's EventMessages and delivers them to subscribers."""

    def __init__(self, hub: Hub, settings: CimSection) -> None:
        self.hub = hub
        self.settings = settings

    def subscribers(self, noun: str) -> list[CimSubscriber]:
        return [s for s in self.settings.subscribers if noun in s.nouns]

    def _items(self, noun: str, elements: list[etree._Element], parts: int = 1) -> list[tuple[str, str, str]]:
        """(subscriber, topic, body) of every subscriber's copy of the EventMessages."""
        items: list[tuple[str, str, str]] = []
        subs = self.subscribers(noun)
        for n, element in enumerate(elements, start=1):
            props = [("MessageIndex", f"{n}/{parts}")] if parts > 1 else []
            for sub in subs:  # one MessageID per copy: each subscriber acknowledges its own
                msg = event(noun, [element], source=self.settings.source, properties=props)
                items.append((sub.name, noun, serialize(build_element(msg))))
        return items

    def _queue(self, noun: str, elements: list[etree._Element], parts: int = 1) -> int:
        if not self.subscribers(noun):
            return 0
        return self.hub.outbox.enqueue(CHANNEL, self._items(noun, elements, parts))

    def _alert_events(self, records: Sequence[AlertRecord]) -> list[tuple[str, str, str]]:
        if not self.subscribers("EndDeviceEvents"):
            return []
        alerts = [{"id": r.id, "raised_at": r.raised_at, "source": r.source, "severity": r.severity, "code": r.code,
                   "message": r.message, "ld_id": r.ld_id, "details": r.details} for r in records]
        return self._items("EndDeviceEvents", [build_events(alerts)])

    # hooks (called from worker threads, after the core stored what they publish) ---------------

    def on_alerts(self, records: Sequence[AlertRecord]) -> None:
        """Queue the batch's ``created EndDeviceEvents``; the alerts are marked queued in the same
        transaction (also with no subscriber, so a later one is not sent the history)."""
        self.hub.alerts.queue_events(records, CHANNEL, self._alert_events)

    def sweep(self) -> int:
        """Queue the events of alerts stored but never queued: the hub stopped between storing
        them and queueing their events, or another process (the CLI) stored them. Returns how many."""
        total = 0
        while batch := self.hub.alerts.unqueued(SWEEP_BATCH):
            total += self.hub.alerts.queue_events(batch, CHANNEL, self._alert_events)
        return total

    def on_run(self, run: dict[str, Any]) -> None:
        """After a scheduled cycle: the register values at its slot and the increment ending there,
        for every metering point of its head-end, in parts of ``readings_per_message`` points."""
        if run.get("kind") != "scheduled" or not self.subscribers("MeterReadings"):
            return
        slot = run["slot_time"]
        slot = slot if isinstance(slot, datetime) else parse_time(str(slot), "slot_time")
        points = self.hub.cim_reads.on_head_end(int(run["he_id"]))
        if not points:
            return
        size = self.settings.readings_per_message
        chunks = [points[i:i + size] for i in range(0, len(points), size)]
        types = list(codes.reading_types().values())
        elements = []
        for chunk in chunks:
            registers = self.hub.cim_reads.registers({p.group_id for p in chunk})
            series = self.hub.cim_reads.series([p.ld_id for p in chunk], slot - SLOT, slot + SLOT)
            elements.append(build_meter_readings(chunk, registers, series, types))
        self._queue("MeterReadings", elements, parts=len(elements))

    # delivery ------------------------------------------------------------------------------------

    async def deliver_once(self) -> int:
        """Offer every subscriber its due messages once, in order; returns how many were acknowledged."""
        acked = 0
        for sub in self.settings.subscribers:
            acked += await self._deliver(sub)
        return acked

    async def _deliver(self, sub: CimSubscriber) -> int:
        hub, st = self.hub, self.settings
        due = await hub.run(hub.outbox.due, CHANNEL, sub.name, st.publish_batch)
        if not due:
            return 0
        acked = 0
        timeout = aiohttp.ClientTimeout(total=sub.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i, item in enumerate(due):
                verdict, why = await self._post(session, sub.url, item.body)
                if verdict == "ack":
                    await hub.run(hub.outbox.acknowledged, [item.id])
                    acked += 1
                    continue
                if verdict == "reject":
                    log.warning("subscriber refused an event", extra={"subscriber": sub.name, "topic": item.topic,
                                                                      "error": why})
                    await hub.run(hub.outbox.reject, [item.id], why)
                    continue
                rest = [d.id for d in due[i:]]  # keep the order: the rest waits with this one
                at = await hub.run(hub.outbox.retry_later, rest, why, st.retry_min_s, st.retry_max_s)
                log.warning("subscriber unavailable; events kept", extra={
                    "subscriber": sub.name, "queued": len(rest), "error": why, "next_attempt_at": at.isoformat()})
                break
        return acked

    @staticmethod
    async def _post(session: aiohttp.ClientSession, url: str, body: str) -> tuple[str, str]:
        """``ack``, ``retry`` or ``reject``, with why."""
        try:
            async with session.post(url, data=body.encode(), headers={"Content-Type": "application/xml; charset=utf-8"}) as r:
                data = await r.content.read(4 * 1024 * 1024)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return "retry", f"{type(exc).__name__}: {exc}"[:500]
        if status >= 400:
            kind = "retry" if status >= 500 or status in (408, 429) else "reject"
            return kind, f"HTTP {status}"
        try:
            root = xmlsafe.parse(data)
        except Exception as exc:  # noqa: BLE001 - any unreadable answer is not an acknowledgement
            return "retry", f"answer is not XML: {exc}"[:500]
        reply = root if etree.QName(root).localname == "ResponseMessage" else next(
            (el for el in root.iter() if isinstance(el.tag, str) and etree.QName(el).localname == "ResponseMessage"),
            None)
        result = next((el.text for el in reply.iter() if isinstance(el.tag, str)
                       and etree.QName(el).localname == "Result"), None) if reply is not None else None
        if result in ("OK", "PARTIAL"):
            return "ack", ""
        if result == "FAILED":
            return "reject", f"subscriber answered FAILED: {etree.tostring(reply, encoding='unicode')[:400]}"
        return "retry", "the answer is not a ResponseMessage with a Result"


def install(app: web.Application, hub: Hub) -> Publisher:
    """Hook the publisher into the core and, while ``app`` runs, deliver queued events."""
    publisher = Publisher(hub, hub.settings.cim)
    hub.alerts.listeners.append(publisher.on_alerts)
    hub.collection.runs.listeners.append(publisher.on_run)

    async def loop() -> None:
        while True:
            try:
                await publisher.deliver_once()
            except Exception:  # noqa: BLE001 - the loop outlives a database or network hiccup
                log.warning("event delivery round failed", exc_info=True)
            await asyncio.sleep(hub.settings.cim.publish_interval_s)

    async def runner(_: web.Application) -> AsyncIterator[None]:
        try:
            swept = await hub.run(publisher.sweep)
            if swept:
                log.info("events of alerts left unqueued are queued", extra={"alerts": swept})
        except Exception:  # noqa: BLE001 - the alerts stay marked unqueued for the next start
            log.warning("sweep of unqueued alert events failed", exc_info=True)
        task = asyncio.create_task(loop()) if hub.settings.cim.subscribers else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(runner)
    return publisher
