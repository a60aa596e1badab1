"""A hub process killed outright (SIGKILL, no clean-up of any kind) in the middle of a collection cycle
loses no accepted read and duplicates none: started again, the scheduler's tick finishes the killed
run, and every expected snapshot of every poll target has exactly one usage row, with the value the
meter gave. Real processes, real simulator, both stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from hub.demo import demo_rows
from hub.runtime import Hub

METERS = 4000  # two head-ends of 2,000
BATCH = 100  # meters per head-end request, so a cycle commits many batches
SLOT = timedelta(minutes=30)
NOW = datetime(2026, 3, 2, 12, 1, tzinfo=UTC)
CURRENT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SLOTS = [CURRENT - 2 * SLOT, CURRENT - SLOT, CURRENT]  # one hour from memory, then the current slot
EXPECTED = METERS * 2 * len(SLOTS)  # two registers per meter

# the hub process: the scheduler's tick for each head-end, at a fixed moment, against the simulator
CHILD = """
import asyncio, functools, json, sys
from datetime import datetime
from adapters.headend.registry import build_head_end
from hub.config import load_settings
from hub.runtime import Hub

now = datetime.fromisoformat(sys.argv[1])
hub = Hub(load_settings(), head_end_factory=functools.partial(build_head_end, clock=lambda: now))
hub.collection.clock = lambda: now

async def main():
    he_ids = await hub.run(hub.head_ends.he_ids)
    return await asyncio.gather(*(hub.collection.catch_up(he, now) for he in he_ids))

print(json.dumps(asyncio.run(main()), default=str))
hub.close()
"""


def _start(url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDMHUB_")}
    env.update(MDMHUB_DATABASE_URL=url, MDMHUB_LOG_FORMAT="text", MDMHUB_COLLECTION_BATCH_SIZE=str(BATCH),
               MDMHUB_COLLECTION_BACKFILL_HOURS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, NOW.isoformat()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(hub: Hub, sql: str) -> list[tuple]:
    with hub.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def _count(hub: Hub, sql: str) -> int:
    return int(_rows(hub, sql)[0][0])


def _fleet(hub: Hub) -> None:
    """Installed meters on the catalogue's head-ends 1 and 2, provisioned and keyed (use state A); each head-end
    answers one request at a time with a little latency and misses 2 % of the windows."""
    from hub.services.admin import HeadEndPatch

    report = hub.registry.import_json(demo_rows(METERS, seed=7), atomic=True)
    assert not report.failed, report.as_dict()
    with hub.db.engine.begin() as conn:
        conn.execute(text("UPDATE physical_device_comms SET use_state = 'A', dhcp_done = :t, provisioned = :t"),
                     {"t": True})
    for he_id in (1, 2):
        hub.admin.update_head_end(he_id, HeadEndPatch(settings={"seed": he_id, "latency_s": 0.02, "concurrency": 1,
                                                               "failure_rate": 0.02}))


def _kill_mid_cycle(proc: subprocess.Popen[bytes], hub: Hub, timeout_s: float = 120.0) -> int:
    """SIGKILL once a third of the cycle's rows are stored; returns the rows stored by then."""
    deadline = time.monotonic() + timeout_s
    while _count(hub, "SELECT count(*) FROM usage_history") < EXPECTED // 3:
        assert proc.poll() is None, f"the hub ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "the hub stored nothing in time"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the cycle finished before the kill landed"
    return _count(hub, "SELECT count(*) FROM usage_history")


def test_a_hub_killed_mid_cycle_loses_and_duplicates_nothing_when_started_again(catalog: Hub) -> None:
    hub = catalog
    url = hub.settings.database_url
    _fleet(hub)

    stored = _kill_mid_cycle(_start(url), hub)
    assert EXPECTED // 3 <= stored < EXPECTED
    accepted = {r[:3]: r[3] for r in _rows(hub, "SELECT ld_id, sub_number, measured_time, value FROM collection_log")}
    before = {r[:3]: r[3:] for r in _rows(
        hub, "SELECT ld_id, sub_number, measured_time, register_value, status FROM usage_history")}
    assert accepted and _count(hub, "SELECT count(*) FROM collection_run WHERE state = 'running'") >= 1

    again = _start(url)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-3000:]
    runs = [run for he_runs in json.loads(out) for run in he_runs]
    assert runs and all(run["state"] == "done" for run in runs)

    # every run, the killed one included, is finished; none is left running
    states = _rows(hub, "SELECT he_id, kind, state FROM collection_run ORDER BY he_id, kind")
    assert sorted(states) == [(1, "backfill", "done"), (1, "scheduled", "done"),
                              (2, "backfill", "done"), (2, "scheduled", "done")]

    # every expected snapshot has exactly one row, and nothing else is there
    assert _count(hub, "SELECT count(*) FROM usage_history") == EXPECTED
    assert _count(hub, "SELECT count(*) FROM (SELECT DISTINCT ld_id, sub_number, measured_time "
                       "FROM usage_history) AS k") == EXPECTED
    assert _count(hub, "SELECT count(*) FROM quote_history") == EXPECTED
    per_key = _rows(hub, "SELECT ld_id, count(*) FROM usage_history GROUP BY ld_id")
    assert len(per_key) == METERS and {n for _, n in per_key} == {2 * len(SLOTS)}
    times = {r[0] for r in _rows(hub, "SELECT DISTINCT measured_time FROM usage_history")}
    assert len(times) == len(SLOTS)

    # no accepted read lost: each is still logged and is the row's value; what was stored stays as it was
    after = {r[:3]: r[3:] for r in _rows(
        hub, "SELECT ld_id, sub_number, measured_time, register_value, status FROM usage_history")}
    logged = {r[:3]: r[3] for r in _rows(hub, "SELECT ld_id, sub_number, measured_time, value FROM collection_log")}
    assert all(logged.get(k) == v for k, v in accepted.items())
    assert all(after[k][0] == v for k, v in accepted.items())
    assert all(after[k] == v for k, v in before.items())
    assert all((value is None) == (status == "missing") for value, status in after.values())
    assert all(after[k][0] == v for k, v in logged.items())
    assert len(logged) == sum(1 for value, _ in after.values() if value is not None)
    missing = sum(1 for _, status in after.values() if status == "missing")
    assert 0 < missing < EXPECTED * 0.05  # the 2 % missed windows, nothing more
