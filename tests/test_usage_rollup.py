"""The usage rollup behind the public aggregates: whatever was written or regrouped, the aggregates
read from it are the ones the live query over usage_history gives, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.model import (Cluster, Customer, CustomerLogicalDevice, LogicalDevice, UsageRollup, UsageRollupStale,
                       UsageRollupState)
from hub.runtime import Hub
from hub.services.access import Caller
from hub.services.public import AggregateQuery, QualityQuery
from hub.services.usage_writer import UsageWriter
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters

PERIOD = {"from": START - SLOT, "to": START + 6 * SLOT}
EVERYONE = Caller(kind="client", principal="signage", scopes=frozenset({"public:read"}))


@pytest.fixture
def rhub(settings) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"privacy": settings.privacy.model_copy(update={"k_anonymity": 2})})
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.clock = clock  # type: ignore[attr-defined]
    yield hub
    hub.close()


async def collect(hub: Hub, slots: int) -> list[str]:
    lds = install_meters(hub, {1: 9})
    clock: Clock = hub.clock  # type: ignore[attr-defined]
    for n in range(slots):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(1, START + n * SLOT)
    return lds


def rolled_and_live(hub: Hub, group_by: str, caller: Caller = EVERYONE) -> tuple[list[Any], list[Any]]:
    """Every register's totals per group and slot of the period: (from the rollup, from usage_history)."""
    period = AggregateQuery.model_validate(PERIOD)
    def norm(rows: list[Any]) -> list[Any]:
        return sorted((g, sub, t, None if tot.energy is None else round(tot.energy, 6), tot.meters, tot.customers,
                       tot.normal, tot.missing, tot.recollected) for g, sub, t, tot in rows)
    return (norm(hub.public._totals(caller, group_by, None, period, None)),
            norm(hub.public._live_totals(caller, group_by, None, period, None)))


def assert_rollup_is_live(hub: Hub, caller: Caller = EVERYONE) -> None:
    for group_by in ("cluster", "area"):
        rolled, live = rolled_and_live(hub, group_by, caller)
        assert rolled == live, group_by
        assert rolled, group_by


def energy_of(hub: Hub, t: datetime, cluster: str) -> float:
    body = hub.public.usage_aggregate(EVERYONE, AggregateQuery.model_validate({**PERIOD, "group": cluster}))
    return next(i["energy_kwh"] for i in body["items"] if i["period_start"] == t.isoformat().replace("+00:00", "Z"))


def ld_cluster(hub: Hub) -> dict[str, str]:
    with hub.db.session() as s:
        return dict(s.execute(select(LogicalDevice.ld_id, LogicalDevice.cluster_id)).all())


def generation(hub: Hub) -> int:
    with hub.db.session() as s:
        return s.scalar(select(func.max(UsageRollupState.generation))) or 0


async def test_collected_missing_and_filled_slots_add_up_as_in_usage_history(rhub):
    lds = await collect(rhub, 4)
    assert_rollup_is_live(rhub)
    # a slot collected with three meters silent: missing rows, then the gap filled by a late push
    t = START + 4 * SLOT
    writer = UsageWriter(rhub.db)
    silent = sorted(lds)[:3]
    writer.store(expected=[(ld, 1, t) for ld in lds], values=[(ld, 1, t, 10_000.0 + i) for i, ld in
                                                             enumerate(sorted(lds)) if ld not in silent],
                 cumulative=lambda *_: True, source="test")
    assert_rollup_is_live(rhub)
    quality = rhub.public.quality_summary(EVERYONE, QualityQuery.model_validate(PERIOD))
    assert sum(i["missing"] for i in quality["items"]) >= 3
    cluster = ld_cluster(rhub)[silent[0]]
    before = energy_of(rhub, t, cluster)
    writer.store(expected=(), values=[(silent[0], 1, t, 20_000.0)], cumulative=lambda *_: True, source="late")
    assert energy_of(rhub, t, cluster) != before
    assert_rollup_is_live(rhub)


async def test_regrouping_is_seen_by_the_next_answer(rhub):
    lds = await collect(rhub, 3)
    assert_rollup_is_live(rhub)
    with rhub.db.session() as s:  # two meters of one cluster become one customer's
        a, b = [ld for ld, c in sorted(ld_cluster(rhub).items()) if c == "demo-tower-a"][:2]
        s.add(Customer(customer_id="C-BOTH", name="one household"))
        s.flush()
        s.add_all([CustomerLogicalDevice(customer_id="C-BOTH", ld_id=a), CustomerLogicalDevice(customer_id="C-BOTH", ld_id=b)])
    assert_rollup_is_live(rhub)
    body = rhub.public.usage_aggregate(EVERYONE, AggregateQuery.model_validate({**PERIOD, "group": "demo-tower-a"}))
    meters = body["items"][0]["meters"]
    assert body["items"][0]["customers"] == meters - 1
    with rhub.db.session() as s:  # a tenant of one of them for the first hour only: a point with two links
        s.add(Customer(customer_id="C-TENANT", name="tenant"))
        s.flush()
        s.add(CustomerLogicalDevice(customer_id="C-TENANT", ld_id=b, valid_to=START + SLOT))
    assert_rollup_is_live(rhub)
    with rhub.db.session() as s:  # a meter moves to another cluster
        ld = s.scalars(select(LogicalDevice).where(LogicalDevice.ld_id == lds[0])).one()
        ld.cluster_id = "demo-district-1" if ld.cluster_id != "demo-district-1" else "demo-tower-b"
    assert_rollup_is_live(rhub)
    with rhub.db.session() as s:  # a cluster moves to an area of its own
        s.get(Cluster, "demo-tower-b").area = "harbour"
    assert_rollup_is_live(rhub)
    areas = rhub.public.usage_aggregate(EVERYONE, AggregateQuery.model_validate({**PERIOD, "group_by": "area"}))
    assert {i["group"] for i in areas["items"]} == {"demo", "harbour"}


async def test_a_caller_seeing_part_of_an_area_gets_only_that_part(rhub):
    await collect(rhub, 2)
    in_tower_a = sum(1 for c in ld_cluster(rhub).values() if c == "demo-tower-a")
    part = Caller(kind="client", principal="retail", scopes=frozenset({"public:read"}), groups=("cluster:demo-tower-a",))
    body = rhub.public.usage_aggregate(part, AggregateQuery.model_validate({**PERIOD, "group_by": "area"}))
    assert {i["group"] for i in body["items"]} == {"demo"}
    assert {i["meters"] for i in body["items"]} == {in_tower_a}
    whole = Caller(kind="client", principal="city", scopes=frozenset({"public:read"}), groups=("area:demo",))
    assert_rollup_is_live(rhub, whole)


async def test_a_write_during_a_roll_up_leaves_its_slot_stale(rhub, monkeypatch):
    lds = await collect(rhub, 2)
    rollup = rhub.public.rollup
    original = rollup._roll_up
    late = START + 2 * SLOT

    def roll_up_while_a_write_commits(conn: Any, lo: datetime, hi: datetime) -> None:
        if lo < late <= hi:  # another writer commits between reading the stale marks and the roll-up
            UsageWriter(rhub.db).store(expected=(), values=[(lds[0], 1, late, 30_000.0)],
                                       cumulative=lambda *_: True, source="late")
        original(conn, lo, hi)

    monkeypatch.setattr(rollup, "_roll_up", roll_up_while_a_write_commits)
    assert rollup.refresh(PERIOD["from"].astimezone(UTC), PERIOD["to"].astimezone(UTC)) > 0
    monkeypatch.setattr(rollup, "_roll_up", original)
    assert rollup.refresh(PERIOD["from"].astimezone(UTC), PERIOD["to"].astimezone(UTC)) == 1  # its mark survived
    assert_rollup_is_live(rhub)


async def test_registering_meters_in_a_cluster_regroups_and_a_purge_drops_old_totals(rhub):
    await collect(rhub, 2)
    assert_rollup_is_live(rhub)
    before = generation(rhub)
    install_meters(rhub, {2: 1}, catalogue=False, overrides={1: {"pd_id": "PD-900001", "serial": "SN-900001",
                                                                 "mac": "02AA00900001", "ld_id": "LD-900001"}})
    assert generation(rhub) > before
    assert_rollup_is_live(rhub)
    with rhub.db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageRollup)) > 0
    settings = rhub.billing.settings
    now = START + timedelta(days=settings.usage_retention_days, hours=12)
    assert rhub.billing.purge(now)["usage_rollup"]["deleted"] > 0
    with rhub.db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageRollup)) == 0


async def test_a_collection_cycle_leaves_its_slot_rolled_up_for_the_next_reader(rhub):
    await collect(rhub, 2)
    period = (PERIOD["from"].astimezone(UTC), PERIOD["to"].astimezone(UTC))
    assert rhub.public.rollup.refresh(*period) > 0  # the period, rolled up once
    rhub.clock.now = START + 2 * SLOT + timedelta(minutes=1)  # type: ignore[attr-defined]
    await rhub.scheduler.tick()  # collects the slot ending 01:00, then rolls it up
    with rhub.db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageRollupStale)) == 0
        assert s.scalar(select(func.sum(UsageRollup.meters)).where(UsageRollup.measured_time == START + 2 * SLOT,
                                                                     UsageRollup.group_kind == "cluster", UsageRollup.sub_number == 1)) == 9
    assert rhub.public.rollup.refresh(*period) == 0
    assert_rollup_is_live(rhub)
