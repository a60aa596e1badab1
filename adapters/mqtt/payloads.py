"""Parse and check one MQTT message from a unit: JSON or CSV lines, snapshot times in aware UTC
on the 30-minute grid, finite non-negative register values. Anything else is refused whole, with
the reason, so a half-understood message never reaches the usage history."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.mqtt.mapping import TopicMapping
from hub.ports import SLOT_SECONDS

MAX_PAYLOAD_BYTES = 64 * 1024  # a unit sends one reading, or a few after an outage


class MalformedPayload(ValueError):
    """The message cannot be used; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class UnitReading:
    """One snapshot pushed by one unit: register sub_number -> value."""

    unit_id: str
    measured_time: datetime
    values: dict[int, float]


def parse_message(family: TopicMapping, topic_unit: str, payload: bytes) -> list[UnitReading]:
    """The readings of one message published on a topic of ``family`` by unit ``topic_unit``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("payload is not UTF-8 text") from None
    records = _json_records(text) if family.format == "json" else _csv_records(family, text)
    if not records:
        raise MalformedPayload("payload holds no reading")
    return [_reading(family, topic_unit, record, i) for i, record in enumerate(records)]


def _json_records(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    records = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in records):
        raise MalformedPayload("JSON payload must be an object or an array of objects")
    return records


def _csv_records(family: TopicMapping, text: str) -> list[dict[str, Any]]:
    records = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if tuple(c.lower() for c in cells) == tuple(c.lower() for c in family.columns):
            continue  # a header line
        if len(cells) != len(family.columns):
            raise MalformedPayload(f"line {line_no}: expected {len(family.columns)} fields "
                                   f"({','.join(family.columns)}), got {len(cells)}")
        records.append(dict(zip(family.columns, cells, strict=True)))
    return records


def _reading(family: TopicMapping, topic_unit: str, record: dict[str, Any], index: int) -> UnitReading:
    where = f"reading {index + 1}"
    unit = record.get(family.unit_field)
    if unit is not None and str(unit) != topic_unit:
        raise MalformedPayload(f"{where}: {family.unit_field} {unit!r} differs from the topic's unit {topic_unit!r}")
    when = snapshot_time(record.get(family.time_field), f"{where}: {family.time_field}")
    values = {sub: register_value(record.get(name), f"{where}: {name}") for name, sub in family.registers.items()}
    return UnitReading(topic_unit, when, values)


def snapshot_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time with a UTC offset, on the 30-minute grid, as aware UTC."""
    if not isinstance(value, str) or not value.strip():
        raise MalformedPayload(f"{where}: missing (ISO 8601 time with a UTC offset expected)")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MalformedPayload(f"{where}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise MalformedPayload(f"{where}: {value!r} has no UTC offset; local times are ambiguous")
    utc = parsed.astimezone(UTC)
    if utc.microsecond or int(utc.timestamp()) % SLOT_SECONDS:
        raise MalformedPayload(f"{where}: {value!r} is not on the 30-minute grid")
    return utc


def register_value(value: Any, where: str) -> float:
    """A finite, non-negative number (JSON number or numeric text)."""
    if value is None or isinstance(value, bool):
        raise MalformedPayload(f"{where}: missing (a number expected)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise MalformedPayload(f"{where}: {value!r} must be a finite, non-negative number")
    return number
