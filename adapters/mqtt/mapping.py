"""The MQTT units' mapping table (``mappings/mqtt_units.toml``): topic patterns, payload layouts
and the register each payload field feeds, loaded and checked once at start so a bad table stops
the hub instead of silently dropping readings."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import mappings

DEFAULT_TABLE = "mqtt_units.toml"
_PLACEHOLDER = "{unit_id}"


class TopicMapping(BaseModel):
    """One topic family: where units publish, how the payload reads, what each value feeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    pattern: str = Field(description="topic with one {unit_id} level, e.g. meters/{unit_id}/energy")
    format: Literal["json", "csv"]
    ld_address: int = Field(2, ge=1, le=65535)
    unit_field: str = "unit"
    time_field: str = "time"
    columns: tuple[str, ...] = ()
    registers: dict[str, int] = Field(min_length=1, description="payload field -> register sub_number")

    @field_validator("pattern")
    @classmethod
    def _one_unit_level(cls, value: str) -> str:
        levels = value.split("/")
        if levels.count(_PLACEHOLDER) != 1 or any(_PLACEHOLDER != lv and ("{" in lv or "}" in lv) for lv in levels):
            raise ValueError("must contain {unit_id} exactly once, as a whole topic level")
        if any(ch in value for ch in "+#"):
            raise ValueError("must not contain MQTT wildcards (+ or #)")
        return value

    @field_validator("registers")
    @classmethod
    def _sub_numbers(cls, value: dict[str, int]) -> dict[str, int]:
        if any(sub < 1 for sub in value.values()):
            raise ValueError("register sub_numbers are positive integers")
        return value

    @model_validator(mode="after")
    def _columns_cover_fields(self) -> TopicMapping:
        if self.format == "csv":
            needed = {self.time_field, *self.registers}
            missing = sorted(needed - set(self.columns))
            if missing:
                raise ValueError(f"csv columns must name {', '.join(missing)}")
        return self

    @property
    def topic_filter(self) -> str:
        """The MQTT subscription filter: the unit level becomes ``+``."""
        return self.pattern.replace(_PLACEHOLDER, "+")

    def unit_of(self, topic: str) -> str | None:
        """The unit ID carried by ``topic``, or None when the topic is not of this family."""
        match = _regex(self.pattern).fullmatch(topic)
        return match.group("unit_id") if match else None


def _regex(pattern: str) -> re.Pattern[str]:
    before, after = pattern.split(_PLACEHOLDER)
    return re.compile(re.escape(before) + r"(?P<unit_id>[^/]+)" + re.escape(after))


@dataclass(frozen=True)
class UnitMapping:
    """The whole table, in order: the first family whose pattern matches a topic wins."""

    topics: tuple[TopicMapping, ...]

    def match(self, topic: str) -> tuple[TopicMapping, str] | None:
        for family in self.topics:
            unit_id = family.unit_of(topic)
            if unit_id is not None:
                return family, unit_id
        return None

    @property
    def topic_filters(self) -> list[str]:
        return list(dict.fromkeys(family.topic_filter for family in self.topics))


class MappingError(Exception):
    """The mapping table cannot be used; the message names the table and the bad entry."""


def parse_mapping(data: dict[str, Any], where: str = "mapping") -> UnitMapping:
    entries = data.get("topic")
    if not isinstance(entries, list) or not entries:
        raise MappingError(f"{where}: needs at least one [[topic]] table")
    topics = []
    for i, entry in enumerate(entries):
        try:
            topics.append(TopicMapping.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'topic'}: {e['msg']}" for e in exc.errors())
            raise MappingError(f"{where}: topic #{i + 1}: {problems}") from None
    return UnitMapping(tuple(topics))


def load_mapping(path: Path | str | None = None) -> UnitMapping:
    """Read the table from ``path`` (default: the packaged ``mappings/mqtt_units.toml``)."""
    file = Path(path) if path is not None else mappings.path(DEFAULT_TABLE)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{file}: cannot read the MQTT unit mapping: {exc}") from None
    return parse_mapping(data, str(file))
