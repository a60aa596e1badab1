"""A simulated IEEE 1888 gateway for the demo site: PV, an EV charger and environment sensors.

It writes into the hub's /fiap with the hub's own client, as a field gateway would: first the
last ``backfill_hours`` at 5-minute steps, then the current values every ``every_s`` seconds (on
the 30-minute grid for the cumulative energy points). Values are smooth, reproducible curves.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta

from adapters.ieee1888.client import FiapClient, FiapTransportError
from adapters.ieee1888.messages import FiapError, Point, Value, format_time

log = logging.getLogger("mdmhub.ieee1888.demo")
SITE = "http://demo.mdmhub.example/site1/"
STEP = timedelta(minutes=5)
BATCH = 1000


def site_values(at: datetime) -> dict[str, str]:
    """The site's readings at ``at`` (UTC): daylight PV, an evening EV session, weather."""
    hour = (at.hour + 9 + at.minute / 60) % 24  # local time (+09:00)
    day = at.timetuple().tm_yday
    sun = max(0.0, math.sin(math.pi * (hour - 6) / 12)) if 6 <= hour <= 18 else 0.0
    pv_kw = round(4.5 * sun * (0.85 + 0.15 * math.sin(day + hour)), 3)
    ev_kw = 3.2 if 18 <= hour < 22 else 0.0
    days = (at - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds() / 86400
    out = {
        "pv/power": f"{pv_kw:.3f}",
        "pv/voltage": f"{(320 + 40 * sun) if sun else 0:.1f}",
        "pv/current": f"{(pv_kw * 1000 / (320 + 40 * sun)) if sun else 0:.2f}",
        "pv/irradiance": f"{1000 * sun:.0f}",
        "pv/mode": "GENERATING" if sun > 0.05 else "STANDBY",
        "ev1/power": f"{ev_kw:.1f}",
        "env/temperature": f"{8 + 6 * math.sin(math.pi * (hour - 9) / 12):.1f}",
        "env/humidity": f"{60 - 15 * math.sin(math.pi * (hour - 9) / 12):.0f}",
        "env/co2": f"{420 + (380 if 9 <= hour < 18 else 0) * sun:.0f}",
        "env/wind": f"{2.5 + 1.5 * math.sin(hour / 3 + day):.1f}",
        "env/rain": "0.0",
    }
    if at.minute % 30 == 0 and at.second == 0:  # cumulative energy on the 30-minute grid
        out["pv/energy"] = f"{1000 + days * 18.0:.2f}"
        out["ev1/charge-energy"] = f"{500 + days * 12.8:.2f}"
    return {SITE + k: v for k, v in out.items()}


def points_between(first: datetime, last: datetime) -> list[Point]:
    by_id: dict[str, Point] = {}
    t = first
    while t <= last:
        for pid, v in site_values(t).items():
            by_id.setdefault(pid, Point(pid)).values.append(Value(format_time(t), v))
        t += STEP
    return list(by_id.values())


def _batches(points: list[Point]) -> list[list[Point]]:
    out: list[list[Point]] = []
    flat = [(p.id, v) for p in points for v in p.values]
    for i in range(0, len(flat), BATCH):
        group: dict[str, Point] = {}
        for pid, v in flat[i:i + BATCH]:
            group.setdefault(pid, Point(pid)).values.append(v)
        out.append(list(group.values()))
    return out


async def run_demo_gateway(fiap_url: str, stop: asyncio.Event, *, every_s: float = 60.0,
                           backfill_hours: float = 24.0) -> None:
    """Feed the demo site into ``fiap_url`` until ``stop`` is set; a failed write is tried again
    on the next round (the hub's duplicate rule makes repeats harmless)."""
    async with FiapClient(timeout_s=30) as client:
        now = datetime.now(UTC)
        first = (now - timedelta(hours=backfill_hours)).replace(second=0, microsecond=0)
        first -= timedelta(minutes=first.minute % 5)
        last_sent = first - STEP
        while not stop.is_set():
            now = datetime.now(UTC)
            upto = now.replace(second=0, microsecond=0)
            upto -= timedelta(minutes=upto.minute % 5)
            if upto > last_sent:
                try:
                    for batch in _batches(points_between(last_sent + STEP, upto)):
                        await client.write(fiap_url, batch)
                    last_sent = upto
                except (FiapTransportError, FiapError) as exc:
                    log.warning("demo gateway write failed", extra={"error": str(exc)[:200]})
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass
