"""Sensor series in the secondary-use API (REST and SOAP) from IEEE 1888 point values: per kind, group
and slot or day; household groups under k customers suppressed; site sensors under `site`; never a
point ID, LD_ID or name."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hub.model import FiapPoint, FiapValue
from tests.collecting import SLOT, START
from tests.test_public_api import _zeep, bearer, clock, make_client, pclient, phub, seed_usage  # noqa: F401

PERIOD = {"from": START.isoformat(), "to": (START + 4 * SLOT).isoformat()}
SECRET = "http://secret.example/home/"


async def seed_points(hub, clock) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    clusters = await seed_usage(hub, clock)
    with hub.db.session() as s:
        for cluster, lds in clusters.items():
            for ld in lds:
                pid = f"{SECRET}{ld}/temperature"
                s.add(FiapPoint(point_id=pid, kind="temperature", unit="Cel", name=f"Room of {ld}", ld_id=ld))
                s.flush()
                for n, minutes in enumerate((5, 20, 35)):  # two values in the first slot, one in the second
                    s.add(FiapValue(point_id=pid, time=START + timedelta(minutes=minutes), value=str(20 + n),
                                    number=20.0 + n))
        s.add(FiapPoint(point_id="http://secret.example/site/weather", kind="temperature", unit="Cel", name="Roof"))
        s.flush()
        s.add(FiapValue(point_id="http://secret.example/site/weather", time=START + SLOT, value="9.5", number=9.5))
        s.add(FiapValue(point_id="http://secret.example/site/weather", time=START + 2 * SLOT, value="n/a", number=None))
    return clusters


async def test_sensor_series_suppresses_small_household_groups_and_shows_site_sensors(phub, clock, pclient):
    clusters = await seed_points(phub, clock)
    key = make_client(phub, "research", ["public:read"])
    resp = await pclient.get("/api/v1/public/sensors/series", params={**PERIOD, "kind": "temperature"},
                             headers=bearer(key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    groups = {i["group"] for i in body["items"]}
    assert "demo-district-1" not in groups and body["suppressed"] == 2  # two slots of the 2-customer cluster
    big = next(c for c in clusters if c != "demo-district-1")
    first = next(i for i in body["items"] if i["group"] == big and i["period_start"] == "2026-03-02T00:30:00Z")
    assert first["values"] == 8 and first["points"] == 4 and first["customers"] == 4
    assert (first["mean"], first["min"], first["max"]) == (20.5, 20.0, 21.0)
    site = [i for i in body["items"] if i["group"] == "site"]
    assert [(i["period_start"], i["mean"], i["customers"]) for i in site] == [("2026-03-02T00:30:00Z", 9.5, None)]
    csv_text = await (await pclient.get("/api/v1/public/sensors/series", params={**PERIOD, "kind": "temperature"},
                                        headers={**bearer(key), "Accept": "text/csv"})).text()
    kinds = await (await pclient.get("/api/v1/public/sensors", headers=bearer(key))).json()
    assert kinds["items"] == [{"kind": "temperature", "unit": "Cel", "points": 13}]
    for text in (str(body), csv_text, str(kinds)):
        assert "secret.example" not in text and "LD-" not in text and "Room of" not in text and "Roof" not in text
    day = await (await pclient.get("/api/v1/public/sensors/series", params={
        **PERIOD, "kind": "temperature", "resolution": "day", "group_by": "area"}, headers=bearer(key))).json()
    assert day["items"] and all(i["period_start"] == "2026-03-02" for i in day["items"])


async def test_a_group_restricted_caller_sees_only_its_groups_and_no_site_sensors(phub, clock, pclient):
    clusters = await seed_points(phub, clock)
    big = next(c for c in clusters if c != "demo-district-1")
    key = make_client(phub, "signage", ["public:read"], groups=[f"cluster:{big}"])
    body = await (await pclient.get("/api/v1/public/sensors/series", params={**PERIOD, "kind": "temperature"},
                                    headers=bearer(key))).json()
    assert {i["group"] for i in body["items"]} == {big}
    inj = await pclient.get("/api/v1/public/sensors/series", headers=bearer(key),
                            params={**PERIOD, "kind": "temperature' OR '1'='1", "group": "x' OR 1=1 --"})
    assert inj.status == 200 and (await inj.json())["items"] == []
    no_kind = await pclient.get("/api/v1/public/sensors/series", params=PERIOD, headers=bearer(key))
    assert no_kind.status == 400 and "kind" in await no_kind.text()


async def test_zeep_calls_the_sensor_operations(phub, clock, pclient):
    await seed_points(phub, clock)
    key = make_client(phub, "soap-app", ["public:read"])
    url = str(pclient.make_url("/public/soap"))

    def calls() -> tuple:
        svc = _zeep(url, key).service
        return (svc.GetSensorKinds(),
                svc.GetSensorSeries(Kind="temperature", From=START, To=START + 4 * SLOT, Resolution="slot"))

    kinds, series = await asyncio.to_thread(calls)
    assert [(k.Kind, k.Unit, k.Points) for k in kinds] == [("temperature", "Cel", 13)]
    items = series.Items.SensorBucket
    assert series.Suppressed == 2 and series.Total == len(items) == 5
    assert "site" in {i.Group for i in items} and "demo-district-1" not in {i.Group for i in items}
