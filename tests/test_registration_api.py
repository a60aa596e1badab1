"""Device registration through the HTTP API: one device, bulk CSV and JSON, errors by line and
field, all-or-nothing imports, and head-end assignment."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from hub.model import LogicalDevice, PhysicalDevice, PhysicalDeviceComms

HEADER = "type_id,ld_type_id,serial,mac,pd_id,ld_id,cluster_id,contract_amps\n"


def csv_of(rows: list[str]) -> str:
    return HEADER + "".join(r + "\n" for r in rows)


def counts(hub) -> tuple[int, int, int]:
    with hub.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in
                     (PhysicalDevice, PhysicalDeviceComms, LogicalDevice))  # type: ignore[return-value]


async def post_csv(client, text: str, atomic: bool = False):
    return await client.post(f"/api/v1/device-imports?atomic={'true' if atomic else 'false'}",
                             data=text.encode(), headers={"Content-Type": "text/csv"})


async def test_one_device_is_registered_with_the_seed_defaults(client, catalog):
    resp = await client.post("/api/v1/physical-devices", json={
        "type_id": 11, "ld_type_id": 101, "serial": "OSSBN-01234-56", "mac": "aa:bb:cc:dd:ee:ff",
        "cert_serial": "2038112", "password": "ossbn1234"})
    assert resp.status == 201
    pd = await resp.json()
    assert pd["mac"] == "AABBCCDDEEFF" and pd["pd_id"] is None and pd["config_state"] == 0
    assert pd["co_id"] == "HE1" and pd["he_id"] == 1  # the head-end's holding concentrator
    assert pd["comms"]["use_state"] == "N" and pd["comms"]["password_set"] is True
    assert "password" not in pd["comms"]
    (ld,) = pd["logical_devices"]
    assert (ld["ld_id"], ld["ld_address"], ld["contract_amps"], ld["relay_state"]) == (None, 2, 0, 1)
    assert ld["installed"] is False


@pytest.mark.parametrize("field,value,status", [
    ("pd_id", "X" * 16, 422),          # longer than 15 characters
    ("co_id", "CO-ID-TOO-LONG-1", 422),
    ("mac", "AABBCCDDEEF", 422),       # 11 digits
    ("mac", "GGBBCCDDEEFF", 422),      # not hex
    ("type_id", 999, 422),             # unknown physical device type
    ("ld_type_id", 999, 422),          # unknown logical device type
    ("cluster_id", "nowhere", 422),
    ("he_id", 42, 422),
])
async def test_bad_values_are_refused_and_store_nothing(client, catalog, field, value, status):
    record = {"type_id": 11, "ld_type_id": 101, field: value}
    resp = await client.post("/api/v1/physical-devices", json=record)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"][0]["field"] == field
    assert counts(catalog) == (0, 0, 0)


async def test_duplicate_identifiers_are_conflicts(client, catalog):
    first = {"type_id": 11, "ld_type_id": 101, "mac": "0000000000A1", "serial": "S1", "pd_id": "PD1", "ld_id": "LD1"}
    assert (await client.post("/api/v1/physical-devices", json=first)).status == 201
    for key, other in [("mac", "0000000000A1"), ("serial", "S1"), ("pd_id", "PD1"), ("ld_id", "LD1")]:
        resp = await client.post("/api/v1/physical-devices", json={"type_id": 11, "ld_type_id": 101, key: other})
        assert resp.status == 409, key
        assert (await resp.json())["errors"][0]["field"] == key
    assert counts(catalog) == (1, 1, 1)


async def test_csv_import_stores_valid_rows_and_reports_bad_ones_by_line_and_field(client, catalog):
    text = csv_of([
        "11,101,S1,000000000001,,,,30",
        "11,101,S2,00000000000Z,,,,30",       # line 3: bad MAC
        "11,999,S3,000000000003,,,,30",       # line 4: unknown LD type
        "11,101,S4,000000000001,,,,30",       # line 5: MAC repeated from line 2
        "11,101,S5,000000000005,,LD5,demo-tower-a,40",
    ])
    resp = await post_csv(client, text)
    assert resp.status == 200
    report = await resp.json()
    assert (report["rows"], report["stored"], report["failed"]) == (5, 2, 3)
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(3, "mac"), (4, "ld_type_id"), (5, "mac")]
    assert "more than once" in report["errors"][2]["message"]
    assert counts(catalog) == (2, 2, 2)


async def test_atomic_import_stores_nothing_when_one_row_is_bad(client, catalog):
    text = csv_of(["11,101,S1,000000000001,,,,30", "11,101,S2,000000000002,PD-ID-IS-TOO-LONG,,,30"])
    resp = await post_csv(client, text, atomic=True)
    assert resp.status == 422
    report = await resp.json()
    assert report["stored"] == 0 and report["errors"] == [
        {"field": "pd_id", "message": "Value error, must be at most 15 characters (got 17)", "line": 3}]
    assert counts(catalog) == (0, 0, 0)
    resp = await post_csv(client, csv_of(["11,101,S1,000000000001,,,,30"]), atomic=True)
    assert resp.status == 200 and (await resp.json())["stored"] == 1


async def test_rows_clashing_with_stored_devices_are_reported(client, catalog):
    await post_csv(client, csv_of(["11,101,S1,000000000001,PD1,LD1,,30"]))
    report = await (await post_csv(client, csv_of(["11,101,S9,000000000009,PD1,,,30"]))).json()
    assert report["stored"] == 0 and report["errors"][0]["field"] == "pd_id"
    assert "already registered" in report["errors"][0]["message"]


async def test_json_import_reports_item_numbers(client, catalog):
    devices = [{"type_id": 11, "ld_type_id": 101, "mac": "000000000001"}, "not an object",
               {"type_id": 11, "ld_type_id": 101, "colour": "red"}]
    report = await (await client.post("/api/v1/device-imports", json={"devices": devices})).json()
    assert report["stored"] == 1
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(2, "item"), (3, "colour")]


async def test_csv_with_unknown_or_missing_columns_is_refused_whole(client, catalog):
    resp = await post_csv(client, "type_id,ld_type_id,colour\n11,101,red\n")
    assert resp.status == 422 and (await resp.json())["errors"][0] == {"field": "colour", "message": "unknown column",
                                                                        "line": 1}
    resp = await post_csv(client, "serial\nS1\n")
    assert resp.status == 422
    assert {e["field"] for e in (await resp.json())["errors"]} == {"type_id", "ld_type_id"}
    assert counts(catalog) == (0, 0, 0)


async def test_import_needs_csv_or_json(client, catalog):
    resp = await client.post("/api/v1/device-imports", data=b"x", headers={"Content-Type": "application/xml"})
    assert resp.status == 415


async def test_fill_lowest_fills_head_end_one_to_capacity_then_the_next(client, catalog):
    await client.patch("/api/v1/head-ends/1", json={"capacity": 3})
    rows = [f"11,101,S{n},{n:012X},,,,30" for n in range(1, 6)]
    report = await (await post_csv(client, csv_of(rows))).json()
    assert report["assigned_per_head_end"] == {"1": 3, "2": 2}
    heads = {h["he_id"]: h["devices"] for h in (await (await client.get("/api/v1/head-ends")).json())["items"]}
    assert heads == {1: 3, 2: 2}


async def test_least_loaded_strategy_spreads_devices(client, catalog):
    catalog.registry.settings.assignment = "least-loaded"
    rows = [f"11,101,S{n},{n:012X},,,,30" for n in range(1, 6)]
    report = await (await post_csv(client, csv_of(rows))).json()
    assert report["assigned_per_head_end"] == {"1": 3, "2": 2}
    catalog.registry.settings.assignment = "fill-lowest"
    report = await (await post_csv(client, csv_of([f"11,101,T{n},{n + 100:012X},,,,30" for n in range(3)]))).json()
    assert report["assigned_per_head_end"] == {"1": 3}


async def test_full_head_ends_refuse_further_devices(client, catalog):
    await client.patch("/api/v1/head-ends/1", json={"capacity": 1})
    await client.patch("/api/v1/head-ends/2", json={"capacity": 1})
    report = await (await post_csv(client, csv_of([f"11,101,S{n},{n:012X},,,,30" for n in range(3)]))).json()
    assert report["stored"] == 2 and report["errors"][0]["field"] == "he_id"
    assert "capacity" in report["errors"][0]["message"]


async def test_import_commits_whole_batches(catalog):
    catalog.registry.settings.import_batch_size = 2
    text = csv_of([f"11,101,S{n},{n:012X},,,,30" for n in range(5)])
    report = catalog.registry.import_csv(text)
    assert report.stored == 5 and report.batches_committed == 3
    assert counts(catalog) == (5, 5, 5)


async def test_csv_cells_for_states_are_read_as_numbers(client, catalog):
    text = ("type_id,ld_type_id,mac,config_state,relay_state\n"
            "11,101,000000000001,1,0\n"
            "11,101,000000000002,2,1\n")
    report = await (await post_csv(client, text)).json()
    assert report["stored"] == 1
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(3, "config_state")]
    found = await (await client.get("/api/v1/physical-devices?mac=000000000001")).json()
    assert found["items"][0]["config_state"] == 1
    assert found["items"][0]["logical_devices"][0]["relay_state"] == 0
