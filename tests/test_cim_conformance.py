"""The 61968-9 conformance runner: it passes against the hub and catches a broken endpoint."""

from __future__ import annotations

import asyncio

from aiohttp import web
from lxml import etree

from conformance import run_suite
from hub.app import create_app


async def test_the_suite_passes_against_the_hub(hub, aiohttp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MDMHUB_CONFORMANCE_DIR", str(tmp_path))
    server = await aiohttp_server(create_app(hub))
    code = await asyncio.to_thread(run_suite, "cim", str(server.make_url("/")))
    text = (tmp_path / "cim-conformance.txt").read_text()
    assert code == 0, text
    suite = etree.parse(str(tmp_path / "cim-conformance.xml")).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 12


async def test_a_broken_endpoint_fails_with_reasons(aiohttp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MDMHUB_CONFORMANCE_DIR", str(tmp_path))

    async def sloppy(request: web.Request) -> web.Response:
        await request.read()  # answers OK to anything, without correlation, and leaks entities
        return web.Response(text='<ResponseMessage xmlns="http://iec.ch/TC57/2011/schema/message"><Header>'
                                 "<Verb>reply</Verb><Noun>X</Noun></Header><Reply><Result>OK</Result></Reply>"
                                 "</ResponseMessage>", content_type="application/xml")

    async def crash(request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError(text="Traceback (most recent call last): ...")

    app = web.Application()
    app.router.add_post("/cim/messages", sloppy)
    app.router.add_get("/cim/soap", crash)
    server = await aiohttp_server(app)
    code = await asyncio.to_thread(run_suite, "cim", str(server.make_url("/")))
    assert code == 1
    text = (tmp_path / "cim-conformance.txt").read_text()
    assert "FAIL  envelope_and_correlation: CorrelationID is None" in text
    assert "FAIL  unknown_noun" in text and "FAIL  wsdl_served: GET /cim/soap?wsdl answered HTTP 500" in text
    failures = etree.parse(str(tmp_path / "cim-conformance.xml")).getroot().findall("testcase/failure")
    assert len(failures) >= 8
