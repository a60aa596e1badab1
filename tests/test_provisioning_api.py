"""Provisioning progress of physical devices and concentrators through the HTTP API: DHCP done,
provisioning done, key updates, and the use state that follows them (N -> C -> A, never back
except through disposal)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from hub.model import Concentrator, ConcentratorComms, PhysicalDeviceComms
from hub.services.registry import DeviceRegistration

COMMON_KEY = "c0mm0n-k3y-0f-th3-un1t"
SESSION_KEY = "s3ss10n-k3y-0f-th3-un1t"


def register(hub, **fields: Any) -> int:
    return hub.registry.register(DeviceRegistration(type_id=11, ld_type_id=101, **fields))["id"]


def add_concentrator(hub, co_id: str, he_id: int = 1) -> int:
    with hub.db.session() as s:
        co = Concentrator(co_id=co_id, he_id=he_id, type_id=2)
        s.add(co)
        s.flush()
        s.add(ConcentratorComms(concentrator_id=co.id))
        return co.id


def holding_concentrator(hub, he_id: int) -> int:
    with hub.db.session() as s:
        return s.exec(select(Concentrator.id).where(Concentrator.he_id == he_id, Concentrator.is_dummy)).one()


@pytest.fixture(params=["physical-devices", "concentrators"])
def device_path(request, catalog) -> str:
    """The provisioning path of a fresh physical device or concentrator (same rules for both)."""
    key = register(catalog) if request.param == "physical-devices" else add_concentrator(catalog, "takatsu-co-001")
    return f"/api/v1/{request.param}/{key}/provisioning"


async def patch(client, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    resp = await client.patch(path, json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_use_state_moves_n_to_c_to_a_as_provisioning_reports(client, device_path):
    state = await patch(client, device_path, {"dhcp_done": True, "ip": "10.0.0.17"})
    assert (state["use_state"], state["dhcp_done"], state["ip"]) == ("N", True, "10.0.0.17")
    state = await patch(client, device_path, {"provisioned": True, "port": 4059})
    assert (state["use_state"], state["provisioned"], state["port"]) == ("C", True, 4059)
    assert state["key_updated_at"] is None
    state = await patch(client, device_path, {"common_key": COMMON_KEY, "session_key": SESSION_KEY})
    assert state["use_state"] == "A" and state["key_updated_at"]
    assert state["common_key_set"] and state["session_key_set"]


async def test_keys_are_never_returned(client, device_path):
    resp = await client.patch(device_path, json={"common_key": COMMON_KEY, "session_key": SESSION_KEY})
    text = await resp.text()
    assert resp.status == 200 and COMMON_KEY not in text and SESSION_KEY not in text


async def test_a_key_set_before_provisioning_activates_once_provisioning_is_done(client, device_path):
    assert (await patch(client, device_path, {"common_key": COMMON_KEY}))["use_state"] == "N"
    assert (await patch(client, device_path, {"dhcp_done": True}))["use_state"] == "N"
    assert (await patch(client, device_path, {"provisioned": True}))["use_state"] == "A"


async def test_key_update_stamps_the_time_and_keeps_the_state(client, device_path):
    first = await patch(client, device_path, {"dhcp_done": True, "provisioned": True, "common_key": COMMON_KEY})
    second = await patch(client, device_path, {"session_key": SESSION_KEY})
    assert second["use_state"] == "A" and second["key_updated_at"] > first["key_updated_at"]


async def test_provisioning_steps_are_not_undone(client, device_path):
    await patch(client, device_path, {"dhcp_done": True, "provisioned": True, "common_key": COMMON_KEY})
    for body in ({"dhcp_done": False}, {"provisioned": False}):
        problem = await patch(client, device_path, body, 409)
        assert problem["errors"][0]["field"] == next(iter(body))
    state = await patch(client, device_path, {})
    assert (state["use_state"], state["dhcp_done"], state["provisioned"]) == ("A", True, True)


@pytest.mark.parametrize("body, field", [
    ({"common_key": None}, "body"),
    ({"ip": "10.0.0.300"}, "ip"),
    ({"port": 0}, "port"),
    ({"use_state": "A"}, "use_state"),
    ({"common_key": ""}, "common_key"),
])
async def test_invalid_provisioning_values_are_refused(client, device_path, body, field):
    problem = await patch(client, device_path, body, 422)
    assert field in [e["field"] for e in problem["errors"]]
    assert (await patch(client, device_path, {}))["use_state"] == "N"


async def test_disposal_is_the_only_way_back_to_new(client, catalog):
    key = register(catalog, cert_serial="2038112")
    path = f"/api/v1/physical-devices/{key}/provisioning"
    await patch(client, path, {"dhcp_done": True, "provisioned": True, "ip": "10.0.0.5", "common_key": COMMON_KEY})
    disposed = await (await client.post(f"/api/v1/physical-devices/{key}/disposal")).json()
    comms = disposed["comms"]
    assert (comms["use_state"], comms["dhcp_done"], comms["provisioned"], comms["ip"]) == ("N", False, False, None)
    assert not comms["common_key_set"] and comms["cert_serial"] == "2038112"
    with catalog.db.session() as s:
        assert s.get(PhysicalDeviceComms, key).common_key is None
    await patch(client, path, {"dhcp_done": True}, 409)


async def test_unknown_and_holding_devices_are_refused(client, catalog):
    assert (await client.patch("/api/v1/physical-devices/999/provisioning", json={"dhcp_done": True})).status == 404
    assert (await client.patch("/api/v1/concentrators/999/provisioning", json={"dhcp_done": True})).status == 404
    holding = holding_concentrator(catalog, 1)
    resp = await client.patch(f"/api/v1/concentrators/{holding}/provisioning", json={"dhcp_done": True})
    assert resp.status == 409
