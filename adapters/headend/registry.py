"""Build the HeadEnd for a head-end row from its ``adapter`` name and ``settings``, so the core gets
a port implementation per head-end without importing any adapter class.

Adapters register a factory under their name (:func:`register_adapter`); the simulator is built in.
Settings are validated strictly: an unknown key or a wrong type is an error naming the head-end
and the key, rather than a silently ignored typo.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.headend.simulator import SimulatedHeadEnd
from hub.ports import HeadEnd


class HeadEndConfigError(ValueError):
    """A head-end row names an unknown adapter or carries settings the adapter cannot use."""


class AdapterFactory(Protocol):
    def __call__(self, he_id: int, settings: Mapping[str, Any], *,
                 clock: Callable[[], datetime] | None = None) -> HeadEnd: ...


class SimulatorSettings(BaseModel):
    """The ``settings`` of a head-end row whose adapter is ``simulator``."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, description="defaults to the head-end ID")
    latency_s: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    memory_days: int = Field(60, ge=1)
    tz_offset_hours: float = Field(9, ge=-14, le=14)
    concurrency: int = Field(32, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    reboot_s: float = Field(30.0, ge=0)


def _simulator(he_id: int, settings: Mapping[str, Any], *,
               clock: Callable[[], datetime] | None = None) -> HeadEnd:
    s = SimulatorSettings.model_validate(dict(settings))
    options = s.model_dump(exclude={"seed"})
    return SimulatedHeadEnd(he_id, seed=he_id if s.seed is None else s.seed, clock=clock, **options)


_ADAPTERS: dict[str, AdapterFactory] = {"simulator": _simulator}


def register_adapter(name: str, factory: AdapterFactory) -> None:
    """Make ``name`` usable as a head-end row's ``adapter``."""
    _ADAPTERS[name] = factory


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def build_head_end(he_id: int, adapter: str, settings: Mapping[str, Any] | None = None, *,
                   clock: Callable[[], datetime] | None = None) -> HeadEnd:
    """The HeadEnd implementation for head-end ``he_id`` (``clock`` lets tests move time)."""
    factory = _ADAPTERS.get(adapter)
    if factory is None:
        raise HeadEndConfigError(f"head-end {he_id}: unknown adapter {adapter!r} "
                                 f"(known: {', '.join(adapter_names())})")
    try:
        return factory(he_id, settings or {}, clock=clock)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise HeadEndConfigError(f"head-end {he_id} ({adapter}) settings: {problems}") from e
    except ValueError as e:
        if isinstance(e, HeadEndConfigError):
            raise
        raise HeadEndConfigError(f"head-end {he_id} ({adapter}) settings: {e}") from e
