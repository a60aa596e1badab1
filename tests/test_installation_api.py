"""Installation registration and clearing (with contract cancellation), logical devices added to live
units, and disposal, through the HTTP API (seed §2.3.2, §2.3.5, §2.3.6, §2.3.11)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from hub.model import (
    AdrPolicy,
    Concentrator,
    ConcentratorComms,
    Customer,
    CustomerLogicalDevice,
    DisplayTerminal,
    PortalAccount,
)
from hub.services.admin import HeadEndIn
from hub.services.devices import physical_device_view
from hub.services.registry import DeviceRegistration

LD_ID = "ab012-345-c6789"


def register(hub, **fields: Any) -> int:
    return hub.registry.register(DeviceRegistration(type_id=11, ld_type_id=101, **fields))["id"]


def add_concentrator(hub, co_id: str, he_id: int = 1) -> int:
    with hub.db.session() as s:
        co = Concentrator(co_id=co_id, he_id=he_id, type_id=2)
        s.add(co)
        s.flush()
        s.add(ConcentratorComms(concentrator_id=co.id))
        return co.id


def stored(hub, key: int) -> dict[str, Any]:
    with hub.db.session() as s:
        return physical_device_view(s, key)


def installation(ld_id: str = LD_ID, pd_id: str = "takatsu-pd-001", **fields: Any) -> dict[str, Any]:
    return {"pd_id": pd_id, "logical_devices": [{"ld_id": ld_id}], **fields}


async def install(client, key: int, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/physical-devices/{key}/installation", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def add_customer(hub, customer_id: str, ld_ids: list[str]) -> None:
    """A customer with a portal account, and per metering point a relation, a display terminal and
    an ADR policy (rows the customer portal would write)."""
    with hub.db.session() as s:
        s.add(Customer(customer_id=customer_id, name=customer_id))
        s.flush()
        account = PortalAccount(user_id=f"{customer_id}@example.com", customer_id=customer_id)
        s.add(account)
        s.flush()
        for ld_id in ld_ids:
            s.add(CustomerLogicalDevice(customer_id=customer_id, ld_id=ld_id))
            s.add(DisplayTerminal(terminal_id=f"vpa-{ld_id}", account_id=account.id, ld_id=ld_id))
            s.add(AdrPolicy(ld_id=ld_id, reduced_amps=10))


def deleted_rows(hub) -> dict[str, set[str]]:
    """Which customer-side rows are logically deleted, each named by its business key."""
    with hub.db.session() as s:
        def keys(table: type, name: Any) -> set[str]:
            return {name(row) for row in s.exec(select(table)).all() if row.deleted and row.deleted_at is not None}
        return {
            "customers": keys(Customer, lambda r: r.customer_id),
            "accounts": keys(PortalAccount, lambda r: r.customer_id),
            "relations": keys(CustomerLogicalDevice, lambda r: f"{r.customer_id}:{r.ld_id}"),
            "terminals": keys(DisplayTerminal, lambda r: r.terminal_id),
            "policies": keys(AdrPolicy, lambda r: r.ld_id),
        }


# installation registration ------------------------------------------------------------------------

async def test_installation_sets_the_designed_ids_on_the_unit_and_its_metering_point(client, catalog):
    key = register(catalog, mac="AABBCCDDEEFF")
    add_concentrator(catalog, "takatsu-co-001")
    body = await install(client, key, {
        "pd_id": "takatsu-pd-001", "name": "Tanaka 1F shop", "co_id": "takatsu-co-001",
        "logical_devices": [{"ld_id": LD_ID, "cluster_id": "demo-tower-a", "name": "1F shop AC 3-phase",
                             "contract_amps": 30}]})
    assert body["pd_id"] == "takatsu-pd-001" and body["name"] == "Tanaka 1F shop"
    assert body["co_id"] == "takatsu-co-001" and body["installed_at"]
    (ld,) = body["logical_devices"]
    assert (ld["ld_id"], ld["cluster_id"], ld["name"], ld["contract_amps"]) == (
        LD_ID, "demo-tower-a", "1F shop AC 3-phase", 30)
    assert ld["installed"] and ld["installed_at"]
    assert stored(catalog, key) == body


async def test_installation_keeps_the_concentrator_by_default_and_addresses_lds_by_address(client, catalog):
    key = register(catalog, name="registered name")
    resp = await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json={"type_id": 101, "ld_address": 3})
    assert resp.status == 201
    body = await install(client, key, {"pd_id": "multi-01", "logical_devices": [
        {"ld_address": 3, "ld_id": "service-b", "contract_amps": 20}, {"ld_id": "service-a"}]})
    assert body["co_id"] == "HE1" and body["name"] == "registered name"
    assert [(ld["ld_address"], ld["ld_id"], ld["contract_amps"]) for ld in body["logical_devices"]] == [
        (2, "service-a", 0), (3, "service-b", 20)]


@pytest.mark.parametrize("change, status, field", [
    ({"co_id": "nowhere"}, 422, "co_id"),
    ({"co_id": "HE2"}, 422, "co_id"),  # a holding concentrator is not an installation place
    ({"logical_devices": [{"ld_id": LD_ID, "cluster_id": "no-such-cluster"}]}, 422, "logical_devices.0.cluster_id"),
    ({"logical_devices": [{"ld_id": LD_ID, "ld_address": 9}]}, 422, "logical_devices.0.ld_address"),
    ({"pd_id": "taken-pd"}, 409, "pd_id"),
    ({"logical_devices": [{"ld_id": "taken-ld"}]}, 409, "logical_devices.0.ld_id"),
])
async def test_refused_installation_changes_nothing(client, catalog, change, status, field):
    register(catalog, pd_id="taken-pd", ld_id="taken-ld")
    key = register(catalog, name="before")
    add_concentrator(catalog, "takatsu-co-001")
    before = stored(catalog, key)
    resp = await client.post(f"/api/v1/physical-devices/{key}/installation",
                             json=installation(name="after", co_id="takatsu-co-001") | change)
    assert resp.status == status, await resp.text()
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert stored(catalog, key) == before


async def test_installation_of_an_unknown_or_disposed_unit_is_refused(client, catalog):
    assert (await client.post("/api/v1/physical-devices/999/installation", json=installation())).status == 404
    key = register(catalog)
    assert (await client.post(f"/api/v1/physical-devices/{key}/disposal")).status == 200
    resp = await client.post(f"/api/v1/physical-devices/{key}/installation", json=installation())
    assert resp.status == 409 and "disposed" in (await resp.json())["detail"]


async def test_an_installed_metering_point_keeps_its_ld_id_until_cleared(client, catalog):
    key = register(catalog)
    await install(client, key, installation())
    again = await install(client, key, installation(name="renamed"))  # same LD_ID: an update
    assert again["name"] == "renamed" and again["logical_devices"][0]["ld_id"] == LD_ID
    resp = await client.post(f"/api/v1/physical-devices/{key}/installation", json=installation("other-ld"))
    assert resp.status == 409 and "clear its installation first" in (await resp.json())["detail"]


async def test_installation_moving_a_unit_to_a_full_head_end_is_refused(client, catalog):
    catalog.admin.create_head_end(HeadEndIn(he_id=3, name="small", capacity=1))
    register(catalog, he_id=3)
    add_concentrator(catalog, "co-on-he3", he_id=3)
    key = register(catalog, he_id=1)
    resp = await client.post(f"/api/v1/physical-devices/{key}/installation", json=installation(co_id="co-on-he3"))
    assert resp.status == 409 and "full" in (await resp.json())["detail"]
    assert stored(catalog, key)["he_id"] == 1


async def test_malformed_installation_is_refused(client, catalog):
    key = register(catalog)
    for body in ({"pd_id": "x" * 16, "logical_devices": [{"ld_id": LD_ID}]},
                 {"pd_id": "p", "logical_devices": []},
                 {"pd_id": "p", "logical_devices": [{"ld_id": "a"}, {"ld_id": "b"}]},
                 {"pd_id": "p", "logical_devices": [{"ld_id": LD_ID}], "serial": "x"}):
        assert (await client.post(f"/api/v1/physical-devices/{key}/installation", json=body)).status == 422


# installation clear -------------------------------------------------------------------------------

async def test_clear_returns_the_unit_to_stock_under_its_holding_concentrator(client, catalog):
    key = register(catalog, he_id=2)
    add_concentrator(catalog, "takatsu-co-002", he_id=2)
    await install(client, key, installation(name="shop", co_id="takatsu-co-002", logical_devices=[
        {"ld_id": LD_ID, "cluster_id": "demo-tower-b", "name": "AC", "contract_amps": 40}]))
    add_customer(catalog, "cust-1", [LD_ID])
    resp = await client.delete(f"/api/v1/physical-devices/{key}/installation")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["cancelled"] is None
    pd = body["physical_device"]
    assert (pd["pd_id"], pd["name"], pd["co_id"], pd["installed_at"]) == (None, None, "HE2", None)
    (ld,) = pd["logical_devices"]
    assert (ld["ld_id"], ld["cluster_id"], ld["name"], ld["contract_amps"], ld["installed_at"]) == (
        None, None, None, 0, None)
    assert stored(catalog, key) == pd
    assert deleted_rows(catalog) == {k: set() for k in ("customers", "accounts", "relations", "terminals", "policies")}


async def test_clear_with_cancel_logically_deletes_the_customer_side_of_those_metering_points(client, catalog):
    key = register(catalog)
    other = register(catalog)
    await install(client, key, installation())
    await install(client, other, installation("ld-neighbour", pd_id="neighbour"))
    add_customer(catalog, "cust-1", [LD_ID])
    add_customer(catalog, "cust-2", ["ld-neighbour"])
    resp = await client.delete(f"/api/v1/physical-devices/{key}/installation", params={"cancel": "true"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["cancelled"] == {"ld_ids": [LD_ID], "relations": 1, "customers": 1,
                                                "portal_accounts": 1, "display_terminals": 1, "adr_policies": 1}
    assert deleted_rows(catalog) == {"customers": {"cust-1"}, "accounts": {"cust-1"},
                                     "relations": {f"cust-1:{LD_ID}"}, "terminals": {f"vpa-{LD_ID}"},
                                     "policies": {LD_ID}}
    assert stored(catalog, other)["logical_devices"][0]["ld_id"] == "ld-neighbour"


async def test_cancelling_one_service_keeps_a_customer_who_still_holds_another(client, catalog):
    key = register(catalog)
    await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json={"type_id": 101, "ld_address": 3})
    await install(client, key, {"pd_id": "multi", "logical_devices": [{"ld_id": "svc-a"},
                                                                      {"ld_address": 3, "ld_id": "svc-b"}]})
    add_customer(catalog, "cust-1", ["svc-a", "svc-b"])

    resp = await client.delete("/api/v1/logical-devices/svc-a/installation", params={"cancel": "true"})
    assert resp.status == 200, await resp.text()
    pd = (await resp.json())["physical_device"]
    assert pd["pd_id"] == "multi" and [ld["ld_id"] for ld in pd["logical_devices"]] == [None, "svc-b"]
    assert deleted_rows(catalog) == {"customers": set(), "accounts": set(), "relations": {"cust-1:svc-a"},
                                     "terminals": {"vpa-svc-a"}, "policies": {"svc-a"}}

    assert (await client.delete("/api/v1/logical-devices/svc-b/installation?cancel=true")).status == 200
    assert deleted_rows(catalog)["customers"] == {"cust-1"}
    assert deleted_rows(catalog)["accounts"] == {"cust-1"}


async def test_clearing_what_is_not_installed_is_refused(client, catalog):
    key = register(catalog)
    resp = await client.delete(f"/api/v1/physical-devices/{key}/installation")
    assert resp.status == 409 and "not installed" in (await resp.json())["detail"]
    assert (await client.delete("/api/v1/logical-devices/nobody/installation")).status == 404
    assert (await client.delete("/api/v1/physical-devices/999/installation")).status == 404
    assert (await client.delete(f"/api/v1/physical-devices/{key}/installation?cancel=maybe")).status == 400


async def test_meter_replacement_carries_the_metering_point_to_the_new_unit(client, catalog):
    old = register(catalog, mac="000000000001")
    new = register(catalog, mac="000000000002")
    await install(client, old, installation(logical_devices=[{"ld_id": LD_ID, "contract_amps": 30}]))
    resp = await client.post(f"/api/v1/physical-devices/{new}/installation", json=installation())
    assert resp.status == 409  # the LD_ID is still on the old unit
    assert (await client.delete(f"/api/v1/physical-devices/{old}/installation")).status == 200
    body = await install(client, new, installation(logical_devices=[{"ld_id": LD_ID, "contract_amps": 30}]))
    assert body["logical_devices"][0]["ld_id"] == LD_ID and body["pd_id"] == "takatsu-pd-001"
    assert (await client.post(f"/api/v1/physical-devices/{old}/disposal")).status == 200


# adding a logical device --------------------------------------------------------------------------

async def test_logical_device_is_added_to_a_live_unit(client, catalog):
    key = register(catalog)
    await install(client, key, installation())
    resp = await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json={
        "type_id": 101, "ld_id": "ab012-345-c6790", "cluster_id": "demo-tower-a", "name": "2F living AC",
        "ld_address": 3, "contract_amps": 20})
    assert resp.status == 201, await resp.text()
    ld = await resp.json()
    assert (ld["ld_id"], ld["ld_address"], ld["contract_amps"], ld["relay_state"], ld["installed"]) == (
        "ab012-345-c6790", 3, 20, 1, True)
    assert ld["physical_device_id"] == key and ld["pd_id"] == "takatsu-pd-001"
    assert [x["ld_address"] for x in stored(catalog, key)["logical_devices"]] == [2, 3]


async def test_added_logical_device_takes_the_seed_defaults(client, catalog):
    key = register(catalog, ld_address=5)
    resp = await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json={"type_id": 101})
    assert resp.status == 201, await resp.text()
    ld = await resp.json()
    assert (ld["ld_address"], ld["ld_id"], ld["cluster_id"], ld["contract_amps"], ld["relay_state"]) == (
        2, None, None, 0, 1)
    assert not ld["installed"] and ld["installed_at"] is None


@pytest.mark.parametrize("body, status, field", [
    ({"type_id": 101}, 409, "ld_address"),  # address 2 is the registered LD's
    ({"type_id": 101, "ld_address": 3, "ld_id": "taken-ld"}, 409, "ld_id"),
    ({"type_id": 999, "ld_address": 3}, 422, "type_id"),
    ({"type_id": 101, "ld_address": 3, "cluster_id": "no-such-cluster"}, 422, "cluster_id"),
    ({"ld_address": 3}, 422, "type_id"),
    ({"type_id": 101, "ld_address": 0}, 422, "ld_address"),
])
async def test_refused_logical_device_addition_stores_nothing(client, catalog, body, status, field):
    register(catalog, ld_id="taken-ld")
    key = register(catalog)
    before = stored(catalog, key)
    resp = await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json=body)
    assert resp.status == status, await resp.text()
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert stored(catalog, key) == before


# disposal -----------------------------------------------------------------------------------------

async def test_disposal_flags_the_unit_and_forgets_its_mac(client, catalog):
    key = register(catalog, mac="AA:BB:CC:DD:EE:FF", serial="OSSBN-01234-56", cert_serial="2038112",
                   password="ossbn1234")
    resp = await client.post(f"/api/v1/physical-devices/{key}/disposal")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["deleted"] and body["deleted_at"] and body["mac"] is None and body["serial"] is None
    assert all(ld["deleted"] and ld["deleted_at"] for ld in body["logical_devices"])
    assert body["comms"]["cert_serial"] == "2038112"  # revoked by a separate call
    assert not body["comms"]["password_set"]
    assert stored(catalog, key) == body
    # provisioning no longer knows the MAC: a new unit may carry it
    assert register(catalog, mac="AABBCCDDEEFF", serial="OSSBN-01234-56") != key

    again = await client.post(f"/api/v1/physical-devices/{key}/disposal")
    assert again.status == 409 and "already disposed" in (await again.json())["detail"]


async def test_an_installed_unit_must_be_cleared_before_disposal(client, catalog):
    key = register(catalog, mac="AABBCCDDEEFF")
    await install(client, key, installation())
    before = stored(catalog, key)
    resp = await client.post(f"/api/v1/physical-devices/{key}/disposal")
    assert resp.status == 409 and "clear the installation first" in (await resp.json())["detail"]
    assert stored(catalog, key) == before
    assert (await client.post("/api/v1/physical-devices/999/disposal")).status == 404


async def test_a_disposed_unit_takes_no_more_lifecycle_changes(client, catalog):
    key = register(catalog)
    await client.post(f"/api/v1/physical-devices/{key}/disposal")
    assert (await client.delete(f"/api/v1/physical-devices/{key}/installation")).status == 409
    resp = await client.post(f"/api/v1/physical-devices/{key}/logical-devices", json={"type_id": 101, "ld_address": 3})
    assert resp.status == 409
