"""Concurrent WRITEs of one (point, time): the duplicate check and the insert are one atomic step,
so of two writers sending different values at the same instant exactly one is stored and answered
OK, the other is refused with INVALID_REQUEST; the same value sent twice at once is OK twice and
stored once. Raced for real: threads released together, and concurrent HTTP requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from adapters.ieee1888.messages import FIAP_NS, SOAP_FIAP_NS, parse_envelope
from hub.app import create_app
from hub.model import FiapValue
from hub.runtime import Hub
from hub.services.errors import Conflict
from hub.services.fiap_store import Sample

ROOT = Path(__file__).resolve().parents[1]
TEMP = "http://demo.mdmhub.example/site1/env/temperature"
HUMID = "http://demo.mdmhub.example/site1/env/humidity"
VALUES = 200
"""Values per WRITE: enough that both writers are inside their store step at the same time."""
ROUNDS = 4


@pytest.fixture
async def storage(hub: Hub, aiohttp_server: Any) -> AsyncIterator[tuple[Hub, str]]:
    await hub.run(hub.fiap.points.load_mapping, ROOT / "mappings" / "ieee1888_points.toml")
    server = await aiohttp_server(create_app(hub))
    yield hub, str(server.make_url("/fiap"))


def _times(round_: int) -> list[datetime]:
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=round_)
    return [start + timedelta(minutes=m) for m in range(VALUES)]


def _samples(round_: int, value: str, reverse: bool = False) -> list[Sample]:
    """Values for two points at the round's times; ``reverse`` sends them in the opposite order
    (two writers locking the same keys in opposite orders must not deadlock)."""
    out = [Sample(p, t, value) for p in (TEMP, HUMID) for t in _times(round_)]
    return out[::-1] if reverse else out


def _stored(hub: Hub) -> dict[tuple[str, datetime], str]:
    with hub.db.session() as s:
        return {(r.point_id, r.time): r.value for r in s.scalars(select(FiapValue))}


def _race(fns: list[Any]) -> list[Any]:
    """Run ``fns`` in threads released by one barrier; each result or the exception raised."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - the race's outcome is what the test checks
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_writers_of_different_values_at_once_one_wins_the_other_is_refused(hub: Hub) -> None:
    hub.fiap.points.load_mapping(ROOT / "mappings" / "ieee1888_points.toml")
    store = hub.fiap.store
    for r in range(ROUNDS):
        a, b = _samples(r, "1.5"), _samples(r, "2.5", reverse=True)
        results = _race([lambda a=a: store.write(a), lambda b=b: store.write(b)])
        refused = [x for x in results if isinstance(x, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], Conflict), results
        winner = "1.5" if isinstance(results[1], Exception) else "2.5"
        ok = next(x for x in results if not isinstance(x, Exception))
        assert ok.stored == 2 * VALUES and ok.duplicates == 0
        stored = {k: v for k, v in _stored(hub).items() if k[1] in set(_times(r))}
        assert len(stored) == 2 * VALUES and set(stored.values()) == {winner}  # all of one writer, none of the other


def test_the_same_values_written_twice_at_once_are_accepted_twice_and_stored_once(hub: Hub) -> None:
    hub.fiap.points.load_mapping(ROOT / "mappings" / "ieee1888_points.toml")
    store = hub.fiap.store
    a, b = _samples(0, "7.0"), _samples(0, "7.0", reverse=True)
    results = _race([lambda: store.write(a), lambda: store.write(b)])
    assert not any(isinstance(x, Exception) for x in results), results
    assert sorted((x.stored, x.duplicates) for x in results) == [(0, 2 * VALUES), (2 * VALUES, 0)]
    assert len(_stored(hub)) == 2 * VALUES


def _message(round_: int, value: str, reverse: bool = False) -> bytes:
    points = "".join(f'<point id="{p}">' + "".join(f'<value time="{t.isoformat()}">{value}</value>'
                                                  for t in (_times(round_)[::-1] if reverse else _times(round_)))
                     + "</point>" for p in ((HUMID, TEMP) if reverse else (TEMP, HUMID)))
    return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
            f'"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><ns2:dataRQ xmlns:ns2="{SOAP_FIAP_NS}">'
            f'<transport xmlns="{FIAP_NS}"><body>{points}</body></transport></ns2:dataRQ></soapenv:Body>'
            f'</soapenv:Envelope>').encode()


async def test_concurrent_http_writes_of_one_time_with_different_values_one_ok_one_invalid_request(
        storage: tuple[Hub, str]) -> None:
    hub, url = storage
    async with aiohttp.ClientSession() as s:
        async def post(body: bytes) -> tuple[bool, tuple[str, str] | None]:
            async with s.post(url, data=body, headers={"Content-Type": "text/xml;charset=UTF-8",
                                                       "SOAPAction": '"http://soap.fiap.org/data"'}) as r:
                assert r.status == 200
                t = parse_envelope(await r.read())[1]
                return t.ok, t.error

        for r in range(ROUNDS):
            answers = await asyncio.gather(post(_message(r, "1.5")), post(_message(r, "2.5", reverse=True)))
            assert sorted(ok for ok, _ in answers) == [False, True], answers
            error = next(e for ok, e in answers if not ok)
            assert error is not None and error[0] == "INVALID_REQUEST" and "differ" in error[1]
            winner = "1.5" if answers[0][0] else "2.5"
            stored = {k: v for k, v in _stored(hub).items() if k[1] in set(_times(r))}
            assert len(stored) == 2 * VALUES and set(stored.values()) == {winner}
        same = await asyncio.gather(post(_message(ROUNDS, "3.0")), post(_message(ROUNDS, "3.0", reverse=True)))
        assert same == [(True, None), (True, None)]
