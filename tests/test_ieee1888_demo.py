"""The demo site: its points are registered and the simulated gateway's values can be fetched."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.ieee1888.client import FiapClient
from adapters.ieee1888.demo_gateway import SITE, run_demo_gateway
from adapters.ieee1888.messages import Key
from hub.app import create_app
from hub.demo import seed_ieee1888_site
from hub.runtime import Hub


async def test_demo_gateway_feeds_the_site_and_fetch_returns_it(hub: Hub, aiohttp_server: Any) -> None:
    assert await hub.run(seed_ieee1888_site, hub) == "13 IEEE 1888 points on the demo site"
    server = await aiohttp_server(create_app(hub))
    url = str(server.make_url("/fiap"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_demo_gateway(url, stop, every_s=0.1, backfill_hours=2))
    async with FiapClient() as c:
        for _ in range(100):
            got = await c.fetch(url, [Key(SITE + "pv/power", "time"), Key(SITE + "env/temperature", "time",
                                                                                select="maximum")])
            if got and len(got[0].values) >= 24:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        assert len(got[0].values) >= 24  # two hours at 5 minutes
        assert len(got[1].values) == 1
        energy = await c.fetch(url, [Key(SITE + "ev1/charge-energy", "time")])
        assert len(energy[0].values) >= 3  # the 30-minute grid only
