"""GET /api/v1/logical-devices/{ld_id}/usage and the edits and versions beside it: items as the
documentation shows them, paging like every list, the three views, and problem documents for bad
periods, naive times, spans too long and unknown logical devices. Data collected from the real
simulator under a test clock, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hub.app import create_app
from hub.model import UsageHistory
from hub.runtime import Hub
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters, set_head_end

ITEM_KEYS = {"ld_id", "sub_number", "measured_time", "register_value", "increment", "status",
             "recollected_increment", "quality", "source", "version"}


def z(n: int) -> str:
    """The time of slot n as the API spells it."""
    return (START + n * SLOT).isoformat().replace("+00:00", "Z")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    hub = collecting_hub(settings, clock, enabled=False)  # the test moves the clock, not the scheduler
    yield hub
    hub.close()


@pytest.fixture
async def api(chub, aiohttp_client):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(chub))


async def collect(hub: Hub, clock: Clock, first: int, count: int) -> None:
    for n in range(first, first + count):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(1, START + n * SLOT)


async def get(api, ld_id: str, **params: Any) -> tuple[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    resp = await api.get(f"/api/v1/logical-devices/{ld_id}/usage", params={k: str(v) for k, v in params.items()})
    return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def gappy(chub, clock) -> list[str]:  # type: ignore[no-untyped-def]
    """Three meters, six slots: slots 2 and 3 missed by every meter, the rest read."""
    lds = install_meters(chub, {1: 3})
    await collect(chub, clock, 0, 2)
    set_head_end(chub, 1, failure_rate=1.0)
    await collect(chub, clock, 2, 2)
    set_head_end(chub, 1, failure_rate=0.0)
    await collect(chub, clock, 4, 2)
    return lds


async def test_usage_items_by_time_then_register_with_status_and_quality_names(api, gappy):
    status, body = await get(api, gappy[0], **{"from": z(0), "to": z(6)})
    assert status == 200 and body["total"] == 12 and len(body["items"]) == 12
    items = body["items"]
    assert all(set(i) == ITEM_KEYS for i in items)
    assert [(i["measured_time"], i["sub_number"]) for i in items[:3]] == [(z(0), 1), (z(0), 2), (z(1), 1)]
    first, missing, after = items[2], items[4], items[8]
    assert first["status"] == "normal" and first["quality"] == ["valid"] and first["source"] == "scheduled"
    assert first["version"] == 0 and first["increment"] == pytest.approx(
        first["register_value"] - items[0]["register_value"])
    assert missing == {"ld_id": gappy[0], "sub_number": 1, "measured_time": z(2), "register_value": None,
                       "increment": None, "status": "missing", "recollected_increment": None,
                       "quality": ["missing"], "source": "scheduled", "version": 0}
    assert after["quality"] == ["valid", "spans-gap"]  # slot 4 counts from slot 1


async def test_paging_and_one_register(api, gappy):
    window = {"from": z(0), "to": z(6)}
    _, whole = await get(api, gappy[1], **window)
    _, page = await get(api, gappy[1], **window, limit=5, offset=5)
    assert page["total"] == 12 and page["items"] == whole["items"][5:10]
    _, energy = await get(api, gappy[1], **window, sub_number=1)
    assert energy["total"] == 6 and [i["sub_number"] for i in energy["items"]] == [1] * 6
    assert energy["items"] == [i for i in whole["items"] if i["sub_number"] == 1]
    _, empty = await get(api, gappy[1], **{"from": z(100), "to": z(101)})
    assert empty == {"items": [], "total": 0}


async def test_the_estimated_view_fills_the_gap_with_flagged_estimates(api, gappy):
    window = {"from": z(0), "to": z(6), "sub_number": 1}
    _, actual = await get(api, gappy[2], **window)
    _, est = await get(api, gappy[2], **window, estimate="true")
    _, view = await get(api, gappy[2], **window, view="estimated")
    assert est == view and est["total"] == 6
    a, e = actual["items"], est["items"]
    lo, hi = a[1]["register_value"], a[4]["register_value"]
    assert [i["status"] for i in e] == ["normal", "normal", "estimated", "estimated", "normal", "normal"]
    assert e[2]["quality"] == e[3]["quality"] == ["missing", "estimated-interpolated"]
    assert e[2]["register_value"] == pytest.approx(lo + (hi - lo) / 3)
    assert e[3]["register_value"] == pytest.approx(lo + 2 * (hi - lo) / 3)
    assert e[2]["version"] is None and e[2]["source"] == "estimation"
    assert sum(i["increment"] for i in e[2:5]) == pytest.approx(hi - lo)
    assert e[4]["quality"] == ["valid"] and a[4]["quality"] == ["valid", "spans-gap"]
    assert [i["status"] for i in a] == ["normal", "normal", "missing", "missing", "normal", "normal"]


async def test_edits_through_the_api_are_versions_and_the_raw_view_is_unchanged(api, chub, gappy):
    url = f"/api/v1/logical-devices/{gappy[0]}/usage"
    resp = await api.post(url + "/edits", json={"sub_number": 1, "measured_time": z(1), "increment": 0.5,
                                                "author": "ops", "reason": "register test"})
    assert resp.status == 201
    created = await resp.json()
    assert created["version"] == 1 and created["quality"] == ["valid", "edited"]
    assert created["author"] == "ops" and created["reason"] == "register test" and created["created_at"]
    window = {"from": z(1), "to": z(2), "sub_number": 1}
    _, actual = await get(api, gappy[0], **window)
    _, raw = await get(api, gappy[0], **window, view="raw")
    assert actual["items"][0]["increment"] == 0.5 and actual["items"][0]["version"] == 1
    assert raw["items"][0]["increment"] != 0.5 and raw["items"][0]["version"] == 0
    resp = await api.get(url + "/versions", params={"sub_number": "1", "measured_time": z(1)})
    versions = await resp.json()
    assert resp.status == 200 and versions["total"] == 2
    assert [(v["version"], v["author"]) for v in versions["items"]] == [(0, None), (1, "ops")]
    with chub.db.session() as s:
        row = s.get(UsageHistory, (gappy[0], 1, START + SLOT))
        assert row.increment == raw["items"][0]["increment"] and row.quality == 1


@pytest.mark.parametrize("params, field", [
    ({"from": "2026-03-02T00:00:00", "to": "2026-03-02T03:00:00Z"}, "from"),  # naive
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00"}, "to"),
    ({"from": "2026-03-02T03:00:00Z", "to": "2026-03-02T00:00:00Z"}, None),  # ends before it starts
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-04-03T00:00:00Z"}, None),  # 32 days
    ({"from": "yesterday", "to": "2026-03-02T00:00:00Z"}, "from"),
    ({"to": "2026-03-02T00:00:00Z"}, "from"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00Z", "colour": "red"}, "colour"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00Z", "view": "best"}, "view"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00Z", "view": "raw", "estimate": "true"}, None),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00Z", "limit": "0"}, "limit"),
    ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-02T03:00:00Z", "sub_number": "-1"}, "sub_number"),
])
async def test_bad_queries_get_a_problem_document(api, gappy, params, field):
    resp = await api.get(f"/api/v1/logical-devices/{gappy[0]}/usage", params=params)
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["type"] == "urn:mdmhub:problem:invalid-query" and body["status"] == 400
    if field is not None:
        assert field in {e["field"] for e in body["errors"]}


async def test_an_unknown_logical_device_is_404(api, gappy):
    status, body = await get(api, "LD-NOBODY", **{"from": z(0), "to": z(6)})
    assert status == 404 and body["type"] == "urn:mdmhub:problem:not-found" and "LD-NOBODY" in body["detail"]
    resp = await api.post("/api/v1/logical-devices/LD-NOBODY/usage/edits",
                          json={"sub_number": 1, "measured_time": z(0), "increment": 1, "author": "a", "reason": "b"})
    assert resp.status == 404


async def test_history_outlives_the_logical_device(api, chub, gappy):
    """Usage rows of an LD_ID no device carries any more (moved, cancelled) are still readable."""
    with chub.db.session() as s:
        s.add(UsageHistory(ld_id="LD-GONE", sub_number=1, measured_time=START, register_value=5.0, status="normal",
                           quality=1, source="test"))
    status, body = await get(api, "LD-GONE", **{"from": z(0), "to": z(1)})
    assert status == 200 and body["items"][0]["register_value"] == 5.0


@pytest.mark.parametrize("body, status", [
    ({"sub_number": 1, "measured_time": "2026-03-02T00:30:00Z", "author": "a", "reason": "b"}, 422),  # no value
    ({"sub_number": 1, "measured_time": "2026-03-02T00:30:00", "increment": 1, "author": "a", "reason": "b"}, 422),
    ({"sub_number": 1, "measured_time": "2026-03-02T00:30:00Z", "increment": 1, "reason": "b"}, 422),  # who?
    ({"sub_number": 1, "measured_time": "2026-03-02T00:30:00Z", "increment": 1, "author": "a", "reason": ""}, 422),
    ({"sub_number": 1, "measured_time": "2026-03-02T00:30:00Z", "increment": 1, "author": "a", "reason": "b",
      "status": "normal"}, 422),
    ({"sub_number": 1, "measured_time": "2026-03-09T00:30:00Z", "increment": 1, "author": "a", "reason": "b"},
     404),  # no snapshot then
])
async def test_bad_edits_are_refused_and_store_nothing(api, chub, gappy, body, status):
    resp = await api.post(f"/api/v1/logical-devices/{gappy[0]}/usage/edits", json=body)
    assert resp.status == status and resp.content_type == "application/problem+json"
    from hub.model import UsageVersion
    with chub.db.session() as s:
        assert s.scalars(select(UsageVersion)).all() == []


async def test_malformed_edit_bodies_get_problem_documents(api, gappy):
    url = f"/api/v1/logical-devices/{gappy[0]}/usage/edits"
    resp = await api.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json(content_type=None))["type"].endswith("malformed-json")
    resp = await api.post(url, data=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415


async def test_the_usage_routes_are_in_the_openapi_document(api):
    spec = await (await api.get("/api/openapi.json")).json()
    path = spec["paths"]["/api/v1/logical-devices/{ld_id}/usage"]["get"]
    names = {p["name"] for p in path["parameters"]}
    assert {"from", "to", "sub_number", "view", "estimate", "limit", "offset"} <= names
    assert "post" in spec["paths"]["/api/v1/logical-devices/{ld_id}/usage/edits"]
