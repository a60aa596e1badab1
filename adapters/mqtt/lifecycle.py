"""Run the unit subscriber for as long as the web application runs, when ``[mqtt] enabled``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from adapters.mqtt.mapping import load_mapping
from adapters.mqtt.subscriber import Ingest, OnUnknown, UnitSubscriber

if TYPE_CHECKING:
    from hub.runtime import Hub

MQTT_APP_KEY: web.AppKey[UnitSubscriber] = web.AppKey("mqtt_units", UnitSubscriber)


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
