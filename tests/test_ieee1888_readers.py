"""Reader allow-lists on /fiap: with ``[[reader]]`` tables in the points file, FETCH and TRAP are for
the readers they name (HTTP Basic credential and/or source addresses), and only for their patterns.
Driven over real HTTP by the hub's own client."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.ieee1888 import FIAP_APP_KEY
from adapters.ieee1888.client import FiapClient
from adapters.ieee1888.messages import FiapError, Key, Query, transport_xml
from adapters.ieee1888.server import FiapEndpoint
from hub.app import create_app
from hub.runtime import Hub
from hub.services.fiap_store import Sample

SITE = "http://example.org/site/"
TEMP = SITE + "env/temperature"
HUMID = SITE + "env/humidity"
POWER = SITE + "pv/power"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP = aiohttp.BasicAuth("app", "r3ad")


@pytest.fixture
async def guarded(hub: Hub, aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[tuple[FiapEndpoint, str]]:
    """Three points with 30 values each; reader "app" may read env/* only; reader "far" is an
    address-only reader of a network the test client is not on."""
    mapping = tmp_path / "points.toml"
    digest = hashlib.sha256(b"r3ad").hexdigest()
    mapping.write_text("".join(f'[[point]]\npoint_id = "{p}"\nkind = "{k}"\n'
                               for p, k in ((TEMP, "temperature"), (HUMID, "humidity"), (POWER, "power")))
                       + f'[[reader]]\nname = "app"\npassword_sha256 = "{digest}"\npoints = ["{SITE}env/*"]\n'
                       + '[[reader]]\nname = "far"\naddresses = ["10.9.0.0/16"]\n')
    report = await hub.run(hub.fiap.points.load_mapping, mapping)
    assert report["readers"] == 2 and report["writers"] == 0
    samples = [Sample(p, T0 + timedelta(minutes=5 * n), f"{n}.0") for p in (TEMP, HUMID, POWER) for n in range(30)]
    await hub.run(hub.fiap.store.write, samples)
    app = create_app(hub)
    server = await aiohttp_server(app)
    yield app[FIAP_APP_KEY], str(server.make_url("/fiap"))


async def _error(coro: Any) -> str:
    with pytest.raises(FiapError) as exc:
        await coro
    return exc.value.type


async def test_fetch_is_for_readers_and_only_their_points(guarded: tuple[FiapEndpoint, str]) -> None:
    _, url = guarded
    async with FiapClient(auth=APP) as c:
        got = await c.fetch(url, [Key(TEMP, "time"), Key(HUMID, "time", {"gteq": "2026-01-01T01:00:00Z"})])
        assert [(p.id, len(p.values)) for p in got] == [(TEMP, 30), (HUMID, 18)]
        assert await _error(c.fetch(url, [Key(TEMP, "time"), Key(POWER, "time")])) == "FORBIDDEN"
    for auth in (None, aiohttp.BasicAuth("app", "wrong"), aiohttp.BasicAuth("far", "")):
        async with FiapClient(auth=auth) as c:
            assert await _error(c.fetch(url, [Key(TEMP, "time")])) == "FORBIDDEN"


async def test_a_point_set_key_shows_a_reader_only_what_it_may_read(guarded: tuple[FiapEndpoint, str]) -> None:
    _, url = guarded
    async with FiapClient(auth=APP) as c:
        t = await c._post(url, "queryRQ", transport_xml(query=Query(  # noqa: SLF001 - the raw answer
            str(uuid.uuid4()), "storage", [Key(SITE, "time")])))
    assert t.error is None
    (site,) = t.point_sets
    assert [ps.id for ps in site.point_sets] == [SITE + "env/"] and site.points == []


async def test_a_cursor_continues_only_for_the_reader_that_opened_it(guarded: tuple[FiapEndpoint, str]) -> None:
    _, url = guarded
    q = Query(str(uuid.uuid4()), "storage", [Key(TEMP, "time")], acceptable_size="10")
    async with FiapClient(auth=APP) as reader, FiapClient() as anonymous:
        first = await reader._post(url, "queryRQ", transport_xml(query=q))  # noqa: SLF001
        assert first.query is not None and first.query.cursor and len(first.points[0].values) == 10
        follow = Query(**{**q.__dict__, "cursor": first.query.cursor})
        assert await _error(anonymous._post(url, "queryRQ", transport_xml(query=follow))) == "INVALID_CURSOR"  # noqa: SLF001
        second = await reader._post(url, "queryRQ", transport_xml(query=follow))  # noqa: SLF001
        assert second.points[0].values[0].text == "10.0"


async def test_trap_is_for_readers_and_only_their_points(guarded: tuple[FiapEndpoint, str]) -> None:
    endpoint, url = guarded
    cb = "http://127.0.0.1:9/cb"
    async with FiapClient() as anonymous:
        assert await _error(anonymous.trap(url, [Key(TEMP, "time", trap="changed")], 60, cb)) == "FORBIDDEN"
    async with FiapClient(auth=APP) as c:
        assert await _error(c.trap(url, [Key(POWER, "time", trap="changed")], 60, cb)) == "FORBIDDEN"
        qid = await c.trap(url, [Key(TEMP, "time", trap="changed")], 60, cb)
    assert list(endpoint.traps.subs) == [qid]


async def test_without_readers_anyone_reads(hub: Hub, aiohttp_server: Any) -> None:
    from hub.services.points import PointIn

    await hub.run(hub.fiap.points.register, [PointIn(point_id=TEMP, kind="temperature")])
    await hub.run(hub.fiap.store.write, [Sample(TEMP, T0, "1.0")])
    server = await aiohttp_server(create_app(hub))
    async with FiapClient() as c:
        got = await c.fetch(str(server.make_url("/fiap")), [Key(TEMP, "time")])
    assert [(p.id, [v.text for v in p.values]) for p in got] == [(TEMP, ["1.0"])]
