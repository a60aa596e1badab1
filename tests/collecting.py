"""Shared set-up of the collection tests: a hub wired to the real head-end simulator under a clock
the test moves, and a few installed, provisioned meters on chosen head-ends."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from adapters.headend.registry import build_head_end
from hub.config import Settings
from hub.db import Database
from hub.demo import demo_rows, seed_catalogue
from hub.model import LogicalDevice, PhysicalDevice, UsageHistory
from hub.runtime import Hub
from hub.services.provisioning import ProvisioningUpdate

SLOT = timedelta(minutes=30)
START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


@dataclass
class Clock:
    """The time every simulated head-end and the hub agree on; tests move it."""

    now: datetime = field(default=START + timedelta(minutes=1))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta = SLOT) -> datetime:
        self.now += delta
        return self.now


def collecting_hub(settings: Settings, clock: Clock, **collection: Any) -> Hub:
    if collection:
        settings = settings.model_copy(update={"collection": settings.collection.model_copy(update=collection)})
    hub = Hub(settings, Database.from_url(settings.database_url),
              head_end_factory=functools.partial(build_head_end, clock=clock))
    hub.collection.clock = clock
    return hub


def install_meters(hub: Hub, per_head_end: dict[int, int], *, overrides: dict[int, dict[str, Any]] | None = None,
                   unprovisioned: set[int] = frozenset(), catalogue: bool = True) -> list[str]:  # type: ignore[assignment]
    """Register installed meters (``{he_id: count}``, numbered from 1 in head-end order), provisioned
    and keyed (use state A) except the numbers in ``unprovisioned``; ``overrides`` changes the
    registration record of meter n. Returns their LD_IDs in order (None where none was given)."""
    if catalogue:
        seed_catalogue(hub)
    rows: list[dict[str, Any]] = []
    for he_id, count in sorted(per_head_end.items()):
        for row in demo_rows(count, seed=he_id):
            n = len(rows) + 1
            rows.append({**row, "he_id": he_id, "pd_id": f"PD-{n:06d}", "serial": f"SN-{n:06d}",
                         "mac": f"02AA00{n:06X}", "ld_id": f"LD-{n:06d}", **(overrides or {}).get(n, {})})
    report = hub.registry.import_json(rows, atomic=True)
    assert not report.failed, report.as_dict()
    with hub.db.session() as s:
        keys = list(s.scalars(select(PhysicalDevice.id).order_by(PhysicalDevice.id)))
    for n, key in enumerate(keys[-len(rows):], start=1):
        if n not in unprovisioned:
            provision(hub, key)
    return [r.get("ld_id") for r in rows]


def provision(hub: Hub, key: int) -> None:
    hub.provisioning.update("physical-device", key, ProvisioningUpdate(
        dhcp_done=True, provisioned=True, common_key=f"key-{key}"))


def set_head_end(hub: Hub, he_id: int, **settings: Any) -> None:
    """Change a head-end's settings (the simulator's ``failure_rate``, ``latency_s``...)."""
    from hub.services.admin import HeadEndPatch

    current = hub.admin.get_head_end(he_id)["settings"]
    hub.admin.update_head_end(he_id, HeadEndPatch(settings={**current, **settings}))


def device_key(hub: Hub, ld_id: str) -> int:
    with hub.db.session() as s:
        return s.scalars(select(LogicalDevice.physical_device_id).where(LogicalDevice.ld_id == ld_id)).one()


def usage_rows(hub: Hub, ld_id: str | None = None, sub: int | None = None) -> list[UsageHistory]:
    with hub.db.session() as s:
        q = select(UsageHistory)
        if ld_id is not None:
            q = q.where(UsageHistory.ld_id == ld_id)
        if sub is not None:
            q = q.where(UsageHistory.sub_number == sub)
        return list(s.scalars(q.order_by(UsageHistory.ld_id, UsageHistory.sub_number, UsageHistory.measured_time)))
