"""openleadr event dicts -> the hub's canonical :class:`DrEvent`, by the table in ``mappings/openadr.toml``.

openleadr parses oadrDistributeEvent into nested dicts (``event_descriptor``, ``active_period``,
``event_signals``, ``targets``); this module is the only place that knows that shape. Whatever is
wrong with an event raises :class:`TranslationError` carrying the OpenADR status code to answer
with, so one bad event in a distribute message never spoils the others.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import mappings
from hub.services.adr_events import SIMPLE, STATUSES, DrEvent, Interval, Signal, Targets, utc

DEFAULT_TABLE = "openadr.toml"
TARGET_RULES = ("all", "ld", "cluster", "customer", "ignore")
TARGET_KINDS = ("ven_id", "resource_id", "group_id", "party_id")
INVALID_DATA, SIGNAL_NOT_SUPPORTED, TARGET_MISMATCH = 454, 460, 462
MAX_ID = 128


class TranslationError(ValueError):
    """An event the hub cannot take: ``code`` is the OpenADR response code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class OpenAdrMapping:
    """The loaded mapping table (see mappings/openadr.toml for what each key means)."""

    rules: dict[str, str] = field(default_factory=lambda: {"ven_id": "all", "resource_id": "ld",
                                                           "group_id": "cluster", "party_id": "customer"})
    strip_prefix: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)
    supported_signals: frozenset[str] = frozenset({"SIMPLE", "LOAD_DISPATCH", "LOAD_CONTROL"})
    simple_max_level: int = 3
    max_duration_s: int = 86400
    max_intervals: int = 96


def load_mapping(path: Path | None = None) -> OpenAdrMapping:
    """Read and check the table; a bad table raises ValueError naming the key (the hub stops at start)."""
    with open(path or mappings.path(DEFAULT_TABLE), "rb") as f:
        raw = tomllib.load(f)
    targets = raw.get("targets", {})
    rules = {k: targets[k] for k in TARGET_KINDS if k in targets}
    for kind, rule in rules.items():
        if rule not in TARGET_RULES:
            raise ValueError(f"openadr mapping: targets.{kind} = {rule!r}; expected one of {TARGET_RULES}")
    aliases: dict[str, tuple[str, str]] = {}
    for name, spec in (targets.get("aliases") or {}).items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("ld", "cluster", "customer"):
            raise ValueError(f"openadr mapping: targets.aliases.{name} must be one of "
                             "{ld = ...}, {cluster = ...}, {customer = ...}")
        ((what, value),) = spec.items()
        aliases[str(name)] = (what, str(value))
    signals = raw.get("signals", {})
    limits = raw.get("limits", {})
    return OpenAdrMapping(rules={**OpenAdrMapping().rules, **rules},
                    strip_prefix={k: str(v) for k, v in (targets.get("strip_prefix") or {}).items() if v},
                    aliases=aliases,
                    supported_signals=frozenset(signals.get("supported", OpenAdrMapping.supported_signals)),
                    simple_max_level=int(signals.get("simple_max_level", 3)),
                    max_duration_s=int(limits.get("max_duration_s", 86400)),
                    max_intervals=int(limits.get("max_intervals", 96)))


def _seconds(value: Any, what: str, *, negative: bool = False) -> int:
    if value is None or value == "":
        return 0
    if not isinstance(value, timedelta):
        raise TranslationError(INVALID_DATA, f"{what} is not a duration: {value!r}")
    seconds = int(value.total_seconds())
    if seconds < 0 and not negative:
        raise TranslationError(INVALID_DATA, f"{what} is negative")
    return seconds


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise TranslationError(INVALID_DATA, f"{what} is not a UTC date-time: {value!r}")
    return utc(value)


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise TranslationError(INVALID_DATA, f"{what} is missing or empty")
    text = str(value).strip()
    if len(text) > MAX_ID:
        raise TranslationError(INVALID_DATA, f"{what} is longer than {MAX_ID} characters")
    return text


def _test_flag(value: Any) -> bool:
    """testEvent is a string: anything but ``false`` (or nothing) is a test event."""
    if value is None or value is False:
        return False
    return str(value).strip().lower() != "false"


def _signals(raw: Any, dtstart: datetime, m: OpenAdrMapping) -> tuple[Signal, ...]:
    if isinstance(raw, Mapping):
        raw = raw.get("event_signals", [])
    if not isinstance(raw, list) or not raw:
        raise TranslationError(INVALID_DATA, "the event has no signals")
    out = []
    for n, s in enumerate(raw):
        if not isinstance(s, Mapping):
            raise TranslationError(INVALID_DATA, f"signal {n} is not a signal")
        name, kind = s.get("signal_name"), s.get("signal_type")
        if not isinstance(name, str) or not name or not isinstance(kind, str) or not kind:
            raise TranslationError(INVALID_DATA, f"signal {n} has no signalName or signalType")
        intervals_raw = s.get("intervals") or []
        if not isinstance(intervals_raw, list) or not intervals_raw:
            raise TranslationError(INVALID_DATA, f"signal {name} has no intervals")
        if len(intervals_raw) > m.max_intervals:
            raise TranslationError(INVALID_DATA, f"signal {name} has more than {m.max_intervals} intervals")
        ordered = sorted(intervals_raw, key=lambda i: int(i.get("uid", 0) or 0) if isinstance(i, Mapping) else 0)
        start, intervals = dtstart, []
        for i in ordered:
            if not isinstance(i, Mapping):
                raise TranslationError(INVALID_DATA, f"signal {name} has a malformed interval")
            seconds = _seconds(i.get("duration"), f"signal {name} interval duration")
            value = i.get("signal_payload")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TranslationError(INVALID_DATA, f"signal {name} interval payload is not a number: {value!r}")
            if name == SIMPLE and (value != int(value) or not 0 <= value <= m.simple_max_level):
                raise TranslationError(INVALID_DATA, f"SIMPLE level {value} is not one of 0..{m.simple_max_level}")
            intervals.append(Interval(start, seconds, float(value)))
            start += timedelta(seconds=seconds)  # interval start = dtstart + the earlier durations
        current = s.get("current_value")
        out.append(Signal(name, kind, tuple(intervals), str(s["signal_id"]) if s.get("signal_id") else None,
                          float(current) if isinstance(current, int | float) else None))
    if not any(s.name in m.supported_signals for s in out):
        raise TranslationError(SIGNAL_NOT_SUPPORTED,
                               f"no supported signal (got {', '.join(sorted({s.name for s in out}))}; "
                               f"supported: {', '.join(sorted(m.supported_signals))})")
    return tuple(out)


def _target_items(event: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    targets = event.get("targets")
    if targets is None and isinstance(event.get("targets_by_type"), Mapping):
        targets = [{k: v} for k, vs in event["targets_by_type"].items() for v in (vs if isinstance(vs, list) else [vs])]
    if isinstance(targets, Mapping):
        targets = [targets]
    for t in targets or []:
        if not isinstance(t, Mapping):
            raise TranslationError(INVALID_DATA, "a target is malformed")
        for kind, value in t.items():
            for v in value if isinstance(value, list) else [value]:
                if v is not None and v != "":
                    yield str(kind), _id(v, f"target {kind}")


def translate_targets(event: Mapping[str, Any], ven_ids: set[str], m: OpenAdrMapping) -> Targets:
    """eiTarget -> LDs, clusters, customers. No target, or our own venID, means the VEN as a whole;
    values are OR'd; IDs the mapping cannot place are kept in ``unknown``."""
    everything, seen = False, False
    lds, clusters, customers, unknown = [], [], [], []
    buckets = {"ld": lds, "cluster": clusters, "customer": customers}
    for kind, value in _target_items(event):
        seen = True
        if value in m.aliases:
            what, name = m.aliases[value]
            buckets[what].append(name)
            continue
        rule = m.rules.get(kind)
        if rule is None:
            unknown.append((kind, value))
        elif rule == "all":
            if kind == "ven_id" and ven_ids and value not in ven_ids:
                unknown.append((kind, value))
            else:
                everything = True
        elif rule != "ignore":
            prefix = m.strip_prefix.get(kind, "")
            buckets[rule].append(value[len(prefix):] if prefix and value.startswith(prefix) else value)
    if not seen:
        everything = True
    return Targets(everything, tuple(dict.fromkeys(lds)), tuple(dict.fromkeys(clusters)),
                   tuple(dict.fromkeys(customers)), tuple(unknown))


def event_key(event: Any) -> tuple[str | None, int | None]:
    """(eventID, modificationNumber) as far as they can be read, for answering a bad event."""
    try:
        d = event.get("event_descriptor") or {}
        mod = d.get("modification_number")
        return (str(d["event_id"]) if d.get("event_id") is not None else None,
                int(mod) if isinstance(mod, int) and not isinstance(mod, bool) else None)
    except (AttributeError, TypeError, ValueError):
        return None, None


def translate_event(event: Any, *, ven_ids: set[str], mapping: OpenAdrMapping | None = None) -> DrEvent:
    """One openleadr event dict -> :class:`DrEvent`; raises :class:`TranslationError`."""
    m = mapping or OpenAdrMapping()
    if not isinstance(event, Mapping):
        raise TranslationError(INVALID_DATA, "the event is not an event")
    d = event.get("event_descriptor")
    period = event.get("active_period")
    if not isinstance(d, Mapping) or not isinstance(period, Mapping):
        raise TranslationError(INVALID_DATA, "the event has no eventDescriptor or eiActivePeriod")
    event_id = _id(d.get("event_id"), "eventID")
    mod = d.get("modification_number", 0)
    if isinstance(mod, bool) or not isinstance(mod, int) or mod < 0:
        raise TranslationError(INVALID_DATA, f"modificationNumber {mod!r} is not a whole number >= 0")
    status = str(d.get("event_status") or "none")
    if status not in STATUSES:
        raise TranslationError(INVALID_DATA, f"eventStatus {status!r} is not one of {', '.join(STATUSES)}")
    priority = d.get("priority") or 0
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise TranslationError(INVALID_DATA, f"priority {priority!r} is not a whole number >= 0")
    context = d.get("market_context")
    if context is not None and (not isinstance(context, str) or len(context) > 256):
        raise TranslationError(INVALID_DATA, "marketContext is not a URI of at most 256 characters")
    dtstart = _time(period.get("dtstart"), "dtstart")
    duration = _seconds(period.get("duration"), "duration")
    tolerance = period.get("tolerance") or {}
    startafter = (tolerance.get("tolerate") or {}).get("startafter") if isinstance(tolerance, Mapping) else None
    signals = _signals(event.get("event_signals"), dtstart, m)
    summed = max(sum(i.duration_s for i in s.intervals) for s in signals)
    if duration and summed and summed != duration:
        raise TranslationError(INVALID_DATA, f"the intervals add up to {summed} s, the active period is {duration} s")
    created = d.get("created_date_time")
    return DrEvent(
        event_id=event_id, modification_number=mod, dtstart=dtstart, duration_s=duration,
        market_context=context or None, priority=priority, status=status,
        test=_test_flag(d.get("test_event")),
        tolerance_s=_seconds(startafter, "tolerance startafter"),
        notification_s=_seconds(period.get("notification"), "x-eiNotification"),
        ramp_up_s=_seconds(period.get("ramp_up"), "x-eiRampUp", negative=True),
        recovery_s=_seconds(period.get("recovery"), "x-eiRecovery", negative=True),
        signals=signals, targets=translate_targets(event, ven_ids, m),
        response_required=event.get("response_required", "always") != "never",
        vtn_comment=str(d["vtn_comment"])[:512] if d.get("vtn_comment") else None,
        created_at=utc(created) if isinstance(created, datetime) and created.tzinfo else None)
