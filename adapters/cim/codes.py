"""The code tables of the 61968-9 edge, loaded once from ``mappings/cim_*.toml``.

Reply error codes, ReadingType codes <-> registers, ReadingQualityType codes <-> quality flags,
EndDeviceControlType codes <-> commands and EndDeviceEventType codes <-> alerts. A new code is a
row in a table, not a code change.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from typing import Any

import mappings

RT_FIELDS = ("macroPeriod", "aggregate", "measuringPeriod", "accumulation", "flowDirection", "commodity",
             "measurementKind", "interharmonicNumerator", "interharmonicDenominator", "argumentNumerator",
             "argumentDenominator", "tou", "cpp", "consumptionTier", "phases", "multiplier", "unit", "currency")


@dataclass(frozen=True)
class ErrorCode:
    key: str
    code: str
    result: str
    level: str
    reason: str
    verified: bool


@dataclass(frozen=True)
class ReadingTypeRow:
    mrid: str
    obis: str
    role: str  # "register" | "interval"
    ingest: bool
    name: str

    def fields(self) -> dict[str, str]:
        return dict(zip(RT_FIELDS, self.mrid.split("."), strict=True))


def _load(name: str) -> dict[str, Any]:
    with mappings.path(name).open("rb") as f:
        return tomllib.load(f)


@functools.cache
def error_codes() -> dict[str, ErrorCode]:
    return {key: ErrorCode(key=key, code=row["code"], result=row["result"], level=row["level"],
                           reason=row["reason"], verified=bool(row.get("verified", False)))
            for key, row in _load("cim_error_codes.toml")["code"].items()}


def error(key: str) -> ErrorCode:
    return error_codes()[key]


@functools.cache
def reading_types() -> dict[str, ReadingTypeRow]:
    rows = {}
    for row in _load("cim_reading_types.toml")["reading_type"]:
        rt = ReadingTypeRow(mrid=row["mrid"], obis=row["obis"], role=row["role"], ingest=bool(row["ingest"]),
                            name=row["name"])
        if len(rt.mrid.split(".")) != len(RT_FIELDS) or not all(p.lstrip("-").isdigit() for p in rt.mrid.split(".")):
            raise ValueError(f"ReadingType {rt.mrid!r} is not an 18-field dotted code")
        rows[rt.mrid] = rt
    return rows


def is_reading_type_code(code: str) -> bool:
    parts = code.split(".")
    return len(parts) == len(RT_FIELDS) and all(p.lstrip("-").isdigit() for p in parts)


@functools.cache
def _codes() -> dict[str, Any]:
    return _load("cim_codes.toml")


@functools.cache
def quality_codes() -> dict[str, str]:
    """Hub quality flag name -> ReadingQualityType code."""
    return dict(_codes()["quality"])


@functools.cache
def quality_flags_by_code() -> dict[str, str]:
    return {code: name for name, code in quality_codes().items()}


@functools.cache
def control_commands() -> dict[str, dict[str, str]]:
    """EndDeviceControlType code -> row (``command``, ``name``)."""
    return {row["code"]: row for row in _codes()["control"]}


def control_command(code: str) -> str | None:
    """The hub command of a control type code; the device type (first field) may differ from the row's."""
    rows = control_commands()
    if code in rows:
        return rows[code]["command"]
    parts = code.split(".")
    if len(parts) != 4:
        return None
    for known, row in rows.items():
        if known.split(".")[1:] == parts[1:]:
            return row["command"]
    return None


@functools.cache
def event_types() -> list[dict[str, str]]:
    return list(_codes()["event"])


def event_code_for_alert(alert_code: str) -> str:
    rows = event_types()
    for row in rows:
        if row.get("alert") == alert_code:
            return row["code"]
    return next(row["code"] for row in rows if row.get("alert") == "*")


def event_code_for_control(command: str) -> str:
    return next(row["code"] for row in event_types() if row.get("control") == command)


def event_type_name(code: str) -> str:
    return next((row["name"] for row in event_types() if row["code"] == code), code)


def alert_codes_for_event(code: str) -> list[str]:
    return [row["alert"] for row in event_types() if row["code"] == code and row.get("alert") not in (None, "*")]
