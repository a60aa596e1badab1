"""The hub's IEEE 1888 client (the hub as APP/GW): WRITE to, FETCH from and TRAP on other storages.

Requests go out in the reference C gateway's wire form (fiap elements in a default namespace,
double-quoted attributes on one line, self-closing keys), which every storage accepts. An answer
with ``header/error`` is a :class:`FiapError` whatever the HTTP status; anything that is not an
IEEE 1888 answer (connection failure, timeout, SOAP Fault, HTML error page) is a
:class:`FiapTransportError`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import aiohttp

from adapters.ieee1888.messages import (
    SOAP_FIAP_NS,
    FiapError,
    Key,
    Malformed,
    Point,
    Query,
    Transport,
    Value,
    envelope,
    parse_envelope,
    read_capped,
    transport_xml,
)

MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_PAGES = 100_000


class FiapTransportError(Exception):
    """The storage could not be reached or did not answer in IEEE 1888 form (retry later)."""


class FiapClient:
    def __init__(self, *, timeout_s: float = 30.0, auth: aiohttp.BasicAuth | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.auth = auth
        self._session = session
        self._own = session is None

    async def __aenter__(self) -> FiapClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, url: str, op: str, transport: str) -> Transport:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        body = envelope(op, transport)
        action = "query" if op == "queryRQ" else "data"
        try:
            async with self._session.post(url, data=body, timeout=self.timeout, auth=self.auth, headers={
                    "Content-Type": "text/xml;charset=UTF-8", "SOAPAction": f'"{SOAP_FIAP_NS}{action}"'}) as resp:
                status = resp.status
                data = await read_capped(resp.content, MAX_ANSWER_BYTES)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise FiapTransportError(f"{url}: {type(exc).__name__}: {exc}") from None
        if data is None:
            raise FiapTransportError(f"{url}: answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            _, t = parse_envelope(data)
        except (Malformed, FiapError) as exc:
            raise FiapTransportError(f"{url}: HTTP {status}: {exc}") from None
        if t.error is not None:
            raise FiapError(*t.error)
        if not t.ok:
            raise FiapTransportError(f"{url}: HTTP {status}: the answer carries neither OK nor error")
        return t

    async def write(self, url: str, points: Sequence[Point]) -> None:
        """WRITE ``points``; returns when the storage answered OK."""
        await self._post(url, "dataRQ", transport_xml(header=False, points=list(points)))

    async def fetch(self, url: str, keys: Sequence[Key], acceptable_size: int = 1000) -> list[Point]:
        """FETCH ``keys``, following the cursor to the end; points split over pages (or repeated
        in one answer) are merged, in first-seen order."""
        q = Query(id=str(uuid.uuid4()), type="storage", keys=list(keys), acceptable_size=str(acceptable_size))
        merged: dict[str, Point] = {}
        for _ in range(MAX_PAGES):
            t = await self._post(url, "queryRQ", transport_xml(query=q))
            for p in t.all_points():
                merged.setdefault(p.id, Point(p.id)).values.extend(p.values)
            cursor = t.query.cursor if t.query is not None else None
            if not cursor:
                return list(merged.values())
            q = Query(**{**q.__dict__, "cursor": cursor})
        raise FiapTransportError(f"{url}: more than {MAX_PAGES} pages")

    async def trap(self, url: str, keys: Sequence[Key], ttl: int, callback: str, query_id: str | None = None) -> str:
        """Register (or renew, with the same ``query_id``) a TRAP; returns the query id."""
        q = Query(id=query_id or str(uuid.uuid4()), type="stream", keys=list(keys), ttl=str(ttl),
                  callback_data=callback)
        await self._post(url, "queryRQ", transport_xml(query=q))
        return q.id


def values_of(points: Sequence[Point]) -> dict[str, list[Value]]:
    return {p.id: p.values for p in points}
