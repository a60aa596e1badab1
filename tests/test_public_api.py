"""Secondary-use data: k-anonymous aggregates, scope boundaries, keys, IP allow-list, rate limits,
the access log, and the SOAP service consumed by zeep. Usage comes from the real head-end simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
import zeep
from sqlalchemy import select
from zeep.transports import Transport

from hub.db import utcnow
from hub.model import AccessLog, AdrAction, AdrEvent, Customer, CustomerLogicalDevice, LogicalDevice
from hub.runtime import Hub
from hub.services.access import ClientIn
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters, usage_rows

K = 3
SLOTS = 3
PERIOD = {"from": (START - SLOT).isoformat(), "to": (START + 4 * SLOT).isoformat()}  # slots ending 00:00-02:00


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def phub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"privacy": settings.privacy.model_copy(update={"k_anonymity": K})})
    hub = collecting_hub(settings, clock)
    yield hub
    hub.close()


async def seed_usage(hub: Hub, clock: Clock) -> dict[str, list[str]]:
    """12 meters, 4 per cluster, 3 slots collected. demo-district-1's four points belong to only two
    customers (so it must be suppressed with k=3); every other point has a customer of its own."""
    lds = install_meters(hub, {1: 12})
    for n in range(SLOTS):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(1, START + n * SLOT)
    clusters: dict[str, list[str]] = {}
    with hub.db.session() as s:
        for ld_id, cluster in s.execute(select(LogicalDevice.ld_id, LogicalDevice.cluster_id)):
            clusters.setdefault(cluster, []).append(ld_id)
        small = sorted(clusters["demo-district-1"])
        for i, ld_id in enumerate(sorted(lds)):
            cid = ("C-SMALL-" + str(small.index(ld_id) % 2)) if ld_id in small else f"C-{ld_id}"
            if s.get(Customer, cid) is None:
                s.add(Customer(customer_id=cid, name=f"Secret Name {i}", address=f"1-2-{i} Hidden Street"))
                s.flush()
            s.add(CustomerLogicalDevice(customer_id=cid, ld_id=ld_id))
    return clusters


def make_client(hub: Hub, client_id: str, scopes: list[str], **kw) -> str:  # type: ignore[no-untyped-def]
    return hub.access.create_client(ClientIn(client_id=client_id, scopes=scopes, **kw))["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def pclient(phub, aiohttp_client):  # type: ignore[no-untyped-def]
    from hub.app import create_app

    return await aiohttp_client(create_app(phub))


async def test_a_group_under_k_customers_is_suppressed_and_the_others_sum_their_meters(phub, clock, pclient):
    clusters = await seed_usage(phub, clock)
    key = make_client(phub, "signage", ["public:read"])
    resp = await pclient.get("/api/v1/public/usage", params={**PERIOD, "group_by": "cluster"}, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    groups = {i["group"] for i in body["items"]}
    assert groups == {"demo-tower-a", "demo-tower-b"}  # district-1 has 4 meters but 2 customers < k
    assert body["suppressed"] == SLOTS and body["k"] == K
    first = [i for i in body["items"] if i["group"] == "demo-tower-a"]
    assert len(first) == SLOTS
    expected: dict[str, float] = {}
    for row in usage_rows(phub, sub=1):
        if row.ld_id in clusters["demo-tower-a"] and row.increment is not None:
            t = row.measured_time.isoformat().replace("+00:00", "Z")
            expected[t] = expected.get(t, 0.0) + row.increment
    assert {i["period_start"]: i["energy_kwh"] for i in first if i["energy_kwh"] is not None} == \
        pytest.approx(expected)
    assert all(i["customers"] == 4 and i["meters"] == 4 for i in first)
    # the per-day answer obeys the same rule
    resp = await pclient.get("/api/v1/public/usage", params={**PERIOD, "resolution": "day"}, headers=bearer(key))
    day = await resp.json()
    assert {i["group"] for i in day["items"]} == {"demo-tower-a", "demo-tower-b"} and day["suppressed"] == 1


async def test_public_answers_never_carry_identifiers_in_json_or_csv(phub, clock, pclient):
    await seed_usage(phub, clock)
    key = make_client(phub, "research", ["public:read"])
    texts = []
    for path in ("/api/v1/public/usage", "/api/v1/public/quality", "/api/v1/public/dr-events"):
        for accept in ("application/json", "text/csv"):
            resp = await pclient.get(path, params=PERIOD, headers={**bearer(key), "Accept": accept})
            assert resp.status == 200, (path, await resp.text())
            assert resp.content_type == accept
            texts.append(await resp.text())
    joined = "\n".join(texts)
    for secret in ("LD-0", "PD-0", "SN-0", "02AA", "Secret Name", "Hidden Street", "C-LD", "C-SMALL"):
        assert secret not in joined
    assert "demo-tower-a" in joined


async def test_customer_series_only_for_callers_with_that_customer(phub, clock, pclient):
    await seed_usage(phub, clock)
    retailer = make_client(phub, "retailer", ["customer:read"], customer_ids=["C-LD-000003"])
    public = make_client(phub, "public", ["public:read"])
    ok = await pclient.get("/api/v1/public/customers/C-LD-000003/usage", params=PERIOD, headers=bearer(retailer))
    assert ok.status == 200
    items = (await ok.json())["items"]
    assert {i["ld_id"] for i in items} == {"LD-000003"} and len(items) == SLOTS
    other = await pclient.get("/api/v1/public/customers/C-LD-000004/usage", params=PERIOD, headers=bearer(retailer))
    assert other.status == 403 and "energy_kwh" not in await other.text()
    scope = await pclient.get("/api/v1/public/customers/C-LD-000003/usage", params=PERIOD, headers=bearer(public))
    assert scope.status == 403
    # and a public client cannot reach identifiers by asking for a per-customer series through SQL either
    inj = await pclient.get("/api/v1/public/usage", params={**PERIOD, "group": "x' OR '1'='1"}, headers=bearer(public))
    assert inj.status == 200 and (await inj.json())["items"] == []


async def test_keys_expiry_revocation_ip_allow_list_and_rate_limit_are_enforced(phub, pclient):
    url = "/api/v1/public/groups"
    assert (await pclient.get(url)).status == 401
    assert (await pclient.get(url, headers=bearer("mdk_abc.def"))).status == 401
    assert (await pclient.get(url, headers=bearer("garbage"))).status == 401
    good = make_client(phub, "good", ["public:read"])
    assert (await pclient.get(url, headers=bearer(good))).status == 200
    assert (await pclient.get(url, headers=bearer(good[:-2] + "xx"))).status == 401
    expired = make_client(phub, "old", ["public:read"], expires_at=utcnow() - timedelta(seconds=1))
    resp = await pclient.get(url, headers=bearer(expired))
    assert resp.status == 401 and "expired" in (await resp.json())["detail"]
    from hub.services.access import ClientPatch

    phub.access.update_client("good", ClientPatch(active=False))
    assert (await pclient.get(url, headers=bearer(good))).status == 401
    far = make_client(phub, "far", ["public:read"], ip_allow=["10.0.0.0/8"])
    assert (await pclient.get(url, headers=bearer(far))).status == 403
    near = make_client(phub, "near", ["public:read"], ip_allow=["127.0.0.0/8", "::1"])
    assert (await pclient.get(url, headers=bearer(near))).status == 200
    scoped = make_client(phub, "delivery-only", ["delivery:read"])
    assert (await pclient.get(url, headers=bearer(scoped))).status == 403
    limited = make_client(phub, "limited", ["public:read"], rate_per_minute=2)
    statuses = [(await pclient.get(url, headers=bearer(limited))).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    resp = await pclient.get(url, headers=bearer(limited))
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1


async def test_every_request_leaves_an_access_log_row_that_an_auditor_exports(phub, pclient):
    key = make_client(phub, "app", ["public:read"])
    admin = make_client(phub, "auditor", ["access:admin"])
    await pclient.get("/api/v1/public/groups", headers=bearer(key))
    await pclient.get("/api/v1/public/groups")
    await pclient.get("/api/v1/public/groups", headers=bearer(admin))
    with phub.db.session() as s:
        rows = [(r.principal_kind, r.principal, r.edge, r.resource, r.result) for r in
                s.scalars(select(AccessLog).order_by(AccessLog.id))]
    assert rows == [("client", "app", "rest", "/api/v1/public/groups", 200),
                    ("anonymous", None, "rest", "/api/v1/public/groups", 401),
                    ("client", "auditor", "rest", "/api/v1/public/groups", 403)]
    resp = await pclient.get("/api/v1/access/log", headers={**bearer(admin), "Accept": "text/csv"})
    assert resp.status == 200
    lines = (await resp.text()).strip().splitlines()
    assert lines[0] == "id,at,principal_kind,principal,edge,method,resource,result,detail,remote"
    assert len(lines) == 4 and ",app,rest,GET,/api/v1/public/groups,200," in lines[1]
    assert (await pclient.get("/api/v1/access/log", headers=bearer(key))).status == 403


async def test_api_clients_are_managed_with_access_admin_and_keys_are_shown_once(phub, pclient):
    admin = make_client(phub, "admin", ["access:admin"])
    resp = await pclient.post("/api/v1/access/clients", headers=bearer(admin),
                              json={"client_id": "partner", "scopes": ["public:read"], "ip_allow": ["127.0.0.1"]})
    assert resp.status == 201
    key = (await resp.json())["key"]
    listed = await (await pclient.get("/api/v1/access/clients", headers=bearer(admin))).text()
    assert key not in listed and "partner" in listed
    assert (await pclient.get("/api/v1/public/groups", headers=bearer(key))).status == 200
    bad = await pclient.post("/api/v1/access/clients", headers=bearer(admin),
                             json={"client_id": "x", "scopes": ["root"]})
    assert bad.status == 422


async def test_dr_summary_suppresses_participation_of_small_events(phub, pclient):
    with phub.db.session() as s:
        big = AdrEvent(vtn_id="vtn", event_id="EV-BIG", dtstart=START + SLOT, duration_seconds=3600, signals=[])
        small = AdrEvent(vtn_id="vtn", event_id="EV-SMALL", dtstart=START + SLOT, duration_seconds=1800)
        s.add_all([big, small])
        s.flush()
        for n in range(4):
            s.add(AdrAction(adr_event_id=big.id, ld_id=f"LD-{n}", reduced_amps=20, restore_amps=30, state="done"))
        s.add(AdrAction(adr_event_id=small.id, ld_id="LD-9", reduced_amps=20, restore_amps=40, state="done"))
    key = make_client(phub, "aggregator", ["public:read"])
    body = await (await pclient.get("/api/v1/public/dr-events", params=PERIOD, headers=bearer(key))).json()
    by_id = {i["event_id"]: i for i in body["items"]}
    assert by_id["EV-BIG"]["participants"] == 4 and by_id["EV-BIG"]["reduction_amps"] == 40
    assert by_id["EV-SMALL"]["participants"] is None and by_id["EV-SMALL"]["suppressed"] is True
    assert "LD-" not in str(body)


# --- SOAP -------------------------------------------------------------------------------------
def _zeep(url: str, key: str | None) -> zeep.Client:
    session = requests.Session()
    if key:
        session.headers["Authorization"] = f"Bearer {key}"
    return zeep.Client(url + "?wsdl", transport=Transport(session=session))


async def test_zeep_consumes_the_wsdl_and_calls_every_operation(phub, clock, pclient):
    await seed_usage(phub, clock)
    key = make_client(phub, "soap-app", ["public:read", "customer:read"], customer_ids=["C-LD-000003"])
    url = str(pclient.make_url("/public/soap"))
    start, end = START - SLOT, START + 4 * SLOT

    def calls() -> dict:
        client = _zeep(url, key)
        ops = {op for op in client.service._binding._operations}  # noqa: SLF001 - list what the WSDL declares
        svc = client.service
        return {
            "ops": ops,
            "groups": svc.GetGroups(),
            "usage": svc.GetUsageAggregate(From=start, To=end, GroupBy="cluster"),
            "quality": svc.GetQualitySummary(From=start, To=end),
            "events": svc.GetDrEventSummary(From=start, To=end),
            "series": svc.GetCustomerSeries(CustomerId="C-LD-000003", From=start, To=end, Resolution="slot"),
            "kinds": svc.GetSensorKinds(),
            "sensors": svc.GetSensorSeries(Kind="temperature", From=start, To=end),
        }

    r = await asyncio.to_thread(calls)
    assert r["ops"] == {"GetGroups", "GetUsageAggregate", "GetQualitySummary", "GetDrEventSummary",
                        "GetCustomerSeries", "GetSensorKinds", "GetSensorSeries"}
    assert {g.Cluster for g in r["groups"]} == {"demo-tower-a", "demo-tower-b", "demo-district-1"}
    assert r["usage"].Suppressed == SLOTS and {i.Group for i in r["usage"].Items.UsageBucket} == {
        "demo-tower-a", "demo-tower-b"}
    assert r["quality"].Total == 2 and r["quality"].Items.QualityBucket[0].Normal > 0
    assert r["events"].Total == 0
    assert {p.LdId for p in r["series"].Items.SeriesPoint} == {"LD-000003"}
    assert not r["kinds"] and r["sensors"].Total == 0  # no IEEE 1888 points here (tests/test_public_sensors.py)

    def refused() -> list[str]:
        out = []
        for client, op in ((_zeep(url, key), lambda c: c.service.GetCustomerSeries(
                CustomerId="C-LD-000004", From=start, To=end)),
                           (_zeep(url, None), lambda c: c.service.GetGroups()),
                           (_zeep(url, key), lambda c: c.service.GetUsageAggregate(From=end, To=start))):
            with pytest.raises(zeep.exceptions.Fault) as info:
                op(client)
            out.append(info.value.code or info.value.message)
        return out

    codes = await asyncio.to_thread(refused)
    assert "Forbidden" in codes[0] and "Unauthenticated" in codes[1] and "InvalidInput" in codes[2]


async def test_soap_refuses_malformed_envelopes_entities_and_oversized_bodies(phub, pclient):
    key = make_client(phub, "soap-app", ["public:read"])
    xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&e;</s:Body></s:Envelope>')
    for body in (b"<not-xml", xxe, b"<a/>", b"x" * (1024 * 1024 + 10)):
        resp = await pclient.post("/public/soap", data=body, headers={**bearer(key), "Content-Type": "text/xml"})
        text = await resp.text()
        assert resp.status in (400, 413) and "Fault" in text and "root:" not in text
    wsdl = await pclient.get("/public/soap?wsdl")
    assert wsdl.status == 200 and "GetUsageAggregate" in await wsdl.text()
    with phub.db.session() as s:
        results = [r.result for r in s.scalars(select(AccessLog).where(AccessLog.edge == "soap"))]
    assert results == [400, 400, 400, 413, 200]


async def test_public_routes_are_in_the_openapi_document(pclient):
    spec = await (await pclient.get("/api/openapi.json")).json()
    assert {"/api/v1/public/usage", "/api/v1/public/dr-events", "/api/v1/public/quality",
            "/api/v1/portal/login", "/api/v1/public/delivery/manifest"} <= set(spec["paths"])
