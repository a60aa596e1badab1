"""Interop at the byte level, without zeep and without the hub's client: hand-written SOAP 1.1
envelopes in the forms other IEEE 1888 clients put on the wire, sent with the standard library's
``http.client`` or a bare socket, answers read with plain lxml (not the hub's parser).

Forms covered: Axis2-style (fiap elements prefixed ``ns1:``, wrapper ``ns2:``, ``xsi:type``
attributes, single-quoted XML declaration, chunked body), .NET-style (prefixes declared on the
Envelope, ``soap:queryRQ``/``ns:transport``), PHP-style (single-quoted attributes, one element a
line, ``Content-type: text/xml`` without charset), and SOAPAction quoted, unquoted, empty, absent
or naming another operation. The storage dispatches on the body element (docs/ieee1888.md)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lxml import etree

from hub.app import create_app
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parents[1]
TEMP = "http://demo.mdmhub.example/site1/env/temperature"
HUMID = "http://demo.mdmhub.example/site1/env/humidity"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_FIAP = "http://soap.fiap.org/"
FIAP = "http://gutp.jp/fiap/2009/11/"
NS = {"e": ENV, "s": SOAP_FIAP, "f": FIAP}
TIMES = [f"2026-01-02T{h:02d}:00:00.000+09:00" for h in range(7)]


@pytest.fixture
async def storage(hub: Hub, aiohttp_server: Any) -> AsyncIterator[tuple[Hub, str]]:
    await hub.run(hub.fiap.points.load_mapping, ROOT / "mappings" / "ieee1888_points.toml")
    server = await aiohttp_server(create_app(hub))
    yield hub, str(server.make_url("/fiap"))


# the wire forms ----------------------------------------------------------------------------------


def axis2_write(values: dict[str, list[tuple[str, str]]]) -> str:
    """dataRQ with every fiap element prefixed ns1 and xsi:type on the transport and values."""
    points = "".join(
        f'<ns1:point id="{pid}">' + "".join(f'<ns1:value time="{t}" xsi:type="xsd:string">{v}</ns1:value>'
                                            for t, v in vals) + "</ns1:point>"
        for pid, vals in values.items())
    return ("<?xml version='1.0' encoding='UTF-8'?>"
            f'<soapenv:Envelope xmlns:soapenv="{ENV}"><soapenv:Body>'
            f'<ns2:dataRQ xmlns:ns2="{SOAP_FIAP}">'
            f'<ns1:transport xmlns:ns1="{FIAP}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xsi:type="ns1:Transport">'
            f'<ns1:body><ns1:pointSet id="http://demo.mdmhub.example/site1/env/">{points}</ns1:pointSet></ns1:body>'
            "</ns1:transport></ns2:dataRQ></soapenv:Body></soapenv:Envelope>")


def dotnet_query(qid: str, keys: str, size: int | None = None, cursor: str | None = None) -> str:
    """queryRQ with the prefixes declared once on the Envelope (soap: wrapper, ns: fiap)."""
    attrs = (f' acceptableSize="{size}"' if size else "") + (f' cursor="{cursor}"' if cursor else "")
    return ('<?xml version="1.0" encoding="utf-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{ENV}" xmlns:soap="{SOAP_FIAP}" xmlns:ns="{FIAP}">'
            '<soapenv:Header/><soapenv:Body><soap:queryRQ><ns:transport><ns:header>'
            f'<ns:query id="{qid}" type="storage"{attrs}>{keys}</ns:query>'
            "</ns:header></ns:transport></soap:queryRQ></soapenv:Body></soapenv:Envelope>")


def php_query(qid: str, point: str) -> str:
    """queryRQ as PHP scripts write it: single quotes, one element a line."""
    return (f"<?xml version='1.0' encoding='UTF-8'?>\n<soapenv:Envelope xmlns:soapenv='{ENV}'>\n<soapenv:Body>\n"
            f"<ns2:queryRQ xmlns:ns2='{SOAP_FIAP}'>\n<transport xmlns='{FIAP}'>\n<header>\n"
            f"<query id='{qid}' type='storage'>\n<key id='{point}' attrName='time' select='maximum' />\n"
            "</query>\n</header>\n</transport>\n</ns2:queryRQ>\n</soapenv:Body>\n</soapenv:Envelope>")


# sending ----------------------------------------------------------------------------------------


def send(url: str, body: str, headers: dict[str, str], chunked: bool = False) -> tuple[int, bytes]:
    """POST with http.client; ``chunked`` sends the body in 100-byte chunks (Transfer-Encoding)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        data = body.encode()
        if chunked:
            pieces: Iterator[bytes] = (data[i:i + 100] for i in range(0, len(data), 100))
            conn.request("POST", parts.path, body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", parts.path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def send_expect_continue(url: str, body: str) -> tuple[bytes, int, bytes]:
    """A bare socket: headers with ``Expect: 100-continue`` and a chunked body sent only after
    the interim answer. Returns (interim status line, final status, final body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall((f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      "Content-Type: text/xml;charset=UTF-8\r\nSOAPAction: \"http://soap.fiap.org/data\"\r\n"
                      "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode())
        interim = _read_until(sock, b"\r\n\r\n")
        data = body.encode()
        for i in range(0, len(data), 512):
            piece = data[i:i + 512]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        rest = _dechunk(rest)
    return interim.split(b"\r\n", 1)[0], status, rest


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    got = b""
    while end not in got:
        chunk = sock.recv(1)
        if not chunk:
            break
        got += chunk
    return got


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


# reading answers with plain lxml -------------------------------------------------------------------


def transport(answer: bytes, op: str) -> Any:
    root = etree.fromstring(answer)
    found = root.xpath(f"/e:Envelope/e:Body/s:{op}/f:transport", namespaces=NS)
    assert len(found) == 1, answer[:400]
    return found[0]


def ok(answer: bytes, op: str) -> bool:
    header = transport(answer, op).find("f:header", NS)
    return header is not None and header.find("f:OK", NS) is not None and header.find("f:error", NS) is None


def error(answer: bytes, op: str) -> tuple[str, str]:
    el = transport(answer, op).find("f:header/f:error", NS)
    assert el is not None, answer[:400]
    return el.get("type"), el.text or ""


def values(answer: bytes) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for p in transport(answer, "queryRS").iterfind("f:body/f:point", NS):
        out.setdefault(p.get("id"), []).extend((v.get("time"), v.text) for v in p.iterfind("f:value", NS))
    return out


def echoed_cursor(answer: bytes) -> str | None:
    q = transport(answer, "queryRS").find("f:header/f:query", NS)
    assert q is not None
    return q.get("cursor")  # type: ignore[no-any-return]


XML = {"Content-Type": "text/xml; charset=UTF-8"}


# the tests --------------------------------------------------------------------------------------


async def test_axis2_style_chunked_write_with_each_soapaction_form_is_stored(storage: tuple[Hub, str]) -> None:
    _, url = storage
    actions: list[str | None] = ['"http://soap.fiap.org/data"', "http://soap.fiap.org/data", '""', None,
                                 '"urn:anonOutInOp"']
    for i, action in enumerate(actions):
        headers = dict(XML) if action is None else {**XML, "SOAPAction": action}
        body = axis2_write({TEMP: [(TIMES[i], f"{20 + i}.5")], HUMID: [(TIMES[i], f"{40 + i}")]})
        status, answer = await asyncio.to_thread(send, url, body, headers, chunked=True)
        assert status == 200 and ok(answer, "dataRS"), (action, answer[:400])
    status, answer = await asyncio.to_thread(
        send, url, dotnet_query(str(uuid.uuid4()), f'<ns:key id="{TEMP}" attrName="time"/>'), XML)
    assert status == 200 and ok(answer, "queryRS")
    got = values(answer)[TEMP]
    assert [v for _, v in got] == [f"{20 + i}.5" for i in range(len(actions))]
    assert [t for t, _ in got] == [f"2026-01-01T{15 + i:02d}:00:00.000+00:00" for i in range(len(actions))]


async def test_dotnet_style_fetch_follows_the_cursor_to_every_value_once(storage: tuple[Hub, str]) -> None:
    _, url = storage
    body = axis2_write({TEMP: [(t, f"{20 + i}.0") for i, t in enumerate(TIMES)],
                        HUMID: [(t, f"{50 + i}") for i, t in enumerate(TIMES[:4])]})
    assert ok((await asyncio.to_thread(send, url, body, XML))[1], "dataRS")
    keys = f'<ns:key id="{TEMP}" attrName="time"/><ns:key id="{HUMID}" attrName="time"/>'
    qid, cursor = str(uuid.uuid4()), None
    seen: dict[str, list[str]] = {}
    pages = 0
    while True:
        status, answer = await asyncio.to_thread(send, url, dotnet_query(qid, keys, 3, cursor),
                                                 {**XML, "SOAPAction": "http://soap.fiap.org/query"})
        assert status == 200 and ok(answer, "queryRS"), answer[:400]
        pages += 1
        page = values(answer)
        assert sum(len(v) for v in page.values()) <= 3
        for pid, vals in page.items():
            seen.setdefault(pid, []).extend(v for _, v in vals)
        cursor = echoed_cursor(answer)
        if cursor is None:
            break
    assert pages == 4  # 11 values, 3 a page, the temperature point split over three pages
    assert seen == {TEMP: [f"{20 + i}.0" for i in range(7)], HUMID: [f"{50 + i}" for i in range(4)]}


async def test_php_style_fetch_of_the_latest_value(storage: tuple[Hub, str]) -> None:
    _, url = storage
    body = axis2_write({TEMP: [(TIMES[2], "21.0"), (TIMES[5], "24.0"), (TIMES[1], "19.0")]})
    assert ok((await asyncio.to_thread(send, url, body, XML))[1], "dataRS")
    status, answer = await asyncio.to_thread(send, url, php_query(str(uuid.uuid4()), TEMP),
                                             {"Content-type": "text/xml"})
    assert status == 200 and values(answer) == {TEMP: [("2026-01-01T20:00:00.000+00:00", "24.0")]}


async def test_error_answers_parse_as_ieee1888_errors_and_faults(storage: tuple[Hub, str]) -> None:
    _, url = storage
    qid = str(uuid.uuid4())
    status, answer = await asyncio.to_thread(
        send, url, dotnet_query(qid, '<ns:key id="http://demo.mdmhub.example/site1/env/nope" attrName="time"/>'), XML)
    assert status == 200 and error(answer, "queryRS")[0] == "POINT_NOT_FOUND"
    echo = transport(answer, "queryRS").find("f:header/f:query", NS)
    assert echo is not None and echo.get("id") == qid and transport(answer, "queryRS").find("f:body", NS) is None

    status, answer = await asyncio.to_thread(
        send, url, dotnet_query(qid, f'<ns:key id="{TEMP}" attrName="time"/>', cursor=str(uuid.uuid4())), XML)
    assert status == 200 and error(answer, "queryRS")[0] == "INVALID_CURSOR"

    assert ok((await asyncio.to_thread(send, url, axis2_write({TEMP: [(TIMES[0], "1.0")]}), XML))[1], "dataRS")
    status, answer = await asyncio.to_thread(send, url, axis2_write({TEMP: [(TIMES[0], "2.0")]}), XML,
                                             chunked=True)
    kind, text = error(answer, "dataRS")
    assert status == 200 and kind == "INVALID_REQUEST" and "differ" in text

    status, answer = await asyncio.to_thread(send, url, axis2_write({TEMP: [(TIMES[0], "1.0")]})[:-30], XML)
    fault = etree.fromstring(answer).find("e:Body/e:Fault", NS)
    assert status == 500 and fault is not None
    assert fault.findtext("faultcode") == "soapenv:Client" and fault.findtext("faultstring")


async def test_expect_100_continue_then_a_chunked_body(storage: tuple[Hub, str]) -> None:
    hub, url = storage
    interim, status, answer = await asyncio.to_thread(
        send_expect_continue, url, axis2_write({HUMID: [(t, "55") for t in TIMES]}) + "\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100")
    assert status == 200 and ok(answer, "dataRS"), answer[:400]
    stored = await hub.run(hub.fiap.store.latest_times, [HUMID])
    assert stored[HUMID].isoformat() == "2026-01-01T21:00:00+00:00"
