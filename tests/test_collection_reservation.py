"""Collection stop / start reservations (seed §2.3.6, §2.3.7): the rule collection follows
(:func:`is_collecting`), and reserving through the HTTP API for physical devices and concentrators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlmodel import select

from hub.model import Concentrator, ConcentratorComms, PhysicalDeviceComms
from hub.services.provisioning import is_collecting
from hub.services.registry import DeviceRegistration

T1 = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)
T2 = datetime(2025, 4, 8, 0, 0, tzinfo=UTC)
BEFORE, BETWEEN, AFTER = T1 - timedelta(minutes=30), T1 + timedelta(days=1), T2 + timedelta(minutes=30)


def comms(start: datetime | None = None, stop: datetime | None = None) -> PhysicalDeviceComms:
    return PhysicalDeviceComms(physical_device_id=1, collection_start_at=start, collection_stop_at=stop)


# the rule -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("start, stop, expected", [
    (None, None, {BEFORE: True, T1: True, BETWEEN: True, T2: True, AFTER: True}),
    (None, T1, {BEFORE: True, T1: False, BETWEEN: False, AFTER: False}),           # stop reserved (cancellation)
    (T1, None, {BEFORE: False, T1: True, BETWEEN: True, AFTER: True}),              # start reserved
    (T2, T1, {BEFORE: True, T1: False, BETWEEN: False, T2: True, AFTER: True}),     # a pause: stop, then resume
    (T1, T2, {BEFORE: False, T1: True, BETWEEN: True, T2: False, AFTER: False}),    # a window: start, then stop
    (T1, T1, {BEFORE: True, T1: False, AFTER: False}),                              # a tie counts as a stop
], ids=["none", "stop", "start", "pause", "window", "tie"])
def test_collection_stops_from_stop_at_and_resumes_from_start_at(start, stop, expected):
    for at, collecting in expected.items():
        assert is_collecting(comms(start, stop), at) is collecting, at


def test_the_moment_is_compared_in_absolute_time():
    tokyo = timezone(timedelta(hours=9))
    assert is_collecting(comms(stop=T1), T1.astimezone(tokyo) - timedelta(seconds=1))
    assert not is_collecting(comms(stop=T1), T1.astimezone(tokyo))


def test_a_naive_moment_is_refused():
    with pytest.raises(ValueError):
        is_collecting(comms(stop=T1), datetime(2025, 4, 1))


# reserving through the API ------------------------------------------------------------------------

def register(hub) -> int:
    return hub.registry.register(DeviceRegistration(type_id=11, ld_type_id=101))["id"]


def add_concentrator(hub) -> int:
    with hub.db.session() as s:
        co = Concentrator(co_id="takatsu-co-001", he_id=1, type_id=2)
        s.add(co)
        s.flush()
        s.add(ConcentratorComms(concentrator_id=co.id))
        return co.id


@pytest.fixture(params=["physical-devices", "concentrators"])
def device(request, catalog) -> tuple[str, type, int]:
    """(reservation path, comms table, key) of a fresh physical device or concentrator."""
    if request.param == "physical-devices":
        key, table = register(catalog), PhysicalDeviceComms
    else:
        key, table = add_concentrator(catalog), ConcentratorComms
    return f"/api/v1/{request.param}/{key}/collection-reservation", table, key


def stored(hub, table: type, key: int) -> Any:
    with hub.db.session() as s:
        return s.get(table, key)


async def test_a_reservation_is_stored_and_decides_collection(client, catalog, device):
    path, table, key = device
    resp = await client.put(path, json={"stop_at": "2025-04-01T09:00:00+09:00", "start_at": "2025-04-08T00:00:00Z"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert datetime.fromisoformat(body["collection_stop_at"]) == T1
    assert datetime.fromisoformat(body["collection_start_at"]) == T2
    assert body["collection_stop_at"] == "2025-04-01T00:00:00Z", "answers in UTC whatever offset was sent"
    row = stored(catalog, table, key)
    assert [is_collecting(row, at) for at in (BEFORE, BETWEEN, AFTER)] == [True, False, True]


async def test_null_clears_a_reservation(client, catalog, device):
    path, table, key = device
    await client.put(path, json={"stop_at": T1.isoformat(), "start_at": T2.isoformat()})
    resp = await client.put(path, json={"stop_at": T1.isoformat(), "start_at": None})
    assert resp.status == 200
    row = stored(catalog, table, key)
    assert row.collection_start_at is None and row.collection_stop_at == T1
    assert (await client.put(path, json={})).status == 200
    row = stored(catalog, table, key)
    assert row.collection_start_at is None and row.collection_stop_at is None
    assert is_collecting(row, AFTER)


@pytest.mark.parametrize("body, field", [
    ({"stop_at": "2025-04-01T00:00:00"}, "stop_at"),                              # naive
    ({"start_at": "yesterday"}, "start_at"),
    ({"start_at": T1.isoformat(), "stop_at": T1.isoformat()}, "body"),           # equal: ambiguous
    ({"stop_at": T1.isoformat(), "reason": "maintenance"}, "reason"),
])
async def test_invalid_reservations_are_refused_and_change_nothing(client, catalog, device, body, field):
    path, table, key = device
    await client.put(path, json={"stop_at": T2.isoformat()})
    resp = await client.put(path, json=body)
    assert resp.status == 422
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    row = stored(catalog, table, key)
    assert row.collection_stop_at == T2 and row.collection_start_at is None


async def test_reservations_need_a_live_real_device(client, catalog):
    body = {"stop_at": T1.isoformat()}
    assert (await client.put("/api/v1/physical-devices/999/collection-reservation", json=body)).status == 404
    assert (await client.put("/api/v1/concentrators/999/collection-reservation", json=body)).status == 404
    key = register(catalog)
    await client.post(f"/api/v1/physical-devices/{key}/disposal")
    assert (await client.put(f"/api/v1/physical-devices/{key}/collection-reservation", json=body)).status == 409
    with catalog.db.session() as s:
        holding = s.exec(select(Concentrator.id).where(Concentrator.he_id == 1, Concentrator.is_dummy)).one()
    assert (await client.put(f"/api/v1/concentrators/{holding}/collection-reservation", json=body)).status == 409
