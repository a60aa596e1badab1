"""IEEE 1888 (FIAP) edge: the storage at /fiap (WSDL at /fiap?wsdl), TRAP callbacks, and the hub's
client that fetches from remote storages and forwards to upstream ones (see docs/ieee1888.md)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from adapters.ieee1888.relay import Fetcher, Forwarder
from adapters.ieee1888.server import FiapEndpoint
from hub.runtime import Hub

log = logging.getLogger("mdmhub.ieee1888")
PATH = "/fiap"
FIAP_APP_KEY: web.AppKey[FiapEndpoint] = web.AppKey("fiap_endpoint", FiapEndpoint)


def install(app: web.Application, hub: Hub) -> FiapEndpoint:
    """Mount /fiap; on start-up load the points file and start the forwarders and fetchers."""
    endpoint = FiapEndpoint(hub)
    app[FIAP_APP_KEY] = endpoint
    app.router.add_get(PATH, endpoint.get)
    app.router.add_post(PATH, endpoint.post)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    settings = hub.settings.ieee1888

    async def start(_: web.Application) -> None:
        stop.clear()
        if settings.points_file is not None:
            report = await hub.run(hub.fiap.points.load_mapping, settings.points_file)
            log.info("ieee1888 points loaded", extra={"file": str(settings.points_file), **report})
        for upstream in settings.upstreams:
            tasks.append(asyncio.create_task(Forwarder(hub, upstream).run(stop), name=f"fiap-forward-{upstream.name}"))
        for job in settings.fetches:
            fetcher = Fetcher(hub, job, notify=endpoint.traps.notify)
            tasks.append(asyncio.create_task(fetcher.run(stop), name=f"fiap-fetch-{job.name}"))

    async def cleanup(_: web.Application) -> None:
        stop.set()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        await endpoint.traps.close()

    app.on_startup.append(start)
    app.on_cleanup.append(cleanup)
    return endpoint


__all__ = ["FIAP_APP_KEY", "PATH", "FiapEndpoint", "Fetcher", "Forwarder", "install"]
