"""IEEE 1888 storage conformance (``mdmhub conformance ieee1888 --target URL``).

Checks any IEEE 1888 storage, the hub's own included: the WSDL, WRITE, FETCH with each key
operator and select, paging with acceptableSize and cursor, TRAP delivery to a callback, and each
error type a client can provoke. Writes ``conformance-ieee1888.xml`` (JUnit) and
``conformance-ieee1888.txt`` (readable) to $MDMHUB_CONFORMANCE_DIR (default: the current folder).

The storage must accept WRITEs to the test points: by default the demo site's temperature point
(``MDMHUB_CONFORMANCE_POINT`` names another). Each run writes at times of its own (a random day in
the year 2001), so runs never clash with each other or with real data.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import aiohttp
from aiohttp import web

from adapters.ieee1888.messages import (
    FIAP_NS,
    SOAP_FIAP_NS,
    Key,
    Malformed,
    Point,
    Query,
    Transport,
    Value,
    envelope,
    format_time,
    parse_envelope,
    parse_time,
    transport_xml,
)
from conformance import SUITES

DEFAULT_POINT = "http://demo.mdmhub.example/site1/env/temperature"
VALUES = 7


class CheckFailed(AssertionError):
    """A check did not hold; the message says what was expected."""


@dataclass
class Result:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    message: str = ""


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


class Session:
    """The storage under test and what this run wrote to it."""

    def __init__(self, target: str, point: str) -> None:
        self.target = target
        self.point = point
        day = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(365),
                                                           minutes=random.randrange(0, 1440, 10))
        self.times = [day + timedelta(seconds=60 * i) for i in range(VALUES)]
        self.values = [f"{10 + i}.25" for i in range(VALUES)]
        self.http: aiohttp.ClientSession | None = None

    async def post(self, op: str, transport: str, raw: bytes | None = None) -> tuple[int, Transport | None, bytes]:
        assert self.http is not None
        body = raw if raw is not None else envelope(op, transport)
        action = "query" if op.startswith("query") else "data"
        async with self.http.post(self.target, data=body, headers={
                "Content-Type": "text/xml;charset=UTF-8", "SOAPAction": f'"{SOAP_FIAP_NS}{action}"'}) as r:
            data = await r.read()
            try:
                return r.status, parse_envelope(data)[1], data
            except (Malformed, Exception):  # noqa: BLE001 - the caller judges a non-IEEE 1888 answer
                return r.status, None, data

    async def query(self, keys: list[Key], **attrs: str | None) -> Transport:
        q = Query(id=str(uuid.uuid4()), type="storage", keys=keys, **attrs)  # type: ignore[arg-type]
        status, t, raw = await self.post("queryRQ", transport_xml(query=q))
        expect(t is not None, f"FETCH answer is not an IEEE 1888 message (HTTP {status}): {raw[:200]!r}")
        assert t is not None
        return t

    async def fetch_values(self, **cond: str) -> list[str]:
        sel = cond.pop("select", None)
        t = await self.query([Key(self.point, "time", cond, select=sel)])
        expect(t.error is None, f"FETCH {cond or sel} answered error {t.error}")
        return [v.text for p in t.all_points() if p.id == self.point for v in p.values]

    def at(self, i: int) -> str:
        return format_time(self.times[i])


def _error_type(t: Transport | None) -> str | None:
    return t.error[0] if t is not None and t.error else None


# the checks ---------------------------------------------------------------------------------------


async def check_wsdl(s: Session) -> None:
    assert s.http is not None
    async with s.http.get(s.target + "?wsdl") as r:
        text = await r.text()
        expect(r.status == 200, f"GET ?wsdl gave HTTP {r.status}")
    for part in (SOAP_FIAP_NS, FIAP_NS, "http://soap.fiap.org/query", "http://soap.fiap.org/data", "FIAPServiceSoap"):
        expect(part in text, f"the WSDL does not mention {part}")


async def check_write(s: Session) -> None:
    pts = [Point(s.point, [Value(s.at(i), s.values[i]) for i in range(VALUES)])]
    status, t, raw = await s.post("dataRQ", transport_xml(header=False, points=pts))
    expect(t is not None and t.ok and t.error is None, f"WRITE not answered OK (HTTP {status}): {raw[:300]!r}")


async def check_write_again_same_values(s: Session) -> None:
    pts = [Point(s.point, [Value(s.at(0), s.values[0])])]
    _, t, raw = await s.post("dataRQ", transport_xml(header=False, points=pts))
    expect(t is not None and t.ok, f"re-sending a stored value was not answered OK: {raw[:300]!r}")


async def check_write_another_value_for_a_stored_time(s: Session) -> str:
    """Either policy is conformant if it is kept: refuse the second value (the stored one stays), or
    last write wins (FIAPStorage2; the new one is returned). Answering OK and keeping the old value
    loses the writer's data silently; that fails. The stored value is put back afterwards."""
    other = s.values[0] + "1"
    _, t, raw = await s.post("dataRQ", transport_xml(header=False, points=[Point(s.point, [Value(s.at(0), other)])]))
    expect(t is not None, f"WRITE of another value is not an IEEE 1888 answer: {raw[:300]!r}")
    assert t is not None
    stored = await s.fetch_values(eq=s.at(0))
    if t.ok and t.error is None:
        expect(stored == [other], f"answered OK but FETCH returns {stored}: the new value was dropped silently")
        _, back, _ = await s.post("dataRQ", transport_xml(header=False,
                                                          points=[Point(s.point, [Value(s.at(0), s.values[0])])]))
        expect(back is not None and back.ok, "could not put the stored value back")
        return "policy: last write wins"
    expect(stored == [s.values[0]], f"refused ({_error_type(t)}) but FETCH returns {stored}: the value changed")
    return f"policy: a different value is refused ({_error_type(t)})"


async def check_fetch_all(s: Session) -> None:
    got = await s.fetch_values(gteq=s.at(0), lteq=s.at(VALUES - 1))
    expect(got == s.values, f"FETCH of the range gave {got}, expected {s.values} in ascending time order")


def _operator(name: str, cond: Callable[[Session], dict[str, str]], expected: Callable[[Session], list[str]]
              ) -> Callable[[Session], Awaitable[None]]:
    async def check(s: Session) -> None:
        got = await s.fetch_values(**cond(s))
        want = expected(s)
        expect(got == want, f"{name}: got {got}, expected {want}")
    check.__name__ = f"check_fetch_{name}"
    return check


def _within(s: Session) -> dict[str, str]:
    return {"gteq": s.at(0), "lteq": s.at(VALUES - 1)}


OPERATORS = [
    _operator("eq", lambda s: {"eq": s.at(3)}, lambda s: [s.values[3]]),
    _operator("neq", lambda s: {**_within(s), "neq": s.at(3)}, lambda s: s.values[:3] + s.values[4:]),
    _operator("lt", lambda s: {"gteq": s.at(0), "lt": s.at(3)}, lambda s: s.values[:3]),
    _operator("gt", lambda s: {"gt": s.at(3), "lteq": s.at(VALUES - 1)}, lambda s: s.values[4:]),
    _operator("lteq", lambda s: {"gteq": s.at(0), "lteq": s.at(3)}, lambda s: s.values[:4]),
    _operator("gteq", lambda s: {"gteq": s.at(3), "lteq": s.at(VALUES - 1)}, lambda s: s.values[3:]),
    _operator("select_maximum", lambda s: {**_within(s), "select": "maximum"}, lambda s: [s.values[-1]]),
    _operator("select_minimum", lambda s: {**_within(s), "select": "minimum"}, lambda s: [s.values[0]]),
    _operator("other_offset", lambda s: {"eq": format_time(s.times[2], _zone(-5))}, lambda s: [s.values[2]]),
]


def _zone(hours: int) -> timezone:
    return timezone(timedelta(hours=hours))


async def check_paging(s: Session) -> None:
    size = 3
    key = Key(s.point, "time", {"gteq": s.at(0), "lteq": s.at(VALUES - 1)})
    q = Query(id=str(uuid.uuid4()), type="storage", keys=[key], acceptable_size=str(size))
    seen: list[str] = []
    pages = 0
    while True:
        _, t, raw = await s.post("queryRQ", transport_xml(query=q))
        expect(t is not None and t.error is None, f"page {pages + 1}: {raw[:300]!r}")
        assert t is not None
        pages += 1
        page = [v.text for p in t.all_points() for v in p.values]
        expect(len(page) <= size, f"page {pages} holds {len(page)} values, acceptableSize is {size}")
        seen += page
        cursor = t.query.cursor if t.query else None
        if not cursor:
            break
        expect(pages < 20, "the cursor never ends")
        q = Query(**{**q.__dict__, "cursor": cursor})
    expect(pages == math.ceil(VALUES / size), f"{pages} pages for {VALUES} values at {size} a page")
    expect(seen == s.values, f"the pages together gave {seen}, expected {s.values}")


async def check_trap(s: Session) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(body=envelope("dataRS", transport_xml(ok=True)), content_type="text/xml")

    app = web.Application()
    app.router.add_post("/callback", callback)
    runner = web.AppRunner(app)
    await runner.setup()
    host = os.environ.get("MDMHUB_CONFORMANCE_CALLBACK_HOST", "127.0.0.1")
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        q = Query(id=str(uuid.uuid4()), type="stream", ttl="60", callback_data=f"http://{host}:{port}/callback",
                  keys=[Key(s.point, "time", trap="changed")])
        _, t, raw = await s.post("queryRQ", transport_xml(query=q))
        expect(t is not None and t.ok, f"TRAP registration not answered OK: {raw[:300]!r}")
        new_time = s.times[-1] + timedelta(minutes=30)
        pts = [Point(s.point, [Value(format_time(new_time), "99.5")])]
        _, t, raw = await s.post("dataRQ", transport_xml(header=False, points=pts))
        expect(t is not None and t.ok, f"WRITE for the TRAP not answered OK: {raw[:300]!r}")
        try:
            pushed = await asyncio.wait_for(received.get(), 10)
        except TimeoutError:
            raise CheckFailed("no TRAP callback within 10 s of the WRITE") from None
        _, cb = parse_envelope(pushed)
        values = [(v.time, v.text) for p in cb.points if p.id == s.point for v in p.values]
        expect(cb.query is not None and cb.query.id == q.id, "the callback does not carry the registered query")
        expect(len(values) == 1 and values[0][1] == "99.5" and values[0][0] is not None
               and parse_time(values[0][0]) == new_time, f"the callback carried {values}")
        cancel = Query(**{**q.__dict__, "ttl": "0"})
        await s.post("queryRQ", transport_xml(query=cancel))
    finally:
        await runner.cleanup()


async def check_error_point_not_found(s: Session) -> None:
    t = await s.query([Key(f"http://conformance.invalid/{uuid.uuid4()}", "time")])
    expect(_error_type(t) == "POINT_NOT_FOUND", f"unknown id gave {t.error}")
    expect(t.query is not None, "the query is not echoed with the error")


async def check_error_invalid_request(s: Session) -> None:
    status, t, raw = await s.post("dataRQ", f'<transport xmlns="{FIAP_NS}"/>')
    expect(status == 200 and _error_type(t) == "INVALID_REQUEST",
           f"a WRITE without body gave HTTP {status}: {raw[:300]!r}")


async def check_error_too_many_values(s: Session) -> None:
    base = s.times[0] - timedelta(days=1)
    pts = [Point(s.point, [Value(format_time(base + timedelta(seconds=i)), "1") for i in range(6001)])]
    status, t, raw = await s.post("dataRQ", transport_xml(header=False, points=pts))
    expect(status == 200 and _error_type(t) == "TOO_MANY_VALUES", f"6001 values gave {raw[:300]!r}")


async def check_error_query_not_supported(s: Session) -> None:
    t = await s.query([])
    expect(_error_type(t) == "QUERY_NOT_SUPPORTED", f"a query with no keys gave {t.error}")


async def check_error_invalid_cursor(s: Session) -> None:
    t = await s.query([Key(s.point, "time")], cursor=str(uuid.uuid4()))
    expect(_error_type(t) == "INVALID_CURSOR", f"an unknown cursor gave {t.error}")


async def check_malformed_gives_soap_fault(s: Session) -> None:
    status, _, raw = await s.post("dataRQ", "", raw=b"<soapenv:Envelope")
    expect(status == 500 and b"Fault" in raw, f"malformed XML gave HTTP {status}: {raw[:200]!r}")


CHECKS: list[Callable[[Session], Awaitable[str | None]]] = [
    check_wsdl, check_write, check_write_again_same_values, check_write_another_value_for_a_stored_time,
    check_fetch_all, *OPERATORS, check_paging,
    check_trap, check_error_point_not_found, check_error_invalid_request, check_error_too_many_values,
    check_error_query_not_supported, check_error_invalid_cursor, check_malformed_gives_soap_fault,
]
SKIPPED = {"check_error_server_error": "SERVER_ERROR cannot be provoked from outside the storage"}


async def run_checks(target: str, point: str = DEFAULT_POINT) -> list[Result]:
    s = Session(target, point)
    results: list[Result] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        s.http = http
        for check in CHECKS:
            started = time.perf_counter()
            name = check.__name__.removeprefix("check_")
            try:
                note = await check(s)
                results.append(Result(name, "passed", time.perf_counter() - started, note or ""))
            except CheckFailed as exc:
                results.append(Result(name, "failed", time.perf_counter() - started, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a crash in one check is that check's failure
                results.append(Result(name, "failed", time.perf_counter() - started,
                                      f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    results += [Result(n.removeprefix("check_"), "skipped", 0.0, why) for n, why in SKIPPED.items()]
    return results


def junit_xml(results: list[Result], target: str) -> str:
    failures = sum(r.status == "failed" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    cases = []
    for r in results:
        inner = ""
        if r.status == "failed":
            inner = f"<failure message={quoteattr(r.message.splitlines()[0] if r.message else '')}>" \
                    f"{escape(r.message)}</failure>"
        elif r.status == "skipped":
            inner = f"<skipped message={quoteattr(r.message)}/>"
        cases.append(f'  <testcase classname="ieee1888" name={quoteattr(r.name)} time="{r.seconds:.3f}">'
                     f"{inner}</testcase>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="ieee1888" tests="{len(results)}" '
            f'failures="{failures}" skipped="{skipped}" hostname={quoteattr(target)}>\n'
            + "\n".join(cases) + "\n</testsuite>\n")


def report_text(results: list[Result], target: str) -> str:
    lines = [f"IEEE 1888 storage conformance: {target}", ""]
    for r in results:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r.status]
        lines.append(f"  {mark}  {r.name}" + (f"  -- {r.message.splitlines()[0]}" if r.message else ""))
    passed = sum(r.status == "passed" for r in results)
    failed = sum(r.status == "failed" for r in results)
    lines += ["", f"{passed} passed, {failed} failed, {len(results) - passed - failed} skipped"]
    return "\n".join(lines) + "\n"


def run(target: str | None, out_dir: Path | None = None) -> int:
    if not target:
        print("usage: mdmhub conformance ieee1888 --target http://host/fiap", file=sys.stderr)
        return 2
    point = os.environ.get("MDMHUB_CONFORMANCE_POINT", DEFAULT_POINT)
    results = asyncio.run(run_checks(target, point))
    folder = out_dir or Path(os.environ.get("MDMHUB_CONFORMANCE_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conformance-ieee1888.xml").write_text(junit_xml(results, target), encoding="utf-8")
    text = report_text(results, target)
    (folder / "conformance-ieee1888.txt").write_text(text, encoding="utf-8")
    print(text, end="")
    return 1 if any(r.status == "failed" for r in results) else 0


SUITES["ieee1888"] = run
