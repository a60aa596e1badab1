"""Concentrator registration (seed table 2.3.2(4)), installation (table 2.3.2(5)) and reads through
the HTTP API, and devices registered under a registered concentrator."""

from __future__ import annotations

from typing import Any

from hub.config import RegistrySection
from hub.services.concentrators import ConcentratorService

FULL = {"type_id": 2, "co_id": "takatsu-co-001", "he_id": 2, "serial": "OSSBN-98765-43", "mac": "11:22:33:44:55:66",
        "name": "Takatsu 1", "config_state": 0, "ip": "10.0.0.9", "port": 4059, "cert_serial": "2038113",
        "password": "ossbn1234"}


async def post(client, path: str, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def concentrators(client, **params: Any) -> dict[str, Any]:
    resp = await client.get("/api/v1/concentrators", params={k: str(v) for k, v in params.items()})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_registration_stores_the_concentrator_and_its_comms(client, catalog):
    status, body = await post(client, "/api/v1/concentrators", FULL)
    assert status == 201, body
    assert body["co_id"] == "takatsu-co-001" and body["he_id"] == 2 and body["type_id"] == 2
    assert body["mac"] == "112233445566" and body["serial"] == "OSSBN-98765-43" and body["is_dummy"] is False
    assert body["devices"] == 0
    comms = body["comms"]
    assert comms["ip"] == "10.0.0.9" and comms["port"] == 4059 and comms["cert_serial"] == "2038113"
    assert comms["use_state"] == "N" and comms["password_set"] is True and "password" not in comms
    resp = await client.get(f"/api/v1/concentrators/{body['id']}")
    assert resp.status == 200
    assert await resp.json() == body
    assert "ossbn1234" not in str(await concentrators(client))


async def test_seed_defaults_apply_when_only_the_type_is_given(client, catalog):
    status, body = await post(client, "/api/v1/concentrators", {"type_id": 2})
    assert status == 201, body
    assert body["co_id"] is None and body["serial"] is None and body["mac"] is None
    assert body["config_state"] == 0 and body["he_id"] == 1  # fill-lowest: both head-ends are empty
    assert body["comms"]["use_state"] == "N" and body["comms"]["password_set"] is False
    status, body = await post(client, "/api/v1/concentrators", {"type_id": 2})
    assert status == 201  # several concentrators may wait for their CO_ID


async def test_head_end_is_chosen_by_the_configured_strategy(client, catalog, hub):
    await client.patch("/api/v1/head-ends/1", json={"capacity": 1})
    status, _ = await post(client, "/api/v1/physical-devices", {"type_id": 11, "ld_type_id": 101})
    assert status == 201
    status, body = await post(client, "/api/v1/concentrators", {"type_id": 2})
    assert status == 201 and body["he_id"] == 2  # head-end 1 is full
    await client.patch("/api/v1/head-ends/1", json={"capacity": 20000})
    assert (await post(client, "/api/v1/concentrators", {"type_id": 2}))[1]["he_id"] == 1
    hub.concentrators = ConcentratorService(hub.db, RegistrySection(assignment="least-loaded"))
    assert (await post(client, "/api/v1/concentrators", {"type_id": 2}))[1]["he_id"] == 2


async def test_no_head_end_with_room_is_refused(client, catalog):
    for he_id in (1, 2):
        await client.patch(f"/api/v1/head-ends/{he_id}", json={"capacity": 1})
        await post(client, "/api/v1/physical-devices", {"type_id": 11, "ld_type_id": 101, "he_id": he_id})
    status, body = await post(client, "/api/v1/concentrators", {"type_id": 2})
    assert status == 422 and body["errors"][0]["field"] == "he_id"


async def test_invalid_registrations_are_refused_with_the_field(client, catalog):
    cases = [({}, "type_id"), ({"type_id": 99}, "type_id"), ({"type_id": 2, "he_id": 9}, "he_id"),
             ({"type_id": 2, "co_id": "C" * 16}, "co_id"), ({"type_id": 2, "mac": "11:22:33:44:55"}, "mac"),
             ({"type_id": 2, "mac": "GG2233445566"}, "mac"), ({"type_id": 2, "config_state": 2}, "config_state"),
             ({"type_id": 2, "port": 0}, "port"), ({"type_id": 2, "colour": "red"}, "colour")]
    for body, field in cases:
        status, problem = await post(client, "/api/v1/concentrators", body)
        assert status == 422, body
        assert problem["errors"][0]["field"] == field, (body, problem)
    assert (await concentrators(client, dummy="false"))["total"] == 0


async def test_duplicate_keys_are_conflicts_and_store_nothing(client, catalog):
    assert (await post(client, "/api/v1/concentrators", FULL))[0] == 201
    for change, field in [({"co_id": "takatsu-co-001"}, "co_id"), ({"mac": "112233445566"}, "mac"),
                          ({"serial": "OSSBN-98765-43"}, "serial"), ({"co_id": "HE1"}, "co_id")]:
        status, problem = await post(client, "/api/v1/concentrators", {"type_id": 2} | change)
        assert status == 409, change
        assert problem["errors"][0]["field"] == field
    assert "holding concentrator of head-end 1" in problem["detail"]
    status, device = await post(client, "/api/v1/physical-devices",
                                {"type_id": 11, "ld_type_id": 101, "mac": "AA:BB:CC:DD:EE:FF"})
    assert status == 201
    status, problem = await post(client, "/api/v1/concentrators", {"type_id": 2, "mac": "aabbccddeeff"})
    assert status == 409 and problem["errors"][0]["field"] == "mac"  # a MAC names one unit, of any kind
    assert (await concentrators(client, dummy="false"))["total"] == 1


async def test_devices_register_under_a_registered_concentrator(client, catalog):
    _, co = await post(client, "/api/v1/concentrators", {"type_id": 2, "co_id": "CO-7", "he_id": 2})
    status, device = await post(client, "/api/v1/physical-devices",
                                {"type_id": 11, "ld_type_id": 101, "co_id": "CO-7", "ld_id": "MP-1"})
    assert status == 201, device
    assert device["co_id"] == "CO-7" and device["he_id"] == 2
    listed = await (await client.get("/api/v1/logical-devices", params={"co_id": "CO-7"})).json()
    assert [ld["ld_id"] for ld in listed["items"]] == ["MP-1"]
    assert (await (await client.get(f"/api/v1/concentrators/{co['id']}")).json())["devices"] == 1
    status, problem = await post(client, "/api/v1/physical-devices",
                                 {"type_id": 11, "ld_type_id": 101, "co_id": "CO-7", "he_id": 1})
    assert status == 422 and problem["errors"][0]["field"] == "co_id"
    status, problem = await post(client, "/api/v1/physical-devices", {"type_id": 11, "ld_type_id": 101, "co_id": "CO-8"})
    assert status == 422 and problem["errors"][0]["field"] == "co_id"


async def test_installation_sets_co_id_and_head_end_and_devices_follow(client, catalog):
    _, co = await post(client, "/api/v1/concentrators", {"type_id": 2, "co_id": "CO-TMP", "he_id": 1})
    for n in range(2):
        await post(client, "/api/v1/physical-devices",
                   {"type_id": 11, "ld_type_id": 101, "co_id": "CO-TMP", "pd_id": f"PD-{n}", "ld_id": f"MP-{n}"})
    status, body = await post(client, f"/api/v1/concentrators/{co['id']}/installation",
                              {"co_id": "takatsu-co-001", "he_id": 2})
    assert status == 200, body
    assert body["co_id"] == "takatsu-co-001" and body["he_id"] == 2 and body["devices"] == 2
    lds = await (await client.get("/api/v1/logical-devices", params={"co_id": "takatsu-co-001"})).json()
    assert [(ld["ld_id"], ld["he_id"]) for ld in lds["items"]] == [("MP-0", 2), ("MP-1", 2)]
    assert (await (await client.get("/api/v1/logical-devices", params={"co_id": "CO-TMP"})).json())["total"] == 0
    pds = await (await client.get("/api/v1/physical-devices", params={"he_id": 2})).json()
    assert [pd["pd_id"] for pd in pds["items"]] == ["PD-0", "PD-1"]
    heads = {he["he_id"]: he["devices"] for he in (await (await client.get("/api/v1/head-ends")).json())["items"]}
    assert heads == {1: 0, 2: 2}
    again = await post(client, f"/api/v1/concentrators/{co['id']}/installation", {"co_id": "takatsu-co-001", "he_id": 2})
    assert again[0] == 200  # installing with the same values again changes nothing


async def test_installation_of_a_concentrator_without_co_id(client, catalog):
    _, co = await post(client, "/api/v1/concentrators", {"type_id": 2})
    status, body = await post(client, f"/api/v1/concentrators/{co['id']}/installation", {"co_id": "CO-NEW", "he_id": 2})
    assert status == 200 and body["co_id"] == "CO-NEW" and body["he_id"] == 2
    assert (await concentrators(client, co_id="CO-NEW"))["items"][0]["id"] == co["id"]


async def test_installation_refusals(client, catalog):
    _, co = await post(client, "/api/v1/concentrators", {"type_id": 2, "co_id": "CO-A", "he_id": 1})
    await post(client, "/api/v1/concentrators", {"type_id": 2, "co_id": "CO-B", "he_id": 1})
    path = f"/api/v1/concentrators/{co['id']}/installation"
    holding = (await concentrators(client, dummy="true", he_id=1))["items"][0]
    assert holding["co_id"] == "HE1" and holding["is_dummy"] is True

    status, problem = await post(client, f"/api/v1/concentrators/{holding['id']}/installation",
                                 {"co_id": "CO-X", "he_id": 2})
    assert status == 409 and "cannot be installed" in problem["detail"]
    assert (await post(client, path, {"co_id": "CO-B", "he_id": 1}))[0] == 409
    assert (await post(client, path, {"co_id": "HE2", "he_id": 1}))[0] == 409
    status, problem = await post(client, path, {"co_id": "CO-A", "he_id": 9})
    assert status == 422 and problem["errors"][0]["field"] == "he_id"
    status, problem = await post(client, path, {"co_id": "C" * 16, "he_id": 1})
    assert status == 422 and problem["errors"][0]["field"] == "co_id"
    assert (await post(client, path, {"co_id": "CO-A"}))[0] == 422
    assert (await post(client, "/api/v1/concentrators/9999/installation", {"co_id": "CO-Z", "he_id": 1}))[0] == 404

    for n in range(2):
        await post(client, "/api/v1/physical-devices", {"type_id": 11, "ld_type_id": 101, "co_id": "CO-A"})
    await client.patch("/api/v1/head-ends/2", json={"capacity": 1})
    status, problem = await post(client, path, {"co_id": "CO-A", "he_id": 2})
    assert status == 409 and problem["errors"][0]["field"] == "he_id"  # two devices do not fit in one place

    unchanged = await (await client.get(f"/api/v1/concentrators/{co['id']}")).json()
    assert unchanged["co_id"] == "CO-A" and unchanged["he_id"] == 1
    assert (await (await client.get(f"/api/v1/concentrators/{holding['id']}")).json())["co_id"] == "HE1"


async def test_concentrator_list_filters_and_pages(client, catalog, hub):
    for n in range(4):
        await post(client, "/api/v1/concentrators", {"type_id": 2, "co_id": f"CO-{n}", "he_id": 1 + n % 2})
    everything = await concentrators(client)
    assert everything["total"] == 6  # two holding concentrators and four registered
    ids = [c["id"] for c in everything["items"]]
    assert ids == sorted(ids)
    assert [c["co_id"] for c in (await concentrators(client, dummy="false", limit=2, offset=1))["items"]] == \
        ["CO-1", "CO-2"]
    assert [c["co_id"] for c in (await concentrators(client, he_id=2))["items"]] == ["HE2", "CO-1", "CO-3"]
    assert [c["co_id"] for c in (await concentrators(client, dummy="true"))["items"]] == ["HE1", "HE2"]
    assert (await concentrators(client, co_id="CO-3"))["items"][0]["he_id"] == 2

    from hub.model import Concentrator

    with hub.db.session() as s:  # the state a disposal leaves
        row = s.get(Concentrator, (await concentrators(client, co_id="CO-2"))["items"][0]["id"])
        row.deleted = True
        s.add(row)
    assert "CO-2" not in [c["co_id"] for c in (await concentrators(client))["items"]]
    disposed = (await concentrators(client, deleted="true"))["items"]
    assert [c["co_id"] for c in disposed] == ["CO-2"]
    status, problem = await post(client, f"/api/v1/concentrators/{disposed[0]['id']}/installation",
                                 {"co_id": "CO-2", "he_id": 1})
    assert status == 409 and "disposed" in problem["detail"]
    resp = await client.get("/api/v1/concentrators", params={"dummy": "perhaps"})
    assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "dummy"
    assert (await client.get("/api/v1/concentrators/424242")).status == 404
