"""Certificate history through the HTTP API: bulk registration with a per-item report, listing with
filters and paging, revocation."""

from __future__ import annotations

from typing import Any


def cert(serial: str, **fields: Any) -> dict[str, Any]:
    return {"serial": serial, "subject": f"CN={serial}", "issued_at": "2025-01-10T00:00:00Z",
            "expires_at": "2035-01-10T00:00:00Z", **fields}


async def register(client, body: Any, status: int = 200) -> dict[str, Any]:
    resp = await client.post("/api/v1/certificates", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def listing(client, **params: str) -> dict[str, Any]:
    resp = await client.get("/api/v1/certificates", params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_bulk_registration_stores_valid_items_and_reports_the_rest(client):
    assert (await register(client, [cert("2038111")]))["stored"] == 1
    report = await register(client, [
        cert("2038112"),
        cert("2038111"),                                   # 2: already stored
        cert("2038113"),
        cert("2038113"),                                   # 4: twice in this request
        {"subject": "CN=no serial"},                       # 5: serial missing
        cert("2038114", issued_at="2025-01-10T00:00:00"),  # 6: naive time
        cert("2038115", expires_at="2024-01-01T00:00:00Z"),  # 7: expires before issued
        "2038116",                                         # 8: not an object
        cert("2038117", unknown="x"),                      # 9: unknown field
    ])
    assert (report["items"], report["stored"], report["failed"]) == (9, 2, 7)
    assert sorted({e["line"] for e in report["errors"]}) == [2, 4, 5, 6, 7, 8, 9]
    by_line = {e["line"]: e for e in report["errors"]}
    assert by_line[2]["field"] == "serial" and "already registered" in by_line[2]["message"]
    assert by_line[4]["field"] == "serial" and "more than once" in by_line[4]["message"]
    assert by_line[5]["field"] == "serial" and by_line[6]["field"] == "issued_at"
    assert by_line[9]["field"] == "unknown"
    body = await listing(client)
    assert body["total"] == 3 and [c["serial"] for c in body["items"]] == ["2038111", "2038112", "2038113"]
    first = body["items"][0]
    assert first["subject"] == "CN=2038111" and first["issued_at"].startswith("2025-01-10")
    assert first["revoked"] is False and first["revoked_at"] is None


async def test_registration_accepts_a_wrapped_list_and_refuses_other_shapes(client):
    assert (await register(client, {"certificates": [cert("a1"), cert("a2")]}))["stored"] == 2
    await register(client, {"serial": "a3"}, 422)
    await register(client, "a3", 422)
    resp = await client.post("/api/v1/certificates", data=b"[", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await listing(client))["total"] == 2


async def test_revocation_records_the_reason_once(client):
    await register(client, [cert("2038112"), cert("2038113")])
    resp = await client.post("/api/v1/certificates/2038112/revocation", json={"reason": "meter disposed"})
    assert resp.status == 200, await resp.text()
    revoked = await resp.json()
    assert revoked["revoked"] and revoked["revoked_at"] and revoked["revocation_reason"] == "meter disposed"
    assert await (await client.get("/api/v1/certificates/2038112")).json() == revoked

    again = await client.post("/api/v1/certificates/2038112/revocation", json={"reason": "twice"})
    assert again.status == 409 and (await again.json())["errors"][0]["field"] == "serial"
    assert (await (await client.get("/api/v1/certificates/2038112")).json())["revocation_reason"] == "meter disposed"
    assert (await client.post("/api/v1/certificates/nope/revocation", json={"reason": "x"})).status == 404
    assert (await client.post("/api/v1/certificates/2038113/revocation", json={})).status == 422
    assert (await client.post("/api/v1/certificates/2038113/revocation", json={"reason": ""})).status == 422
    assert not (await (await client.get("/api/v1/certificates/2038113")).json())["revoked"]


async def test_listing_filters_by_revocation_and_pages(client):
    await register(client, [cert(f"s{i:02d}") for i in range(5)])
    for serial in ("s01", "s03"):
        await client.post(f"/api/v1/certificates/{serial}/revocation", json={"reason": "compromised"})
    revoked = await listing(client, revoked="true")
    assert revoked["total"] == 2 and [c["serial"] for c in revoked["items"]] == ["s01", "s03"]
    valid = await listing(client, revoked="false", limit="2", offset="1")
    assert valid["total"] == 3 and [c["serial"] for c in valid["items"]] == ["s02", "s04"]
    assert (await client.get("/api/v1/certificates", params={"status": "x"})).status == 400
    assert (await client.get("/api/v1/certificates/unknown")).status == 404
