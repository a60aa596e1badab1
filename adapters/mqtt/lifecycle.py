"""Run the unit subscriber for as long as the web application runs, when ``[mqtt] enabled``:
readings go to the collection service's ingest (the polled reads' path) and unknown units to the
alert history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.mqtt.mapping import load_mapping
from adapters.mqtt.payloads import UnitReading
from adapters.mqtt.subscriber import Ingest, OnUnknown, UnitSubscriber
from hub.ports import RegisterRead
from hub.services.diagnosis import AlertDraft

if TYPE_CHECKING:
    from hub.runtime import Hub

MQTT_APP_KEY: web.AppKey[UnitSubscriber] = web.AppKey("mqtt_units", UnitSubscriber)
SOURCE = "mqtt"  # usage rows and alerts say where they came from
UNKNOWN_UNIT_CODE = "mqtt.unknown-unit"


def install(app: web.Application, hub: Hub) -> None:
    """Wire the subscriber to ``hub.collection.ingest_reads`` and ``hub.alerts``."""

    async def ingest(reads: list[RegisterRead]) -> dict[str, Any]:
        return await hub.run(hub.collection.ingest_reads, reads, SOURCE)

    setup_mqtt(app, hub, ingest, alert_unknown_units(hub))


def alert_unknown_units(hub: Hub) -> OnUnknown:
    """An alert in the history (and to the NMS) for a unit whose readings were not stored."""

    async def on_unknown(unit_id: str, readings: list[UnitReading]) -> None:
        times = sorted(r.measured_time for r in readings)
        draft = AlertDraft(code=UNKNOWN_UNIT_CODE, severity="warning", source=SOURCE,
                           message=f"readings pushed by unknown unit {unit_id} were not stored: no installed "
                                   "logical device has that serial or MAC",
                           details={"unit_id": unit_id, "readings": len(readings),
                                    "first_time": times[0].isoformat(), "last_time": times[-1].isoformat()})
        await hub.run(hub.alerts.raise_alerts, [draft])

    return on_unknown


def setup_mqtt(app: web.Application, hub: Hub, ingest: Ingest, on_unknown: OnUnknown | None = None) -> None:
    """Start the subscriber on application start-up and stop it (storing what it holds) on clean-up.

    The mapping table is read here, so a bad table stops the hub at once rather than at start-up.
    """
    if not hub.settings.mqtt.enabled:
        return
    from adapters.mqtt import build_subscriber

    subscriber = build_subscriber(hub, ingest, on_unknown, mapping=load_mapping(hub.settings.mqtt.mapping_file))
    app[MQTT_APP_KEY] = subscriber

    async def start(_: web.Application) -> None:
        await subscriber.start()

    async def stop(_: web.Application) -> None:
        await subscriber.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
