"""The daily delivery run started with the web application: yesterday's files of every customer made
(files already there kept), files past retention purged, the next run at local midnight plus the offset."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

from tests.test_public_api import clock, phub, seed_usage  # noqa: F401


async def test_the_run_starts_with_the_app_makes_yesterdays_files_and_purges_old_ones(phub, clock, aiohttp_client):
    from hub.app import create_app

    await seed_usage(phub, clock)
    phub.delivery.clock = lambda: clock.now + timedelta(days=1)  # local day 2026-03-03: yesterday is 03-02
    root = phub.delivery.root
    kept = root / "customer" / "C-LD-000003" / "2026-03-02.csv"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"made earlier\r\n")
    old = root / "customer" / "C-LD-000003" / "2025-12-01.csv"
    old.write_text("old\r\n")
    await aiohttp_client(create_app(phub))
    for _ in range(200):
        if phub.delivery_schedule.last_run is not None:
            break
        await asyncio.sleep(0.05)
    run = phub.delivery_schedule.last_run
    assert run is not None and run["error"] is None and run["day"] == "2026-03-02", run
    made = sorted(p.parent.name for p in root.glob("customer/*/2026-03-02.csv"))
    assert len(made) == 10 and "C-SMALL-0" in made  # 8 customers of one point, two sharing four points
    assert run["files"] == 9 and run["purged"] == 1  # the file already there is not made again
    assert kept.read_bytes() == b"made earlier\r\n" and not old.exists()
    assert (root / "customer" / made[0] / "2026-03-02.csv.sha256").exists()
    assert phub.delivery_schedule.next_run_at == datetime(2026, 3, 4, 1, 30, tzinfo=phub.delivery.tz)


def test_the_next_run_is_local_midnight_plus_the_offset(phub):
    sched = phub.delivery_schedule
    tz = phub.delivery.tz  # Asia/Tokyo, UTC+9
    assert sched.next_time(datetime(2026, 3, 2, 15, 0, tzinfo=UTC)) == datetime(2026, 3, 3, 1, 30, tzinfo=tz)
    assert sched.next_time(datetime(2026, 3, 2, 16, 31, tzinfo=UTC)) == datetime(2026, 3, 4, 1, 30, tzinfo=tz)
    assert date(2026, 3, 3) == datetime(2026, 3, 3, 1, 30, tzinfo=tz).date()
