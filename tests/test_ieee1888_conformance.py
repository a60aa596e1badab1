"""The IEEE 1888 conformance runner passes against the hub's own storage and catches a faulty one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from aiohttp import web

from adapters.ieee1888.messages import envelope, parse_envelope, transport_xml
from conformance.ieee1888 import junit_xml, report_text, run_checks
from hub.app import create_app
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parents[1]


async def test_the_hub_passes_its_own_conformance_suite(hub: Hub, aiohttp_server: Any, tmp_path: Path) -> None:
    await hub.run(hub.fiap.points.load_mapping, ROOT / "mappings" / "ieee1888_points.toml")
    server = await aiohttp_server(create_app(hub))
    target = str(server.make_url("/fiap"))
    results = await run_checks(target)
    failed = [(r.name, r.message) for r in results if r.status == "failed"]
    assert failed == []
    names = {r.name for r in results if r.status == "passed"}
    assert {"write", "fetch_eq", "fetch_neq", "fetch_lt", "fetch_gt", "fetch_lteq", "fetch_gteq", "paging", "trap",
            "error_point_not_found", "error_invalid_request", "error_too_many_values",
            "error_query_not_supported", "error_invalid_cursor"} <= names
    (duplicate,) = [r for r in results if r.name == "write_another_value_for_a_stored_time"]
    assert duplicate.message == "policy: a different value is refused (INVALID_REQUEST)"
    suite = ElementTree.fromstring(junit_xml(results, target))
    assert suite.get("failures") == "0" and int(suite.get("tests") or 0) == len(results)
    assert "0 failed" in report_text(results, target)


async def test_a_faulty_storage_is_caught(aiohttp_server: Any) -> None:
    """A storage that answers OK to everything and never returns data (like a GW that drops values)."""

    async def lazy(request: web.Request) -> web.Response:
        op, t = parse_envelope(await request.read())
        answer = "queryRS" if op == "queryRQ" else "dataRS"
        return web.Response(body=envelope(answer, transport_xml(ok=True, query=t.query)), content_type="text/xml")

    async def wsdl(request: web.Request) -> web.Response:
        return web.Response(text="<definitions/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/fiap", lazy)
    app.router.add_get("/fiap", wsdl)
    server = await aiohttp_server(app)
    results = await asyncio.wait_for(run_checks(str(server.make_url("/fiap"))), 60)
    failed = {r.name for r in results if r.status == "failed"}
    assert {"wsdl", "fetch_all", "fetch_eq", "trap", "error_point_not_found", "error_too_many_values",
            "error_invalid_cursor", "write_another_value_for_a_stored_time"} <= failed
    assert "write" not in failed  # it does answer OK
