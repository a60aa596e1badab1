"""Subscriber for wireless units that push their 30-minute readings over MQTT.

One long-lived task holds the broker connection (QoS 1, persistent session under a fixed client
ID, so the broker queues readings while the hub is away) and reconnects with exponential back-off.
Each message is parsed and checked on arrival; good readings wait a moment to be stored in small
batches through ``ingest`` (idempotent, so a broker redelivery changes nothing). Malformed
messages and unknown units are logged and counted and never stop the subscriber; readings from
unknown units are not stored and are reported through ``on_unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiomqtt

from adapters.mqtt.mapping import TopicMapping, UnitMapping
from adapters.mqtt.payloads import MalformedPayload, UnitReading, parse_message
from hub.config import MqttSection
from hub.ports import RegisterRead

log = logging.getLogger("mdmhub.mqtt")

Ingest = Callable[[list[RegisterRead]], Awaitable[Any]]
"""Stores reads on the polled reads' path; must be idempotent for (ld_id, sub_number, time). A
mapping result with a ``rejected`` list names reads the store refused."""
Resolve = Callable[[list[str], int], Awaitable[dict[str, str]]]
"""unit IDs and LD address -> LD_ID of each known unit."""
OnUnknown = Callable[[str, list[UnitReading]], Awaitable[None]]
"""Called once per unknown unit (at most every ``UNKNOWN_ALERT_SECONDS``) with its refused readings."""

QOS = 1
UNKNOWN_ALERT_SECONDS = 3600.0  # a misconfigured unit pushes every 30 minutes: one alert an hour is enough
FIRST_BACKOFF_SECONDS = 0.5
STAT_KEYS = ("received", "stored", "unknown_unit", "malformed", "rejected", "failed")


class UnitSubscriber:
    """Subscribe, parse, resolve and ingest; :meth:`start` and :meth:`stop` follow the app's life.

    ``stats``: ``received`` messages, ``stored`` register reads the store took (a redelivered one
    counts again but changes nothing), ``unknown_unit`` readings refused for an unknown unit,
    ``malformed`` messages refused whole, ``rejected`` register reads the store refused (e.g. a
    register the device type lacks), ``failed`` readings whose store raised (logged; the batch is
    not retried: the unit's next push or re-collection fills the gap).
    """

    def __init__(self, settings: MqttSection, mapping: UnitMapping, *, resolve: Resolve, ingest: Ingest,
                 on_unknown: OnUnknown | None = None) -> None:
        self.settings = settings
        self.mapping = mapping
        self.topic_filters = list(settings.topics) or mapping.topic_filters
        self._resolve = resolve
        self._ingest = ingest
        self._on_unknown = on_unknown
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.connected = asyncio.Event()
        self._pending: list[tuple[TopicMapping, UnitReading]] = []
        self._wake = asyncio.Event()
        self._alerted: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing = asyncio.Lock()

    # lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._connection_loop(), name="mqtt-connection"),
                       asyncio.create_task(self._flush_loop(), name="mqtt-flush")]
        log.info("mqtt subscriber started", extra={"host": self.settings.host, "port": self.settings.port,
                                                   "topics": self.topic_filters})

    async def stop(self) -> None:
        """Disconnect, then store what was already received (a batch being stored is finished)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected.clear()
        await self.flush()
        log.info("mqtt subscriber stopped", extra={"stats": dict(self.stats)})

    # connection ----------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                async with self._client() as client:
                    for topic in self.topic_filters:
                        await client.subscribe(topic, qos=QOS)
                    self.connected.set()
                    backoff = FIRST_BACKOFF_SECONDS
                    log.info("mqtt connected", extra={"host": self.settings.host, "port": self.settings.port})
                    async for message in client.messages:
                        self.handle(str(message.topic), _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("mqtt connection lost; reconnecting",
                            extra={"error": str(exc), "retry_in_s": backoff, "host": self.settings.host})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_seconds)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        tls = ssl.create_default_context(cafile=str(s.tls_ca_file) if s.tls_ca_file else None) if s.tls else None
        return aiomqtt.Client(s.host, s.port, username=s.username, password=s.password, identifier=s.client_id,
                              clean_session=not s.persistent_session, tls_context=tls, timeout=10)

    # messages ------------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Check one message and queue its readings; a bad one is logged and counted, never raised."""
        self.stats["received"] += 1
        matched = self.mapping.match(topic)
        try:
            if matched is None:
                raise MalformedPayload("topic matches no family of the unit mapping table")
            family, unit_id = matched
            readings = parse_message(family, unit_id, payload)
        except MalformedPayload as exc:
            self.stats["malformed"] += 1
            log.warning("mqtt malformed payload", extra={"topic": topic, "reason": str(exc),
                                                         "payload": payload[:200].decode("utf-8", "replace")})
            return
        self._pending.extend((family, reading) for reading in readings)
        if len(self._pending) >= self.settings.batch_size:
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_seconds)
            self._wake.clear()
            await asyncio.shield(self.flush())  # cancelling the loop never cuts a store in half

    async def flush(self) -> None:
        """Resolve and store every queued reading, in batches of ``batch_size``, one flush at a time."""
        async with self._flushing:
            while self._pending:
                size = self.settings.batch_size
                batch, self._pending = self._pending[:size], self._pending[size:]
                try:
                    await self._store(batch)
                except Exception:  # noqa: BLE001 - a failing store must not end the subscriber
                    self.stats["failed"] += len(batch)
                    log.exception("mqtt readings not stored", extra={"readings": len(batch)})

    async def _store(self, batch: Sequence[tuple[TopicMapping, UnitReading]]) -> None:
        by_address: dict[int, list[UnitReading]] = {}
        for family, reading in batch:
            by_address.setdefault(family.ld_address, []).append(reading)
        reads: list[RegisterRead] = []
        unknown: dict[str, list[UnitReading]] = {}
        for address, readings in by_address.items():
            ld_ids = await self._resolve(sorted({r.unit_id for r in readings}), address)
            for reading in readings:
                ld_id = ld_ids.get(reading.unit_id)
                if ld_id is None:
                    unknown.setdefault(reading.unit_id, []).append(reading)
                    continue
                reads.extend(RegisterRead(ld_id, sub, reading.measured_time, value)
                             for sub, value in sorted(reading.values.items()))
        if reads:
            result = await self._ingest(reads)
            refused = list(result.get("rejected") or []) if isinstance(result, Mapping) else []
            if refused:
                log.warning("mqtt readings refused by the store", extra={"refused": len(refused),
                                                                         "first": refused[0]})
            self.stats["rejected"] += len(refused)
            self.stats["stored"] += len(reads) - len(refused)
        for unit_id, readings in unknown.items():
            await self._report_unknown(unit_id, readings)
            self.stats["unknown_unit"] += len(readings)

    async def _report_unknown(self, unit_id: str, readings: list[UnitReading]) -> None:
        log.warning("mqtt reading from unknown unit not stored",
                    extra={"unit_id": unit_id, "readings": len(readings),
                           "first_time": readings[0].measured_time.isoformat()})
        now = time.monotonic()
        last = self._alerted.get(unit_id)
        if self._on_unknown is None or (last is not None and now - last < UNKNOWN_ALERT_SECONDS):
            return
        if len(self._alerted) > 10_000:
            self._alerted.clear()
        self._alerted[unit_id] = now
        try:
            await self._on_unknown(unit_id, readings)
        except Exception:  # noqa: BLE001 - the readings are refused either way; the alert is best effort
            log.exception("mqtt unknown-unit alert not raised", extra={"unit_id": unit_id})


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode("utf-8")
