"""Collection cycle: one 30-minute cycle of N meters (the seed's 80,000: 4 head-ends x 20,000) against
the head-end simulator with zero latency, as the scheduler runs it: every head-end's cycle at once,
each reading its poll targets, storing a usage row per expected snapshot (with increments, the
collection log and the quote rows), then diagnosing the batch and storing its alerts.

Set-up (untimed): the registration benchmark's store (``mdmhub db upgrade``, the catalogue, the
fleet imported with ``mdmhub devices import``), then every meter made a poll target (config state
1, comms use state A) with two set-based UPDATEs, as provisioning would leave them.

Measured in a child process (so its peak RSS is the cycles' own): a hub process that starts, runs
the cycle of slot T (the first: no earlier value, the simulator creates its meters) and then the
cycles of T + 30 min, T + 60 min... (the steady state: increments against the previous slot), each
timed on its own; the steady figure is their median. The simulator misses 0.5 % of (meter, slot)
windows, so missing rows, increments spanning a gap and the run checks' read-back are part of the
work. Baseline, same run, same rows: the rows the hub stored for the second cycle (usage, quote,
collection log) inserted with the raw driver's ``executemany`` into plain tables with the same
columns and keys, one transaction per 1,000 meters (the hub's batch size). On PostgreSQL, where
``executemany`` pays a round trip per row, a second baseline streams the same batches with ``COPY``.

The cycle that closes a day (23:30 UTC) also runs the spike check over the day. Its extra cost is
measured on its own, in this process, over the billing benchmark's generated day of N meters
(48 slots, 0.4 % missing): the diagnosis of that day's last slot, batch by batch as a cycle stores
it (the spike pre-selection over the whole day, the run checks' read-back for the missing rows,
the checks and their alerts).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy.engine import make_url

from bench.harness import Measure, Run
from bench.fleet import Fleet, write_csv
from bench.registration import import_devices, prepare_store, run_child
from bench.stores import HEAD_ENDS, hub_env, settle
from hub.db import UTCDateTime
from hub.model import UsageHistory

SLOT = timedelta(minutes=30)
FIRST_SLOT = datetime(2026, 1, 12, 10, 0, tzinfo=UTC)  # not the billing benchmark's day
CYCLES = 5
FAILURE_RATE = 0.005
TIME_TARGET_S = 30.0
RSS_TARGET_MIB = 1000.0
BATCH = 1000


def make_pollable(url: str) -> None:
    """Every registered meter a poll target: config state 1, comms use state A; simulator head-ends
    with zero latency that miss ``FAILURE_RATE`` of the windows."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE physical_device SET config_state = 1"))
            conn.execute(text("UPDATE physical_device_comms SET use_state = 'A', dhcp_done = :t, provisioned = :t"),
                         {"t": True})
            for he_id in range(1, HEAD_ENDS + 1):
                conn.execute(text("UPDATE head_end SET settings = :s WHERE he_id = :he"),
                             {"s": json.dumps({"seed": he_id, "failure_rate": FAILURE_RATE}), "he": he_id})
    finally:
        engine.dispose()


# the child: a hub process running two cycles -----------------------------------------------------

async def _cycles(url: str, slots: list[datetime]) -> list[dict[str, Any]]:
    from adapters.headend.registry import build_head_end
    from hub.config import Settings
    from hub.runtime import Hub

    now = {"t": slots[0] + timedelta(seconds=5)}
    hub = Hub(Settings.model_validate({"database": {"url": url}}),
              head_end_factory=functools.partial(build_head_end, clock=lambda: now["t"]))
    hub.collection.clock = lambda: now["t"]
    out = []
    try:
        he_ids = await hub.run(hub.head_ends.he_ids)
        for slot in slots:
            now["t"] = slot + timedelta(seconds=5)
            started = time.perf_counter()
            cpu = time.process_time()
            runs = await asyncio.gather(*(hub.collection.collect(he, slot) for he in he_ids))
            out.append({"slot": slot.isoformat(), "wall_s": time.perf_counter() - started,
                        "cpu_s": time.process_time() - cpu, "runs": runs})
    finally:
        hub.close()
    return out


def child_main(url: str, first: str, cycles: int) -> int:
    start = datetime.fromisoformat(first)
    result = asyncio.run(_cycles(url, [start + n * SLOT for n in range(cycles)]))
    print(json.dumps(result, default=str))
    return 0


# the baseline ------------------------------------------------------------------------------------

_BASE_DDL = """
CREATE TABLE base_usage (ld_id VARCHAR(64), sub_number INTEGER, measured_time {ts}, register_value FLOAT,
  increment FLOAT, recollected_increment FLOAT, status VARCHAR(16) NOT NULL, quality INTEGER NOT NULL,
  source VARCHAR(32), updated_at {ts}, PRIMARY KEY (ld_id, sub_number, measured_time));
CREATE INDEX ix_base_usage_time ON base_usage (measured_time);
CREATE TABLE base_quote (ld_id VARCHAR(64), sub_number INTEGER, measured_time {ts}, source VARCHAR(32),
  corrected BOOLEAN NOT NULL, updated_at {ts}, PRIMARY KEY (ld_id, sub_number, measured_time));
CREATE TABLE base_log (ld_id VARCHAR(64), sub_number INTEGER, measured_time {ts}, value FLOAT NOT NULL,
  he_id INTEGER, source VARCHAR(32), run_id INTEGER, received_at {ts},
  PRIMARY KEY (ld_id, sub_number, measured_time));
"""
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how the hub's timestamps are stored in SQLite
_SELECT = ("SELECT ld_id, sub_number, measured_time, register_value, increment, recollected_increment, status, "
           "quality, source, updated_at FROM usage_history WHERE measured_time = {p} ORDER BY ld_id, sub_number")


def baseline_insert(url: str, slot: datetime, *, copy: bool = False) -> tuple[float, int]:
    """Seconds to insert the stored rows of ``slot`` again with the raw driver; (seconds, usage rows).
    With ``copy`` (PostgreSQL), ``COPY`` per table and batch instead of ``executemany``."""
    subs = 2
    step = BATCH * subs
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        src = sqlite3.connect(path)
        rows = src.execute(_SELECT.format(p="?"), (slot.replace(tzinfo=None).strftime(_SQLITE_TIME),)).fetchall()
        src.close()
        conn = sqlite3.connect(path.with_name("baseline.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_BASE_DDL.format(ts="TIMESTAMP"))
        p = "?"
    else:
        import psycopg

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(dsn, autocommit=True)  # type: ignore[assignment]
        rows = conn.execute(_SELECT.format(p="%s"), (slot,)).fetchall()
        conn.execute(_BASE_DDL.format(ts="TIMESTAMPTZ"))  # type: ignore[arg-type]
        p = "%s"
    quotes = [(r[0], r[1], r[2], r[8], False, r[9]) for r in rows]
    logs = [(r[0], r[1], r[2], r[3], 1, r[8], 1, r[9]) for r in rows if r[3] is not None]
    usage_sql = f"INSERT INTO base_usage VALUES ({', '.join([p] * 10)})"
    quote_sql = f"INSERT INTO base_quote VALUES ({', '.join([p] * 6)})"
    log_sql = f"INSERT INTO base_log VALUES ({', '.join([p] * 8)})"
    started = time.perf_counter()
    if url.startswith("sqlite"):
        for lo in range(0, len(rows), step):
            conn.execute("BEGIN")
            conn.executemany(usage_sql, rows[lo:lo + step])
            conn.executemany(quote_sql, quotes[lo:lo + step])
            conn.executemany(log_sql, [r for r in logs[lo:lo + step]])
            conn.execute("COMMIT")
    elif copy:
        cur = conn.cursor()
        for lo in range(0, len(rows), step):
            with conn.transaction():  # type: ignore[attr-defined]
                for table, batch in (("base_usage", rows), ("base_quote", quotes), ("base_log", logs)):
                    with cur.copy(f"COPY {table} FROM STDIN") as out:  # type: ignore[attr-defined]
                        for row in batch[lo:lo + step]:
                            out.write_row(row)
    else:
        cur = conn.cursor()
        for lo in range(0, len(rows), step):
            with conn.transaction():  # type: ignore[attr-defined]
                cur.executemany(usage_sql, rows[lo:lo + step])
                cur.executemany(quote_sql, quotes[lo:lo + step])
                cur.executemany(log_sql, logs[lo:lo + step])
    elapsed = time.perf_counter() - started
    conn.execute("DROP TABLE base_usage")
    conn.execute("DROP TABLE base_quote")
    conn.execute("DROP TABLE base_log")
    conn.close()
    return elapsed, len(rows)


# the day-closing cycle's diagnosis --------------------------------------------------------------

def day_close_diagnosis(url: str, meters: int) -> tuple[float, int, int]:
    """Seconds to diagnose the last slot of the billing benchmark's day, batch by batch; (seconds,
    rows diagnosed, alerts raised). Generates the day first when it is not there."""
    from bench.billing_export import DAY, SLOTS, generate_day
    from hub.config import Settings
    from hub.runtime import Hub
    from hub.services.collection_diagnosis import Row

    last = DAY + (SLOTS - 1) * SLOT
    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        with hub.db.engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM usage_history WHERE measured_time = :t")
                                  .bindparams(bindparam("t", type_=UTCDateTime)), {"t": last}).scalar_one()
        if stored < meters:
            generate_day(url, meters)
            settle(url)
        diagnosis = hub.collection.diagnosis
        assert diagnosis is not None
        c = UsageHistory.__table__.c  # type: ignore[attr-defined]
        with hub.db.session() as s:
            rows: list[Row] = [tuple(r) for r in s.execute(  # type: ignore[misc]
                select(c.ld_id, c.sub_number, c.measured_time, c.register_value, c.increment, c.status)
                .where(c.measured_time == last).order_by(c.ld_id))]
        started = time.perf_counter()
        alerts = 0
        for lo in range(0, len(rows), BATCH):
            alerts += diagnosis.check(rows[lo:lo + BATCH], since=last, until=last, ranges={}, he_id=None)
        return time.perf_counter() - started, len(rows), alerts
    finally:
        hub.close()


# the benchmark -----------------------------------------------------------------------------------

def _count(url: str, sql: str, **params: Any) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())
    finally:
        engine.dispose()


def prepare_collection(url: str, meters: int, workdir: Path) -> None:
    """The registered, pollable fleet on a fresh store (untimed)."""
    fleet = Fleet(meters)
    prepare_store(url, fleet)
    import_devices(url, write_csv(workdir / "registration.csv", fleet), workdir)
    make_pollable(url)
    settle(url)


def bench_collection(run: Run, backend: str, url: str, meters: int, workdir: Path, *,
                     prepared: bool = False, cycles: int = CYCLES) -> None:
    """``cycles`` cycles of ``meters`` meters in a child hub process, then the raw baseline."""
    if not prepared:
        prepare_collection(url, meters, workdir)
    else:
        make_pollable(url)
        settle(url)
    child = run_child([sys.executable, "-m", "bench.collection", "child", url, FIRST_SLOT.isoformat(), str(cycles)],
                      hub_env(url), workdir)
    if child.returncode != 0:
        raise RuntimeError(f"collection failed ({child.returncode}): {child.stderr[-3000:]}")
    done = json.loads(child.stdout.strip().splitlines()[-1])
    expected = meters * 2
    for n, cycle in enumerate(done):
        slot = FIRST_SLOT + n * SLOT
        stored = _count(url, "SELECT count(*) FROM usage_history WHERE measured_time = :t",
                        t=slot if backend == "postgresql" else slot.replace(tzinfo=None).strftime(_SQLITE_TIME))
        got = sum(r["expected"] for r in cycle["runs"])
        if stored != expected or got != expected or any(r["state"] != "done" for r in cycle["runs"]):
            raise RuntimeError(f"cycle {n + 1}: expected {expected} rows, stored {stored}, runs say {got}")
    base_s, base_rows = baseline_insert(url, FIRST_SLOT + SLOT)
    name = f"collection cycle ({meters:,} meters, {HEAD_ENDS} head-ends)"
    first = done[0]["wall_s"]
    steady = statistics.median(c["wall_s"] for c in done[1:]) if len(done) > 1 else None
    run.add(Measure(name, backend, "first cycle: wall time", first, "s", target=f"< {TIME_TARGET_S:.0f} s",
                    met=first < TIME_TARGET_S))
    run.add(Measure(name, backend, "first cycle: readings", expected / first, "readings/s"))
    if steady is not None:
        run.add(Measure(name, backend, f"steady cycle: wall time (median of {len(done) - 1})", steady, "s", base_s,
                        "raw executemany", f"< {TIME_TARGET_S:.0f} s", steady < TIME_TARGET_S))
        run.add(Measure(name, backend, "steady cycle: readings", expected / steady, "readings/s", base_rows / base_s,
                        "raw executemany"))
    if backend == "postgresql" and steady is not None:
        copy_s, _ = baseline_insert(url, FIRST_SLOT + SLOT, copy=True)
        run.details.setdefault("collection_copy_baseline_s", {})[backend] = round(copy_s, 3)
        run.add(Measure(name, backend, "steady cycle: wall time against COPY", steady, "s", copy_s, "raw COPY"))
    run.add(Measure(name, backend, "peak RSS (process, all cycles)", child.peak_rss_mib, "MiB",
                    target=f"< {RSS_TARGET_MIB:.0f} MB", met=child.peak_rss_mib * 1.048576 < RSS_TARGET_MIB))
    close_s, close_rows, close_alerts = day_close_diagnosis(url, meters)
    run.add(Measure(name, backend, "day-closing cycle: extra diagnosis", close_s, "s"))
    run.details.setdefault("collection", {})[backend] = {
        "day_close": {"rows": close_rows, "seconds": round(close_s, 3), "alerts": close_alerts},
        "meters": meters, "readings_per_cycle": expected, "baseline_s": round(base_s, 3),
        "process_wall_s": round(child.wall_s, 2), "process_cpu_s": round(child.cpu_s, 2),
        "peak_rss_mib": round(child.peak_rss_mib, 1),
        "cycles": [{"slot": c["slot"], "wall_s": round(c["wall_s"], 3), "cpu_s": round(c["cpu_s"], 3),
                    "normal": sum(r["normal"] for r in c["runs"]), "missing": sum(r["missing"] for r in c["runs"]),
                    "alerts": sum(r.get("alerts", 0) for r in c["runs"])} for c in done]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.collection")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child", help="run cycles against a prepared store (used by the benchmark)")
    c.add_argument("url")
    c.add_argument("first")
    c.add_argument("cycles", type=int)
    args = p.parse_args(argv)
    return child_main(args.url, args.first, args.cycles)


if __name__ == "__main__":
    sys.exit(main())
