"""The IEEE 1888 storage at /fiap, driven by zeep (a client built only from the served WSDL) and by
raw wire messages in the reference C gateway's form."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zeep
from aiohttp import web
from sqlalchemy import select

from adapters.ieee1888.messages import FIAP_NS, SOAP_FIAP_NS, parse_envelope
from hub.app import create_app
from hub.model import Alert, FiapValue, UsageHistory
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parents[1]
SITE = "http://demo.mdmhub.example/site1/"
TEMP = SITE + "env/temperature"
HUMID = SITE + "env/humidity"
MODE = SITE + "pv/mode"


@pytest.fixture
async def storage(hub: Hub, aiohttp_server: Any) -> AsyncIterator[tuple[Hub, str]]:
    """The hub with the demo site's points, served on a real port; yields (hub, /fiap URL)."""
    await hub.run(hub.fiap.points.load_mapping, ROOT / "mappings" / "ieee1888_points.toml")
    server = await aiohttp_server(create_app(hub))
    yield hub, str(server.make_url("/fiap"))


def zeep_client(url: str) -> Any:
    return zeep.Client(url + "?wsdl")


def z_write(url: str, points: dict[str, list[tuple[str, str]]]) -> Any:
    c = zeep_client(url)
    return c.service.data(transport={"body": {"point": [
        {"id": pid, "value": [{"_value_1": v, "time": t} for t, v in vals]} for pid, vals in points.items()]}})


def z_query(url: str, keys: list[dict[str, Any]], **attrs: Any) -> Any:
    c = zeep_client(url)
    return c.service.query(transport={"header": {"query": {"id": str(uuid.uuid4()), "type": "storage",
                                                            "key": keys, **attrs}}})


async def post(url: str, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = body.encode() if isinstance(body, str) else body
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data, headers={"Content-Type": "text/xml;charset=UTF-8", **(headers or {})}) as r:
            return r.status, await r.read()


def raw(op: str, transport: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
            f'"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><ns2:{op} xmlns:ns2="{SOAP_FIAP_NS}">'
            f'<transport xmlns="{FIAP_NS}">{transport}</transport></ns2:{op}></soapenv:Body></soapenv:Envelope>')


def error_of(answer: bytes) -> tuple[str, str] | None:
    return parse_envelope(answer)[1].error


def values_of(result: Any) -> dict[str, list[tuple[datetime, str]]]:
    out: dict[str, list[tuple[datetime, str]]] = {}
    for p in (result.body.point if result.body is not None else []):
        out.setdefault(p.id, []).extend((v.time.astimezone(UTC), v._value_1) for v in p.value)
    return out


def hours(*hs: int) -> list[tuple[str, str]]:
    """Values 20.0, 21.0, ... at 2026-01-01 hh:00+09:00."""
    return [(f"2026-01-01T{h:02d}:00:00+09:00", f"{20 + i}.0") for i, h in enumerate(hs)]


# WSDL and zeep --------------------------------------------------------------------------------


async def test_wsdl_is_served_with_our_address_and_the_standard_names(storage: tuple[Hub, str]) -> None:
    _, url = storage
    async with aiohttp.ClientSession() as s, s.get(url + "?wsdl") as r:
        text = await r.text()
    assert r.status == 200
    assert f'location="{url}"' in text
    for part in ('targetNamespace="http://soap.fiap.org/"', 'targetNamespace="http://gutp.jp/fiap/2009/11/"',
                 'soapAction="http://soap.fiap.org/query"', 'soapAction="http://soap.fiap.org/data"',
                 '<wsdl:portType name="FIAPServiceSoap">', '<wsdl:binding name="FIAPServiceSoap"'):
        assert part in text
    c = await asyncio.to_thread(zeep_client, url)
    assert {op for op in c.service._binding._operations} == {"query", "data"}


async def test_zeep_writes_then_fetches_every_value_back_in_time_order(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    res = await asyncio.to_thread(z_write, url, {TEMP: hours(12, 10, 11), HUMID: hours(10)})
    assert res.header.error is None
    got = await asyncio.to_thread(z_query, url, [{"id": TEMP, "attrName": "time"}, {"id": HUMID, "attrName": "time"}])
    assert got.header.error is None and got.header.query.cursor is None
    vals = values_of(got)
    assert [v for _, v in vals[TEMP]] == ["21.0", "22.0", "20.0"]  # ascending time: 10h, 11h, 12h
    assert [tm.hour for tm, _ in vals[TEMP]] == [1, 2, 3]  # 10:00+09:00 is 01:00Z
    assert vals[HUMID] == [(datetime(2026, 1, 1, 1, tzinfo=UTC), "20.0")]
    with hub.db.session() as s:
        assert s.query(FiapValue).count() == 4


async def test_fetch_with_each_operator_and_select(storage: tuple[Hub, str]) -> None:
    _, url = storage
    await asyncio.to_thread(z_write, url, {TEMP: hours(10, 11, 12, 13)})  # 20, 21, 22, 23 at 01..04Z

    async def fetch(**key: Any) -> list[str]:
        got = await asyncio.to_thread(z_query, url, [{"id": TEMP, "attrName": "time", **key}])
        assert got.header.error is None, got.header.error
        return [v for _, v in values_of(got).get(TEMP, [])]

    b = "2026-01-01T02:00:00Z"  # = 11:00+09:00, the second value
    assert await fetch(eq=b) == ["21.0"]
    assert await fetch(neq=b) == ["20.0", "22.0", "23.0"]
    assert await fetch(lt=b) == ["20.0"]
    assert await fetch(lteq=b) == ["20.0", "21.0"]
    assert await fetch(gt=b) == ["22.0", "23.0"]
    assert await fetch(gteq="2026-01-01T11:00:00.000000000+09:00") == ["21.0", "22.0", "23.0"]
    assert await fetch(gteq="2026-01-01T12:00:00+0900", lteq="2026-01-01T03:00:00-00:00") == ["22.0"]
    assert await fetch(select="maximum") == ["23.0"]
    assert await fetch(select="minimum") == ["20.0"]
    assert await fetch(select="maximum", lt="2026-01-01T03:00:00Z") == ["21.0"]
    got = await asyncio.to_thread(z_query, url, [{"id": TEMP, "attrName": "value", "gt": "21.5"}])
    assert [v for _, v in values_of(got)[TEMP]] == ["22.0", "23.0"]
    got = await asyncio.to_thread(z_query, url, [{"id": TEMP, "attrName": "value", "select": "minimum"}])
    assert [v for _, v in values_of(got)[TEMP]] == ["20.0"]


async def test_paging_with_cursor_gives_every_value_once(storage: tuple[Hub, str]) -> None:
    _, url = storage
    await asyncio.to_thread(z_write, url, {TEMP: hours(*range(0, 7)), HUMID: hours(*range(0, 4))})
    keys = [{"id": TEMP, "attrName": "time"}, {"id": HUMID, "attrName": "time"}]
    c = await asyncio.to_thread(zeep_client, url)
    qid = str(uuid.uuid4())
    seen: dict[str, list[str]] = {}
    cursor = None
    pages = 0
    while True:
        q = {"id": qid, "type": "storage", "acceptableSize": 3, "key": keys}
        if cursor:
            q["cursor"] = cursor
        got = await asyncio.to_thread(c.service.query, transport={"header": {"query": q}})
        assert got.header.error is None
        pages += 1
        page = values_of(got)
        assert sum(len(v) for v in page.values()) <= 3
        for pid, vals in page.items():
            seen.setdefault(pid, []).extend(v for _, v in vals)
        cursor = got.header.query.cursor
        if not cursor:
            break
    assert pages == 4  # 11 values, 3 a page (one point split across pages)
    assert seen == {TEMP: [f"{20 + i}.0" for i in range(7)], HUMID: [f"{20 + i}.0" for i in range(4)]}
    got = await asyncio.to_thread(z_query, url, keys, cursor=str(uuid.uuid4()))
    assert got.header.error.type == "INVALID_CURSOR"


# errors ----------------------------------------------------------------------------------------


async def test_write_to_an_unregistered_point_is_refused_stored_nowhere_and_alerted(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    rogue = SITE + "env/rogue-sensor"
    res = await asyncio.to_thread(z_write, url, {TEMP: hours(10), rogue: hours(10)})
    assert res.header.error.type == "POINT_NOT_FOUND" and rogue in res.header.error._value_1
    with hub.db.session() as s:
        assert s.query(FiapValue).count() == 0  # the registered point's value is not stored either
        alerts = s.scalars(select(Alert).where(Alert.code == "ieee1888.unregistered-point")).all()
    assert len(alerts) == 1 and alerts[0].details["point_ids"] == [rogue]
    got = await asyncio.to_thread(z_query, url, [{"id": rogue, "attrName": "time"}])
    assert got.header.error.type == "POINT_NOT_FOUND" and got.header.query is not None and got.body is None


async def test_standard_error_types(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    qid = str(uuid.uuid4())
    cases = {
        "INVALID_REQUEST": raw("dataRQ", ""),  # no body
        "QUERY_NOT_SUPPORTED": raw("queryRQ", f'<header><query id="{qid}" type="storage"/></header>'),
        "TOO_MANY_VALUES": raw("dataRQ", f'<body><point id="{TEMP}">' + "".join(
            f'<value time="2026-01-01T00:00:{i % 60:02d}.{i:06d}Z">1</value>' for i in range(5001)) + "</point></body>"),
        "TOO_MANY_KEYS": raw("queryRQ", f'<header><query id="{qid}" type="storage">'
                             + f'<key id="{TEMP}" attrName="time"/>' * 6001 + "</query></header>"),
    }
    for expected, body in cases.items():
        status, answer = await post(url, body)
        assert status == 200 and error_of(answer)[0] == expected, (expected, answer[:300])  # type: ignore[index]
    bad_query = raw("queryRQ", f'<header><query id="not-a-uuid" type="storage"><key id="{TEMP}" attrName="time"/>'
                               f'</query></header>')
    assert error_of((await post(url, bad_query))[1])[0] == "INVALID_REQUEST"  # type: ignore[index]
    bad_select = raw("queryRQ", f'<header><query id="{qid}" type="storage"><key id="{TEMP}" attrName="time" '
                                f'select="median"/></query></header>')
    assert error_of((await post(url, bad_select))[1])[0] == "QUERY_NOT_SUPPORTED"  # type: ignore[index]
    not_number = raw("dataRQ", f'<body><point id="{TEMP}"><value time="2026-01-01T00:00:00Z">warm</value></point>'
                               f'</body>')
    assert error_of((await post(url, not_number))[1])[0] == "INVALID_REQUEST"  # type: ignore[index]
    no_zone = raw("dataRQ", f'<body><point id="{TEMP}"><value time="2026-01-01T00:00:00">1</value></point></body>')
    assert error_of((await post(url, no_zone))[1])[0] == "INVALID_REQUEST"  # type: ignore[index]
    with hub.db.session() as s:
        assert s.query(FiapValue).count() == 0


async def test_duplicates_same_value_accepted_once_different_value_refused(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    one = raw("dataRQ", f'<body><point id="{TEMP}"><value time="2014-11-09T10:53:35+0900">12.5</value></point>'
                        f'</body>')
    for _ in range(2):
        status, answer = await post(url, one, {"SOAPAction": "http://soap.fiap.org/data"})  # unquoted
        assert status == 200 and parse_envelope(answer)[1].ok
    clash = one.replace(">12.5<", ">13.0<")
    assert error_of((await post(url, clash))[1])[0] == "INVALID_REQUEST"  # type: ignore[index]
    with hub.db.session() as s:
        rows = s.scalars(select(FiapValue)).all()
    assert [(r.time, r.value) for r in rows] == [(datetime(2014, 11, 9, 1, 53, 35, tzinfo=UTC), "12.5")]


async def test_a_write_mixing_stored_and_new_values_stores_the_new_ones_once(storage: tuple[Hub, str]) -> None:
    hub, _ = storage
    from hub.services.fiap_store import Sample

    t = [datetime(2026, 1, 1, h, tzinfo=UTC) for h in range(6)]
    first = await hub.run(hub.fiap.store.write, [Sample(TEMP, t[i], f"{i}.0") for i in (1, 3)])
    assert (first.stored, first.duplicates) == (2, 0)
    mixed = await hub.run(hub.fiap.store.write, [Sample(TEMP, t[i], f"{i}.0") for i in range(6)])
    assert (mixed.stored, mixed.duplicates) == (4, 2)
    assert sorted(r[1].hour for r in mixed.new) == [0, 2, 4, 5]  # only the new ones go to TRAP and upstreams
    with hub.db.session() as s:
        rows = s.scalars(select(FiapValue).order_by(FiapValue.time)).all()
    assert [(r.time.hour, r.value) for r in rows] == [(i, f"{i}.0") for i in range(6)]


async def test_c_gateway_wire_form_with_mode_strings_and_pointsets(storage: tuple[Hub, str]) -> None:
    """Nested pointSets, default namespace, no SOAPAction, trailing CRLFs, a value with markup."""
    hub, url = storage
    body = raw("dataRQ", f'<body><pointSet id="{SITE}"><pointSet id="{SITE}pv/"><point id="{MODE}">'
                         f'<value time="2026-01-01T00:00:00Z">HIGH &amp; &lt;ok&gt;</value></point></pointSet>'
                         f'</pointSet></body>') + "\r\n\r\n"
    status, answer = await post(url, body)
    assert status == 200 and parse_envelope(answer)[1].ok
    got = await asyncio.to_thread(z_query, url, [{"id": MODE, "attrName": "time", "select": "maximum"},
                                                 {"id": SITE + "pv/", "attrName": "time"}])
    assert values_of(got)[MODE][0][1] == "HIGH & <ok>"
    children = {p.id for p in got.body.pointSet[0].point}
    assert MODE in children and SITE + "pv/power" in children


async def test_hostile_xml_is_refused_without_resolving_anything(storage: tuple[Hub, str], tmp_path: Path) -> None:
    hub, url = storage
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
           + raw("dataRQ", f'<body><point id="{MODE}"><value time="2026-01-01T00:00:00Z">&e;</value></point></body>')
           .split("?>", 1)[1])
    status, answer = await post(url, xxe)
    assert status == 500 and b"Fault" in answer and b"TOPSECRET" not in answer
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            + raw("dataRQ", f'<body><point id="{MODE}"><value>&b;</value></point></body>').split("?>", 1)[1])
    assert (await post(url, bomb))[0] == 500
    huge = raw("dataRQ", "<body>" + " " * (hub.settings.ieee1888.max_request_bytes + 10) + "</body>")
    assert (await post(url, huge))[0] == 413
    assert (await post(url, "<not-xml"))[0] == 500
    with hub.db.session() as s:
        assert s.query(FiapValue).count() == 0


async def test_thirty_minute_values_of_a_mapped_point_land_on_the_readings_path(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    from hub.demo import seed_catalogue
    from hub.services.points import PointIn
    from hub.services.registry import DeviceRegistration

    await hub.run(seed_catalogue, hub)
    await hub.run(hub.registry.register, DeviceRegistration(type_id=11, ld_type_id=101, he_id=1, serial="PV-1",
                                                            ld_id="LD-PV-1", config_state=1))
    energy = SITE + "pv/energy"
    await hub.run(hub.fiap.points.register, [PointIn(point_id=energy, kind="energy", unit="kWh",
                                                     ld_id="LD-PV-1", sub_number=1)])
    res = await asyncio.to_thread(z_write, url, {energy: [("2026-01-01T09:00:00+09:00", "100.5"),
                                                          ("2026-01-01T09:30:00+09:00", "101.25"),
                                                          ("2026-01-01T09:40:00+09:00", "101.5")]})
    assert res.header.error is None
    with hub.db.session() as s:
        rows = s.scalars(select(UsageHistory).where(UsageHistory.ld_id == "LD-PV-1")
                         .order_by(UsageHistory.measured_time)).all()
        assert [(r.measured_time.minute, r.register_value, r.source) for r in rows] == [
            (0, 100.5, "ieee1888"), (30, 101.25, "ieee1888")]  # 09:40 is off the grid: point values only
        assert rows[1].increment == pytest.approx(0.75)
        assert s.query(FiapValue).count() == 3


# TRAP -----------------------------------------------------------------------------------------


async def test_trap_pushes_changed_values_and_a_dead_subscriber_blocks_nothing(
        storage: tuple[Hub, str], aiohttp_server: Any) -> None:
    _, url = storage
    received: list[bytes] = []

    async def callback(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=raw("dataRS", "<header><OK/></header>").encode(), content_type="text/xml")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/cb", callback)
    app.router.add_post("/hang", hang)
    sink = await aiohttp_server(app)
    c = await asyncio.to_thread(zeep_client, url)

    def subscribe(cb: str, attr: str, ttl: int = 60, qid: str | None = None) -> Any:
        return c.service.query(transport={"header": {"query": {
            "id": qid or str(uuid.uuid4()), "type": "stream", "ttl": ttl, "callbackData": cb,
            "key": [{"id": TEMP, "attrName": attr, "trap": "changed"}]}}})

    res = await asyncio.to_thread(subscribe, str(sink.make_url("/hang")), "time")
    assert res.header.error is None
    qid = str(uuid.uuid4())
    res = await asyncio.to_thread(subscribe, str(sink.make_url("/cb")), "value", 60, qid)
    assert res.header.error is None and res.header.query.id == qid
    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(z_write, url, {TEMP: hours(10)})
    assert asyncio.get_running_loop().time() - started < 3  # the hanging subscriber does not hold the WRITE
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    op, tr = parse_envelope(received[0])
    assert op == "dataRQ" and tr.query is not None and tr.query.id == qid
    assert [(p.id, [v.text for v in p.values]) for p in tr.points] == [(TEMP, ["20.0"])]
    await asyncio.to_thread(z_write, url, {TEMP: [("2026-01-01T11:00:00+09:00", "20.0")]})  # same value
    await asyncio.sleep(0.3)
    assert len(received) == 1  # attrName=value: no event when the value did not change
    res = await asyncio.to_thread(subscribe, str(sink.make_url("/cb")), "value", 0, qid)  # ttl 0 cancels
    assert res.header.error is None
    await asyncio.to_thread(z_write, url, {TEMP: [("2026-01-01T12:00:00+09:00", "30.0")]})
    await asyncio.sleep(0.3)
    assert len(received) == 1
    no_ttl = raw("queryRQ", f'<header><query id="{uuid.uuid4()}" type="stream" callbackData="http://x/"><key '
                            f'id="{TEMP}" attrName="time" trap="changed"/></query></header>')
    assert error_of((await post(url, no_ttl))[1])[0] == "INVALID_REQUEST"  # type: ignore[index]
