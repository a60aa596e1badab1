"""Meter ADR over HTTP: policy CRUD with validation as problem documents, events and actions as JSON
and CSV, and policy assistance from the max-current history."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from hub.app import create_app
from hub.cli import main
from hub.model import UsageHistory
from hub.services.adr_events import DrEvent, Interval, Signal, Targets
from tests.collecting import Clock, collecting_hub, install_meters

NOW = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)


@pytest.fixture
async def api(settings, aiohttp_client):
    settings = settings.model_copy(update={"collection": settings.collection.model_copy(update={"enabled": False})})
    clock = Clock(NOW)
    hub = collecting_hub(settings, clock)
    hub.adr.clock = clock
    install_meters(hub, {1: 2}, overrides={n: {"contract_amps": 30} for n in (1, 2)})
    client = await aiohttp_client(create_app(hub))
    client.hub = hub
    yield client
    hub.close()


async def test_policies_are_created_listed_changed_and_deleted(api):
    r = await api.post("/api/v1/adr/policies", json={"ld_id": "LD-000001", "reduced_amps": 20, "signal_levels": [2, 3],
                                                     "hour_from": 9, "hour_to": 21, "max_events_per_month": 4})
    assert r.status == 201
    created = await r.json()
    assert (created["signal_levels"], created["reduced_amps"], created["active"]) == ([2, 3], 20, True)
    r = await api.patch(f"/api/v1/adr/policies/{created['id']}", json={"reduction_step_amps": 5, "active": False})
    changed = await r.json()
    assert (r.status, changed["reduction_step_amps"], changed["reduced_amps"], changed["active"]) == \
        (200, 5, None, False)
    r = await api.get("/api/v1/adr/policies", params={"ld_id": "LD-000001"})
    assert (await r.json())["total"] == 1
    assert (await api.delete(f"/api/v1/adr/policies/{created['id']}")).status == 204
    r = await api.get(f"/api/v1/adr/policies/{created['id']}")
    assert r.status == 404 and r.content_type == "application/problem+json"


@pytest.mark.parametrize("body, field", [
    ({"ld_id": "LD-000001"}, None),                                              # neither amps nor step
    ({"ld_id": "LD-000001", "reduced_amps": 20, "signal_levels": [4]}, "signal_levels"),
    ({"ld_id": "LD-000001", "reduced_amps": 20, "hour_from": 20, "hour_to": 8}, None),
    ({"ld_id": "LD-000001", "reduced_amps": 20, "days_of_week": [7]}, "days_of_week"),
    ({"ld_id": "LD-000001", "reduced_amps": 20, "colour": "red"}, "colour"),
])
async def test_invalid_policies_are_refused_as_problem_documents(api, body, field):
    r = await api.post("/api/v1/adr/policies", json=body)
    assert r.status == 422 and r.content_type == "application/problem+json"
    if field:
        assert field in await r.text()


async def test_a_policy_for_an_unknown_metering_point_is_refused(api):
    r = await api.post("/api/v1/adr/policies", json={"ld_id": "LD-NOPE", "reduced_amps": 20})
    assert r.status in (400, 422) and "LD-NOPE" in await r.text()


async def test_events_and_actions_are_listed_and_exported_as_csv(api):
    await api.post("/api/v1/adr/policies", json={"ld_id": "LD-000001", "reduced_amps": 20})
    start = NOW + timedelta(minutes=10)
    ev = DrEvent("EV-1", 0, start, 1800, signals=(Signal("SIMPLE", "level", (Interval(start, 1800, 1),)),),
                 targets=Targets(everything=True))
    await api.hub.adr.receive("VTN", [ev])
    await api.hub.adr.drain()
    events = await (await api.get("/api/v1/adr/events")).json()
    assert [(e["event_id"], e["response"]) for e in events["items"]] == [("EV-1", "optIn")]
    one = await (await api.get(f"/api/v1/adr/events/{events['items'][0]['id']}")).json()
    assert one["actions"] == {"reserved": 1}
    r = await api.get("/api/v1/adr/actions", params={"format": "csv"})
    lines = (await r.text()).splitlines()
    assert r.content_type == "text/csv" and lines[0].startswith("id,event_id,modification_number,ld_id")
    assert len(lines) == 2 and ",EV-1,0,LD-000001," in lines[1] and ",reserved," in lines[1]
    held = await (await api.get("/api/v1/adr/logical-devices/LD-000001/reservations")).json()
    assert [(h["amps"], h["state"]) for h in held["items"]] == [(20, "reserved")]
    r = await api.get("/api/v1/adr/actions", params={"state": "exploded"})
    assert r.status == 400


async def test_assistance_gives_the_profile_and_the_capacity_that_held_on_n_percent_of_days(api):
    rows = []
    for d in range(10):   # ten days; at 10:00-10:30 Tokyo the max current is 10 + d A, else 5 A
        day = NOW - timedelta(days=d + 1)
        for slot in range(48):
            end = day.replace(hour=0, minute=0) + timedelta(minutes=30 * (slot + 1))
            local_start = (end - timedelta(minutes=30)).astimezone(api.hub.adr.tz)
            value = 10.0 + d if (local_start.hour, local_start.minute) == (10, 0) else 5.0
            rows.append(UsageHistory(ld_id="LD-000001", sub_number=2, measured_time=end, register_value=value))
    with api.hub.db.session() as s:
        s.add_all(rows)
    r = await api.get("/api/v1/adr/logical-devices/LD-000001/assistance", params={"days": 30, "percent": 90})
    body = await r.json()
    assert r.status == 200
    ten = next(p for p in body["by_time_of_day"] if p["slot"] == "10:00")
    assert (ten["max"], ten["p50"]) == (19.0, 14.0)
    assert body["suggested"]["amps"] == 18 and body["suggested"]["days_held"] >= 9
    r = await api.get("/api/v1/adr/logical-devices/LD-000001/assistance", params={"percent": 101})
    assert r.status == 400


async def _two_events_a_day_apart(api) -> None:
    await api.post("/api/v1/adr/policies", json={"ld_id": "LD-000001", "reduced_amps": 20})
    for n, start in enumerate((NOW + timedelta(minutes=10), NOW + timedelta(days=1, minutes=10))):
        ev = DrEvent(f"EV-{n}", 0, start, 1800, signals=(Signal("SIMPLE", "level", (Interval(start, 1800, 1),)),),
                     targets=Targets(everything=True))
        await api.hub.adr.receive("VTN", [ev])
    await api.hub.adr.drain()


async def test_actions_are_chosen_by_the_period_their_reduction_starts_in(api):
    await _two_events_a_day_apart(api)
    day = {"from": "2026-03-04T00:00:00Z", "to": "2026-03-05T00:00:00Z"}
    got = await (await api.get("/api/v1/adr/actions", params=day)).json()
    assert [a["event_id"] for a in got["items"]] == ["EV-0"]
    r = await api.get("/api/v1/adr/actions", params={"from": "2026-03-04T00:00:00"})  # no time zone
    assert r.status == 400


async def test_the_cli_writes_a_billing_period_of_actions_as_csv(api, settings, tmp_path):
    await _two_events_a_day_apart(api)
    out = tmp_path / "actions.csv"
    result = CliRunner().invoke(main, ["adr", "actions", "--from", "2026-03-05", "--to", "2026-03-05",
                                       "--state", "reserved", "--out", str(out)],
                                env={"MDMHUB_DATABASE_URL": settings.database_url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"file": str(out), "rows": 1}
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [(r["event_id"], r["ld_id"], r["state"], r["reduced_amps"]) for r in rows] == \
        [("EV-1", "LD-000001", "reserved", "20")]


def test_the_cli_refuses_a_bad_period():
    result = CliRunner().invoke(main, ["adr", "actions", "--from", "March", "--to", "2026-03-05"])
    assert result.exit_code != 0 and "--from" in result.output
