"""The NMS edge: alerts leave the hub as RFC 5424 syslog messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from adapters.nms.syslog import FACILITIES, SEVERITY_CODES, SyslogNotifier, format_rfc5424, frame_octet_counting

if TYPE_CHECKING:
    from hub.runtime import Hub

__all__ = ["FACILITIES", "SEVERITY_CODES", "SyslogNotifier", "format_rfc5424", "frame_octet_counting",
           "install"]
log = logging.getLogger("mdmhub.nms")


def install(app: web.Application, hub: Hub) -> SyslogNotifier:
    """Give the hub's alert service a syslog notifier from ``[nms]`` and, while ``app`` runs, send
    alerts the NMS missed again every ``nms.resend_seconds``."""
    notifier = SyslogNotifier.from_settings(hub.settings.nms)
    hub.alerts.notifier = notifier

    async def resend_loop() -> None:
        while True:
            await asyncio.sleep(hub.settings.nms.resend_seconds)
            try:
                sent = await hub.run(hub.alerts.resend_unsent)
            except Exception:  # noqa: BLE001 - the loop outlives a database hiccup
                log.warning("resending unsent alerts failed", exc_info=True)
                continue
            if sent:
                log.info("unsent alerts delivered", extra={"alerts": sent})

    async def resender(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(resend_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(resender)
    return notifier
