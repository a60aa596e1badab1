"""Run the HTTP server until interrupted, printing where it listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.app import create_app
from hub.runtime import Hub

log = logging.getLogger("mdmhub.server")


async def serve(hub: Hub, host: str, port: int,
                on_started: Callable[[str], Awaitable[None] | None] | None = None) -> None:
    app = create_app(hub)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{bound[0]}:{bound[1]}"
    log.info("listening", extra={"url": url})
    print(f"mdmhub {hub.version} listening on {url}  (health: {url}/health, API: {url}/api/v1, "
          f"OpenAPI: {url}/api/openapi.json)", flush=True)
    if on_started:
        result = on_started(url)
        if result is not None:
            await result
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("mdmhub stopping", flush=True)
        await runner.cleanup()
