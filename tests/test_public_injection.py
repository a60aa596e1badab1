"""Injection sweep of the secondary-use and portal APIs.

Every query and path parameter of every ``/api/v1/public/...`` and ``/api/v1/portal/...`` route, read
from the served OpenAPI document (a new parameter is swept without touching this file), and every
field of every operation of the public SOAP service, read from its WSDL through zeep, gets classic
SQL-injection payloads, NUL bytes, very long strings and unusual unicode. Each answer must be a clean
refusal (a 4xx problem document, a SOAP ``Client`` fault) or a normal answer; never a 500, never data
beyond the caller's scope; and every table holds what it held before.

The SOAP-injection tests show that XML metacharacters and injected elements inside string fields are
text, never structure.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
import requests
import zeep
from lxml import etree
from sqlalchemy import func, select
from zeep.transports import Transport

from hub.model import AccessLog, AdrAction, AdrEvent, LogicalDevice, UsageHistory, metadata
from hub.runtime import Hub
from tests.collecting import SLOT, START
from tests.test_public_api import bearer, clock, make_client, pclient, phub  # noqa: F401
from tests.test_public_sensors import seed_points

OWN_CUSTOMER = "C-LD-000003"
OWN_LD = "LD-000003"
USER = "sweep@example.com"
PASSWORD = "correct horse battery"
END = START + 4 * SLOT
PERIOD = {"from": START.isoformat(), "to": END.isoformat()}
SOAP_NS = "urn:mdmhub:public:1"
ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"

PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "1; DROP TABLE usage_history",
    "x'; DROP TABLE usage_history; --",
    "') UNION SELECT password_hash, user_id FROM portal_account --",
    "1 UNION SELECT key_hash FROM api_client",
    "\" OR \"\"=\"",
    "%' OR customer_id LIKE '%",
    "a\x00b",
    "\x00",
    "L" * 4000,
    "クラスタ' OR 'あ'='あ",
    "\u202e🙂\U0001F4A9\ufeff",
    "\\'; SELECT pg_sleep(5); --",
]
"""Sent as the whole value, and appended to a valid value, of every parameter and field."""

PRE_ENCODED = ["%FF%FE", "%C0%27%20OR%201%3D1", "%E2%80%AE", "%25%27"]
"""Raw query-string bytes: invalid UTF-8, an overlong quote, percent signs."""

PATH_BASELINE = {"customer_id": OWN_CUSTOMER, "kind": "customer", "subject": OWN_CUSTOMER, "day": "2026-03-02",
                 "user_id": USER, "policy_id": "1", "terminal_id": "VPA-1"}
"""A valid value of each path parameter; a route with a parameter not listed here fails the sweep."""

QUERY_BASELINE = {"from": PERIOD["from"], "to": PERIOD["to"], "kind": "temperature"}
"""Values of the query parameters some routes require (the others are left out of the baseline)."""

GROWING = {"access_log", "portal_session", "usage_rollup", "usage_rollup_slot", "usage_rollup_stale"}
"""Tables every request may add to (the access log row of the request, the sweep's own login, and
the usage rollup an aggregate brings up to date: totals derived from usage_history, whose stored
energy is compared)."""


async def seed(hub: Hub, clock, client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Usage, sensor points, a DR event touching the sweep customer, a portal account and a terminal."""
    clusters = await seed_points(hub, clock)
    with hub.db.session() as s:
        own_cluster = s.scalars(select(LogicalDevice.cluster_id).where(LogicalDevice.ld_id == OWN_LD)).one()
        lds = list(s.scalars(select(LogicalDevice.ld_id)))
        event = AdrEvent(vtn_id="vtn", event_id="EV-1", dtstart=START + SLOT, duration_seconds=1800, signals=[])
        s.add(event)
        s.flush()
        for ld in lds:
            s.add(AdrAction(adr_event_id=event.id, ld_id=ld, reduced_amps=20, restore_amps=30, state="done",
                            directed_at=START + SLOT))
    admin = make_client(hub, "portal-backend", ["portal:admin"], rate_per_minute=1_000_000)
    resp = await client.post("/api/v1/portal/accounts", headers=bearer(admin),
                             json={"customer_id": OWN_CUSTOMER, "user_id": USER, "password": PASSWORD})
    assert resp.status == 201, await resp.text()
    token = (await (await client.post("/api/v1/portal/login", json={"user_id": USER, "password": PASSWORD}))
             .json())["token"]
    term = await client.post("/api/v1/portal/terminals", headers=bearer(token), json={"terminal_id": "VPA-1"})
    assert term.status == 201
    policy = await client.post("/api/v1/portal/policies", headers=bearer(token),
                               json={"ld_id": OWN_LD, "reduced_amps": 20})
    assert policy.status == 201 and (await policy.json())["policy_id"] == 1
    key = make_client(hub, "sweep", ["public:read", "customer:read", "delivery:read"],
                      groups=[f"cluster:{own_cluster}"], customer_ids=[OWN_CUSTOMER], rate_per_minute=1_000_000)
    others = [c for c in clusters if c != own_cluster]
    return {"admin": admin, "token": token, "key": key, "own_cluster": own_cluster,
            "forbidden": others + [ld for ld in lds if ld != OWN_LD] + [
                "Secret Name", "Hidden Street", "02AA00", "SN-0", "PD-0", "secret.example", "$argon2",
                "C-LD-000004", "C-SMALL"]}


def snapshot(hub: Hub) -> dict[str, Any]:
    """Row counts of every table but the growing ones, and the stored energy."""
    with hub.db.session() as s:
        counts = {t.name: s.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in metadata.sorted_tables if t.name not in GROWING}
        counts["energy"] = s.execute(select(func.sum(UsageHistory.increment))).scalar_one()
    return counts


def credential(path: str, ctx: dict[str, Any]) -> str:
    if path.startswith("/api/v1/portal/accounts"):
        return ctx["admin"]
    return ctx["token"] if path.startswith("/api/v1/portal/") else ctx["key"]


def variants(valid: str | None) -> list[tuple[str, bool]]:
    """(value, already percent-encoded) pairs for one parameter."""
    out = [(p, False) for p in PAYLOADS] + [(p, True) for p in PRE_ENCODED]
    if valid is not None:
        out += [(valid + p, False) for p in PAYLOADS[:5]]
    return out


def swept_parameters(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, parameter, where) of every parameter of the public and portal routes."""
    out = []
    for path, ops in spec["paths"].items():
        if not path.startswith(("/api/v1/public/", "/api/v1/portal/")):
            continue
        for method, op in ops.items():
            for param in op.get("parameters", []):
                out.append((method.upper(), path, param, param["in"]))
    return out


def assert_clean(status: int, ctype: str, text: str, forbidden: list[str], what: str) -> None:
    assert status < 500, f"{what}: {status} {text[:300]}"
    if status >= 400:
        assert ctype == "application/problem+json", f"{what}: {status} {ctype} {text[:200]}"
    for secret in forbidden:
        assert secret not in text, f"{what}: answer carries {secret!r}"


async def test_every_query_and_path_parameter_withstands_injection(phub, clock, pclient):  # noqa: F811
    ctx = await seed(phub, clock, pclient)
    spec = await (await pclient.get("/api/openapi.json")).json()
    params = swept_parameters(spec)
    queried = {(p, prm["name"]) for _, p, prm, where in params if where == "query"}
    assert {("/api/v1/public/usage", "group"), ("/api/v1/public/sensors/series", "kind"),
            ("/api/v1/portal/usage", "resolution"), ("/api/v1/portal/adr-history", "from")} <= queried
    before = snapshot(phub)
    sent = 0
    for method, path, param, where in params:
        name = param["name"]
        if where == "path":
            assert name in PATH_BASELINE, f"no valid value for path parameter {name} of {path}: add it"
        query = {q["name"]: QUERY_BASELINE[q["name"]] for q in spec["paths"][path][method.lower()]["parameters"]
                 if q["in"] == "query" and q.get("required") and q["name"] in QUERY_BASELINE}
        valid = PATH_BASELINE.get(name) if where == "path" else QUERY_BASELINE.get(name)
        for value, encoded in variants(valid):
            raw = value if encoded else quote(value, safe="")
            url = path
            for pname, pvalue in PATH_BASELINE.items():
                url = url.replace("{" + pname + "}", raw if (where == "path" and pname == name)
                                  else quote(pvalue, safe=""))
            qs = {k: quote(v, safe="") for k, v in query.items() if not (where == "query" and k == name)}
            if where == "query":
                qs[name] = raw
            full = url + ("?" + "&".join(f"{k}={v}" for k, v in qs.items()) if qs else "")
            body = {} if method in ("PATCH", "POST") else None
            resp = await pclient.request(method, full, headers=bearer(credential(path, ctx)), json=body)
            text = await resp.text()
            assert_clean(resp.status, resp.content_type, text, ctx["forbidden"],
                         f"{method} {path} {where} {name}={value[:40]!r}")
            sent += 1
    assert sent > 900
    assert snapshot(phub) == before


async def test_portal_login_fields_withstand_injection(phub, clock, pclient):  # noqa: F811
    ctx = await seed(phub, clock, pclient)
    before = snapshot(phub)
    for field, values in (("user_id", PAYLOADS + [USER + "' --", "' OR 1=1 --@example.com"]),
                          ("password", ["' OR 1=1 --", "a\x00b", "L" * 4000])):  # hashed, never in SQL
        for value in values:
            body = {"user_id": USER, "password": "wrong but long enough", field: value}
            resp = await pclient.post("/api/v1/portal/login", json=body)
            text = await resp.text()
            assert resp.status in (400, 401, 422), (field, value[:40], resp.status, text[:200])
            assert_clean(resp.status, resp.content_type, text, ctx["forbidden"], f"login {field}={value[:40]!r}")
            assert "token" not in await resp.json()
    after = snapshot(phub)
    assert {k: v for k, v in after.items() if k != "portal_account"} == \
        {k: v for k, v in before.items() if k != "portal_account"}


# --- SOAP ----------------------------------------------------------------------------------------
def soap_operations(wsdl_url: str) -> dict[str, list[tuple[str, str]]]:
    """Each operation's input fields (name, XSD type local name), in order, as the WSDL declares them."""
    client = zeep.Client(wsdl_url, transport=Transport(session=requests.Session()))
    out = {}
    for name, op in client.service._binding._operations.items():  # noqa: SLF001 - the WSDL's operations
        elements = op.input.body.type.elements
        out[name] = [(el_name, el.type.qname.localname if el.type.qname else "") for el_name, el in elements]
    return out


VALID_FIELD = {"dateTime": {"From": START.isoformat(), "To": END.isoformat()},
               "string": {"CustomerId": OWN_CUSTOMER, "Kind": "temperature", "GroupBy": "cluster",
                          "Resolution": "slot"},
               "integer": {"Limit": "50", "Offset": "0", "SubNumber": "1"}}


def envelope(operation: str, fields: list[tuple[str, str]], override: dict[str, str], raw: bool = False) -> bytes:
    """A request with valid values for the required fields and ``override``'s values in its fields,
    escaped as text (or, with ``raw``, pasted into the document as they are)."""
    parts = []
    for name, xsd in fields:
        value = override.get(name, VALID_FIELD.get(xsd, {}).get(name))
        if value is not None:
            parts.append(f"<tns:{name}>{value if raw and name in override else escape(value)}</tns:{name}>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{ENV_NS}" '
            f'xmlns:tns="{SOAP_NS}"><soapenv:Body><tns:{operation}>{"".join(parts)}</tns:{operation}>'
            f"</soapenv:Body></soapenv:Envelope>").encode("utf-8", "surrogatepass")


def fault_code(text: str) -> str | None:
    try:
        doc = etree.fromstring(text.encode())
    except etree.XMLSyntaxError:
        return "unparseable"
    code = doc.find(".//faultcode")
    return None if code is None else code.text


def total_of(text: str) -> int:
    return int(etree.fromstring(text.encode()).find(f".//{{{SOAP_NS}}}Total").text)


async def test_every_soap_field_withstands_injection(phub, clock, pclient):  # noqa: F811
    ctx = await seed(phub, clock, pclient)
    url = str(pclient.make_url("/public/soap"))
    operations = await asyncio.to_thread(soap_operations, url + "?wsdl")
    assert {"GetUsageAggregate", "GetCustomerSeries", "GetSensorSeries"} <= set(operations)
    assert ("Group", "string") in operations["GetUsageAggregate"]
    before = snapshot(phub)
    sent = 0
    for operation, fields in operations.items():
        for name, xsd in fields:
            valid = VALID_FIELD.get(xsd, {}).get(name)
            for value in [p for p in PAYLOADS if "\x00" not in p] + [(valid or "") + p for p in PAYLOADS[:5]]:
                resp = await pclient.post("/public/soap", data=envelope(operation, fields, {name: value}),
                                          headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
                text = await resp.text()
                what = f"{operation}.{name}={value[:40]!r}"
                assert resp.status < 500, f"{what}: {resp.status} {text[:300]}"
                code = fault_code(text)
                if resp.status >= 400:
                    assert code and code.split(":")[-1].startswith("Client"), f"{what}: {code} {text[:300]}"
                else:
                    assert code is None, f"{what}: {text[:300]}"
                for secret in ctx["forbidden"]:
                    assert secret not in text, f"{what}: answer carries {secret!r}"
                sent += 1
    assert sent > 300
    assert snapshot(phub) == before


async def test_nul_bytes_and_control_characters_in_soap_fields_are_client_faults(phub, clock, pclient):  # noqa: F811
    ctx = await seed(phub, clock, pclient)
    ops = await asyncio.to_thread(soap_operations, str(pclient.make_url("/public/soap?wsdl")))
    for raw in ("a\x00b", "&#0;", "&#x1;", "a&#x0;b"):
        body = envelope("GetUsageAggregate", ops["GetUsageAggregate"], {"Group": raw}, raw=True)
        resp = await pclient.post("/public/soap", data=body, headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
        assert resp.status == 400 and fault_code(await resp.text()) == "soap11env:Client", raw


async def test_markup_in_soap_string_fields_is_text_not_structure(phub, clock, pclient):  # noqa: F811
    """An element smuggled into a string value (``</Group><Group>other``) is the text of one field:
    it names no group and selects nothing; an echoed value comes back as the same text."""
    ctx = await seed(phub, clock, pclient)
    other = next(c for c in ("demo-tower-a", "demo-tower-b", "demo-district-1") if c != ctx["own_cluster"])
    url = str(pclient.make_url("/public/soap"))
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ctx['key']}"
    # a client restricted to one cluster asks as the other one through an injected element
    injected = f"{ctx['own_cluster']}</Group><Group>{other}"
    kind = "t</Kind><Kind>x' OR 1=1\"<&>"

    def calls() -> tuple[Any, Any, Any]:
        client = zeep.Client(url + "?wsdl", transport=Transport(session=session))
        usage = client.service.GetUsageAggregate(From=START, To=END, Group=injected)
        own = client.service.GetUsageAggregate(From=START, To=END, Group=ctx["own_cluster"])
        sensors = client.service.GetSensorSeries(Kind=kind, From=START, To=END)
        return usage, own, sensors

    usage, own, sensors = await asyncio.to_thread(calls)
    assert usage.Total == 0 and usage.Items is None
    assert own.Total > 0 and {i.Group for i in own.Items.UsageBucket} == {ctx["own_cluster"]}
    assert sensors.Kind == kind and sensors.Total == 0  # echoed as the very same text
    # a raw envelope whose field holds the markup escaped is one string too
    ops = await asyncio.to_thread(soap_operations, url + "?wsdl")
    resp = await pclient.post("/public/soap", data=envelope("GetUsageAggregate", ops["GetUsageAggregate"],
                                                            {"Group": injected}),
                              headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
    text = await resp.text()
    assert resp.status == 200 and other not in text and total_of(text) == 0
    # an element really injected into the envelope (a second Group) is refused by the schema
    doubled = envelope("GetUsageAggregate", ops["GetUsageAggregate"],
                       {"Group": f"{ctx['own_cluster']}</tns:Group><tns:Group>{other}"}, raw=True)
    resp = await pclient.post("/public/soap", data=doubled, headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
    text = await resp.text()
    assert resp.status == 400 and (fault_code(text) or "").split(":")[-1].startswith("Client") and other not in text
    # CDATA is text as well
    cdata = envelope("GetUsageAggregate", ops["GetUsageAggregate"],
                     {"Group": f"<![CDATA[</tns:Group><tns:Group>{other}]]>"}, raw=True)
    resp = await pclient.post("/public/soap", data=cdata, headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
    text = await resp.text()
    assert resp.status == 200 and other not in text and total_of(text) == 0


@pytest.mark.parametrize("field", ["GroupBy", "Resolution"])
async def test_an_enumerated_soap_field_refuses_anything_else(phub, clock, pclient, field):  # noqa: F811
    ctx = await seed(phub, clock, pclient)
    ops = await asyncio.to_thread(soap_operations, str(pclient.make_url("/public/soap?wsdl")))
    body = envelope("GetUsageAggregate", ops["GetUsageAggregate"], {field: "cluster' OR 1=1 --"})
    resp = await pclient.post("/public/soap", data=body, headers={**bearer(ctx["key"]), "Content-Type": "text/xml"})
    text = await resp.text()
    assert resp.status == 400 and "InvalidInput" in (fault_code(text) or ""), text[:300]


async def test_a_nul_is_refused_alike_on_both_stores_and_the_refusal_is_in_the_access_log(phub, clock, pclient):  # noqa: F811
    """PostgreSQL cannot compare text with a NUL and SQLite would quietly match nothing: the edge
    refuses it first, in the path, the query or a JSON body, and the access log keeps the row."""
    ctx = await seed(phub, clock, pclient)
    resp = await pclient.get("/api/v1/public/usage?group=a%00b&from=" + quote(PERIOD["from"]) + "&to="
                             + quote(PERIOD["to"]), headers=bearer(ctx["key"]))
    assert resp.status == 400 and (await resp.json())["type"] == "urn:mdmhub:problem:invalid-characters"
    assert (await pclient.get("/api/v1/certificates/a%00b")).status == 400  # a route outside the guarded ones
    body = await pclient.patch("/api/v1/portal/me", headers=bearer(ctx["token"]), json={"user_id": "a\x00@b.example"})
    assert body.status == 400
    with phub.db.session() as s:
        rows = [(r.resource, r.result) for r in s.scalars(select(AccessLog).where(AccessLog.result == 400)
                                                           .order_by(AccessLog.id))]
    assert [r[0].split("&")[0] for r in rows] == ["/api/v1/public/usage?group=a%00b", "/api/v1/portal/me"]


def test_the_access_log_keeps_a_claim_that_carries_a_nul(phub):  # noqa: F811
    phub.access.record(None, "portal", "POST", "/api/v1/portal/login", 401, "login refused\x00", "127.0.0.1",
                       "eve\x00@example.com")
    with phub.db.session() as s:
        row = s.scalars(select(AccessLog)).one()
    assert (row.principal, row.detail) == ("eve\\x00@example.com", "login refused\\x00")
