"""The hub as an IEEE 1888 gateway: store-and-forward to a second hub across a real outage, and
periodic FETCH with cursor paging from a remote storage."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from adapters.ieee1888 import Fetcher, Forwarder
from adapters.ieee1888.client import FiapClient, FiapTransportError
from adapters.ieee1888.messages import Key, Point, Value, format_time
from hub.app import create_app
from hub.config import FiapFetchSection, FiapUpstreamSection, Settings
from hub.db import Database
from hub.model import Alert, FiapOutbox
from hub.runtime import Hub
from hub.services.points import PointIn

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "mappings" / "ieee1888_points.toml"
TEMP = "http://demo.mdmhub.example/site1/env/temperature"
POWER = "http://demo.mdmhub.example/site1/pv/power"
LOCAL_ONLY = "http://demo.mdmhub.example/site1/env/local-only"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """A second hub (its own SQLite store) serving /fiap on a fixed port that can be stopped and started."""

    def __init__(self, hub: Hub, port: int) -> None:
        self.hub, self.port = hub, port
        self.runner: web.AppRunner | None = None
        self.url = f"http://127.0.0.1:{port}/fiap"

    async def start(self) -> None:
        self.runner = web.AppRunner(create_app(self.hub))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None


@pytest.fixture
async def upstream(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Upstream]:
    path = tmp_path / "upstream.db"
    shutil.copy(request.getfixturevalue("sqlite_template"), path)
    settings = Settings.model_validate({"database": {"url": f"sqlite:///{path}"}, "data": {"dir": tmp_path / "up"},
                                        "log": {"format": "text"}})
    hub = Hub(settings, Database.from_url(settings.database_url))
    hub.fiap.points.load_mapping(MAPPING)
    up = Upstream(hub, free_port())
    await up.start()
    yield up
    if up.runner is not None:
        await up.stop()
    hub.close()


def values(n: int, start: int = 0, point: str = TEMP) -> list[Point]:
    return [Point(point, [Value(format_time(T0 + timedelta(minutes=i)), f"{i}.5") for i in range(start, start + n)])]


async def upstream_values(up: Upstream, point: str = TEMP) -> list[str]:
    async with FiapClient() as c:
        got = await c.fetch(up.url, [Key(point, "time")], acceptable_size=4)
    return [v.text for p in got for v in p.values]


async def queued(hub: Hub) -> list[FiapOutbox]:
    def rows() -> list[FiapOutbox]:
        with hub.db.session() as s:
            return list(s.scalars(select(FiapOutbox).order_by(FiapOutbox.id)))
    return await hub.run(rows)


async def test_forwarding_survives_an_upstream_outage_without_loss(hub: Hub, upstream: Upstream,
                                                                   aiohttp_server: Any) -> None:
    await hub.run(hub.fiap.points.load_mapping, MAPPING)
    await hub.run(hub.fiap.points.register, [PointIn(point_id=LOCAL_ONLY, kind="temperature")])
    link = FiapUpstreamSection(name="up", url=upstream.url, points=["http://demo.mdmhub.example/site1/env/*"],
                               batch_values=4, retry_min_s=0.05, retry_max_s=0.2, timeout_s=2)
    hub.settings.ieee1888.upstreams.append(link)
    server = await aiohttp_server(create_app(hub))
    here = str(server.make_url("/fiap"))
    forwarder = Forwarder(hub, link)

    async with FiapClient() as gw:  # a gateway writing into this hub with the hub's own client
        await gw.write(here, values(3) + [Point(POWER, [Value(format_time(T0), "1.5")])])
        assert len(await queued(hub)) == 3  # pv/power is not forwarded to this upstream
        assert await forwarder.run_once() == 3
        assert await upstream_values(upstream) == ["0.5", "1.5", "2.5"]
        assert await queued(hub) == []

        await upstream.stop()  # the upstream goes away
        await gw.write(here, values(6, start=3))
        assert await forwarder.run_once() == 0
        rows = await queued(hub)
        assert len(rows) == 6 and all(r.state == "queued" for r in rows)
        assert rows[0].attempts == 1 and "ClientConnectorError" in (rows[0].last_error or "")
        await _wait(0.25)
        assert await forwarder.run_once() == 0  # still down: kept, back-off grows
        assert max(r.attempts for r in await queued(hub)) == 2

        await upstream.start()  # back on the same address
        assert await _forward_all(forwarder, 6) == 6  # as each row's back-off runs out
        assert await upstream_values(upstream) == [f"{i}.5" for i in range(9)]
        assert await queued(hub) == []

        # a value the upstream refuses for good is set aside (with an alert); the rest goes through
        await gw.write(here, values(1, start=20, point=LOCAL_ONLY) + values(2, start=9))
        assert await forwarder.run_once() == 2
        rows = await queued(hub)
        assert [(r.point_id, r.state) for r in rows] == [(LOCAL_ONLY, "rejected")]
        assert "POINT_NOT_FOUND" in (rows[0].last_error or "")
        with hub.db.session() as s:
            assert s.scalars(select(Alert.code).where(Alert.code == "ieee1888.forward-rejected")).all()
        assert await upstream_values(upstream) == [f"{i}.5" for i in range(11)]


async def test_periodic_fetch_follows_the_cursor_and_takes_only_newer_values(hub: Hub, upstream: Upstream) -> None:
    await hub.run(hub.fiap.points.load_mapping, MAPPING)
    async with FiapClient() as gw:
        await gw.write(upstream.url, values(7) + [Point(POWER, [Value(format_time(T0), "3.25")])])
    job = FiapFetchSection(name="remote", url=upstream.url, points=[TEMP, POWER], acceptable_size=2)
    fetcher = Fetcher(hub, job)
    assert await fetcher.run_once() == {"fetched": 8, "stored": 8}  # 8 values over 4 pages
    assert await fetcher.run_once() == {"fetched": 0, "stored": 0}
    async with FiapClient() as gw:
        await gw.write(upstream.url, values(2, start=7))
    assert await fetcher.run_once() == {"fetched": 2, "stored": 2}
    stored = await hub.run(hub.fiap.store.latest_times, [TEMP, POWER])
    assert stored == {TEMP: T0 + timedelta(minutes=8), POWER: T0}


async def test_client_reports_errors_and_unreachable_storages_apart(upstream: Upstream) -> None:
    from adapters.ieee1888.messages import FiapError

    async with FiapClient(timeout_s=2) as c:
        with pytest.raises(FiapError) as err:
            await c.write(upstream.url, values(1, point="http://demo.mdmhub.example/nope"))
        assert err.value.type == "POINT_NOT_FOUND"
        with pytest.raises(FiapTransportError):
            await c.write(f"http://127.0.0.1:{free_port()}/fiap", values(1))


async def _forward_all(forwarder: Forwarder, expected: int, within_s: float = 10.0) -> int:
    """Run the forwarder until ``expected`` values went upstream (rows come due as their back-off
    runs out, so on a busy machine it may take more than one run); returns how many went."""
    import asyncio

    sent, deadline = 0, asyncio.get_running_loop().time() + within_s
    while sent < expected and asyncio.get_running_loop().time() < deadline:
        sent += await forwarder.run_once()
        await asyncio.sleep(0.05)
    return sent


async def _wait(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
