"""Head-end, type and parameter-group administration through the HTTP API."""


async def test_head_end_is_created_with_its_holding_concentrator(client):
    resp = await client.post("/api/v1/head-ends", json={"he_id": 7, "name": "north", "capacity": 100})
    assert resp.status == 201
    body = await resp.json()
    assert body["he_id"] == 7 and body["capacity"] == 100 and body["devices"] == 0
    listing = await (await client.get("/api/v1/head-ends")).json()
    assert listing["total"] == 1 and listing["items"][0]["name"] == "north"


async def test_duplicate_head_end_is_a_conflict_and_changes_nothing(client):
    assert (await client.post("/api/v1/head-ends", json={"he_id": 1, "name": "a"})).status == 201
    resp = await client.post("/api/v1/head-ends", json={"he_id": 1, "name": "b"})
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "he_id"
    assert (await (await client.get("/api/v1/head-ends/1")).json())["name"] == "a"


async def test_head_end_patch_changes_capacity(client):
    await client.post("/api/v1/head-ends", json={"he_id": 1, "name": "a"})
    resp = await client.patch("/api/v1/head-ends/1", json={"capacity": 5})
    assert resp.status == 200 and (await resp.json())["capacity"] == 5
    assert (await client.patch("/api/v1/head-ends/99", json={"capacity": 5})).status == 404


async def test_logical_device_type_needs_an_existing_parameter_group(client):
    resp = await client.post("/api/v1/logical-device-types", json={"type_id": 101, "name": "m", "group_id": 9})
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["field"] == "group_id"
    group = {"group_id": 9, "name": "g", "items": [
        {"sub_number": 1, "obis": "1.0.1.8.0.255", "name": "energy", "unit": "kWh"}]}
    assert (await client.post("/api/v1/parameter-groups", json=group)).status == 201
    resp = await client.post("/api/v1/logical-device-types", json={"type_id": 101, "name": "m", "group_id": 9})
    assert resp.status == 201
    assert (await (await client.get("/api/v1/logical-device-types/101")).json())["group_id"] == 9


async def test_parameter_group_register_is_added_as_a_row(client):
    await client.post("/api/v1/parameter-groups", json={"group_id": 1, "name": "g"})
    item = {"sub_number": 2, "obis": "1.0.11.6.0.255", "name": "max current", "unit": "A", "kind": "maximum",
            "min_value": 0, "max_value": 120}
    resp = await client.put("/api/v1/parameter-groups/1/items/2", json=item)
    assert resp.status == 200
    assert [i["sub_number"] for i in (await resp.json())["items"]] == [2]
    assert (await client.put("/api/v1/parameter-groups/1/items/3", json=item)).status == 422


async def test_types_list_pages(client):
    for type_id in range(5):
        await client.post("/api/v1/physical-device-types", json={"type_id": type_id, "name": f"t{type_id}"})
    body = await (await client.get("/api/v1/physical-device-types?limit=2&offset=3")).json()
    assert body["total"] == 5 and [t["type_id"] for t in body["items"]] == [3, 4]
    bad = await client.get("/api/v1/physical-device-types?limit=0")
    assert bad.status == 400 and (await bad.json())["errors"][0]["field"] == "limit"


async def test_malformed_json_and_wrong_media_type_are_problems(client):
    resp = await client.post("/api/v1/head-ends", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["type"].endswith("malformed-json")
    resp = await client.post("/api/v1/head-ends", data=b"he_id=1", headers={"Content-Type": "text/plain"})
    assert resp.status == 415


async def test_unknown_route_is_a_problem_document(client):
    resp = await client.get("/api/v1/nothing-here")
    assert resp.status == 404 and resp.content_type == "application/problem+json"
