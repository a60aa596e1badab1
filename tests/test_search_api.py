"""Device search (機器情報検索) and device reads through the HTTP API."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from hub.model import LogicalDevice, PhysicalDevice, PhysicalDeviceComms


async def register(client, **fields: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/physical-devices", json={"type_id": 11, "ld_type_id": 101, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def search(client, path: str = "/api/v1/logical-devices", **params: Any) -> dict[str, Any]:
    resp = await client.get(path, params={k: str(v) for k, v in params.items()})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def ld_ids(body: dict[str, Any]) -> list[str | None]:
    return [item["ld_id"] for item in body["items"]]


def change(hub, table: type, key: int, **values: Any) -> None:
    """Put a row in the state another flow (disposal, provisioning) leaves it in."""
    with hub.db.session() as s:
        row = s.get(table, key)
        for name, value in values.items():
            setattr(row, name, value)
        s.add(row)


@contextmanager
def statements(hub):
    """The SQL statements the hub sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    for engine in hub.db.engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in hub.db.engines:
            event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
async def fleet(client, catalog) -> dict[str, Any]:
    """Concentrator CO-A on head-end 2 with two installed meters; three more meters held by head-end
    1 (one installed, one with a lower-case LD_ID, one not installed yet)."""
    resp = await client.post("/api/v1/concentrators", json={"co_id": "CO-A", "he_id": 2, "type_id": 2})
    assert resp.status == 201, await resp.text()
    devices = {
        "a1": await register(client, co_id="CO-A", pd_id="PD-A1", ld_id="AB-001", mac="00:11:22:33:44:01",
                             serial="SN-A1", config_state=1, cluster_id="demo-tower-a", password="s3cret"),
        "a2": await register(client, co_id="CO-A", pd_id="PD-A2", ld_id="AB-002", relay_state=0,
                             cluster_id="demo-tower-a"),
        "h1": await register(client, he_id=1, pd_id="PD-H1", ld_id="A_B-003", serial="SN-H1"),
        "h2": await register(client, he_id=1, pd_id="PD-H2", ld_id="ab-004"),
        "h3": await register(client, he_id=1, mac="001122334405"),
    }
    return devices


async def test_search_by_ld_id_answers_the_device_with_its_topology(client, fleet):
    body = await search(client, ld_id="AB-002")
    assert body["total"] == 1
    (item,) = body["items"]
    assert item["ld_id"] == "AB-002" and item["pd_id"] == "PD-A2"
    assert item["co_id"] == "CO-A" and item["he_id"] == 2
    assert item["installed"] is True and item["relay_state"] == 0
    assert await search(client, ld_id="NOPE") == {"items": [], "total": 0, "total_exact": True}


async def test_one_logical_device_by_ld_id(client, fleet):
    resp = await client.get("/api/v1/logical-devices/A_B-003")
    assert resp.status == 200
    body = await resp.json()
    assert body["ld_id"] == "A_B-003" and body["pd_id"] == "PD-H1" and body["co_id"] == "HE1" and body["he_id"] == 1
    missing = await client.get("/api/v1/logical-devices/NOPE")
    assert missing.status == 404 and missing.content_type == "application/problem+json"
    assert (await missing.json())["errors"][0]["field"] == "ld_id"


async def test_search_by_concentrator_pages_in_table_key_order(client, fleet):
    for n in range(3, 8):
        await register(client, co_id="CO-A", ld_id=f"AB-10{n}")
    body = await search(client, co_id="CO-A", limit=3, offset=2)
    assert body["total"] == 7
    assert ld_ids(body) == ["AB-103", "AB-104", "AB-105"]
    ids = [item["id"] for item in body["items"]]
    assert ids == sorted(ids)
    last = await search(client, co_id="CO-A", limit=3, offset=6)
    assert last["total"] == 7 and ld_ids(last) == ["AB-107"]
    beyond = await search(client, co_id="CO-A", limit=3, offset=50)
    assert beyond == {"items": [], "total": 7, "total_exact": True}
    assert ld_ids(await search(client, co_id="HE1")) == ["A_B-003", "ab-004", None]


async def test_order_is_device_then_address_so_a_meters_points_stay_together(client, fleet):
    """A logical device added later to the first meter is listed with that meter, not at the end."""
    resp = await client.post(f"/api/v1/physical-devices/{fleet['a1']['id']}/logical-devices",
                             json={"type_id": 101, "ld_id": "AB-001-3", "ld_address": 3})
    assert resp.status == 201, await resp.text()
    await client.post(f"/api/v1/physical-devices/{fleet['a1']['id']}/logical-devices",
                      json={"type_id": 101, "ld_id": "AB-001-1", "ld_address": 1})
    body = await search(client, co_id="CO-A")
    assert ld_ids(body) == ["AB-001-1", "AB-001", "AB-001-3", "AB-002"]
    assert [(i["pd_id"], i["ld_address"]) for i in body["items"]] == [("PD-A1", 1), ("PD-A1", 2), ("PD-A1", 3),
                                                                      ("PD-A2", 2)]
    assert ld_ids(await search(client, co_id="CO-A", limit=2, offset=2)) == ["AB-001-3", "AB-002"]
    assert ld_ids(await search(client, ld_id_prefix="AB-00")) == ["AB-001-1", "AB-001", "AB-001-3", "AB-002"]


async def test_total_is_exact_up_to_a_bound_past_the_page(client, catalog, monkeypatch):
    """Counting a holding concentrator's 20,000 meters for every page would be the slowest part of
    a search, so counting stops COUNT_AHEAD matches past the page unless exact_total is asked."""
    from hub.services import search as search_module

    monkeypatch.setattr(search_module, "COUNT_AHEAD", 3)
    await client.post("/api/v1/concentrators", json={"co_id": "CO-C", "he_id": 1, "type_id": 2})
    devices = [{"type_id": 11, "ld_type_id": 101, "co_id": "CO-C", "ld_id": f"C-{n:02}"} for n in range(10)]
    assert (await client.post("/api/v1/device-imports", json=devices)).status == 200
    for path in ("/api/v1/logical-devices", "/api/v1/physical-devices"):
        bounded = await search(client, path, co_id="CO-C", limit=2)
        assert (bounded["total"], bounded["total_exact"]) == (5, False)  # at least 2 + 3
        exact = await search(client, path, co_id="CO-C", limit=2, exact_total="true")
        assert (exact["total"], exact["total_exact"]) == (10, True)
        deep = await search(client, path, co_id="CO-C", limit=2, offset=6)
        assert (deep["total"], deep["total_exact"]) == (10, True)  # the bound moves with the page
        last = await search(client, path, co_id="CO-C", limit=4, offset=8)
        assert (len(last["items"]), last["total"], last["total_exact"]) == (2, 10, True)


async def test_search_by_head_end_physical_device_and_cluster(client, fleet):
    assert ld_ids(await search(client, he_id=2)) == ["AB-001", "AB-002"]
    assert ld_ids(await search(client, pd_id="PD-H2")) == ["ab-004"]
    assert ld_ids(await search(client, cluster_id="demo-tower-a", relay_state=1)) == ["AB-001"]
    assert await search(client, he_id=2, co_id="HE1") == {"items": [], "total": 0, "total_exact": True}
    assert (await search(client, type_id=101))["total"] == 5
    assert (await search(client, type_id=999))["total"] == 0


async def test_search_by_mac_serial_and_states(client, fleet, hub):
    assert ld_ids(await search(client, mac="00-11-22-33-44-01")) == ["AB-001"]
    assert ld_ids(await search(client, mac="001122334405")) == [None]
    assert ld_ids(await search(client, serial="SN-H1")) == ["A_B-003"]
    assert ld_ids(await search(client, config_state=1)) == ["AB-001"]
    assert (await search(client, use_state="N"))["total"] == 5
    change(hub, PhysicalDeviceComms, fleet["a2"]["id"], use_state="A")
    assert ld_ids(await search(client, use_state="A")) == ["AB-002"]
    assert ld_ids(await search(client, use_state="A", co_id="CO-A", config_state=0)) == ["AB-002"]
    assert (await search(client, use_state="C"))["total"] == 0


async def test_installed_and_deleted_filters(client, fleet, hub):
    assert (await search(client, installed="true"))["total"] == 4
    assert ld_ids(await search(client, installed="false")) == [None]
    disposed = fleet["h2"]["logical_devices"][0]["id"]
    change(hub, LogicalDevice, disposed, deleted=True)
    assert "ab-004" not in ld_ids(await search(client))
    gone = await search(client, deleted="true")
    assert ld_ids(gone) == ["ab-004"] and gone["items"][0]["installed"] is False
    assert (await search(client, deleted="true", installed="true"))["total"] == 0


async def test_ld_id_prefix_is_literal_and_case_sensitive(client, fleet):
    assert ld_ids(await search(client, ld_id_prefix="AB-")) == ["AB-001", "AB-002"]
    assert ld_ids(await search(client, ld_id_prefix="ab")) == ["ab-004"]
    assert ld_ids(await search(client, ld_id_prefix="A_")) == ["A_B-003"]  # "_" is not a wildcard
    assert ld_ids(await search(client, ld_id_prefix="A%")) == []
    assert ld_ids(await search(client, ld_id_prefix="AB-002")) == ["AB-002"]


async def test_bad_search_parameters_are_refused_by_name(client, fleet):
    for params, field in [({"colour": "red"}, "colour"), ({"mac": "XYZ"}, "mac"), ({"relay_state": "2"}, "relay_state"),
                          ({"use_state": "Q"}, "use_state"), ({"limit": "0"}, "limit"), ({"installed": "maybe"}, "installed"),
                          ({"co_id": "C" * 16}, "co_id")]:
        resp = await client.get("/api/v1/logical-devices", params=params)
        assert resp.status == 400, params
        assert (await resp.json())["errors"][0]["field"] == field


async def test_a_page_of_logical_devices_is_one_query_with_joins(client, catalog, hub):
    """No query per row: a page of logical devices is one statement, plus at most one for the total
    when the page does not tell it; a page of physical devices adds one for all their comms rows
    and one for all their logical devices."""
    await client.post("/api/v1/concentrators", json={"co_id": "CO-B", "he_id": 1, "type_id": 2})
    devices = [{"type_id": 11, "ld_type_id": 101, "co_id": "CO-B", "ld_id": f"LD-{n:03}"} for n in range(60)]
    assert (await client.post("/api/v1/device-imports", json=devices)).status == 200
    with statements(hub) as seen:
        short = await search(client, co_id="CO-B", limit=100)
    assert short["total"] == 60 and len(short["items"]) == 60
    assert len(seen) == 1
    with statements(hub) as seen:
        full = await search(client, co_id="CO-B", limit=50, use_state="N")
    assert full["total"] == 60 and len(full["items"]) == 50
    assert len(seen) <= 2
    with statements(hub) as seen:
        assert len((await search(client, "/api/v1/physical-devices", co_id="CO-B", limit=50))["items"]) == 50
    assert len(seen) == 4  # devices, their comms rows, their logical devices, the count


async def test_hot_searches_are_answered_through_indexes(client, fleet, hub):
    """The query plans for a search by LD_ID and by CO_ID start from the unique keys and never
    read a whole device table (PostgreSQL is told to avoid sequential scans, so a missing index
    would still show as one)."""
    for params in ({"ld_id": "AB-001"}, {"co_id": "CO-A", "limit": 50}):
        with statements(hub) as seen:
            await search(client, **params)
        (statement, parameters), = seen
        with hub.db.engine.connect() as conn:
            if hub.db.backend == "sqlite":
                plan = " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                                          parameters))
                assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan
            else:
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " | ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert "Seq Scan" not in plan, plan
                key = "uq_logical_device_ld_id" if "ld_id" in params else "uq_concentrator_co_id"
                assert key in plan, plan


async def test_physical_device_search_and_view(client, fleet, hub):
    body = await search(client, "/api/v1/physical-devices", co_id="CO-A")
    assert body["total"] == 2
    first = body["items"][0]
    assert first["pd_id"] == "PD-A1" and first["co_id"] == "CO-A" and first["he_id"] == 2
    assert [ld["ld_id"] for ld in first["logical_devices"]] == ["AB-001"]
    assert first["comms"]["password_set"] is True and "password" not in first["comms"]
    assert "s3cret" not in str(body)

    assert [d["pd_id"] for d in (await search(client, "/api/v1/physical-devices", he_id=1))["items"]] == \
        ["PD-H1", "PD-H2", None]
    assert [d["mac"] for d in (await search(client, "/api/v1/physical-devices", mac="00:11:22:33:44:05"))["items"]] == \
        ["001122334405"]
    assert (await search(client, "/api/v1/physical-devices", serial="SN-H1"))["items"][0]["pd_id"] == "PD-H1"
    assert (await search(client, "/api/v1/physical-devices", pd_id="PD-A2"))["total"] == 1
    assert (await search(client, "/api/v1/physical-devices", config_state=1))["items"][0]["pd_id"] == "PD-A1"
    assert (await search(client, "/api/v1/physical-devices", type_id=11))["total"] == 5
    installed = await search(client, "/api/v1/physical-devices", installed="true")
    assert installed["total"] == 4 and all(d["installed"] for d in installed["items"])
    assert [d["mac"] for d in (await search(client, "/api/v1/physical-devices", installed="false"))["items"]] == \
        ["001122334405"]
    change(hub, PhysicalDeviceComms, fleet["h1"]["id"], use_state="C")
    assert [d["pd_id"] for d in (await search(client, "/api/v1/physical-devices", use_state="C"))["items"]] == ["PD-H1"]
    change(hub, PhysicalDevice, fleet["h2"]["id"], deleted=True)
    assert (await search(client, "/api/v1/physical-devices"))["total"] == 4
    assert [d["pd_id"] for d in (await search(client, "/api/v1/physical-devices", deleted="true"))["items"]] == ["PD-H2"]

    one = await client.get(f"/api/v1/physical-devices/{fleet['a1']['id']}")
    assert one.status == 200
    view = await one.json()
    assert view == first
    assert (await client.get("/api/v1/physical-devices/999999")).status == 404
    assert (await client.get("/api/v1/physical-devices/abc")).status == 400
