"""MQTT push units (seed 000): wireless units on meters publish their 30-minute energy readings
to a broker; the hub subscribes, maps topics and payloads to logical devices through
``mappings/mqtt_units.toml`` and stores the readings on the same path as polled reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.mqtt.mapping import MappingError, TopicMapping, UnitMapping, load_mapping, parse_mapping
from adapters.mqtt.payloads import MalformedPayload, UnitReading, parse_message
from adapters.mqtt.subscriber import Ingest, OnUnknown, UnitSubscriber

if TYPE_CHECKING:
    from hub.runtime import Hub

__all__ = ["Ingest", "MalformedPayload", "MappingError", "OnUnknown", "TopicMapping", "UnitMapping",
           "UnitReading", "UnitSubscriber", "build_subscriber", "load_mapping", "parse_mapping", "parse_message"]


def build_subscriber(hub: Hub, ingest: Ingest, on_unknown: OnUnknown | None = None,
                     mapping: UnitMapping | None = None) -> UnitSubscriber:
    """A subscriber configured from ``hub.settings.mqtt`` that resolves units through ``hub.units``."""
    settings = hub.settings.mqtt

    async def resolve(unit_ids: list[str], ld_address: int) -> dict[str, str]:
        return await hub.run(hub.units.ld_ids_of, unit_ids, ld_address)

    return UnitSubscriber(settings, mapping or load_mapping(settings.mapping_file), resolve=resolve,
                          ingest=ingest, on_unknown=on_unknown)
