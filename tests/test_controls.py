"""Meter controls through REST against the real head-end simulator: relay, contract capacity (with
the live-load check), live status, reboot, mass reboot jobs with progress and cancel, the controls
history, and head-end failures as problem documents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.app import create_app
from hub.ports import MeterRef
from hub.runtime import Hub
from tests.collecting import Clock, collecting_hub, device_key, install_meters, set_head_end

PROBLEM = "application/problem+json"


@pytest.fixture
async def env(settings, aiohttp_client) -> AsyncIterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.controls.clock = clock
    ld_ids = install_meters(hub, {1: 6})
    client = await aiohttp_client(create_app(hub))
    yield {"hub": hub, "client": client, "ld_ids": ld_ids, "clock": clock}
    hub.close()


async def _port(hub: Hub, he_id: int = 1) -> Any:
    return (await hub.run(hub.head_ends.access, he_id)).port


def _meter(hub: Hub, ld_id: str) -> MeterRef:
    return MeterRef(ld_id, device_key(hub, ld_id), 2, 1)


async def _history(client, **query) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    r = await client.get("/api/v1/controls", params={k: str(v) for k, v in query.items()})
    assert r.status == 200
    return (await r.json())["items"]


# relay ------------------------------------------------------------------------------------------

async def test_relay_off_and_on_change_the_meter_and_are_recorded(env):
    hub, client, ld = env["hub"], env["client"], env["ld_ids"][0]
    port = await _port(hub)

    r = await client.post(f"/api/v1/logical-devices/{ld}/relay",
                          json={"state": "off", "actor": "operator-7", "reason": "unpaid since May"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["status"]["relay_on"] is False and body["status"]["load_amps"] == 0
    assert body["control"]["action"] == "relay-off" and body["control"]["outcome"] == "done"
    live = await port.status(_meter(hub, ld))
    assert live.relay_on is False and live.load_amps == 0
    stored = await (await client.get(f"/api/v1/logical-devices/{ld}")).json()
    assert stored["relay_state"] == 0

    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "on", "actor": "operator-7"})
    assert r.status == 200
    assert (await port.status(_meter(hub, ld))).relay_on is True
    assert (await (await client.get(f"/api/v1/logical-devices/{ld}")).json())["relay_state"] == 1

    history = await _history(client, ld_id=ld)
    assert [(h["action"], h["outcome"], h["actor"]) for h in history] == [
        ("relay-on", "done", "operator-7"), ("relay-off", "done", "operator-7")]
    assert history[1]["reason"] == "unpaid since May" and history[1]["result"]["live_status"]["relay_on"] is False
    assert history[1]["requested_at"] and history[1]["finished_at"]


async def test_bad_control_requests_are_problems(env):
    client, ld = env["client"], env["ld_ids"][0]
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "dim"})
    assert r.status == 422 and r.content_type == PROBLEM
    assert (await r.json())["errors"][0]["field"] == "state"
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", data=b"{not json", headers={
        "Content-Type": "application/json"})
    assert r.status == 400 and r.content_type == PROBLEM
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity", json={"amps": 0})
    assert r.status == 422
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity", json={"amps": 20, "foo": 1})
    assert r.status == 422
    r = await client.post("/api/v1/logical-devices/NO-SUCH-LD/relay", json={"state": "off"})
    assert r.status == 404 and (await r.json())["type"] == "urn:mdmhub:problem:not-found"
    r = await client.get("/api/v1/logical-devices/NO-SUCH-LD/live-status")
    assert r.status == 404
    r = await client.get("/api/v1/controls", params={"action": "explode"})
    assert r.status == 400
    assert await _history(client) == []  # nothing was sent, nothing recorded


# contract capacity -------------------------------------------------------------------------------

async def _loaded_meter(env) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A metering point drawing more than 2 A now, and its live status."""
    for ld in env["ld_ids"]:
        r = await env["client"].get(f"/api/v1/logical-devices/{ld}/live-status")
        assert r.status == 200
        status = await r.json()
        if status["load_amps"] > 2:
            return ld, status
    raise AssertionError("no simulated meter draws more than 2 A at the test clock's time")


async def test_lowering_capacity_below_the_live_load_is_refused_with_the_load(env):
    hub, client = env["hub"], env["client"]
    ld, live = await _loaded_meter(env)
    below = int(live["load_amps"]) - 1  # under the load
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity", json={"amps": below, "actor": "ops"})
    assert r.status == 409 and r.content_type == PROBLEM
    problem = await r.json()
    assert problem["type"] == "urn:mdmhub:problem:capacity-below-load"
    assert problem["requested_amps"] == below and problem["live_load_amps"] > below
    assert problem["contract_amps"] == live["contract_amps"]
    assert "force" in problem["detail"]
    meter = await (await _port(hub)).status(_meter(hub, ld))
    assert meter.contract_amps == live["contract_amps"] and meter.relay_on and not meter.breaker_tripped
    refused = (await _history(client, ld_id=ld, action="contract"))[0]
    assert refused["outcome"] == "refused" and refused["error_code"] == "load-above-capacity"
    assert refused["result"]["live_status"]["load_amps"] == problem["live_load_amps"]


async def test_forced_lowering_trips_the_breaker_as_the_meter_does(env):
    hub, client = env["hub"], env["client"]
    ld, live = await _loaded_meter(env)
    below = int(live["load_amps"]) - 1
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity",
                          json={"amps": below, "force": True, "actor": "ops", "reason": "customer asked, warned"})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["status"]["contract_amps"] == below
    assert body["status"]["breaker_tripped"] is True and body["status"]["relay_on"] is False
    meter = await (await _port(hub)).status(_meter(hub, ld))
    assert meter.breaker_tripped and meter.contract_amps == below
    assert (await (await client.get(f"/api/v1/logical-devices/{ld}")).json())["contract_amps"] == below

    # closing the relay under the same load trips again; raising the capacity first restores supply
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "on"})
    assert (await r.json())["status"]["breaker_tripped"] is True
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity", json={"amps": 40})
    assert r.status == 200 and (await r.json())["status"]["contract_amps"] == 40
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "on"})
    status = (await r.json())["status"]
    assert status["relay_on"] is True and status["breaker_tripped"] is False and status["load_amps"] > 0


async def test_lowering_above_the_live_load_goes_through(env):
    client = env["client"]
    ld, live = await _loaded_meter(env)
    amps = int(live["load_amps"]) + 2
    assert amps < live["contract_amps"]
    r = await client.post(f"/api/v1/logical-devices/{ld}/contract-capacity", json={"amps": amps})
    assert r.status == 200
    assert (await r.json())["status"] == {**(await r.json())["status"], "contract_amps": amps, "breaker_tripped": False}


# live status and reboot ------------------------------------------------------------------------

async def test_live_status_answers_what_the_meter_says_and_is_recorded(env):
    hub, client, ld = env["hub"], env["client"], env["ld_ids"][2]
    r = await client.get(f"/api/v1/logical-devices/{ld}/live-status", headers={"X-Actor": "call-centre"})
    assert r.status == 200
    body = await r.json()
    meter = await (await _port(hub)).status(_meter(hub, ld))
    assert body["load_amps"] == meter.load_amps and body["contract_amps"] == meter.contract_amps
    assert body["relay_on"] is True and body["clock"] == env["clock"].now.isoformat().replace("+00:00", "Z")
    entry = (await _history(client, ld_id=ld))[0]
    assert entry["action"] == "status" and entry["actor"] == "call-centre" and entry["id"] == body["control_id"]


async def test_a_rebooted_comms_unit_is_unreachable_for_a_while(env):
    client, ld, clock = env["client"], env["ld_ids"][1], env["clock"]
    r = await client.post(f"/api/v1/logical-devices/{ld}/reboot", json={"actor": "ops"})
    assert r.status == 200 and (await r.json())["control"]["outcome"] == "done"
    r = await client.get(f"/api/v1/logical-devices/{ld}/live-status")
    assert r.status == 502 and r.content_type == PROBLEM
    problem = await r.json()
    assert problem["type"] == "urn:mdmhub:problem:head-end-unavailable" and problem["head_end_error"] == "unreachable"
    clock.advance()  # 30 minutes later the unit is back (the simulator's reboot_s is 30 s)
    assert (await client.get(f"/api/v1/logical-devices/{ld}/live-status")).status == 200
    failed = await _history(client, ld_id=ld, outcome="failed")
    assert len(failed) == 1 and failed[0]["error_code"] == "unreachable"


# head-end failures -----------------------------------------------------------------------------

async def test_a_head_end_outage_is_a_502_problem_and_a_failed_control(env):
    hub, client, ld = env["hub"], env["client"], env["ld_ids"][0]
    (await _port(hub)).set_outage(True)
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "off"})
    assert r.status == 502 and r.content_type == PROBLEM
    assert "unreachable" in (await r.json())["detail"]
    entry = (await _history(client, ld_id=ld))[0]
    assert (entry["action"], entry["outcome"], entry["error_code"]) == ("relay-off", "failed", "unreachable")
    stored = await (await client.get(f"/api/v1/logical-devices/{ld}")).json()
    assert stored["relay_state"] == 1  # nothing changed


async def test_a_head_end_timeout_is_a_504_problem_with_an_unknown_outcome(env):
    hub, client, ld = env["hub"], env["client"], env["ld_ids"][0]
    await hub.run(set_head_end, hub, 1, latency_s=1.0, timeout_s=0.05)
    r = await client.post(f"/api/v1/logical-devices/{ld}/relay", json={"state": "off"})
    assert r.status == 504 and r.content_type == PROBLEM
    problem = await r.json()
    assert problem["type"] == "urn:mdmhub:problem:head-end-timeout" and "live status" in problem["detail"]
    entry = (await _history(client, ld_id=ld))[0]
    assert entry["outcome"] == "unknown" and entry["error_code"] == "timeout"


async def test_a_hub_without_head_end_adapters_answers_503(settings, aiohttp_client):
    hub = Hub(settings)
    try:
        ld = install_meters(hub, {1: 1})[0]
        client = await aiohttp_client(create_app(hub))
        r = await client.get(f"/api/v1/logical-devices/{ld}/live-status")
        assert r.status == 503 and (await r.json())["type"] == "urn:mdmhub:problem:head-ends-not-configured"
    finally:
        hub.close()


# mass reboot ------------------------------------------------------------------------------------

async def _wait_job(client, job_id: int, until=lambda j: j["state"] in ("done", "cancelled", "failed")):  # type: ignore[no-untyped-def]
    for _ in range(300):
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if until(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not get there: {job}")


async def test_mass_reboot_over_a_search_reports_progress_and_per_device_failures(env):
    hub, client, ld_ids = env["hub"], env["client"], env["ld_ids"]
    # one unit is still restarting from an earlier reboot: the job's command cannot reach it
    assert (await client.post(f"/api/v1/logical-devices/{ld_ids[3]}/reboot", json={})).status == 200

    r = await client.post("/api/v1/jobs/reboots", json={"search": {"he_id": 1}, "actor": "ops",
                                                          "reason": "firmware 2.1"})
    assert r.status == 202, await r.text()
    job = await r.json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["total"] == 6 and job["state"] in ("queued", "running") and job["search"] == {"he_id": 1}

    job = await _wait_job(client, job["id"])
    assert (job["state"], job["total"], job["done"], job["failed"], job["pending"]) == ("done", 6, 5, 1, 0)
    assert job["failures"] == [{"ld_id": ld_ids[3], "pd_id": "PD-000004", "outcome": "failed",
                                "error_code": "unreachable", "detail": job["failures"][0]["detail"]}]
    rows = await _history(client, job_id=job["id"])
    assert sorted(r["ld_id"] for r in rows) == sorted(ld_ids)
    assert {r["actor"] for r in rows} == {"ops"} and {r["action"] for r in rows} == {"reboot"}
    alerts = (await (await client.get("/api/v1/alerts", params={"code": "control.reboot-failed"})).json())["items"]
    assert [a["ld_id"] for a in alerts] == [ld_ids[3]]
    listed = (await (await client.get("/api/v1/jobs", params={"state": "done"})).json())["items"]
    assert [j["id"] for j in listed] == [job["id"]]


async def test_a_mass_reboot_can_be_cancelled_and_sends_nothing_more(settings, aiohttp_client):
    clock = Clock()
    hub = collecting_hub(settings, clock)
    hub.controls.clock = clock
    hub.reboot_jobs.settings = hub.settings.controls.model_copy(update={"progress_every": 1})
    try:
        install_meters(hub, {1: 30})
        set_head_end(hub, 1, latency_s=0.05, concurrency=2)  # one reboot at a time: 1.5 s for all
        client = await aiohttp_client(create_app(hub))
        port = await _port(hub)
        reboots: list[str] = []
        reboot = port.reboot

        async def counted(meter: MeterRef) -> None:
            reboots.append(meter.ld_id)
            await reboot(meter)

        port.reboot = counted  # the scheduler may read meters meanwhile: count reboots only
        job = await (await client.post("/api/v1/jobs/reboots", json={"search": {"he_id": 1}})).json()
        await _wait_job(client, job["id"], until=lambda j: j["done"] >= 3)
        r = await client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert r.status == 202 and (await r.json())["state"] == "cancelling"
        ended = await _wait_job(client, job["id"])
        assert ended["state"] == "cancelled" and ended["finished_at"]
        assert 3 <= ended["done"] < 30 and ended["failed"] == 0 and ended["pending"] == 30 - ended["done"]
        sent = len(reboots)
        assert sent == ended["done"]
        await asyncio.sleep(0.2)
        assert len(reboots) == sent  # nothing more goes out
        assert len(await _history(client, job_id=job["id"], limit=100)) == ended["done"]
        r = await client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert r.status == 409 and r.content_type == PROBLEM
    finally:
        hub.close()


async def test_mass_reboot_input_is_checked(env):
    client = env["client"]
    r = await client.post("/api/v1/jobs/reboots", json={"search": {"he_id": 1, "colour": "red"}})
    assert r.status == 422 and r.content_type == PROBLEM
    r = await client.post("/api/v1/jobs/reboots", json={"search": {"he_id": 1}, "max_devices": 2})
    assert r.status == 409 and "6 devices" in (await r.json())["detail"]
    assert (await client.get("/api/v1/jobs/999")).status == 404
    assert (await client.get("/api/v1/jobs/abc")).status == 400
    r = await client.post("/api/v1/jobs/reboots", json={"search": {"he_id": 9}})
    job = await _wait_job(client, (await r.json())["id"])
    assert (job["state"], job["total"]) == ("done", 0)
