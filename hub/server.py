"""Run the HTTP server until interrupted, printing where it listens."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.app import create_app
from hub.runtime import Hub

log = logging.getLogger("mdmhub.server")


def _freeze_startup_objects() -> None:
    """Keep what the started hub holds for its whole life (modules, compiled schemas and WSDLs,
    statement caches) out of the garbage collector's full collections. Each full collection
    otherwise walks that whole heap in the middle of some request: tens of milliseconds at the
    tail of every latency distribution, for objects that can never be garbage."""
    gc.collect()
    gc.freeze()


async def serve(hub: Hub, host: str, port: int,
                on_started: Callable[[str], Awaitable[None] | None] | None = None) -> None:
    app = create_app(hub)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    _freeze_startup_objects()
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
