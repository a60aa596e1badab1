"""The IEEE 1888 storage endpoint: SOAP 1.1 at /fiap, WSDL at /fiap?wsdl.

Dispatches on the Body element (``{http://soap.fiap.org/}dataRQ`` / ``queryRQ``), so a SOAPAction
with or without quotes, or none, is fine. IEEE 1888 errors travel in ``header/error`` with HTTP 200
(the query echoed); only requests that cannot be read as SOAP get a SOAP Fault with HTTP 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.ieee1888.messages import (
    UUID_RE,
    FiapError,
    Malformed,
    Point,
    PointSet,
    Query,
    Transport,
    Value,
    envelope,
    fault,
    format_time,
    parse_envelope,
    parse_time,
    read_capped,
    transport_xml,
)
from adapters.ieee1888.trap import TrapManager
from hub.runtime import Hub
from hub.services.errors import Conflict, InvalidInput, ServiceError
from hub.services.fiap_store import Condition, ForbiddenPoints, SampleTuple, UnregisteredPoints
from hub.services.points import Caller
from hub.services.points import Point as RegisteredPoint

log = logging.getLogger("mdmhub.ieee1888")
WSDL_FILE = Path(__file__).resolve().parents[2] / "schemas" / "ieee1888" / "FIAPStorage.wsdl"
PLACEHOLDER = 'location="http://localhost/fiap"'


@dataclass
class _KeyPlan:
    key_id: str
    point: RegisteredPoint | None  # None: a pointSet key
    attr: str = "time"
    conditions: list[Condition] = field(default_factory=list)
    select: str | None = None
    children: list[tuple[str, bool]] = field(default_factory=list)


@dataclass
class _Cursor:
    client: str
    query: Query
    plan: list[_KeyPlan]
    size: int
    reader: str | None = None
    index: int = 0
    after: datetime | None = None
    used: float = field(default_factory=time.monotonic)


class FiapEndpoint:
    """Request handling for one hub; holds the cursor sessions and the TRAP subscriptions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings.ieee1888
        self.cursors: dict[str, _Cursor] = {}
        self.traps = TrapManager(max_per_client=self.settings.max_traps_per_client,
                                 max_ttl_s=self.settings.max_trap_ttl_s, timeout_s=self.settings.trap_timeout_s)
        self._wsdl = WSDL_FILE.read_text(encoding="utf-8")

    # HTTP -------------------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.Response:
        if not any(k.lower() == "wsdl" for k in request.query):
            return web.Response(status=405, text="POST SOAP 1.1 requests here; the WSDL is at ?wsdl",
                                headers={"Allow": "GET, POST"})
        address = str(request.url.with_query(None))
        return web.Response(body=self._wsdl.replace(PLACEHOLDER, f'location="{address}"').encode(),
                            content_type="text/xml", charset="utf-8")

    async def post(self, request: web.Request) -> web.Response:
        cap = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > cap:
            return _fault(f"request larger than {cap} bytes refused unread", status=413)
        data = await read_capped(request.content, cap)
        if data is None:
            return _fault(f"request larger than {cap} bytes refused", status=413)
        try:
            op, transport = parse_envelope(data)
        except Malformed as exc:
            log.info("ieee1888 request refused", extra={"remote": request.remote, "reason": str(exc)[:200]})
            return _fault(str(exc))
        except FiapError as exc:
            return _answer("dataRS", transport_xml(error=(exc.type, exc.message)))
        try:
            if op == "dataRQ":
                return await self._data(request, transport)
            if op == "queryRQ":
                return await self._query(request, transport)
            return _fault(f"{op} is an answer, not a request")
        except Exception:  # noqa: BLE001 - an unexpected fault still answers in the protocol's form
            log.exception("ieee1888 request failed")
            resp = "dataRS" if op == "dataRQ" else "queryRS"
            return _answer(resp, transport_xml(error=("SERVER_ERROR", "internal error; the request was not "
                                                                      "completed"), query=transport.query))

    # WRITE ------------------------------------------------------------------------------------

    async def _data(self, request: web.Request, t: Transport) -> web.Response:
        try:
            report = await self.write(t, caller_of(request))
        except FiapError as exc:
            return _answer("dataRS", transport_xml(error=(exc.type, exc.message)))
        log.info("ieee1888 write", extra={"remote": request.remote, **report})
        return _answer("dataRS", transport_xml(ok=True))

    async def write(self, t: Transport, caller: Caller | None) -> dict[str, Any]:
        """Store a WRITE's values; raises FiapError with the standard type when refused."""
        if not t.has_body:
            raise FiapError("INVALID_REQUEST", "a data request needs a body")
        points = t.all_points()
        count = sum(len(p.values) for p in points)
        if count > self.settings.max_write_values:
            raise FiapError("TOO_MANY_VALUES", f"{count} values in one WRITE; at most "
                                               f"{self.settings.max_write_values}")
        samples: list[SampleTuple] = []
        add = samples.append
        pid = ""
        try:
            for p in points:
                pid = p.id
                for when, text in p.values:
                    add((pid, parse_time(when) if when is not None else None, text))
        except ValueError as exc:
            raise FiapError("INVALID_REQUEST", f"{pid}: {exc}") from None
        known = [p.id for p in points if not p.values]
        if known:  # a point with no value still has to be a registered one
            resolved = await self.hub.run(self.hub.fiap.points.resolve, known)
            missing = [pid for pid in known if pid not in resolved]
            if missing:
                raise FiapError("POINT_NOT_FOUND", f"point not found: {', '.join(missing[:5])}")
        try:
            report = await self.hub.run(self.hub.fiap.store.write, samples, caller)
        except UnregisteredPoints as exc:
            raise FiapError("POINT_NOT_FOUND", exc.message) from None
        except ForbiddenPoints as exc:
            raise FiapError("FORBIDDEN", exc.message) from None
        except (InvalidInput, Conflict) as exc:
            raise FiapError("INVALID_REQUEST", exc.message) from None
        except ServiceError as exc:
            raise FiapError("SERVER_ERROR", exc.message) from None
        if report.new:
            self.traps.notify(report.new)
        return report.as_dict()

    # FETCH and TRAP ---------------------------------------------------------------------------

    async def _query(self, request: web.Request, t: Transport) -> web.Response:
        q = t.query
        try:
            if q is None:
                raise FiapError("INVALID_REQUEST", "a query request needs header/query")
            if not UUID_RE.match(q.id):
                raise FiapError("INVALID_REQUEST", f"query id {q.id[:60]!r} is not a UUID")
            client = request.remote or "?"
            caller = caller_of(request)
            if q.cursor is None:
                self._check_reader(caller, [k.id for k in q.keys])
            if q.type == "stream":
                keys = [k.id for k in q.keys]
                registered = await self.hub.run(self.hub.fiap.points.resolve, keys)
                self.traps.register(q, client, registered)
                return _answer("queryRS", transport_xml(ok=True, query=q))
            if q.type != "storage":
                raise FiapError("INVALID_REQUEST", f"query type {q.type!r} is neither storage nor stream")
            cursor = await self._cursor_for(q, client, caller)
            body, next_cursor = await self._page(cursor)
        except FiapError as exc:
            return _answer("queryRS", transport_xml(error=(exc.type, exc.message), query=q))
        echo = Query(**{**q.__dict__, "cursor": next_cursor})
        if next_cursor is None:
            self.cursors.pop(q.cursor or "", None)
        return _answer("queryRS", transport_xml(ok=True, query=echo, point_sets=body[0], points=body[1]))

    def _check_reader(self, caller: Caller, key_ids: list[str]) -> None:
        """FORBIDDEN unless the reader lists are open or ``caller`` is a reader allowed every point
        key (pointSet keys, ending in '/', are narrowed to the reader's points instead)."""
        readers = self.hub.fiap.points.readers
        if not readers.writers:
            return
        name, denied = readers.forbidden(caller, [k for k in key_ids if not k.endswith("/")])
        if name is None and readers.identify(caller) is None:
            raise FiapError("FORBIDDEN", "an unidentified caller may not read; send the credential of a reader")
        if denied:
            raise FiapError("FORBIDDEN", f"reader {name!r} may not read {', '.join(denied[:5])}"
                                         + (f" and {len(denied) - 5} more" if len(denied) > 5 else ""))

    async def _cursor_for(self, q: Query, client: str, caller: Caller) -> _Cursor:
        now = time.monotonic()
        for cid in [c for c, s in self.cursors.items() if now - s.used > self.settings.cursor_idle_s]:
            del self.cursors[cid]
        if q.cursor is not None:
            if not UUID_RE.match(q.cursor):
                raise FiapError("INVALID_REQUEST", f"cursor {q.cursor[:60]!r} is not a UUID")
            cur = self.cursors.get(q.cursor)
            if cur is None or cur.client != client or (
                    cur.reader is not None and self.hub.fiap.points.readers.who(caller) != cur.reader):
                raise FiapError("INVALID_CURSOR", "unknown or expired cursor")
            cur.used = now
            return cur
        if not q.keys:
            raise FiapError("QUERY_NOT_SUPPORTED", "a query with no keys")
        if len(q.keys) > self.settings.max_keys:
            raise FiapError("TOO_MANY_KEYS", f"{len(q.keys)} keys; at most {self.settings.max_keys}")
        size = self.settings.default_acceptable_size
        if q.acceptable_size is not None:
            try:
                size = int(q.acceptable_size)
                if size < 1:
                    raise ValueError
            except ValueError:
                raise FiapError("INVALID_REQUEST", "acceptableSize is not a positive integer") from None
        size = min(size, self.settings.max_acceptable_size)
        registered = await self.hub.run(self.hub.fiap.points.resolve, [k.id for k in q.keys])
        readers = self.hub.fiap.points.readers
        visible = (lambda pid: readers.allows(caller, pid)) if readers.writers else None
        plan: list[_KeyPlan] = []
        for k in q.keys:
            if k.trap is not None:
                raise FiapError("INVALID_REQUEST", "trap is only for stream queries")
            if k.attr_name not in ("time", "value"):
                raise FiapError("INVALID_REQUEST", f"attrName {k.attr_name!r} is neither time nor value")
            if k.select is not None and k.select not in ("minimum", "maximum"):
                raise FiapError("QUERY_NOT_SUPPORTED", f"select {k.select!r} is not supported")
            point = registered.get(k.id)
            if point is None:
                children = await self.hub.run(self.hub.fiap.points.children, k.id, visible) \
                    if k.id.endswith("/") else []
                if not children:
                    raise FiapError("POINT_NOT_FOUND", f"point not found: {k.id}")
                plan.append(_KeyPlan(k.id, None, children=children))
                continue
            conds = [Condition(op, _bound(k.attr_name, point, op, raw)) for op, raw in k.conditions.items()]
            select = k.select or ("minimum" if k.attr_name == "time" and "eq" in k.conditions else None)
            plan.append(_KeyPlan(k.id, point, k.attr_name, conds, select))
        cur = _Cursor(client, q, plan, size, readers.who(caller))
        return cur

    async def _page(self, cur: _Cursor) -> tuple[tuple[list[PointSet], list[Point]], str | None]:
        """One page: up to ``size`` values from where the cursor stands; a cursor id when more remain."""
        point_sets: list[PointSet] = []
        points: list[Point] = []
        room = cur.size
        while cur.index < len(cur.plan):
            kp = cur.plan[cur.index]
            if kp.point is None:
                point_sets.append(PointSet(kp.key_id, [PointSet(c) for c, is_set in kp.children if is_set],
                                           [Point(c) for c, is_set in kp.children if not is_set]))
                cur.index += 1
                continue
            if room == 0:
                break
            rows = await self.hub.run(self.hub.fiap.store.fetch, kp.point, attr=kp.attr,  # type: ignore[arg-type]
                                      conditions=kp.conditions, select_=kp.select, after=cur.after, limit=room + 1)
            more = len(rows) > room
            rows = rows[:room]
            if rows or cur.after is None:
                points.append(Point(kp.key_id, [Value(format_time(t), v) for t, v in rows]))
            room -= len(rows)
            if more:
                cur.after = rows[-1][0]
                break
            cur.index += 1
            cur.after = None
        if cur.index >= len(cur.plan):
            return (point_sets, points), None
        cid = next((c for c, s in self.cursors.items() if s is cur), None)
        if cid is None:
            if sum(1 for s in self.cursors.values() if s.client == cur.client) >= self.settings.max_cursors_per_client:
                raise FiapError("TOO_MANY_CURSOR_SESSIONS", f"at most {self.settings.max_cursors_per_client} "
                                                            "open cursors per client")
            cid = str(uuid.uuid4())
            self.cursors[cid] = cur
        cur.used = time.monotonic()
        return (point_sets, points), cid


def _bound(attr: str, point: RegisteredPoint, op: str, raw: str) -> datetime | float | str:
    if attr == "time":
        try:
            return parse_time(raw)
        except ValueError as exc:
            raise FiapError("INVALID_REQUEST", f"{op}={raw[:60]!r}: {exc}") from None
    if point.numeric:
        try:
            return float(raw)
        except ValueError:
            raise FiapError("INVALID_REQUEST", f"{op}={raw[:60]!r} is not a number") from None
    return raw


def caller_of(request: web.Request) -> Caller:
    """HTTP Basic credentials (when sent) and the source address."""
    user = password = None
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = None
    return Caller(user=user, password=password, remote=request.remote)


def _answer(op: str, transport: str) -> web.Response:
    return web.Response(body=envelope(op, transport), content_type="text/xml", charset="utf-8")


def _fault(message: str, status: int = 500) -> web.Response:
    return web.Response(status=status, body=fault(message), content_type="text/xml", charset="utf-8")
