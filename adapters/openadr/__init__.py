"""The OpenADR 2.0b edge: a VEN per configured VTN, started with the web application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from adapters.openadr.translate import load_mapping
from adapters.openadr.ven import HubVen, VtnConfig

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("mdmhub.openadr")
VENS_KEY: web.AppKey[list[HubVen]] = web.AppKey("openadr_vens", list)


def build_vens(hub: Hub) -> list[HubVen]:
    """One VEN per VTN in ``[openadr]`` (a bad mapping table raises here, at start)."""
    mapping = load_mapping(hub.settings.openadr.mapping_file)
    return [HubVen(hub, cfg, mapping) for cfg in VtnConfig.all_from(hub.settings.openadr)]


def install(app: web.Application, hub: Hub) -> list[HubVen]:
    """While ``app`` runs: resume the reservations of live ADR actions, then register with and poll
    every configured VTN."""
    vens = build_vens(hub)
    app[VENS_KEY] = vens

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        resume = asyncio.create_task(hub.adr.resume())
        for ven in vens:
            await ven.start()
        yield
        for ven in vens:
            await ven.stop()
        resume.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await resume

    app.cleanup_ctx.append(lifetime)
    return vens


__all__ = ["HubVen", "VtnConfig", "build_vens", "install"]
